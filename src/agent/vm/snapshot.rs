//! Snapshots: a VM's memory and device state plus its frozen disk chain, kept in a folder, from
//! which new VMs are restored.
//!
//! Two kinds share one layout (`meta.json`, `state.bin`, the disk layers, `initrd.gz`, and for boot
//! snapshots `mem.ram`):
//!
//! - **Boot snapshots** of base templates, in `templates/<base>/snapshots/<shape>/`: the template
//!   is booted once with its RAM in a shared file (`mem.ram`) until the guest program answers,
//!   then saved with `x-ignore-shared` (the state file holds only device state, ~60 KB). Sandboxes
//!   map `mem.ram` privately (copy-on-write), so they share the template's pages in the page cache
//!   and never see each other's writes. One per *shape* — memory size, vCPU count and network
//!   device — because a restore needs the same `-m`, `-smp` and devices: the default shape
//!   (256 MB, 1 vCPU, network) is built when the agent starts, any other the first time a sandbox
//!   of that shape is cold-booted (at most [`MAX_SHAPES`] per template).
//! - **Sandbox snapshots** (templates named by the server, `tpl_…`), in `templates/<name>/`: the
//!   sandbox's state saved with its RAM in the stream (~100 MB for 256 MB) and a copy of its
//!   overlay frozen as a new layer; then, while the sandbox goes on, a QEMU that never runs the
//!   guest loads that stream into a shared `mem.ram` and saves it again with `x-ignore-shared`,
//!   so sandboxes restore from it like from a boot snapshot (the stream form is kept if that
//!   fails). The memory size and vCPU count are the sandbox's: sandboxes from it must match.
//!
//! Disk layers are qcow2 overlays that name their backing file relative to their own folder, so
//! every folder that uses a chain (snapshot, VM) holds links to all of its layers under the same
//! names; a VM folder links everything it restores from, so deleting or rebuilding a template never
//! breaks a sandbox made from it, running or paused.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::RngExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::channel::{ChannelError, GuestChannel};
use super::jail;
use super::qemu::{self, Memory};
use super::record::write_atomic;
use super::{Accel, BOOT_ATTEMPTS, BOOT_TIMEOUT, Qmp, now_unix_ms};
use crate::agent::images::{Kernel, Template};

pub const META: &str = "meta.json";
/// Most boot snapshots kept per base template (one per shape).
pub const MAX_SHAPES: usize = 4;
/// The shape built when the agent starts (the server's default sandbox).
pub const DEFAULT_SHAPE: Shape = Shape {
    memory_mb: 256,
    vcpus: 1,
    network: true,
};
/// How long a failed boot snapshot build keeps that shape on cold boots.
const RETRY_AFTER: Duration = Duration::from_secs(600);
/// Longest a save or load of a VM state may take.
pub const STATE_LIMIT: Duration = Duration::from_secs(120);

/// What a restore must match: QEMU's `-m`, `-smp` and the network device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    pub memory_mb: u32,
    pub vcpus: u32,
    pub network: bool,
}

impl Shape {
    /// The folder name: `256m-1c-net`.
    pub fn key(&self) -> String {
        format!(
            "{}m-{}c-{}",
            self.memory_mb,
            self.vcpus,
            if self.network { "net" } else { "nonet" }
        )
    }
}

/// `meta.json` of a snapshot folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// `boot` (a base template's boot snapshot) or `snapshot` (of a sandbox).
    pub kind: String,
    /// The base template the disk chain starts from.
    pub base: String,
    pub vcpus: u32,
    pub memory_mb: u32,
    pub network: bool,
    /// "kvm" or "tcg", and the QEMU that wrote the state: a restore needs the same.
    pub accel: String,
    pub qemu: String,
    /// True: the RAM is `mem.ram` (restore with a private mapping and `x-ignore-shared`); false:
    /// the RAM is in `state.bin`.
    pub memory_file: bool,
    /// The disk chain, bottom (the base ext4 image) to top (the frozen qcow2 a VM's overlay sits
    /// on); file names in the folder.
    pub layers: Vec<String>,
    pub created_unix_ms: u64,
    /// Boot snapshots: the base template's stamp they were made from.
    #[serde(default)]
    pub stamp: Option<String>,
    /// Sandbox snapshots: the sandbox they were taken of.
    #[serde(default)]
    pub source_vm: Option<String>,
    /// The network backend the state was saved with (`hub` or `tap`: interchangeable); none
    /// in snapshots from user-mode networking, which no longer restore.
    #[serde(default)]
    pub netdev: Option<String>,
}

impl SnapshotMeta {
    pub fn shape(&self) -> Shape {
        Shape {
            memory_mb: self.memory_mb,
            vcpus: self.vcpus,
            network: self.network,
        }
    }

    /// The frozen layer a new VM's overlay goes on.
    pub fn top(&self) -> &str {
        self.layers.last().map(String::as_str).unwrap_or(qemu::BASE)
    }
}

/// A snapshot folder ready to restore from.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub meta: SnapshotMeta,
}

impl Snapshot {
    /// Reads `dir/meta.json` and checks that the files it names are there.
    pub fn load(dir: &Path) -> Option<Snapshot> {
        let meta: SnapshotMeta =
            serde_json::from_slice(&std::fs::read(dir.join(META)).ok()?).ok()?;
        let complete = dir.join(qemu::STATE).is_file()
            && dir.join(qemu::INITRD).is_file()
            && (!meta.memory_file || dir.join(qemu::MEM).is_file())
            && !meta.layers.is_empty()
            && meta
                .layers
                .iter()
                .all(|l| safe_name(l) && dir.join(l).is_file());
        complete.then(|| Snapshot {
            dir: dir.to_path_buf(),
            meta,
        })
    }

