//! Sandbox ports on the main listener (SPEC §13, E2B.md §1.4 and §3.5): requests that name a
//! sandbox's port by host name or by the `E2b-Sandbox-*` headers ([`route`]) are relayed to that
//! port over a byte stream through the sandbox's agent and guest channel ([`forward`]); the
//! rest go on to the API and the dashboard.
//!
//! The outermost layer of the app, so a proxied body is never buffered or cut by the API's
//! request timeout. Answers of our own are E2B's JSON `{"sandboxId","message","code"}`:
//! 502 "The sandbox was not found" for an unknown, ended or paused sandbox (the SDKs read
//! "was not found" as "not running"), 502 "The sandbox is running but port is not open",
//! 401/403 for a private port without the sandbox's access token or a credential of its team.
//!
//! Before forwarding, the routing headers, `X-API-Key`, a bearer token that authenticated as
//! one of ours and (except for envd's port) `X-Access-Token` are removed: the app never sees a
//! credential of the control plane.

pub mod forward;
pub mod route;

use std::str::FromStr;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use self::route::{Routed, SANDBOX_ID_HEADER, SANDBOX_PORT_HEADER, Target};
use crate::crypto::sha256_hex;
use crate::ids::{SandboxId, TeamId};
use crate::server::AppState;
use crate::server::api::extract::Caller;
use crate::server::db::api_keys;
use crate::server::sandboxes::SandboxError;
use crate::server::sandboxes::ports::{ENVD_PORT, PortCredentials, PortRefusal, check_port_access};

pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";
/// What E2B's SDKs send for a sandbox's private ingress; the access token is taken there too.
pub const TRAFFIC_TOKEN_HEADER: &str = "e2b-traffic-access-token";
const API_KEY_HEADER: &str = "x-api-key";

/// E2B's answer body for proxied requests the server answers itself.
#[derive(Debug, Serialize)]
struct ProxyAnswer<'a> {
    #[serde(rename = "sandboxId")]
    sandbox_id: &'a str,
    message: &'a str,
    code: u16,
}

fn answer(status: StatusCode, sandbox_id: &str, message: &str) -> Response {
    let body = ProxyAnswer {
        sandbox_id,
        message,
        code: status.as_u16(),
    };
    (status, axum::Json(body)).into_response()
}

pub const NOT_FOUND_MESSAGE: &str = "The sandbox was not found";
pub const PORT_CLOSED_MESSAGE: &str = "The sandbox is running but port is not open";

fn not_found(id: &str) -> Response {
    answer(StatusCode::BAD_GATEWAY, id, NOT_FOUND_MESSAGE)
}

/// The middleware: a request for a sandbox's port is relayed, anything else goes on.
pub async fn route_to_sandbox(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let domain = st.settings.sandbox_domain.as_deref();
    match route::route(req.uri(), req.headers(), domain) {
        Routed::Server => next.run(req).await,
        Routed::Bad(field, message) => {
            answer(StatusCode::BAD_REQUEST, "", &format!("{field}: {message}"))
        }
        Routed::Sandbox(t) => serve(&st, t, req).await,
    }
}

