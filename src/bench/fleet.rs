//! The simulated fleet of `sandboxctl bench server`: hosts that speak the real HTTP API to the
//! server (registration with a one-time token, a heartbeat every interval spread over it, a
//! credential refresh), and one in-process agent endpoint that answers the server's signed calls
//! for every simulated host (checked like a real agent checks them: the host's pinned key, its id
//! as audience, method, path, body and nonce). The VMs are bookkeeping only: no QEMU.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio_util::sync::CancellationToken;

use crate::cli::client::ApiClient;
use crate::crypto::agent_call::{CallBinding, CallVerifier, unix_now};
use crate::proto::agent::{
    Accelerator, CreateVmRequest, HeartbeatRequest, HostFacts, RefreshRequest, RefreshResponse,
    RegisterRequest, RegisterResponse, VmInfo, VmListResponse, VmState,
};
use crate::proto::api::CreateHostRequest;

/// The base template every simulated host reports ready.
pub const TEMPLATE: &str = "minimal";
/// Capacity each simulated host reports: room for every sandbox the bench makes.
const HOST_CORES: u32 = 64;
const HOST_MEMORY_MB: u64 = 512 * 1024;

/// What the hosts saw of the server while the load ran.
#[derive(Default)]
pub struct FleetStats {
    pub heartbeats: Mutex<Vec<f64>>,
    pub heartbeat_errors: AtomicU64,
    pub refreshes: Mutex<Vec<f64>>,
    pub refresh_errors: AtomicU64,
    /// Signed calls from the server (the monitor's VM lists, creates, deletes) and those refused.
    pub agent_calls: AtomicU64,
    pub agent_calls_refused: AtomicU64,
}

struct Credentials {
    token: String,
    refresh_token: String,
}

pub struct SimHost {
    index: usize,
    pub host_id: String,
    creds: tokio::sync::Mutex<Credentials>,
    verifier: CallVerifier,
    vms: Mutex<HashMap<String, VmInfo>>,
    /// Each host is its own client: its own connections, its own address (`X-Forwarded-For`
    /// from the benchmarking range 198.18.0.0/15, so rate limits see a fleet, not one peer).
    http: reqwest::Client,
    forwarded_for: String,
}

pub struct Fleet {
    pub hosts: Vec<Arc<SimHost>>,
    by_id: Arc<RwLock<HashMap<String, Arc<SimHost>>>>,
    server: String,
    agent_address: String,
    pub stats: Arc<FleetStats>,
}

/// The address a simulated host's requests come from (RFC 2544's benchmarking range).
fn host_ip(index: usize) -> String {
    format!("198.18.{}.{}", (index / 250) % 256, index % 250 + 1)
}

