//! `sandboxctl bench`: measures a live server and its local agent and writes a markdown table —
//! sandbox create (cold and from snapshot) next to the same boot done by bare QEMU with the same
//! images, exec round trips, pause and resume, concurrent creates, and memory per sandbox.
//! `sandboxctl bench server` ([`server`]) measures the control plane alone against a simulated
//! fleet ([`fleet`]) under an open-loop load ([`load`]). `sandboxctl bench --density N`
//! ([`density`]) measures how many idle sandboxes one host holds.

pub mod density;
pub mod fleet;
pub mod load;
mod pool;
pub mod server;
mod server_side;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::client::ApiClient;
use crate::proto::api::{CreateSandboxRequest, ExecRequest};

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub runs: usize,
    pub concurrency: usize,
    pub out: PathBuf,
    pub template: String,
    /// The local agent's data dir (for the bare-QEMU baseline and memory figures).
    pub agent_data_dir: Option<PathBuf>,
    pub kernel_dir: PathBuf,
}

/// p50 and p95 of a sample, in milliseconds.
pub fn percentiles(samples: &[f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
    (at(0.5), at(0.95))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Row {
    what: String,
    n: usize,
    p50: f64,
    p95: f64,
    note: String,
}

fn row(what: &str, samples: &[f64], note: impl Into<String>) -> Row {
    let (p50, p95) = percentiles(samples);
    Row {
        what: what.into(),
        n: samples.len(),
        p50,
        p95,
        note: note.into(),
    }
}

/// QEMU processes of a sandbox (by `-name ID`).
fn qemu_pid(sandbox: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let parts: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if parts
            .first()
            .is_some_and(|p| p.ends_with(b"qemu-system-x86_64"))
            && parts
                .windows(2)
                .any(|w| w[0] == b"-name" && w[1] == sandbox.as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

/// (RSS, RSS outside the guest-RAM mapping) of a QEMU process, in MB.
fn qemu_memory(pid: u32, guest_mb: u32) -> Option<(f64, f64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let guest_bytes = u64::from(guest_mb) * 1024 * 1024;
    let (mut total, mut guest) = (0u64, 0u64);
    let mut in_guest = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((a, b)) = range.split_once('-')
            && let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            in_guest = b - a == guest_bytes;
            continue;
        }
        if let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .unwrap_or(0);
            total += kb;
            if in_guest {
                guest += kb;
            }
        }
    }
    Some((total as f64 / 1024.0, (total - guest) as f64 / 1024.0))
}

pub async fn run(c: &ApiClient, a: &BenchArgs) -> anyhow::Result<i32> {
    let mut rows: Vec<Row> = Vec::new();
    let started = Instant::now();
    let req = CreateSandboxRequest {
        template: Some(a.template.clone()),
        timeout_sec: Some(0),
        ..Default::default()
    };
    let cold_runs = a.runs.min(5);
    eprintln!(
        "bench: {} sequential creates from snapshot, {cold_runs} cold…",
        a.runs
    );
    let (mut api_cold, mut api_snap, mut boot_cold, mut boot_snap) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let cold = CreateSandboxRequest {
        cold_boot: Some(true),
        ..req.clone()
    };
    // Not timed: the first create of a shape on a host also makes its boot snapshot.
    let warm = c.create_sandbox(&req).await.context("create")?;
    c.delete_sandbox(&warm.id).await?;
    // Bare QEMU with the same images, no server or agent in the way: one bare restore after each
    // create from snapshot, so both see the same machine.
    let mut bare_restore = Vec::new();
    let mut bare_failed = a.agent_data_dir.is_none();
    for i in 0..a.runs + cold_runs {
        let t = Instant::now();
        let which = if i < a.runs { &req } else { &cold };
        let s = c.create_sandbox(which).await.context("create")?;
        let wall = ms(t.elapsed());
        let boot = s.boot_ms.unwrap_or(0) as f64;
        if s.boot_kind.as_deref() == Some("snapshot") {
            api_snap.push(wall);
            boot_snap.push(boot);
        } else if s.boot_kind.as_deref() == Some("pool") {
            // Measured on their own by `pool::pool_rows`.
        } else {
            api_cold.push(wall);
            boot_cold.push(boot);
        }
        c.delete_sandbox(&s.id).await?;
        if i < a.runs
            && !bare_failed
            && let Some(dir) = &a.agent_data_dir
        {
            match crate::agent::vm::bare_restore(dir, &a.kernel_dir, &a.template).await {
                Ok(d) => bare_restore.push(ms(d)),
                Err(e) => {
                    eprintln!("bench: bare QEMU restore failed: {e:#}");
                    bare_failed = true;
                }
            }
        }
    }
    let mut bare_cold = Vec::new();
    let mut net_rows = Vec::new();
    if let Some(dir) = &a.agent_data_dir {
        eprintln!("bench: {} sandbox network setups…", a.runs);
        match crate::agent::net::bench_setup(Default::default(), a.runs).await {
            Ok((setup, teardown)) => {
                let s: Vec<f64> = setup.into_iter().map(ms).collect();
                let t: Vec<f64> = teardown.into_iter().map(ms).collect();
                net_rows.push(row(
                    "network setup per create (agent: namespace, veth, tap, nftables, DNS)",
                    &s,
                    "part of every create with a network",
                ));
                net_rows.push(row("network teardown per delete (agent)", &t, ""));
            }
            Err(e) => eprintln!("bench: network setup failed: {e:#}"),
        }
        eprintln!("bench: {} bare QEMU cold boots…", a.runs.min(5));
        for _ in 0..a.runs.min(5) {
            match crate::agent::vm::bare_cold_boot(dir, &a.kernel_dir, &a.template).await {
                Ok(d) => bare_cold.push(ms(d)),
                Err(e) => {
                    eprintln!("bench: bare QEMU boot failed: {e:#}");
                    break;
                }
            }
        }
    }
    let ratio = |api: &[f64], bare: &[f64]| {
        let (a, b) = (percentiles(api).0, percentiles(bare).0);
        if a.is_finite() && b.is_finite() && b > 0.0 {
            format!("{:.2}× bare QEMU", a / b)
        } else {
            String::new()
        }
    };
    if !api_cold.is_empty() {
        rows.push(row(
            "create, cold boot (API, client-side)",
            &api_cold,
            ratio(&api_cold, &bare_cold),
        ));
        rows.push(row(
            "create, cold boot (agent: QEMU start → guest answers)",
            &boot_cold,
            "",
        ));
    }
    if !api_snap.is_empty() {
        rows.push(row(
            "create from snapshot (API, client-side)",
            &api_snap,
            ratio(&api_snap, &bare_restore),
        ));
        rows.push(row(
            "create from snapshot (agent: restore → guest answers)",
            &boot_snap,
            "",
        ));
    }
    rows.extend(pool::pool_rows(c, a, &req, &bare_restore).await?);
    rows.extend(net_rows);
    if !bare_cold.is_empty() {
        rows.push(row(
            "bare QEMU cold boot → guest answers (baseline)",
            &bare_cold,
            "same kernel, initrd and image",
        ));
    }
    if !bare_restore.is_empty() {
        rows.push(row(
            "bare QEMU restore → guest answers (baseline)",
            &bare_restore,
            "the agent's boot snapshot files, overlay included",
        ));
    }

    eprintln!("bench: exec round trips…");
    let s = c.create_sandbox(&req).await?;
    let (mut exec, mut in_guest) = (Vec::new(), Vec::new());
    for _ in 0..(a.runs * 5).max(20) {
        let t = Instant::now();
        let done = c
            .exec(
                &s.id,
                &ExecRequest {
                    cmd: "true".into(),
                    ..Default::default()
                },
            )
            .await?;
        exec.push(ms(t.elapsed()));
        in_guest.push(done.duration_ms as f64);
    }
    rows.extend(exec_rows(a, &exec, &in_guest).await);

    eprintln!("bench: pause/resume…");
    let fresh_rss = qemu_pid(&s.id).and_then(|p| qemu_memory(p, s.memory_mb));
    let (mut pause, mut resume, mut bare_resume) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.runs.clamp(1, 5) {
        // Something to keep: 32 MB the guest wrote before the pause.
        c.exec(
            &s.id,
            &ExecRequest {
                cmd: "sh".into(),
                args: vec![
                    "-c".into(),
                    "head -c 33554432 /dev/urandom > /tmp/bench.bin".into(),
                ],
                ..Default::default()
            },
        )
        .await?;
        let t = Instant::now();
        c.pause_sandbox(&s.id).await?;
        pause.push(ms(t.elapsed()));
        if let Some(dir) = &a.agent_data_dir {
            // The same saved state restored by bare QEMU, before the agent resumes it.
            match crate::agent::vm::bare_resume(dir, &a.kernel_dir, &s.id).await {
                Ok(d) => bare_resume.push(ms(d)),
                Err(e) => eprintln!("bench: bare QEMU resume failed: {e:#}"),
            }
        }
        let t = Instant::now();
        c.resume_sandbox(&s.id).await?;
        resume.push(ms(t.elapsed()));
    }
    let resumed_rss = qemu_pid(&s.id).and_then(|p| qemu_memory(p, s.memory_mb));
    rows.push(row("pause (memory saved, VM process ended)", &pause, ""));
    rows.push(row(
        "resume (restored, guest answers)",
        &resume,
        ratio(&resume, &bare_resume),
    ));
    if !bare_resume.is_empty() {
        rows.push(row(
            "bare QEMU resume of the same paused state (baseline)",
            &bare_resume,
            "the agent's saved state and files, restored without agent or server",
        ));
    }
    c.delete_sandbox(&s.id).await?;

    eprintln!("bench: {} concurrent creates…", a.concurrency);
    let cpu_before = crate::agent::prometheus::cpu_seconds();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency {
        let (c, req) = (c.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = c.create_sandbox(&req).await;
            (r, ms(t.elapsed()))
        }));
    }
    let mut each = Vec::new();
    let mut ids = Vec::new();
    let mut failed = 0;
    for task in tasks {
        match task.await? {
            (Ok(s), d) => {
                each.push(d);
                ids.push((s.id, s.memory_mb));
            }
            (Err(e), _) => {
                failed += 1;
                eprintln!("bench: a concurrent create failed: {e}");
            }
        }
    }
    let total = ms(t.elapsed());
    // What bounds a burst: the CPU the restores need against what the host has.
    let cpu = match (cpu_before, crate::agent::prometheus::cpu_seconds()) {
        (Some((b0, _)), Some((b1, _))) => format!(
            "; the host's CPUs were busy {:.1} core-s of the {:.1} they had",
            b1 - b0,
            total / 1000.0
                * std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1) as f64
        ),
        _ => String::new(),
    };
    let one = percentiles(&api_snap).0;
    rows.push(row(
        &format!("{} concurrent creates: each", a.concurrency),
        &each,
        format!(
            "all done in {:.1} s = {:.1}× one create (target 3×); {failed} failed{cpu}",
            total / 1000.0,
            total / one
        ),
    ));

    let mut rss = Vec::new();
    let mut extra = Vec::new();
    for (id, mem) in &ids {
        if let Some(pid) = qemu_pid(id)
            && let Some((r, e)) = qemu_memory(pid, *mem)
        {
            rss.push(r);
            extra.push(e);
        }
    }
    for (id, _) in &ids {
        let _ = c.delete_sandbox(id).await;
    }

    let mut md = String::new();
    md.push_str("| measurement | n | p50 | p95 | note |\n|---|---:|---:|---:|---|\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {:.0} ms | {:.0} ms | {} |\n",
            r.what, r.n, r.p50, r.p95, r.note
        ));
    }
    if let (Some((fresh, _)), Some((resumed, _))) = (fresh_rss, resumed_rss) {
        md.push_str(&format!(
            "| QEMU resident memory after a resume (32 MB written before each pause) | 1 | {resumed:.0} MB | {resumed:.0} MB | {fresh:.0} MB for the same sandbox freshly restored |\n"
        ));
    }
    if !rss.is_empty() {
        let (r50, r95) = percentiles(&rss);
        let (e50, e95) = percentiles(&extra);
        md.push_str(&format!(
            "| QEMU resident memory per idle sandbox ({} MB guest) | {} | {r50:.0} MB | {r95:.0} MB | |\n",
            ids.first().map(|x| x.1).unwrap_or(0),
            rss.len()
        ));
        md.push_str(&format!(
            "| … of which outside guest RAM (QEMU's own overhead) | {} | {e50:.0} MB | {e95:.0} MB | |\n",
            extra.len()
        ));
    }
    let accel = c
        .list_hosts()
        .await
        .ok()
        .and_then(|h| h.into_iter().find_map(|h| h.accel))
        .unwrap_or_else(|| "?".into());
    let header = format!(
        "Measured {} on {} ({} cores), accelerator `{accel}`, template `{}`, {} runs; took {:.0} s.\n\n",
        chrono_like_now(),
        std::fs::read_to_string("/etc/hostname")
            .unwrap_or_default()
            .trim(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        a.template,
        a.runs,
        started.elapsed().as_secs_f64()
    );
    let text = format!("{header}{md}");
    println!("{text}");
    write_section(&a.out, "bench", &text)?;
    eprintln!("bench: table written to {}", a.out.display());
    Ok(0)
}

