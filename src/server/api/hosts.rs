//! The host registry: create (with a one-time registration token), register, heartbeat, refresh,
//! list, get, delete (with its preview).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, AuthHost, AuthUser, IdPath};
use crate::crypto::{self, sha256_hex};
use crate::ids::HostId;
use crate::proto::agent::{
    HeartbeatRequest, HeartbeatResponse, RefreshRequest, RefreshResponse, RegisterRequest,
    RegisterResponse,
};
use crate::proto::api::{
    CreateHostRequest, CreateHostResponse, DeletePreview, HostListResponse, HostResponse,
    TagsRequest, TokenResponse,
};
use crate::proto::vocab::TeamRole;
use crate::server::AppState;
use crate::server::db::hosts::{self, HostRow, NewHost, RefreshOutcome};
use crate::server::db::{DbError, now, sandboxes, users};

pub fn to_resp(h: HostRow) -> HostResponse {
    HostResponse {
        id: h.id,
        host_type: h.host_type,
        team_id: h.team_id,
        name: h.name,
        provider: h.provider,
        zone: h.zone,
        status: h.status,
        arch: h.arch,
        cpu_cores: h.cpu_cores,
        memory_mb: h.memory_mb,
        disk_gb: h.disk_gb,
        address: h.address,
        accel: h.accel,
        accel_reason: h.accel_reason,
        cgroups: h.cgroups,
        running_vms: h.running_vms,
        used_vcpus: h.used_vcpus,
        used_memory_mb: h.used_memory_mb,
        last_heartbeat_at: h.last_heartbeat_at,
        created_at: h.created_at,
        tags: h.tags,
        templates: h.templates,
    }
}

fn label(field: &str, v: Option<String>) -> ApiResult<Option<String>> {
    match v {
        None => Ok(None),
        Some(s) => {
            let s = s.trim().to_string();
            if s.is_empty() || s.chars().count() > 100 || s.chars().any(char::is_control) {
                Err(ApiError::bad(
                    field,
                    "must be 1 to 100 printable characters",
                ))
            } else {
                Ok(Some(s))
            }
        }
    }
}

/// A host the user may manage (see, delete, re-token): any host for platform admins, else a BYOC
/// host of an active team where the user is owner or admin. Others are not found.
async fn visible_host(st: &AppState, user: &AuthUser, id: HostId) -> ApiResult<HostRow> {
    let (uid, admin) = (user.user_id.clone(), user.is_admin);
    let found = st
        .db
        .call(move |c| {
            let h = hosts::get(c, &id)?;
            let allowed = admin
                || match &h.team_id {
                    Some(t) => users::membership(c, t, &uid)?.is_some_and(TeamRole::is_team_admin),
                    None => false,
                };
            Ok(allowed.then_some(h))
        })
        .await
        .map_err(|e| match e {
            DbError::NotFound => ApiError::NotFound("host"),
            other => other.into(),
        })?;
    found.ok_or(ApiError::NotFound("host"))
}

fn register_command(st: &AppState, token: &str) -> String {
    format!(
        "sandboxctl agent register --server {} --token {} --data-dir /var/lib/sandboxctl/agent",
        st.settings.public_url, token
    )
}

pub async fn create(
    State(st): State<AppState>,
    user: AuthUser,
    ApiJson(req): ApiJson<CreateHostRequest>,
) -> ApiResult<(StatusCode, Json<CreateHostResponse>)> {
    let team_id = match req.host_type.as_str() {
        "regular" => {
            if req.team_id.is_some() {
                return Err(ApiError::bad("team_id", "only BYOC hosts belong to a team"));
            }
            if !user.is_admin {
                return Err(ApiError::forbidden(
                    "admin_required",
                    "only platform admins add regular hosts",
                ));
            }
            None
        }
        "byoc" => {
            let team = req
                .team_id
                .clone()
                .or_else(|| user.team_id.clone())
                .ok_or_else(|| ApiError::bad("team_id", "required for a BYOC host"))?;
            let (t, uid) = (team.clone(), user.user_id.clone());
            let (active, role) = st
                .db
                .call(move |c| Ok((users::team_active(c, &t)?, users::membership(c, &t, &uid)?)))
                .await?;
            if !active || (role.is_none() && !user.is_admin) {
                return Err(ApiError::NotFound("team"));
            }
            if !(user.is_admin || role.is_some_and(TeamRole::is_team_admin)) {
                return Err(ApiError::forbidden(
                    "team_admin_required",
                    "only the team's owners and admins add its hosts",
                ));
            }
            Some(team)
        }
        _ => return Err(ApiError::bad("type", "must be 'regular' or 'byoc'")),
    };
    let name = label("name", req.name)?;
    let provider = label("provider", req.provider)?;
    let zone = label("zone", req.zone)?;
    let token = crypto::random_token("hrt_");
    let hash = sha256_hex(token.as_bytes());
    let (host_type, uid) = (req.host_type.clone(), user.user_id.clone());
    let (row, expires) = st
        .db
        .call(move |c| {
            hosts::create(
                c,
                &NewHost {
                    host_type: &host_type,
                    team_id: team_id.as_deref(),
                    name: name.as_deref(),
                    provider: provider.as_deref(),
                    zone: zone.as_deref(),
                    created_by: Some(&uid),
                },
                &hash,
            )
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateHostResponse {
            host: to_resp(row),
            register_command: register_command(&st, &token),
            registration_token: token,
            registration_expires_at: expires,
        }),
    ))
}

