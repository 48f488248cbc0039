//! Extractors: JSON bodies whose errors name the field, and the callers a handler can demand
//! (`Caller` for sandbox work: user JWT or API key; `AuthUser`: user JWT only; `AuthHost`: host JWT).

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::crypto::sha256_hex;
use crate::ids::{TeamId, TypedId};
use crate::proto::json::BodyError;
use crate::proto::vocab::TeamRole;
use crate::server::AppState;
use crate::server::db::{DbError, api_keys, hosts, sessions, users};

/// A JSON body. Malformed JSON → 400 `invalid_body`; a missing or mistyped field → 400
/// `invalid_field` naming it; too large → 413.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(ct) = req.headers().get(CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("");
            if !ct.starts_with("application/json") {
                return Err(ApiError::BadBody(format!(
                    "content-type must be application/json, not '{ct}'"
                )));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e {
            BytesRejection::FailedToBufferBody(_) => ApiError::TooLarge,
            other => ApiError::BadBody(other.body_text()),
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    crate::proto::json::parse_object(bytes).map_err(|e| match e {
        BodyError::Malformed(m) => ApiError::BadBody(m),
        BodyError::Field { field, message } => ApiError::BadRequest { field, message },
    })
}

/// A query string whose errors are JSON like every other 400.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::bad("query", e.body_text()))
    }
}

/// A typed id from the request path (the route's only parameter). A malformed id names nothing:
/// 404 like an id that does not exist, before any lookup.
pub struct IdPath<T>(pub T);

impl<T: TypedId + Send, S: Send + Sync> FromRequestParts<S> for IdPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::NotFound(T::WHAT))?;
        raw.parse()
            .map(IdPath)
            .map_err(|_| ApiError::NotFound(T::WHAT))
    }
}

/// The WebSocket subprotocol the exec stream speaks; browsers, which cannot set headers on a
/// WebSocket, offer their token beside it as a second subprotocol `bearer.TOKEN`.
pub const WS_PROTOCOL: &str = "sandboxctl.v1";
const WS_BEARER_PREFIX: &str = "bearer.";

/// The bearer token: the `Authorization` header, or on a WebSocket upgrade the `bearer.TOKEN`
/// subprotocol. Never the URL (URLs end up in logs and histories).
fn bearer(parts: &Parts) -> Option<&str> {
    if let Some(v) = parts.headers.get(AUTHORIZATION) {
        let (scheme, token) = v.to_str().ok()?.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim());
    }
    let upgrade = parts
        .headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return None;
    }
    parts
        .headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(WS_BEARER_PREFIX))
        .filter(|t| !t.is_empty())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    User,
    ApiKey,
}

/// Whoever may work with sandboxes: a user (JWT) or a team API key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub kind: CallerKind,
    /// The user, or for an API key the user who created it.
    pub user_id: String,
    pub team_id: Option<String>,
    pub role: Option<TeamRole>,
    pub is_admin: bool,
}

impl Caller {
    /// The team to work in as a typed id, or 403 `no_team`.
    pub fn team_id(&self) -> Result<TeamId, ApiError> {
        self.team().map(TeamId::from_stored)
    }

    /// The team to work in, or 403 `no_team`.
    pub fn team(&self) -> Result<&str, ApiError> {
        self.team_id.as_deref().ok_or_else(|| {
            ApiError::forbidden(
                "no_team",
                "you are not in any active team: create one or ask to be added, then log in again",
            )
        })
    }
}

impl Caller {
    /// The caller an API key (`sk_…`) stands for: its team, as a member; 401 for anything else.
    pub async fn from_api_key(key: &str, state: &AppState) -> Result<Caller, ApiError> {
        if !key.starts_with("sk_") {
            return Err(ApiError::Unauthorized);
        }
        let hash = sha256_hex(key.as_bytes());
        let key = api_keys::authenticate(&state.db, hash)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        Ok(Caller {
            kind: CallerKind::ApiKey,
            user_id: key.created_by,
            team_id: Some(key.team_id),
            role: Some(TeamRole::Member),
            is_admin: false,
        })
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?.to_string();
        if token.starts_with("sk_") {
            return Caller::from_api_key(&token, state).await;
        }
        let u = AuthUser::from_token(&token, state).await?;
        Ok(Caller {
            kind: CallerKind::User,
            user_id: u.user_id,
            team_id: u.team_id,
            role: u.role,
            is_admin: u.is_admin,
        })
    }
}

