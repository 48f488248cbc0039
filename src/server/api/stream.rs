//! Streaming exec over WebSocket: the server relays messages between the client and the agent
//! (text: JSON control messages; binary: a stream byte — 0 stdin, 1 stdout, 2 stderr — then data).
//! A user holds at most `--max-streams-per-user` streams; a stream with no message either way for
//! `--stream-idle-timeout`, or open when the server shuts down, is closed with the reason.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;

use super::error::{ApiError, ApiResult};
use super::extract::{Caller, IdPath, WS_PROTOCOL};
use crate::ids::SandboxId;
use crate::proto::api::{ExecClientMessage, ExecServerMessage};
use crate::server::AppState;
use crate::server::listener::StreamSlot;
use crate::server::sandboxes::AgentSocket;

/// Largest message either side may send.
const MAX_MESSAGE: usize = 1 << 20;

pub async fn exec_stream(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<SandboxId>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let team = caller.team_id()?;
    let s = st.sandboxes().stream_target(&team, &id).await?;
    let ws = ws.map_err(|e| {
        ApiError::bad(
            "upgrade",
            format!("this route speaks WebSocket only ({})", e.body_text()),
        )
    })?;
    let max = st.settings.limits.max_streams_per_user;
    let slot = st
        .lifecycle
        .open_stream(&caller.user_id, max)
        .ok_or_else(|| ApiError::LimitReached {
            code: "too_many_streams",
            message: format!("you already have {max} exec streams open; close one first"),
        })?;
    let agent = st.sandboxes().connect_exec_stream(&s).await?;
    Ok(ws
        // A browser offers `sandboxctl.v1` and its token as `bearer.TOKEN`; the answer names
        // only the first (the token is never echoed).
        .protocols([WS_PROTOCOL])
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| relay(socket, agent, st, s.id, slot)))
}

/// Why the server ended a stream, told to the client in the close frame.
enum Ended {
    Relayed,
    Idle(Duration),
    ShuttingDown,
}

async fn relay(
    client: WebSocket,
    agent: AgentSocket,
    st: AppState,
    sandbox: String,
    _slot: StreamSlot,
) {
    let started = Instant::now();
    let last = AtomicU64::new(0);
    let active = || last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    let (mut c_tx, mut c_rx) = client.split();
    let (refusals, mut refused) = tokio::sync::mpsc::channel::<String>(1);
    let (mut a_tx, mut a_rx) = agent.split();
    let up = async {
        while let Some(Ok(m)) = c_rx.next().await {
            active();
            let out = match m {
                Message::Text(t) => {
                    if let Err(e) = check_client_message(&t) {
                        let _ = refusals.send(e).await;
                        break;
                    }
                    tungstenite::Message::Text(t.as_str().into())
                }
                Message::Binary(b) => tungstenite::Message::Binary(b),
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(_) => break,
            };
            if a_tx.send(out).await.is_err() {
                break;
            }
        }
        let _ = a_tx.send(tungstenite::Message::Close(None)).await;
    };
    let down = async {
        loop {
            let m = tokio::select! {
                m = a_rx.next() => match m { Some(Ok(m)) => m, _ => break },
                refused = refused.recv() => {
                    if let Some(msg) = refused {
                        let _ = c_tx.send(Message::Text(msg.into())).await;
                    }
                    break;
                }
            };
            let out = match m {
                tungstenite::Message::Text(t) => Message::Text(t.as_str().into()),
                tungstenite::Message::Binary(b) => Message::Binary(b),
                tungstenite::Message::Close(_) => break,
                _ => continue,
            };
            active();
            if c_tx.send(out).await.is_err() {
                break;
            }
        }
        let _ = c_tx.send(Message::Close(None)).await;
    };
    let idle_limit = st.settings.limits.stream_idle_timeout;
    let idle = async {
        loop {
            let quiet = started
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= idle_limit {
                return;
            }
            tokio::time::sleep(idle_limit - quiet).await;
        }
    };
    // An open stream is activity: keep the idle timeout from firing while it lasts.
    let keepalive = async {
        loop {
            tokio::time::sleep(Duration::from_secs(20)).await;
            let _ = st.sandboxes().touch(&sandbox).await;
        }
    };
    let ended = tokio::select! {
        _ = async { tokio::join!(up, down) } => Ended::Relayed,
        _ = keepalive => Ended::Relayed,
        _ = idle => Ended::Idle(idle_limit),
        _ = st.lifecycle.stopping() => Ended::ShuttingDown,
    };
    let close = match ended {
        Ended::Relayed => None,
        Ended::Idle(d) => Some(CloseFrame {
            code: close_code::NORMAL,
            reason: format!("closed after {}s without input or output", d.as_secs()).into(),
        }),
        Ended::ShuttingDown => Some(CloseFrame {
            code: close_code::AWAY,
            reason: "the server is shutting down".into(),
        }),
    };
    if let Some(frame) = close {
        let _ = a_tx.send(tungstenite::Message::Close(None)).await;
        let _ = c_tx.send(Message::Close(Some(frame))).await;
    }
    let _ = st.sandboxes().touch(&sandbox).await;
}

/// Client messages are checked like a one-shot exec before they reach the agent; an invalid one
/// ends the stream with an `error` message naming the field.
fn check_client_message(text: &str) -> Result<(), String> {
    let refuse = |code: &str, message: String| {
        serde_json::to_string(&ExecServerMessage::Error {
            code: code.into(),
            message,
        })
        .unwrap_or_default()
    };
    let msg: ExecClientMessage = serde_json::from_str(text).map_err(|e| {
        refuse(
            "invalid_message",
            format!("not an exec stream message: {e}"),
        )
    })?;
    if let ExecClientMessage::Start(s) = msg {
        s.validate()
            .map_err(|e| refuse("invalid_field", e.to_string()))?;
    }
    Ok(())
}
