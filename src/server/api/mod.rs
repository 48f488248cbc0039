//! The REST API's router. Every route and its guard are listed here.

pub mod auth;
pub mod client_ip;
pub mod downloads;
pub mod e2b;
pub mod error;
pub mod extract;
pub mod files;
pub mod hosts;
pub mod imports;
pub mod invites;
pub mod keys;
pub mod lifecycle;
pub mod oauth;
pub mod ports;
pub mod prometheus;
pub mod quotas;
pub mod sandboxes;
pub mod sessions;
pub mod signin;
pub mod stream;
pub mod team_access;
pub mod teams;
pub mod templates;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::server::AppState;

/// Largest JSON body the API reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(prometheus::scrape))
        .route("/v1/auth/signup", post(auth::signup))
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/auth/switch-team", post(teams::switch))
        .route("/v1/auth/logout", post(sessions::logout))
        .route("/v1/auth/sessions", get(sessions::list))
        .route(
            "/v1/auth/sessions/{id}",
            axum::routing::delete(sessions::end),
        )
        .route("/v1/auth/password", post(sessions::change_password))
        .route("/v1/auth/providers", get(oauth::providers))
        .route("/v1/auth/github/start", get(oauth::start))
        .route("/v1/auth/github/callback", get(oauth::callback))
        .route("/v1/auth/github/finish", post(oauth::finish))
        .route("/v1/me", get(auth::me))
        .route("/v1/users/search", get(teams::search_users))
        .route("/v1/teams", get(teams::list).post(teams::create))
        .route(
            "/v1/teams/{id}",
            get(teams::get).patch(teams::rename).delete(teams::delete),
        )
        .route(
            "/v1/teams/{id}/invites",
            post(invites::create).get(invites::list),
        )
        .route(
            "/v1/teams/{id}/invites/{invite_id}",
            axum::routing::delete(invites::revoke),
        )
        .route("/v1/invites/accept", post(invites::accept))
        .route(
            "/v1/teams/{id}/members/{user_id}",
            axum::routing::patch(teams::set_role).delete(teams::remove_member),
        )
        .route("/v1/teams/{id}/leave", post(teams::leave))
        .route("/v1/teams/{id}/quota", get(quotas::get).put(quotas::set))
        .route("/v1/api-keys", post(keys::create).get(keys::list))
        .route("/v1/api-keys/{id}", axum::routing::delete(keys::revoke))
        .route("/v1/hosts", post(hosts::create).get(hosts::list))
        .route("/v1/hosts/register", post(hosts::register))
        .route("/v1/hosts/auth/refresh", post(hosts::refresh))
        .route("/v1/hosts/{id}", get(hosts::get).delete(hosts::delete))
        .route("/v1/hosts/{id}/delete-preview", get(hosts::delete_preview))
        .route("/v1/hosts/{id}/token", post(hosts::new_token))
        .route("/v1/hosts/{id}/tags", axum::routing::put(hosts::set_tags))
        .route(
            "/v1/hosts/{id}/drain",
            post(hosts::drain).delete(hosts::undrain),
        )
        .route("/v1/hosts/{id}/heartbeat", post(hosts::heartbeat))
        .route(
            "/v1/sandboxes",
            post(sandboxes::create).get(sandboxes::list),
        )
        .route(
            "/v1/sandboxes/{id}",
            get(sandboxes::get).delete(sandboxes::delete),
        )
        .route("/v1/sandboxes/{id}/exec", post(sandboxes::exec))
        .route("/v1/sandboxes/{id}/exec/stream", get(stream::exec_stream))
        .route("/v1/sandboxes/{id}/pause", post(lifecycle::pause))
        .route("/v1/sandboxes/{id}/resume", post(lifecycle::resume))
        .route("/v1/sandboxes/{id}/timeout", post(lifecycle::set_timeout))
        .route("/v1/sandboxes/{id}/deadline", post(lifecycle::set_deadline))
        .route(
            "/v1/sandboxes/{id}/network",
            axum::routing::put(lifecycle::set_network),
        )
        .route("/v1/sandboxes/{id}/logs", get(lifecycle::logs))
        .route("/v1/sandboxes/{id}/metrics", get(lifecycle::metrics))
        .route("/v1/sandboxes/{id}/ports/{port}", get(ports::open))
        .route(
            "/v1/sandboxes/{id}/files",
            get(files::read)
                .put(files::write)
                .layer(DefaultBodyLimit::disable())
                .delete(files::remove),
        )
        .route("/v1/sandboxes/{id}/files/list", get(files::list))
        .route("/v1/sandboxes/{id}/files/stat", get(files::stat))
        .route("/v1/sandboxes/{id}/files/mkdir", post(files::mkdir))
        .route(
            "/v1/sandboxes/{id}/files/download-url",
            post(downloads::create),
        )
        .route("/v1/sandboxes/{id}/files/download", get(downloads::redeem))
        .route("/v1/snapshots", post(templates::snapshot))
        .route("/v1/templates", get(templates::list).post(templates::build))
        .route(
            "/v1/templates/import",
            post(imports::import).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/templates/{id}",
            axum::routing::delete(templates::delete),
        )
        .route("/v1/templates/{id}/build", get(templates::build_status))
        // Unknown paths go to the app's fallback (`server::web::fallback`): JSON 404 under /v1.
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

async fn method_not_allowed() -> (
    axum::http::StatusCode,
    axum::Json<crate::proto::api::ErrorBody>,
) {
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(crate::proto::api::ErrorBody {
            error: crate::proto::api::ErrorDetail {
                code: "method_not_allowed".into(),
                message: "this route does not take that method".into(),
                field: None,
                sandbox_ids: None,
            },
        }),
    )
}
