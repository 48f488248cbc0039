//! Agent routes for streaming exec, files and the console log.
//!
//! Exec stream (`GET /v1/vms/{id}/exec/stream`, WebSocket): the client's first message is text
//! `{"type":"start",…}`; then text `resize` / `signal` / `eof` and binary `[0]+stdin`. The agent
//! answers text `started`, binary `[1]+stdout` / `[2]+stderr` as output comes, and text `exit`
//! (or `error`) before closing. Output is never dropped: when the client reads slowly, the
//! WebSocket send waits, the agent stops granting the guest credit and the command blocks on its
//! full pipe (see [`crate::agent::vm::stream`]). Stdin waits for the guest the same way, on its
//! own task so a command that writes before it reads cannot deadlock the stream. The client
//! closing the socket kills the command's process group.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;

use super::api::{AgentApiError, AgentState, error};
use super::vm::VmError;
use super::vm::files::{FileError, MAX_UPLOAD_BYTES};
use super::vm::stream::{DEFAULT_LOG_TAIL, ExecEvent, ExecInput};
use crate::proto::api::{
    ExecClientMessage, ExecServerMessage, STREAM_STDERR, STREAM_STDIN, STREAM_STDOUT,
};
use crate::proto::guest::FileErrorCode;

/// Largest WebSocket message accepted from the server.
const MAX_MESSAGE: usize = 1 << 20;
/// How long the client has to send its `start` message.
const START_WAIT: Duration = Duration::from_secs(30);
/// After the client goes away, how long the command gets to report its exit.
const EXIT_WAIT: Duration = Duration::from_secs(5);

