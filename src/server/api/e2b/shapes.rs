//! Our sandboxes in E2B's shapes (`Sandbox`, `SandboxDetail`, `ListedSandbox`) and E2B's
//! settings in ours (network, lifecycle): pure translations, no rules.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::errors::{E2bError, E2bResult};
use crate::proto::e2b::{
    CLIENT_ID, ENVD_VERSION, Lifecycle, NetworkConfig, NetworkInfo, Sandbox, SandboxInfo,
    SandboxState,
};
use crate::proto::net::EgressPolicy;
use crate::proto::vocab::OnTimeout;
use crate::server::db::sandboxes::SandboxRow;
use crate::server::state::SandboxStatus;

/// What `endAt` shows for a sandbox that has neither a deadline nor an idle timeout.
pub const NEVER: &str = "9999-12-31T23:59:59Z";

/// E2B's template id when the request names none worth mapping.
pub const E2B_DEFAULT_TEMPLATE: &str = "base";

/// Unix seconds as RFC 3339 (`2026-01-01T00:00:00Z`).
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| NEVER.to_string())
}

/// An RFC 3339 time (any offset) as Unix seconds; `field` names it in the error.
pub fn parse_rfc3339(field: &str, s: &str) -> E2bResult<i64> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| E2bError::bad(field, format!("not an RFC 3339 time: {e}")))
}

/// E2B's state of one of our statuses: only running and paused sandboxes exist for E2B.
pub fn state_of(status: SandboxStatus) -> Option<SandboxState> {
    match status {
        SandboxStatus::Running => Some(SandboxState::Running),
        SandboxStatus::Paused => Some(SandboxState::Paused),
        _ => None,
    }
}

/// When the sandbox ends: its deadline, else when its idle timeout would fire, else never.
fn end_at(s: &SandboxRow) -> String {
    if let Some(end) = s.end_at {
        return rfc3339(end);
    }
    if s.timeout_sec > 0 {
        let since = s.last_active_at.or(s.started_at).unwrap_or(s.created_at);
        return rfc3339(since + s.timeout_sec as i64);
    }
    NEVER.to_string()
}

/// How the SDK reaches a sandbox's envd and ports: its access token (sent as `X-Access-Token`
/// to envd, `E2B-Traffic-Access-Token` to private ports, and the key of signed file URLs) and
/// the server's `--sandbox-domain` (host names `{port}-{id}.{domain}`).
pub struct Reach {
    pub token: String,
    pub domain: Option<String>,
}

/// The `Sandbox` answer of create, connect and resume.
pub fn sandbox(s: &SandboxRow, reach: &Reach) -> Sandbox {
    Sandbox {
        template_id: s.template.clone(),
        sandbox_id: s.id.clone(),
        client_id: CLIENT_ID.to_string(),
        envd_version: ENVD_VERSION.to_string(),
        alias: Some(s.template.clone()),
        envd_access_token: Some(reach.token.clone()),
        traffic_access_token: Some(reach.token.clone()),
        domain: reach.domain.clone(),
    }
}

/// A list item (`ListedSandbox`), or with `detail` the `SandboxDetail` of `GET /sandboxes/{id}`.
/// None for a sandbox E2B cannot show (not running or paused).
pub fn info(s: &SandboxRow, detail: bool) -> Option<SandboxInfo> {
    let state = state_of(s.status)?;
    Some(SandboxInfo {
        template_id: s.template.clone(),
        sandbox_id: s.id.clone(),
        client_id: CLIENT_ID.to_string(),
        alias: Some(s.template.clone()),
        started_at: rfc3339(s.started_at.unwrap_or(s.created_at)),
        end_at: end_at(s),
        envd_version: ENVD_VERSION.to_string(),
        cpu_count: s.vcpus,
        memory_mb: s.memory_mb,
        // The root disk's size is the template's and is not known to the server.
        disk_size_mb: 0,
        state,
        metadata: s.metadata.clone(),
        lifecycle: detail.then(|| Lifecycle {
            auto_resume: false,
            on_timeout: match s.on_timeout {
                OnTimeout::Pause => "pause".into(),
                OnTimeout::Kill => "kill".into(),
            },
        }),
        allow_internet_access: if detail {
            Some(s.egress.as_ref().is_some_and(|e| e.internet))
        } else {
            None
        },
        network: if detail {
            s.egress.as_ref().map(|e| NetworkInfo {
                allow_out: e.allow_out.clone(),
                deny_out: e.deny_out.clone(),
            })
        } else {
            None
        },
        envd_access_token: None,
        domain: None,
    })
}

