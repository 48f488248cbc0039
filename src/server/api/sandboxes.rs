//! Sandboxes: create (placed by the scheduler, started on its host), list, get, delete, exec.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, Caller};
use crate::ids::{is_valid, new_id};
use crate::proto::agent::CreateVmRequest;
use crate::proto::api::{
    CreateSandboxRequest, ExecRequest, ExecResponse, SandboxListResponse, SandboxResponse,
};
use crate::proto::net::EgressPolicy;
use crate::proto::validate::validate_env;
use crate::server::AppState;
use crate::server::db::sandboxes::{self, NewSandbox, SandboxRow};
use crate::server::db::{DbError, hosts};
use crate::server::pool::AgentError;
use crate::server::scheduler::{Candidate, PlacementRequest};
use crate::server::state::SandboxStatus;

pub const DEFAULT_TEMPLATE: &str = "minimal";
pub const MAX_VCPUS: u32 = 16;
pub const MIN_MEMORY_MB: u32 = 128;
pub const MAX_MEMORY_MB: u32 = 65536;
pub const MAX_TIMEOUT_SEC: u64 = 7 * 86400;
const MAX_MAP_ENTRIES: usize = 100;
const MAX_VALUE_BYTES: usize = 4096;

pub fn to_resp(s: SandboxRow) -> SandboxResponse {
    SandboxResponse {
        id: s.id,
        team_id: s.team_id,
        host_id: s.host_id,
        template: s.template,
        status: s.status.as_str().to_string(),
        vcpus: s.vcpus,
        memory_mb: s.memory_mb,
        timeout_sec: s.timeout_sec,
        metadata: s.metadata,
        created_at: s.created_at,
        started_at: s.started_at,
        ended_at: s.ended_at,
        error: s.error,
        boot_ms: s.boot_ms,
        timeout_at: (s.status == SandboxStatus::Running && s.timeout_sec > 0).then(|| {
            s.last_active_at.or(s.started_at).unwrap_or(s.created_at) + s.timeout_sec as i64
        }),
        on_timeout: s.on_timeout,
        last_active_at: s.last_active_at,
        boot_kind: s.boot_kind,
        network: s.egress,
    }
}

