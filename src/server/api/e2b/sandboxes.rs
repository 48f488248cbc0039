//! E2B's sandbox routes: create (v1 and v2), connect (v1, v2) and the legacy resume, get, kill,
//! timeout, refreshes, pause and network. Each is a translation onto the sandbox service: E2B's
//! `timeout` is our deadline (`end_at`), `autoPause` our `on_timeout: pause`, and a sandbox that
//! has ended does not exist for E2B (404).

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::errors::{E2bCaller, E2bError, E2bJson, E2bResult};
use super::shapes;
use crate::ids::{SandboxId, TeamId};
use crate::proto::api::CreateSandboxRequest;
use crate::proto::e2b::{
    ConnectRequest, NetworkConfig, NewSandboxRequest, PauseRequest, RefreshRequest, Sandbox,
    SandboxInfo, TimeoutRequest,
};
use crate::proto::net::NetworkSetting;
use crate::server::AppState;
use crate::server::api::error::ApiError;
use crate::server::db::sandboxes::SandboxRow;
use crate::server::sandboxes::ports::ENVD_WAIT;
use crate::server::sandboxes::{DeadlineChange, SandboxError};
use crate::server::state::SandboxStatus;

/// E2B's default `timeout` (seconds until `endAt`).
pub const DEFAULT_TIMEOUT_SEC: u64 = 300;
/// The longest `timeout` (a week, as our own deadlines).
pub const MAX_TIMEOUT_SEC: u64 = 7 * 86400;

/// The sandbox id of the path; a malformed one is as absent as an unknown one.
pub struct E2bSandboxId(pub SandboxId);

impl<S: Send + Sync> FromRequestParts<S> for E2bSandboxId {
    type Rejection = E2bError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, E2bError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| E2bError::not_found("sandbox"))?;
        raw.parse()
            .map(E2bSandboxId)
            .map_err(|_| E2bError::not_found("sandbox"))
    }
}

/// Our field names in a service error, as E2B's requests spell them.
pub fn e2b_fields(e: SandboxError) -> E2bError {
    match e {
        SandboxError::Invalid { field, message } => {
            let field = match field.as_str() {
                "template" => "templateID".to_string(),
                "end_in_sec" => "timeout".to_string(),
                f if f == "env" || f.starts_with("env.") => f.replacen("env", "envVars", 1),
                f if f.starts_with("network.allow_out") => "network.allowOut".to_string(),
                f if f.starts_with("network.deny_out") => "network.denyOut".to_string(),
                _ => field,
            };
            E2bError(ApiError::BadRequest { field, message })
        }
        other => other.into(),
    }
}

/// The sandbox's access token and the server's sandbox domain, for the SDK.
fn reach(st: &AppState, s: &SandboxRow) -> shapes::Reach {
    let token =
        s.id.parse::<SandboxId>()
            .map(|id| st.sandboxes().access_token(&id).expose().to_string())
            .unwrap_or_default();
    shapes::Reach {
        token,
        domain: st.settings.sandbox_domain.clone(),
    }
}

/// A timeout in E2B's range (1 s to a week).
fn check_timeout(field: &str, t: u64) -> E2bResult<u64> {
    if !(1..=MAX_TIMEOUT_SEC).contains(&t) {
        return Err(E2bError::bad(
            field,
            format!("must be 1 to {MAX_TIMEOUT_SEC} seconds"),
        ));
    }
    Ok(t)
}

/// The team's sandbox as E2B sees it: one that has ended (or never ran) is not found.
pub async fn live(st: &AppState, team: &TeamId, id: &SandboxId) -> E2bResult<SandboxRow> {
    let s = st.sandboxes().lookup(team, id).await?;
    if shapes::state_of(s.status).is_none() {
        return Err(E2bError::not_found("sandbox"));
    }
    Ok(s)
}

/// Our create request for E2B's; what we cannot honour is refused by name.
fn translate_create(req: &NewSandboxRequest) -> E2bResult<CreateSandboxRequest> {
    if req.template_id.trim().is_empty() {
        return Err(E2bError::bad("templateID", "required"));
    }
    if req.auto_pause_memory == Some(false) {
        return Err(E2bError::unsupported(
            "autoPauseMemory",
            "a filesystem-only pause (false)",
        ));
    }
    if let Some(r) = &req.auto_resume
        && r.get("enabled").and_then(|v| v.as_bool()) == Some(true)
    {
        return Err(E2bError::unsupported(
            "autoResume.enabled",
            "resuming on traffic",
        ));
    }
    for (field, v) in [
        ("mcp", &req.mcp),
        ("iam", &req.iam),
        ("volumeMounts", &req.volume_mounts),
    ] {
        let given = v
            .as_ref()
            .is_some_and(|v| !(v.is_null() || v.as_array().is_some_and(|a| a.is_empty())));
        if given {
            return Err(E2bError::unsupported(field, field));
        }
    }
    let timeout = check_timeout("timeout", req.timeout.unwrap_or(DEFAULT_TIMEOUT_SEC))?;
    let policy = shapes::egress(req.network.as_ref(), req.allow_internet_access)?;
    Ok(CreateSandboxRequest {
        template: Some(req.template_id.clone()),
        vcpus: None,
        memory_mb: None,
        // E2B has no idle timeout: only the deadline.
        timeout_sec: Some(0),
        env: req.env_vars.clone(),
        metadata: req.metadata.clone(),
        network: Some(NetworkSetting::Policy(policy)),
        on_timeout: Some(
            if req.auto_pause == Some(true) {
                "pause"
            } else {
                "kill"
            }
            .into(),
        ),
        end_in_sec: Some(timeout),
        cold_boot: None,
        // E2B's default: ports answer anyone unless `allowPublicTraffic: false` (then the SDK's
        // `E2B-Traffic-Access-Token`, the sandbox's access token, opens them). envd checks the
        // token itself either way.
        public_ports: Some(shapes::public_ports(req.network.as_ref())?),
    })
}

