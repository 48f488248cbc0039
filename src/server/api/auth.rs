//! Signup, login and the caller's identity.

use axum::Json;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, AuthUser};
use super::signin::{self, ClientInfo, SessionUser};
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
    password_rules("password", p)
}

/// The rules a new password follows; a refusal names `field`.
pub fn password_rules(field: &str, p: &str) -> Result<(), ApiError> {
    let len = p.chars().count();
    if len < MIN_PASSWORD {
        return Err(ApiError::bad(
            field,
            format!("must be at least {MIN_PASSWORD} characters"),
        ));
    }
    if p.len() > MAX_PASSWORD {
        return Err(ApiError::bad(
            field,
            format!("must be at most {MAX_PASSWORD} bytes"),
        ));
    }
    Ok(())
}

/// Takes one attempt from the per-IP bucket, and refuses when the account's bucket of failed
/// attempts is empty (failures are taken with [`account_failed`]).
pub fn rate_limit(st: &AppState, ip: IpAddr, account: Option<&str>) -> Result<(), ApiError> {
    st.limits
        .per_ip
        .check(&ip.to_string())
        .map_err(|s| ApiError::RateLimited {
            retry_after_secs: s,
        })?;
    if let Some(a) = account
        && let Some(s) = st.limits.per_account.blocked(a)
    {
        return Err(ApiError::RateLimited {
            retry_after_secs: s,
        });
    }
    Ok(())
}

/// Records a failed attempt against an account.
pub fn account_failed(st: &AppState, account: &str) {
    let _ = st.limits.per_account.check(account);
}

pub async fn signup(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client: ClientInfo,
    ApiJson(req): ApiJson<SignupRequest>,
) -> ApiResult<(StatusCode, Json<AuthResponse>)> {
    rate_limit(&st, peer.ip(), None)?;
    let email = normalize_email(&req.email)?;
    validate_password(&req.password)?;
    let name = validate_name(&req.name)?;
    let password = req.password.clone();
    let hash = tokio::task::spawn_blocking(move || crypto::hash_password(&password))
        .await
        .map_err(|e| anyhow::anyhow!("hash task: {e}"))??;
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
    let token = signin::start(
        &st,
        SessionUser {
            id: &user.id,
            email: &user.email,
            name: &user.name,
        },
        Some(&team_id),
        "signup",
        client,
    )
    .await?;
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client: ClientInfo,
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
    rate_limit(&st, peer.ip(), Some(&account))?;
    let em = email.clone();
    let found = st.db.call(move |c| users::by_email(c, &em)).await?;
    // The same argon2 work whether or not the user exists.
    let phc = found
        .as_ref()
        .and_then(|u| u.password_hash.clone())
        .unwrap_or_else(|| crypto::dummy_hash().to_string());
    let password = req.password.clone();
    let ok = tokio::task::spawn_blocking(move || crypto::verify_password(&password, &phc))
        .await
        .map_err(|e| anyhow::anyhow!("verify task: {e}"))?;
    let user = match found {
        Some(u) if ok && u.password_hash.is_some() => u,
        _ => {
            account_failed(&st, &account);
            st.db
                .call(move |c| audit::record(c, None, "user.login_failed", Some(&email), None))
                .await?;
            return Err(ApiError::Unauthorized);
        }
    };
    let uid = user.id.clone();
    let team = st.db.call(move |c| users::login_team(c, &uid)).await?;
    let team_id = team.map(|t| t.team_id);
    let token = signin::start(
        &st,
        SessionUser {
            id: &user.id,
            email: &user.email,
            name: &user.name,
        },
        team_id.as_deref(),
        "password",
        client,
    )
    .await?;
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
