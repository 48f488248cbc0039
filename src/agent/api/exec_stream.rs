//! The exec stream (`GET /v1/vms/{id}/exec/stream`, WebSocket).
//!
//! The client's first message is text `{"type":"start",…}`; then text `resize` / `signal` /
//! `eof` and binary `[0]+stdin`. The agent answers text `started`, binary `[1]+stdout` /
//! `[2]+stderr` as output comes, and text `exit` (or `error`) before closing. Output is never
//! dropped: when the client reads slowly, the WebSocket send waits, the agent stops granting the
//! guest credit and the command blocks on its full pipe (see [`crate::agent::vm::stream`]).
//! Stdin waits for the guest the same way, on its own task so a command that writes before it
//! reads cannot deadlock the stream. The client closing the socket kills the command's process
//! group. Errors on the socket carry the codes [`ApiError`] gives them on HTTP.

use std::time::Duration;

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

use super::AgentState;
use super::error::ApiError;
use crate::agent::vm::VmError;
use crate::agent::vm::stream::{ExecEvent, ExecInput};
use crate::proto::api::{
    ExecClientMessage, ExecServerMessage, STREAM_STDERR, STREAM_STDIN, STREAM_STDOUT,
};

/// Largest WebSocket message accepted from the server.
const MAX_MESSAGE: usize = 1 << 20;
/// How long the client has to send its `start` message.
const START_WAIT: Duration = Duration::from_secs(30);
/// After the client goes away, how long the command gets to report its exit.
const EXIT_WAIT: Duration = Duration::from_secs(5);

pub fn routes() -> Router<AgentState> {
    Router::new().route("/v1/vms/{id}/exec/stream", get(exec_stream))
}

async fn exec_stream(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Refuse early (as JSON) what cannot work; the rest is reported on the socket.
    st.vms.exec_stream_ready(&id)?;
    let ws = ws.map_err(|e| VmError::BadRequest {
        field: "upgrade",
        message: format!("this route speaks WebSocket only ({})", e.body_text()),
    })?;
    Ok(ws
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| run_exec_stream(st, id, socket)))
}

fn server_msg(m: &ExecServerMessage) -> Message {
    Message::Text(serde_json::to_string(m).unwrap_or_default().into())
}

/// Reports `e` as the stream's last message and closes it.
async fn end_with(ws_tx: &mut SplitSink<WebSocket, Message>, e: ApiError) {
    let _ = ws_tx.send(server_msg(&e.into_stream_message())).await;
    let _ = ws_tx.close().await;
}

async fn run_exec_stream(st: AgentState, id: String, socket: WebSocket) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let start = match tokio::time::timeout(START_WAIT, ws_rx.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<ExecClientMessage>(&t),
        Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return,
        Ok(Some(Ok(_))) => serde_json::from_str::<ExecClientMessage>("null"),
        Err(_) => {
            let e = ApiError::InvalidMessage("no start message".into());
            return end_with(&mut ws_tx, e).await;
        }
    };
    let start = match start {
        Ok(ExecClientMessage::Start(s)) => s,
        other => {
            let why = match other {
                Err(e) => format!("the first message must be {{\"type\":\"start\",…}}: {e}"),
                Ok(_) => "the first message must be {\"type\":\"start\",…}".into(),
            };
            return end_with(&mut ws_tx, ApiError::InvalidMessage(why)).await;
        }
    };
    let exec = match st.vms.exec_stream(&id, start).await {
        Ok(e) => e,
        Err(e) => return end_with(&mut ws_tx, e.into()).await,
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
            Err(e) => break Some(ApiError::from(e).into_stream_message()),
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
    ws_tx: &mut SplitSink<WebSocket, Message>,
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
    mut ws_rx: SplitStream<WebSocket>,
    input: ExecInput,
    notes: tokio::sync::mpsc::Sender<ExecServerMessage>,
) {
    let refuse = |message: String| ApiError::InvalidMessage(message).into_stream_message();
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