/// `POST /sandboxes` and `POST /v2/sandboxes`: 201 once the sandbox runs.
pub async fn create(
    State(st): State<AppState>,
    E2bCaller(caller): E2bCaller,
    E2bJson(req): E2bJson<NewSandboxRequest>,
) -> E2bResult<(StatusCode, Json<Sandbox>)> {
    let ours = translate_create(&req)?;
    let team = caller.team_id()?;
    let svc = st.sandboxes();
    let row = svc
        .create(&team, &caller.user_id, &ours)
        .await
        .map_err(e2b_fields)?;
    // The SDK talks to envd as soon as create answers: answer once envd does, or end the
    // sandbox nobody will get to use.
    if let Err(e) = svc.wait_envd(&row, ENVD_WAIT).await {
        let id: SandboxId = row.id.parse().map_err(|_| E2bError::not_found("sandbox"))?;
        if let Err(end) = svc.end(&team, &id).await {
            tracing::warn!(sandbox = %id, error = %end, "ending a sandbox whose envd did not answer");
        }
        return Err(e.into());
    }
    Ok((
        StatusCode::CREATED,
        Json(shapes::sandbox(&row, &reach(&st, &row))),
    ))
}

/// `POST /sandboxes/{id}/connect` and `/v2/…/connect`: 200 for a running sandbox (its
/// deadline only ever extended), 201 for a paused one, resumed.
pub async fn connect(
    State(st): State<AppState>,
    E2bCaller(caller): E2bCaller,
    E2bSandboxId(id): E2bSandboxId,
    E2bJson(req): E2bJson<ConnectRequest>,
) -> E2bResult<(StatusCode, Json<Sandbox>)> {
    connect_or_resume(&st, &caller, &id, &req).await
}

/// `POST /sandboxes/{id}/resume` (older SDKs): like connect.
pub async fn resume(
    State(st): State<AppState>,
    E2bCaller(caller): E2bCaller,
    E2bSandboxId(id): E2bSandboxId,
    E2bJson(req): E2bJson<ConnectRequest>,
) -> E2bResult<(StatusCode, Json<Sandbox>)> {
    if req.auto_pause.is_some() {
        return Err(E2bError::unsupported(
            "autoPause",
            "changing autoPause on resume",
        ));
    }
    connect_or_resume(&st, &caller, &id, &req).await
}

async fn connect_or_resume(
    st: &AppState,
    caller: &crate::server::api::extract::Caller,
    id: &SandboxId,
    req: &ConnectRequest,
) -> E2bResult<(StatusCode, Json<Sandbox>)> {
    if req.memory == Some(false) {
        return Err(E2bError::unsupported(
            "memory",
            "resuming by a reboot (false)",
        ));
    }
    let timeout = req
        .timeout
        .map(|t| check_timeout("timeout", t))
        .transpose()?;
    let team = caller.team_id()?;
    let s = live(st, &team, id).await?;
    let (status, row) = if s.status == SandboxStatus::Paused {
        let row = st
            .sandboxes()
            .resume_until(&team, id, Some(timeout.unwrap_or(DEFAULT_TIMEOUT_SEC)))
            .await
            .map_err(e2b_fields)?;
        (StatusCode::CREATED, row)
    } else {
        (StatusCode::OK, s)
    };
    let row = match timeout {
        Some(t) => st
            .sandboxes()
            .set_deadline(&team, id, DeadlineChange::Extend(t))
            .await
            .map_err(e2b_fields)?,
        None => row,
    };
    st.sandboxes()
        .wait_envd(&row, ENVD_WAIT)
        .await
        .map_err(e2b_fields)?;
    Ok((status, Json(shapes::sandbox(&row, &reach(st, &row)))))
}

/// `GET /sandboxes/{id}`: the detail, running or paused.
pub async fn get(
    State(st): State<AppState>,
    E2bCaller(caller): E2bCaller,
    E2bSandboxId(id): E2bSandboxId,
) -> E2bResult<Json<SandboxInfo>> {
    let team = caller.team_id()?;
    let s = live(&st, &team, &id).await?;
    let mut info = shapes::info(&s, true).ok_or_else(|| E2bError::not_found("sandbox"))?;
    let r = reach(&st, &s);
    info.envd_access_token = Some(r.token);
    info.domain = r.domain;
    Ok(Json(info))
}

