//! The control plane: REST API, embedded SPA, accounts, host registry, scheduler and monitor,
//! with its state in one SQLite file.

pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod clock;
pub mod db;
pub mod listener;
pub mod lock;
pub mod monitor;
pub mod pool;
pub mod prometheus;
pub mod proxy;
pub mod ratelimit;
pub mod sandboxes;
pub mod scheduler;
pub mod state;
pub mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use futures_util::future::BoxFuture;
use tokio::net::TcpListener;

use self::auth::TokenKeys;
use self::auth::keys::ServerKeys;
use self::db::Db;
use self::pool::HostClientPool;
use self::scheduler::{RoundRobinScheduler, Scheduler};
use crate::proto::vocab::SignupMode;

/// Settings that handlers and background tasks read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The URL agents and users reach this server at (shown in registration commands).
    pub public_url: String,
    pub monitor_interval: Duration,
    pub host_stale_after: Duration,
    pub github: Option<api::oauth::GithubConfig>,
    /// Largest file a sandbox file upload may carry.
    pub max_file_bytes: u64,
    /// Accept BYOC agents on loopback, link-local and private addresses (tests, one machine).
    pub allow_private_agent_addresses: bool,
    /// Who may sign up (SPEC §15).
    pub signup: SignupMode,
    /// The first account needs the bootstrap token even from a loopback client (a reverse proxy
    /// on this machine makes every client look local).
    pub bootstrap_requires_token: bool,
    /// Timeouts, caps and trusted proxies.
    pub limits: listener::ServerLimits,
    /// Every team's quota unless a platform admin set its own (`--team-quota`).
    pub team_quota: crate::proto::quota::TeamQuota,
    /// A token that may read `GET /metrics` besides platform admins' (`--metrics-token-file`).
    pub metrics_token: Option<crate::crypto::Secret>,
    /// `{port}-{sandbox_id}.{DOMAIN}` reaches a sandbox's port (`--sandbox-domain`).
    pub sandbox_domain: Option<String>,
    /// How far hosts' CPU and memory may be promised (`--vcpu-overcommit`, `--memory-overcommit`).
    pub overcommit: scheduler::Overcommit,
}

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub keys: Arc<TokenKeys>,
    pub pool: Arc<HostClientPool>,
    pub scheduler: Arc<dyn Scheduler>,
    pub settings: Arc<Settings>,
    pub limits: Arc<ratelimit::AuthLimits>,
    /// The one-time token that lets the first account sign up from anywhere.
    pub bootstrap: Arc<bootstrap::Bootstrap>,
    /// Password hashing, bounded (see [`ratelimit::HashPool`]).
    pub hashing: Arc<ratelimit::HashPool>,
    /// Shutdown and open exec streams.
    pub lifecycle: Arc<listener::Lifecycle>,
    /// When this process opened the state (server clock, seconds): a sandbox still `starting`
    /// from before then was being created by a process that is gone (see `monitor`).
    pub booted_at: i64,
    /// The Prometheus series of `GET /metrics`.
    pub metrics: Arc<prometheus::ServerMetrics>,
}

impl AppState {
    /// Opens the database and keys in `data_dir` (creating both on first start).
    pub fn open(data_dir: &Path, settings: Settings) -> anyhow::Result<AppState> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data dir {}", data_dir.display()))?;
        restrict_dir(data_dir);
        let db = Db::open(&data_dir.join(db::DB_FILE)).context("opening the database")?;
        let keys = ServerKeys::load(data_dir)?;
        let keys = Arc::new(
            TokenKeys::new(&keys.jwt_secret, &keys.agent_signing)?
                .with_sandbox_access_key(keys.sandbox_access),
        );
        let hashing = ratelimit::HashPool::new(
            settings.limits.max_concurrent_hashes,
            settings.limits.max_concurrent_hashes * 16,
            Duration::from_secs(5),
        );
        let metrics = Arc::new(prometheus::ServerMetrics::new(&db));
        Ok(AppState {
            metrics,
            db,
            pool: Arc::new(HostClientPool::new(keys.clone())),
            keys,
            scheduler: Arc::new(RoundRobinScheduler::new(settings.overcommit)),
            settings: Arc::new(settings),
            limits: Arc::new(ratelimit::AuthLimits::default()),
            bootstrap: Arc::new(bootstrap::Bootstrap::new(data_dir)),
            hashing: Arc::new(hashing),
            lifecycle: Arc::default(),
            booted_at: db::now(),
        })
    }
}

fn restrict_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

