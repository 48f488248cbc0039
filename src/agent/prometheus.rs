//! The agent's Prometheus series and the listener that serves them (`--metrics-listen`, loopback
//! by default; `--metrics-token-file` to require a token, needed off loopback): requests to the
//! agent's API by route and status, VMs by state, boot kinds, guest-channel errors and the host's
//! CPU, memory and disk in use.
//!
//! Boots and guest-channel errors are counted where they happen, in `vm/` (`vm::counters`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use super::vm::{VmManager, counters};
use crate::crypto::Secret;
use crate::prom::{self, HttpMetrics};
use crate::proto::agent::VmState;

/// Where the metrics listener binds unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

/// The agent's series.
pub struct AgentMetrics {
    registry: Registry,
    pub http: Arc<HttpMetrics>,
    vms: Family<StateLabels, Gauge>,
    manager: Arc<VmManager>,
}

impl AgentMetrics {
    pub fn new(manager: Arc<VmManager>, data_dir: PathBuf) -> AgentMetrics {
        let mut r = prom::registry();
        let http = HttpMetrics::new(&mut r);
        let vms = Family::<StateLabels, Gauge>::default();
        r.register("vms", "VMs on this host by state", vms.clone());
        r.register(
            "vm_boots",
            "VMs booted, by kind (snapshot: restored from a boot snapshot; cold: a full boot)",
            counters::boots(),
        );
        r.register(
            "guest_channel_errors",
            "Guest-channel errors, by kind (timeout, unresponsive, protocol, cut_off, connection)",
            counters::channel_errors(),
        );
        r.register_collector(Box::new(HostUsage { data_dir }));
        AgentMetrics {
            registry: r,
            http,
            vms,
            manager,
        }
    }

    /// The series in Prometheus text, VMs and host usage read now.
    pub async fn render(&self) -> String {
        let infos = self.manager.list().await;
        for s in VmState::ALL {
            let n = infos.iter().filter(|i| i.state == s).count();
            self.vms
                .get_or_create(&StateLabels { state: s.as_str() })
                .set(n as i64);
        }
        prom::encode(&self.registry)
    }
}

/// The metrics listener's settings.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Where to serve `/metrics`; None: not at all.
    pub listen: Option<SocketAddr>,
    /// A scraper's token, required when set.
    pub token: Option<Secret>,
}

impl MetricsConfig {
    /// Refuses a listener off loopback without a token.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(addr) = self.listen
            && !addr.ip().is_loopback()
            && self.token.is_none()
        {
            anyhow::bail!(
                "--metrics-listen {addr} is not on loopback: give scrapers a token with --metrics-token-file (or SANDBOXCTL_METRICS_TOKEN)"
            );
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Served {
    metrics: Arc<AgentMetrics>,
    token: Option<Secret>,
}

/// Binds the metrics listener (if any) and serves it in the background. A taken default address
/// only warns (another agent on this machine may hold it); an address given that cannot be bound
/// is an error.
pub async fn serve(cfg: &MetricsConfig, metrics: Arc<AgentMetrics>) -> anyhow::Result<()> {
    cfg.validate()?;
    let Some(addr) = cfg.listen else {
        return Ok(());
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if addr.to_string() == DEFAULT_LISTEN => {
            tracing::warn!(%addr, error = %e, "metrics listener not started (address taken); see --metrics-listen");
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("--metrics-listen {addr}")),
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, token = cfg.token.is_some(), "agent metrics at http://{addr}/metrics");
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Served {
            metrics,
            token: cfg.token.clone(),
        });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics listener failed");
        }
    });
    Ok(())
}

async fn scrape(State(s): State<Served>, headers: HeaderMap) -> Response {
    if let Some(t) = &s.token
        && !prom::bearer_matches(&headers, t)
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "the metrics token is required\n",
        )
            .into_response();
    }
    let mut resp = s.metrics.render().await.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prom::CONTENT_TYPE),
    );
    resp
}

/// The host's CPU, memory and disk (the filesystem of the agent's data dir), read at each scrape.
#[derive(Debug)]
struct HostUsage {
    data_dir: PathBuf,
}

impl Collector for HostUsage {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some((busy, idle)) = cpu_seconds() {
            let c = ConstCounter::new(0.0f64);
            let mut e = encoder.encode_descriptor(
                "host_cpu_seconds",
                "CPU time of the whole host since boot, by mode (busy, idle), summed over its CPUs",
                None,
                c.metric_type(),
            )?;
            for (mode, v) in [("busy", busy), ("idle", idle)] {
                ConstCounter::new(v).encode(e.encode_family(&ModeLabels { mode })?)?;
            }
        }
        let gauges = [
            (
                "host_cpus",
                "CPUs of the host",
                Some(super::facts::cpu_cores() as u64),
            ),
            (
                "host_memory_total_bytes",
                "Memory of the host",
                meminfo_kb("MemTotal:").map(|kb| kb * 1024),
            ),
            (
                "host_memory_used_bytes",
                "Memory in use on the host (total less available)",
                match (meminfo_kb("MemTotal:"), meminfo_kb("MemAvailable:")) {
                    (Some(t), Some(a)) => Some(t.saturating_sub(a) * 1024),
                    _ => None,
                },
            ),
            (
                "host_disk_total_bytes",
                "Size of the filesystem holding the agent's data dir",
                disk(&self.data_dir).map(|d| d.0),
            ),
            (
                "host_disk_used_bytes",
                "Space in use on the filesystem holding the agent's data dir",
                disk(&self.data_dir).map(|d| d.1),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v as i64);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

/// The host's busy and idle CPU seconds from `/proc/stat` (idle counts iowait).
pub fn cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_line(stat.lines().next()?)
}

fn parse_cpu_line(line: &str) -> Option<(f64, f64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let v: Vec<u64> = fields.take(8).filter_map(|f| f.parse().ok()).collect();
    if v.len() < 5 {
        return None;
    }
    // SAFETY: sysconf only reads a configuration value.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    };
    let idle = v[3] + v[4];
    let busy: u64 = v.iter().sum::<u64>() - idle;
    Some((busy as f64 / hz, idle as f64 / hz))
}

fn meminfo_kb(key: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// (total, used) bytes of the filesystem holding `dir`.
fn disk(dir: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    let total = (st.f_blocks as u64).saturating_mul(frsize);
    let free = (st.f_bfree as u64).saturating_mul(frsize);
    Some((total, total.saturating_sub(free)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_line_splits_busy_and_idle() {
        let (busy, idle) = parse_cpu_line("cpu  100 20 30 400 50 6 4 0 0 0").expect("a cpu line");
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert_eq!(busy, 160.0 / hz);
        assert_eq!(idle, 450.0 / hz);
        assert!(parse_cpu_line("cpu0 1 2 3 4 5").is_none());
    }

    #[test]
    fn a_listener_off_loopback_needs_a_token() {
        let open = |addr: &str| MetricsConfig {
            listen: Some(addr.parse().unwrap()),
            token: None,
        };
        assert!(open("127.0.0.1:9464").validate().is_ok());
        assert!(open("[::1]:9464").validate().is_ok());
        let err = open("0.0.0.0:9464").validate().unwrap_err().to_string();
        assert!(err.contains("--metrics-token-file"), "{err}");
        let with_token = MetricsConfig {
            token: Some(Secret("t".into())),
            ..open("0.0.0.0:9464")
        };
        assert!(with_token.validate().is_ok());
    }
}
