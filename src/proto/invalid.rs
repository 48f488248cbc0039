//! A request field that a rule of [`validate`](super::validate) or [`path`](super::path)
//! refused: each front-end turns it into its own error answer (the server's 400 names
//! `field_path()`).

/// A refused field: which one (and which entry, for a map such as `env`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", self.field_path())]
pub struct Invalid {
    /// The field as the request names it (`path`, `env`, `pty`, …).
    pub field: &'static str,
    /// The entry within the field, for maps: `env.NAME` names the variable.
    pub key: Option<String>,
    pub message: String,
}

impl Invalid {
    pub fn new(field: &'static str, message: impl Into<String>) -> Invalid {
        Invalid {
            field,
            key: None,
            message: message.into(),
        }
    }

    pub(super) fn keyed(field: &'static str, key: &str, message: impl Into<String>) -> Invalid {
        Invalid {
            field,
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    /// `field`, or `field.key` for an entry of a map.
    pub fn field_path(&self) -> String {
        match &self.key {
            Some(k) => format!("{}.{k}", self.field),
            None => self.field.to_string(),
        }
    }
}
