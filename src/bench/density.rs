//! `sandboxctl bench --density N`: how many idle sandboxes one host holds. Creates idle sandboxes
//! (through the API, against a live server and its local agent) until N or the first failure and,
//! at 1, 10, 50 and N, measures per sandbox: proportional memory (the `Pss` of every QEMU
//! process's `/proc/PID/smaps_rollup`, so pages shared with the template count once), the drop of
//! the host's `MemAvailable`, the QEMU processes' CPU (utime + stime) over a quiet window, and the
//! exec round trip at that count. Every sandbox it made is deleted again, whatever happened.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::client::ApiClient;
use crate::proto::api::{CreateSandboxRequest, ExecRequest};

#[derive(Debug, Clone)]
pub struct DensityArgs {
    /// Sandboxes to reach (fewer when a create fails first).
    pub n: usize,
    pub template: String,
    pub memory_mb: u32,
    /// How long the QEMU processes' CPU is sampled at each step, with nothing else asked of them.
    pub quiet: Duration,
    /// Exec round trips measured at each step (spread over the sandboxes).
    pub execs: usize,
    pub out: PathBuf,
}

/// One step's figures.
#[derive(Debug, Clone)]
pub struct Step {
    pub count: usize,
    /// QEMU processes found (one per sandbox when all is well).
    pub processes: usize,
    pub pss_mb: f64,
    pub rss_mb: f64,
    pub mem_available_drop_mb: f64,
    /// Percent of one core, per sandbox.
    pub idle_cpu_pct: f64,
    pub exec_p50_ms: f64,
    pub exec_p95_ms: f64,
    /// A second exec right after the first in the same sandbox.
    pub again_p50_ms: f64,
    pub again_p95_ms: f64,
}

/// The counts measured for a target of `n`: 1, 10, 50 and `n` (those up to `n`).
pub fn checkpoints(n: usize) -> BTreeSet<usize> {
    [1, 10, 50, n]
        .into_iter()
        .filter(|c| *c >= 1 && *c <= n)
        .collect()
}

/// `MemAvailable` of the host, in MB.
fn mem_available_mb() -> Option<f64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    kb_field(&m, "MemAvailable:").map(|kb| kb / 1024.0)
}

fn kb_field(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
}

/// (Pss, Rss) of a process in MB, from `/proc/PID/smaps_rollup`.
fn pss_rss_mb(pid: u32) -> Option<(f64, f64)> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some((
        kb_field(&t, "Pss:")? / 1024.0,
        kb_field(&t, "Rss:")? / 1024.0,
    ))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// The QEMU process of each of `ids` (by its `-name ID`), in one pass over `/proc`.
fn qemu_pids(ids: &[String]) -> HashMap<String, u32> {
    let wanted: BTreeSet<&[u8]> = ids.iter().map(|s| s.as_bytes()).collect();
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let parts: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if !parts
            .first()
            .is_some_and(|p| p.ends_with(b"qemu-system-x86_64"))
        {
            continue;
        }
        if let Some(w) = parts
            .windows(2)
            .find(|w| w[0] == b"-name" && wanted.contains(w[1]))
        {
            out.insert(String::from_utf8_lossy(w[1]).into_owned(), pid);
        }
    }
    out
}

