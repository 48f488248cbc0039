//! One-shot exec: run a command to its end and answer with its (capped) output.

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};

use super::AgentState;
use super::error::ApiError;
use super::extract::Body;
use crate::proto::api::{ExecRequest, ExecResponse};

pub fn routes() -> Router<AgentState> {
    Router::new().route("/v1/vms/{id}/exec", post(exec))
}

async fn exec(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    Body(req): Body<ExecRequest>,
) -> Result<Json<ExecResponse>, ApiError> {
    Ok(Json(st.vms.exec(&id, req).await?))
}
