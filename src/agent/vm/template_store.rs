//! The templates this host holds, as the server sees them: base templates (`minimal`, built at
//! start; `debian`, built on request in the background), sandbox snapshots and images made from
//! a team's own root filesystem (see [`super::import`]).
//!
//! Deleting a snapshot template never affects sandboxes made from it: each VM folder holds links
//! to every file it restores from (see [`super::snapshot`]), so the files live on until the last
//! such VM is destroyed. Base templates cannot be deleted (409).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::boot_snapshots::BootSnapshots;
use super::snapshot::{self, DEFAULT_SHAPE, Snapshot};
use super::{VmError, VmManager};
use crate::agent::images::{self, MINIMAL};
use crate::proto::agent::{TemplateInfo, TemplateStatus};

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("no template {0} on this host")]
    NotFound(String),
    #[error("template {0} already exists on this host")]
    AlreadyExists(String),
    /// Wrong state: a base template, a build in progress.
    #[error("{0}")]
    Conflict(String),
    #[error("body: larger than the {0}-byte limit")]
    TooLarge(u64),
    /// An archive that expands past the host's limits: what it passed.
    #[error("body: {0}")]
    Expands(String),
    #[error(transparent)]
    Vm(#[from] VmError),
}

impl From<anyhow::Error> for TemplateError {
    fn from(e: anyhow::Error) -> TemplateError {
        TemplateError::Vm(VmError::Internal(e))
    }
}

/// A template name: 1 to 64 of `[A-Za-z0-9_.-]`, not starting with '.' (names become folders).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// What a base template build is doing.
#[derive(Debug, Clone)]
struct BuildState {
    status: TemplateStatus,
    progress: Option<String>,
    error: Option<String>,
    started_unix: i64,
}

/// Base template builds in progress or failed, by name.
#[derive(Default)]
pub struct BaseBuilds {
    states: Mutex<HashMap<String, BuildState>>,
    cancel: Arc<AtomicBool>,
}

impl BaseBuilds {
    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<String, BuildState>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_progress(&self, name: &str, progress: &str) {
        if let Some(s) = self.states().get_mut(name) {
            if s.progress.as_deref() != Some(progress) {
                tracing::info!(template = %name, %progress, "template build");
            }
            s.progress = Some(progress.to_string());
        }
    }

    fn finish(&self, name: &str, result: Result<(), String>) {
        let mut states = self.states();
        match result {
            Ok(()) => {
                states.remove(name);
            }
            Err(e) => {
                if let Some(s) = states.get_mut(name) {
                    s.status = TemplateStatus::Failed;
                    s.progress = None;
                    s.error = Some(e);
                }
            }
        }
    }

    /// Stops builds in progress (the manager is going away).
    pub fn shutdown(&self) {
        self.cancel.store(true, Ordering::Release);
    }
}

/// The server's view of a sandbox snapshot template.
pub fn snapshot_info(name: &str, snap: &Snapshot) -> TemplateInfo {
    TemplateInfo {
        name: name.to_string(),
        kind: "snapshot".into(),
        status: TemplateStatus::Ready,
        progress: None,
        error: None,
        size_bytes: snap.size_bytes(),
        has_snapshot: true,
        vcpus: Some(snap.meta.vcpus),
        memory_mb: Some(snap.meta.memory_mb),
        created_at: (snap.meta.created_unix_ms / 1000) as i64,
    }
}

