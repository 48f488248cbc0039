//! Agent routes for pause, resume, snapshots and templates.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use super::api::{AgentApiError, AgentState, Body, error};
use super::vm::TemplateError;
use crate::proto::agent::{
    BuildTemplateRequest, SnapshotVmRequest, TemplateInfo, TemplateListResponse, VmInfo,
};

/// Template errors on the wire: 404 `not_found`, 409 `already_exists` or `conflict`, and the VM
/// errors as everywhere else.
pub struct TemplateApiError(pub TemplateError);

impl From<TemplateError> for TemplateApiError {
    fn from(e: TemplateError) -> Self {
        TemplateApiError(e)
    }
}

impl IntoResponse for TemplateApiError {
    fn into_response(self) -> Response {
        match self.0 {
            e @ TemplateError::NotFound(_) => {
                error(StatusCode::NOT_FOUND, "not_found", e.to_string(), None)
            }
            e @ TemplateError::AlreadyExists(_) => {
                error(StatusCode::CONFLICT, "already_exists", e.to_string(), None)
            }
            TemplateError::Conflict(m) => error(StatusCode::CONFLICT, "conflict", m, None),
            e @ (TemplateError::TooLarge(_) | TemplateError::Expands(_)) => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                e.to_string(),
                None,
            ),
            TemplateError::Vm(e) => AgentApiError(e).into_response(),
        }
    }
}

async fn pause(
    State(st): State<AgentState>,
    Path(id): Path<String>,
) -> Result<Json<VmInfo>, AgentApiError> {
    Ok(Json(st.vms.pause(&id).await?))
}

async fn resume(
    State(st): State<AgentState>,
    Path(id): Path<String>,
) -> Result<Json<VmInfo>, AgentApiError> {
    Ok(Json(st.vms.resume(&id).await?))
}

async fn snapshot(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    Body(req): Body<SnapshotVmRequest>,
) -> Result<(StatusCode, Json<TemplateInfo>), TemplateApiError> {
    Ok((StatusCode::CREATED, Json(st.vms.snapshot(&id, &req).await?)))
}

async fn list(State(st): State<AgentState>) -> Json<TemplateListResponse> {
    Json(TemplateListResponse {
        templates: st.vms.template_infos().await,
    })
}

async fn build(
    State(st): State<AgentState>,
    Body(req): Body<BuildTemplateRequest>,
) -> Result<(StatusCode, Json<TemplateInfo>), TemplateApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(st.vms.build_template(&req.name).await?),
    ))
}

async fn remove(
    State(st): State<AgentState>,
    Path(name): Path<String>,
) -> Result<StatusCode, TemplateApiError> {
    st.vms.delete_template(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A team template from a root filesystem archive (the raw body: tar or tar.gz).
async fn import(
    State(st): State<AgentState>,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<TemplateInfo>), TemplateApiError> {
    let info = st
        .vms
        .import_template(&name, body.into_data_stream())
        .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

pub fn routes() -> Router<AgentState> {
    Router::new()
        .route("/v1/vms/{id}/pause", post(pause))
        .route("/v1/vms/{id}/resume", post(resume))
        .route("/v1/vms/{id}/snapshot", post(snapshot))
        .route("/v1/templates", get(list).post(build))
        .route("/v1/templates/{name}", delete(remove))
        .route(
            "/v1/templates/{name}/image",
            axum::routing::put(import).layer(axum::extract::DefaultBodyLimit::disable()),
        )
}
