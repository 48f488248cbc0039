//! Sandboxes over REST: create, list, get, delete and one-shot exec. Thin: the request parsed,
//! the sandbox service called, its answer shaped (`server::sandboxes` holds the rules).

use std::collections::BTreeMap;

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
use crate::server::sandboxes::rules::check_map;
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
    }
}

pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateSandboxRequest>,
) -> ApiResult<(StatusCode, Json<SandboxResponse>)> {
    let team = caller.team_id()?;
    let row = st.sandboxes().create(&team, &caller.user_id, &req).await?;
    Ok((StatusCode::CREATED, Json(to_resp(row))))
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
    Ok(Json(to_resp(st.sandboxes().lookup(&team, &id).await?)))
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

/// The checks every command gets, one-shot or streamed.
pub fn check_command(
    cmd: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
    timeout_sec: Option<u64>,
) -> ApiResult<()> {
    if cmd.is_empty() || cmd.len() > 4096 || cmd.contains('\0') {
        return Err(ApiError::bad(
            "cmd",
            "required: the program to run (not through a shell)",
        ));
    }
    if args.len() > 4096
        || args
            .iter()
            .any(|a| a.contains('\0') || a.len() > 128 * 1024)
    {
        return Err(ApiError::bad(
            "args",
            "at most 4096 arguments of at most 128 KiB, no NUL bytes",
        ));
    }
    if let Some(t) = timeout_sec
        && !(1..=3600).contains(&t)
    {
        return Err(ApiError::bad("timeout_sec", "must be 1 to 3600"));
    }
    check_map("env", env, true)?;
    if let Some(cwd) = cwd
        && (!cwd.starts_with('/') || cwd.len() > 4096 || cwd.contains('\0'))
    {
        return Err(ApiError::bad("cwd", "must be an absolute path"));
    }
    Ok(())
}

pub async fn exec(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<SandboxId>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> ApiResult<Json<ExecResponse>> {
    check_command(
        &req.cmd,
        &req.args,
        &req.env,
        req.cwd.as_deref(),
        req.timeout_sec,
    )?;
    let team = caller.team_id()?;
    Ok(Json(st.sandboxes().exec(&team, &id, &req).await?))
}
