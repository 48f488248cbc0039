//! A sandbox's life after create: end, pause, resume, idle timeout, network policy, one-shot exec
//! and the console log. Each checks the state machine, asks the host, then records what the host
//! did.

use super::error::{SandboxError, SandboxResult};
use super::oplog::{BY_IDLE_TIMEOUT, BY_REQUEST, OpLog};
use super::rules;
use super::{AgentCall, SandboxService};
use crate::ids::{SandboxId, TeamId};
use crate::proto::api::{ExecRequest, ExecResponse};
use crate::proto::net::EgressPolicy;
use crate::proto::vocab::OnTimeout;
use crate::server::db::sandboxes::{self, SandboxRow};
use crate::server::pool::{AgentError, read_capped};
use crate::server::prometheus::Operation;
use crate::server::state::SandboxStatus;

fn not_in(s: &SandboxRow, want: SandboxStatus, verb: &str) -> SandboxError {
    SandboxError::conflict(
        "invalid_transition",
        format!(
            "cannot {verb} a sandbox that is {} (it must be {want})",
            s.status
        ),
    )
}

/// Largest console log tail one call returns.
pub const MAX_LOG_TAIL: u64 = 1024 * 1024;

impl SandboxService<'_> {
    /// Ends the team's sandbox `id` (its VM destroyed on its host); ending an ended one is fine.
    pub async fn end(&self, team: &TeamId, id: &SandboxId) -> SandboxResult<()> {
        let s = self.lookup(team, id).await?;
        if s.status.is_terminal() {
            return Ok(());
        }
        let log = self.oplog(Operation::Delete, &s, BY_REQUEST);
        let result = self.end_row(&s).await;
        log.finish(self, &result, None);
        result
    }

    async fn end_row(&self, s: &SandboxRow) -> SandboxResult<()> {
        self.destroy_on_host(s).await?;
        let sid = s.id.clone();
        self.st
            .db
            .call(move |c| {
                let (next, why) = match sandboxes::get_any(c, &sid)?.map(|r| r.status) {
                    Some(SandboxStatus::Pending | SandboxStatus::Starting) => {
                        (SandboxStatus::Error, Some("deleted while starting"))
                    }
                    Some(s) if s.is_terminal() => return Ok(()),
                    _ => (SandboxStatus::Stopped, None),
                };
                sandboxes::transition(c, &sid, next, why)?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// The log line and latency sample of `op` on `s`, started now.
    fn oplog<'s>(&self, op: Operation, s: &'s SandboxRow, by: &'static str) -> OpLog<'s> {
        OpLog {
            op,
            sandbox: &s.id,
            team: &s.team_id,
            host: s.host_id.as_deref(),
            by,
            started: std::time::Instant::now(),
        }
    }

    /// Ends a sandbox's VM on its host for `by` (say, its team was deleted), logged as a
    /// delete; the caller records the sandbox's end.
    pub async fn destroy_for(&self, s: &SandboxRow, by: &'static str) -> SandboxResult<()> {
        let log = self.oplog(Operation::Delete, s, by);
        let result = self.destroy_on_host(s).await;
        log.finish(self, &result, None);
        result
    }

    /// Ends a sandbox's VM on its host (a VM the host no longer has counts as ended). A host that
    /// is unreachable cannot be asked: the sandbox is ended in the database all the same, and the
    /// host monitor destroys the VM as an orphan if the host comes back.
    pub async fn destroy_on_host(&self, s: &SandboxRow) -> SandboxResult<()> {
        if s.host_id.is_none() {
            return Ok(());
        }
        let link = match self.host_of(s).await {
            Ok(l) => l,
            Err(SandboxError::Conflict {
                code: "sandbox_has_no_host",
                ..
            }) => return Ok(()),
            Err(e) => return Err(e),
        };
        match link.client.destroy_vm(&s.id).await {
            Ok(()) | Err(AgentError::Remote { status: 404, .. }) => Ok(()),
            Err(AgentError::Unreachable(e)) if !link.online => {
                tracing::warn!(sandbox = %s.id, error = %e, "host unreachable: sandbox ended without it");
                Ok(())
            }
            Err(e) => Err(self.agent_error(AgentCall::Vm, &link.client, e)),
        }
    }

    /// Pauses the team's running sandbox `id`.
    pub async fn pause(&self, team: &TeamId, id: &SandboxId) -> SandboxResult<SandboxRow> {
        let s = self.lookup(team, id).await?;
        if s.status != SandboxStatus::Running {
            return Err(not_in(&s, SandboxStatus::Running, "pause"));
        }
        self.pause_row(&s).await?;
        self.lookup(team, id).await
    }

    /// Pauses a running sandbox on its host (memory and device state saved, the VM process
    /// ended).
    pub async fn pause_row(&self, s: &SandboxRow) -> SandboxResult<()> {
        self.pause_row_for(s, BY_REQUEST).await
    }

    /// [`Self::pause_row`] for `by` (a request, the idle timeout), as its log line says.
    pub async fn pause_row_for(&self, s: &SandboxRow, by: &'static str) -> SandboxResult<()> {
        let log = self.oplog(Operation::Pause, s, by);
        let result = self.pause_on_host(s).await;
        log.finish(self, &result, None);
        result
    }

    async fn pause_on_host(&self, s: &SandboxRow) -> SandboxResult<()> {
        let link = self.host_of(s).await?;
        link.client
            .pause_vm(&s.id)
            .await
            .map_err(|e| self.agent_error(AgentCall::Vm, &link.client, e))?;
        let sid = s.id.clone();
        self.st
            .db
            .call(move |c| sandboxes::settle(c, &sid, SandboxStatus::Paused, None))
            .await?;
        Ok(())
    }

    /// Resumes the team's paused sandbox `id` on the host that holds its memory. A deadline that
    /// passed (and paused it) is removed: it did its work; set a new one with
    /// [`Self::set_deadline`].
    pub async fn resume(&self, team: &TeamId, id: &SandboxId) -> SandboxResult<SandboxRow> {
        self.resume_until(team, id, None).await
    }

    /// Resumes like [`Self::resume`]; a deadline that passed becomes `renew_sec` from now
    /// (None: removed).
    pub async fn resume_until(
        &self,
        team: &TeamId,
        id: &SandboxId,
        renew_sec: Option<u64>,
    ) -> SandboxResult<SandboxRow> {
        if let Some(n) = renew_sec {
            rules::check_deadline("timeout", n)?;
        }
        let s = self.lookup(team, id).await?;
        if s.status != SandboxStatus::Paused {
            return Err(not_in(&s, SandboxStatus::Paused, "resume"));
        }
        let link = self.host_of(&s).await?;
        if !link.online {
            return Err(SandboxError::Host {
                code: "host_unreachable",
                message:
                    "the sandbox's host is not online; it resumes only where its memory is saved"
                        .into(),
            });
        }
        let log = self.oplog(Operation::Resume, &s, BY_REQUEST);
        let result = self.resume_on_host(&s, &link, renew_sec).await;
        log.finish(self, &result, None);
        result?;
        self.lookup(team, id).await
    }

    async fn resume_on_host(
        &self,
        s: &SandboxRow,
        link: &super::HostLink,
        renew_sec: Option<u64>,
    ) -> SandboxResult<()> {
        // A paused sandbox holds no quota; running again it does: it counts as running from
        // before the host is asked, so concurrent resumes and creates see it (if the server dies
        // meanwhile, the monitor finds the VM paused or running and records which).
        // A deadline that passed goes first: the sandbox counts as running from the next step,
        // and the monitor would pause or end it again at once.
        let sid = s.id.clone();
        self.st
            .db
            .call(move |c| {
                let now = crate::server::db::now();
                if sandboxes::get_any(c, &sid)?
                    .and_then(|r| r.end_at)
                    .is_some_and(|end| end <= now)
                {
                    sandboxes::set_end_at(c, &sid, renew_sec.map(|n| now + n as i64))?;
                }
                Ok(())
            })
            .await?;
        self.reserve_resume(s).await?;
        if let Err(e) = link.client.resume_vm(&s.id).await {
            let sid = s.id.clone();
            if let Err(back) = self
                .st
                .db
                .call(move |c| sandboxes::settle(c, &sid, SandboxStatus::Paused, None))
                .await
            {
                tracing::warn!(sandbox = %s.id, error = %back, "recording a failed resume");
            }
            return Err(self.agent_error(AgentCall::Vm, &link.client, e));
        }
        let sid = s.id.clone();
        self.st
            .db
            .call(move |c| {
                sandboxes::settle(c, &sid, SandboxStatus::Running, None)?;
                sandboxes::touch(c, &sid)
            })
            .await?;
        Ok(())
    }

    /// Sets the idle timeout, counting from now (so it also extends it); 0 = never. `on_timeout`
    /// as the request spells it; None keeps the sandbox's.
    pub async fn set_timeout(
        &self,
        team: &TeamId,
        id: &SandboxId,
        timeout_sec: u64,
        on_timeout: Option<&str>,
    ) -> SandboxResult<SandboxRow> {
        rules::check_timeout(timeout_sec)?;
        let on_timeout = on_timeout.map(rules::parse_on_timeout).transpose()?;
        let s = self.lookup(team, id).await?;
        if s.status.is_terminal() {
            return Err(SandboxError::conflict(
                "invalid_transition",
                format!("the sandbox is {}", s.status),
            ));
        }
        let sid = s.id.clone();
        self.st
            .db
            .call(move |c| sandboxes::set_timeout(c, &sid, timeout_sec, on_timeout))
            .await?;
        self.lookup(team, id).await
    }

    /// Replaces a running or paused sandbox's egress policy, on its host first.
    pub async fn set_network(
        &self,
        team: &TeamId,
        id: &SandboxId,
        mut policy: EgressPolicy,
    ) -> SandboxResult<SandboxRow> {
        policy
            .validate()
            .map_err(|(f, m)| SandboxError::invalid(f, m))?;
        let s = self.lookup(team, id).await?;
        if s.egress.is_none() {
            return Err(SandboxError::conflict(
                "no_network",
                "the sandbox was created without a network device; its policy cannot be set",
            ));
        }
        if !matches!(s.status, SandboxStatus::Running | SandboxStatus::Paused) {
            return Err(SandboxError::conflict(
                "invalid_transition",
                format!(
                    "cannot change the network of a sandbox that is {} (it must be running or paused)",
                    s.status
                ),
            ));
        }
        let link = self.host_of(&s).await?;
        if !link.online {
            return Err(SandboxError::Host {
                code: "host_unreachable",
                message: "the sandbox's host is not online".into(),
            });
        }
        let applied = link
            .client
            .set_vm_network(&s.id, &policy)
            .await
            .map_err(|e| self.agent_error(AgentCall::Vm, &link.client, e))?;
        let sid = s.id.clone();
        self.st
            .db
            .call(move |c| sandboxes::set_egress(c, &sid, &applied))
            .await?;
        self.lookup(team, id).await
    }

    /// Runs a command to completion in the team's running sandbox `id`. The request is checked
    /// by the caller (the same rule at every hop).
    pub async fn exec(
        &self,
        team: &TeamId,
        id: &SandboxId,
        req: &ExecRequest,
    ) -> SandboxResult<ExecResponse> {
        let s = self.lookup(team, id).await?;
        if s.status != SandboxStatus::Running {
            return Err(SandboxError::not_running(s.status));
        }
        let link = self.host_of(&s).await?;
        let out = link
            .client
            .exec(&s.id, req)
            .await
            .map_err(|e| self.agent_error(AgentCall::Vm, &link.client, e))?;
        self.touch(&s.id).await?;
        Ok(out)
    }

    /// The last `tail` bytes (at most [`MAX_LOG_TAIL`]) of the guest's console log.
    pub async fn logs(
        &self,
        team: &TeamId,
        id: &SandboxId,
        tail: u64,
    ) -> SandboxResult<bytes::Bytes> {
        let tail = tail.min(MAX_LOG_TAIL);
        let s = self.lookup(team, id).await?;
        if s.status.is_terminal() {
            return Err(SandboxError::conflict(
                "sandbox_not_running",
                format!("the sandbox is {}; its log went with it", s.status),
            ));
        }
        let link = self.host_of(&s).await?;
        let vm_error = |e: AgentError| self.agent_error(AgentCall::Vm, &link.client, e);
        let resp = link
            .client
            .stream(
                reqwest::Method::GET,
                &format!("/v1/vms/{}/logs?tail_bytes={tail}", s.id),
                None,
                Some(std::time::Duration::from_secs(30)),
            )
            .await
            .map_err(vm_error)?;
        read_capped(resp, tail as usize + (64 << 10))
            .await
            .map_err(vm_error)
    }

    /// What the idle timeout does to a sandbox past it: pause it, or end it when it was created
    /// to be killed. Returns what it did.
    pub async fn expire_idle(&self, s: &SandboxRow) -> SandboxResult<OnTimeout> {
        self.expire(s, BY_IDLE_TIMEOUT).await
    }

    /// Pauses a running sandbox, or ends it when it was created to be killed (`why` is recorded
    /// on an ended one). Returns what it did.
    pub(super) async fn expire(
        &self,
        s: &SandboxRow,
        why: &'static str,
    ) -> SandboxResult<OnTimeout> {
        match s.on_timeout {
            OnTimeout::Kill => {
                let log = self.oplog(Operation::Delete, s, why);
                let result = self.kill_expired(s, why).await;
                log.finish(self, &result, None);
                result?;
            }
            OnTimeout::Pause => self.pause_row_for(s, why).await?,
        }
        Ok(s.on_timeout)
    }

    async fn kill_expired(&self, s: &SandboxRow, why: &'static str) -> SandboxResult<()> {
        self.destroy_on_host(s).await?;
        let sid = s.id.clone();
        self.st
            .db
            .call(move |c| {
                sandboxes::settle(c, &sid, SandboxStatus::Stopped, Some(why))?;
                sandboxes::set_end_reason(c, &sid, why)
            })
            .await?;
        Ok(())
    }
}
