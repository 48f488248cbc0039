//! `POST /v1/templates/import?name=N`: a team template from the team's own root filesystem, sent
//! as the raw body (a tar archive, gzip-compressed or not). The archive is streamed to a host the
//! scheduler picks (the team's own host where it has BYOC hosts; the host of the template being
//! replaced with `overwrite`), which builds the image and boots it once before answering. Sandboxes
//! then start from it with any size, on that host.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiQuery, Caller};
use super::files::limited_body;
use super::sandboxes::{host_address, placement_candidates};
use super::templates::{team_template_name, to_resp};
use crate::ids::new_id;
use crate::proto::agent::{MAX_IMAGE_BYTES, TemplateInfo};
use crate::proto::api::TemplateResponse;
use crate::server::AppState;
use crate::server::db::now;
use crate::server::db::templates::{self, TemplateRow};
use crate::server::pool::{AgentError, MAX_JSON_ANSWER, read_json};
use crate::server::scheduler::PlacementRequest;

/// How long a host may take to receive, build and boot an image.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(900);

#[derive(Debug, Deserialize)]
pub struct ImportQuery {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub overwrite: Option<bool>,
}

pub async fn import(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ImportQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<TemplateResponse>)> {
    let team = caller.team()?.to_string();
    let name = team_template_name(
        q.name
            .as_deref()
            .ok_or_else(|| ApiError::bad("name", "required: the template's name"))?,
    )?;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_IMAGE_BYTES) {
        return Err(ApiError::TooLarge);
    }
    let overwrite = q.overwrite.unwrap_or(false);
    let (t, n) = (team.clone(), name.clone());
    let existing = st.db.call(move |c| templates::by_name(c, &t, &n)).await?;
    if existing.is_some() && !overwrite {
        return Err(ApiError::conflict(
            "already_exists",
            format!("the team already has a template '{name}'; pass ?overwrite=true to replace it"),
        ));
    }
    // Booting the image once needs the room of one small sandbox.
    let placement = PlacementRequest {
        team_id: team.clone(),
        vcpus: 1,
        memory_mb: 256,
        pinned_host: existing.as_ref().and_then(|t| t.host_id.clone()),
        base_template: None,
    };
    let host_id = st
        .scheduler
        .place(&placement_candidates(&st).await?, &placement)
        .map_err(ApiError::NoHostAvailable)?;
    let (host, _) = host_address(&st, &host_id).await?;
    let id = existing
        .as_ref()
        .map(|t| t.id.clone())
        .unwrap_or_else(|| new_id("tpl"));
    let (body, over) = limited_body(body, MAX_IMAGE_BYTES);
    let client = st.pool.get(&host_id, &host);
    let result = client
        .stream(
            reqwest::Method::PUT,
            &format!("/v1/templates/{id}/image"),
            Some(body),
            Some(IMPORT_TIMEOUT),
        )
        .await;
    if over.load(Ordering::Relaxed) {
        return Err(ApiError::TooLarge);
    }
    let info: TemplateInfo = match result {
        Ok(resp) => read_json(resp, MAX_JSON_ANSWER).await?,
        Err(AgentError::Remote {
            status: 413,
            message,
            ..
        }) => return Err(ApiError::TooLargeBecause(message)),
        Err(e) => return Err(e.into()),
    };
    let row = TemplateRow {
        id,
        team_id: team,
        name,
        kind: "image".into(),
        host_id: Some(host_id),
        vcpus: None,
        memory_mb: None,
        size_bytes: Some(info.size_bytes),
        source_sandbox_id: None,
        created_at: now(),
    };
    let (uid, tid) = (caller.user_id.clone(), row.id.clone());
    let saved = st
        .db
        .call(move |c| templates::upsert(c, &row, overwrite, &uid))
        .await;
    match saved {
        Ok(saved) => Ok((StatusCode::CREATED, Json(to_resp(saved)))),
        Err(e) => {
            // Another import took the name meanwhile: the files just built belong to no row.
            if existing.is_none()
                && let Err(e2) = client.delete_template(&tid).await
            {
                tracing::warn!(template = %tid, error = %e2, "could not remove an unrecorded image");
            }
            Err(e.into())
        }
    }
}
