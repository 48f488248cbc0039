//! A VM's life: create, inspect, list, destroy, pause, resume, and its console log.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::AgentState;
use super::error::ApiError;
use super::extract::{Body, query};
use crate::agent::vm::stream::DEFAULT_LOG_TAIL;
use crate::proto::agent::{CreateVmRequest, VmInfo, VmListResponse};

pub fn routes() -> Router<AgentState> {
    Router::new()
        .route("/v1/vms", get(list).post(create))
        .route("/v1/vms/{id}", get(get_vm).delete(destroy))
        .route("/v1/vms/{id}/pause", post(pause))
        .route("/v1/vms/{id}/resume", post(resume))
        .route("/v1/vms/{id}/logs", get(logs))
}

async fn list(State(st): State<AgentState>) -> Json<VmListResponse> {
    Json(VmListResponse {
        vms: st.vms.list().await,
    })
}

async fn create(
    State(st): State<AgentState>,
    Body(req): Body<CreateVmRequest>,
) -> Result<(StatusCode, Json<VmInfo>), ApiError> {
    Ok((StatusCode::CREATED, Json(st.vms.create(req).await?)))
}

async fn get_vm(
    State(st): State<AgentState>,
    Path(id): Path<String>,
) -> Result<Json<VmInfo>, ApiError> {
    Ok(Json(st.vms.get(&id).await?))
}

async fn destroy(
    State(st): State<AgentState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.vms.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(
    State(st): State<AgentState>,
    Path(id): Path<String>,
) -> Result<Json<VmInfo>, ApiError> {
    Ok(Json(st.vms.pause(&id).await?))
}

async fn resume(
    State(st): State<AgentState>,
    Path(id): Path<String>,
) -> Result<Json<VmInfo>, ApiError> {
    Ok(Json(st.vms.resume(&id).await?))
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    #[serde(default)]
    tail_bytes: Option<u64>,
}

/// The end of the VM's console log, as text.
async fn logs(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let bytes = st
        .vms
        .console_log(&id, q.tail_bytes.unwrap_or(DEFAULT_LOG_TAIL))
        .await?;
    Ok(([(CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
}
