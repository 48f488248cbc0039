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
use axum::extract::Request;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
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
        .layer(axum::middleware::from_fn(dashboard_pages_first))
}

/// `/sandboxes` and `/sandboxes/{id}` are the dashboard's pages too: a GET or HEAD that carries
/// neither E2B credential (`X-API-KEY`, `Authorization`) is a browser's and gets the dashboard;
/// the SDKs always send one.
async fn dashboard_pages_first(req: Request, next: Next) -> Response {
    let page = (req.method() == Method::GET || req.method() == Method::HEAD)
        && !req.uri().path().starts_with("/v2/")
        && req.uri().path().starts_with("/sandboxes")
        && !req.headers().contains_key("x-api-key")
        && !req.headers().contains_key(header::AUTHORIZATION);
    if !page {
        return next.run(req).await;
    }
    let (parts, _) = req.into_parts();
    crate::server::web::fallback(parts.method, parts.uri, parts.headers).await
}
