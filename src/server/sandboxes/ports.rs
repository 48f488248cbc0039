//! Sandbox ports (SPEC §13): who may reach a TCP port inside a sandbox, and the byte stream to
//! it through the sandbox's agent. Front-ends (the proxy on the main listener, the
//! `/v1/sandboxes/{id}/ports/{port}` route behind `sandboxctl sandbox port-forward`) decide how
//! a request names the sandbox; the rules are here.

use super::error::{SandboxError, SandboxResult};
use super::{AgentCall, SandboxService};
use crate::ids::{SandboxId, TeamId};
use crate::server::db::sandboxes::{self, SandboxRow};
use crate::server::state::SandboxStatus;

/// envd's port: its traffic is let through without the proxy's token check, because envd
/// checks the sandbox's access token itself (E2B's semantics: signed `/files` URLs carry none).
pub const ENVD_PORT: u16 = 49983;

/// What a caller of a sandbox's port showed.
#[derive(Debug, Default)]
pub struct PortCredentials {
    /// Tokens offered for the sandbox's (`X-Access-Token`, `E2B-Traffic-Access-Token`).
    pub access_tokens: Vec<String>,
    /// The team of an API key or user token the caller authenticated with.
    pub team: Option<TeamId>,
}

/// Why a port may not be reached.
#[derive(Debug, PartialEq, Eq)]
pub enum PortRefusal {
    /// No credential at all (or one that did not authenticate): 401.
    Unauthenticated,
    /// A credential that is not this sandbox's (a wrong token, another team's key): 403.
    Forbidden,
}

/// Whether `creds` may reach `port` of sandbox `s` whose access token is `token`.
pub fn check_port_access(
    s: &SandboxRow,
    port: u16,
    token: &str,
    creds: &PortCredentials,
) -> Result<(), PortRefusal> {
    if s.public_ports || port == ENVD_PORT {
        return Ok(());
    }
    if creds
        .access_tokens
        .iter()
        .any(|t| crate::crypto::ct_eq(t.as_bytes(), token.as_bytes()))
    {
        return Ok(());
    }
    if creds.team.as_ref().is_some_and(|t| *t == s.team_id) {
        return Ok(());
    }
    if !creds.access_tokens.is_empty() || creds.team.is_some() {
        Err(PortRefusal::Forbidden)
    } else {
        Err(PortRefusal::Unauthenticated)
    }
}

impl SandboxService<'_> {
    /// Any team's sandbox `id` when it is running; otherwise `NotFound` (unknown, ended,
    /// paused: its ports are not there). The caller checks access with [`check_port_access`].
    pub async fn port_target(&self, id: &SandboxId) -> SandboxResult<SandboxRow> {
        let sid = id.clone();
        let s = self
            .st
            .db
            .call(move |c| sandboxes::get_any(c, &sid))
            .await?
            .ok_or(SandboxError::NotFound("sandbox"))?;
        if s.status != SandboxStatus::Running {
            return Err(SandboxError::NotFound("sandbox"));
        }
        Ok(s)
    }

    /// The team's sandbox `id` for a port-forward: its own team's only (404 otherwise), running
    /// (409 otherwise).
    pub async fn team_port_target(
        &self,
        team: &TeamId,
        id: &SandboxId,
    ) -> SandboxResult<SandboxRow> {
        let s = self.lookup(team, id).await?;
        if s.status != SandboxStatus::Running {
            return Err(SandboxError::not_running(s.status));
        }
        Ok(s)
    }

    /// A byte stream to `port` inside the running sandbox `s`; `Conflict` with code
    /// `port_closed` when nothing listens there. Opening one counts as activity.
    pub async fn open_port(&self, s: &SandboxRow, port: u16) -> SandboxResult<reqwest::Upgraded> {
        let link = self.host_of(s).await?;
        let stream = link
            .client
            .open_port(&s.id, port)
            .await
            .map_err(|e| self.agent_error(AgentCall::Vm, &link.client, e))?;
        self.touch(&s.id).await?;
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(public: bool) -> SandboxRow {
        SandboxRow {
            id: "sbx-a".into(),
            team_id: "team_a".into(),
            host_id: None,
            template: "minimal".into(),
            status: SandboxStatus::Running,
            vcpus: 1,
            memory_mb: 256,
            timeout_sec: 0,
            network: false,
            metadata: Default::default(),
            env: Default::default(),
            boot_ms: None,
            created_at: 0,
            started_at: None,
            ended_at: None,
            error: None,
            on_timeout: Default::default(),
            last_active_at: None,
            boot_kind: None,
            egress: None,
            public_ports: public,
            end_at: None,
        }
    }

    #[test]
    fn ports_are_private_unless_public_or_envd() {
        let none = PortCredentials::default();
        let token = |t: &str| PortCredentials {
            access_tokens: vec![t.into()],
            ..Default::default()
        };
        let team = |t: &str| PortCredentials {
            team: Some(TeamId::from_stored(t)),
            ..Default::default()
        };
        let (private, public) = (row(false), row(true));
        assert_eq!(
            check_port_access(&private, 8000, "sat_x", &none),
            Err(PortRefusal::Unauthenticated)
        );
        assert_eq!(check_port_access(&public, 8000, "sat_x", &none), Ok(()));
        assert_eq!(
            check_port_access(&private, ENVD_PORT, "sat_x", &none),
            Ok(())
        );
        assert_eq!(
            check_port_access(&private, 8000, "sat_x", &token("sat_x")),
            Ok(())
        );
        assert_eq!(
            check_port_access(&private, 8000, "sat_x", &token("sat_y")),
            Err(PortRefusal::Forbidden)
        );
        assert_eq!(
            check_port_access(&private, 8000, "sat_x", &team("team_a")),
            Ok(())
        );
        assert_eq!(
            check_port_access(&private, 8000, "sat_x", &team("team_b")),
            Err(PortRefusal::Forbidden)
        );
    }
}
