//! E2B's error answers and the extractors of its front-end: every error is `{"code": <HTTP
//! status>, "message"}` (the SDK's parser needs both), mapped from our own [`ApiError`] so the
//! statuses stay the ones of our API (E2B.md §2.1: 401, 404, 409, 429, 503 as E2B means them).

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::proto::e2b;
use crate::server::AppState;
use crate::server::api::error::ApiError;
use crate::server::api::extract::{Caller, parse_json};
use crate::server::sandboxes::SandboxError;

/// An E2B error: our error, answered in E2B's shape.
#[derive(Debug)]
pub struct E2bError(pub ApiError);

pub type E2bResult<T> = Result<T, E2bError>;

impl E2bError {
    /// 400 naming `field` (E2B's own field name).
    pub fn bad(field: &str, message: impl Into<String>) -> Self {
        E2bError(ApiError::bad(field, message))
    }

    /// 400 for a field whose value we cannot honour (instead of ignoring it).
    pub fn unsupported(field: &str, what: &str) -> Self {
        Self::bad(field, format!("{what} is not supported by this server"))
    }

    pub fn not_found(what: &'static str) -> Self {
        E2bError(ApiError::NotFound(what))
    }
}

impl<E: Into<ApiError>> From<E> for E2bError {
    fn from(e: E) -> Self {
        E2bError(e.into())
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let (status, _, message) = self.0.parts();
        if let ApiError::Internal(e) = &self.0 {
            tracing::error!(error = ?e, "internal error");
        }
        let body = e2b::Error {
            code: status.as_u16(),
            message,
        };
        let mut resp = (status, Json(body)).into_response();
        // A sandbox whose envd did not answer is gone: retrying the create would only make
        // another (the SDK retries 502/503/504 unless told not to).
        if matches!(self.0, ApiError::GuestUnresponsive(_)) {
            resp.headers_mut()
                .insert("should-retry", HeaderValue::from_static("false"));
        }
        if let ApiError::RateLimited { retry_after_secs }
        | ApiError::Unavailable {
            retry_after_secs, ..
        } = self.0
            && let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// The caller of an E2B route: the team API key in `X-API-KEY` (missing or bad: 401).
pub struct E2bCaller(pub Caller);

impl FromRequestParts<AppState> for E2bCaller {
    type Rejection = E2bError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, E2bError> {
        let key = parts
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(E2bError(ApiError::Unauthorized))?;
        Ok(E2bCaller(Caller::from_api_key(key, state).await?))
    }
}

/// A JSON body in E2B's errors; an empty body reads as `{}` (several SDK calls send none).
pub struct E2bJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for E2bJson<T> {
    type Rejection = E2bError;

    async fn from_request(req: Request, state: &S) -> Result<Self, E2bError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| E2bError(ApiError::TooLarge))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(E2bJson(parse_json(b"{}")?));
        }
        Ok(E2bJson(parse_json(&bytes)?))
    }
}

/// Maps a service error (for `?` in handlers that build their answer by hand).
pub fn service(e: SandboxError) -> E2bError {
    E2bError(e.into())
}
