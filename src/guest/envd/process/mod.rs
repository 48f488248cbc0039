//! `process.Process`: start commands (on pipes or a PTY), attach to them, feed their input,
//! signal, resize and list them (/work/shared/E2B.md §3.2).

pub(crate) mod table;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::Envd;
use super::connect::{
    Code, MessageStream, RpcError, RpcResult, StreamSender, envelope, keepalive_interval,
    stream_error, stream_request, stream_response, timeout, unary_request, unary_response,
};
use crate::proto::envd::{
    CloseStdinRequest, ConnectRequest, Empty, ListResponse, ProcessEvent, ProcessEventResponse,
    ProcessInfo, ProcessInput, ProcessSelector, SendInputRequest, SendSignalRequest, Signal,
    StartRequest, StreamInputRequest, UpdateRequest,
};
use table::{Events, Proc, Spawn};

/// Serves `POST /process.Process/{method}`.
pub(super) async fn call(
    envd: Arc<Envd>,
    method: &str,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match method {
        "Start" => start(envd, headers, body).await,
        "Connect" => connect(envd, headers, body).await,
        "StreamInput" => stream_input(envd, headers, body).await,
        "List" => unary_response(Ok(list(&envd))),
        "SendInput" => {
            let r = match unary_request::<SendInputRequest>(&headers, body).await {
                Ok(req) => send_input(&envd, req).await,
                Err(e) => Err(e),
            };
            unary_response(r)
        }
        "CloseStdin" => unary_response(
            match unary_request::<CloseStdinRequest>(&headers, body).await {
                Ok(req) => find(&envd, &req.process)
                    .and_then(|p| p.close_stdin().map_err(failed_precondition))
                    .map(|()| Empty {}),
                Err(e) => Err(e),
            },
        ),
        "SendSignal" => unary_response(
            match unary_request::<SendSignalRequest>(&headers, body).await {
                Ok(req) => send_signal(&envd, req),
                Err(e) => Err(e),
            },
        ),
        "Update" => unary_response(match unary_request::<UpdateRequest>(&headers, body).await {
            Ok(req) => update(&envd, req),
            Err(e) => Err(e),
        }),
        other => RpcError::new(
            Code::Unimplemented,
            format!("process.Process has no method {other}"),
        )
        .into_response(),
    }
}

fn failed_precondition(message: String) -> RpcError {
    RpcError::new(Code::FailedPrecondition, message)
}

fn find(envd: &Envd, sel: &ProcessSelector) -> RpcResult<Arc<Proc>> {
    match sel {
        ProcessSelector::Pid(pid) => envd
            .procs
            .get(*pid)
            .ok_or_else(|| RpcError::not_found(format!("process with pid {pid} not found"))),
        ProcessSelector::Tag(tag) => envd
            .procs
            .by_tag(tag)
            .ok_or_else(|| RpcError::not_found(format!("process with tag {tag:?} not found"))),
    }
}

async fn start(envd: Arc<Envd>, headers: HeaderMap, body: Body) -> Response {
    let req = match stream_request::<StartRequest>(&headers, body).await {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    let user = match envd.user(&headers) {
        Ok(u) => u,
        Err(e) => return stream_error(e),
    };
    if req.process.cmd.is_empty() {
        return stream_error(RpcError::invalid("process.cmd is required"));
    }
    let cwd = match req.process.cwd.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => super::resolve(&user, c),
        None if user.home.is_dir() => user.home.clone(),
        None => "/".into(),
    };
    if !cwd.is_dir() {
        return stream_error(RpcError::invalid(format!(
            "process.cwd {} is not a directory in the sandbox",
            cwd.display()
        )));
    }
    let mut env = envd.env_for(&user);
    env.extend(req.process.envs.clone());
    let pty = req.pty.as_ref().map(|p| p.size.unwrap_or_default());
    if pty.is_some() {
        env.entry("TERM".into())
            .or_insert_with(|| "xterm-256color".into());
    }
    let mut config = req.process.clone();
    config.cwd = Some(cwd.to_string_lossy().into_owned());
    let spawned = envd.procs.spawn(Spawn {
        config,
        tag: req.tag.clone(),
        user,
        cwd,
        env,
        // Before envd 0.3.0 stdin was always on; an absent field keeps that.
        stdin: req.stdin.unwrap_or(true),
        pty,
    });
    let (proc, events) = match spawned {
        Ok(p) => p,
        Err(e) => {
            let code = match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::EACCES) | Some(libc::ENOEXEC) => {
                    Code::InvalidArgument
                }
                _ => Code::Internal,
            };
            return stream_error(RpcError::new(
                code,
                format!("cannot start {}: {e}", req.process.cmd),
            ));
        }
    };
    // The call's deadline is the command's timeout: the process is killed when it passes,
    // whether or not anyone is still attached.
    let deadline = timeout(&headers).map(|t| Instant::now() + t);
    if let Some(at) = deadline {
        let p = proc.clone();
        let procs = envd.procs.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            if procs.get(p.pid).is_some_and(|q| Arc::ptr_eq(&q, &p)) {
                p.signal(libc::SIGKILL);
            }
        });
    }
    let (tx, response) = stream_response();
    tokio::spawn(forward(
        tx,
        proc.pid,
        events,
        keepalive_interval(&headers),
        deadline,
    ));
    response
}

