//! Where new work goes: the fleet as placement candidates (each schedulable host with what its
//! live sandboxes already hold), handed to the scheduler.

use super::SandboxService;
use super::error::{SandboxError, SandboxResult};
use crate::ids::HostId;
use crate::server::db::{hosts, sandboxes};
use crate::server::scheduler::{Candidate, PlacementRequest};

impl SandboxService<'_> {
    /// Every schedulable host as a placement candidate.
    pub async fn candidates(&self) -> SandboxResult<Vec<Candidate>> {
        let (hosts, load) = self
            .st
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

    /// The host the scheduler picks for `req` among `candidates`, and its address; 503
    /// `no_host_available` with the scheduler's reason when none fits.
    pub async fn place(
        &self,
        candidates: &[Candidate],
        req: &PlacementRequest,
    ) -> SandboxResult<(HostId, String)> {
        let host_id = self
            .st
            .scheduler
            .place(candidates, req)
            .map(HostId::from_stored)
            .map_err(SandboxError::NoHostAvailable)?;
        let (addr, _) = self.host_address(&host_id).await?;
        Ok((host_id, addr))
    }
}
