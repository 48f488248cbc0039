//! The HTTP listener and its limits: how long a client may take to send its headers and its body,
//! how long a call may take, how many connections are served at once, how many exec streams one
//! user may hold open, and the graceful shutdown with a deadline.
//!
//! On SIGTERM the server keeps listening until the deadline: `/healthz` answers 503 "shutting
//! down", other new calls 503 `shutting_down`, exec streams get a close frame with the reason,
//! calls in flight (uploads too) may finish. At the deadline whatever is left is cut and the
//! process exits.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::proto::net::Cidr;
use crate::server::api::MAX_BODY_BYTES;
use crate::server::api::error::ApiError;

/// The limits the listener and the stream relay apply (flags `--header-read-timeout`,
/// `--request-timeout`, `--max-connections`, `--stream-idle-timeout`, `--max-streams-per-user`,
/// `--max-concurrent-hashes`, `--trusted-proxy`, `--shutdown-timeout`).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// A client must send a request's line and headers within this (also how long an idle
    /// keep-alive connection stays open).
    pub header_read_timeout: Duration,
    /// A client must send a request body within this (a streamed upload: with no gap longer
    /// than this); otherwise 408 `request_timeout`.
    pub request_timeout: Duration,
    /// Connections served at once; more wait in the kernel's queue.
    pub max_connections: usize,
    /// An exec stream with no message either way for this long is closed.
    pub stream_idle_timeout: Duration,
    /// Exec streams one user (with their API keys) may hold open at once.
    pub max_streams_per_user: usize,
    /// Password hashes computed at once (19 MiB each); a few more callers may wait.
    pub max_concurrent_hashes: usize,
    /// Peers whose `X-Forwarded-For` names the client (reverse proxies).
    pub trusted_proxies: Vec<Cidr>,
    /// How long a shutdown waits for calls in flight before cutting them.
    pub shutdown_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_connections: 1024,
            stream_idle_timeout: Duration::from_secs(30 * 60),
            max_streams_per_user: 16,
            max_concurrent_hashes: std::thread::available_parallelism()
                .map(|n| n.get().min(8))
                .unwrap_or(2),
            trusted_proxies: Vec::new(),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Whether the server is shutting down, and the exec streams open per user.
#[derive(Default)]
pub struct Lifecycle {
    stopping: CancellationToken,
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open exec stream, counted against its user until dropped.
pub struct StreamSlot {
    streams: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

impl Lifecycle {
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Completes when the shutdown begins.
    pub async fn stopping(&self) {
        self.stopping.cancelled().await
    }

    fn begin_shutdown(&self) {
        self.stopping.cancel();
    }

    /// Takes one of `user`'s stream slots, or `None` when all `max` are in use.
    pub fn open_stream(&self, user: &str, max: usize) -> Option<StreamSlot> {
        let mut m = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(user.to_string()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            streams: self.streams.clone(),
            user: user.to_string(),
        })
    }

    fn open_streams(&self) -> usize {
        let m = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        m.values().sum()
    }
}

/// The calls whose body is streamed to a host as it arrives (file uploads, template imports):
/// their body may take as long as it needs, stalling at most `--request-timeout` at a time.
fn streams_its_body(method: &Method, path: &str) -> bool {
    (method == Method::PUT && path.starts_with("/v1/sandboxes/") && path.ends_with("/files"))
        || (method == Method::POST && path == "/v1/templates/import")
}

/// Outermost middleware: refuses new calls while shutting down (health says so), and gives a
/// client `timeout` to send a request body (the whole of it, except for streamed uploads).
async fn guard(
    State((lifecycle, timeout)): State<(Arc<Lifecycle>, Duration)>,
    req: Request,
    next: Next,
) -> Response {
    if lifecycle.is_stopping() {
        let r = if req.uri().path() == "/healthz" {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
        } else {
            ApiError::Unavailable {
                code: "shutting_down",
                message: "the server is shutting down; retry in a moment".into(),
                retry_after_secs: 5,
            }
            .into_response()
        };
        return closing(r);
    }
    let (parts, body) = req.into_parts();
    if streams_its_body(&parts.method, parts.uri.path()) {
        let stalled = Arc::new(AtomicBool::new(false));
        let body = stall_limited(body, timeout, stalled.clone());
        let r = next.run(Request::from_parts(parts, body)).await;
        return if stalled.load(Ordering::SeqCst) {
            closing(request_timeout(timeout))
        } else {
            r
        };
    }
    match tokio::time::timeout(timeout, read_body(body)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => closing(e.into_response()),
        Err(_) => closing(request_timeout(timeout)),
    }
}

fn request_timeout(timeout: Duration) -> Response {
    ApiError::RequestTimeout(format!(
        "the request body did not arrive within {}s",
        timeout.as_secs_f64()
    ))
    .into_response()
}

/// The body a streamed upload reads: it fails (and sets `stalled`) once no chunk came for `gap`.
fn stall_limited(body: Body, gap: Duration, stalled: Arc<AtomicBool>) -> Body {
    use futures_util::StreamExt;
    let chunks = body.into_data_stream();
    Body::from_stream(futures_util::stream::unfold(Some(chunks), move |chunks| {
        let stalled = stalled.clone();
        async move {
            let mut chunks = chunks?;
            match tokio::time::timeout(gap, chunks.next()).await {
                Ok(Some(chunk)) => Some((chunk, Some(chunks))),
                Ok(None) => None,
                Err(_) => {
                    stalled.store(true, Ordering::SeqCst);
                    let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "body stalled");
                    Some((Err(axum::Error::new(e)), None))
                }
            }
        }
    }))
}

