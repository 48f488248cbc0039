//! Streaming exec over WebSocket: the server relays messages between the client and the agent
//! (text: JSON control messages; binary: a stream byte — 0 stdin, 1 stdout, 2 stderr — then data).

use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use super::error::{ApiError, ApiResult};
use super::extract::Caller;
use super::sandboxes::{host_client, load};
use crate::proto::api::{ExecClientMessage, ExecServerMessage};
use crate::server::AppState;
use crate::server::db::sandboxes;
use crate::server::state::SandboxStatus;

/// Largest message either side may send.
const MAX_MESSAGE: usize = 1 << 20;

pub async fn exec_stream(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let s = load(&st, &caller, id).await?;
    if s.status != SandboxStatus::Running {
        return Err(ApiError::conflict(
            "sandbox_not_running",
            format!("the sandbox is {}, not running", s.status),
        ));
    }
    let ws = ws.map_err(|e| {
        ApiError::bad(
            "upgrade",
            format!("this route speaks WebSocket only ({})", e.body_text()),
        )
    })?;
    let (client, _) = host_client(&st, &s).await?;
    let (url, token) = client.exec_stream_target(&s.id)?;
    let mut req = url
        .into_client_request()
        .map_err(|e| anyhow::anyhow!("agent URL: {e}"))?;
    req.headers_mut().insert(
        axum::http::header::AUTHORIZATION,
        format!("Bearer {token}")
            .parse()
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let (agent, _) = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .map_err(|_| ApiError::HostFailed {
        code: "host_unreachable",
        message: "the sandbox's host did not answer".into(),
    })?
    .map_err(|e| ApiError::HostFailed {
        code: "host_unreachable",
        message: format!("the sandbox's host refused the stream: {e}"),
    })?;
    let sid = s.id.clone();
    let db = st.db.clone();
    db.call({
        let sid = sid.clone();
        move |c| sandboxes::touch(c, &sid)
    })
    .await?;
    Ok(ws
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| relay(socket, agent, st, sid)))
}

type AgentSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn relay(client: WebSocket, agent: AgentSocket, st: AppState, sandbox: String) {
    let (mut c_tx, mut c_rx) = client.split();
    let (refusals, mut refused) = tokio::sync::mpsc::channel::<String>(1);
    let (mut a_tx, mut a_rx) = agent.split();
    let up = async {
        while let Some(Ok(m)) = c_rx.next().await {
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
            if c_tx.send(out).await.is_err() {
                break;
            }
        }
        let _ = c_tx.send(Message::Close(None)).await;
    };
    // An open stream is activity: keep the idle timeout from firing while it lasts.
    let keepalive = async {
        loop {
            tokio::time::sleep(Duration::from_secs(20)).await;
            let sid = sandbox.clone();
            let _ = st.db.call(move |c| sandboxes::touch(c, &sid)).await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = keepalive => {}
    }
    let sid = sandbox.clone();
    let _ = st.db.call(move |c| sandboxes::touch(c, &sid)).await;
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
