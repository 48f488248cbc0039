//! Templates over REST: the base ones agents build (`minimal`, `debian`) and the team's own
//! snapshots and images (kept by the sandbox service).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, AuthUser, Caller};
use crate::ids::SandboxId;
use crate::proto::api::{
    HostBuildFailed, HostBuildStarted, HostBuildStatus, SnapshotRequest, TemplateBuildRequest,
    TemplateBuildResponse, TemplateBuildStatusResponse, TemplateListResponse, TemplateResponse,
};
use crate::proto::vocab::TemplateKind;
use crate::server::AppState;
use crate::server::db::hosts;
use crate::server::db::templates::{self, TemplateRow};
use crate::server::sandboxes::{AgentCall, BASE_TEMPLATES, agent_errors, team_template_name};

pub(super) fn to_resp(t: TemplateRow) -> TemplateResponse {
    TemplateResponse {
        id: t.id,
        name: t.name,
        kind: t.kind,
        team_id: Some(t.team_id),
        host_id: t.host_id,
        hosts: None,
        vcpus: t.vcpus,
        memory_mb: t.memory_mb,
        size_bytes: t.size_bytes,
        source_sandbox_id: t.source_sandbox_id,
        created_at: Some(t.created_at),
    }
}

pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<TemplateListResponse>> {
    let team = caller.team()?.to_string();
    let (own, online) = st
        .db
        .call(move |c| {
            Ok((
                templates::list(c, &team)?,
                hosts::schedulable_or_draining(c)?,
            ))
        })
        .await?;
    let mut base: BTreeMap<String, u32> = BTreeMap::new();
    let my_team = caller.team_id.clone();
    for h in online
        .iter()
        .filter(|h| h.team_id.is_none() || h.team_id == my_team)
    {
        for t in &h.templates {
            *base.entry(t.clone()).or_default() += 1;
        }
    }
    let mut out: Vec<TemplateResponse> = base
        .into_iter()
        .map(|(name, n)| TemplateResponse {
            id: name.clone(),
            name,
            kind: TemplateKind::Base,
            team_id: None,
            host_id: None,
            hosts: Some(n),
            vcpus: None,
            memory_mb: None,
            size_bytes: None,
            source_sandbox_id: None,
            created_at: None,
        })
        .collect();
    out.extend(own.into_iter().map(to_resp));
    Ok(Json(TemplateListResponse { templates: out }))
}

/// Deletes a team template (by id or name); its host is asked to drop its files.
pub async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let team = caller.team_id()?;
    st.sandboxes()
        .delete_template(&team, &caller.user_id, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct SnapshotQuery {
    #[serde(default)]
    pub overwrite: Option<bool>,
}

/// Keeps a sandbox's memory and disk as a team template on its host. The sandbox goes on as it
/// was (running or paused).
pub async fn snapshot(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<SnapshotQuery>,
    ApiJson(req): ApiJson<SnapshotRequest>,
) -> ApiResult<(StatusCode, Json<TemplateResponse>)> {
    let team = caller.team_id()?;
    let name = team_template_name(&req.name)?;
    let sandbox: SandboxId = req
        .sandbox_id
        .parse()
        .map_err(|_| ApiError::bad("sandbox_id", "not a sandbox id (sbx_…)"))?;
    let saved = st
        .sandboxes()
        .snapshot(
            &team,
            &caller.user_id,
            &sandbox,
            &name,
            q.overwrite.unwrap_or(false),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(to_resp(saved))))
}

/// Builds a base template (`debian`) on every online regular host (platform admins), in the
/// background; `GET /v1/templates` shows it once hosts report it ready.
pub async fn build(
    State(st): State<AppState>,
    user: AuthUser,
    ApiJson(req): ApiJson<TemplateBuildRequest>,
) -> ApiResult<(StatusCode, Json<TemplateBuildResponse>)> {
    if !user.is_admin {
        return Err(ApiError::forbidden(
            "admin_required",
            "only platform admins build base templates",
        ));
    }
    let name = req.name.trim().to_string();
    if !BASE_TEMPLATES.contains(&name.as_str()) {
        return Err(ApiError::bad(
            "name",
            format!("base templates are {}", BASE_TEMPLATES.join(", ")),
        ));
    }
    let online = st.db.call(|c| hosts::schedulable(c)).await?;
    let mut started = Vec::new();
    let mut failed = Vec::new();
    for h in online.into_iter().filter(|h| h.team_id.is_none()) {
        let Some(addr) = h.address.clone() else {
            continue;
        };
        let r = st
            .pool
            .get(&h.id, &addr)
            .build_template(&crate::proto::agent::BuildTemplateRequest { name: name.clone() })
            .await;
        match r {
            Ok(info) => started.push(HostBuildStarted {
                host_id: h.id,
                progress: info.progress,
                status: info.status,
            }),
            Err(e) => failed.push(HostBuildFailed {
                error: agent_errors::translate(AgentCall::Template, &h.id, e).to_string(),
                host_id: h.id,
            }),
        }
    }
    if started.is_empty() && failed.is_empty() {
        return Err(ApiError::NoHostAvailable(
            "no online regular host to build on".into(),
        ));
    }
    if started.is_empty() {
        return Err(ApiError::HostFailed {
            code: "host_error",
            message: format!(
                "no host could start the build: {}",
                serde_json::to_string(&failed).unwrap_or_default()
            ),
        });
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(TemplateBuildResponse {
            failed,
            hosts: started,
            name,
        }),
    ))
}

/// Build progress of a base template on each online regular host (platform admins).
pub async fn build_status(
    State(st): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> ApiResult<Json<TemplateBuildStatusResponse>> {
    if !user.is_admin {
        return Err(ApiError::forbidden(
            "admin_required",
            "only platform admins build base templates",
        ));
    }
    if !BASE_TEMPLATES.contains(&name.as_str()) {
        return Err(ApiError::NotFound("base template"));
    }
    let online = st.db.call(hosts::schedulable_or_draining).await?;
    let mut out = Vec::new();
    for h in online.into_iter().filter(|h| h.team_id.is_none()) {
        let Some(addr) = h.address.clone() else {
            continue;
        };
        match st.pool.get(&h.id, &addr).list_templates().await {
            Ok(list) => {
                if let Some(t) = list.into_iter().find(|t| t.name == name) {
                    out.push(HostBuildStatus::Known {
                        error: t.error,
                        host_id: h.id,
                        progress: t.progress,
                        size_bytes: t.size_bytes,
                        status: t.status,
                    });
                }
            }
            Err(e) => out.push(HostBuildStatus::Unreachable(HostBuildFailed {
                error: agent_errors::translate(AgentCall::Template, &h.id, e).to_string(),
                host_id: h.id,
            })),
        }
    }
    Ok(Json(TemplateBuildStatusResponse { hosts: out, name }))
}
