//! Login with GitHub, when configured: `start` redirects to GitHub with a state that is also kept
//! in an HMAC-sealed cookie; `callback` checks both, trades the code for an access token, reads the
//! GitHub user and signs them in (a new identity gets a user and a personal team; an email that
//! already has an account answers `email_taken`).
//!
//! The hand-off back to the dashboard is bound to the browser that went through the callback: no
//! token travels in the URL. The callback leaves a one-time hand-off ticket in an HttpOnly cookie
//! and sends the browser to `/#oauth=done`; the dashboard then calls `POST
//! /v1/auth/github/finish`, which redeems the cookie's ticket (once, within a minute) for a new
//! session's token. A link that someone else made carries nothing that signs anyone in.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header::{ACCEPT, COOKIE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::auth::validate_name;
use super::error::{ApiError, ApiResult};
use super::extract::ApiQuery;
use super::signin::{self, ClientInfo, SessionUser, issue_ticket, redeem_ticket};
use crate::crypto;
use crate::proto::api::AuthResponse;
use crate::proto::vocab::SignupMode;
use crate::server::AppState;
use crate::server::db::{DbError, now, tickets, users};

const COOKIE_NAME: &str = "sandboxctl_oauth_state";
const STATE_TTL_SECS: i64 = 600;
/// The cookie that carries the hand-off ticket from the callback to `finish`.
const HANDOFF_COOKIE: &str = "sandboxctl_oauth_handoff";
const HANDOFF_TTL_SECS: i64 = 60;
const COOKIE_PATH: &str = "/v1/auth/github";

#[derive(Clone)]
pub struct GithubConfig {
    pub client_id: String,
    pub client_secret: crypto::Secret,
    /// `https://github.com` (authorize and token endpoints).
    pub web_url: String,
    /// `https://api.github.com`.
    pub api_url: String,
}

impl std::fmt::Debug for GithubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubConfig")
            .field("client_id", &self.client_id)
            .field("web_url", &self.web_url)
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ProvidersResponse {
    pub github: bool,
    /// Who may sign up: `invite`, `open` or `closed` (SPEC §15).
    pub signup: SignupMode,
    /// The server has no account yet: the first signup (from the server's machine or with the
    /// bootstrap token) becomes the platform admin.
    pub bootstrap: bool,
}

/// How one may sign in and up here (the dashboard's login page asks before it shows itself).
pub async fn providers(State(st): State<AppState>) -> ApiResult<Json<ProvidersResponse>> {
    let accounts = st.db.call(|c| users::count(c)).await?;
    Ok(Json(ProvidersResponse {
        github: st.settings.github.is_some(),
        signup: st.settings.signup,
        bootstrap: accounts == 0,
    }))
}

fn github(st: &AppState) -> ApiResult<&GithubConfig> {
    st.settings
        .github
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("GitHub login (not configured on this server)"))
}

fn callback_url(st: &AppState) -> String {
    format!("{}/v1/auth/github/callback", st.settings.public_url)
}