pub async fn new_token(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<HostId>,
) -> ApiResult<Json<TokenResponse>> {
    let h = visible_host(&st, &user, id).await?;
    let token = crypto::random_token("hrt_");
    let hash = sha256_hex(token.as_bytes());
    let uid = user.user_id.clone();
    let expires = st
        .db
        .call(move |c| hosts::new_registration_token(c, &h.id, &hash, Some(&uid)))
        .await
        .map_err(|e| match e {
            DbError::Conflict(code) => ApiError::conflict(
                code,
                "the host is registered and its credentials are valid; a new token is only for pending hosts or hosts whose credentials were revoked",
            ),
            other => other.into(),
        })?;
    Ok(Json(TokenResponse {
        register_command: register_command(&st, &token),
        registration_token: token,
        registration_expires_at: expires,
    }))
}

pub async fn list(State(st): State<AppState>, user: AuthUser) -> ApiResult<Json<HostListResponse>> {
    let uid = user.user_id.clone();
    let all = user.is_admin;
    let rows = st
        .db
        .call(move |c| {
            // Teams where the caller is owner or admin.
            let mut stmt = c.prepare(
                "SELECT m.team_id FROM memberships m JOIN teams t ON t.id = m.team_id
                 WHERE m.user_id = ?1 AND m.role IN ('owner', 'admin') AND t.deleted_at IS NULL",
            )?;
            let teams: Vec<String> = stmt
                .query_map([&uid], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            hosts::list(c, all, &teams)
        })
        .await?;
    Ok(Json(HostListResponse {
        hosts: rows.into_iter().map(to_resp).collect(),
    }))
}

pub async fn get(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<HostId>,
) -> ApiResult<Json<HostResponse>> {
    Ok(Json(to_resp(visible_host(&st, &user, id).await?)))
}

pub async fn delete_preview(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<HostId>,
) -> ApiResult<Json<DeletePreview>> {
    let h = visible_host(&st, &user, id).await?;
    let hid = h.id.clone();
    let live = st
        .db
        .call(move |c| sandboxes::live_on_host(c, &hid))
        .await?;
    Ok(Json(DeletePreview {
        host_id: h.id,
        sandbox_ids: live.into_iter().map(|s| s.id).collect(),
    }))
}

#[derive(Debug, Deserialize)]
pub struct DeleteQuery {
    #[serde(default)]
    pub force: Option<String>,
}

pub async fn delete(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<HostId>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<StatusCode> {
    let force = match q.force.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(_) => return Err(ApiError::bad("force", "must be true or false")),
    };
    let h = visible_host(&st, &user, id).await?;
    let hid = h.id.clone();
    let live = st
        .db
        .call(move |c| sandboxes::live_on_host(c, &hid))
        .await?;
    if !live.is_empty() && !force {
        return Err(ApiError::HostHasSandboxes(
            live.into_iter().map(|s| s.id).collect(),
        ));
    }
    if h.address.is_some() {
        for s in &live {
            // Logged (a failure too) as the sandbox's delete; the host goes all the same.
            let _ = st
                .sandboxes()
                .destroy_for(s, crate::server::sandboxes::oplog::BY_HOST_DELETED)
                .await;
        }
    }
    let (hid, uid) = (h.id.clone(), user.user_id.clone());
    st.db
        .call(move |c| {
            for s in &live {
                let _ = sandboxes::transition(
                    c,
                    &s.id,
                    crate::server::state::SandboxStatus::Stopped,
                    Some("host deleted"),
                )
                .or_else(|_| {
                    sandboxes::transition(
                        c,
                        &s.id,
                        crate::server::state::SandboxStatus::Error,
                        Some("host deleted"),
                    )
                });
            }
            hosts::delete(c, &hid, Some(&uid))
        })
        .await?;
    st.pool.evict(&h.id);
    Ok(StatusCode::NO_CONTENT)
}

pub async fn register(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<Json<RegisterResponse>> {
    validate_facts(&req.facts)?;
    if req.token.is_empty() || req.token.len() > 200 {
        return Err(ApiError::bad("token", "required"));
    }
    let hash = sha256_hex(req.token.as_bytes());
    let refresh = crypto::random_token("hrf_");
    let refresh_hash = sha256_hex(refresh.as_bytes());
    let facts = req.facts.clone();
    let problem = address_problem(&st, &req.facts.address);
    let (host_id, generation) = st
        .db
        .call(move |c| {
            // Checked before the token is used up, so a refused address costs no token.
            if problem.is_some() && hosts::registering_type(c, &hash)?.as_deref() == Some("byoc") {
                return Ok(Err(problem));
            }
            hosts::register(c, &hash, &facts, &refresh_hash).map(Ok)
        })
        .await
        .map_err(|e| match e {
            // Unknown, used or expired tokens all look the same from outside.
            DbError::NotFound | DbError::Conflict(_) => ApiError::Unauthorized,
            other => other.into(),
        })?
        .map_err(refused_address)?;
    st.pool.evict(&host_id);
    let (token, exp) = st.keys.host_token(&host_id, generation)?;
    tracing::info!(host = %host_id, address = %req.facts.address, accel = %req.facts.accel, "host registered");
    Ok(Json(RegisterResponse {
        host_id,
        token,
        token_expires_at: exp,
        refresh_token: refresh,
        refresh_expires_at: now() + hosts::REFRESH_TTL_SECS,
        server_public_key: st.keys.agent_call_public_key().to_string(),
    }))
}

/// Why a BYOC agent may not use `address`, unless the server allows private addresses.
fn address_problem(st: &AppState, address: &str) -> Option<String> {
    if st.settings.allow_private_agent_addresses {
        return None;
    }
    byoc_address_problem(address)
}

fn refused_address(problem: Option<String>) -> ApiError {
    ApiError::bad(
        "facts.address",
        problem.unwrap_or_else(|| "not allowed".into()),
    )
}

/// Why `address` (`ip:port`) is not one the server calls a team's (BYOC) agent at: it must be an IP
/// literal outside the loopback, link-local, private, shared, unspecified, multicast and reserved
/// ranges, so that a tenant cannot point the server's calls at the server's own network.
pub fn byoc_address_problem(address: &str) -> Option<String> {
    let Ok(sa) = address.parse::<std::net::SocketAddr>() else {
        return Some(
            "a BYOC host must advertise an IP address and port (IP:PORT or [IPv6]:PORT), not a \
             host name: a name could later resolve to a private address"
                .into(),
        );
    };
    non_public_range(sa.ip()).map(|range| {
        format!(
            "{} is in {range}; a BYOC host must advertise a public address (the server's \
             operator can allow private ones with --allow-private-agent-addresses)",
            sa.ip()
        )
    })
}

/// The non-public range `ip` is in, in words.
fn non_public_range(ip: std::net::IpAddr) -> Option<&'static str> {
    use std::net::{IpAddr, Ipv4Addr};
    let v4 = |ip: Ipv4Addr| -> Option<&'static str> {
        let o = ip.octets();
        Some(match o {
            [0, ..] => "0.0.0.0/8 (unspecified)",
            [10, ..] => "10.0.0.0/8 (private)",
            [100, b, ..] if b & 0xc0 == 64 => "100.64.0.0/10 (shared, carrier-grade NAT)",
            [127, ..] => "127.0.0.0/8 (loopback)",
            [169, 254, ..] => "169.254.0.0/16 (link-local)",
            [172, b, ..] if b & 0xf0 == 16 => "172.16.0.0/12 (private)",
            [192, 0, 0, _] => "192.0.0.0/24 (protocol assignments)",
            [192, 168, ..] => "192.168.0.0/16 (private)",
            [198, b, ..] if b & 0xfe == 18 => "198.18.0.0/15 (benchmarking)",
            [a, ..] if (224..240).contains(&a) => "224.0.0.0/4 (multicast)",
            [a, ..] if a >= 240 => "240.0.0.0/4 (reserved)",
            _ => return None,
        })
    };
    match ip {
        IpAddr::V4(ip) => v4(ip),
        IpAddr::V6(ip) => {
            let s = ip.segments();
            let embedded = |hi: u16, lo: u16| {
                Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
            };
            if ip.is_unspecified() {
                Some("::/128 (unspecified)")
            } else if ip.is_loopback() {
                Some("::1/128 (loopback)")
            } else if let Some(m) = ip.to_ipv4_mapped() {
                v4(m)
            } else if s[..6] == [0; 6] {
                // IPv4-compatible (deprecated): the embedded address decides.
                v4(embedded(s[6], s[7]))
            } else if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
                v4(embedded(s[6], s[7]))
            } else if s[0] == 0x2002 {
                v4(embedded(s[1], s[2]))
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("fc00::/7 (unique local)")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("fe80::/10 (link-local)")
            } else if s[0] & 0xffc0 == 0xfec0 {
                Some("fec0::/10 (site-local)")
            } else if s[0] & 0xff00 == 0xff00 {
                Some("ff00::/8 (multicast)")
            } else {
                None
            }
        }
    }
}

