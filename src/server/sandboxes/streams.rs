//! Streaming exec: the service opens the WebSocket to the sandbox's agent; the front-end relays
//! its own client's messages over it.

use std::time::Duration;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::error::{SandboxError, SandboxResult};
use super::{AgentCall, SandboxService};
use crate::ids::{SandboxId, TeamId};
use crate::server::db::sandboxes::SandboxRow;
use crate::server::state::SandboxStatus;

/// The agent's end of a streaming exec.
pub type AgentSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long the agent may take to accept the stream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

impl SandboxService<'_> {
    /// The team's sandbox `id`, checked to be running, before a front-end commits to a stream.
    pub async fn stream_target(&self, team: &TeamId, id: &SandboxId) -> SandboxResult<SandboxRow> {
        let s = self.lookup(team, id).await?;
        if s.status != SandboxStatus::Running {
            return Err(SandboxError::not_running(s.status));
        }
        Ok(s)
    }

    /// Opens a streaming exec on the running sandbox `s`'s host (activity is recorded).
    pub async fn connect_exec_stream(&self, s: &SandboxRow) -> SandboxResult<AgentSocket> {
        let link = self.host_of(s).await?;
        let (url, token) = link
            .client
            .exec_stream_target(&s.id)
            .map_err(|e| self.agent_error(AgentCall::Vm, &link.client, e))?;
        let mut req = url
            .into_client_request()
            .map_err(|e| anyhow::anyhow!("agent URL: {e}"))?;
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::header::AUTHORIZATION,
            format!("Bearer {token}")
                .parse()
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        let host = link.client.host_id().to_string();
        let (agent, _) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .map_err(|_| {
                tracing::warn!(host = %host, sandbox = %s.id, "agent did not accept an exec stream in time");
                SandboxError::Host {
                    code: "host_unreachable",
                    message: "the sandbox's host did not answer".into(),
                }
            })?
            .map_err(|e| {
                tracing::warn!(host = %host, sandbox = %s.id, error = %e, "agent refused an exec stream");
                SandboxError::Host {
                    code: "host_unreachable",
                    message: "the sandbox's host refused the stream".into(),
                }
            })?;
        self.touch(&s.id).await?;
        Ok(agent)
    }
}
