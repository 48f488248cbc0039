//! The boot snapshots of base templates on this host (see [`super::snapshot`] for the
//! layout): which exist, which are being built, and their builds (the template booted once with
//! its RAM in a shared file until the guest program answers, then saved).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::RngExt;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::channel::{ChannelError, GuestChannel};
use super::jail;
use super::qemu::{self, Memory};
use super::record::write_atomic;
use super::snapshot::{
    META, STATE_LIMIT, Shape, Snapshot, SnapshotMeta, install_folder, new_layer_name, read_only,
    remove_folder,
};
use super::{Accel, BOOT_ATTEMPTS, BOOT_TIMEOUT, Qmp, now_unix_ms};
use crate::agent::images::{Kernel, Template};

/// Most boot snapshots kept per base template (one per shape).
pub const MAX_SHAPES: usize = 4;
/// How long a failed boot snapshot build keeps that shape on cold boots.
const RETRY_AFTER: Duration = Duration::from_secs(600);

/// What boot snapshot builds need from the manager.
pub struct HostEnv {
    pub data_dir: PathBuf,
    pub accel: Accel,
    pub kernel: Kernel,
    pub tsc_khz: Option<u64>,
    pub qemu_version: String,
    /// Cold boots allowed at once on this host (sandboxes and boot snapshots alike).
    pub boot_slots: Arc<tokio::sync::Semaphore>,
    /// How template boots are confined (no network namespace: their device leads nowhere).
    pub jail: jail::Jail,
}

#[derive(Default)]
struct Registry {
    /// Builds in progress by `template/shape`; the value turns true when one ends.
    building: HashMap<String, watch::Receiver<bool>>,
    failed: HashMap<String, Instant>,
    tasks: Vec<AbortHandle>,
    /// QEMU processes of builds in progress (killed when the manager goes away).
    pids: HashSet<u32>,
}

/// The boot snapshots of base templates on this host: which exist, which are being built.
pub struct BootSnapshots {
    pub env: HostEnv,
    reg: Mutex<Registry>,
}

impl BootSnapshots {
    pub fn new(env: HostEnv) -> BootSnapshots {
        BootSnapshots {
            env,
            reg: Mutex::new(Registry::default()),
        }
    }

    fn reg(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.reg.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshots_dir(&self, template: &Template) -> PathBuf {
        template
            .rootfs
            .parent()
            .map(|p| p.join("snapshots"))
            .unwrap_or_else(|| {
                self.env
                    .data_dir
                    .join("templates")
                    .join(&template.name)
                    .join("snapshots")
            })
    }

    fn key(template: &Template, shape: Shape) -> String {
        format!("{}/{}", template.name, shape.key())
    }

    /// The usable boot snapshot of `template` for `shape`; removes one that this host cannot
    /// restore (another QEMU, accelerator or template build).
    pub fn ready(&self, template: &Template, shape: Shape) -> Option<Snapshot> {
        let dir = self.snapshots_dir(template).join(shape.key());
        let snap = Snapshot::load(&dir)?;
        let stamp = std::fs::read_to_string(template_stamp(template)).ok();
        let why = snap
            .incompatible(self.env.accel.kind, &self.env.qemu_version)
            .or_else(|| (snap.meta.stamp != stamp).then(|| "the template was rebuilt".to_string()));
        match why {
            None => Some(snap),
            Some(why) => {
                tracing::info!(template = %template.name, shape = %shape.key(), %why, "dropping a boot snapshot");
                let _ = remove_folder(&dir);
                None
            }
        }
    }

    /// The boot snapshot for `shape`, waiting for a build of it that is in progress (never
    /// starting one).
    pub async fn ready_or_wait(
        &self,
        template: &Template,
        shape: Shape,
        wait: Duration,
    ) -> Option<Snapshot> {
        if let Some(s) = self.ready(template, shape) {
            return Some(s);
        }
        let rx = self
            .reg()
            .building
            .get(&Self::key(template, shape))
            .cloned();
        if let Some(mut rx) = rx {
            tracing::debug!(template = %template.name, shape = %shape.key(), "waiting for the boot snapshot being built");
            let _ = tokio::time::timeout(wait, rx.wait_for(|done| *done)).await;
            return self.ready(template, shape);
        }
        None
    }

    /// Starts building the boot snapshot of `template` for `shape` in the background unless it
    /// exists, is being built, failed lately, or the template has its fill of shapes. Returns a
    /// receiver that turns true when the build ends.
    pub fn request(
        self: &Arc<Self>,
        template: &Template,
        shape: Shape,
    ) -> Option<watch::Receiver<bool>> {
        if self.ready(template, shape).is_some() {
            return None;
        }
        let key = Self::key(template, shape);
        let mut reg = self.reg();
        if let Some(rx) = reg.building.get(&key) {
            return Some(rx.clone());
        }
        if reg
            .failed
            .get(&key)
            .is_some_and(|t| t.elapsed() < RETRY_AFTER)
        {
            return None;
        }
        let prefix = format!("{}/", template.name);
        let existing = std::fs::read_dir(self.snapshots_dir(template))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count();
        let in_flight = reg
            .building
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .count();
        if existing + in_flight >= MAX_SHAPES {
            tracing::debug!(template = %template.name, shape = %shape.key(), "boot snapshot shapes full; cold boots only");
            return None;
        }
        let (tx, rx) = watch::channel(false);
        reg.building.insert(key.clone(), rx.clone());
        reg.tasks.retain(|t| !t.is_finished());
        let this = self.clone();
        let template = template.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let result = this.build(&template, shape).await;
            {
                let mut reg = this.reg();
                reg.building.remove(&key);
                match &result {
                    Ok(()) => {
                        reg.failed.remove(&key);
                    }
                    Err(_) => {
                        reg.failed.insert(key.clone(), Instant::now());
                    }
                }
            }
            match result {
                Ok(()) => tracing::info!(
                    template = %template.name,
                    shape = %shape.key(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "boot snapshot ready"
                ),
                Err(e) => {
                    tracing::warn!(template = %template.name, shape = %shape.key(), error = %format!("{e:#}"), "boot snapshot build failed; sandboxes of this shape cold-boot")
                }
            }
            let _ = tx.send(true);
        });
        reg.tasks.push(task.abort_handle());
        Some(rx)
    }

