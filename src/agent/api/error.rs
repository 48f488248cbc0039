//! The one error type of the agent's API: every HTTP handler returns it and the exec WebSocket
//! reports it, so a failure gets the same code wherever it is seen.
//!
//! On HTTP it is a JSON [`ErrorBody`] with a status; on the exec stream an
//! [`ExecServerMessage::Error`] with the same code. The server maps these codes (not the
//! messages) to what tenants see.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::agent::vm::files::FileError;
use crate::agent::vm::{TemplateError, VmError};
use crate::proto::api::{ErrorBody, ErrorDetail, ExecServerMessage};
use crate::proto::guest::FileErrorCode;

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// No token, or one that is not good for this call (the reason is logged, never answered).
    #[error("missing, invalid or expired credentials")]
    Unauthorized,
    /// A request body past what the route reads.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A body that is not the JSON object the route takes.
    #[error("{0}")]
    InvalidBody(String),
    /// A body field with a wrong value.
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },
    /// An exec stream message out of place or unreadable.
    #[error("{0}")]
    InvalidMessage(String),
    #[error("no such route")]
    NoRoute,
}

/// What an error looks like on the wire: HTTP status, code, message and the field it concerns.
struct Wire {
    status: StatusCode,
    code: String,
    message: String,
    field: Option<String>,
}

impl Wire {
    fn new(status: StatusCode, code: &str, message: String) -> Wire {
        Wire {
            status,
            code: code.into(),
            message,
            field: None,
        }
    }
}

impl ApiError {
    /// A value of the request that is not acceptable (`field: message`).
    pub fn invalid_field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }

    fn wire(self) -> Wire {
        match self {
            ApiError::Vm(e) => vm_wire(e),
            ApiError::File(e) => file_wire(e),
            ApiError::Template(e) => template_wire(e),
            e @ ApiError::Unauthorized => {
                Wire::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
            }
            ApiError::PayloadTooLarge(m) => {
                Wire::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", m)
            }
            ApiError::InvalidBody(m) => Wire::new(StatusCode::BAD_REQUEST, "invalid_body", m),
            ApiError::InvalidField { field, message } => Wire {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_field".into(),
                message: format!("{field}: {message}"),
                field: Some(field),
            },
            ApiError::InvalidMessage(m) => Wire::new(StatusCode::BAD_REQUEST, "invalid_message", m),
            e @ ApiError::NoRoute => Wire::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        }
    }

    /// The error as the exec stream's last message. A VM error says what [`VmError`]'s own
    /// words say (the HTTP body of some of them is shorter).
    pub fn into_stream_message(self) -> ExecServerMessage {
        let message = match &self {
            ApiError::Vm(e) => Some(e.to_string()),
            _ => None,
        };
        let wire = self.wire();
        ExecServerMessage::Error {
            code: wire.code,
            message: message.unwrap_or(wire.message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let wire = self.wire();
        (
            wire.status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: wire.code,
                    message: wire.message,
                    field: wire.field,
                    sandbox_ids: None,
                },
            }),
        )
            .into_response()
    }
}

fn vm_wire(e: VmError) -> Wire {
    match e {
        e @ VmError::NotFound(_) => Wire::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        VmError::Conflict(m) => Wire::new(StatusCode::CONFLICT, "conflict", m),
        e @ VmError::State(_) => Wire::new(StatusCode::CONFLICT, "conflict", e.to_string()),
        VmError::BadRequest { field, message } => Wire {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_field".into(),
            message: format!("{field}: {message}"),
            field: Some(field.to_string()),
        },
        VmError::GuestUnavailable(m) => Wire::new(StatusCode::BAD_GATEWAY, "guest_unavailable", m),
        VmError::PortClosed(m) => Wire::new(StatusCode::BAD_GATEWAY, "port_closed", m),
        VmError::GuestUnresponsive(m) => {
            Wire::new(StatusCode::GATEWAY_TIMEOUT, "guest_unresponsive", m)
        }
        VmError::Internal(e) => {
            tracing::error!(error = ?e, "agent internal error");
            Wire::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("{e:#}"),
            )
        }
    }
}

/// File errors with the codes the server maps.
fn file_wire(e: FileError) -> Wire {
    match e {
        FileError::Vm(e) => vm_wire(e),
        FileError::TooLarge(n) => Wire::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the file is larger than {n} bytes"),
        ),
        FileError::Body(m) => Wire::new(StatusCode::BAD_REQUEST, "upload_failed", m),
        FileError::Fs { code, message } => {
            if code == FileErrorCode::InvalidPath {
                return Wire {
                    status: StatusCode::BAD_REQUEST,
                    code: "invalid_field".into(),
                    message: format!("path: {message}"),
                    field: Some("path".into()),
                };
            }
            let status = StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Wire::new(status, code.http_code(), message)
        }
    }
}

/// Template errors: 404 `not_found`, 409 `already_exists` or `conflict`, 413 `too_large`, and
/// the VM errors as everywhere else.
fn template_wire(e: TemplateError) -> Wire {
    match e {
        e @ TemplateError::NotFound(_) => {
            Wire::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
        }
        e @ TemplateError::AlreadyExists(_) => {
            Wire::new(StatusCode::CONFLICT, "already_exists", e.to_string())
        }
        TemplateError::Conflict(m) => Wire::new(StatusCode::CONFLICT, "conflict", m),
        e @ (TemplateError::TooLarge(_) | TemplateError::Expands(_)) => {
            Wire::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        TemplateError::Vm(e) => vm_wire(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_stream_share_codes() {
        let e = || ApiError::from(VmError::GuestUnavailable("gone".into()));
        let resp = e().into_response();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        match e().into_stream_message() {
            ExecServerMessage::Error { code, message } => {
                assert_eq!(code, "guest_unavailable");
                assert_eq!(message, "guest did not answer: gone");
            }
            other => panic!("{other:?}"),
        }
        match ApiError::InvalidMessage("no start message".into()).into_stream_message() {
            ExecServerMessage::Error { code, message } => {
                assert_eq!(
                    (code.as_str(), message.as_str()),
                    ("invalid_message", "no start message")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_codes_map_to_statuses() {
        let fs = |code: FileErrorCode| {
            ApiError::from(FileError::Fs {
                code,
                message: "m".into(),
            })
            .wire()
        };
        assert_eq!(
            fs(FileErrorCode::FileNotFound).status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(fs(FileErrorCode::NotEmpty).status, StatusCode::CONFLICT);
        let big = fs(FileErrorCode::TooLarge);
        assert_eq!(
            (big.status, big.code.as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
        );
        let path = fs(FileErrorCode::InvalidPath);
        assert_eq!(
            (path.code.as_str(), path.field.as_deref()),
            ("invalid_field", Some("path"))
        );
        assert_eq!(
            fs(FileErrorCode::IoError).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
