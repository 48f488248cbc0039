//! A sandbox's files over REST, streamed both ways: neither the server nor the agent holds a file
//! in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::TryStreamExt;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiQuery, Caller};
use super::sandboxes::{host_client, load};
use crate::proto::api::{FileEntry, FileListResponse};
use crate::proto::guest::FileErrorCode;
use crate::proto::path::{SandboxPath, parse_mode};
use crate::server::AppState;
use crate::server::db::sandboxes::{self, SandboxRow};
use crate::server::pool::{
    AgentClient, AgentError, MAX_JSON_ANSWER, MAX_LISTING_ANSWER, read_json,
};
use crate::server::state::SandboxStatus;
use crate::urlencode;

#[derive(Debug, Deserialize)]
pub struct FileQuery {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub recursive: Option<bool>,
    #[serde(default)]
    pub parents: Option<bool>,
    /// Permission bits for a written file, in octal (`644`).
    #[serde(default)]
    pub mode: Option<String>,
}

/// The query's path, checked by the rule every hop applies ([`SandboxPath`]).
pub(super) fn check_path(q: &FileQuery) -> ApiResult<SandboxPath> {
    let p = q
        .path
        .as_deref()
        .ok_or_else(|| ApiError::bad("path", "required: an absolute path in the sandbox"))?;
    Ok(SandboxPath::parse(p)?)
}

/// The running sandbox's agent client, and the sandbox (activity is recorded).
pub(super) async fn target(
    st: &AppState,
    caller: &Caller,
    id: String,
) -> ApiResult<(AgentClient, SandboxRow)> {
    let s = load(st, caller, id).await?;
    if s.status != SandboxStatus::Running {
        return Err(ApiError::conflict(
            "sandbox_not_running",
            format!("the sandbox is {}, not running", s.status),
        ));
    }
    let (client, _) = host_client(st, &s).await?;
    let sid = s.id.clone();
    st.db.call(move |c| sandboxes::touch(c, &sid)).await?;
    Ok((client, s))
}

/// File errors from the host keep their meaning: a missing file is 404, a directory where a file
/// should be (or the like) 409 with the host's code, over the size limit 413.
fn map_agent(e: AgentError) -> ApiError {
    match e {
        AgentError::Remote {
            status: 404, code, ..
        } if FileErrorCode::from_code(&code) == Some(FileErrorCode::FileNotFound) => {
            ApiError::NotFound("file")
        }
        AgentError::Remote { status: 404, .. } => ApiError::conflict(
            "sandbox_not_running",
            "the sandbox's VM is gone from its host",
        ),
        AgentError::Remote { status: 413, .. } => ApiError::TooLarge,
        AgentError::Remote {
            status: 403,
            message,
            ..
        } => ApiError::forbidden("permission_denied", message),
        AgentError::Remote {
            status: 409,
            code,
            message,
            ..
        } => {
            use FileErrorCode::*;
            let code = match FileErrorCode::from_code(&code) {
                Some(c @ (IsADirectory | NotADirectory | Exists | NotEmpty)) => c.as_str(),
                _ => "file_conflict",
            };
            ApiError::conflict(code, message)
        }
        other => other.into(),
    }
}

fn query(path: &SandboxPath) -> String {
    format!("path={}", urlencode::encode(path.as_str()))
}

/// Reads a file: the raw bytes, streamed.
pub async fn read(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> ApiResult<Response> {
    let path = check_path(&q)?;
    stream_file(&st, &caller, id, &path).await
}

/// The file at `path` of the caller's running sandbox `id`, streamed from its host.
pub(super) async fn stream_file(
    st: &AppState,
    caller: &Caller,
    id: String,
    path: &SandboxPath,
) -> ApiResult<Response> {
    let (client, s) = target(st, caller, id).await?;
    let resp = client
        .stream(
            reqwest::Method::GET,
            &format!("/v1/vms/{}/files?{}", s.id, query(path)),
            None,
            None,
        )
        .await
        .map_err(map_agent)?;
    let mut out = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/octet-stream");
    if let Some(len) = resp.headers().get(CONTENT_LENGTH) {
        out = out.header(CONTENT_LENGTH, len.clone());
    }
    out.body(Body::from_stream(resp.bytes_stream()))
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("building the answer: {e}")))
}