pub async fn start(State(st): State<AppState>) -> ApiResult<Response> {
    let gh = github(&st)?;
    let state = crypto::random_token("");
    let sealed = st.keys.seal(&format!("{state}.{}", now() + STATE_TTL_SECS));
    let url = format!(
        "{}/login/oauth/authorize?client_id={}&redirect_uri={}&scope=read%3Auser%20user%3Aemail&state={}",
        gh.web_url,
        crate::urlencode::encode(&gh.client_id),
        crate::urlencode::encode(&callback_url(&st)),
        state
    );
    let cookie = cookie(&st.settings, COOKIE_NAME, &sealed, STATE_TTL_SECS);
    let mut resp = StatusCode::FOUND.into_response();
    resp.headers_mut().insert(
        LOCATION,
        HeaderValue::from_str(&url).map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    resp.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    Ok(resp)
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct GithubUser {
    id: u64,
    login: String,
    name: Option<String>,
    email: Option<String>,
}

#[derive(Debug, Deserialize)]
struct GithubEmail {
    email: String,
    primary: bool,
    verified: bool,
}

/// A `Set-Cookie` value for one of the sign-in cookies (`max_age` 0 clears it).
fn cookie(settings: &crate::server::Settings, name: &str, value: &str, max_age: i64) -> String {
    let secure = if settings.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    format!("{name}={value}; Path={COOKIE_PATH}; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
        .map(str::to_string)
        .next()
}

/// Checks the state against the sealed cookie (and its expiry).
fn check_state(st: &AppState, headers: &HeaderMap, state: &str) -> bool {
    let Some(sealed) = cookie_value(headers, COOKIE_NAME) else {
        return false;
    };
    let Some(value) = st.keys.unseal(&sealed) else {
        return false;
    };
    let Some((expected, exp)) = value.rsplit_once('.') else {
        return false;
    };
    exp.parse::<i64>().is_ok_and(|e| e > now())
        && crypto::ct_eq(expected.as_bytes(), state.as_bytes())
}

pub async fn callback(
    State(st): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    ApiQuery(q): ApiQuery<CallbackQuery>,
) -> Response {
    if let Err(e) = github(&st) {
        return e.into_response();
    }
    let wants_json = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let result = sign_in(&st, &headers, q).await;
    let mut resp = match (result, wants_json) {
        // A program that drove the flow itself (it holds the state cookie) gets the token.
        (Ok(who), true) => match session_for(&st, who, client).await {
            Ok(auth) => Json(auth).into_response(),
            Err(e) => e.into_response(),
        },
        (Err(e), true) => e.into_response(),
        // A browser gets a one-time hand-off in a cookie only it holds, and goes back to the
        // dashboard, which redeems it (`finish`).
        (Ok(who), false) => match handoff(&st, who).await {
            Ok(ticket) => {
                let mut r = redirect("/#oauth=done");
                if let Ok(v) = HeaderValue::from_str(&cookie(
                    &st.settings,
                    HANDOFF_COOKIE,
                    &ticket,
                    HANDOFF_TTL_SECS,
                )) {
                    r.headers_mut().append(SET_COOKIE, v);
                }
                r
            }
            Err(e) => {
                tracing::warn!(error = %e, "GitHub sign-in hand-off failed");
                redirect("/#oauth_error=oauth_failed")
            }
        },
        (Err(e), false) => {
            let code = match &e {
                ApiError::Conflict { code, .. } => *code,
                ApiError::Forbidden {
                    code: "signup_closed",
                    ..
                } => "signup_closed",
                _ => "oauth_failed",
            };
            tracing::warn!(error = %e, "GitHub sign-in failed");
            redirect(&format!("/#oauth_error={code}"))
        }
    };
    if let Ok(v) = HeaderValue::from_str(&cookie(&st.settings, COOKIE_NAME, "", 0)) {
        resp.headers_mut().append(SET_COOKIE, v);
    }
    resp
}

/// `POST /v1/auth/github/finish`: redeems the hand-off the callback left in this browser's
/// cookie for a new session's token. Works once; anything else is 401.
pub async fn finish(
    State(st): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
) -> ApiResult<Response> {
    github(&st)?;
    let grant = match cookie_value(&headers, HANDOFF_COOKIE) {
        Some(t) if !t.is_empty() => redeem_ticket(&st, &t, tickets::Purpose::OauthHandoff).await?,
        _ => None,
    };
    let clear = cookie(&st.settings, HANDOFF_COOKIE, "", 0);
    let mut resp = match grant {
        Some(g) => {
            let uid = g.user_id.clone();
            let u = st.db.call(move |c| users::get(c, &uid)).await?;
            let who = SignedIn {
                user: u,
                team: g.team_id,
            };
            Json(session_for(&st, who, client).await?).into_response()
        }
        None => ApiError::Unauthorized.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&clear) {
        resp.headers_mut().append(SET_COOKIE, v);
    }
    Ok(resp)
}

/// Who GitHub vouched for, and the team they land in.
struct SignedIn {
    user: users::UserRow,
    team: Option<String>,
}

/// Starts a session for a GitHub sign-in.
async fn session_for(st: &AppState, who: SignedIn, client: ClientInfo) -> ApiResult<AuthResponse> {
    let u = who.user;
    let token = signin::start(
        st,
        SessionUser {
            id: &u.id,
            email: &u.email,
            name: &u.name,
        },
        who.team.as_deref(),
        "github",
        client,
    )
    .await?;
    Ok(AuthResponse {
        token,
        user_id: u.id,
        team_id: who.team,
        email: u.email,
        name: u.name,
        is_admin: u.is_admin,
    })
}

/// A one-time hand-off ticket for a browser's GitHub sign-in.
async fn handoff(st: &AppState, who: SignedIn) -> ApiResult<String> {
    let grant = tickets::TicketGrant {
        user_id: who.user.id,
        team_id: who.team,
        ..Default::default()
    };
    let (ticket, _) = issue_ticket(
        st,
        "oh_",
        tickets::Purpose::OauthHandoff,
        grant,
        HANDOFF_TTL_SECS,
    )
    .await?;
    Ok(ticket)
}

fn redirect(to: &str) -> Response {
    let mut resp = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

async fn sign_in(st: &AppState, headers: &HeaderMap, q: CallbackQuery) -> ApiResult<SignedIn> {
    let gh = github(st)?.clone();
    if let Some(e) = q.error {
        return Err(ApiError::forbidden(
            "oauth_denied",
            format!("GitHub said: {e}"),
        ));
    }
    let code = q
        .code
        .filter(|c| !c.is_empty() && c.len() < 512)
        .ok_or_else(|| ApiError::bad("code", "required"))?;
    let state = q.state.ok_or_else(|| ApiError::bad("state", "required"))?;
    if !check_state(st, headers, &state) {
        return Err(ApiError::forbidden(
            "oauth_state_mismatch",
            "the sign-in took too long or did not start here; try again",
        ));
    }
    let http =
        crate::tls::http_client(|b| b.timeout(Duration::from_secs(15)).user_agent("sandboxctl"))
            .map_err(|e| anyhow::anyhow!(e))?;
    let upstream = |e: reqwest::Error| ApiError::HostFailed {
        code: "oauth_upstream",
        message: format!("GitHub did not answer: {}", e.without_url()),
    };
    let token: TokenAnswer = http
        .post(format!("{}/login/oauth/access_token", gh.web_url))
        .header(ACCEPT, "application/json")
        .form(&[
            ("client_id", gh.client_id.as_str()),
            ("client_secret", gh.client_secret.expose()),
            ("code", code.as_str()),
            ("redirect_uri", callback_url(st).as_str()),
        ])
        .send()
        .await
        .map_err(upstream)?
        .json()
        .await
        .map_err(upstream)?;
    let access = token.access_token.ok_or_else(|| {
        ApiError::forbidden(
            "oauth_denied",
            format!(
                "GitHub refused the code: {}",
                token.error.unwrap_or_default()
            ),
        )
    })?;
    // GET a GitHub API resource as the user.
    let fetch = |path: &'static str| {
        let req = http
            .get(format!("{}{path}", gh.api_url))
            .bearer_auth(&access);
        async move { req.send().await.and_then(|r| r.error_for_status()) }
    };
    let user: GithubUser = fetch("/user")
        .await
        .map_err(upstream)?
        .json()
        .await
        .map_err(upstream)?;
    // The addresses are optional (an app without user:email sees none): fall back to the profile's.
    let emails: Vec<GithubEmail> = match fetch("/user/emails").await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let email = emails
        .iter()
        .find(|e| e.primary && e.verified)
        .map(|e| e.email.clone())
        .or(user.email.clone())
        .ok_or_else(|| {
            ApiError::forbidden(
                "oauth_no_email",
                "your GitHub account has no verified email",
            )
        })?;
    let email = super::auth::normalize_email(&email)?;
    let name = validate_name(
        user.name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or(&user.login),
    )
    .unwrap_or_else(|_| user.login.chars().take(100).collect());
    let gh_id = user.id.to_string();
    let mode = st.settings.signup;
    let (u, team) = st
        .db
        .call(move |c| {
            if let Some(u) = users::by_identity(c, "github", &gh_id)? {
                let team = users::login_team(c, &u.id)?.map(|m| m.team_id);
                return Ok((u, team));
            }
            if users::by_email(c, &email)?.is_some() {
                return Err(DbError::Conflict("email_taken"));
            }
            let (u, team) =
                users::create_from_identity(c, mode, "github", &gh_id, &email, &name)?;
            Ok((u, Some(team)))
        })
        .await
        .map_err(|e| match e {
            DbError::Conflict("email_taken") => ApiError::conflict(
                "email_taken",
                "an account with this email already exists; log in with your password",
            ),
            DbError::Conflict("signup_closed") => ApiError::forbidden(
                "signup_closed",
                "this server does not take new accounts through GitHub; sign up with an invite, then log in",
            ),
            other => other.into(),
        })?;
    Ok(SignedIn { user: u, team })
}