fn facts(address: &str) -> HostFacts {
    HostFacts {
        arch: std::env::consts::ARCH.into(),
        cpu_cores: HOST_CORES,
        memory_mb: HOST_MEMORY_MB,
        disk_gb: 2000,
        address: address.into(),
        accel: Accelerator::Kvm,
        accel_reason: "simulated host (sandboxctl bench server)".into(),
        cgroups: String::new(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

impl Fleet {
    /// Starts the agent endpoint on loopback; hosts join with [`Fleet::register`].
    pub async fn start(server: &str, stop: CancellationToken) -> anyhow::Result<Fleet> {
        let by_id: Arc<RwLock<HashMap<String, Arc<SimHost>>>> = Arc::default();
        let stats = Arc::new(FleetStats::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let app = axum::Router::new()
            .fallback(agent_call)
            .with_state((by_id.clone(), stats.clone()));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(Fleet {
            hosts: Vec::new(),
            by_id,
            server: server.trim_end_matches('/').into(),
            agent_address: addr.to_string(),
            stats,
        })
    }

    /// Adds `n` hosts the way an operator and `sandboxctl agent register` do: the admin creates
    /// each host (a one-time token), the host trades the token for credentials and sends its
    /// first heartbeat (with its templates, so it can take sandboxes). `concurrency` at a time.
    pub async fn register(
        &mut self,
        admin: &ApiClient,
        n: usize,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        let start = self.hosts.len();
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = Vec::new();
        for index in start..start + n {
            let (admin, server, address, sem) = (
                admin.clone(),
                self.server.clone(),
                self.agent_address.clone(),
                sem.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await?;
                let host = SimHost::join(&admin, &server, &address, index).await?;
                host.heartbeat(&server, &address).await?;
                anyhow::Ok(host)
            }));
        }
        for t in tasks {
            let host = Arc::new(t.await??);
            self.by_id
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(host.host_id.clone(), host.clone());
            self.hosts.push(host);
        }
        Ok(())
    }

    /// Every host heartbeats every `interval` (host i at i/N of it) and refreshes its credentials
    /// once within `refresh_within`, until `stop`.
    pub fn run(
        &self,
        interval: Duration,
        refresh_within: Option<Duration>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let n = self.hosts.len().max(1);
        let mut tasks = tokio::task::JoinSet::new();
        for h in &self.hosts {
            let (h, server, address, stats, stop) = (
                h.clone(),
                self.server.clone(),
                self.agent_address.clone(),
                self.stats.clone(),
                stop.clone(),
            );
            let offset = interval.mul_f64(h.index as f64 / n as f64);
            // A different spread for the refresh, so it does not fall on a heartbeat.
            let refresh_at =
                refresh_within.map(|w| w.mul_f64(((h.index * 7919) % n) as f64 / n as f64));
            tasks.spawn(async move {
                let begun = tokio::time::Instant::now();
                let mut next_beat = begun + offset;
                let mut refresh = refresh_at.map(|r| begun + r);
                loop {
                    let due = refresh.map_or(next_beat, |r| r.min(next_beat));
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep_until(due) => {}
                    }
                    if refresh.is_some_and(|r| r <= next_beat) {
                        refresh = None;
                        let t = Instant::now();
                        match h.refresh(&server).await {
                            Ok(()) => lock(&stats.refreshes).push(ms(t.elapsed())),
                            Err(e) => {
                                stats.refresh_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(host = %h.host_id, error = %format!("{e:#}"), "bench: refresh failed");
                            }
                        }
                        continue;
                    }
                    next_beat += interval;
                    let t = Instant::now();
                    match h.heartbeat(&server, &address).await {
                        Ok(()) => lock(&stats.heartbeats).push(ms(t.elapsed())),
                        Err(e) => {
                            stats.heartbeat_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(host = %h.host_id, error = %format!("{e:#}"), "bench: heartbeat failed");
                        }
                    }
                }
            });
        }
        tokio::spawn(async move { while tasks.join_next().await.is_some() {} })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A non-2xx answer as an error naming the status and the server's words.
async fn check(resp: reqwest::Response, what: &str) -> anyhow::Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    anyhow::bail!("{what}: the server answered {status}: {body}")
}

impl SimHost {
    async fn join(
        admin: &ApiClient,
        server: &str,
        address: &str,
        index: usize,
    ) -> anyhow::Result<SimHost> {
        let created = admin
            .create_host(&CreateHostRequest {
                host_type: "regular".into(),
                team_id: None,
                name: Some(format!("bench-{index}")),
                provider: Some("bench".into()),
                zone: Some(format!("zone-{}", index % 4)),
            })
            .await
            .context("creating a host")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let forwarded_for = host_ip(index);
        let resp = http
            .post(format!("{server}/v1/hosts/register"))
            .header("x-forwarded-for", &forwarded_for)
            .json(&RegisterRequest {
                token: created.registration_token,
                facts: facts(address),
            })
            .send()
            .await
            .context("registering")?;
        let r: RegisterResponse = check(resp, "registering").await?.json().await?;
        Ok(SimHost {
            index,
            verifier: CallVerifier::new(&r.server_public_key, &r.host_id)?,
            host_id: r.host_id,
            creds: tokio::sync::Mutex::new(Credentials {
                token: r.token,
                refresh_token: r.refresh_token,
            }),
            vms: Mutex::default(),
            http,
            forwarded_for,
        })
    }

    /// One heartbeat with the host's live figures, as the agent sends it.
    async fn heartbeat(&self, server: &str, address: &str) -> anyhow::Result<()> {
        let (running_vms, used_memory_mb, used_vcpus) = {
            let vms = lock(&self.vms);
            let live = vms.values().filter(|v| v.state != VmState::Stopped);
            live.fold((0u32, 0u64, 0u32), |(n, m, c), v| {
                (n + 1, m + u64::from(v.memory_mb), c + v.vcpus)
            })
        };
        let token = self.creds.lock().await.token.clone();
        let resp = self
            .http
            .post(format!("{server}/v1/hosts/{}/heartbeat", self.host_id))
            .header("x-forwarded-for", &self.forwarded_for)
            .bearer_auth(token)
            .json(&HeartbeatRequest {
                facts: facts(address),
                running_vms,
                used_memory_mb,
                used_vcpus,
                templates: vec![TEMPLATE.into()],
            })
            .send()
            .await?;
        check(resp, "heartbeat").await?;
        Ok(())
    }

    /// Trades the refresh token for new credentials (the old refresh token is spent).
    async fn refresh(&self, server: &str) -> anyhow::Result<()> {
        let mut c = self.creds.lock().await;
        let resp = self
            .http
            .post(format!("{server}/v1/hosts/auth/refresh"))
            .header("x-forwarded-for", &self.forwarded_for)
            .json(&RefreshRequest {
                refresh_token: c.refresh_token.clone(),
            })
            .send()
            .await?;
        let r: RefreshResponse = check(resp, "refresh").await?.json().await?;
        c.token = r.token;
        c.refresh_token = r.refresh_token;
        Ok(())
    }

    /// Serves one call the server made to this host (already verified).
    fn serve(&self, method: &Method, path: &str, body: &[u8]) -> Response {
        let mut vms = lock(&self.vms);
        match (method.as_str(), path) {
            ("GET", "/v1/vms") => axum::Json(VmListResponse {
                vms: vms.values().cloned().collect(),
            })
            .into_response(),
            ("POST", "/v1/vms") => {
                let Ok(req) = serde_json::from_slice::<CreateVmRequest>(body) else {
                    return StatusCode::BAD_REQUEST.into_response();
                };
                let vm = VmInfo {
                    id: req.id.clone(),
                    template: req.template,
                    state: VmState::Running,
                    vcpus: req.vcpus,
                    memory_mb: req.memory_mb,
                    pid: None,
                    boot_ms: Some(0),
                    boot_kind: Some("snapshot".into()),
                    error: None,
                };
                vms.insert(req.id, vm.clone());
                (StatusCode::CREATED, axum::Json(vm)).into_response()
            }
            ("DELETE", p) if p.starts_with("/v1/vms/") => {
                vms.remove(&p["/v1/vms/".len()..]);
                StatusCode::NO_CONTENT.into_response()
            }
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    }
}

type AgentState = (Arc<RwLock<HashMap<String, Arc<SimHost>>>>, Arc<FleetStats>);

/// The host a call token is addressed to (its `aud`), read before the signature is checked with
/// that host's pinned key.
fn audience(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(v.get("aud")?.as_str()?.to_string())
}

async fn agent_call(
    State((hosts, stats)): State<AgentState>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    stats.agent_calls.fetch_add(1, Ordering::Relaxed);
    let refused = || {
        stats.agent_calls_refused.fetch_add(1, Ordering::Relaxed);
        StatusCode::UNAUTHORIZED.into_response()
    };
    let Some(token) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return refused();
    };
    let Some(host) = audience(token).and_then(|aud| {
        hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&aud)
            .cloned()
    }) else {
        return refused();
    };
    let target = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string());
    let binding = CallBinding::new(method.as_str(), &target, &body);
    if host.verifier.verify(token, &binding, unix_now()).is_err() {
        return refused();
    }
    host.serve(&method, uri.path(), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_are_distinct_and_in_the_benchmarking_range() {
        let all: std::collections::HashSet<String> = (0..10_000).map(host_ip).collect();
        assert_eq!(all.len(), 10_000);
        assert!(all.iter().all(|a| a.starts_with("198.18.")));
        assert_eq!(host_ip(0), "198.18.0.1");
    }
}