    /// Why this QEMU cannot restore it, if it cannot.
    pub fn incompatible(&self, accel: &str, qemu_version: &str) -> Option<String> {
        if self.meta.network && self.meta.netdev.is_none() {
            return Some(
                "it was made with user-mode networking, which sandboxes no longer use".into(),
            );
        }
        if self.meta.accel != accel {
            return Some(format!(
                "it was made under {} and this host uses {accel}",
                self.meta.accel
            ));
        }
        if self.meta.qemu != qemu_version {
            return Some(format!(
                "it was made by {:?}, this host runs {qemu_version:?}",
                self.meta.qemu
            ));
        }
        None
    }

    /// Bytes on disk of what this snapshot adds: its state, RAM file and own top layer.
    pub fn size_bytes(&self) -> u64 {
        let mut files = vec![qemu::STATE.to_string()];
        if self.meta.memory_file {
            files.push(qemu::MEM.into());
        }
        if self.meta.layers.len() > 1 {
            files.push(self.meta.top().to_string());
        }
        files.iter().map(|f| allocated(&self.dir.join(f))).sum()
    }
}

/// A plain file name (no path separators, not hidden).
pub fn safe_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains('/') && !name.contains('\0')
}

/// Allocated bytes of a file (sparse files count what they use).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// A fresh name for a frozen disk layer (unique, so chains never hold two layers of one name).
pub fn new_layer_name() -> String {
    let n: u64 = rand::rng().random();
    format!("layer-{n:016x}.qcow2")
}

/// Links every file of `snap` a VM restores from into `dir` (the VM's folder).
pub fn link_snapshot_files(snap: &Snapshot, dir: &Path) -> anyhow::Result<()> {
    for layer in &snap.meta.layers {
        qemu::link_file(&snap.dir.join(layer), &dir.join(layer), false)?;
    }
    qemu::link_file(&snap.dir.join(qemu::INITRD), &dir.join(qemu::INITRD), false)?;
    if snap.meta.memory_file {
        qemu::link_file(&snap.dir.join(qemu::MEM), &dir.join(qemu::MEM), false)?;
    }
    Ok(())
}

/// Replaces `dst` by `src` (a fully written folder), moving the old one away first.
pub fn install_folder(src: &Path, dst: &Path) -> anyhow::Result<()> {
    if dst.exists() {
        let old = dst.with_file_name(format!(
            ".old-{}-{:08x}",
            dst.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
            rand::rng().random::<u32>()
        ));
        std::fs::rename(dst, &old).with_context(|| format!("move {} away", dst.display()))?;
        std::fs::rename(src, dst).with_context(|| format!("install {}", dst.display()))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(src, dst).with_context(|| format!("install {}", dst.display()))?;
    }
    Ok(())
}

/// Removes `dir` (a template or snapshot) by renaming it away first, so a half-removed folder
/// never looks like a template.
pub fn remove_folder(dir: &Path) -> anyhow::Result<()> {
    let gone = dir.with_file_name(format!(
        ".old-{}-{:08x}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
        rand::rng().random::<u32>()
    ));
    std::fs::rename(dir, &gone).with_context(|| format!("remove {}", dir.display()))?;
    std::fs::remove_dir_all(&gone).with_context(|| format!("remove {}", gone.display()))
}

/// Kills a QEMU left running in a build folder by a previous agent, then removes the folder.
pub fn remove_build_leftover(dir: &Path) {
    if let Some(pid) = std::fs::read_to_string(qemu::pid_file(dir))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        && qemu::is_our_qemu(pid, dir)
    {
        qemu::kill(pid, libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while qemu::is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Removes the leftovers of interrupted snapshot builds and saves under `templates/`.
pub fn clean_leftovers(templates: &Path) {
    let mut dirs = vec![templates.to_path_buf()];
    for e in std::fs::read_dir(templates).into_iter().flatten().flatten() {
        dirs.push(e.path().join("snapshots"));
    }
    for d in dirs {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".build-snap")
                || name.starts_with(".build-boot")
                || name.starts_with(".old-")
            {
                remove_build_leftover(&e.path());
            }
        }
    }
}

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

    /// True while a build of `template`/`shape` runs.
    pub fn building(&self, template: &Template, shape: Shape) -> bool {
        self.reg()
            .building
            .contains_key(&Self::key(template, shape))
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

/// Makes a frozen file root's and read-only (its content is shared by every VM restored from
/// it; a VM's QEMU reads it through the link in its own folder, and nothing else can reach it
/// below the data dir, which is root's alone).
pub fn read_only(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::lchown(path, Some(0), Some(0))
        .with_context(|| format!("chown {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
        .with_context(|| format!("chmod {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_keys_and_names() {
        assert_eq!(DEFAULT_SHAPE.key(), "256m-1c-net");
        let s = Shape {
            memory_mb: 512,
            vcpus: 2,
            network: false,
        };
        assert_eq!(s.key(), "512m-2c-nonet");
        assert!(safe_name("layer-00ff.qcow2"));
        for bad in ["", ".x", "a/b", "../x"] {
            assert!(!safe_name(bad), "{bad}");
        }
        let a = new_layer_name();
        assert!(a.starts_with("layer-") && a.ends_with(".qcow2") && a != new_layer_name());
    }
}