pub fn app(state: AppState) -> Router {
    let (limits, lifecycle) = (state.settings.limits.clone(), state.lifecycle.clone());
    let http = state.metrics.http.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(api::router())
        .merge(api::e2b::router())
        .fallback(web::fallback)
        .layer(axum::middleware::from_fn_with_state(
            http,
            crate::prom::track,
        ))
        .with_state(state.clone());
    // Sandbox ports first: their bodies are streamed, never read by the API's limits (nor
    // counted as API requests in /metrics).
    listener::with_limits(app, &limits, lifecycle)
        .layer(axum::middleware::from_fn_with_state(
            state,
            proxy::route_to_sandbox,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Serves the API on `listener` until `shutdown` completes, then drains it within the shutdown
/// deadline ([`listener`]); starts the host monitor.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use futures_util::FutureExt;
    let monitor = tokio::spawn(monitor::HostMonitor::run(state.clone()));
    let (limits, lifecycle) = (state.settings.limits.clone(), state.lifecycle.clone());
    let app = app(state);
    let shutdown = shutdown.boxed().shared();
    let (main_tls, extra) = match tls {
        None => (None, None),
        Some(Tls {
            acceptor,
            listener: None,
        }) => (Some(acceptor), None),
        Some(Tls {
            acceptor,
            listener: Some(l),
        }) => (None, Some((l, acceptor))),
    };
    let extra = extra.map(|(l, acceptor)| {
        let (app, limits, lifecycle, shutdown) = (
            app.clone(),
            limits.clone(),
            lifecycle.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            listener::serve_http(l, app, &limits, lifecycle, Some(acceptor), shutdown).await
        })
    });
    let result = listener::serve_http(listener, app, &limits, lifecycle, main_tls, shutdown).await;
    if let Some(t) = extra {
        let _ = t.await;
    }
    monitor.abort();
    result.context("serving HTTP")
}

/// HTTPS: on the main listener, or (with `listener`) on a listener of its own while the main one
/// stays plain HTTP (`--tls-listen`).
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub listener: Option<TcpListener>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub public_url: Option<String>,
    pub monitor_interval: Duration,
    pub host_stale_after: Duration,
    pub github: Option<api::oauth::GithubConfig>,
    pub max_file_bytes: u64,
    pub allow_private_agent_addresses: bool,
    pub signup: SignupMode,
    pub bootstrap_requires_token: bool,
    pub limits: listener::ServerLimits,
    pub team_quota: crate::proto::quota::TeamQuota,
    pub metrics_token: Option<crate::crypto::Secret>,
    pub sandbox_domain: Option<String>,
    /// Serve HTTPS with this certificate chain and key (PEM files).
    pub tls: Option<listener::TlsFiles>,
    /// Serve HTTPS here, and plain HTTP on `listen` (default: HTTPS on `listen`).
    pub tls_listen: Option<SocketAddr>,
    pub overcommit: scheduler::Overcommit,
}

/// Work that goes with the server, given its state: the single-machine setup (`sandboxctl server
/// --local-agent`) creates its admin in `prepare` and runs its agent in `run`.
pub struct Companion {
    /// Runs once the database is open, before the listener accepts anything; an error stops the
    /// server.
    pub prepare: Box<dyn FnOnce(AppState) -> BoxFuture<'static, anyhow::Result<()>> + Send>,
    /// Runs beside the server once it serves.
    pub run: Box<dyn FnOnce(AppState) -> BoxFuture<'static, ()> + Send>,
}

pub async fn run(cfg: ServerConfig, companion: Option<Companion>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(cfg.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (is another server running? try --listen 127.0.0.1:0)",
            cfg.listen
        )
    })?;
    let addr = listener.local_addr()?;
    // A bad certificate stops the start, before anything is served.
    let acceptor = cfg.tls.as_ref().map(|t| t.acceptor()).transpose()?;
    let tls_listener = match (&acceptor, cfg.tls_listen) {
        (Some(_), Some(at)) => Some(
            TcpListener::bind(at)
                .await
                .with_context(|| format!("cannot listen on {at} (--tls-listen)"))?,
        ),
        (None, Some(_)) => anyhow::bail!("--tls-listen needs --tls-cert and --tls-key"),
        _ => None,
    };
    let https_addr = tls_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    // Held until this function returns: another server (or a restore) on this data dir refuses.
    let _lock = lock::DataDirLock::acquire(&cfg.data_dir)?;
    let public_url = cfg.public_url.clone().unwrap_or_else(|| {
        let scheme = if acceptor.is_some() && https_addr.is_none() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{addr}")
    });
    let state = AppState::open(
        &cfg.data_dir,
        Settings {
            public_url: public_url.clone(),
            monitor_interval: cfg.monitor_interval,
            host_stale_after: cfg.host_stale_after,
            github: cfg.github.clone(),
            max_file_bytes: cfg.max_file_bytes,
            allow_private_agent_addresses: cfg.allow_private_agent_addresses,
            signup: cfg.signup,
            bootstrap_requires_token: cfg.bootstrap_requires_token,
            limits: cfg.limits.clone(),
            team_quota: cfg.team_quota,
            metrics_token: cfg.metrics_token.clone(),
            sandbox_domain: cfg.sandbox_domain.clone(),
            overcommit: cfg.overcommit,
        },
    )?;
    // Nothing is answered before this: the local setup's admin exists before anyone can sign up.
    let companion = match companion {
        Some(c) => {
            (c.prepare)(state.clone()).await?;
            Some(c.run)
        }
        None => None,
    };
    bootstrap::announce(&state, &cfg.data_dir).await?;
    tracing::info!(%addr, data_dir = %cfg.data_dir.display(), signup = %cfg.signup, "sandboxctl server listening");
    println!("sandboxctl server listening on {public_url}");
    if let Some(a) = https_addr {
        println!("sandboxctl server serving HTTPS on {a}");
    }
    let tls = acceptor.map(|acceptor| Tls {
        acceptor,
        listener: tls_listener,
    });
    let shutdown = async {
        let _ = shutdown_signal().await;
    };
    let server = tokio::spawn(serve(listener, state.clone(), tls, shutdown));
    if let Some(run) = companion {
        tokio::spawn(run(state.clone()));
    }
    server.await.context("server task")?
}

async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
