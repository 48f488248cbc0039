//! `sandboxctl agent run`: start the VM manager, serve the server's calls, heartbeat.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpSocket;
use tokio::sync::Mutex;

use super::api::{AgentState, router};
use super::credentials::{self, Credentials};
use super::facts;
use super::images::import::Limits;
use super::vm::cgroup::CgroupChoice;
use super::vm::{AccelChoice, VmConfig, VmManager};
use crate::crypto::agent_call::CallVerifier;
use crate::proto::agent::RefreshResponse;
use crate::proto::agent::{Accelerator, HeartbeatRequest, RefreshRequest};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub kernel_dir: PathBuf,
    /// Overrides the listen address stored at registration.
    pub listen: Option<String>,
    pub accel: AccelChoice,
    pub cgroup_root: CgroupChoice,
    pub max_concurrent_boots: usize,
    pub import_limits: Limits,
    pub heartbeat_interval: Duration,
    /// How often running VMs' usage is sampled.
    pub sample_interval: Duration,
    /// The binary put into guest images (None: this executable).
    pub guest_binary: Option<PathBuf>,
    pub net: crate::agent::net::NetConfig,
    pub jail: crate::agent::vm::JailConfig,
    /// The `/metrics` listener.
    pub metrics: super::prometheus::MetricsConfig,
    /// After the shutdown signal, how long calls in flight may take before they are cut (the VMs
    /// stay either way).
    pub shutdown_timeout: Duration,
    /// VMs kept restored and waiting for creates (`--warm-pool`).
    pub warm_pool: crate::agent::vm::pool::WarmPoolConfig,
}

/// Runs the agent until `shutdown` completes. VMs keep running after the agent exits; the next
/// agent process reattaches to them (the warm pool's waiting VMs are ended).
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    cfg.metrics.validate()?;
    let creds = credentials::load(&cfg.data_dir)?.with_context(|| {
        format!(
            "no credentials in {}: run `sandboxctl agent register --server URL --token TOKEN --data-dir {}` first",
            cfg.data_dir.display(),
            cfg.data_dir.display()
        )
    })?;
    let listen = cfg.listen.clone().unwrap_or_else(|| creds.listen.clone());
    // Bound now (a taken address fails at once), listening only once the VMs are up and the
    // server has this host's templates: a port that accepts means an agent that is ready.
    let socket = bind(&listen)
        .await
        .with_context(|| format!("agent cannot listen on {listen}"))?;
    let vms = VmManager::start(VmConfig {
        data_dir: cfg.data_dir.clone(),
        kernel_dir: cfg.kernel_dir.clone(),
        accel: cfg.accel,
        guest_binary: cfg.guest_binary.clone(),
        cgroup_root: cfg.cgroup_root.clone(),
        max_concurrent_boots: cfg.max_concurrent_boots,
        net: cfg.net.clone(),
        jail: cfg.jail.clone(),
        import_limits: cfg.import_limits,
        sample_interval: cfg.sample_interval,
        warm_pool: cfg.warm_pool.clone(),
    })
    .await
    .context("starting the VM manager")?;
    let metrics = Arc::new(super::prometheus::AgentMetrics::new(
        vms.clone(),
        cfg.data_dir.clone(),
    ));
    super::prometheus::serve(&cfg.metrics, metrics.clone()).await?;
    let accel = vms.accel().clone();
    tracing::info!(host = %creds.host_id, %listen, accel = accel.kind, reason = %accel.reason, "agent serving");
    let verifier = Arc::new(CallVerifier::new(&creds.server_public_key, &creds.host_id)?);
    let pool_owner = vms.clone();
    let state = AgentState {
        vms: vms.clone(),
        verifier,
    };
    let hb = Heartbeat {
        data_dir: cfg.data_dir.clone(),
        creds: Arc::new(Mutex::new(creds)),
        vms,
        accel_kind: accel.kind.parse().context("the VM accelerator")?,
        accel_reason: accel.reason.clone(),
        http: crate::tls::http_client(|b| b.timeout(Duration::from_secs(20)))?,
    };
    if let Err(e) = hb.beat().await {
        tracing::warn!(error = ?e, "first heartbeat failed; retrying in the background");
    }
    let listener = socket
        .listen(1024)
        .with_context(|| format!("agent cannot listen on {listen}"))?;
    let interval = cfg.heartbeat_interval;
    let heartbeats = tokio::spawn(async move { hb.run(interval).await });
    // On the signal the agent stops taking calls and lets those in flight finish, up to the
    // deadline: a long exec or upload must not hold an upgrade (or systemd's stop) hostage. Its
    // VMs keep running either way (the guest ends a command whose caller was cut when the next
    // agent connects).
    let stopping = Arc::new(tokio::sync::Notify::new());
    let signalled = stopping.clone();
    let serve = axum::serve(listener, router(state, metrics.http.clone())).with_graceful_shutdown(
        async move {
            shutdown.await;
            tracing::info!("agent stopping; its VMs keep running");
            signalled.notify_one();
        },
    );
    let deadline = cfg.shutdown_timeout;
    let result = tokio::select! {
        r = serve.into_future() => r.context("serving the agent API"),
        () = async {
            stopping.notified().await;
            tokio::time::sleep(deadline).await;
        } => {
            tracing::warn!(deadline = ?deadline, "calls still in flight at the shutdown deadline are cut");
            Ok(())
        }
    };
    heartbeats.abort();
    // Waiting VMs belong to no sandbox: they end with the agent.
    pool_owner.drain_pool().await;
    result
}

