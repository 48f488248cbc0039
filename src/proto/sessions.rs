//! The bodies of the sessions API (`/v1/auth/sessions`, `/v1/auth/password`): a user's sign-in
//! sessions and the password change that ends the others.

use serde::{Deserialize, Serialize};

/// One live session of the caller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionResponse {
    pub id: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    /// How it began: `password`, `signup` or `github`.
    pub method: String,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// The session of the token that asked.
    pub current: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionListResponse {
    pub sessions: Vec<SessionResponse>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct PasswordChangeRequest {
    pub current_password: String,
    pub new_password: String,
}

impl std::fmt::Debug for PasswordChangeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordChangeRequest(***)")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasswordChangeResponse {
    /// How many other sessions the change ended (the caller's stays).
    pub ended_sessions: u64,
}
