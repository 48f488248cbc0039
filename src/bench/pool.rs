//! The warm pool's rows of `sandboxctl bench` (an agent started with `--warm-pool`): a create
//! that takes a waiting VM beside the bare restore, the refill's time and CPU, and what the
//! waiting VMs cost (proportional memory, idle CPU).

use std::time::{Duration, Instant};

use anyhow::Context;

use super::{BenchArgs, Row, ms, percentiles, row};
use crate::cli::client::ApiClient;
use crate::proto::api::CreateSandboxRequest;

/// Proportional set size of a process, in MB (`/proc/PID/smaps_rollup`: the template's shared
/// pages split among the VMs mapping them).
fn pss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// `/proc/PID/stat` fields after the command: (parent pid, CPU time used in ms).
fn stat(pid: u32) -> Option<(u32, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    // state ppid … utime (14th field overall, 12th after the command) stime.
    let ppid = rest.get(1)?.parse().ok()?;
    let ticks: f64 = rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((ppid, ticks * 1000.0 / hz))
}

fn cpu_ms(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| stat(*p)).map(|(_, c)| c).sum()
}

/// Waits until `want` VMs wait in the pool, twice in a row a poll apart (the last one may
/// still be restoring when its process appears).
async fn wait_full(
    dir: &std::path::Path,
    want: usize,
    limit: Duration,
) -> anyhow::Result<Vec<u32>> {
    let deadline = Instant::now() + limit;
    let mut seen = 0;
    loop {
        let pids = crate::agent::vm::pool::waiting_pids(dir);
        seen = if pids.len() >= want { seen + 1 } else { 0 };
        if seen >= 2 {
            return Ok(pids);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the warm pool did not refill to {want} in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The warm pool's rows, when the local agent keeps one for `req`'s template (none otherwise).
pub(super) async fn pool_rows(
    c: &ApiClient,
    a: &BenchArgs,
    req: &CreateSandboxRequest,
    bare_restore: &[f64],
) -> anyhow::Result<Vec<Row>> {
    let Some(dir) = &a.agent_data_dir else {
        return Ok(Vec::new());
    };
    let full = crate::agent::vm::pool::waiting_pids(dir).len();
    if full == 0 {
        eprintln!(
            "bench: no warm pool on the local agent (start it with --warm-pool TEMPLATE/SHAPE=N for its rows)"
        );
        return Ok(Vec::new());
    }
    eprintln!(
        "bench: warm pool of {full}: memory, idle CPU, {} creates…",
        a.runs
    );
    let waiting = wait_full(dir, full, Duration::from_secs(120)).await?;
    let pss: Vec<f64> = waiting.iter().filter_map(|p| pss_mb(*p)).collect();
    let idle_window = Duration::from_secs(5);
    let before = cpu_ms(&waiting);
    tokio::time::sleep(idle_window).await;
    let idle_pct =
        (cpu_ms(&waiting) - before) / ms(idle_window) * 100.0 / waiting.len().max(1) as f64;
    let agent = waiting.first().and_then(|p| stat(*p)).map(|(ppid, _)| ppid);

    let (mut api, mut refill, mut refill_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.runs {
        let old = wait_full(dir, full, Duration::from_secs(120)).await?;
        let agent_before = agent.and_then(stat).map(|(_, c)| c);
        let t = Instant::now();
        let s = c.create_sandbox(req).await.context("create")?;
        let wall = ms(t.elapsed());
        let created = Instant::now();
        let now = wait_full(dir, full, Duration::from_secs(120)).await?;
        if s.boot_kind.as_deref() == Some("pool") {
            api.push(wall);
            refill.push(ms(created.elapsed()));
            let new: Vec<u32> = now.into_iter().filter(|p| !old.contains(p)).collect();
            if let (Some(b), Some((_, after))) = (agent_before, agent.and_then(stat)) {
                refill_cpu.push(after - b + cpu_ms(&new));
            }
        }
        c.delete_sandbox(&s.id).await?;
    }
    let (api50, bare50) = (percentiles(&api).0, percentiles(bare_restore).0);
    let ratio = if bare50.is_finite() && bare50 > 0.0 {
        format!("{:.2}× bare QEMU restore (target ≤ 0.5×)", api50 / bare50)
    } else {
        String::new()
    };
    let (pss50, _) = percentiles(&pss);
    Ok(vec![
        row("create from the warm pool (API, client-side)", &api, ratio),
        row(
            "warm pool refill, create answered → VM waiting again (agent, background)",
            &refill,
            format!(
                "{full} waiting: PSS {pss50:.0} MB each (smaps_rollup), idle CPU {idle_pct:.1}% of a core each"
            ),
        ),
        row(
            "warm pool: agent + new QEMU CPU time per hand-over and refill",
            &refill_cpu,
            "CPU milliseconds, not wall time",
        ),
    ])
}