async fn measure(
    c: &ApiClient,
    a: &DensityArgs,
    ids: &[String],
    available_before: Option<f64>,
) -> anyhow::Result<Step> {
    // Let the newest sandbox settle (its restore's page faults and first translations).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pids = qemu_pids(ids);
    let count = ids.len() as f64;
    let (mut pss, mut rss) = (0.0, 0.0);
    for pid in pids.values() {
        if let Some((p, r)) = pss_rss_mb(*pid) {
            pss += p;
            rss += r;
        }
    }
    let drop = available_before
        .zip(mem_available_mb())
        .map(|(before, now)| (before - now) / count)
        .unwrap_or(f64::NAN);
    let ticks =
        |pids: &HashMap<String, u32>| pids.values().filter_map(|p| cpu_ticks(*p)).sum::<u64>();
    let t0 = Instant::now();
    let before = ticks(&pids);
    tokio::time::sleep(a.quiet).await;
    let spent = ticks(&pids).saturating_sub(before) as f64 / clock_ticks_per_second();
    let idle_cpu_pct = spent / t0.elapsed().as_secs_f64() * 100.0 / count;
    // Each sampled sandbox runs `true` twice: under software emulation every QEMU translates its
    // guest's code on first use, so a sandbox's first command in a while pays for that (KVM does
    // not); the second shows what the other sandboxes' load costs.
    let (mut exec, mut again) = (Vec::new(), Vec::new());
    for i in 0..a.execs.max(1) {
        let id = &ids[i * ids.len() / a.execs.max(1) % ids.len()];
        for times in [&mut exec, &mut again] {
            let t = Instant::now();
            let r = c
                .exec(
                    id,
                    &ExecRequest {
                        cmd: "true".into(),
                        ..Default::default()
                    },
                )
                .await
                .with_context(|| format!("exec in {id} with {} sandboxes", ids.len()))?;
            if r.exit_code != 0 {
                anyhow::bail!("`true` in {id} exited with {}", r.exit_code);
            }
            times.push(super::ms(t.elapsed()));
        }
    }
    let (p50, p95) = super::percentiles(&exec);
    let (again_p50_ms, again_p95_ms) = super::percentiles(&again);
    Ok(Step {
        count: ids.len(),
        processes: pids.len(),
        pss_mb: pss / count,
        rss_mb: rss / count,
        mem_available_drop_mb: drop,
        idle_cpu_pct,
        exec_p50_ms: p50,
        exec_p95_ms: p95,
        again_p50_ms,
        again_p95_ms,
    })
}

/// Creates and measures; `ids` collects every sandbox made so the caller deletes them. Answers
/// the steps and why it stopped before N (if it did).
async fn grow(
    c: &ApiClient,
    a: &DensityArgs,
    ids: &mut Vec<String>,
) -> anyhow::Result<(Vec<Step>, Option<String>)> {
    let at = checkpoints(a.n);
    let available_before = mem_available_mb();
    let req = CreateSandboxRequest {
        template: Some(a.template.clone()),
        memory_mb: Some(a.memory_mb),
        timeout_sec: Some(0),
        ..Default::default()
    };
    let mut steps = Vec::new();
    let mut stopped = None;
    for i in 1..=a.n {
        match c.create_sandbox(&req).await {
            Ok(s) => ids.push(s.id),
            Err(e) => {
                stopped = Some(format!("create {i} failed: {e}"));
                break;
            }
        }
        if at.contains(&i) {
            let step = measure(c, a, ids, available_before).await?;
            eprintln!(
                "bench density: {} sandboxes: PSS {:.0} MB, MemAvailable −{:.0} MB, idle CPU {:.1}%, exec p50 {:.0} ms first, {:.0} ms again (each)",
                step.count,
                step.pss_mb,
                step.mem_available_drop_mb,
                step.idle_cpu_pct,
                step.exec_p50_ms,
                step.again_p50_ms
            );
            steps.push(step);
        } else if i % 5 == 0 {
            eprintln!("bench density: {i} sandboxes…");
        }
    }
    // A failure before N: the count reached is a step of its own.
    if stopped.is_some() && !ids.is_empty() && steps.last().is_none_or(|s| s.count != ids.len()) {
        steps.push(measure(c, a, ids, available_before).await?);
    }
    Ok((steps, stopped))
}