/// Metadata: string keys and values (env follows [`validate_env`]).
pub(crate) fn check_map(field: &str, m: &BTreeMap<String, String>) -> ApiResult<()> {
    if m.len() > MAX_MAP_ENTRIES {
        return Err(ApiError::bad(
            field,
            format!("at most {MAX_MAP_ENTRIES} entries"),
        ));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > 128 || k.chars().any(char::is_control) {
            return Err(ApiError::bad(
                field,
                "keys must be 1 to 128 printable characters",
            ));
        }
        if v.len() > MAX_VALUE_BYTES || v.contains('\0') {
            return Err(ApiError::bad(
                &format!("{field}.{k}"),
                format!("values must be at most {MAX_VALUE_BYTES} bytes, no NUL"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn valid_template_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !t.starts_with('.')
}

pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateSandboxRequest>,
) -> ApiResult<(StatusCode, Json<SandboxResponse>)> {
    let team_id = caller.team()?.to_string();
    let template = req
        .template
        .clone()
        .unwrap_or_else(|| DEFAULT_TEMPLATE.to_string());
    if !valid_template_name(&template) {
        return Err(ApiError::bad(
            "template",
            "1 to 64 letters, digits, '-', '_' or '.'",
        ));
    }
    // A team template (a snapshot, which lives on one host and restores with its own size; or
    // an image from the team's own root filesystem, on one host, any size), else a base template
    // some host has ready.
    let (t, n) = (team_id.clone(), template.clone());
    let own = st
        .db
        .call(move |c| crate::server::db::templates::by_name(c, &t, &n))
        .await?;
    let (vcpus, memory_mb) = match &own {
        Some(t) if t.kind == "snapshot" => {
            let (tv, tm) = (t.vcpus.unwrap_or(1), t.memory_mb.unwrap_or(256));
            if req.vcpus.is_some_and(|v| v != tv) {
                return Err(ApiError::bad(
                    "vcpus",
                    format!("the snapshot '{template}' restores with {tv} vCPU"),
                ));
            }
            if req.memory_mb.is_some_and(|m| m != tm) {
                return Err(ApiError::bad(
                    "memory_mb",
                    format!("the snapshot '{template}' restores with {tm} MB"),
                ));
            }
            (tv, tm)
        }
        _ => (req.vcpus.unwrap_or(1), req.memory_mb.unwrap_or(256)),
    };
    if !(1..=MAX_VCPUS).contains(&vcpus) {
        return Err(ApiError::bad("vcpus", format!("must be 1 to {MAX_VCPUS}")));
    }
    if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&memory_mb) {
        return Err(ApiError::bad(
            "memory_mb",
            format!("must be {MIN_MEMORY_MB} to {MAX_MEMORY_MB}"),
        ));
    }
    let timeout_sec = req.timeout_sec.unwrap_or(300);
    if timeout_sec > MAX_TIMEOUT_SEC {
        return Err(ApiError::bad(
            "timeout_sec",
            format!("must be 0 (never) to {MAX_TIMEOUT_SEC}"),
        ));
    }
    let env = req.env.clone().unwrap_or_default();
    validate_env("env", &env)?;
    let metadata = req.metadata.clone().unwrap_or_default();
    check_map("metadata", &metadata)?;
    let mut egress = match &req.network {
        None => Some(EgressPolicy::default()),
        Some(setting) => setting.policy(),
    };
    if let Some(p) = &mut egress {
        p.validate().map_err(|(f, m)| ApiError::bad(f, m))?;
    }
    let on_timeout = req.on_timeout.clone().unwrap_or_else(|| "pause".into());
    if on_timeout != "pause" && on_timeout != "kill" {
        return Err(ApiError::bad("on_timeout", "must be pause or kill"));
    }

    // Place it.
    let candidates = placement_candidates(&st).await?;
    let all_hosts = st.db.call(|c| hosts::list(c, true, &[])).await?;
    if own.is_none()
        && !crate::server::api::templates::BASE_TEMPLATES.contains(&template.as_str())
        && !all_hosts
            .iter()
            .filter(|h| h.team_id.is_none() || h.team_id.as_deref() == Some(team_id.as_str()))
            .any(|h| h.templates.contains(&template))
    {
        return Err(ApiError::bad(
            "template",
            format!("no template '{template}' (see GET /v1/templates)"),
        ));
    }
    let placement = PlacementRequest {
        team_id: team_id.clone(),
        vcpus,
        memory_mb,
        pinned_host: own.as_ref().and_then(|t| t.host_id.clone()),
        base_template: own.is_none().then(|| template.clone()),
    };
    let host_id = st
        .scheduler
        .place(&candidates, &placement)
        .map_err(ApiError::NoHostAvailable)?;
    let (host, _) = host_address(&st, &host_id).await?;

    let new = NewSandbox {
        id: new_id("sbx"),
        team_id: team_id.clone(),
        host_id: host_id.clone(),
        template: template.clone(),
        vcpus,
        memory_mb,
        timeout_sec,
        network: egress.is_some(),
        egress: egress.clone(),
        metadata,
        env: env.clone(),
        created_by: caller.user_id.clone(),
        on_timeout,
    };
    let id = new.id.clone();
    let vm = CreateVmRequest {
        id: id.clone(),
        template: own.as_ref().map(|t| t.id.clone()).unwrap_or(template),
        vcpus,
        memory_mb,
        env,
        network: new.network,
        egress,
        cold_boot: req.cold_boot.unwrap_or(false),
    };
    st.db.call(move |c| sandboxes::insert(c, &new)).await?;

    // Start it in a task of its own: a client that goes away mid-create leaves no sandbox stuck in
    // `starting`.
    let client = st.pool.get(&host_id, &host);
    let db = st.db.clone();
    let task = tokio::spawn(async move {
        let result = client.create_vm(&vm).await;
        let sid = vm.id.clone();
        let outcome = match &result {
            Ok(info) => {
                let (boot_ms, boot_kind) = (info.boot_ms, info.boot_kind.clone());
                db.call(move |c| {
                    sandboxes::transition(c, &sid, SandboxStatus::Running, None)?;
                    sandboxes::set_boot(c, &sid, boot_ms, boot_kind.as_deref())
                })
                .await
            }
            Err(e) => {
                let msg = e.to_string();
                db.call(move |c| {
                    sandboxes::transition(c, &sid, SandboxStatus::Error, Some(&msg)).map(|_| ())
                })
                .await
            }
        };
        if let Err(e) = outcome {
            tracing::error!(sandbox = %vm.id, error = %e, "recording sandbox start");
        }
        result
    });
    let result = task
        .await
        .map_err(|e| anyhow::anyhow!("create task: {e}"))?;
    if let Err(e) = result {
        tracing::warn!(sandbox = %id, host = %host_id, error = %e, "sandbox failed to start");
        return Err(match e {
            AgentError::Remote {
                status: 400 | 422,
                message,
                field,
                ..
            } => ApiError::BadRequest {
                field: field.unwrap_or_else(|| "request".into()),
                message,
            },
            other => ApiError::HostFailed {
                code: "sandbox_start_failed",
                message: format!("sandbox {id} failed to start on host {host_id}: {other}"),
            },
        });
    }
    let row = st
        .db
        .call(move |c| sandboxes::get(c, &team_id, &id))
        .await?;
    Ok((StatusCode::CREATED, Json(to_resp(row))))
}

/// The host's address and whether it is online.
pub(crate) async fn host_address(st: &AppState, host_id: &str) -> ApiResult<(String, bool)> {
    let hid = host_id.to_string();
    let h = st
        .db
        .call(move |c| hosts::get(c, &hid))
        .await
        .map_err(|e| match e {
            DbError::NotFound => {
                ApiError::conflict("sandbox_has_no_host", "the sandbox's host was deleted")
            }
            other => other.into(),
        })?;
    let online = h.status == "online" || h.status == "draining";
    let addr = h.address.ok_or_else(|| ApiError::HostFailed {
        code: "host_unreachable",
        message: "the sandbox's host has no address".into(),
    })?;
    Ok((addr, online))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub status: Option<String>,
}

pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<SandboxListResponse>> {
    let team_id = caller.team()?.to_string();
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<SandboxStatus>()
                .map_err(|e| ApiError::bad("status", e))?,
        ),
    };
    let rows = st
        .db
        .call(move |c| sandboxes::list(c, &team_id, status))
        .await?;
    Ok(Json(SandboxListResponse {
        sandboxes: rows.into_iter().map(to_resp).collect(),
    }))
}

pub(crate) async fn load(st: &AppState, caller: &Caller, id: String) -> ApiResult<SandboxRow> {
    let team_id = caller.team()?.to_string();
    if !is_valid("sbx", &id) {
        return Err(ApiError::NotFound("sandbox"));
    }
    st.db
        .call(move |c| sandboxes::get(c, &team_id, &id))
        .await
        .map_err(|e| match e {
            DbError::NotFound => ApiError::NotFound("sandbox"),
            other => other.into(),
        })
}

pub async fn get(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SandboxResponse>> {
    Ok(Json(to_resp(load(&st, &caller, id).await?)))
}

/// The agent client for a sandbox's host, and whether that host is online.
pub(crate) async fn host_client(
    st: &AppState,
    s: &SandboxRow,
) -> ApiResult<(crate::server::pool::AgentClient, bool)> {
    let host_id = s.host_id.clone().ok_or_else(|| {
        ApiError::conflict("sandbox_has_no_host", "the sandbox's host was deleted")
    })?;
    let (addr, online) = host_address(st, &host_id).await?;
    Ok((st.pool.get(&host_id, &addr), online))
}

/// Ends a sandbox's VM on its host (a VM the host no longer has counts as ended). A host that is
/// unreachable cannot be asked: the sandbox is ended in the database all the same, and the host
/// monitor destroys the VM as an orphan if the host comes back.
pub async fn destroy_on_host(st: &AppState, s: &SandboxRow) -> ApiResult<()> {
    if s.host_id.is_none() {
        return Ok(());
    }
    let (client, online) = match host_client(st, s).await {
        Ok(c) => c,
        Err(ApiError::Conflict {
            code: "sandbox_has_no_host",
            ..
        }) => return Ok(()),
        Err(e) => return Err(e),
    };
    match client.destroy_vm(&s.id).await {
        Ok(()) | Err(AgentError::Remote { status: 404, .. }) => Ok(()),
        Err(AgentError::Unreachable(e)) if !online => {
            tracing::warn!(sandbox = %s.id, error = %e, "host unreachable: sandbox ended without it");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let s = load(&st, &caller, id).await?;
    if s.status.is_terminal() {
        return Ok(StatusCode::NO_CONTENT);
    }
    destroy_on_host(&st, &s).await?;
    let sid = s.id.clone();
    st.db
        .call(move |c| {
            let (next, why) = match sandboxes::get_any(c, &sid)?.map(|r| r.status) {
                Some(SandboxStatus::Pending | SandboxStatus::Starting) => {
                    (SandboxStatus::Error, Some("deleted while starting"))
                }
                Some(s) if s.is_terminal() => return Ok(()),
                _ => (SandboxStatus::Stopped, None),
            };
            sandboxes::transition(c, &sid, next, why)?;
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A 404 from the agent about the VM itself: the sandbox is not running there any more.
/// Every schedulable host as a placement candidate, with what its live sandboxes hold.
pub(crate) async fn placement_candidates(st: &AppState) -> ApiResult<Vec<Candidate>> {
    let (hosts, load) = st
        .db
        .call(|c| Ok((hosts::schedulable(c)?, sandboxes::load_by_host(c)?)))
        .await?;
    Ok(hosts
        .into_iter()
        .map(|h| {
            let (used_vcpus, used_memory_mb) = load.get(&h.id).copied().unwrap_or((0, 0));
            Candidate {
                host_id: h.id,
                team_id: h.team_id,
                cpu_cores: h.cpu_cores.unwrap_or(1),
                memory_mb: h.memory_mb.unwrap_or(0),
                used_vcpus,
                used_memory_mb,
                templates: h.templates,
            }
        })
        .collect())
}

pub fn vm_gone(e: AgentError) -> ApiError {
    match e {
        AgentError::Remote { status: 404, .. } => ApiError::conflict(
            "sandbox_not_running",
            "the sandbox's VM is gone from its host",
        ),
        other => other.into(),
    }
}

pub async fn exec(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> ApiResult<Json<ExecResponse>> {
    req.validate()?;
    let s = load(&st, &caller, id).await?;
    if s.status != SandboxStatus::Running {
        return Err(ApiError::conflict(
            "sandbox_not_running",
            format!("the sandbox is {}, not running", s.status),
        ));
    }
    let (client, _) = host_client(&st, &s).await?;
    let out = client.exec(&s.id, &req).await.map_err(vm_gone)?;
    let sid = s.id.clone();
    st.db.call(move |c| sandboxes::touch(c, &sid)).await?;
    Ok(Json(out))
}
