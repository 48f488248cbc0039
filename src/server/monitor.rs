//! `HostMonitor`: passive — hosts whose heartbeats stopped become unreachable and their sandboxes
//! missing; active — for each online host, what the agent runs is reconciled with the database.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::proto::agent::VmState;
use crate::server::AppState;
use crate::server::db::sandboxes::SandboxRow;
use crate::server::db::{hosts, now, sandboxes};
use crate::server::state::SandboxStatus;

pub struct HostMonitor;

/// What reconciliation decided for one host.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// (sandbox, new status)
    pub changes: Vec<(String, SandboxStatus)>,
    /// VMs on the agent that no live sandbox wants.
    pub orphans: Vec<String>,
}

/// How long a create may take before its `starting` row counts as abandoned even in the process
/// that made it: the agent call's own timeout (`pool::create_vm`) and a margin.
pub const CREATE_DEADLINE_SECS: i64 = 330;

/// Pure: compares the database's live sandboxes on a host with the VMs the agent reports.
/// `abandoned_before`: a `starting`/`pending` sandbox created before then has no create in flight
/// any more (its server crashed, or the call outlived its deadline), so the host decides: a VM
/// there that finished booting makes it `running`; none, or one still booting (which the agent rolls
/// back), makes it `error` (its capacity and quota released).
pub fn reconcile(
    live: &[SandboxRow],
    agent: &HashMap<String, VmState>,
    abandoned_before: i64,
) -> Reconciliation {
    let mut out = Reconciliation::default();
    for s in live {
        let on_agent = agent.get(&s.id).copied();
        let abandoned = s.created_at < abandoned_before;
        let next = match (s.status, on_agent) {
            // A create is in flight; its handler records the outcome.
            (SandboxStatus::Starting | SandboxStatus::Pending, _) if !abandoned => None,
            (SandboxStatus::Starting, Some(VmState::Running | VmState::Paused)) => {
                Some(SandboxStatus::Running)
            }
            // No VM, or one still booting: its caller is gone (the server that asked died, or the
            // call outlived its deadline) and the agent rolls back every create whose caller went
            // away, so the row ends now and the VM goes when its boot ends.
            (SandboxStatus::Starting | SandboxStatus::Pending, _) => Some(SandboxStatus::Error),
            (SandboxStatus::Missing, Some(VmState::Running | VmState::Starting)) => {
                Some(SandboxStatus::Running)
            }
            (SandboxStatus::Missing | SandboxStatus::Running, Some(VmState::Paused)) => {
                Some(SandboxStatus::Paused)
            }
            (SandboxStatus::Paused, Some(VmState::Running)) => Some(SandboxStatus::Running),
            (
                SandboxStatus::Missing | SandboxStatus::Running | SandboxStatus::Paused,
                None | Some(VmState::Stopped),
            ) => Some(SandboxStatus::Stopped),
            _ => None,
        };
        if let Some(n) = next
            && n != s.status
        {
            out.changes.push((s.id.clone(), n));
        }
    }
    for (id, state) in agent {
        let wanted = live.iter().any(|s| &s.id == id && !s.status.is_terminal());
        // A VM still starting is left for the next pass: its create call may be in flight.
        if *state != VmState::Starting && (!wanted || *state == VmState::Stopped) {
            out.orphans.push(id.clone());
        }
    }
    out.orphans.sort();
    out
}

