//! A team's templates as the service keeps them: names, snapshots of its sandboxes, and the files
//! a template leaves on the one host that holds it.

use super::error::{SandboxError, SandboxResult};
use super::rules::valid_template_name;
use super::{AgentCall, SandboxService};
use crate::ids::{HostId, SandboxId, TeamId, TemplateId};
use crate::proto::agent::SnapshotVmRequest;
use crate::proto::vocab::TemplateKind;
use crate::server::db::templates::{self, TemplateRow};
use crate::server::db::{DbError, hosts, now};
use crate::server::pool::AgentError;
use crate::server::state::SandboxStatus;

/// Names the agents build themselves; a team template cannot take them.
pub const BASE_TEMPLATES: [&str; 3] = ["minimal", "debian", "base"];

/// A name for a team template (trimmed): valid, and not a base template's.
pub fn team_template_name(raw: &str) -> SandboxResult<String> {
    let name = raw.trim().to_string();
    if !valid_template_name(&name) {
        return Err(SandboxError::invalid(
            "name",
            "1 to 64 letters, digits, '-', '_' or '.'",
        ));
    }
    if BASE_TEMPLATES.contains(&name.as_str()) {
        return Err(SandboxError::invalid(
            "name",
            format!("'{name}' is a base template's name"),
        ));
    }
    Ok(name)
}

impl SandboxService<'_> {
    /// The team's own templates (snapshots and imports).
    pub async fn team_templates(&self, team: &TeamId) -> SandboxResult<Vec<TemplateRow>> {
        let t = team.clone();
        Ok(self.st.db.call(move |c| templates::list(c, &t)).await?)
    }

    /// The team's template `name`, if it has one.
    pub async fn team_template(
        &self,
        team: &TeamId,
        name: &str,
    ) -> SandboxResult<Option<TemplateRow>> {
        let (t, n) = (team.clone(), name.to_string());
        Ok(self
            .st
            .db
            .call(move |c| templates::by_name(c, &t, &n))
            .await?)
    }

    /// The team's template `name` when it is free, or the one `overwrite` replaces; 409
    /// `already_exists` otherwise.
    pub async fn claim_template_name(
        &self,
        team: &TeamId,
        name: &str,
        overwrite: bool,
    ) -> SandboxResult<Option<TemplateRow>> {
        let existing = self.team_template(team, name).await?;
        if existing.is_some() && !overwrite {
            return Err(SandboxError::conflict(
                "already_exists",
                format!(
                    "the team already has a template '{name}'; pass ?overwrite=true to replace it"
                ),
            ));
        }
        Ok(existing)
    }

    /// Keeps the team's sandbox `sandbox_id` (memory and disk) as its template `name` on the
    /// sandbox's host. The sandbox goes on as it was (running or paused).
    pub async fn snapshot(
        &self,
        team: &TeamId,
        user: &str,
        sandbox_id: &SandboxId,
        name: &str,
        overwrite: bool,
    ) -> SandboxResult<TemplateRow> {
        let name = team_template_name(name)?;
        let s = self.lookup(team, sandbox_id).await?;
        if !matches!(s.status, SandboxStatus::Running | SandboxStatus::Paused) {
            return Err(SandboxError::conflict(
                "invalid_transition",
                format!("cannot snapshot a sandbox that is {}", s.status),
            ));
        }
        let existing = self.claim_template_name(team, &name, overwrite).await?;
        let id = existing
            .as_ref()
            .map(|t| t.id.clone())
            .unwrap_or_else(|| TemplateId::generate().into_string());
        let link = self.host_of(&s).await?;
        let info = link
            .client
            .snapshot_vm(
                &s.id,
                &SnapshotVmRequest {
                    template: id.clone(),
                    overwrite,
                },
            )
            .await
            .map_err(|e| self.agent_error(AgentCall::Vm, &link.client, e))?;
        let row = TemplateRow {
            id,
            team_id: team.to_string(),
            name,
            kind: TemplateKind::Snapshot,
            host_id: s.host_id.clone(),
            vcpus: Some(s.vcpus),
            memory_mb: Some(s.memory_mb),
            size_bytes: Some(info.size_bytes),
            source_sandbox_id: Some(s.id.clone()),
            created_at: now(),
        };
        let uid = user.to_string();
        let saved = self
            .st
            .db
            .call(move |c| templates::upsert(c, &row, overwrite, &uid))
            .await?;
        // Replaced by a snapshot taken on another host: the old host's copy goes.
        if let Some(old) = existing.filter(|e| e.host_id != saved.host_id) {
            self.delete_template_files(&old).await;
        }
        Ok(saved)
    }

    /// Deletes the team's template `id_or_name` and its files on its host.
    pub async fn delete_template(
        &self,
        team: &TeamId,
        user: &str,
        id_or_name: &str,
    ) -> SandboxResult<()> {
        let t = {
            let (team, id) = (team.clone(), id_or_name.to_string());
            self.st
                .db
                .call(move |c| match templates::get(c, &team, &id) {
                    Ok(t) => Ok(t),
                    Err(DbError::NotFound) => {
                        templates::by_name(c, &team, &id)?.ok_or(DbError::NotFound)
                    }
                    Err(e) => Err(e),
                })
                .await
                .map_err(SandboxError::not_found_as("template"))?
        };
        self.delete_template_files(&t).await;
        let (team, uid) = (team.clone(), user.to_string());
        self.st
            .db
            .call(move |c| templates::delete(c, &team, &t.id, &uid))
            .await?;
        Ok(())
    }

    /// Removes a team template's files (its disk and, for a snapshot, the guest's memory) from
    /// the one host that holds them. A host that cannot be reached keeps them: logged, not fatal.
    pub async fn delete_template_files(&self, t: &TemplateRow) {
        let Some(hid) = t.host_id.clone().map(HostId::from_stored) else {
            return;
        };
        let h = match self.st.db.call(move |c| hosts::get(c, &hid)).await {
            Ok(h) => h,
            Err(DbError::NotFound) => return,
            Err(e) => {
                tracing::warn!(template = %t.id, error = %e, "could not look up a template's host");
                return;
            }
        };
        let Some(addr) = h.address else { return };
        match self.st.pool.get(&h.id, &addr).delete_template(&t.id).await {
            Ok(()) | Err(AgentError::Remote { status: 404, .. }) => {}
            Err(e) => {
                tracing::warn!(host = %h.id, template = %t.id, error = %e, "host could not delete template files")
            }
        }
    }
}
