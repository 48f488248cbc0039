//! Sandboxes over REST: create, list, get, delete and one-shot exec. Thin: the request parsed,
//! the sandbox service called, its answer shaped (`server::sandboxes` holds the rules).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, Caller, IdPath};
use crate::ids::SandboxId;
use crate::proto::api::{
    CreateSandboxRequest, ExecRequest, ExecResponse, SandboxListResponse, SandboxResponse,
};
use crate::server::AppState;
use crate::server::db::sandboxes::SandboxRow;
use crate::server::state::SandboxStatus;

pub fn to_resp(s: SandboxRow) -> SandboxResponse {
    SandboxResponse {
        id: s.id,
        team_id: s.team_id,
        host_id: s.host_id,
        template: s.template,
        status: s.status,
        vcpus: s.vcpus,
        memory_mb: s.memory_mb,
        timeout_sec: s.timeout_sec,
        metadata: s.metadata,
        created_at: s.created_at,
        started_at: s.started_at,
        ended_at: s.ended_at,
        error: s.error,
        boot_ms: s.boot_ms,
        timeout_at: (s.status == SandboxStatus::Running && s.timeout_sec > 0).then(|| {
            s.last_active_at.or(s.started_at).unwrap_or(s.created_at) + s.timeout_sec as i64
        }),
        on_timeout: s.on_timeout,
        last_active_at: s.last_active_at,
        boot_kind: s.boot_kind,
        network: s.egress,
        public_ports: s.public_ports,
        end_at: s.end_at,
        access_token: None,
    }
}

/// The answer for the sandbox's own team: with its access token.
fn with_token(st: &AppState, s: SandboxRow) -> SandboxResponse {
    let token = st
        .sandboxes()
        .access_token(&SandboxId::from_stored(s.id.clone()));
    SandboxResponse {
        access_token: Some(token.expose().to_string()),
        ..to_resp(s)
    }
}

pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateSandboxRequest>,
) -> ApiResult<(StatusCode, Json<SandboxResponse>)> {
    let team = caller.team_id()?;
    let row = st.sandboxes().create(&team, &caller.user_id, &req).await?;
    Ok((StatusCode::CREATED, Json(with_token(&st, row))))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub status: Option<String>,
}

pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<SandboxListResponse>> {
    let team = caller.team_id()?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<SandboxStatus>()
                .map_err(|e| ApiError::bad("status", e.to_string()))?,
        ),
    };
    let rows = st.sandboxes().list(&team, status).await?;
    Ok(Json(SandboxListResponse {
        sandboxes: rows.into_iter().map(to_resp).collect(),
    }))
}

pub async fn get(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<SandboxId>,
) -> ApiResult<Json<SandboxResponse>> {
    let team = caller.team_id()?;
    Ok(Json(with_token(
        &st,
        st.sandboxes().lookup(&team, &id).await?,
    )))
}

pub async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<SandboxId>,
) -> ApiResult<StatusCode> {
    let team = caller.team_id()?;
    st.sandboxes().end(&team, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn exec(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<SandboxId>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> ApiResult<Json<ExecResponse>> {
    req.validate()?;
    let team = caller.team_id()?;
    Ok(Json(st.sandboxes().exec(&team, &id, &req).await?))
}