async fn serve(st: &AppState, t: Target, req: Request) -> Response {
    let Ok(id) = SandboxId::from_str(&t.sandbox_id) else {
        return not_found(&t.sandbox_id);
    };
    let svc = st.sandboxes();
    let s = match svc.port_target(&id).await {
        Ok(s) => s,
        Err(SandboxError::NotFound(_)) => return not_found(&t.sandbox_id),
        Err(e) => {
            tracing::warn!(sandbox = %id, error = %e, "looking up a sandbox for its port");
            return answer(
                StatusCode::BAD_GATEWAY,
                &t.sandbox_id,
                "The sandbox could not be reached",
            );
        }
    };
    let (mut parts, body) = req.into_parts();
    let (creds, bearer_was_ours) = credentials(st, &mut parts).await;
    let token = svc.access_token(&id);
    match check_port_access(&s, t.port, token.expose(), &creds) {
        Ok(()) => {}
        Err(PortRefusal::Unauthenticated) => {
            return answer(
                StatusCode::UNAUTHORIZED,
                &t.sandbox_id,
                "This port is private: send the sandbox's access token in X-Access-Token, or an API key of its team",
            );
        }
        Err(PortRefusal::Forbidden) => {
            return answer(
                StatusCode::FORBIDDEN,
                &t.sandbox_id,
                "This credential does not open this sandbox's ports",
            );
        }
    }
    clean_headers(&mut parts.headers, t.port, bearer_was_ours);
    let upstream = match svc.open_port(&s, t.port).await {
        Ok(u) => u,
        Err(SandboxError::Conflict {
            code: "port_closed",
            ..
        }) => return answer(StatusCode::BAD_GATEWAY, &t.sandbox_id, PORT_CLOSED_MESSAGE),
        Err(SandboxError::NotFound(_) | SandboxError::Conflict { .. }) => {
            return not_found(&t.sandbox_id);
        }
        Err(e) => {
            tracing::warn!(sandbox = %id, port = t.port, error = %e, "opening a sandbox port");
            return answer(
                StatusCode::BAD_GATEWAY,
                &t.sandbox_id,
                "The sandbox could not be reached",
            );
        }
    };
    match forward::forward(upstream, Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(sandbox = %id, port = t.port, error = %e, "relaying to a sandbox port");
            answer(StatusCode::BAD_GATEWAY, &t.sandbox_id, PORT_CLOSED_MESSAGE)
        }
    }
}

/// What the caller showed: the access tokens, and the team of a bearer token or `X-API-Key` that
/// authenticated. True when the `Authorization` header was one of our credentials.
async fn credentials(
    st: &AppState,
    parts: &mut axum::http::request::Parts,
) -> (PortCredentials, bool) {
    let access_tokens = [ACCESS_TOKEN_HEADER, TRAFFIC_TOKEN_HEADER]
        .into_iter()
        .filter_map(|h| parts.headers.get(h))
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .collect();
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split_once(' ')
                .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        });
    let mut team = None;
    let mut bearer_was_ours = false;
    if bearer && let Ok(c) = Caller::from_request_parts(parts, st).await {
        bearer_was_ours = true;
        team = c.team_id.map(TeamId::from_stored);
    }
    if team.is_none()
        && let Some(key) = parts
            .headers
            .get(API_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|k| k.starts_with("sk_"))
    {
        let hash = sha256_hex(key.trim().as_bytes());
        if let Ok(Some(k)) = api_keys::authenticate(&st.db, hash).await {
            team = Some(TeamId::from_stored(k.team_id));
        }
    }
    (
        PortCredentials {
            access_tokens,
            team,
        },
        bearer_was_ours,
    )
}

/// Removes what the app must not see: the routing headers, our credentials, and the access
/// token except on envd's port (envd checks it itself).
fn clean_headers(headers: &mut HeaderMap, port: u16, bearer_was_ours: bool) {
    headers.remove(SANDBOX_ID_HEADER);
    headers.remove(SANDBOX_PORT_HEADER);
    headers.remove(API_KEY_HEADER);
    headers.remove(TRAFFIC_TOKEN_HEADER);
    if bearer_was_ours {
        headers.remove(header::AUTHORIZATION);
    }
    if port != ENVD_PORT {
        headers.remove(ACCESS_TOKEN_HEADER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_never_sees_our_credentials() {
        let headers = || {
            let mut h = HeaderMap::new();
            for (k, v) in [
                ("e2b-sandbox-id", "sbx-a"),
                ("E2b-Sandbox-Port", "8000"),
                ("x-api-key", "sk_x"),
                ("authorization", "Bearer sk_x"),
                ("x-access-token", "sat_x"),
                ("e2b-traffic-access-token", "sat_x"),
                ("x-app", "kept"),
            ] {
                h.insert(
                    axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        let mut h = headers();
        clean_headers(&mut h, 8000, true);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-app"]);
        // envd gets the access token (it checks it); a bearer that was not ours is the app's.
        let mut h = headers();
        clean_headers(&mut h, ENVD_PORT, false);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "x-access-token", "x-app"]);
    }
}
