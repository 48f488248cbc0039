//! The VM manager's errors, by what the caller did wrong or what went wrong underneath.

use super::runtime::StateRefused;
use crate::proto::validate::Invalid;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("no VM {0}")]
    NotFound(String),
    /// Wrong state, already exists.
    #[error("{0}")]
    Conflict(String),
    /// A state change the VM's transition table does not allow (a race with its QEMU ending).
    #[error("VM state: {0}")]
    State(#[from] StateRefused),
    #[error("{field}: {message}")]
    BadRequest {
        field: &'static str,
        message: String,
    },
    #[error("guest did not answer: {0}")]
    GuestUnavailable(String),
    /// The VM runs but its guest program stopped answering (frozen by a fork bomb, out of
    /// memory): the sandbox's own doing, not the host's.
    #[error("{0}")]
    GuestUnresponsive(String),
    /// Nothing listens on the sandbox's port that was asked for.
    #[error("{0}")]
    PortClosed(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub(super) fn bad(field: &'static str, message: impl Into<String>) -> VmError {
    VmError::BadRequest {
        field,
        message: message.into(),
    }
}

impl From<Invalid> for VmError {
    fn from(e: Invalid) -> Self {
        let message = match e.key {
            Some(k) => format!("{k}: {}", e.message),
            None => e.message,
        };
        bad(e.field, message)
    }
}
