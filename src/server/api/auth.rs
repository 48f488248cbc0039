//! Signup, login and the caller's identity.

use axum::Json;
use std::net::IpAddr;

use axum::extract::State;
use axum::http::StatusCode;

use super::client_ip::ClientIp;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, AuthUser};
use crate::crypto;
use crate::proto::api::{AuthResponse, LoginRequest, MeResponse, SignupRequest};
use crate::server::AppState;
use crate::server::db::{DbError, audit, users};

pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 1024;

/// Lower-cases and checks an email address.
pub fn normalize_email(email: &str) -> Result<String, ApiError> {
    let e = email.trim().to_lowercase();
    let valid = e.len() <= 254
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !e.chars().any(|c| c.is_whitespace() || c.is_control())
                && e.matches('@').count() == 1
        });
    if valid {
        Ok(e)
    } else {
        Err(ApiError::bad("email", "not a valid email address"))
    }
}

pub fn validate_name(name: &str) -> Result<String, ApiError> {
    let n = name.trim();
    let len = n.chars().count();
    if len == 0 || len > 100 {
        return Err(ApiError::bad("name", "must be 1 to 100 characters"));
    }
    if n.chars().any(char::is_control) {
        return Err(ApiError::bad("name", "must not contain control characters"));
    }
    Ok(n.to_string())
}

fn validate_password(p: &str) -> Result<(), ApiError> {
    let len = p.chars().count();
    if len < MIN_PASSWORD {
        return Err(ApiError::bad(
            "password",
            format!("must be at least {MIN_PASSWORD} characters"),
        ));
    }
    if p.len() > MAX_PASSWORD {
        return Err(ApiError::bad(
            "password",
            format!("must be at most {MAX_PASSWORD} bytes"),
        ));
    }
    Ok(())
}

/// Takes one attempt from the client address's bucket, and for a login refuses while the
/// account is locked for this address ([`crate::server::ratelimit::AuthLimits`]).
pub fn rate_limit(st: &AppState, ip: IpAddr, account: Option<&str>) -> Result<(), ApiError> {
    let limited = |s| ApiError::RateLimited {
        retry_after_secs: s,
    };
    st.limits.per_ip.check(&ip.to_string()).map_err(limited)?;
    if let Some(a) = account {
        st.limits.login_allowed(a, ip).map_err(limited)?;
    }
    Ok(())
}

/// Runs argon2 work in the bounded pool; busy: 503 with Retry-After.
pub async fn hashing<T: Send + 'static>(
    st: &AppState,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    st.hashing
        .run(work)
        .await
        .map_err(|_| ApiError::Unavailable {
            code: "busy",
            message: "the server is busy checking passwords; retry in a moment".into(),
            retry_after_secs: 1,
        })
}

pub async fn signup(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<SignupRequest>,
) -> ApiResult<(StatusCode, Json<AuthResponse>)> {
    rate_limit(&st, ip, None)?;
    let email = normalize_email(&req.email)?;
    validate_password(&req.password)?;
    let name = validate_name(&req.name)?;
    let password = req.password.clone();
    let hash = hashing(&st, move || crypto::hash_password(&password)).await??;
    let (em, nm) = (email.clone(), name.clone());
    let (user, team_id) = st
        .db
        .call(move |c| users::create_with_team(c, &em, &nm, Some(&hash)))
        .await
        .map_err(|e| match e {
            DbError::Conflict("email_taken") => {
                ApiError::conflict("email_taken", "an account with this email already exists")
            }
            other => other.into(),
        })?;
    let token = st
        .keys
        .user_token(&user.id, &user.email, &user.name, Some(&team_id))?;
    Ok((
        StatusCode::CREATED,
        Json(AuthResponse {
            token,
            user_id: user.id,
            team_id: Some(team_id),
            email: user.email,
            name: user.name,
            is_admin: user.is_admin,
        }),
    ))
}

pub async fn login(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<AuthResponse>> {
    let email = req.email.trim().to_lowercase();
    if email.is_empty() {
        return Err(ApiError::bad("email", "required"));
    }
    if req.password.is_empty() {
        return Err(ApiError::bad("password", "required"));
    }
    if req.password.len() > MAX_PASSWORD {
        return Err(ApiError::bad(
            "password",
            format!("must be at most {MAX_PASSWORD} bytes"),
        ));
    }
    let account = format!("login:{email}");
    rate_limit(&st, ip, Some(&account))?;
    let em = email.clone();
    let found = st.db.call(move |c| users::by_email(c, &em)).await?;
    // The same argon2 work whether or not the user exists.
    let phc = found
        .as_ref()
        .and_then(|u| u.password_hash.clone())
        .unwrap_or_else(|| crypto::dummy_hash().to_string());
    let password = req.password.clone();
    let ok = hashing(&st, move || crypto::verify_password(&password, &phc)).await?;
    let user = match found {
        Some(u) if ok && u.password_hash.is_some() => u,
        _ => {
            st.limits.login_failed(&account, ip);
            st.db
                .call(move |c| audit::record(c, None, "user.login_failed", Some(&email), None))
                .await?;
            return Err(ApiError::Unauthorized);
        }
    };
    st.limits.login_succeeded(&account, ip);
    let uid = user.id.clone();
    let team = st.db.call(move |c| users::login_team(c, &uid)).await?;
    let team_id = team.map(|t| t.team_id);
    let token = st
        .keys
        .user_token(&user.id, &user.email, &user.name, team_id.as_deref())?;
    Ok(Json(AuthResponse {
        token,
        user_id: user.id,
        team_id,
        email: user.email,
        name: user.name,
        is_admin: user.is_admin,
    }))
}

pub async fn me(user: AuthUser) -> Json<MeResponse> {
    Json(MeResponse {
        user_id: user.user_id,
        email: user.email,
        name: user.name,
        is_admin: user.is_admin,
        team_id: user.team_id,
        role: user.role.map(|r| r.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_names() {
        assert_eq!(
            normalize_email("  Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        for bad in ["", "a", "a@b", "@b.c", "a@.c", "a b@c.d", "a@b@c.d"] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
        assert!(validate_name("").is_err());
        assert!(validate_name(&"x".repeat(101)).is_err());
        assert_eq!(validate_name(" Ann ").unwrap(), "Ann");
    }
}
