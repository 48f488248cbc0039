//! A sandbox kept as a template (its memory and disk) on this host.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};

use super::AgentState;
use super::error::ApiError;
use super::extract::Body;
use crate::proto::agent::{SnapshotVmRequest, TemplateInfo};

pub fn routes() -> Router<AgentState> {
    Router::new().route("/v1/vms/{id}/snapshot", post(snapshot))
}

async fn snapshot(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    Body(req): Body<SnapshotVmRequest>,
) -> Result<(StatusCode, Json<TemplateInfo>), ApiError> {
    Ok((StatusCode::CREATED, Json(st.vms.snapshot(&id, &req).await?)))
}