/// `DELETE /sandboxes/{id}`: 204; an ended or unknown sandbox is 404.
pub async fn kill(
    State(st): State<AppState>,
    E2bCaller(caller): E2bCaller,
    E2bSandboxId(id): E2bSandboxId,
) -> E2bResult<StatusCode> {
    let team = caller.team_id()?;
    live(&st, &team, &id).await?;
    st.sandboxes().end(&team, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/timeout`: the deadline becomes `timeout` from now, earlier or later.
pub async fn set_timeout(
    State(st): State<AppState>,
    E2bCaller(caller): E2bCaller,
    E2bSandboxId(id): E2bSandboxId,
    E2bJson(req): E2bJson<TimeoutRequest>,
) -> E2bResult<StatusCode> {
    let t = check_timeout("timeout", req.timeout)?;
    let team = caller.team_id()?;
    live(&st, &team, &id).await?;
    st.sandboxes()
        .set_deadline(&team, &id, DeadlineChange::Set(t))
        .await
        .map_err(e2b_fields)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/refreshes` (older SDKs' keep-alive): the deadline becomes at least
/// `duration` (default 300 s) from now.
pub async fn refresh(
    State(st): State<AppState>,
    E2bCaller(caller): E2bCaller,
    E2bSandboxId(id): E2bSandboxId,
    E2bJson(req): E2bJson<RefreshRequest>,
) -> E2bResult<StatusCode> {
    let t = check_timeout("duration", req.duration.unwrap_or(DEFAULT_TIMEOUT_SEC))?;
    let team = caller.team_id()?;
    live(&st, &team, &id).await?;
    st.sandboxes()
        .set_deadline(&team, &id, DeadlineChange::Extend(t))
        .await
        .map_err(e2b_fields)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/pause`: 204; already paused is 409.
pub async fn pause(
    State(st): State<AppState>,
    E2bCaller(caller): E2bCaller,
    E2bSandboxId(id): E2bSandboxId,
    E2bJson(req): E2bJson<PauseRequest>,
) -> E2bResult<StatusCode> {
    if req.memory == Some(false) {
        return Err(E2bError::unsupported(
            "memory",
            "a filesystem-only pause (false)",
        ));
    }
    let team = caller.team_id()?;
    live(&st, &team, &id).await?;
    st.sandboxes().pause(&team, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /sandboxes/{id}/network`: the egress policy replaced (E2B's settings mapped onto ours).
pub async fn set_network(
    State(st): State<AppState>,
    E2bCaller(caller): E2bCaller,
    E2bSandboxId(id): E2bSandboxId,
    E2bJson(req): E2bJson<NetworkConfig>,
) -> E2bResult<StatusCode> {
    if req.allow_public_traffic.is_some() {
        return Err(E2bError::unsupported(
            "allowPublicTraffic",
            "changing who may reach the ports after create",
        ));
    }
    let policy = shapes::egress(Some(&req), None)?;
    let team = caller.team_id()?;
    live(&st, &team, &id).await?;
    st.sandboxes()
        .set_network(&team, &id, policy)
        .await
        .map_err(e2b_fields)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_translate_and_refuse_what_we_cannot_honour() {
        let req: NewSandboxRequest = serde_json::from_str(
            r#"{"templateID":"base","metadata":{"a":"b"},"envVars":{"K":"V"},"autoPause":true}"#,
        )
        .unwrap();
        let ours = translate_create(&req).unwrap();
        assert_eq!(
            ours.public_ports,
            Some(true),
            "E2B's ports are public by default"
        );
        let private: NewSandboxRequest =
            serde_json::from_str(r#"{"templateID":"base","network":{"allowPublicTraffic":false}}"#)
                .unwrap();
        assert_eq!(
            translate_create(&private).unwrap().public_ports,
            Some(false)
        );
        assert_eq!(ours.end_in_sec, Some(DEFAULT_TIMEOUT_SEC));
        assert_eq!(ours.timeout_sec, Some(0));
        assert_eq!(ours.on_timeout.as_deref(), Some("pause"));
        for (body, field) in [
            (
                r#"{"templateID":"base","autoPauseMemory":false}"#,
                "autoPauseMemory",
            ),
            (
                r#"{"templateID":"base","volumeMounts":[{"name":"v","path":"/m"}]}"#,
                "volumeMounts",
            ),
            (r#"{"templateID":"base","mcp":{"x":{}}}"#, "mcp"),
            (
                r#"{"templateID":"base","autoResume":{"enabled":true}}"#,
                "autoResume.enabled",
            ),
            (r#"{"templateID":"base","timeout":0}"#, "timeout"),
            (
                r#"{"templateID":"base","network":{"allowPublicTraffic":"no"}}"#,
                "network.allowPublicTraffic",
            ),
            (r#"{"templateID":""}"#, "templateID"),
        ] {
            let req: NewSandboxRequest = serde_json::from_str(body).unwrap();
            match translate_create(&req) {
                Err(E2bError(ApiError::BadRequest { field: f, .. })) => assert_eq!(f, field),
                other => panic!("{body}: {:?}", other.map(|_| ())),
            }
        }
    }
}
