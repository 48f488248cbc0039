//! Pause, resume, idle timeouts, network policy, the console log and the usage metrics of a
//! sandbox over REST:
//! parse, call the sandbox service, shape the answer.

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, Caller, IdPath};
use super::sandboxes::to_resp;
use crate::ids::SandboxId;
use crate::proto::api::{DeadlineRequest, SandboxMetric, SandboxResponse, TimeoutRequest};
use crate::proto::net::EgressPolicy;
use crate::server::AppState;
use crate::server::sandboxes::{DeadlineChange, MetricsRange};

pub async fn pause(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<SandboxId>,
) -> ApiResult<Json<SandboxResponse>> {
    let team = caller.team_id()?;
    Ok(Json(to_resp(st.sandboxes().pause(&team, &id).await?)))
}

/// Replaces a running or paused sandbox's egress policy, on its host first.
pub async fn set_network(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<SandboxId>,
    ApiJson(policy): ApiJson<EgressPolicy>,
) -> ApiResult<Json<SandboxResponse>> {
    let team = caller.team_id()?;
    let row = st.sandboxes().set_network(&team, &id, policy).await?;
    Ok(Json(to_resp(row)))
}

pub async fn resume(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<SandboxId>,
) -> ApiResult<Json<SandboxResponse>> {
    let team = caller.team_id()?;
    Ok(Json(to_resp(st.sandboxes().resume(&team, &id).await?)))
}

/// Sets the idle timeout, counting from now (so it also extends it). 0 = never.
pub async fn set_timeout(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<SandboxId>,
    ApiJson(req): ApiJson<TimeoutRequest>,
) -> ApiResult<Json<SandboxResponse>> {
    let team = caller.team_id()?;
    let row = st
        .sandboxes()
        .set_timeout(&team, &id, req.timeout_sec, req.on_timeout.as_deref())
        .await?;
    Ok(Json(to_resp(row)))
}

/// Sets the absolute deadline, counting from now (earlier or later); 0 removes it.
pub async fn set_deadline(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<SandboxId>,
    ApiJson(req): ApiJson<DeadlineRequest>,
) -> ApiResult<Json<SandboxResponse>> {
    let team = caller.team_id()?;
    let row = st
        .sandboxes()
        .set_deadline(&team, &id, DeadlineChange::Set(req.end_in_sec))
        .await?;
    Ok(Json(to_resp(row)))
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    pub tail_bytes: Option<u64>,
}

/// The guest's console log (the kernel and init messages), as text.
pub async fn logs(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<SandboxId>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Response> {
    let team = caller.team_id()?;
    let tail = q.tail_bytes.unwrap_or(64 * 1024);
    // openapi.yaml declares an int64: larger values are refused, not read as 1 MiB.
    if i64::try_from(tail).is_err() {
        return Err(ApiError::bad("tail_bytes", "at most 9223372036854775807"));
    }
    let text = st.sandboxes().logs(&team, &id, tail).await?;
    Ok(([(CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

#[derive(Debug, Deserialize)]
pub struct MetricsQuery {
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
}

/// The sandbox's usage samples (`start`, `end`: unix seconds, both included), oldest first.
pub async fn metrics(
    State(st): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<SandboxId>,
    ApiQuery(q): ApiQuery<MetricsQuery>,
) -> ApiResult<Json<Vec<SandboxMetric>>> {
    let team = caller.team_id()?;
    let range = MetricsRange::parse(q.start.as_deref(), q.end.as_deref())?;
    Ok(Json(st.sandboxes().metrics(&team, &id, range).await?))
}
