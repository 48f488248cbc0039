//! The one place where errors become HTTP answers: `{"error": {"code", "message"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::proto::api::{ErrorBody, ErrorDetail};
use crate::server::db::DbError;
use crate::server::sandboxes::SandboxError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    #[error("invalid request body: {0}")]
    BadBody(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("host has live sandboxes")]
    HostHasSandboxes(Vec<String>),
    #[error("request body too large")]
    TooLarge,
    /// Too large, with the reason (e.g. what an archive expands to).
    #[error("{0}")]
    TooLargeBecause(String),
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    /// A limit of the caller's reached (429), e.g. open streams.
    #[error("{message}")]
    LimitReached { code: &'static str, message: String },
    /// The server cannot take this now (503, with Retry-After): busy or shutting down.
    #[error("{message}")]
    Unavailable {
        code: &'static str,
        message: String,
        retry_after_secs: u64,
    },
    /// The request took longer than the server allows (408).
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    NoHostAvailable(String),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("{message}")]
    HostFailed { code: &'static str, message: String },
    /// 504 `guest_unresponsive`: the sandbox's guest stopped answering.
    #[error("{0}")]
    GuestUnresponsive(String),
    /// 507 `guest_disk_full`: no space left where the sandbox was writing.
    #[error("{0}")]
    GuestDiskFull(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad(field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Forbidden {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn parts(&self) -> (StatusCode, &'static str, String) {
        use ApiError::*;
        match self {
            BadRequest { field, message } => (
                StatusCode::BAD_REQUEST,
                "invalid_field",
                format!("{field}: {message}"),
            ),
            BadBody(m) => (StatusCode::BAD_REQUEST, "invalid_body", m.clone()),
            Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing, invalid or expired credentials".into(),
            ),
            Forbidden { code, message } => (StatusCode::FORBIDDEN, code, message.clone()),
            NotFound(what) => (
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            Conflict { code, message } => (StatusCode::CONFLICT, code, message.clone()),
            HostHasSandboxes(ids) => (
                StatusCode::CONFLICT,
                "host_has_sandboxes",
                format!(
                    "the host still runs {} sandbox(es); delete them first or pass ?force=true",
                    ids.len()
                ),
            ),
            TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body too large".into(),
            ),
            TooLargeBecause(why) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                why.clone(),
            ),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many attempts; retry later".into(),
            ),
            LimitReached { code, message } => {
                (StatusCode::TOO_MANY_REQUESTS, code, message.clone())
            }
            Unavailable { code, message, .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, code, message.clone())
            }
            RequestTimeout(m) => (StatusCode::REQUEST_TIMEOUT, "request_timeout", m.clone()),
            NoHostAvailable(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no_host_available",
                format!("no host can take this sandbox: {reason}"),
            ),
            QuotaExceeded(why) => (
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                format!("over the team's quota: {why}"),
            ),
            HostFailed { code, message } => (StatusCode::BAD_GATEWAY, code, message.clone()),
            GuestUnresponsive(m) => (StatusCode::GATEWAY_TIMEOUT, "guest_unresponsive", m.clone()),
            GuestDiskFull(m) => (
                StatusCode::INSUFFICIENT_STORAGE,
                "guest_disk_full",
                m.clone(),
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the server log".into(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = ?e, "internal error");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message,
                field: match &self {
                    ApiError::BadRequest { field, .. } => Some(field.clone()),
                    _ => None,
                },
                sandbox_ids: match &self {
                    ApiError::HostHasSandboxes(ids) => Some(ids.clone()),
                    _ => None,
                },
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if let ApiError::RateLimited { retry_after_secs }
        | ApiError::Unavailable {
            retry_after_secs, ..
        } = self
            && let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound => ApiError::NotFound("resource"),
            DbError::Conflict(code) => ApiError::conflict(code, code.replace('_', " ")),
            other => ApiError::Internal(other.into()),
        }
    }
}

/// The sandbox service's answers as HTTP: the one place they are mapped.
impl From<SandboxError> for ApiError {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::Invalid { field, message } => ApiError::BadRequest { field, message },
            SandboxError::NotFound(what) => ApiError::NotFound(what),
            SandboxError::Conflict { code, message } => ApiError::Conflict { code, message },
            SandboxError::Forbidden { code, message } => ApiError::Forbidden { code, message },
            SandboxError::NoHostAvailable(reason) => ApiError::NoHostAvailable(reason),
            SandboxError::QuotaExceeded(why) => ApiError::QuotaExceeded(why),
            SandboxError::TooLarge => ApiError::TooLarge,
            SandboxError::TooLargeBecause(why) => ApiError::TooLargeBecause(why),
            SandboxError::Host { code, message } => ApiError::HostFailed { code, message },
            SandboxError::GuestUnresponsive(m) => ApiError::GuestUnresponsive(m),
            SandboxError::GuestDiskFull(m) => ApiError::GuestDiskFull(m),
            SandboxError::Db(e) => e.into(),
            SandboxError::Internal(e) => ApiError::Internal(e),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A field refused by a rule of [`crate::proto::validate`]: a 400 naming the field (`env.NAME`
/// for an entry of a map).
impl From<crate::proto::validate::Invalid> for ApiError {
    fn from(e: crate::proto::validate::Invalid) -> Self {
        ApiError::BadRequest {
            field: e.field_path(),
            message: e.message,
        }
    }
}
