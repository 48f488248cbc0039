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

/// How long create and connect wait for envd to answer in a sandbox that runs.
pub const ENVD_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The status code of an HTTP/1 response head (`HTTP/1.1 204 No Content`).
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    words.next().filter(|w| w.starts_with("HTTP/1."))?;
    words.next()?.parse().ok()
}

impl SandboxService<'_> {
    /// Waits until envd answers `GET /health` with a 2xx in the running sandbox `s` (through the
    /// same port stream the proxy uses), retrying for at most `within`. `GuestUnresponsive`
    /// naming what was last seen when it does not.
    pub async fn wait_envd(
        &self,
        s: &SandboxRow,
        within: std::time::Duration,
    ) -> SandboxResult<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let started = std::time::Instant::now();
        loop {
            let last;
            match self.open_port(s, ENVD_PORT).await {
                Ok(mut stream) => {
                    let asked = async {
                        stream
                            .write_all(
                                b"GET /health HTTP/1.1\r\nHost: envd\r\nConnection: close\r\n\r\n",
                            )
                            .await?;
                        let mut head = vec![0u8; 256];
                        let mut n = 0;
                        while n < head.len() && !head[..n].contains(&b'\n') {
                            let got = stream.read(&mut head[n..]).await?;
                            if got == 0 {
                                break;
                            }
                            n += got;
                        }
                        Ok::<_, std::io::Error>(status_of(&head[..n]))
                    };
                    match tokio::time::timeout(std::time::Duration::from_secs(5), asked).await {
                        Ok(Ok(Some(code))) if (200..300).contains(&code) => return Ok(()),
                        Ok(Ok(Some(code))) => last = format!("GET /health answered {code}"),
                        Ok(Ok(None)) => last = "envd closed the connection".into(),
                        Ok(Err(e)) => last = format!("envd's connection failed: {e}"),
                        Err(_) => last = "GET /health took over 5 s".into(),
                    }
                }
                Err(SandboxError::Conflict {
                    code: "port_closed",
                    ..
                }) => last = format!("nothing listens on port {ENVD_PORT} yet"),
                Err(e) => return Err(e),
            }
            if started.elapsed() >= within {
                return Err(SandboxError::GuestUnresponsive(format!(
                    "envd did not answer in the sandbox within {} s: {last}",
                    within.as_secs()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
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
    fn health_status_is_read_from_the_head() {
        assert_eq!(status_of(b"HTTP/1.1 204 No Content\r\n\r\n"), Some(204));
        assert_eq!(status_of(b"HTTP/1.0 502 Bad"), Some(502));
        assert_eq!(status_of(b"SSH-2.0-x\r\n"), None);
        assert_eq!(status_of(b""), None);
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
