//! Pause, resume, idle timeouts and the console log of a sandbox.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, Caller};
use super::sandboxes::{MAX_TIMEOUT_SEC, host_client, load, to_resp, vm_gone};
use crate::proto::api::{SandboxResponse, TimeoutRequest};
use crate::proto::net::EgressPolicy;
use crate::server::AppState;
use crate::server::db::sandboxes::{self, SandboxRow};
use crate::server::pool::read_capped;
use crate::server::state::SandboxStatus;

fn not_in(s: &SandboxRow, want: SandboxStatus, verb: &str) -> ApiError {
    ApiError::conflict(
        "invalid_transition",
        format!(
            "cannot {verb} a sandbox that is {} (it must be {want})",
            s.status
        ),
    )
}

async fn reload(st: &AppState, caller: &Caller, id: &str) -> ApiResult<Json<SandboxResponse>> {
    Ok(Json(to_resp(load(st, caller, id.to_string()).await?)))
}

/// Pauses a running sandbox on its host (memory and device state saved, the VM process ended).
pub async fn pause_row(st: &AppState, s: &SandboxRow) -> ApiResult<()> {
    let (client, _) = host_client(st, s).await?;
    client.pause_vm(&s.id).await.map_err(vm_gone)?;
    let sid = s.id.clone();
    st.db
        .call(move |c| sandboxes::settle(c, &sid, SandboxStatus::Paused, None))
        .await?;
    Ok(())
}

pub async fn pause(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SandboxResponse>> {
    let s = load(&st, &caller, id.clone()).await?;
    if s.status != SandboxStatus::Running {
        return Err(not_in(&s, SandboxStatus::Running, "pause"));
    }
    pause_row(&st, &s).await?;
    reload(&st, &caller, &id).await
}

/// Replaces a running or paused sandbox's egress policy, on its host first.
pub async fn set_network(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(mut policy): ApiJson<EgressPolicy>,
) -> ApiResult<Json<SandboxResponse>> {
    policy.validate().map_err(|(f, m)| ApiError::bad(f, m))?;
    let s = load(&st, &caller, id.clone()).await?;
    if s.egress.is_none() {
        return Err(ApiError::conflict(
            "no_network",
            "the sandbox was created without a network device; its policy cannot be set",
        ));
    }
    if !matches!(s.status, SandboxStatus::Running | SandboxStatus::Paused) {
        return Err(ApiError::conflict(
            "invalid_transition",
            format!(
                "cannot change the network of a sandbox that is {} (it must be running or paused)",
                s.status
            ),
        ));
    }
    let (client, online) = host_client(&st, &s).await?;
    if !online {
        return Err(ApiError::HostFailed {
            code: "host_unreachable",
            message: "the sandbox's host is not online".into(),
        });
    }
    let applied = client
        .set_vm_network(&s.id, &policy)
        .await
        .map_err(vm_gone)?;
    let sid = s.id.clone();
    st.db
        .call(move |c| sandboxes::set_egress(c, &sid, &applied))
        .await?;
    reload(&st, &caller, &id).await
}

pub async fn resume(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SandboxResponse>> {
    let s = load(&st, &caller, id.clone()).await?;
    if s.status != SandboxStatus::Paused {
        return Err(not_in(&s, SandboxStatus::Paused, "resume"));
    }
    let (client, online) = host_client(&st, &s).await?;
    if !online {
        return Err(ApiError::HostFailed {
            code: "host_unreachable",
            message: "the sandbox's host is not online; it resumes only where its memory is saved"
                .into(),
        });
    }
    client.resume_vm(&s.id).await.map_err(vm_gone)?;
    let sid = s.id.clone();
    st.db
        .call(move |c| {
            sandboxes::settle(c, &sid, SandboxStatus::Running, None)?;
            sandboxes::touch(c, &sid)
        })
        .await?;
    reload(&st, &caller, &id).await
}

/// Sets the idle timeout, counting from now (so it also extends it). 0 = never.
pub async fn set_timeout(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<TimeoutRequest>,
) -> ApiResult<Json<SandboxResponse>> {
    if req.timeout_sec > MAX_TIMEOUT_SEC {
        return Err(ApiError::bad(
            "timeout_sec",
            format!("must be 0 (never) to {MAX_TIMEOUT_SEC}"),
        ));
    }
    if let Some(o) = &req.on_timeout
        && o != "pause"
        && o != "kill"
    {
        return Err(ApiError::bad("on_timeout", "must be pause or kill"));
    }
    let s = load(&st, &caller, id.clone()).await?;
    if s.status.is_terminal() {
        return Err(ApiError::conflict(
            "invalid_transition",
            format!("the sandbox is {}", s.status),
        ));
    }
    let sid = s.id.clone();
    st.db
        .call(move |c| sandboxes::set_timeout(c, &sid, req.timeout_sec, req.on_timeout.as_deref()))
        .await?;
    reload(&st, &caller, &id).await
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    pub tail_bytes: Option<u64>,
}

/// The guest's console log (the kernel and init messages), as text.
pub async fn logs(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Response> {
    let tail = q.tail_bytes.unwrap_or(64 * 1024).min(1024 * 1024);
    let s = load(&st, &caller, id).await?;
    if s.status.is_terminal() {
        return Err(ApiError::conflict(
            "sandbox_not_running",
            format!("the sandbox is {}; its log went with it", s.status),
        ));
    }
    let (client, _) = host_client(&st, &s).await?;
    let resp = client
        .stream(
            reqwest::Method::GET,
            &format!("/v1/vms/{}/logs?tail_bytes={tail}", s.id),
            None,
            Some(std::time::Duration::from_secs(30)),
        )
        .await
        .map_err(vm_gone)?;
    let text = read_capped(resp, tail as usize + (64 << 10))
        .await
        .map_err(ApiError::from)?;
    Ok(([(CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}
