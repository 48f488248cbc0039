//! envd: the in-sandbox daemon the E2B SDKs talk to, on TCP port 49983 inside every VM
//! (/work/shared/E2B.md §3 is the contract). Connect RPCs (`process.Process`,
//! `filesystem.Filesystem`) in JSON over HTTP/1.1, plus `GET /health` and `GET|POST /files`.
//!
//! The guest program starts it before it serves the host channel, and every `Init` (after a
//! boot, a restore and each resume) sets the sandbox's env and access token before the guest
//! answers, so an envd that answers is a configured one. It runs on its own threads with a
//! small async runtime; the processes it starts outlive the requests that started them.

mod connect;
mod files;
mod filesystem;
mod process;
mod users;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Component, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use connect::{Code, RpcError, RpcResult};
use users::User;

/// What envd knows and runs.
pub(crate) struct Envd {
    token: RwLock<Option<String>>,
    env: RwLock<BTreeMap<String, String>>,
    procs: Arc<process::table::Table>,
    watchers: watch::Watchers,
}

impl Envd {
    fn new() -> Envd {
        Envd {
            token: RwLock::new(None),
            env: RwLock::new(BTreeMap::new()),
            procs: Arc::default(),
            watchers: watch::Watchers::default(),
        }
    }

    /// Takes the sandbox's env and access token (from `Init`).
    pub(crate) fn configure(&self, env: BTreeMap<String, String>, token: Option<String>) {
        *self.env.write().unwrap_or_else(|p| p.into_inner()) = env;
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = token.filter(|t| !t.is_empty());
    }

    fn token(&self) -> Option<String> {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The user an RPC acts as (`Authorization: Basic`), or the default one.
    fn user(&self, headers: &HeaderMap) -> RpcResult<User> {
        let name =
            users::basic_username(headers).map_err(|m| RpcError::new(Code::Unauthenticated, m))?;
        users::select(name.as_deref()).map_err(|m| RpcError::new(Code::Unauthenticated, m))
    }

    /// A process's environment: the user's basics, then the sandbox's env.
    fn env_for(&self, user: &User) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = [
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ),
            ("LANG", "C.UTF-8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.insert("HOME".into(), user.home.to_string_lossy().into_owned());
        env.insert("USER".into(), user.name.clone());
        env.insert("LOGNAME".into(), user.name.clone());
        env.insert("SHELL".into(), user.shell.clone());
        env.extend(
            self.env
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        env
    }
}

/// `path` (the request's `field`) resolved for `user`; empty or with a NUL byte is refused.
fn resolve_required(user: &User, path: &str, field: &str) -> RpcResult<PathBuf> {
    if path.is_empty() {
        return Err(RpcError::invalid(format!("{field} is required")));
    }
    if path.contains('\0') {
        return Err(RpcError::invalid(format!("{field} contains a NUL byte")));
    }
    Ok(resolve(user, path))
}

/// `path` for `user`: relative paths start at the user's home; `.` and `..` are resolved
/// lexically, so the answer is absolute and clean.
pub(crate) fn resolve(user: &User, path: &str) -> PathBuf {
    let joined = if let Some(rest) = path.strip_prefix("~/") {
        user.home.join(rest)
    } else if path == "~" {
        user.home.clone()
    } else {
        user.home.join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn router(envd: Arc<Envd>) -> Router {
    let rpc = Router::new()
        .route("/process.Process/{method}", post(process_rpc))
        .route("/filesystem.Filesystem/{method}", post(filesystem_rpc))
        .route_layer(axum::middleware::from_fn_with_state(
            envd.clone(),
            require_token,
        ));
    Router::new()
        .route("/health", get(|| async { StatusCode::NO_CONTENT }))
        .route("/files", get(files::download).post(files::upload))
        .merge(rpc)
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(crate::proto::envd::HttpError {
                    code: 404,
                    message: "no such envd endpoint".into(),
                }),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(envd)
}

/// With an access token set, RPCs need `X-Access-Token` (`/health` and `/files` check
/// themselves).
async fn require_token(State(envd): State<Arc<Envd>>, req: Request, next: Next) -> Response {
    if let Some(token) = envd.token() {
        let ok = req
            .headers()
            .get("x-access-token")
            .is_some_and(|v| crate::crypto::ct_eq(v.as_bytes(), token.as_bytes()));
        if !ok {
            return RpcError::new(
                Code::Unauthenticated,
                "missing or invalid access token (X-Access-Token)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

async fn process_rpc(
    State(envd): State<Arc<Envd>>,
    UrlPath(method): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    process::call(envd, &method, headers, body).await
}

async fn filesystem_rpc(
    State(envd): State<Arc<Envd>>,
    UrlPath(method): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    filesystem::call(envd, &method, headers, body).await
}

/// Binds `addr` now and serves on a thread of its own; returns at once. A bind that fails
/// (the port still held by a previous guest program) is retried in the background.
pub(crate) fn spawn(addr: SocketAddr) -> anyhow::Result<Arc<Envd>> {
    let envd = Arc::new(Envd::new());
    let first = std::net::TcpListener::bind(addr);
    let e = envd.clone();
    std::thread::Builder::new()
        .name("envd".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("envd-rt")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(err) => {
                    eprintln!("sandboxctl guest: envd: no runtime: {err}");
                    return;
                }
            };
            rt.block_on(async move {
                let mut bound = first;
                loop {
                    match bound {
                        Ok(l) => {
                            if let Err(err) = serve(l, e.clone()).await {
                                eprintln!("sandboxctl guest: envd: {err:#}");
                            }
                        }
                        Err(err) => eprintln!("sandboxctl guest: envd: bind {addr}: {err}"),
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    bound = std::net::TcpListener::bind(addr);
                }
            });
        })
        .context("spawn the envd thread")?;
    Ok(envd)
}

async fn serve(listener: std::net::TcpListener, envd: Arc<Envd>) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, router(envd)).await?;
    Ok(())
}

/// `sandboxctl guest envd --listen ADDR`: envd alone, for development on a workstation
/// (the sandbox's env and token from `SANDBOXCTL_ENVD_TOKEN`, if set). Blocking.
pub fn serve_dev(addr: SocketAddr, token: Option<String>) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    eprintln!(
        "envd {} (E2B envd {}) on {}",
        env!("CARGO_PKG_VERSION"),
        crate::proto::e2b::ENVD_VERSION,
        listener.local_addr()?
    );
    let envd = Arc::new(Envd::new());
    envd.configure(BTreeMap::new(), token);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(listener, envd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn paths_resolve_against_home() {
        let u = User {
            name: "user".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/user".into(),
            shell: "/bin/sh".into(),
        };
        assert_eq!(resolve(&u, "a/b"), Path::new("/home/user/a/b"));
        assert_eq!(resolve(&u, "/tmp/../etc/x"), Path::new("/etc/x"));
        assert_eq!(resolve(&u, "~/x"), Path::new("/home/user/x"));
        assert_eq!(resolve(&u, "../../.."), Path::new("/"));
    }
}
