//! `sandboxctl bench server`: the control plane at fleet scale. Starts the real server (this
//! binary, as a child process on an ephemeral port with a temporary data dir), registers a fleet
//! of simulated hosts ([`super::fleet`]), seeds sandboxes through the real create path (`POST
//! /v1/sandboxes` with team API keys: quota, placement over the whole fleet, the signed call to
//! the host), deletes a share of them again (`DELETE`, so lists carry history), then drives an
//! open-loop load of sandbox GETs and lists ([`super::load`]) while the hosts heartbeat and
//! refresh, and reports latency, errors, the server's CPU and memory as a markdown table.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use super::fleet::{self, Fleet};
use super::load::{self, TeamTarget};
use super::server_side;
use crate::cli::client::ApiClient;
use crate::proto::api::CreateSandboxRequest;

#[derive(Debug, Clone)]
pub struct ServerBenchArgs {
    pub hosts: usize,
    pub sandboxes: usize,
    pub teams: usize,
    /// Requests a second during the load.
    pub rate: f64,
    pub duration: Duration,
    /// The share of requests that are lists (the rest are GETs of one sandbox).
    pub list_share: f64,
    /// Every how many seeded sandboxes one is deleted again (0: none).
    pub delete_every: usize,
    pub heartbeat_interval: Duration,
    pub out: PathBuf,
}

/// The p-quantile of a sample (nearest rank), NaN when empty.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i]
}

/// The server process: killed (and its data dir removed) when dropped.
struct ServerProcess {
    child: tokio::process::Child,
    pid: u32,
    url: String,
    data_dir: PathBuf,
}

impl ServerProcess {
    async fn start(heartbeat_interval: Duration) -> anyhow::Result<ServerProcess> {
        let data_dir = std::env::temp_dir().join(format!(
            "sandboxctl-bench-server-{}-{}",
            std::process::id(),
            crate::crypto::random_token("")
        ));
        std::fs::create_dir_all(&data_dir)?;
        let log = std::fs::File::create(data_dir.join("server.log"))?;
        let exe = std::env::current_exe().context("finding this program")?;
        let mut cmd = tokio::process::Command::new(exe);
        // The server reads SANDBOXCTL_* settings from its environment: only the log filter passes.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SANDBOXCTL_") && k != "SANDBOXCTL_LOG" {
                cmd.env_remove(k);
            }
        }
        if std::env::var_os("SANDBOXCTL_LOG").is_none() {
            cmd.env("SANDBOXCTL_LOG", "warn");
        }
        let stale = heartbeat_interval * 3;
        cmd.arg("server")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir.join("server"))
            // The simulated hosts come from loopback and name their own address (198.18.0.0/15)
            // the way a proxy in front of a real fleet does.
            .arg("--trusted-proxy")
            .arg("127.0.0.1/32")
            .arg("--heartbeat-interval")
            .arg(format!("{}s", heartbeat_interval.as_secs().max(1)))
            .arg("--host-stale-after")
            .arg(format!("{}s", stale.as_secs().max(3)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting the server")?;
        let pid = child.id().context("the server exited at once")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("sandboxctl server listening on ") {
                    return Ok(url.trim().to_string());
                }
            }
            bail!("the server exited before it listened")
        })
        .await
        .context("the server did not start listening within 60 s")??;
        // Keep reading its standard output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ServerProcess {
            child,
            pid,
            url,
            data_dir,
        })
    }

    /// The end of the server's log, for error messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn stop(mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) / hz)
}

/// (resident, peak resident) memory of a process in MB, from `/proc/PID/status`.
fn memory_mb(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Teams, each with an API key made by the admin (who owns them all).
async fn make_teams(admin: &ApiClient, n: usize) -> anyhow::Result<Vec<TeamTarget>> {
    let mut out = Vec::new();
    for t in 0..n {
        let team = admin
            .create_team(&format!("bench-team-{t}"))
            .await
            .context("creating a team")?;
        let auth = admin
            .switch_team(&team.id)
            .await
            .context("switching team")?;
        let key = admin
            .with_token(&auth.token)
            .create_key("bench")
            .await
            .context("creating an API key")?
            .key
            .context("the API key's secret")?;
        out.push(TeamTarget {
            key,
            sandboxes: Vec::new(),
        });
    }
    Ok(out)
}

/// Creates `n` sandboxes round-robin over the teams through `POST /v1/sandboxes`, then deletes
/// every `delete_every`-th; answers how long the creates took.
async fn seed(
    base: &str,
    teams: &mut [TeamTarget],
    n: usize,
    delete_every: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let clients: Vec<ApiClient> = teams
        .iter()
        .map(|t| ApiClient::new(base, Some(t.key.clone())))
        .collect();
    let mut tasks = Vec::new();
    for i in 0..n {
        let t = i % teams.len();
        let (c, sem) = (clients[t].clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let req = CreateSandboxRequest {
                template: Some(fleet::TEMPLATE.into()),
                timeout_sec: Some(0),
                metadata: Some(BTreeMap::from([
                    ("bench".to_string(), "seed".to_string()),
                    ("n".to_string(), i.to_string()),
                ])),
                ..Default::default()
            };
            let s = c.create_sandbox(&req).await.context("creating a sandbox")?;
            if delete_every > 0 && i % delete_every == delete_every - 1 {
                c.delete_sandbox(&s.id)
                    .await
                    .context("deleting a sandbox")?;
            }
            anyhow::Ok((t, s.id))
        }));
        if i % 1000 == 999 {
            eprintln!("bench server: {} sandboxes requested…", i + 1);
        }
    }
    for task in tasks {
        let (t, id) = task.await??;
        teams[t].sandboxes.push(id);
    }
    Ok(started.elapsed())
}

