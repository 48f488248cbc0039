//! A VM's life: create, inspect, list, destroy, pause, resume, its console log and its usage
//! samples.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::AgentState;
use super::error::ApiError;
use super::extract::{Body, query};
use crate::agent::vm::stream::DEFAULT_LOG_TAIL;
use crate::proto::agent::{CreateVmRequest, VmInfo, VmListResponse};
use crate::proto::api::SandboxMetric;

pub fn routes() -> Router<AgentState> {
    Router::new()
        .route("/v1/vms", get(list).post(create))
        .route("/v1/vms/{id}", get(get_vm).delete(destroy))
        .route("/v1/vms/{id}/pause", post(pause))
        .route("/v1/vms/{id}/resume", post(resume))
        .route("/v1/vms/{id}/logs", get(logs))
        .route("/v1/vms/{id}/metrics", get(metrics))
}

async fn list(State(st): State<AgentState>) -> Json<VmListResponse> {
    Json(VmListResponse {
        vms: st.vms.list().await,
    })
}

/// Set when the caller of a create went away (the request future was dropped) before the answer.
struct CallerGone(Option<Arc<AtomicBool>>);

impl CallerGone {
    /// The caller is still there: the answer goes out.
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for CallerGone {
    fn drop(&mut self) {
        if let Some(gone) = &self.0 {
            gone.store(true, Ordering::Release);
        }
    }
}

/// Creates the VM in a task of its own, so a caller that hangs up (a server that crashed or timed
/// out) never cuts a create in half; a VM whose caller left before the answer is destroyed again,
/// since nobody recorded it. (If the answer was sent but lost, the server's monitor settles it.)
async fn create(
    State(st): State<AgentState>,
    Body(req): Body<CreateVmRequest>,
) -> Result<(StatusCode, Json<VmInfo>), ApiError> {
    let gone = Arc::new(AtomicBool::new(false));
    let guard = CallerGone(Some(gone.clone()));
    let vms = st.vms.clone();
    let task = tokio::spawn(async move {
        let id = req.id.clone();
        let created = vms.create(req).await;
        if created.is_ok() && gone.load(Ordering::Acquire) {
            tracing::warn!(vm = %id, "the create's caller went away: rolling the VM back");
            if let Err(e) = vms.destroy(&id).await {
                tracing::warn!(vm = %id, error = %e, "rolling back an abandoned create");
            }
        }
        created
    });
    let created = task.await;
    guard.answered();
    let info = created
        .map_err(|e| crate::agent::vm::VmError::Internal(anyhow::anyhow!("create task: {e}")))??;
    Ok((StatusCode::CREATED, Json(info)))
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

#[derive(Debug, Deserialize)]
struct MetricsQuery {
    #[serde(default)]
    start: Option<i64>,
    #[serde(default)]
    end: Option<i64>,
}

/// The VM's usage samples from `start` to `end` (unix seconds, both included), oldest first.
async fn metrics(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    q: Result<Query<MetricsQuery>, QueryRejection>,
) -> Result<Json<Vec<SandboxMetric>>, ApiError> {
    let q = query(q)?;
    Ok(Json(st.vms.metrics(&id, q.start, q.end)?))
}
