//! Templates: the base ones agents build (`minimal`, `debian`) and the team's own snapshots.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, AuthUser, Caller};
use super::sandboxes::{host_client, load, valid_template_name};
use crate::ids::new_id;
use crate::proto::agent::SnapshotVmRequest;
use crate::proto::api::{
    HostBuildFailed, HostBuildStarted, HostBuildStatus, SnapshotRequest, TemplateBuildRequest,
    TemplateBuildResponse, TemplateBuildStatusResponse, TemplateListResponse, TemplateResponse,
};
use crate::server::AppState;
use crate::server::db::templates::{self, TemplateRow};
use crate::server::db::{DbError, hosts, now};
use crate::server::pool::AgentError;
use crate::server::state::SandboxStatus;

/// Names the agents build themselves; a team template cannot take them.
pub const BASE_TEMPLATES: [&str; 2] = ["minimal", "debian"];

/// A name for a team template (trimmed): valid, and not a base template's.
pub(super) fn team_template_name(raw: &str) -> ApiResult<String> {
    let name = raw.trim().to_string();
    if !valid_template_name(&name) {
        return Err(ApiError::bad(
            "name",
            "1 to 64 letters, digits, '-', '_' or '.'",
        ));
    }
    if BASE_TEMPLATES.contains(&name.as_str()) {
        return Err(ApiError::bad(
            "name",
            format!("'{name}' is a base template's name"),
        ));
    }
    Ok(name)
}

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
            kind: "base".into(),
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

/// Deletes a team template; every online host is asked to drop its files (a snapshot lives on
/// one host, but the ask is cheap and covers a template that moved).
pub async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let team = caller.team()?.to_string();
    let t = {
        let (team, id) = (team.clone(), id.clone());
        st.db
            .call(move |c| match templates::get(c, &team, &id) {
                Ok(t) => Ok(t),
                Err(DbError::NotFound) => {
                    templates::by_name(c, &team, &id)?.ok_or(DbError::NotFound)
                }
                Err(e) => Err(e),
            })
            .await
            .map_err(|e| match e {
                DbError::NotFound => ApiError::NotFound("template"),
                other => other.into(),
            })?
    };
    delete_files(&st, &t).await;
    let uid = caller.user_id.clone();
    st.db
        .call(move |c| templates::delete(c, &team, &t.id, &uid))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a team template's files (its disk and, for a snapshot, the guest's memory) from the one
/// host that holds them. A host that cannot be reached keeps them: logged, not fatal.
pub(super) async fn delete_files(st: &AppState, t: &TemplateRow) {
    let Some(hid) = t.host_id.clone() else { return };
    let host = st.db.call(move |c| hosts::get(c, &hid)).await;
    let h = match host {
        Ok(h) => h,
        Err(DbError::NotFound) => return,
        Err(e) => {
            tracing::warn!(template = %t.id, error = %e, "could not look up a template's host");
            return;
        }
    };
    let Some(addr) = h.address else { return };
    match st.pool.get(&h.id, &addr).delete_template(&t.id).await {
        Ok(()) | Err(AgentError::Remote { status: 404, .. }) => {}
        Err(e) => {
            tracing::warn!(host = %h.id, template = %t.id, error = %e, "host could not delete template files")
        }
    }
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
    let team = caller.team()?.to_string();
    let name = team_template_name(&req.name)?;
    if !crate::ids::is_valid("sbx", &req.sandbox_id) {
        return Err(ApiError::bad("sandbox_id", "not a sandbox id (sbx_…)"));
    }
    let s = load(&st, &caller, req.sandbox_id.clone()).await?;
    if !matches!(s.status, SandboxStatus::Running | SandboxStatus::Paused) {
        return Err(ApiError::conflict(
            "invalid_transition",
            format!("cannot snapshot a sandbox that is {}", s.status),
        ));
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
    let id = existing
        .as_ref()
        .map(|t| t.id.clone())
        .unwrap_or_else(|| new_id("tpl"));
    let (client, _) = host_client(&st, &s).await?;
    let info = client
        .snapshot_vm(
            &s.id,
            &SnapshotVmRequest {
                template: id.clone(),
                overwrite,
            },
        )
        .await
        .map_err(super::sandboxes::vm_gone)?;
    let row = TemplateRow {
        id,
        team_id: team,
        name,
        kind: "snapshot".into(),
        host_id: s.host_id.clone(),
        vcpus: Some(s.vcpus),
        memory_mb: Some(s.memory_mb),
        size_bytes: Some(info.size_bytes),
        source_sandbox_id: Some(s.id.clone()),
        created_at: now(),
    };
    let uid = caller.user_id.clone();
    let saved = st
        .db
        .call(move |c| templates::upsert(c, &row, overwrite, &uid))
        .await?;
    // Replaced by a snapshot taken on another host: the old host's copy goes.
    if let Some(old) = existing.filter(|e| e.host_id != saved.host_id) {
        delete_files(&st, &old).await;
    }
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
    let online = st.db.call(hosts::schedulable).await?;
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
                error: e.to_string(),
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
                error: e.to_string(),
                host_id: h.id,
            })),
        }
    }
    Ok(Json(TemplateBuildStatusResponse { hosts: out, name }))
}
