//! The sandbox service: every rule about a team's sandboxes (create, end, pause, resume, idle
//! timeouts, network, exec, logs, usage metrics, files' target, snapshots, ports) and where they run (placement, the
//! host's agent). Front-ends are thin translations over it: the REST handlers in
//! `server::api`, the host monitor, and the E2B-compatible API to come. Nothing here knows HTTP:
//! it takes typed ids and wire requests and answers rows or a [`SandboxError`], which each
//! front-end maps to its own answers in one place (`server::api::error` for REST).

pub mod agent_errors;
mod create;
mod deadline;
pub mod error;
mod lifecycle;
pub mod listing;
pub mod metrics;
pub mod oplog;
pub mod placement;
pub mod ports;
pub mod rules;
mod streams;
mod templates;

pub use agent_errors::AgentCall;
pub use deadline::DeadlineChange;
pub use error::{SandboxError, SandboxResult};
pub use metrics::MetricsRange;
pub use streams::AgentSocket;
pub use templates::{BASE_TEMPLATES, team_template_name};

use crate::ids::{HostId, SandboxId, TeamId};
use crate::server::AppState;
use crate::server::db::sandboxes::{self, SandboxRow};
use crate::server::db::{DbError, hosts};
use crate::server::pool::{AgentClient, AgentError};
use crate::server::state::SandboxStatus;

/// The service over one server's state. Cheap: borrow one with [`AppState::sandboxes`].
pub struct SandboxService<'a> {
    st: &'a AppState,
}

impl AppState {
    /// The sandbox service over this state.
    pub fn sandboxes(&self) -> SandboxService<'_> {
        SandboxService { st: self }
    }
}

/// A sandbox's host as the service reaches it.
pub struct HostLink {
    pub client: AgentClient,
    /// Online or draining (its sandboxes can be reached); false when unreachable.
    pub online: bool,
}

impl SandboxService<'_> {
    /// The team's sandbox `id`; another team's is as absent as one that never was.
    pub async fn lookup(&self, team: &TeamId, id: &SandboxId) -> SandboxResult<SandboxRow> {
        let (team, id) = (team.clone(), id.clone());
        self.st
            .db
            .read(move |c| sandboxes::get(c, &team, &id))
            .await
            .map_err(SandboxError::not_found_as("sandbox"))
    }

    /// The team's sandboxes, optionally only those in `status`.
    pub async fn list(
        &self,
        team: &TeamId,
        status: Option<SandboxStatus>,
    ) -> SandboxResult<Vec<SandboxRow>> {
        let team = team.clone();
        Ok(self
            .st
            .db
            .read(move |c| sandboxes::list(c, &team, status))
            .await?)
    }

    /// The team's sandbox `id` when it is running (else 409 `sandbox_not_running`), with its
    /// host's client. The call counts as activity for the idle timeout.
    pub async fn running(
        &self,
        team: &TeamId,
        id: &SandboxId,
    ) -> SandboxResult<(AgentClient, SandboxRow)> {
        let s = self.lookup(team, id).await?;
        if s.status != SandboxStatus::Running {
            return Err(SandboxError::not_running(s.status));
        }
        let link = self.host_of(&s).await?;
        self.touch(&s.id).await?;
        Ok((link.client, s))
    }

    /// Records activity on a sandbox (it resets the idle timeout).
    pub async fn touch(&self, id: &str) -> SandboxResult<()> {
        let id = id.to_string();
        Ok(self.st.db.call(move |c| sandboxes::touch(c, &id)).await?)
    }

    /// The client for a sandbox's host, and whether that host is online.
    pub async fn host_of(&self, s: &SandboxRow) -> SandboxResult<HostLink> {
        let host_id = s.host_id.clone().ok_or_else(host_deleted)?;
        let host_id = HostId::from_stored(host_id);
        let (addr, online) = self.host_address(&host_id).await?;
        Ok(HostLink {
            client: self.st.pool.get(&host_id, &addr),
            online,
        })
    }

    /// A host's address and whether it is online (or draining: its sandboxes still run).
    pub async fn host_address(&self, host_id: &HostId) -> SandboxResult<(String, bool)> {
        let hid = host_id.clone();
        let h = self
            .st
            .db
            .call(move |c| hosts::get(c, &hid))
            .await
            .map_err(|e| match e {
                DbError::NotFound => host_deleted(),
                other => other.into(),
            })?;
        let addr = h.address.ok_or_else(|| SandboxError::Host {
            code: "host_unreachable",
            message: "the sandbox's host has no address".into(),
        })?;
        Ok((addr, h.status.serves_sandboxes()))
    }

    /// The sandbox's access token (its ports, its envd): derived from the server's key, the same
    /// for the sandbox's whole life.
    pub fn access_token(&self, id: &SandboxId) -> crate::crypto::Secret {
        self.st.keys.sandbox_access_token(id.as_str())
    }

    /// The one translation of an agent's error (see [`agent_errors`]).
    pub fn agent_error(
        &self,
        call: AgentCall,
        client: &AgentClient,
        e: AgentError,
    ) -> SandboxError {
        agent_errors::translate(call, client.host_id(), e)
    }
}

fn host_deleted() -> SandboxError {
    SandboxError::conflict("sandbox_has_no_host", "the sandbox's host was deleted")
}
