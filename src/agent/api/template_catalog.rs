//! The templates this host holds: listed, base templates built, any template deleted.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};

use super::AgentState;
use super::error::ApiError;
use super::extract::Body;
use crate::proto::agent::{BuildTemplateRequest, TemplateInfo, TemplateListResponse};

pub fn routes() -> Router<AgentState> {
    Router::new()
        .route("/v1/templates", get(list).post(build))
        .route("/v1/templates/{name}", delete(remove))
}

async fn list(State(st): State<AgentState>) -> Json<TemplateListResponse> {
    Json(TemplateListResponse {
        templates: st.vms.template_infos().await,
    })
}

async fn build(
    State(st): State<AgentState>,
    Body(req): Body<BuildTemplateRequest>,
) -> Result<(StatusCode, Json<TemplateInfo>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(st.vms.build_template(&req.name).await?),
    ))
}

async fn remove(
    State(st): State<AgentState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.vms.delete_template(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
