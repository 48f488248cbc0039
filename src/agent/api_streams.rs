//! Agent routes for streaming exec, files and the console log.

use axum::Router;

use super::api::AgentState;

pub fn routes() -> Router<AgentState> {
    Router::new()
}
