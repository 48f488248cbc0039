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
//!   of that shape is cold-booted (at most [`super::boot_snapshots::MAX_SHAPES`] per template).
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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::qemu;

pub const META: &str = "meta.json";
/// The shape built when the agent starts (the server's default sandbox).
pub const DEFAULT_SHAPE: Shape = Shape {
    memory_mb: 256,
    vcpus: 1,
    network: true,
};
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