/// Reads a body the API takes whole (JSON): at most [`MAX_BODY_BYTES`].
async fn read_body(body: Body) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let mut chunks = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadBody(format!("reading the body: {e}")))?;
        if buf.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ApiError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The connection closes after this answer (the client is slow, or the server stopping).
fn closing(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Wraps the app in the limits that apply to every call.
pub fn with_limits(app: Router, limits: &ServerLimits, lifecycle: Arc<Lifecycle>) -> Router {
    app.layer(axum::middleware::from_fn_with_state(
        (lifecycle, limits.request_timeout),
        guard,
    ))
}

/// The certificate chain and private key (PEM files) of `--tls-cert` / `--tls-key`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// The acceptor for these files (rustls, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`); an error says
    /// which file is wrong and how.
    pub fn acceptor(&self) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        use anyhow::Context;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", self.cert.display()))?;
        if certs.is_empty() {
            anyhow::bail!("--tls-cert {}: no certificate in it", self.cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| anyhow::anyhow!("--tls-key {}: {e}", self.key.display()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("--tls-cert and --tls-key do not make a usable pair")?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
    }
}

/// Runs one connection until it ends; once `drain` fires, idle connections close at once and
/// busy ones after their call.
macro_rules! drive {
    ($conn:expr, $drain:expr) => {{
        let mut conn = std::pin::pin!($conn);
        if $drain.is_cancelled() {
            // Accepted while shutting down: one answer (with `Connection: close`).
            let _ = conn.await;
        } else {
            tokio::select! {
                _ = conn.as_mut() => {}
                () = $drain.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }
    }};
}

/// Serves `app` on `listener` (over TLS with `tls`) with the connection limits until `shutdown`
/// completes, then drains for at most `limits.shutdown_timeout` (see the module docs).
pub async fn serve_http(
    listener: TcpListener,
    app: Router,
    limits: &ServerLimits,
    lifecycle: Arc<Lifecycle>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // Over TLS, HTTP/2 too (negotiated by ALPN); HTTP/1.1 keeps the same header timeout.
    let mut http2 = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http2
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    http2.http2().timer(TokioTimer::new());
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut conns = JoinSet::new();
    let drain = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut stopping = false;
    let deadline = tokio::time::sleep(Duration::from_secs(365 * 86400));
    let mut deadline = std::pin::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = &mut shutdown, if !stopping => {
                tracing::info!(deadline = ?limits.shutdown_timeout, "shutting down");
                stopping = true;
                lifecycle.begin_shutdown();
                drain.cancel();
                deadline.as_mut().reset(tokio::time::Instant::now() + limits.shutdown_timeout);
            }
            () = &mut deadline, if stopping => {
                tracing::warn!(
                    connections = conns.len(),
                    streams = lifecycle.open_streams(),
                    "shutdown deadline reached: cutting what is left"
                );
                break;
            }
            _ = tick.tick(), if stopping => {
                if conns.is_empty() && lifecycle.open_streams() == 0 {
                    break;
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = async {
                let slot = slots.clone().acquire_owned().await;
                (slot, listener.accept().await)
            } => {
                let (Ok(slot), accepted) = accepted else { break };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: wait a moment, keep serving the rest.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let router = app.clone();
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    let mut router = router.clone();
                    async move {
                        let r: Result<Response, Infallible> = router.call(req.map(Body::new)).await;
                        r
                    }
                });
                let drain = drain.clone();
                let (http, http2, tls, handshake_wait) =
                    (http.clone(), http2.clone(), tls.clone(), limits.header_read_timeout);
                conns.spawn(async move {
                    let _slot = slot;
                    let Some(tls) = tls else {
                        let conn = http.serve_connection(TokioIo::new(stream), svc).with_upgrades();
                        drive!(conn, drain);
                        return;
                    };
                    // A client gets as long for its TLS handshake as for its headers.
                    let stream = match tokio::time::timeout(handshake_wait, tls.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = http2.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    drive!(conn, drain);
                });
            }
        }
    }
    conns.shutdown().await;
    Ok(())
}
