//! Files in a VM: read (streamed out), write (streamed in), list, stat, mkdir, remove.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;

use super::AgentState;
use super::error::ApiError;
use super::extract::query;
use crate::agent::vm::VmError;
use crate::agent::vm::files::{FileError, MAX_UPLOAD_BYTES};
use crate::proto::api::{FileEntry, FileListResponse};

pub fn routes() -> Router<AgentState> {
    Router::new()
        .route(
            "/v1/vms/{id}/files",
            get(read_file)
                .put(write_file)
                .delete(remove_file)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/vms/{id}/files/list", get(list_files))
        .route("/v1/vms/{id}/files/stat", get(stat_file))
        .route("/v1/vms/{id}/files/mkdir", post(mkdir))
}

#[derive(Debug, Deserialize)]
struct FileQuery {
    path: Option<String>,
    #[serde(default)]
    recursive: Option<bool>,
    #[serde(default)]
    parents: Option<bool>,
    /// Octal permission bits (`644`).
    #[serde(default)]
    mode: Option<String>,
}

fn path_of(q: &FileQuery) -> Result<String, ApiError> {
    let p = q.path.clone().ok_or(VmError::BadRequest {
        field: "path",
        message: "required: an absolute path in the VM".into(),
    })?;
    crate::proto::path::SandboxPath::parse(&p).map_err(VmError::from)?;
    Ok(p)
}

async fn read_file(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let path = path_of(&q)?;
    let dl = st.vms.file_read(&id, &path).await?;
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/octet-stream");
    if let Some(len) = dl.length {
        resp = resp.header(CONTENT_LENGTH, len);
    }
    resp.body(Body::from_stream(dl.into_stream()))
        .map_err(|e| VmError::Internal(anyhow::anyhow!("building the answer: {e}")).into())
}

async fn write_file(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<FileEntry>), ApiError> {
    let q = query(q)?;
    let path = path_of(&q)?;
    let mode = match &q.mode {
        None => None,
        Some(m) => Some(crate::proto::path::parse_mode(m).map_err(VmError::from)?),
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_UPLOAD_BYTES) {
        return Err(FileError::TooLarge(MAX_UPLOAD_BYTES).into());
    }
    let entry = st
        .vms
        .file_write(&id, &path, mode, body.into_data_stream(), MAX_UPLOAD_BYTES)
        .await?;
    Ok((StatusCode::CREATED, Json(entry)))
}

async fn list_files(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<Json<FileListResponse>, ApiError> {
    let path = path_of(&query(q)?)?;
    Ok(Json(st.vms.file_list(&id, &path).await?))
}

async fn stat_file(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<Json<FileEntry>, ApiError> {
    let path = path_of(&query(q)?)?;
    Ok(Json(st.vms.file_stat(&id, &path).await?))
}

async fn mkdir(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<(StatusCode, Json<FileEntry>), ApiError> {
    let q = query(q)?;
    let path = path_of(&q)?;
    let e = st
        .vms
        .file_mkdir(&id, &path, q.parents.unwrap_or(false))
        .await?;
    Ok((StatusCode::CREATED, Json(e)))
}

async fn remove_file(
    State(st): State<AgentState>,
    Path(id): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let q = query(q)?;
    let path = path_of(&q)?;
    st.vms
        .file_remove(&id, &path, q.recursive.unwrap_or(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
