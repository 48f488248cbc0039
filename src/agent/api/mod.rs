//! What the server calls on an agent: the router and its state. Every route goes through
//! [`auth::require_server`]; every handler fails with the one [`ApiError`].
//!
//! The routes, by concept: [`vms`] (create, inspect, destroy, pause, resume, console log),
//! [`exec`] (one-shot commands), [`exec_stream`] (the exec WebSocket), [`files`], [`network`]
//! (egress policy), [`ports`] (a sandbox's TCP port as a byte stream), [`snapshots`] (a sandbox kept as a template), [`template_catalog`] (base
//! templates) and [`images`] (templates from uploaded root filesystems).

mod auth;
mod error;
mod exec;
mod exec_stream;
mod extract;
mod files;
mod images;
mod network;
mod ports;
mod snapshots;
mod template_catalog;
mod vms;

use std::sync::Arc;

use axum::Router;
use axum::middleware;

pub use self::error::ApiError;
use super::vm::VmManager;
use crate::crypto::agent_call::CallVerifier;

#[derive(Clone)]
pub struct AgentState {
    pub vms: Arc<VmManager>,
    pub verifier: Arc<CallVerifier>,
}

/// The agent's API; `http` counts and times its requests (the agent's `/metrics`).
pub fn router(state: AgentState, http: Arc<crate::prom::HttpMetrics>) -> Router {
    Router::new()
        .merge(vms::routes())
        .merge(exec::routes())
        .merge(exec_stream::routes())
        .merge(files::routes())
        .merge(network::routes())
        .merge(ports::routes())
        .merge(snapshots::routes())
        .merge(template_catalog::routes())
        .merge(images::routes())
        .fallback(|| async { ApiError::NoRoute })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_server,
        ))
        .layer(middleware::from_fn_with_state(http, crate::prom::track))
        .with_state(state)
}