fn validate_facts(f: &crate::proto::agent::HostFacts) -> ApiResult<()> {
    let addr_ok = f.address.len() <= 255
        && f.address.rsplit_once(':').is_some_and(|(host, port)| {
            // Digits only, no leading zero (the pattern openapi.yaml states): `u16::from_str`
            // alone would take `+80` and `080`.
            !port.starts_with('0')
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok_and(|p| p != 0)
                && !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
        });
    if !addr_ok {
        return Err(ApiError::bad(
            "facts.address",
            "must be host:port where the agent listens",
        ));
    }
    if f.disk_gb > 1_000_000_000 {
        return Err(ApiError::bad("facts.disk_gb", "out of range"));
    }
    if f.cpu_cores == 0 || f.cpu_cores > 4096 {
        return Err(ApiError::bad("facts.cpu_cores", "out of range"));
    }
    if f.memory_mb == 0 {
        return Err(ApiError::bad("facts.memory_mb", "out of range"));
    }
    for (field, v) in [
        ("facts.arch", &f.arch),
        ("facts.version", &f.version),
        ("facts.accel_reason", &f.accel_reason),
        ("facts.cgroups", &f.cgroups),
    ] {
        if v.len() > 500 {
            return Err(ApiError::bad(field, "too long"));
        }
    }
    Ok(())
}

