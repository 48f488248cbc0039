//! Who may call the agent: every route demands a token signed by the server's key (pinned at
//! registration) with this host's id as audience, bound to the request's method, path and body
//! and used once (see [`crate::crypto::agent_call`]); anything else gets 401.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AgentState;
use super::error::ApiError;
use crate::crypto::agent_call::{CallBinding, CallRefused, CallVerifier, unix_now};

/// The routes that take a streamed body, which a call binds to the fixed "streamed" value instead
/// of a digest: (method, route). Every other route gets its body digested and compared.
const STREAMED_ROUTES: [(&str, &str); 2] = [
    ("PUT", "/v1/vms/{id}/files"),
    ("PUT", "/v1/templates/{name}/image"),
];

/// Largest body of a call whose body is digested (the JSON routes).
const MAX_SIGNED_BODY: usize = 2 << 20;

/// The middleware in front of every route.
pub async fn require_server(State(st): State<AgentState>, req: Request, next: Next) -> Response {
    match check_call(&st.verifier, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The request, its body read back in when it was digested, if its token is good for it.
async fn check_call(verifier: &CallVerifier, req: Request) -> Result<Request, ApiError> {
    let refused = |why: CallRefused| {
        tracing::warn!(reason = %why, "refused a call");
        ApiError::Unauthorized
    };
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .ok_or(ApiError::Unauthorized)?;
    let claims = verifier.claims(&token).map_err(refused)?;
    let method = req.method().as_str().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let (received, req) = if claims.streams_body() {
        let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str());
        if !route.is_some_and(|r| STREAMED_ROUTES.contains(&(method.as_str(), r))) {
            return Err(refused(CallRefused::StreamNotAllowed));
        }
        (CallBinding::streamed(&method, &target), req)
    } else {
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_SIGNED_BODY)
            .await
            .map_err(|_| {
                ApiError::PayloadTooLarge(format!(
                    "a request body is at most {MAX_SIGNED_BODY} bytes"
                ))
            })?;
        let received = CallBinding::new(&method, &target, &bytes);
        (
            received,
            Request::from_parts(parts, axum::body::Body::from(bytes)),
        )
    };
    verifier
        .accept(&claims, &received, unix_now())
        .map_err(refused)?;
    Ok(req)
}