/// Writes a file from the raw request body, streamed; over the limit → 413 and nothing written.
pub async fn write(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<FileEntry>)> {
    let path = check_path(&q)?;
    let mode = match &q.mode {
        None => String::new(),
        Some(m) => {
            parse_mode(m)?;
            format!("&mode={m}")
        }
    };
    let limit = st.settings.max_file_bytes;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge);
    }
    let (client, s) = target(&st, &caller, id).await?;
    let (body, over) = limited_body(body, limit);
    let result = client
        .stream(
            reqwest::Method::PUT,
            &format!("/v1/vms/{}/files?{}{mode}", s.id, query(&path)),
            Some(body),
            None,
        )
        .await;
    if over.load(Ordering::Relaxed) {
        return Err(ApiError::TooLarge);
    }
    let resp = result.map_err(map_agent)?;
    let entry: FileEntry = read_json(resp, MAX_JSON_ANSWER).await.map_err(map_agent)?;
    Ok((StatusCode::CREATED, Json(entry)))
}

/// `body` passed on as it comes, broken off past `limit` bytes; the flag turns true when it was.
pub(super) fn limited_body(body: Body, limit: u64) -> (reqwest::Body, Arc<AtomicBool>) {
    let seen = Arc::new(AtomicU64::new(0));
    let over = Arc::new(AtomicBool::new(false));
    let flag = over.clone();
    let stream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .and_then(move |chunk| {
            let total = seen.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
            let res = if total > limit {
                over.store(true, Ordering::Relaxed);
                Err(std::io::Error::other("larger than the limit"))
            } else {
                Ok(chunk)
            };
            std::future::ready(res)
        });
    (reqwest::Body::wrap_stream(stream), flag)
}

async fn json_call<T: serde::de::DeserializeOwned>(
    client: &AgentClient,
    method: reqwest::Method,
    path: String,
    limit: usize,
) -> ApiResult<T> {
    client
        .json(method, &path, std::time::Duration::from_secs(60), limit)
        .await
        .map_err(map_agent)
}

/// `GET /v1/vms/{id}/files/{op}?path=…` on the sandbox's host, for a checked path.
async fn read_call<T: serde::de::DeserializeOwned>(
    st: &AppState,
    caller: &Caller,
    id: String,
    q: &FileQuery,
    op: &str,
) -> ApiResult<T> {
    let path = check_path(q)?;
    let (client, s) = target(st, caller, id).await?;
    let limit = if op == "list" {
        MAX_LISTING_ANSWER
    } else {
        MAX_JSON_ANSWER
    };
    json_call(
        &client,
        reqwest::Method::GET,
        format!("/v1/vms/{}/files/{op}?{}", s.id, query(&path)),
        limit,
    )
    .await
}

pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> ApiResult<Json<FileListResponse>> {
    Ok(Json(read_call(&st, &caller, id, &q, "list").await?))
}

pub async fn stat(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> ApiResult<Json<FileEntry>> {
    Ok(Json(read_call(&st, &caller, id, &q, "stat").await?))
}

pub async fn mkdir(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> ApiResult<(StatusCode, Json<FileEntry>)> {
    let path = check_path(&q)?;
    let (client, s) = target(&st, &caller, id).await?;
    let e = json_call(
        &client,
        reqwest::Method::POST,
        format!(
            "/v1/vms/{}/files/mkdir?{}{}",
            s.id,
            query(&path),
            if q.parents == Some(true) {
                "&parents=true"
            } else {
                ""
            }
        ),
        MAX_JSON_ANSWER,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(e)))
}

pub async fn remove(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> ApiResult<StatusCode> {
    let path = check_path(&q)?;
    if path.is_root() {
        return Err(ApiError::bad("path", "refusing to remove /"));
    }
    let (client, s) = target(&st, &caller, id).await?;
    client
        .stream(
            reqwest::Method::DELETE,
            &format!(
                "/v1/vms/{}/files?{}{}",
                s.id,
                query(&path),
                if q.recursive == Some(true) {
                    "&recursive=true"
                } else {
                    ""
                }
            ),
            None,
            Some(std::time::Duration::from_secs(120)),
        )
        .await
        .map_err(map_agent)?;
    Ok(StatusCode::NO_CONTENT)
}