pub fn table(a: &DensityArgs, steps: &[Step], stopped: Option<&str>) -> String {
    let mut md = String::new();
    let reached = steps.last().map(|s| s.count).unwrap_or(0);
    md.push_str(&format!(
        "Idle sandboxes of {} MB (template `{}`), created one after another up to {} or the \
         first failure: reached {reached}{}. Per sandbox: PSS is the sum of the QEMU processes' \
         `smaps_rollup` Pss (shared template pages counted once) over the count; MemAvailable \
         is the host's drop since before the first create over the count; idle CPU is the QEMU \
         processes' utime + stime over a {:.0} s quiet window, in percent of one core; exec is \
         `true` through the API in {} of the sandboxes, spread over them, twice in each: the \
         first (a sandbox's first command in a while: under TCG its QEMU translates the guest \
         code it runs afresh) and again right after (what the other sandboxes' load costs).\n\n",
        a.memory_mb,
        a.template,
        a.n,
        stopped.map(|s| format!(" ({s})")).unwrap_or_default(),
        a.quiet.as_secs_f64(),
        a.execs
    ));
    md.push_str(
        "| sandboxes | QEMU processes | PSS each | RSS each | MemAvailable drop each | idle CPU each | idle CPU, all | exec p50 (first) | exec p95 (first) | exec p50 (again) | exec p95 (again) | note |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let first_exec = steps.first().map(|s| s.again_p50_ms);
    for s in steps {
        let mut note = Vec::new();
        note.push(if s.pss_mb <= 64.0 {
            "PSS ≤ 64 MiB: met".to_string()
        } else {
            "PSS ≤ 64 MiB: **missed**".to_string()
        });
        if let Some(one) = first_exec
            && s.count > 1
        {
            note.push(format!(
                "exec again {:.2}× at 1 (target 2×)",
                s.again_p50_ms / one
            ));
        }
        md.push_str(&format!(
            "| {} | {} | {:.0} MB | {:.0} MB | {:.0} MB | {:.1}% | {:.0}% | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {} |\n",
            s.count,
            s.processes,
            s.pss_mb,
            s.rss_mb,
            s.mem_available_drop_mb,
            s.idle_cpu_pct,
            s.idle_cpu_pct * s.count as f64,
            s.exec_p50_ms,
            s.exec_p95_ms,
            s.again_p50_ms,
            s.again_p95_ms,
            note.join("; ")
        ));
    }
    md
}

pub async fn run(c: &ApiClient, a: &DensityArgs) -> anyhow::Result<i32> {
    if a.n == 0 || a.execs == 0 || a.quiet.is_zero() {
        anyhow::bail!("--density, --density-execs and --density-quiet must be more than 0");
    }
    let started = Instant::now();
    let mut ids = Vec::new();
    let result = grow(c, a, &mut ids).await;
    eprintln!("bench density: deleting {} sandboxes…", ids.len());
    let mut not_deleted = Vec::new();
    for id in &ids {
        if let Err(e) = c.delete_sandbox(id).await {
            not_deleted.push(format!("{id}: {e}"));
        }
    }
    let (steps, stopped) = result?;
    if !not_deleted.is_empty() {
        anyhow::bail!(
            "these sandboxes were not deleted: {}",
            not_deleted.join("; ")
        );
    }
    if steps.is_empty() {
        anyhow::bail!(
            "no sandbox could be created: {}",
            stopped.unwrap_or_default()
        );
    }
    let accel = c
        .list_hosts()
        .await
        .ok()
        .and_then(|h| h.into_iter().find_map(|h| h.accel))
        .unwrap_or_else(|| "?".into());
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| kb_field(&m, "MemTotal:"))
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(f64::NAN);
    let header = format!(
        "Measured {} on {} ({} cores, {mem_total:.0} GiB), accelerator `{accel}`; took {:.0} s.\n\n",
        super::chrono_like_now(),
        std::fs::read_to_string("/etc/hostname")
            .unwrap_or_default()
            .trim(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        started.elapsed().as_secs_f64()
    );
    let text = format!("{header}{}", table(a, &steps, stopped.as_deref()));
    println!("{text}");
    super::write_section(&a.out, "bench-density", &text)?;
    eprintln!("bench density: table written to {}", a.out.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_up_to_n() {
        assert_eq!(checkpoints(1).into_iter().collect::<Vec<_>>(), vec![1]);
        assert_eq!(checkpoints(2).into_iter().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(
            checkpoints(30).into_iter().collect::<Vec<_>>(),
            vec![1, 10, 30]
        );
        assert_eq!(
            checkpoints(100).into_iter().collect::<Vec<_>>(),
            vec![1, 10, 50, 100]
        );
    }

    #[test]
    fn this_process_has_memory_and_cpu_figures() {
        let me = std::process::id();
        let (pss, rss) = pss_rss_mb(me).expect("smaps_rollup readable");
        assert!(pss > 0.0 && rss >= pss, "{pss} {rss}");
        assert!(cpu_ticks(me).is_some());
        assert!(mem_available_mb().is_some_and(|m| m > 0.0));
    }
}