async fn connect(envd: Arc<Envd>, headers: HeaderMap, body: Body) -> Response {
    let req = match stream_request::<ConnectRequest>(&headers, body).await {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    let proc = match find(&envd, &req.process) {
        Ok(p) => p,
        Err(e) => return stream_error(e),
    };
    let Some(events) = proc.subscribe() else {
        return stream_error(RpcError::not_found(format!(
            "process with pid {} not found",
            proc.pid
        )));
    };
    let (tx, response) = stream_response();
    let deadline = timeout(&headers).map(|t| Instant::now() + t);
    tokio::spawn(forward(
        tx,
        proc.pid,
        events,
        keepalive_interval(&headers),
        deadline,
    ));
    response
}

/// A `Start` or `Connect` stream: `start{pid}` first, then the process's events up to its
/// `end`, keepalives while idle, and the end-stream envelope.
async fn forward(
    tx: StreamSender,
    pid: u32,
    mut events: Events,
    keepalive: Duration,
    deadline: Option<Instant>,
) {
    let msg = |event| ProcessEventResponse { event };
    if !tx.send(&msg(ProcessEvent::Start { pid })).await {
        return;
    }
    let far = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    let deadline_sleep = tokio::time::sleep_until(deadline.unwrap_or(far));
    tokio::pin!(deadline_sleep);
    let mut ticks = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
    loop {
        tokio::select! {
            biased;
            event = events.recv() => match event {
                Some(event) => {
                    let end = matches!(event, ProcessEvent::End(_));
                    if !tx.send(&msg(event)).await {
                        return;
                    }
                    if end {
                        tx.end(Ok(())).await;
                        return;
                    }
                    ticks.reset();
                }
                None => {
                    tx.end(Ok(())).await;
                    return;
                }
            },
            _ = &mut deadline_sleep => {
                tx.end(Err(RpcError::new(
                    Code::DeadlineExceeded,
                    "the command's timeout passed (Connect-Timeout-Ms)",
                )))
                .await;
                return;
            }
            _ = ticks.tick() => {
                if !tx.send(&msg(ProcessEvent::Keepalive {})).await {
                    return;
                }
            }
            () = tx.closed() => return,
        }
    }
}

fn list(envd: &Envd) -> ListResponse {
    ListResponse {
        processes: envd
            .procs
            .list()
            .into_iter()
            .map(|p| ProcessInfo {
                config: p.config.clone(),
                pid: p.pid,
                tag: p.tag.clone(),
            })
            .collect(),
    }
}

async fn write_input(proc: Arc<Proc>, input: ProcessInput) -> RpcResult<()> {
    let bytes = match input {
        ProcessInput::Stdin(b) | ProcessInput::Pty(b) => b.0,
    };
    tokio::task::spawn_blocking(move || proc.write_stdin(&bytes))
        .await
        .map_err(|e| RpcError::new(Code::Internal, e.to_string()))?
        .map_err(failed_precondition)
}

async fn send_input(envd: &Envd, req: SendInputRequest) -> RpcResult<Empty> {
    let proc = find(envd, &req.process)?;
    if let Some(input) = req.input {
        write_input(proc, input).await?;
    }
    Ok(Empty {})
}

fn send_signal(envd: &Envd, req: SendSignalRequest) -> RpcResult<Empty> {
    let proc = find(envd, &req.process)?;
    let sig = match req.signal {
        Signal::Sigkill => libc::SIGKILL,
        Signal::Sigterm => libc::SIGTERM,
        Signal::Unspecified => return Err(RpcError::invalid("signal is required")),
    };
    proc.signal(sig);
    Ok(Empty {})
}

fn update(envd: &Envd, req: UpdateRequest) -> RpcResult<Empty> {
    let proc = find(envd, &req.process)?;
    let Some(size) = req.pty.and_then(|p| p.size) else {
        return Err(RpcError::invalid("pty.size is required"));
    };
    if size.cols == 0 || size.rows == 0 {
        return Err(RpcError::invalid("pty.size needs cols and rows above 0"));
    }
    proc.resize(size).map_err(failed_precondition)?;
    Ok(Empty {})
}

/// `StreamInput`: a client stream that names the process first, then carries its input.
async fn stream_input(envd: Arc<Envd>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let mut messages = MessageStream::new(&headers, body)?;
        let mut proc: Option<Arc<Proc>> = None;
        while let Some(msg) = messages.next::<StreamInputRequest>().await? {
            match msg {
                StreamInputRequest::Start { process } => proc = Some(find(&envd, &process)?),
                StreamInputRequest::Data { input } => {
                    let Some(p) = proc.clone() else {
                        return Err(RpcError::invalid(
                            "the first message of StreamInput must be start",
                        ));
                    };
                    if let Some(input) = input {
                        write_input(p, input).await?;
                    }
                }
                StreamInputRequest::Keepalive {} => {}
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            let mut bytes = envelope(0, b"{}").to_vec();
            bytes.extend_from_slice(&envelope(2, b"{}"));
            Response::builder()
                .header("content-type", "application/connect+json")
                .body(Body::from(bytes))
                .unwrap_or_else(|_| {
                    RpcError::new(Code::Internal, "building the response").into_response()
                })
        }
        Err(e) => stream_error(e),
    }
}
