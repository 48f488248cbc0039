//! Creating a sandbox: the request checked against the limits and the team's templates, placed
//! by the scheduler, recorded, and started on its host.

use super::SandboxService;
use super::agent_errors::{self, AgentCall};
use super::error::{SandboxError, SandboxResult};
use super::oplog::{BY_REQUEST, OpLog};
use super::rules::{self, DEFAULT_MEMORY_MB, DEFAULT_TEMPLATE, DEFAULT_TIMEOUT_SEC, DEFAULT_VCPUS};
use super::templates::BASE_TEMPLATES;
use crate::ids::{SandboxId, TeamId};
use crate::proto::agent::CreateVmRequest;
use crate::proto::api::CreateSandboxRequest;
use crate::proto::net::EgressPolicy;
use crate::proto::validate::validate_env;
use crate::proto::vocab::{OnTimeout, TemplateKind};
use crate::server::db::sandboxes::{self, NewSandbox, SandboxRow};
use crate::server::db::{hosts, templates};
use crate::server::prometheus::Operation;
use crate::server::scheduler::PlacementRequest;
use crate::server::state::SandboxStatus;

impl SandboxService<'_> {
    /// Creates a sandbox for `team` on behalf of `user` and waits until it runs (or failed).
    pub async fn create(
        &self,
        team: &TeamId,
        user: &str,
        req: &CreateSandboxRequest,
    ) -> SandboxResult<SandboxRow> {
        let started = std::time::Instant::now();
        let template = req
            .template
            .clone()
            .unwrap_or_else(|| DEFAULT_TEMPLATE.to_string());
        rules::check_template_name("template", &template)?;
        // A team template (a snapshot, which lives on one host and restores with its own size; or
        // an image from the team's own root filesystem, on one host, any size), else a base
        // template some host has ready.
        let (t, n) = (team.clone(), template.clone());
        let own = self
            .st
            .db
            .call(move |c| templates::by_name(c, &t, &n))
            .await?;
        let (vcpus, memory_mb) = match &own {
            Some(t) if t.kind == TemplateKind::Snapshot => {
                let (tv, tm) = (
                    t.vcpus.unwrap_or(DEFAULT_VCPUS),
                    t.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
                );
                if req.vcpus.is_some_and(|v| v != tv) {
                    return Err(SandboxError::invalid(
                        "vcpus",
                        format!("the snapshot '{template}' restores with {tv} vCPU"),
                    ));
                }
                if req.memory_mb.is_some_and(|m| m != tm) {
                    return Err(SandboxError::invalid(
                        "memory_mb",
                        format!("the snapshot '{template}' restores with {tm} MB"),
                    ));
                }
                (tv, tm)
            }
            _ => (
                req.vcpus.unwrap_or(DEFAULT_VCPUS),
                req.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
            ),
        };
        rules::check_size(vcpus, memory_mb)?;
        let timeout_sec = req.timeout_sec.unwrap_or(DEFAULT_TIMEOUT_SEC);
        rules::check_timeout(timeout_sec)?;
        let env = req.env.clone().unwrap_or_default();
        validate_env("env", &env)?;
        let metadata = req.metadata.clone().unwrap_or_default();
        rules::check_metadata("metadata", &metadata)?;
        let mut egress = match &req.network {
            None => Some(EgressPolicy::default()),
            Some(setting) => setting.policy(),
        };
        if let Some(p) = &mut egress {
            p.validate().map_err(|(f, m)| SandboxError::invalid(f, m))?;
        }
        let end_in = req.end_in_sec.unwrap_or(0);
        rules::check_deadline("end_in_sec", end_in)?;
        let end_at = (end_in > 0).then(|| crate::server::db::now() + end_in as i64);
        let on_timeout = match req.on_timeout.as_deref() {
            None => OnTimeout::default(),
            Some(o) => rules::parse_on_timeout(o)?,
        };

        // Place it.
        let all_hosts = self.st.db.call(|c| hosts::list(c, true, &[])).await?;
        if own.is_none()
            && !BASE_TEMPLATES.contains(&template.as_str())
            && !all_hosts
                .iter()
                .filter(|h| h.team_id.is_none() || h.team_id.as_deref() == Some(team.as_str()))
                .any(|h| h.templates.contains(&template))
        {
            return Err(SandboxError::invalid(
                "template",
                format!("no template '{template}' (see GET /v1/templates)"),
            ));
        }
        let placement = PlacementRequest {
            team_id: team.to_string(),
            vcpus,
            memory_mb,
            pinned_host: own.as_ref().and_then(|t| t.host_id.clone()),
            base_template: own.is_none().then(|| template.clone()),
        };
        let id = SandboxId::generate();
        let new = NewSandbox {
            id: id.to_string(),
            team_id: team.to_string(),
            // Chosen by `reserve`.
            host_id: String::new(),
            template: template.clone(),
            vcpus,
            memory_mb,
            timeout_sec,
            network: egress.is_some(),
            egress: egress.clone(),
            metadata,
            env: env.clone(),
            created_by: user.to_string(),
            on_timeout,
            public_ports: req.public_ports.unwrap_or(false),
            end_at,
        };
        let vm = CreateVmRequest {
            id: id.to_string(),
            template: own.as_ref().map(|t| t.id.clone()).unwrap_or(template),
            vcpus,
            memory_mb,
            env,
            network: egress.is_some(),
            egress,
            cold_boot: req.cold_boot.unwrap_or(false),
            access_token: Some(self.access_token(&id).expose().to_string()),
        };
        // Quota, placement and the `starting` row in one transaction: 429 or 503 start nothing.
        let (host_id, addr) = self.reserve(&placement, new).await?;

        // Start it in a task of its own: a caller that goes away mid-create leaves no sandbox
        // stuck in `starting`.
        let client = self.st.pool.get(&host_id, &addr);
        let db = self.st.db.clone();
        let task = tokio::spawn(async move {
            let result = client.create_vm(&vm).await;
            let sid = vm.id.clone();
            let result = result
                .map_err(|e| agent_errors::translate(AgentCall::StartVm, client.host_id(), e));
            let outcome = match &result {
                Ok(info) => {
                    let (boot_ms, boot_kind) = (info.boot_ms, info.boot_kind.clone());
                    db.call(move |c| {
                        sandboxes::transition(c, &sid, SandboxStatus::Running, None)?;
                        sandboxes::set_boot(c, &sid, boot_ms, boot_kind.as_deref())
                    })
                    .await
                }
                Err(e) => {
                    // The tenant reads this on the sandbox: our words, not the host's.
                    let msg = e.to_string();
                    db.call(move |c| {
                        sandboxes::transition(c, &sid, SandboxStatus::Error, Some(&msg)).map(|_| ())
                    })
                    .await
                }
            };
            if let Err(e) = outcome {
                tracing::error!(sandbox = %vm.id, error = %e, "recording sandbox start");
            }
            result
        });
        let result = task
            .await
            .map_err(|e| SandboxError::from(anyhow::anyhow!("create task: {e}")))
            .and_then(|r| r);
        let boot_kind = result.as_ref().ok().and_then(|i| i.boot_kind.clone());
        if let Some(kind) = &boot_kind {
            self.st.metrics.boot(kind);
        }
        OpLog {
            op: Operation::Create,
            sandbox: id.as_str(),
            team: team.as_str(),
            host: Some(host_id.as_str()),
            by: BY_REQUEST,
            started,
        }
        .finish(self, &result, boot_kind.as_deref());
        result?;
        self.lookup(team, &id).await
    }
}
