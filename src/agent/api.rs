//! What the server calls on an agent. Every route demands a token signed by the server's key
//! (pinned at registration) with this host's id as audience, bound to the request's method, path
//! and body and used once (see [`crate::crypto::agent_call`]); anything else gets 401.

use std::sync::Arc;

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::vm::{VmError, VmManager};
use crate::crypto::agent_call::{CallBinding, CallRefused, CallVerifier, unix_now};
use crate::proto::agent::{CreateVmRequest, VmInfo, VmListResponse};
use crate::proto::api::{ErrorBody, ErrorDetail, ExecRequest, ExecResponse};
use crate::proto::json::{BodyError, parse_object};
use crate::proto::net::EgressPolicy;

#[derive(Clone)]
pub struct AgentState {
    pub vms: Arc<VmManager>,
    pub verifier: Arc<CallVerifier>,
}

/// The routes that take a streamed body, which a call binds to the fixed "streamed" value instead
/// of a digest: (method, route). Every other route gets its body digested and compared.
const STREAMED_ROUTES: [(&str, &str); 2] = [
    ("PUT", "/v1/vms/{id}/files"),
    ("PUT", "/v1/templates/{name}/image"),
];

/// Largest body of a call whose body is digested (the JSON routes).
const MAX_SIGNED_BODY: usize = 2 << 20;

pub fn error(status: StatusCode, code: &str, message: String, field: Option<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message,
                field,
                sandbox_ids: None,
            },
        }),
    )
        .into_response()
}

pub struct AgentApiError(pub VmError);

impl From<VmError> for AgentApiError {
    fn from(e: VmError) -> Self {
        AgentApiError(e)
    }
}

impl IntoResponse for AgentApiError {
    fn into_response(self) -> Response {
        match self.0 {
            VmError::NotFound(id) => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no VM {id}"),
                None,
            ),
            VmError::Conflict(m) => error(StatusCode::CONFLICT, "conflict", m, None),
            VmError::BadRequest { field, message } => error(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                format!("{field}: {message}"),
                Some(field.to_string()),
            ),
            VmError::GuestUnavailable(m) => {
                error(StatusCode::BAD_GATEWAY, "guest_unavailable", m, None)
            }
            VmError::Internal(e) => {
                tracing::error!(error = ?e, "agent internal error");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("{e:#}"),
                    None,
                )
            }
        }
    }
}

async fn require_server(State(st): State<AgentState>, req: Request, next: Next) -> Response {
    match check_call(&st.verifier, req).await {
        Ok(req) => next.run(req).await,
        Err(resp) => resp,
    }
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing, invalid or expired credentials".into(),
        None,
    )
}

/// The request, its body read back in when it was digested, if its token is good for it.
async fn check_call(verifier: &CallVerifier, req: Request) -> Result<Request, Response> {
    let refused = |why: CallRefused| {
        tracing::warn!(reason = %why, "refused a call");
        unauthorized()
    };
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .ok_or_else(unauthorized)?;
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
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("a request body is at most {MAX_SIGNED_BODY} bytes"),
                    None,
                )
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

/// A JSON body parsed with field-naming errors (same rules as the server's).
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = Response;
    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = bytes::Bytes::from_request(req, state).await.map_err(|e| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.body_text(),
                None,
            )
        })?;
        parse_object(&bytes).map(Body).map_err(|e| match e {
            BodyError::Malformed(m) => error(StatusCode::BAD_REQUEST, "invalid_body", m, None),
            BodyError::Field { field, message } => error(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                format!("{field}: {message}"),
                Some(field),
            ),
        })
    }
}

async fn list(State(st): State<AgentState>) -> Json<VmListResponse> {
    Json(VmListResponse {
        vms: st.vms.list().await,
    })
}

async fn create(
    State(st): State<AgentState>,
    Body(req): Body<CreateVmRequest>,
) -> Result<(StatusCode, Json<VmInfo>), AgentApiError> {
    Ok((StatusCode::CREATED, Json(st.vms.create(req).await?)))
}

async fn get_vm(
    State(st): State<AgentState>,
    Path(id): Path<String>,
) -> Result<Json<VmInfo>, AgentApiError> {
    Ok(Json(st.vms.get(&id).await?))
}

async fn destroy(
    State(st): State<AgentState>,
    Path(id): Path<String>,
) -> Result<StatusCode, AgentApiError> {
    st.vms.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn exec(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    Body(req): Body<ExecRequest>,
) -> Result<Json<ExecResponse>, AgentApiError> {
    Ok(Json(st.vms.exec(&id, req).await?))
}

/// Replaces the VM's egress policy (new connections follow it at once).
async fn set_network(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    Body(policy): Body<EgressPolicy>,
) -> Result<Json<EgressPolicy>, AgentApiError> {
    Ok(Json(st.vms.set_network(&id, policy).await?))
}

pub fn router(state: AgentState) -> Router {
    Router::new()
        .route("/v1/vms", get(list).post(create))
        .route("/v1/vms/{id}", get(get_vm).delete(destroy))
        .route("/v1/vms/{id}/exec", post(exec))
        .route("/v1/vms/{id}/network", axum::routing::put(set_network))
        .merge(super::api_streams::routes())
        .merge(super::api_templates::routes())
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route".into(),
                None,
            )
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_server,
        ))
        .with_state(state)
}
