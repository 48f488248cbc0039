//! A sandbox's egress policy.

use axum::extract::{Path, State};
use axum::routing::put;
use axum::{Json, Router};

use super::AgentState;
use super::error::ApiError;
use super::extract::Body;
use crate::proto::net::EgressPolicy;

pub fn routes() -> Router<AgentState> {
    Router::new().route("/v1/vms/{id}/network", put(set_network))
}

/// Replaces the VM's egress policy (new connections follow it at once).
async fn set_network(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    Body(policy): Body<EgressPolicy>,
) -> Result<Json<EgressPolicy>, ApiError> {
    Ok(Json(st.vms.set_network(&id, policy).await?))
}