    /// Drops a boot snapshot that failed to restore (it is rebuilt on the next cold boot).
    pub fn invalidate(&self, snap: &Snapshot) {
        if snap.meta.kind == "boot" {
            let _ = remove_folder(&snap.dir);
        }
    }

    /// Stops builds in progress and their QEMUs (the manager is going away).
    pub fn shutdown(&self) {
        let mut reg = self.reg();
        for t in reg.tasks.drain(..) {
            t.abort();
        }
        for pid in reg.pids.drain() {
            qemu::kill(pid, libc::SIGKILL);
        }
    }

    async fn build(&self, template: &Template, shape: Shape) -> anyhow::Result<()> {
        let mut attempt = 1;
        loop {
            match self.build_once(template, shape).await {
                Ok(()) => return Ok(()),
                Err(BuildError::Hung(why)) if attempt < BOOT_ATTEMPTS => {
                    tracing::warn!(template = %template.name, %why, "template boot hung; trying again");
                    attempt += 1;
                }
                Err(BuildError::Hung(why)) => bail!("the template did not come up: {why}"),
                Err(BuildError::Failed(e)) => return Err(e),
            }
        }
    }

    /// Boots `template` with its RAM in a shared file until the guest program answers, then
    /// saves it (`x-ignore-shared`) into `snapshots/<shape>/`.
    async fn build_once(&self, template: &Template, shape: Shape) -> Result<(), BuildError> {
        let snaps = self.snapshots_dir(template);
        std::fs::create_dir_all(&snaps).with_context(|| format!("create {}", snaps.display()))?;
        let tmp = snaps.join(format!(
            ".build-boot-{}-{:08x}",
            shape.key(),
            rand::rng().random::<u32>()
        ));
        let mut guard = BuildGuard {
            dir: tmp.clone(),
            pid: None,
            reg: &self.reg,
        };
        std::fs::create_dir_all(&tmp)?;
        let stamp =
            std::fs::read_to_string(template_stamp(template)).context("read the template stamp")?;
        qemu::link_file(&template.rootfs, &tmp.join(qemu::BASE), false)?;
        qemu::link_file(&template.initrd, &tmp.join(qemu::INITRD), false)?;
        qemu::link_file(&self.env.kernel.vmlinuz, &tmp.join(qemu::KERNEL), true)?;
        let layer = new_layer_name();
        qemu::create_overlay(&tmp, &layer, qemu::BASE, "raw").await?;
        let spec = qemu::LaunchSpec {
            id: &format!("{}-{}", template.name, shape.key()),
            vcpus: shape.vcpus,
            memory_mb: shape.memory_mb,
            net: if shape.network {
                qemu::NetDev::Hub
            } else {
                qemu::NetDev::None
            },
            confined: true,
            accel: &self.env.accel,
            tsc_khz: self.env.tsc_khz,
            memory: Memory::File {
                path: qemu::MEM,
                shared: true,
            },
            disk: &layer,
            incoming: false,
        };
        let _slot = self
            .env
            .boot_slots
            .acquire()
            .await
            .context("boot slots closed")?;
        let j = &self.env.jail;
        jail::hand_over(&tmp, j.uid, j.gid, &[&layer, qemu::CONSOLE_LOG])?;
        let mut child = qemu::spawn(&tmp, &qemu::args(&spec), None, Some(j), false)?;
        let pid = child.id().context("QEMU exited at once")?;
        guard.pid = Some(pid);
        self.reg().pids.insert(pid);
        write_atomic(&qemu::pid_file(&tmp), format!("{pid}\n").as_bytes())?;

        let channel = GuestChannel::new(&tmp, qemu::AGENT_SOCK);
        let hello = tokio::select! {
            r = channel.connect(BOOT_TIMEOUT) => r,
            status = child.wait() => {
                return Err(BuildError::Failed(anyhow::anyhow!(
                    "QEMU exited during the template boot ({status:?}): {}",
                    qemu::console_tail(&tmp, 8)
                )));
            }
        };
        channel.close();
        match hello {
            Ok(_) => {}
            Err(ChannelError::Timeout) => {
                return Err(BuildError::Hung(format!(
                    "no answer in {} s (console: {})",
                    BOOT_TIMEOUT.as_secs(),
                    qemu::console_tail(&tmp, 8)
                )));
            }
            Err(e) => {
                return Err(BuildError::Failed(anyhow::anyhow!(
                    "the guest did not come up: {e}"
                )));
            }
        }
        let mut q = Qmp::connect_wait(&tmp, qemu::QMP_SOCK, Duration::from_secs(5)).await?;
        q.stop().await?;
        q.set_ignore_shared(true).await?;
        q.save_state(qemu::STATE, STATE_LIMIT).await?;
        let _ = q.quit().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        qemu::kill(pid, libc::SIGKILL);
        let _ = child.wait().await;
        self.reg().pids.remove(&pid);
        guard.pid = None;
        let _ = std::fs::remove_file(qemu::pid_file(&tmp));

        for f in [qemu::MEM, layer.as_str()] {
            read_only(&tmp.join(f))?;
        }
        jail::reclaim(&tmp)?;
        let meta = SnapshotMeta {
            kind: "boot".into(),
            base: template.name.clone(),
            vcpus: shape.vcpus,
            memory_mb: shape.memory_mb,
            network: shape.network,
            accel: self.env.accel.kind.to_string(),
            qemu: self.env.qemu_version.clone(),
            memory_file: true,
            layers: vec![qemu::BASE.to_string(), layer],
            created_unix_ms: now_unix_ms(),
            stamp: Some(stamp),
            source_vm: None,
            netdev: Some("hub".into()),
        };
        write_atomic(
            &tmp.join(META),
            &serde_json::to_vec_pretty(&meta).context("meta")?,
        )?;
        install_folder(&tmp, &snaps.join(shape.key()))?;
        guard.disarm();
        Ok(())
    }
}

impl Drop for BootSnapshots {
    fn drop(&mut self) {
        self.shutdown();
    }
}

enum BuildError {
    Hung(String),
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for BuildError {
    fn from(e: E) -> BuildError {
        BuildError::Failed(e.into())
    }
}

/// Kills the build's QEMU and removes its folder unless disarmed (failure, or the task aborted).
struct BuildGuard<'a> {
    dir: PathBuf,
    pid: Option<u32>,
    reg: &'a Mutex<Registry>,
}

impl BuildGuard<'_> {
    fn disarm(&mut self) {
        self.pid = None;
        self.dir = PathBuf::new();
    }
}

impl Drop for BuildGuard<'_> {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            qemu::kill(pid, libc::SIGKILL);
            self.reg
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pids
                .remove(&pid);
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn template_stamp(template: &Template) -> PathBuf {
    template
        .rootfs
        .parent()
        .map(|p| p.join("stamp"))
        .unwrap_or_else(|| PathBuf::from("stamp"))
}