/// A signed-in user (user JWT only; API keys and host tokens are refused). The team and role are
/// re-read from the database on every request.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub team_id: Option<String>,
    pub role: Option<TeamRole>,
    pub is_admin: bool,
    /// The session the token belongs to (live: checked on every request) and when it ends.
    pub session_id: String,
    pub session_expires_at: i64,
}

impl AuthUser {
    async fn from_token(token: &str, state: &AppState) -> Result<AuthUser, ApiError> {
        let claims = state
            .keys
            .verify_user(token)
            .ok_or(ApiError::Unauthorized)?;
        let sid = claims.sid.clone().ok_or(ApiError::Unauthorized)?;
        let (user, role, session) = state
            .db
            .call(move |c| {
                // One indexed read: the session must be live (not logged out, not ended by a
                // password change, not expired).
                let session = sessions::live(c, &sid, &claims.sub)?.ok_or(DbError::NotFound)?;
                let user = users::get(c, &claims.sub)?;
                let role = match &claims.team {
                    Some(t) => users::membership(c, t, &user.id)?.map(|r| (t.clone(), r)),
                    None => None,
                };
                Ok((user, role, session))
            })
            .await
            .map_err(|_| ApiError::Unauthorized)?;
        Ok(AuthUser {
            user_id: user.id,
            email: user.email,
            name: user.name,
            team_id: role.as_ref().map(|r| r.0.clone()),
            role: role.map(|r| r.1),
            is_admin: user.is_admin,
            session_id: session.id,
            session_expires_at: session.expires_at,
        })
    }

    pub fn is_team_admin(&self, team_id: &str) -> bool {
        self.team_id.as_deref() == Some(team_id) && self.role.is_some_and(TeamRole::is_team_admin)
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?.to_string();
        if token.starts_with("sk_") {
            return Err(ApiError::forbidden(
                "user_token_required",
                "API keys work for sandboxes only; sign in as a user for this",
            ));
        }
        AuthUser::from_token(&token, state).await
    }
}

/// A registered host (host JWT).
#[derive(Debug, Clone)]
pub struct AuthHost {
    pub host_id: String,
}

impl FromRequestParts<AppState> for AuthHost {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let claims = state
            .keys
            .verify_host(token)
            .ok_or(ApiError::Unauthorized)?;
        let id = claims.sub.clone();
        let current = state
            .db
            .call(move |c| hosts::token_generation(c, &id))
            .await?;
        if current != Some(claims.generation) {
            // Deleted host, or its credentials were revoked (refresh-token reuse).
            return Err(ApiError::Unauthorized);
        }
        Ok(AuthHost {
            host_id: claims.sub,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::api::SignupRequest;

    fn field_of(body: &str) -> String {
        match parse_json::<SignupRequest>(body.as_bytes()) {
            Err(ApiError::BadRequest { field, .. }) => field,
            Err(other) => format!("other: {other}"),
            Ok(_) => "ok".into(),
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        assert_eq!(field_of(r#"{"email":"a@b.c","password":"x"}"#), "name");
        assert_eq!(
            field_of(r#"{"email":5,"password":"x","name":"n"}"#),
            "email"
        );
        assert!(matches!(
            parse_json::<SignupRequest>(b"{"),
            Err(ApiError::BadBody(_))
        ));
        assert!(matches!(
            parse_json::<SignupRequest>(b""),
            Err(ApiError::BadBody(_))
        ));
        assert!(matches!(
            parse_json::<SignupRequest>(br#""just a string""#),
            Err(ApiError::BadBody(_))
        ));
        assert!(matches!(
            parse_json::<SignupRequest>(br#"["a@b.c","pw123456","Ann"]"#),
            Err(ApiError::BadBody(_))
        ));
        assert!(matches!(
            parse_json::<SignupRequest>(
                br#"{"email":"a@b.c","password":"pw123456","name":"A"} trailing"#
            ),
            Err(ApiError::BadBody(_))
        ));
    }
}
