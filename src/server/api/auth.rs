//! Signup, login and the caller's identity.

use axum::Json;
use std::net::IpAddr;

use axum::extract::State;
use axum::http::StatusCode;

use super::client_ip::ClientIp;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, AuthUser};
use super::signin::{self, ClientInfo, SessionUser};
use crate::crypto;
use crate::proto::api::{AuthResponse, LoginRequest, MeResponse, SignupRequest};
use crate::proto::vocab::SignupMode;
use crate::server::db::{DbError, audit, users};
use crate::server::{AppState, bootstrap};

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

/// Signs a user up, if the server lets them in (SPEC §15): the first account of a fresh server
/// (from loopback or with the bootstrap token) becomes the platform admin; after that an `invite`
/// server needs a team invite, an `open` one takes anyone, a `closed` one no one.
pub async fn signup(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    client: ClientInfo,
    ApiJson(req): ApiJson<SignupRequest>,
) -> ApiResult<(StatusCode, Json<AuthResponse>)> {
    rate_limit(&st, ip, None)?;
    let email = normalize_email(&req.email)?;
    validate_password(&req.password)?;
    let name = validate_name(&req.name)?;
    let invite_hash = match req.invite.as_deref().map(str::trim) {
        None => None,
        Some("") => return Err(ApiError::bad("invite", "must not be empty")),
        Some(t) if t.len() > 200 => return Err(ApiError::bad("invite", "not an invite token")),
        Some(t) => Some(crypto::sha256_hex(t.as_bytes())),
    };
    let may_bootstrap = bootstrap::may_bootstrap(&st, ip, req.bootstrap_token.as_deref());
    // Refused before the expensive hash when nothing could let this signup in.
    let mode = st.settings.signup;
    let hopeless = match mode {
        SignupMode::Closed => true,
        SignupMode::Invite => invite_hash.is_none(),
        SignupMode::Open => false,
    };
    if hopeless && !may_bootstrap {
        let fresh = st.db.call(|c| users::count(c)).await? == 0;
        return Err(refused(DbError::Conflict(if fresh {
            "bootstrap_required"
        } else {
            "signup_closed"
        })));
    }
    let password = req.password.clone();
    let hash = hashing(&st, move || crypto::hash_password(&password)).await??;
    let (em, nm) = (email.clone(), name.clone());
    let (user, team_id) = st
        .db
        .call(move |c| {
            let admission = users::Admission {
                mode,
                may_bootstrap,
                invite_hash: invite_hash.as_deref(),
            };
            users::signup(c, &em, &nm, &hash, admission)
        })
        .await
        .map_err(refused)?;
    if user.is_admin {
        st.bootstrap.finished();
        tracing::info!(user = %user.id, "the first account signed up: platform admin");
    }
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

/// Why a signup (or an invite's acceptance) was refused, as the API says it.
pub fn refused(e: DbError) -> ApiError {
    match e {
        DbError::Conflict("email_taken") => {
            ApiError::conflict("email_taken", "an account with this email already exists")
        }
        DbError::Conflict("signup_closed") => ApiError::forbidden(
            "signup_closed",
            "this server does not take new accounts without an invite; ask a team owner or admin for one",
        ),
        DbError::Conflict("bootstrap_required") => ApiError::forbidden(
            "signup_closed",
            "this server has no account yet: the first one signs up from the server's own machine, or with the bootstrap token the server printed at start",
        ),
        DbError::Conflict("invite_invalid") => ApiError::forbidden(
            "invite_invalid",
            "this invite does not exist (check the link) or its team was deleted",
        ),
        DbError::Conflict("invite_expired") => ApiError::forbidden(
            "invite_expired",
            "this invite has expired; ask for a new one",
        ),
        DbError::Conflict("invite_used") => ApiError::forbidden(
            "invite_used",
            "this invite was already used; ask for a new one",
        ),
        DbError::Conflict("invite_revoked") => ApiError::forbidden(
            "invite_revoked",
            "this invite was revoked; ask for a new one",
        ),
        DbError::Conflict("already_member") => {
            ApiError::conflict("already_member", "you are already a member of this team")
        }
        other => other.into(),
    }
}

pub async fn login(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
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
