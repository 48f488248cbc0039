//! `GET /metrics`: the server's Prometheus series (`server::prometheus`), for a platform admin's token
//! or the scrapers' token of `--metrics-token-file` (SPEC §12).

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ApiResult};
use super::extract::AuthUser;
use crate::prom;
use crate::server::AppState;

pub async fn scrape(State(st): State<AppState>, mut parts: Parts) -> ApiResult<Response> {
    let scraper = st
        .settings
        .metrics_token
        .as_ref()
        .is_some_and(|t| prom::bearer_matches(&parts.headers, t));
    if !scraper {
        let user = AuthUser::from_request_parts(&mut parts, &st).await?;
        if !user.is_admin {
            return Err(ApiError::forbidden(
                "admin_required",
                "only platform admins (or the scrapers' metrics token) read the metrics",
            ));
        }
    }
    let body = st.metrics.render(&st.db).await?;
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prom::CONTENT_TYPE),
    );
    Ok(resp)
}
