//! Sign-in sessions: every user token belongs to one (started by signup, login or GitHub, see
//! [`super::signin`]), and works only while it is live. `POST /v1/auth/logout` ends the caller's,
//! `GET /v1/auth/sessions` lists the user's, `DELETE /v1/auth/sessions/{id}` ends one, and
//! `POST /v1/auth/password` changes the password and ends all the others.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::auth::{MAX_PASSWORD, hashing, password_rules, rate_limit};
use super::client_ip::ClientIp;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, AuthUser, IdPath};
use crate::crypto;
use crate::ids::SessionId;
use crate::proto::sessions::{
    PasswordChangeRequest, PasswordChangeResponse, SessionListResponse, SessionResponse,
};
use crate::server::AppState;
use crate::server::db::sessions;
use crate::server::db::{DbError, users};

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
    ClientIp(ip): ClientIp,
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
    // Guessing the current password through a stolen session meets the login's lockout.
    let account = format!("password:{}", user.user_id);
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
    let hashed = hashing(&st, move || {
        if crypto::verify_password(&current, &phc) {
            crypto::hash_password(&new).map(Some)
        } else {
            Ok(None)
        }
    })
    .await??;
    let Some(hash) = hashed else {
        st.limits.login_failed(&account, ip);
        return Err(ApiError::bad(
            "current_password",
            "is not your current password",
        ));
    };
    st.limits.login_succeeded(&account, ip);
    let (uid, keep) = (user.user_id.clone(), user.session_id.clone());
    let ended = st
        .db
        .call(move |c| sessions::change_password(c, &uid, &hash, &keep))
        .await?;
    Ok(Json(PasswordChangeResponse {
        ended_sessions: ended as u64,
    }))
}