pub async fn heartbeat(
    State(st): State<AppState>,
    host: AuthHost,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> ApiResult<Json<HeartbeatResponse>> {
    if host.host_id != id {
        return Err(ApiError::forbidden(
            "wrong_host",
            "a host may only heartbeat for itself",
        ));
    }
    validate_facts(&req.facts)?;
    let problem = address_problem(&st, &req.facts.address);
    let status = st
        .db
        .call(move |c| {
            // A BYOC host cannot move to an address it could not register with.
            if problem.is_some() && hosts::get(c, &id)?.host_type == "byoc" {
                return Ok(Err(problem));
            }
            hosts::heartbeat(c, &id, &req).map(Ok)
        })
        .await
        .map_err(|e| match e {
            // The host was deleted: its credentials are worthless now.
            DbError::NotFound => ApiError::Unauthorized,
            other => other.into(),
        })?
        .map_err(refused_address)?;
    Ok(Json(HeartbeatResponse { status }))
}

pub async fn refresh(
    State(st): State<AppState>,
    super::client_ip::ClientIp(ip): super::client_ip::ClientIp,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<Json<RefreshResponse>> {
    super::auth::rate_limit(&st, ip, None)?;
    if req.refresh_token.is_empty() || req.refresh_token.len() > 200 {
        return Err(ApiError::Unauthorized);
    }
    let hash = sha256_hex(req.refresh_token.as_bytes());
    let new = crypto::random_token("hrf_");
    let new_hash = sha256_hex(new.as_bytes());
    let outcome = st
        .db
        .call(move |c| hosts::rotate_refresh(c, &hash, &new_hash))
        .await?;
    match outcome {
        RefreshOutcome::Rotated {
            host_id,
            generation,
        } => {
            let (token, exp) = st.keys.host_token(&host_id, generation)?;
            Ok(Json(RefreshResponse {
                host_id,
                token,
                token_expires_at: exp,
                refresh_token: new,
                refresh_expires_at: now() + hosts::REFRESH_TTL_SECS,
            }))
        }
        RefreshOutcome::Reuse { host_id } => {
            tracing::warn!(host = %host_id, "refresh token reuse: the token family is revoked");
            Err(ApiError::Unauthorized)
        }
        RefreshOutcome::Invalid => Err(ApiError::Unauthorized),
    }
}

pub async fn set_tags(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<HostId>,
    ApiJson(req): ApiJson<TagsRequest>,
) -> ApiResult<Json<HostResponse>> {
    if req.tags.len() > 32 {
        return Err(ApiError::bad("tags", "at most 32 tags"));
    }
    for t in &req.tags {
        if t.is_empty()
            || t.len() > 64
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:=/".contains(&b))
        {
            return Err(ApiError::bad(
                "tags",
                format!("'{t}': tags are 1 to 64 letters, digits or - _ . : = /"),
            ));
        }
    }
    let h = visible_host(&st, &user, id).await?;
    let uid = user.user_id.clone();
    let row = st
        .db
        .call(move |c| {
            hosts::set_tags(c, &h.id, &req.tags, &uid)?;
            hosts::get(c, &h.id)
        })
        .await?;
    Ok(Json(to_resp(row)))
}

pub async fn drain(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<HostId>,
) -> ApiResult<Json<HostResponse>> {
    set_draining(&st, &user, id, true).await
}

pub async fn undrain(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<HostId>,
) -> ApiResult<Json<HostResponse>> {
    set_draining(&st, &user, id, false).await
}

async fn set_draining(
    st: &AppState,
    user: &AuthUser,
    id: HostId,
    draining: bool,
) -> ApiResult<Json<HostResponse>> {
    let h = visible_host(st, user, id).await?;
    let uid = user.user_id.clone();
    let row = st
        .db
        .call(move |c| {
            hosts::set_draining(c, &h.id, draining, &uid)?;
            hosts::get(c, &h.id)
        })
        .await
        .map_err(|e| match e {
            DbError::Conflict(_) if draining => {
                ApiError::conflict("invalid_transition", "only an online host can be drained")
            }
            DbError::Conflict(_) => ApiError::conflict(
                "invalid_transition",
                "only a draining host can be put back online",
            ),
            other => other.into(),
        })?;
    Ok(Json(to_resp(row)))
}

#[cfg(test)]
mod tests {
    use super::byoc_address_problem;

    #[test]
    fn byoc_addresses_must_be_public_ip_literals() {
        for private in [
            "10.1.2.3:9090",
            "127.0.0.1:9090",
            "169.254.169.254:80",
            "172.16.0.1:9090",
            "172.31.255.255:9090",
            "192.168.1.1:9090",
            "100.64.0.1:9090",
            "100.127.255.255:9090",
            "0.0.0.0:9090",
            "224.0.0.1:9090",
            "255.255.255.255:9090",
            "[::1]:9090",
            "[::]:9090",
            "[fc00::1]:9090",
            "[fd12:3456::1]:9090",
            "[fe80::1]:9090",
            "[ff02::1]:9090",
            "[::ffff:127.0.0.1]:9090",
            "[::ffff:10.0.0.1]:9090",
            "[64:ff9b::a9fe:a9fe]:9090",
            "[2002:c0a8:0101::1]:9090",
        ] {
            let p = byoc_address_problem(private);
            assert!(p.is_some(), "{private} accepted");
        }
        for name in ["localhost:9090", "agent.example.com:9090", "10.1.2.3"] {
            let p = byoc_address_problem(name).expect(name);
            assert!(p.contains("IP address"), "{p}");
        }
        for public in [
            "8.8.8.8:9090",
            "100.128.0.1:9090",
            "172.32.0.1:9090",
            "193.0.0.1:443",
            "[2001:4860:4860::8888]:9090",
            "[::ffff:8.8.8.8]:9090",
        ] {
            assert_eq!(byoc_address_problem(public), None, "{public}");
        }
        assert!(
            byoc_address_problem("10.1.2.3:9090")
                .unwrap()
                .contains("10.0.0.0/8")
        );
    }
}