pub async fn run(a: &ServerBenchArgs) -> anyhow::Result<i32> {
    if a.hosts == 0 || a.teams == 0 || a.rate <= 0.0 || a.duration.is_zero() {
        bail!("--hosts, --teams, --rate and --duration must be more than 0");
    }
    if !(0.0..=1.0).contains(&a.list_share) {
        bail!("--list-share must be between 0 and 1");
    }
    let began = Instant::now();
    let load_before = loadavg();
    let server = ServerProcess::start(a.heartbeat_interval).await?;
    eprintln!(
        "bench server: server at {} (pid {})",
        server.url, server.pid
    );
    let result = measure(a, &server).await;
    let result = result
        .map_err(|e| anyhow::anyhow!("{e:#}\nthe server's log ends with:\n{}", server.log_tail()));
    server.stop().await;
    let (table, errors) = result?;
    let header = format!(
        "Measured {} on {} ({} cores), {} build, load average {load_before} before and {} after \
         (other work on the machine shows in these figures); took {:.0} s.\n\n",
        super::chrono_like_now(),
        std::fs::read_to_string("/etc/hostname")
            .unwrap_or_default()
            .trim(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        loadavg(),
        began.elapsed().as_secs_f64()
    );
    let text = format!("{header}{table}");
    println!("{text}");
    super::write_section(&a.out, "bench-server", &text)?;
    eprintln!("bench server: table written to {}", a.out.display());
    if errors > 0 {
        eprintln!("bench server: {errors} requests failed");
    }
    Ok(0)
}

/// Everything between the server's start and its stop: the table and the number of errors.
async fn measure(a: &ServerBenchArgs, server: &ServerProcess) -> anyhow::Result<(String, u64)> {
    let admin = ApiClient::new(&server.url, None);
    let password = crate::crypto::random_token("pw_");
    let auth = admin
        .signup("bench-admin@example.com", &password, "Bench admin")
        .await
        .context("signing up the admin")?;
    let admin = admin.with_token(&auth.token);
    let mut teams = make_teams(&admin, a.teams).await?;

    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let mut fleet = Fleet::start(&server.url, stop.clone()).await?;
    let t = Instant::now();
    fleet.register(&admin, a.hosts, 16).await?;
    let registered = t.elapsed();
    eprintln!(
        "bench server: {} hosts registered in {:.1} s",
        a.hosts,
        registered.as_secs_f64()
    );
    // The hosts heartbeat while the sandboxes are made (it takes longer than a host may stay
    // silent at this scale), and refresh their credentials once during the load.
    let seeding = stop.child_token();
    let beating = fleet.run(a.heartbeat_interval, None, seeding.clone());
    let seeded = seed(&server.url, &mut teams, a.sandboxes, a.delete_every).await;
    seeding.cancel();
    let _ = beating.await;
    let seeded = seeded?;
    eprintln!(
        "bench server: {} sandboxes created in {:.1} s",
        a.sandboxes,
        seeded.as_secs_f64()
    );

    let hosts_running = fleet.run(a.heartbeat_interval, Some(a.duration), stop.clone());
    let metrics_before = metrics(&admin).await;
    let own_cpu_before = cpu_seconds(std::process::id());
    let cpu_before = cpu_seconds(server.pid);
    let t = Instant::now();
    eprintln!(
        "bench server: {} requests/s for {} s…",
        a.rate,
        a.duration.as_secs()
    );
    let mut r = load::run(&server.url, &teams, a.rate, a.duration, a.list_share).await?;
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.pid)
        .zip(cpu_before)
        .map(|(after, before)| (after - before) / wall * 100.0);
    let own_cpu = cpu_seconds(std::process::id())
        .zip(own_cpu_before)
        .map(|(after, before)| (after - before) / wall * 100.0);
    let metrics_after = metrics(&admin).await;
    // The server's own time per request (router to response head), from its histograms.
    let server_side = |method: &str, route: &str| {
        let (b, a) = (
            server_side::buckets(&metrics_before, method, route),
            server_side::buckets(&metrics_after, method, route),
        );
        match (
            server_side::quantile_ms(&b, &a, 0.5),
            server_side::quantile_ms(&b, &a, 0.99),
        ) {
            (Some(p50), Some(p99)) => {
                format!("; in the server itself p50 {p50:.1} ms, p99 {p99:.1} ms")
            }
            _ => String::new(),
        }
    };
    let (get_side, list_side) = (
        server_side("GET", "/v1/sandboxes/{id}"),
        server_side("GET", "/v1/sandboxes"),
    );
    let mem = memory_mb(server.pid);
    stop.cancel();
    let _ = hosts_running.await;
    let st = &fleet.stats;

    let mut md = String::new();
    let per_team = a.sandboxes / a.teams;
    md.push_str(&format!(
        "{} simulated hosts (registered in {:.1} s), {} teams with {} sandboxes (created through \
         `POST /v1/sandboxes` in {:.1} s, one in {} deleted again), {:.0} requests/s for {} s, \
         {:.0}% lists; latency from each request's scheduled send (open loop).\n\n",
        a.hosts,
        registered.as_secs_f64(),
        a.teams,
        a.sandboxes,
        seeded.as_secs_f64(),
        a.delete_every,
        a.rate,
        a.duration.as_secs(),
        a.list_share * 100.0
    ));
    md.push_str(
        "| request | n | p50 | p99 | max | errors | note |\n|---|---:|---:|---:|---:|---:|---|\n",
    );
    let mut line = |what: &str, v: &mut Vec<f64>, errors: u64, note: String| {
        let (p50, p99, max) = (quantile(v, 0.5), quantile(v, 0.99), quantile(v, 1.0));
        md.push_str(&format!(
            "| {what} | {} | {p50:.1} ms | {p99:.1} ms | {max:.1} ms | {errors} | {note} |\n",
            v.len()
        ));
    };
    let target = |v: &mut Vec<f64>| {
        let p99 = quantile(v, 0.99);
        if p99 < 20.0 {
            "target p99 < 20 ms: met".to_string()
        } else {
            "target p99 < 20 ms: **missed**".to_string()
        }
    };
    let (gt, lt) = (target(&mut r.get), target(&mut r.list));
    line(
        "sandbox GET (API key)",
        &mut r.get,
        r.get_errors,
        format!("{gt}{get_side}"),
    );
    line(
        &format!("sandbox list (API key, ~{per_team} rows)"),
        &mut r.list,
        r.list_errors,
        format!("{lt}{list_side}"),
    );
    let mut hb = std::mem::take(&mut *st.heartbeats.lock().unwrap_or_else(|p| p.into_inner()));
    let mut rf = std::mem::take(&mut *st.refreshes.lock().unwrap_or_else(|p| p.into_inner()));
    line(
        "host heartbeat",
        &mut hb,
        st.heartbeat_errors.load(Ordering::Relaxed),
        format!(
            "every {} s per host, while seeding and during the load",
            a.heartbeat_interval.as_secs()
        ),
    );
    line(
        "host credential refresh",
        &mut rf,
        st.refresh_errors.load(Ordering::Relaxed),
        "once per host during the load".into(),
    );
    md.push('\n');
    md.push_str("| server | value |\n|---|---:|\n");
    if let Some(cpu) = cpu {
        md.push_str(&format!(
            "| CPU during the load (user + system) | {cpu:.0}% of one core |\n"
        ));
    }
    if let Some(own) = own_cpu {
        md.push_str(&format!(
            "| CPU of the load generator and the simulated hosts (this process, same machine) | {own:.0}% of one core |\n"
        ));
    }
    if let Some((rss, peak)) = mem {
        md.push_str(&format!(
            "| resident memory after the load | {rss:.0} MB |\n| peak resident memory | {peak:.0} MB |\n"
        ));
    }
    md.push_str(&format!(
        "| signed calls to hosts (monitor, creates, deletes) | {} ({} refused) |\n",
        st.agent_calls.load(Ordering::Relaxed),
        st.agent_calls_refused.load(Ordering::Relaxed)
    ));
    md.push_str(&format!(
        "| requests that waited for one of the {} connection slots | {} of {} |\n",
        512, r.queued, r.scheduled
    ));
    for e in &r.error_samples {
        eprintln!("bench server: error: {e}");
    }
    let errors = r.get_errors
        + r.list_errors
        + st.heartbeat_errors.load(Ordering::Relaxed)
        + st.refresh_errors.load(Ordering::Relaxed);
    Ok((md, errors))
}

/// The server's `/metrics` exposition (the bench's admin is the platform admin); empty if it
/// cannot be read.
async fn metrics(admin: &ApiClient) -> String {
    match admin.raw(reqwest::Method::GET, "/metrics", None).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => {
            eprintln!("bench server: cannot read /metrics: {e}");
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), 50.0);
        assert_eq!(quantile(&mut v, 0.99), 99.0);
        assert_eq!(quantile(&mut v, 1.0), 100.0);
        assert!(quantile(&mut [], 0.5).is_nan());
        assert_eq!(quantile(&mut [3.0], 0.99), 3.0);
    }
}