impl HostMonitor {
    /// Runs forever on the state's intervals. A slow or frozen agent never delays the staleness
    /// check: each host's reconciliation runs in its own task, one at a time per host.
    pub async fn run(state: AppState) {
        let interval = state.settings.monitor_interval;
        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = Self::tick(&state, &in_flight).await {
                tracing::warn!(error = %e, "host monitor pass failed");
            }
        }
    }

    /// One pass: the passive staleness check, then reconciliation with every online host (in the
    /// background, skipping hosts whose previous reconciliation is still running).
    pub async fn tick(
        state: &AppState,
        in_flight: &Arc<Mutex<HashSet<String>>>,
    ) -> anyhow::Result<()> {
        let stale = state.settings.host_stale_after.max(Duration::from_secs(1));
        let cutoff = now() - i64::try_from(stale.as_secs()).unwrap_or(i64::MAX);
        let changed = state.db.call(move |c| hosts::mark_stale(c, cutoff)).await?;
        for h in changed {
            tracing::warn!(host = %h, "host missed its heartbeats: unreachable, its sandboxes missing");
        }
        if in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert("timeouts".into())
        {
            let (st, flight) = (state.clone(), in_flight.clone());
            tokio::spawn(async move {
                Self::enforce_timeouts(&st).await;
                flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove("timeouts");
            });
        }
        let online = state.db.call(hosts::schedulable_or_draining).await?;
        for h in online {
            let Some(addr) = h.address.clone() else {
                continue;
            };
            if !in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(h.id.clone())
            {
                continue;
            }
            let (st, flight) = (state.clone(), in_flight.clone());
            tokio::spawn(async move {
                if let Err(e) = Self::reconcile_host(&st, &h.id, &addr).await {
                    tracing::warn!(host = %h.id, error = %e, "reconciliation failed");
                }
                flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&h.id);
            });
        }
        Ok(())
    }

    /// Pauses (or kills, if so created) running sandboxes past their deadline or idle past
    /// their timeout.
    async fn enforce_timeouts(state: &AppState) {
        match state
            .db
            .call(|c| sandboxes::deadline_expired(c, now()))
            .await
        {
            Ok(due) => {
                for s in due {
                    match state.sandboxes().expire_deadline(&s).await {
                        Ok(action) => {
                            tracing::info!(sandbox = %s.id, action = %action, "deadline reached")
                        }
                        Err(e) => {
                            tracing::warn!(sandbox = %s.id, error = %e, "deadline reached but could not {}", s.on_timeout)
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing sandboxes past their deadline"),
        }
        let expired = match state.db.call(|c| sandboxes::idle_expired(c, now())).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "listing idle sandboxes");
                return;
            }
        };
        for s in expired {
            // The service logs the pause or delete once, as done by the idle timeout.
            let _ = state.sandboxes().expire_idle(&s).await;
        }
    }

    async fn reconcile_host(state: &AppState, host_id: &str, addr: &str) -> anyhow::Result<()> {
        let client = state.pool.get(host_id, addr);
        let vms = tokio::time::timeout(Duration::from_secs(10), client.list_vms()).await??;
        let reasons: HashMap<String, String> = vms
            .iter()
            .filter_map(|v| Some((v.id.clone(), v.error.clone()?)))
            .collect();
        let agent: HashMap<String, VmState> = vms.into_iter().map(|v| (v.id, v.state)).collect();
        let hid = host_id.to_string();
        let live = state
            .db
            .call(move |c| sandboxes::live_on_host(c, &hid))
            .await?;
        let abandoned_before = state
            .booted_at
            .max(now().saturating_sub(CREATE_DEADLINE_SECS));
        let plan = reconcile(&live, &agent, abandoned_before);
        if !plan.changes.is_empty() {
            let changes = plan.changes.clone();
            state
                .db
                .call(move |c| {
                    for (id, next) in &changes {
                        let why = match next {
                            SandboxStatus::Stopped => Some(
                                reasons
                                    .get(id)
                                    .map(String::as_str)
                                    .unwrap_or("the VM is gone from its host"),
                            ),
                            SandboxStatus::Error => Some(
                                "the create was interrupted (the server restarted) and its host has no VM for it",
                            ),
                            _ => None,
                        };
                        if let Err(e) = sandboxes::transition(c, id, *next, why) {
                            tracing::debug!(sandbox = %id, error = %e, "reconcile transition skipped");
                        }
                    }
                    Ok(())
                })
                .await?;
            for (id, next) in &plan.changes {
                tracing::info!(host = %host_id, sandbox = %id, status = %next, "reconciled");
            }
        }
        for id in plan.orphans {
            // Re-check: a sandbox created since the listing is not an orphan.
            let sid = id.clone();
            let row = state.db.call(move |c| sandboxes::get_any(c, &sid)).await?;
            if row.is_some_and(|r| !r.status.is_terminal() && r.host_id.as_deref() == Some(host_id))
            {
                continue;
            }
            tracing::warn!(host = %host_id, vm = %id, "destroying an orphan VM");
            if let Err(e) = client.destroy_vm(&id).await {
                tracing::warn!(host = %host_id, vm = %id, error = %e, "could not destroy orphan");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, status: SandboxStatus) -> SandboxRow {
        SandboxRow {
            end_at: None,
            id: id.into(),
            team_id: "t".into(),
            host_id: Some("h".into()),
            template: "minimal".into(),
            status,
            vcpus: 1,
            memory_mb: 256,
            timeout_sec: 0,
            network: true,
            metadata: Default::default(),
            env: Default::default(),
            boot_ms: None,
            created_at: 0,
            started_at: None,
            ended_at: None,
            error: None,
            on_timeout: crate::proto::vocab::OnTimeout::Pause,
            last_active_at: None,
            boot_kind: None,
            egress: None,
            public_ports: false,
        }
    }

    #[test]
    fn reconciliation_plans() {
        use SandboxStatus::*;
        let live = [
            row("missing_alive", Missing),
            row("missing_paused", Missing),
            row("missing_gone", Missing),
            row("running_gone", Running),
            row("running_paused", Running),
            row("running_ok", Running),
            row("starting", Starting),
        ];
        let agent: HashMap<String, VmState> = [
            ("missing_alive", VmState::Running),
            ("missing_paused", VmState::Paused),
            ("running_paused", VmState::Paused),
            ("running_ok", VmState::Running),
            ("orphan", VmState::Running),
            ("orphan_starting", VmState::Starting),
            ("starting", VmState::Starting),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let plan = reconcile(&live, &agent, 0);
        let mut changes = plan.changes.clone();
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            changes,
            vec![
                ("missing_alive".to_string(), Running),
                ("missing_gone".to_string(), Stopped),
                ("missing_paused".to_string(), Paused),
                ("running_gone".to_string(), Stopped),
                ("running_paused".to_string(), Paused),
            ]
        );
        assert_eq!(plan.orphans, vec!["orphan".to_string()]);
        for (id, next) in &plan.changes {
            let from = live.iter().find(|s| &s.id == id).unwrap().status;
            assert!(from.can_become(*next), "{from} -> {next}");
        }
    }

    #[test]
    fn abandoned_creates_follow_their_host() {
        use SandboxStatus::*;
        let old = |id: &str, status| {
            let mut r = row(id, status);
            r.created_at = 100;
            r
        };
        let live = [
            old("vm_running", Starting),
            old("vm_paused", Starting),
            old("vm_starting", Starting),
            old("vm_gone", Starting),
            old("vm_stopped", Starting),
            old("pending", Pending),
            row("in_flight", Starting),
        ];
        let mut young = live[6].clone();
        young.created_at = 500;
        let live = [&live[..6], &[young]].concat();
        let agent: HashMap<String, VmState> = [
            ("vm_running", VmState::Running),
            ("vm_paused", VmState::Paused),
            ("vm_starting", VmState::Starting),
            ("vm_stopped", VmState::Stopped),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // Rows made before 200 have no create in flight any more; the young one has.
        let plan = reconcile(&live, &agent, 200);
        let mut changes = plan.changes.clone();
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            changes,
            vec![
                ("pending".to_string(), Error),
                ("vm_gone".to_string(), Error),
                ("vm_paused".to_string(), Running),
                ("vm_running".to_string(), Running),
                ("vm_starting".to_string(), Error),
                ("vm_stopped".to_string(), Error),
            ]
        );
        for (id, next) in &plan.changes {
            let from = live.iter().find(|s| &s.id == id).unwrap().status;
            assert!(from.can_become(*next), "{from} -> {next}");
        }
        // Nothing changes while the create may still be in flight.
        assert!(reconcile(&live, &agent, 0).changes.is_empty());
    }
}
