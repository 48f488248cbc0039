//! A team template from a root filesystem archive (the raw body: tar or tar.gz).

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::put;
use axum::{Json, Router};

use super::AgentState;
use super::error::ApiError;
use crate::proto::agent::TemplateInfo;

pub fn routes() -> Router<AgentState> {
    Router::new().route(
        "/v1/templates/{name}/image",
        put(import).layer(DefaultBodyLimit::disable()),
    )
}

async fn import(
    State(st): State<AgentState>,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<TemplateInfo>), ApiError> {
    let info = st
        .vms
        .import_template(&name, body.into_data_stream())
        .await?;
    Ok((StatusCode::CREATED, Json(info)))
}
