//! Sign-in sessions: every user token belongs to one (started by signup, login or GitHub), and
//! works only while it is live. `POST /v1/auth/logout` ends the caller's,
//! `GET /v1/auth/sessions` lists the user's, `DELETE /v1/auth/sessions/{id}` ends one, and
//! `POST /v1/auth/password` changes the password and ends all the others.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::header::USER_AGENT;
use axum::http::request::Parts;

use super::auth::{MAX_PASSWORD, account_failed, password_rules, rate_limit};
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, AuthUser, IdPath};
use crate::crypto;
use crate::ids::SessionId;
use crate::proto::sessions::{
    PasswordChangeRequest, PasswordChangeResponse, SessionListResponse, SessionResponse,
};
use crate::server::AppState;
use crate::server::auth::USER_TOKEN_TTL_SECS;
use crate::server::db::sessions::{self, NewSession};
use crate::server::db::{DbError, tickets, users};

/// Longest user agent a session keeps.
const MAX_USER_AGENT: usize = 200;

/// Who is signing in, as a session records it: the client's address and its User-Agent.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_USER_AGENT)
                    .collect::<String>()
            })
            .filter(|v| !v.trim().is_empty());
        Ok(ClientInfo { ip, user_agent })
    }
}

/// The user a new session is for.
pub struct SessionUser<'a> {
    pub id: &'a str,
    pub email: &'a str,
    pub name: &'a str,
}

/// Starts a session for `user` and returns its first token (with `team` active).
pub async fn start(
    st: &AppState,
    user: SessionUser<'_>,
    team: Option<&str>,
    method: &'static str,
    client: ClientInfo,
) -> ApiResult<String> {
    let uid = user.id.to_string();
    let new = NewSession {
        method,
        user_agent: client.user_agent,
        ip: client.ip,
        ttl_secs: USER_TOKEN_TTL_SECS,
    };
    let session = st.db.call(move |c| sessions::create(c, &uid, &new)).await?;
    Ok(st.keys.user_token(
        user.id,
        user.email,
        user.name,
        team,
        &session.id,
        session.expires_at,
    )?)
}

/// `POST /v1/auth/logout`: ends the caller's session; its tokens stop working at once.
pub async fn logout(State(st): State<AppState>, user: AuthUser) -> ApiResult<StatusCode> {
    let (uid, sid) = (user.user_id.clone(), user.session_id.clone());
    st.db
        .call(move |c| sessions::end(c, &uid, &sid, "session.logout"))
        .await
        .map_err(|e| match e {
            // Ended by another request meanwhile: the caller is logged out either way.
            DbError::NotFound => ApiError::Unauthorized,
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/auth/sessions`: the caller's live sessions.
pub async fn list(
    State(st): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<SessionListResponse>> {
    let uid = user.user_id.clone();
    let rows = st.db.call(move |c| sessions::list(c, &uid)).await?;
    Ok(Json(SessionListResponse {
        sessions: rows
            .into_iter()
            .map(|r| SessionResponse {
                current: r.id == user.session_id,
                id: r.id,
                created_at: r.created_at,
                last_seen_at: r.last_seen_at,
                expires_at: r.expires_at,
                method: r.method,
                user_agent: r.user_agent,
                ip: r.ip,
            })
            .collect(),
    }))
}

/// `DELETE /v1/auth/sessions/{id}`: ends one of the caller's sessions (another user's, or one
/// already over, is not found).
pub async fn end(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<SessionId>,
) -> ApiResult<StatusCode> {
    let uid = user.user_id.clone();
    st.db
        .call(move |c| sessions::end(c, &uid, id.as_str(), "session.end"))
        .await
        .map_err(|e| match e {
            DbError::NotFound => ApiError::NotFound("session"),
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/auth/password {current_password, new_password}`: the caller proves the current
/// password; the new one replaces it and every other session of theirs ends.
pub async fn change_password(
    State(st): State<AppState>,
    client: ClientInfo,
    user: AuthUser,
    ApiJson(req): ApiJson<PasswordChangeRequest>,
) -> ApiResult<Json<PasswordChangeResponse>> {
    if req.current_password.is_empty() {
        return Err(ApiError::bad("current_password", "required"));
    }
    if req.current_password.len() > MAX_PASSWORD {
        return Err(ApiError::bad(
            "current_password",
            format!("must be at most {MAX_PASSWORD} bytes"),
        ));
    }
    password_rules("new_password", &req.new_password)?;
    let account = format!("password:{}", user.user_id);
    let ip = client
        .ip
        .as_deref()
        .and_then(|i| i.parse().ok())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    rate_limit(&st, ip, Some(&account))?;
    let uid = user.user_id.clone();
    let found = st.db.call(move |c| users::get(c, &uid)).await?;
    let Some(phc) = found.password_hash else {
        return Err(ApiError::conflict(
            "no_password",
            "this account signs in with GitHub and has no password to change",
        ));
    };
    let (current, new) = (req.current_password, req.new_password);
    let hashed = tokio::task::spawn_blocking(move || {
        if crypto::verify_password(&current, &phc) {
            crypto::hash_password(&new).map(Some)
        } else {
            Ok(None)
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("hash task: {e}"))??;
    let Some(hash) = hashed else {
        account_failed(&st, &account);
        return Err(ApiError::bad(
            "current_password",
            "is not your current password",
        ));
    };
    let (uid, keep) = (user.user_id.clone(), user.session_id.clone());
    let ended = st
        .db
        .call(move |c| users::change_password(c, &uid, &hash, &keep))
        .await?;
    Ok(Json(PasswordChangeResponse {
        ended_sessions: ended as u64,
    }))
}

/// Issues a one-time ticket (`prefix` + 256 random bits) for `grant`, good for `ttl_secs`; the
/// server keeps only its hash.
pub async fn issue_ticket(
    st: &AppState,
    prefix: &str,
    purpose: tickets::Purpose,
    grant: tickets::TicketGrant,
    ttl_secs: i64,
) -> ApiResult<(String, i64)> {
    let ticket = crypto::random_token(prefix);
    let hash = crypto::sha256_hex(ticket.as_bytes());
    let expires_at = crate::server::db::now() + ttl_secs;
    st.db
        .call(move |c| tickets::create(c, &hash, purpose, &grant, expires_at))
        .await?;
    Ok((ticket, expires_at))
}

/// Uses a one-time ticket up: its grant, or `None` when it is unknown, used, expired, of
/// another purpose or its session ended.
pub async fn redeem_ticket(
    st: &AppState,
    ticket: &str,
    purpose: tickets::Purpose,
) -> ApiResult<Option<tickets::TicketGrant>> {
    let hash = crypto::sha256_hex(ticket.as_bytes());
    Ok(st
        .db
        .call(move |c| tickets::redeem(c, &hash, purpose))
        .await?)
}