/// The API's exec beside the bare guest channel's round trips (a ping, and an exec of `true`
/// straight on the channel of a bare restored VM): what the server and agent add.
async fn exec_rows(a: &BenchArgs, api: &[f64], api_in_guest: &[f64]) -> Vec<Row> {
    let n = api.len();
    let bare = match &a.agent_data_dir {
        Some(dir) => {
            eprintln!("bench: bare guest-channel round trips…");
            crate::agent::vm::bare_round_trips(dir, &a.kernel_dir, &a.template, n)
                .await
                .map_err(|e| eprintln!("bench: bare round trips failed: {e:#}"))
                .ok()
        }
        None => None,
    };
    let Some(bare) = bare else {
        return vec![row("exec round trip (`true`, API)", api, "")];
    };
    let ping: Vec<f64> = bare.ping.iter().copied().map(ms).collect();
    let exec: Vec<f64> = bare.exec.iter().copied().map(ms).collect();
    let bare_in_guest: Vec<f64> = bare.exec_in_guest.iter().copied().map(ms).collect();
    let (guest50, bare_guest50) = (percentiles(api_in_guest).0, percentiles(&bare_in_guest).0);
    let (api50, exec50, ping50) = (
        percentiles(api).0,
        percentiles(&exec).0,
        percentiles(&ping).0,
    );
    vec![
        row(
            "exec round trip (`true`, API)",
            api,
            format!(
                "+{:.1} ms over the bare channel's exec (target +3 ms); the guest's own run of `true` took {guest50:.0} ms here, {bare_guest50:.0} ms in the bare VM, so the server, agent and HTTP add {:.1} ms",
                api50 - exec50,
                (api50 - guest50) - (exec50 - bare_guest50)
            ),
        ),
        row(
            "bare guest channel: exec of `true` (baseline)",
            &exec,
            format!(
                "a bare restored VM, no agent or server; the guest's fork and exec: {:.1} ms over a ping",
                exec50 - ping50
            ),
        ),
        row("bare guest channel: ping → pong (baseline)", &ping, ""),
    ]
}

fn chrono_like_now() -> String {
    let secs = crate::time::unix_now();
    let days = secs / 86400;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Replaces the generated section `name` of the output file (between `<!-- NAME:begin -->` and
/// `<!-- NAME:end -->`), keeping the rest; appends it when the file has none.
fn write_section(path: &Path, name: &str, table: &str) -> anyhow::Result<()> {
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{begin}\n{table}{end}");
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{section}{}", &old[..b], &old[e + end.len()..]),
        _ if old.is_empty() => format!("# Benchmarks\n\n{section}\n"),
        _ => format!("{old}\n{section}\n"),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_sample() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let (p50, p95) = percentiles(&v);
        assert!((50.0..=51.0).contains(&p50));
        assert!((95.0..=96.0).contains(&p95));
        assert!(percentiles(&[]).0.is_nan());
        assert_eq!(percentiles(&[7.0]), (7.0, 7.0));
    }

    #[test]
    fn dates() {
        assert_eq!(chrono_like_now().len(), 10);
    }
}
