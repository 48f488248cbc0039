//! Starting a session (signup, login, GitHub): what it records about the client and its first
//! token; and one-time tickets bound to a session or a user (download links, the GitHub
//! hand-off). The sessions' own routes are in [`super::sessions`].

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::USER_AGENT;
use axum::http::request::Parts;

use super::client_ip::client_ip;
use super::error::ApiResult;
use crate::crypto;
use crate::server::AppState;
use crate::server::auth::USER_TOKEN_TTL_SECS;
use crate::server::db::sessions::{self, NewSession};
use crate::server::db::tickets;

/// Longest user agent a session keeps.
const MAX_USER_AGENT: usize = 200;

/// Who is signing in, as a session records it: the client's address and its User-Agent.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl FromRequestParts<AppState> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        // The client's address as the rate limits see it (behind a trusted proxy, the one it names).
        let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| {
            client_ip(
                c.0.ip(),
                &parts.headers,
                &st.settings.limits.trusted_proxies,
            )
            .to_string()
        });
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
