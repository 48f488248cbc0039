//! `GET /v1/sandboxes/{id}/ports/{port}` with `Connection: Upgrade`, `Upgrade: sandboxctl-port`:
//! a TCP port inside one of the team's sandboxes as a raw byte stream (what
//! `sandboxctl sandbox port-forward` carries each local connection over). Authenticated like
//! every /v1 call; the answer is 101 once the port accepted, else the API's JSON error
//! (409 `port_closed` when nothing listens there).

use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use super::error::{ApiError, ApiResult};
use super::extract::Caller;
use crate::ids::SandboxId;
use crate::proto::agent::PORT_UPGRADE;
use crate::server::AppState;

pub async fn open(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, port)): Path<(String, String)>,
    mut req: Request,
) -> ApiResult<Response> {
    let id: SandboxId = id.parse().map_err(|_| ApiError::NotFound("sandbox"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::bad("port", "must be a port number from 1 to 65535"))?;
    let team = caller.team_id()?;
    let svc = st.sandboxes();
    let s = svc.team_port_target(&team, &id).await?;
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PORT_UPGRADE));
    let on_upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
    let Some(on_upgrade) = on_upgrade.filter(|_| upgrade) else {
        return Err(ApiError::bad(
            "upgrade",
            format!("this route needs `Connection: Upgrade` and `Upgrade: {PORT_UPGRADE}`"),
        ));
    };
    let upstream = svc.open_port(&s, port).await?;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(client) => {
                let (mut client, mut upstream) = (TokioIo::new(client), upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
            Err(e) => {
                tracing::debug!(sandbox = %id, port, error = %e, "port-forward upgrade failed")
            }
        }
    });
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    r.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(PORT_UPGRADE));
    Ok(r)
}