pub(super) fn mtime_secs(path: &Path) -> i64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl VmManager {
    fn base_info(&self, name: &str) -> Option<TemplateInfo> {
        let t = images::template(&self.cfg.data_dir, name)?;
        Some(TemplateInfo {
            name: name.to_string(),
            kind: "base".into(),
            status: TemplateStatus::Ready,
            progress: None,
            error: None,
            size_bytes: snapshot::allocated(&t.rootfs),
            has_snapshot: self.boot.ready(&t, DEFAULT_SHAPE).is_some(),
            vcpus: None,
            memory_mb: None,
            created_at: mtime_secs(&t.rootfs),
        })
    }

    /// Every template on this host: base ones (with builds in progress or failed) and snapshots.
    pub async fn template_infos(&self) -> Vec<TemplateInfo> {
        let data_dir = self.cfg.data_dir.clone();
        let mut out: Vec<TemplateInfo> = Vec::new();
        for name in images::list_templates(&data_dir) {
            if let Some(i) = self.image_info(&name).or_else(|| self.base_info(&name)) {
                out.push(i);
            }
        }
        for (name, b) in self.builds.states().iter() {
            let info = building_info(name, b);
            // A rebuild of a template that is already there shows as building; a failed
            // rebuild leaves the old one ready.
            match out.iter_mut().find(|i| &i.name == name) {
                Some(existing) if b.status == TemplateStatus::Building => {
                    existing.status = b.status;
                    existing.progress = b.progress.clone();
                }
                Some(_) => {}
                None => out.push(info),
            }
        }
        let dir = images::templates_dir(&data_dir);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !valid_name(&name) || out.iter().any(|i| i.name == name) {
                continue;
            }
            if let Some(s) = Snapshot::load(&e.path()).filter(|s| s.meta.kind == "snapshot") {
                out.push(snapshot_info(&name, &s));
            }
        }
        out.sort_by(|a, b| (a.kind != "base", &a.name).cmp(&(b.kind != "base", &b.name)));
        out
    }

    /// Starts building base template `name` in the background (`debian` or `base`; `minimal` is
    /// built at start and only gets its boot snapshot). Idempotent: a build in progress is reported, not
    /// started again; a ready template is rebuilt only when it is out of date.
    pub async fn build_template(&self, name: &str) -> Result<TemplateInfo, TemplateError> {
        if !images::BASE_TEMPLATES.contains(&name) {
            return Err(VmError::BadRequest {
                field: "name",
                message: format!("base templates are {}", images::BASE_TEMPLATES.join(", ")),
            }
            .into());
        }
        if name == MINIMAL {
            if let Some(t) = images::template(&self.cfg.data_dir, MINIMAL) {
                self.boot.request(&t, DEFAULT_SHAPE);
            }
            return self
                .base_info(MINIMAL)
                .ok_or_else(|| TemplateError::NotFound(MINIMAL.into()));
        }
        {
            let mut states = self.builds.states();
            if let Some(b) = states.get(name)
                && b.status == TemplateStatus::Building
            {
                return Ok(building_info(name, b));
            }
            if let Some(t) = images::template(&self.cfg.data_dir, name)
                && images::debian::flavor(name).is_some_and(|f| {
                    images::debian::is_current(f, &t, &self.kernel, &self.guest_binary)
                })
            {
                drop(states);
                self.boot.request(&t, DEFAULT_SHAPE);
                return self
                    .base_info(name)
                    .ok_or_else(|| TemplateError::NotFound(name.into()));
            }
            states.insert(
                name.to_string(),
                BuildState {
                    status: TemplateStatus::Building,
                    progress: Some("starting".into()),
                    error: None,
                    started_unix: (super::now_unix_ms() / 1000) as i64,
                },
            );
        }
        let builds = self.builds.clone();
        let boot = self.boot.clone();
        let (data_dir, kernel, guest) = (
            self.cfg.data_dir.clone(),
            self.kernel.clone(),
            self.guest_binary.clone(),
        );
        let name_owned = name.to_string();
        tokio::spawn(async move {
            let started = Instant::now();
            let result =
                build_debian(&builds, &boot, &name_owned, &data_dir, &kernel, &guest).await;
            match &result {
                Ok(()) => tracing::info!(
                    template = %name_owned,
                    elapsed_s = started.elapsed().as_secs(),
                    "template ready"
                ),
                Err(e) => {
                    tracing::warn!(template = %name_owned, error = %e, "template build failed")
                }
            }
            builds.finish(&name_owned, result);
        });
        let states = self.builds.states();
        Ok(states
            .get(name)
            .map(|b| building_info(name, b))
            .unwrap_or_else(|| {
                building_info(
                    name,
                    &BuildState {
                        status: TemplateStatus::Building,
                        progress: None,
                        error: None,
                        started_unix: 0,
                    },
                )
            }))
    }

    /// Deletes a snapshot template. Sandboxes made from it keep running (and resuming): their
    /// folders hold links to its files.
    pub async fn delete_template(&self, name: &str) -> Result<(), TemplateError> {
        if images::BASE_TEMPLATES.contains(&name) {
            return Err(TemplateError::Conflict(format!(
                "{name} is a base template; base templates are not deleted"
            )));
        }
        if !valid_name(name) {
            return Err(TemplateError::NotFound(name.to_string()));
        }
        let dir = images::templates_dir(&self.cfg.data_dir).join(name);
        let _files = self.templates_lock.write().await;
        let imported = images::template(&self.cfg.data_dir, name)
            .is_some_and(|t| images::import::is_imported(&t));
        if !imported && Snapshot::load(&dir).is_none() && !dir.join(snapshot::META).is_file() {
            return Err(TemplateError::NotFound(name.to_string()));
        }
        snapshot::remove_folder(&dir).context("remove the template")?;
        tracing::info!(template = %name, "template deleted");
        Ok(())
    }
}

fn building_info(name: &str, b: &BuildState) -> TemplateInfo {
    TemplateInfo {
        name: name.to_string(),
        kind: "base".into(),
        status: b.status,
        progress: b.progress.clone(),
        error: b.error.clone(),
        size_bytes: 0,
        has_snapshot: false,
        vcpus: None,
        memory_mb: None,
        created_at: b.started_unix,
    }
}

/// Builds a Debian template, `debian` or `base` (debootstrap, image, initrd: blocking, on a
/// worker thread), then boots it once for its boot snapshot.
async fn build_debian(
    builds: &Arc<BaseBuilds>,
    boot: &Arc<BootSnapshots>,
    name: &str,
    data_dir: &Path,
    kernel: &crate::agent::images::Kernel,
    guest: &Path,
) -> Result<(), String> {
    let (b, d, k, g) = (
        builds.clone(),
        data_dir.to_path_buf(),
        kernel.clone(),
        guest.to_path_buf(),
    );
    let cancel = builds.cancel.clone();
    let flavor = images::debian::flavor(name)
        .ok_or_else(|| format!("{name} is not built with debootstrap"))?;
    let template = tokio::task::spawn_blocking(move || {
        let progress = |p: &str| b.set_progress(flavor.name, p);
        images::debian::build(&d, flavor, &k, &g, &progress, &cancel)
    })
    .await
    .map_err(|e| format!("the build panicked: {e}"))?
    .map_err(|e| format!("{e:#}"))?;
    builds.set_progress(name, "booting for snapshot");
    if let Some(mut rx) = boot.request(&template, DEFAULT_SHAPE) {
        let _ = tokio::time::timeout(Duration::from_secs(300), rx.wait_for(|d| *d)).await;
    }
    if boot.ready(&template, DEFAULT_SHAPE).is_none() {
        tracing::warn!(template = %name, "the template has no boot snapshot; its sandboxes cold-boot");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn template_names() {
        for ok in ["tpl_abc", "my-snap.1", "a"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "..", "x y", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
