//! Where new work goes: the fleet as placement candidates (each schedulable host with what its
//! live sandboxes already hold), handed to the scheduler. A new sandbox is placed, checked
//! against its team's quota and recorded in one transaction ([`SandboxService::reserve`]), so
//! concurrent creates never overcommit a host or a quota.

use std::collections::BTreeMap;

use super::SandboxService;
use super::error::{SandboxError, SandboxResult};
use crate::ids::HostId;
use crate::server::db::DbError;
use crate::server::db::hosts::{self, HostRow};
use crate::server::db::sandboxes::{self, NewSandbox, SandboxRow};
use crate::server::db::{self, quotas};
use crate::server::scheduler::{Candidate, PlacementRequest};
use crate::server::state::SandboxStatus;

fn candidates_of(hosts: &[HostRow], load: &BTreeMap<String, (u32, u64)>) -> Vec<Candidate> {
    hosts
        .iter()
        .map(|h| {
            let (used_vcpus, used_memory_mb) = load.get(&h.id).copied().unwrap_or((0, 0));
            Candidate {
                host_id: h.id.clone(),
                team_id: h.team_id.clone(),
                cpu_cores: h.cpu_cores.unwrap_or(1),
                memory_mb: h.memory_mb.unwrap_or(0),
                used_vcpus,
                used_memory_mb,
                templates: h.templates.clone(),
            }
        })
        .collect()
}

impl SandboxService<'_> {
    /// Every schedulable host as a placement candidate.
    pub async fn candidates(&self) -> SandboxResult<Vec<Candidate>> {
        let (hosts, load) = self
            .st
            .db
            .call(|c| Ok((hosts::schedulable(c)?, sandboxes::load_by_host(c)?)))
            .await?;
        Ok(candidates_of(&hosts, &load))
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

    /// Checks `new` against its team's quota (429 `quota_exceeded`), places it (503
    /// `no_host_available`) and records it as `starting` on the chosen host — all in one
    /// transaction on the one connection, so what the check saw is what the insert counts
    /// against. Answers the host and its address.
    pub async fn reserve(
        &self,
        req: &PlacementRequest,
        mut new: NewSandbox,
    ) -> SandboxResult<(HostId, String)> {
        let scheduler = self.st.scheduler.clone();
        let default = self.st.settings.team_quota;
        let req = req.clone();
        self.st
            .db
            .call(move |c| {
                db::atomically(c, |tx| {
                    let usage = quotas::usage(tx, &new.team_id)?;
                    let quota = quotas::overrides(tx, &new.team_id)?.or(default);
                    if let Some(why) =
                        quota.exceeded_by(&usage, new.vcpus, u64::from(new.memory_mb))
                    {
                        return Ok(Err(SandboxError::QuotaExceeded(why)));
                    }
                    let (hosts, load) = (hosts::schedulable(tx)?, sandboxes::load_by_host(tx)?);
                    let host_id = match scheduler.place(&candidates_of(&hosts, &load), &req) {
                        Ok(h) => h,
                        Err(why) => return Ok(Err(SandboxError::NoHostAvailable(why))),
                    };
                    let Some(addr) = hosts
                        .iter()
                        .find(|h| h.id == host_id)
                        .and_then(|h| h.address.clone())
                    else {
                        return Ok(Err(SandboxError::NoHostAvailable(
                            "the chosen host has no address".into(),
                        )));
                    };
                    new.host_id = host_id.clone();
                    sandboxes::insert(tx, &new)?;
                    Ok(Ok((HostId::from_stored(host_id), addr)))
                })
            })
            .await?
    }

    /// Checks a paused sandbox's resume against its team's quota (429 `quota_exceeded`) and
    /// records it as `running` in the same transaction.
    pub async fn reserve_resume(&self, s: &SandboxRow) -> SandboxResult<()> {
        let default = self.st.settings.team_quota;
        let (team, id, vcpus, memory_mb) = (s.team_id.clone(), s.id.clone(), s.vcpus, s.memory_mb);
        self.st
            .db
            .call(move |c| {
                db::atomically(c, |tx| {
                    let usage = quotas::usage(tx, &team)?;
                    let quota = quotas::overrides(tx, &team)?.or(default);
                    if let Some(why) = quota.exceeded_by(&usage, vcpus, u64::from(memory_mb)) {
                        return Ok(Err(SandboxError::QuotaExceeded(why)));
                    }
                    match sandboxes::transition(tx, &id, SandboxStatus::Running, None) {
                        Ok(_) => Ok(Ok(())),
                        Err(DbError::Conflict(_)) => Ok(Err(SandboxError::conflict(
                            "invalid_transition",
                            "the sandbox is no longer paused",
                        ))),
                        Err(e) => Err(e),
                    }
                })
            })
            .await?
    }
}
