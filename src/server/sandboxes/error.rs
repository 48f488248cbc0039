//! What the sandbox service answers when it refuses or fails: a typed error that each front-end
//! (today the REST API, next the E2B-compatible one) turns into its own answer in one place.

use crate::server::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The request is not acceptable; `field` names what is wrong.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// `what` (a sandbox, a template, a file) does not exist for this team.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request conflicts with the state of things (`code` says which).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The caller may not do this to the thing (e.g. a file the guest will not let it touch).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// No host can take the work; the reason is ours.
    #[error("{0}")]
    NoHostAvailable(String),
    /// The team's quota has no room for this; the reason names the limit.
    #[error("{0}")]
    QuotaExceeded(String),
    /// A body over the limit.
    #[error("request body too large")]
    TooLarge,
    /// A body over the limit, with the reason.
    #[error("{0}")]
    TooLargeBecause(String),
    /// The host failed or could not be reached. `message` is ours, fit for tenants; the agent's
    /// own words went to the log (see [`super::agent_errors`]).
    #[error("{message}")]
    Host { code: &'static str, message: String },
    /// The sandbox's guest stopped answering (frozen by what runs in it): the sandbox's own
    /// state, not the host's.
    #[error("{0}")]
    GuestUnresponsive(String),
    /// The sandbox's disk (or the filesystem written to) is full.
    #[error("{0}")]
    GuestDiskFull(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type SandboxResult<T> = Result<T, SandboxError>;

impl SandboxError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        SandboxError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        SandboxError::Conflict {
            code,
            message: message.into(),
        }
    }

    /// A sandbox that must be in another state for this.
    pub fn not_running(status: impl std::fmt::Display) -> Self {
        Self::conflict(
            "sandbox_not_running",
            format!("the sandbox is {status}, not running"),
        )
    }

    /// `DbError::NotFound` as "`what` not found"; other database errors as they are.
    pub fn not_found_as(what: &'static str) -> impl Fn(DbError) -> SandboxError {
        move |e| match e {
            DbError::NotFound => SandboxError::NotFound(what),
            other => other.into(),
        }
    }
}

/// A wire type's own rule refused a field (`proto::validate`, `proto::path`).
impl From<crate::proto::invalid::Invalid> for SandboxError {
    fn from(e: crate::proto::invalid::Invalid) -> Self {
        SandboxError::Invalid {
            field: e.field_path(),
            message: e.message,
        }
    }
}