pub fn routes() -> Router<AgentState> {
    Router::new()
        .route("/v1/vms/{id}/exec/stream", get(exec_stream))
        .route(
            "/v1/vms/{id}/files",
            get(read_file)
                .put(write_file)
                .delete(remove_file)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/vms/{id}/files/list", get(list_files))
        .route("/v1/vms/{id}/files/stat", get(stat_file))
        .route("/v1/vms/{id}/files/mkdir", post(mkdir))
        .route("/v1/vms/{id}/logs", get(logs))
}

// ---- exec stream ----

async fn exec_stream(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AgentApiError> {
    // Refuse early (as JSON) what cannot work; the rest is reported on the socket.
    st.vms.exec_stream_ready(&id)?;
    let ws = ws.map_err(|e| {
        AgentApiError(VmError::BadRequest {
            field: "upgrade",
            message: format!("this route speaks WebSocket only ({})", e.body_text()),
        })
    })?;
    Ok(ws
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| run_exec_stream(st, id, socket)))
}

fn server_msg(m: &ExecServerMessage) -> Message {
    Message::Text(serde_json::to_string(m).unwrap_or_default().into())
}

fn vm_error_message(e: &VmError) -> ExecServerMessage {
    let code = match e {
        VmError::NotFound(_) => "not_found",
        VmError::Conflict(_) => "conflict",
        VmError::BadRequest { .. } => "invalid_field",
        VmError::GuestUnavailable(_) => "guest_unavailable",
        VmError::Internal(_) => "internal",
    };
    ExecServerMessage::Error {
        code: code.into(),
        message: e.to_string(),
    }
}

async fn run_exec_stream(st: AgentState, id: String, socket: WebSocket) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let start = match tokio::time::timeout(START_WAIT, ws_rx.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<ExecClientMessage>(&t),
        Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return,
        Ok(Some(Ok(_))) => serde_json::from_str::<ExecClientMessage>("null"),
        Err(_) => {
            let m = ExecServerMessage::Error {
                code: "invalid_message".into(),
                message: "no start message".into(),
            };
            let _ = ws_tx.send(server_msg(&m)).await;
            let _ = ws_tx.close().await;
            return;
        }
    };
    let start = match start {
        Ok(ExecClientMessage::Start(s)) => s,
        other => {
            let why = match other {
                Err(e) => format!("the first message must be {{\"type\":\"start\",…}}: {e}"),
                Ok(_) => "the first message must be {\"type\":\"start\",…}".into(),
            };
            let m = ExecServerMessage::Error {
                code: "invalid_message".into(),
                message: why,
            };
            let _ = ws_tx.send(server_msg(&m)).await;
            let _ = ws_tx.close().await;
            return;
        }
    };
    let exec = match st.vms.exec_stream(&id, start).await {
        Ok(e) => e,
        Err(e) => {
            let _ = ws_tx.send(server_msg(&vm_error_message(&e))).await;
            let _ = ws_tx.close().await;
            return;
        }
    };
    let mut output = exec.output;
    let input = exec.input;
    if ws_tx
        .send(server_msg(&ExecServerMessage::Started { pid: exec.pid }))
        .await
        .is_err()
    {
        // Dropping `output` kills the process.
        return;
    }

    // Client → guest, on its own task. It ends when the client closes (then the command is
    // killed) or sends something unusable (reported, then killed).
    let (notes_tx, mut notes_rx) = tokio::sync::mpsc::channel::<ExecServerMessage>(1);
    let input_task = tokio::spawn(pump_input(ws_rx, input.clone(), notes_tx));

    // Guest → client, here.
    let mut client_gone = false;
    let mut kill_deadline: Option<tokio::time::Instant> = None;
    let end = loop {
        let sleep_until = kill_deadline;
        let event = tokio::select! {
            ev = output.next() => ev,
            note = notes_rx.recv(), if !client_gone => {
                if let Some(m) = note {
                    let _ = ws_tx.send(server_msg(&m)).await;
                }
                // The client went away or broke the protocol: kill the command, wait a little
                // for its exit, then give up.
                client_gone = true;
                let _ = input.kill().await;
                kill_deadline = Some(tokio::time::Instant::now() + EXIT_WAIT);
                continue;
            }
            _ = async {
                match sleep_until {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break None,
        };
        match event {
            Ok(ExecEvent::Stdout(b)) | Ok(ExecEvent::Stderr(b)) if client_gone => drop(b),
            Ok(ExecEvent::Stdout(b)) => {
                if send_output(&mut ws_tx, STREAM_STDOUT, &b).await.is_err() {
                    client_gone = true;
                    let _ = input.kill().await;
                    kill_deadline = Some(tokio::time::Instant::now() + EXIT_WAIT);
                }
            }
            Ok(ExecEvent::Stderr(b)) => {
                if send_output(&mut ws_tx, STREAM_STDERR, &b).await.is_err() {
                    client_gone = true;
                    let _ = input.kill().await;
                    kill_deadline = Some(tokio::time::Instant::now() + EXIT_WAIT);
                }
            }
            Ok(ExecEvent::Exit(exit)) => {
                break Some(ExecServerMessage::Exit {
                    exit_code: exit.exit_code,
                    signal: exit.signal,
                    timed_out: exit.timed_out,
                    duration_ms: exit.duration_ms,
                });
            }
            Err(e) => break Some(vm_error_message(&e)),
        }
    };
    input_task.abort();
    if let Some(m) = end
        && !client_gone
    {
        let _ = ws_tx.send(server_msg(&m)).await;
    }
    let _ = ws_tx.close().await;
    tracing::debug!(vm = %id, client_gone, "exec stream ended");
}

async fn send_output(
    ws_tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    stream: u8,
    bytes: &[u8],
) -> Result<(), axum::Error> {
    let mut m = Vec::with_capacity(bytes.len() + 1);
    m.push(stream);
    m.extend_from_slice(bytes);
    ws_tx.send(Message::Binary(m.into())).await
}

/// Reads the client's messages into the exec. Returns when the client is gone (dropping
/// `notes`), or after queueing an error note for a message it cannot act on.
///
/// While stdin waits for the guest (the command is not reading), the next messages are still
/// looked at: a signal or resize goes through at once (^C must work on a command that ignores its
/// input) and a close is noticed; a second stdin message is held, which stops the reading.
async fn pump_input(
    mut ws_rx: futures_util::stream::SplitStream<WebSocket>,
    input: ExecInput,
    notes: tokio::sync::mpsc::Sender<ExecServerMessage>,
) {
    let refuse = |message: String| ExecServerMessage::Error {
        code: "invalid_message".into(),
        message,
    };
    let mut held: Option<Message> = None;
    loop {
        let m = match held.take() {
            Some(m) => m,
            None => match ws_rx.next().await {
                Some(Ok(m)) => m,
                _ => return,
            },
        };
        let result = match m {
            Message::Binary(b) => {
                let Some((&STREAM_STDIN, data)) = b.split_first() else {
                    let why = "binary messages carry stdin: first byte 0".to_string();
                    let _ = notes.send(refuse(why)).await;
                    return;
                };
                let send = input.stdin(data);
                tokio::pin!(send);
                loop {
                    if held.is_some() {
                        break send.as_mut().await;
                    }
                    tokio::select! {
                        r = send.as_mut() => break r,
                        next = ws_rx.next() => match next {
                            Some(Ok(Message::Text(t))) => match serde_json::from_str(&t) {
                                Ok(ExecClientMessage::Signal { signal }) => {
                                    let _ = input.signal(signal).await;
                                }
                                Ok(ExecClientMessage::Resize { rows, cols }) => {
                                    let _ = input.resize(rows, cols).await;
                                }
                                // Anything else keeps its place after this stdin.
                                _ => held = Some(Message::Text(t)),
                            },
                            Some(Ok(Message::Binary(b))) => held = Some(Message::Binary(b)),
                            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                            Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                        },
                    }
                }
            }
            Message::Text(t) => match serde_json::from_str::<ExecClientMessage>(&t) {
                Ok(ExecClientMessage::Eof) => input.eof().await,
                Ok(ExecClientMessage::Signal { signal }) => input.signal(signal).await,
                Ok(ExecClientMessage::Resize { rows, cols }) => input.resize(rows, cols).await,
                Ok(ExecClientMessage::Start(_)) => {
                    let _ = notes
                        .send(refuse("the command has already started".into()))
                        .await;
                    return;
                }
                Err(e) => {
                    let _ = notes
                        .send(refuse(format!("not an exec stream message: {e}")))
                        .await;
                    return;
                }
            },
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => Ok(()),
        };
        match result {
            Ok(()) => {}
            // A bad signal number or size is the client's mistake: logged, the stream goes on.
            Err(e @ VmError::BadRequest { .. }) => {
                tracing::debug!(error = %e, "refused a stream message");
            }
            // The guest side is gone; the output half reports it.
            Err(_) => std::future::pending::<()>().await,
        }
    }
}

// ---- files ----

#[derive(Debug, Deserialize)]
struct FileQuery {
    path: Option<String>,
    #[serde(default)]
    recursive: Option<bool>,
    #[serde(default)]
    parents: Option<bool>,
    /// Octal permission bits (`644`).
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    #[serde(default)]
    tail_bytes: Option<u64>,
}

/// File errors as JSON with the codes the server maps.
struct FileApiError(FileError);

impl From<FileError> for FileApiError {
    fn from(e: FileError) -> Self {
        FileApiError(e)
    }
}

impl From<VmError> for FileApiError {
    fn from(e: VmError) -> Self {
        FileApiError(FileError::Vm(e))
    }
}

impl IntoResponse for FileApiError {
    fn into_response(self) -> Response {
        match self.0 {
            FileError::Vm(e) => AgentApiError(e).into_response(),
            FileError::TooLarge(n) => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the file is larger than {n} bytes"),
                None,
            ),
            FileError::Body(m) => error(StatusCode::BAD_REQUEST, "upload_failed", m, None),
            FileError::Fs { code, message } => {
                if code == FileErrorCode::InvalidPath {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_field",
                        format!("path: {message}"),
                        Some("path".into()),
                    );
                }
                let status = StatusCode::from_u16(code.http_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                error(status, code.http_code(), message, None)
            }
        }
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, FileApiError> {
    q.map(|Query(q)| q).map_err(|e| {
        FileApiError(FileError::Vm(VmError::BadRequest {
            field: "query",
            message: e.body_text(),
        }))
    })
}

fn path_of(q: &FileQuery) -> Result<String, FileApiError> {
    let p = q.path.clone().ok_or(VmError::BadRequest {
        field: "path",
        message: "required: an absolute path in the VM".into(),
    })?;
    crate::proto::path::SandboxPath::parse(&p).map_err(VmError::from)?;
    Ok(p)
}

async fn read_file(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<Response, FileApiError> {
    let q = query(q)?;
    let path = path_of(&q)?;
    let dl = st.vms.file_read(&id, &path).await?;
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/octet-stream");
    if let Some(len) = dl.length {
        resp = resp.header(CONTENT_LENGTH, len);
    }
    resp.body(Body::from_stream(dl.into_stream())).map_err(|e| {
        FileApiError(FileError::Vm(VmError::Internal(anyhow::anyhow!(
            "building the answer: {e}"
        ))))
    })
}

async fn write_file(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<crate::proto::api::FileEntry>), FileApiError> {
    let q = query(q)?;
    let path = path_of(&q)?;
    let mode = match &q.mode {
        None => None,
        Some(m) => Some(crate::proto::path::parse_mode(m).map_err(VmError::from)?),
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_UPLOAD_BYTES) {
        return Err(FileError::TooLarge(MAX_UPLOAD_BYTES).into());
    }
    let entry = st
        .vms
        .file_write(&id, &path, mode, body.into_data_stream(), MAX_UPLOAD_BYTES)
        .await?;
    Ok((StatusCode::CREATED, Json(entry)))
}

async fn list_files(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<Json<crate::proto::api::FileListResponse>, FileApiError> {
    let path = path_of(&query(q)?)?;
    Ok(Json(st.vms.file_list(&id, &path).await?))
}

async fn stat_file(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<Json<crate::proto::api::FileEntry>, FileApiError> {
    let path = path_of(&query(q)?)?;
    Ok(Json(st.vms.file_stat(&id, &path).await?))
}

async fn mkdir(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<(StatusCode, Json<crate::proto::api::FileEntry>), FileApiError> {
    let q = query(q)?;
    let path = path_of(&q)?;
    let e = st
        .vms
        .file_mkdir(&id, &path, q.parents.unwrap_or(false))
        .await?;
    Ok((StatusCode::CREATED, Json(e)))
}

async fn remove_file(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<StatusCode, FileApiError> {
    let q = query(q)?;
    let path = path_of(&q)?;
    st.vms
        .file_remove(&id, &path, q.recursive.unwrap_or(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- console log ----

async fn logs(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, FileApiError> {
    let q = query(q)?;
    let bytes = st
        .vms
        .console_log(&id, q.tail_bytes.unwrap_or(DEFAULT_LOG_TAIL))
        .await?;
    Ok(([(CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
}
