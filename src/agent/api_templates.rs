//! Agent routes for pause, resume, snapshots and templates.

use axum::Router;

use super::api::AgentState;

pub fn routes() -> Router<AgentState> {
    Router::new()
}