/// A socket bound to `listen` (`host:port`), not yet listening.
async fn bind(listen: &str) -> anyhow::Result<TcpSocket> {
    let addr = tokio::net::lookup_host(listen)
        .await?
        .next()
        .with_context(|| format!("{listen} resolves to no address"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

struct Heartbeat {
    data_dir: PathBuf,
    creds: Arc<Mutex<Credentials>>,
    vms: Arc<VmManager>,
    accel_kind: Accelerator,
    accel_reason: String,
    http: reqwest::Client,
}

/// Why a refresh failed: the server refused the refresh token (401/403: the credentials are
/// gone for good), or anything else (network, server trouble), which is retried.
#[derive(Debug, thiserror::Error)]
enum RefreshError {
    #[error("the server refused the refresh token ({0})")]
    Refused(reqwest::StatusCode),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

#[derive(Debug)]
enum BeatError {
    /// 401/403: the credentials need refreshing.
    Auth,
    Other(String),
}

impl Heartbeat {
    async fn run(self, interval: Duration) {
        let mut backoff = Duration::from_secs(1);
        // Set once the VMs were paused for lost credentials; cleared when a refresh works again.
        let mut paused_all = false;
        loop {
            if self.expires_soon().await {
                match self.refresh().await {
                    Ok(()) => tracing::info!("host credentials refreshed before expiry"),
                    Err(e) => {
                        tracing::warn!(error = %e, "refreshing host credentials before expiry failed")
                    }
                }
            }
            match self.beat().await {
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    tokio::time::sleep(interval).await;
                }
                Err(BeatError::Auth) => match self.refresh().await {
                    Ok(()) => {
                        paused_all = false;
                        tracing::info!("host credentials refreshed");
                    }
                    Err(e) => {
                        if matches!(e, RefreshError::Refused(_)) && !paused_all {
                            // PauseAll (docs/ARCHITECTURE.md#server-and-agent): without
                            // credentials nothing may run unaccounted.
                            paused_all = true;
                            let n = self.vms.pause_all().await;
                            tracing::error!(
                                paused = n,
                                "the server refused this host's credentials; paused every running VM"
                            );
                        }
                        tracing::error!(error = %e, "refreshing host credentials failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                    }
                },
                Err(BeatError::Other(e)) => {
                    tracing::warn!(error = %e, "heartbeat failed");
                    tokio::time::sleep(interval.min(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// True when the host JWT expires within a day (refreshed ahead, not on the first 401).
    async fn expires_soon(&self) -> bool {
        let c = self.creds.lock().await;
        c.token_expires_at - crate::time::unix_now() < 86400
    }

    async fn beat(&self) -> Result<(), BeatError> {
        let (url, token, advertise) = {
            let c = self.creds.lock().await;
            (
                format!("{}/v1/hosts/{}/heartbeat", c.server_url, c.host_id),
                c.token.clone(),
                c.advertise.clone(),
            )
        };
        let (running_vms, used_memory_mb, used_vcpus) = self.vms.usage().await;
        let req = HeartbeatRequest {
            facts: facts::gather(
                &self.data_dir,
                &advertise,
                self.accel_kind,
                &self.accel_reason,
                self.vms.cgroups().summary(),
            ),
            running_vms,
            used_memory_mb,
            used_vcpus,
            templates: self.vms.templates().await,
        };
        let resp = self
            .http
            .post(url)
            .bearer_auth(token)
            .json(&req)
            .send()
            .await
            .map_err(|e| BeatError::Other(e.without_url().to_string()))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            401 | 403 => Err(BeatError::Auth),
            s => Err(BeatError::Other(format!("server answered {s}"))),
        }
    }

    async fn refresh(&self) -> Result<(), RefreshError> {
        let mut c = self.creds.lock().await;
        let resp = self
            .http
            .post(format!("{}/v1/hosts/auth/refresh", c.server_url))
            .json(&RefreshRequest {
                refresh_token: c.refresh_token.clone(),
            })
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.without_url()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(RefreshError::Refused(status));
        }
        if !status.is_success() {
            return Err(anyhow::anyhow!("the server answered {status} to the refresh").into());
        }
        let r: RefreshResponse = resp
            .json()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.without_url()))?;
        c.token = r.token;
        c.token_expires_at = r.token_expires_at;
        c.refresh_token = r.refresh_token;
        c.refresh_expires_at = r.refresh_expires_at;
        credentials::save(&self.data_dir, &c)?;
        Ok(())
    }
}
