//! E2B's control plane on our listener (/work/shared/E2B.md §2; SPEC §14): the paths the official
//! SDKs call, authenticated by one of our API keys in `X-API-KEY`, answered in E2B's shapes and
//! `{code, message}` errors. A thin front-end over the sandbox service like the REST API:
//! `shapes` translates, `errors` answers, `sandboxes`, `list` and `snapshots` are the handlers.

pub mod errors;
pub mod list;
pub mod sandboxes;
pub mod shapes;
pub mod snapshots;

use axum::Router;
use axum::routing::{delete, get, post, put};

use crate::server::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sandboxes", post(sandboxes::create).get(list::list))
        .route("/v2/sandboxes", post(sandboxes::create).get(list::list))
        .route(
            "/sandboxes/{id}",
            get(sandboxes::get).delete(sandboxes::kill),
        )
        .route("/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/v2/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/sandboxes/{id}/timeout", post(sandboxes::set_timeout))
        .route("/sandboxes/{id}/refreshes", post(sandboxes::refresh))
        .route("/sandboxes/{id}/pause", post(sandboxes::pause))
        .route("/sandboxes/{id}/network", put(sandboxes::set_network))
        .route("/sandboxes/{id}/snapshots", post(snapshots::create))
        .route("/snapshots", get(snapshots::list))
        .route("/templates/{id}", delete(snapshots::delete))
}
