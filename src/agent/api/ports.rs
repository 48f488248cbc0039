//! A port inside a VM as a raw byte stream (`GET /v1/vms/{id}/ports/{port}` with
//! `Connection: Upgrade`, `Upgrade: sandboxctl-port`): the agent connects to the port over the
//! guest channel first, so the server hears "port closed" (502 `port_closed`) or "no such VM" as
//! an ordinary JSON answer, and only a connection that is up is switched to bytes (101).

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;

use super::AgentState;
use super::error::ApiError;
use crate::agent::vm::VmError;
use crate::proto::agent::PORT_UPGRADE;

pub fn routes() -> Router<AgentState> {
    Router::new().route("/v1/vms/{id}/ports/{port}", get(open_port))
}

async fn open_port(
    State(st): State<AgentState>,
    Path((id, port)): Path<(String, String)>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::invalid_field("port", "must be a number from 1 to 65535"))?;
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PORT_UPGRADE));
    if !wants_upgrade {
        return Err(VmError::BadRequest {
            field: "upgrade",
            message: format!("this route answers only `Upgrade: {PORT_UPGRADE}`"),
        }
        .into());
    }
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return Err(ApiError::InvalidMessage(
            "this connection cannot be upgraded".into(),
        ));
    };
    let tunnel = st.vms.open_port(&id, port).await?;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => tunnel.bridge(TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!(vm = %id, port, error = %e, "port upgrade failed"),
        }
    });
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    r.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(PORT_UPGRADE));
    Ok(r)
}