/// Whether the sandbox's ports answer without its token: E2B's default is yes, unless
/// `network.allowPublicTraffic` is false.
pub fn public_ports(net: Option<&NetworkConfig>) -> E2bResult<bool> {
    match net.and_then(|n| n.allow_public_traffic.as_ref()) {
        None | Some(serde_json::Value::Null) => Ok(true),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(_) => Err(E2bError::bad(
            "network.allowPublicTraffic",
            "must be true or false",
        )),
    }
}

/// E2B's network settings as our egress policy (`allow_internet_access` given beside them on
/// create); `allowPublicTraffic` is not egress (see [`public_ports`]). `denyOut` holding `0.0.0.0/0` closes the internet (what E2B means by it); the keys
/// we cannot honour are refused by name.
pub fn egress(
    net: Option<&NetworkConfig>,
    allow_internet_access: Option<bool>,
) -> E2bResult<EgressPolicy> {
    let mut policy = EgressPolicy::default();
    if let Some(n) = net {
        for (field, present) in [
            ("network.maskRequestHost", n.mask_request_host.is_some()),
            ("network.dnsServers", n.dns_servers.is_some()),
            ("network.egressProxy", n.egress_proxy.is_some()),
            ("network.httpsPorts", n.https_ports.is_some()),
            ("network.rules", n.rules.is_some()),
        ] {
            if present {
                return Err(E2bError::unsupported(field, "this setting"));
            }
        }
        for a in n.allow_out.iter().flatten() {
            if a.parse::<std::net::IpAddr>().is_err() && !a.contains('/') {
                return Err(E2bError::bad(
                    "network.allowOut",
                    format!("{a:?}: only IP addresses and CIDRs are supported, not domain names"),
                ));
            }
        }
        policy.allow_out = n.allow_out.clone().unwrap_or_default();
        for d in n.deny_out.iter().flatten() {
            if d == "0.0.0.0/0" || d == "::/0" {
                policy.internet = false;
            } else {
                policy.deny_out.push(d.clone());
            }
        }
        if n.allow_internet_access == Some(false) {
            policy.internet = false;
        }
    }
    if allow_internet_access == Some(false) {
        policy.internet = false;
    }
    policy.validate().map_err(|(field, message)| {
        let field = match field {
            "network.allow_out" => "network.allowOut",
            "network.deny_out" => "network.denyOut",
            other => other,
        };
        E2bError::bad(field, message)
    })?;
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_both_ways() {
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(
            parse_rfc3339("startedAfter", "2026-01-01T01:00:00+01:00").unwrap(),
            1_767_225_600
        );
        assert!(parse_rfc3339("startedAfter", "yesterday").is_err());
    }

    #[test]
    fn network_maps_onto_egress() {
        let net = NetworkConfig {
            allow_out: Some(vec!["192.0.2.7".into()]),
            deny_out: Some(vec!["0.0.0.0/0".into(), "198.51.100.0/24".into()]),
            ..Default::default()
        };
        let p = egress(Some(&net), None).unwrap();
        assert!(!p.internet);
        assert_eq!(p.allow_out, vec!["192.0.2.7/32".to_string()]);
        assert_eq!(p.deny_out, vec!["198.51.100.0/24".to_string()]);
        assert!(!egress(None, Some(false)).unwrap().internet);
        assert!(egress(None, None).unwrap().internet);
        let domains = NetworkConfig {
            allow_out: Some(vec!["example.com".into()]),
            ..Default::default()
        };
        assert!(matches!(
            egress(Some(&domains), None),
            Err(E2bError(crate::server::api::error::ApiError::BadRequest { field, .. })) if field == "network.allowOut"
        ));
        let rules = NetworkConfig {
            rules: Some(serde_json::json!({})),
            ..Default::default()
        };
        assert!(egress(Some(&rules), None).is_err());
    }
}
