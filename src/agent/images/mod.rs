//! Guest kernel and templates: what a VM boots from.
//!
//! A template lives in `data_dir/templates/<name>/` as `rootfs.ext4` (read-only base image),
//! `initrd.gz` (busybox + virtio modules; mounts /dev/vda and switches to it) and `stamp` (what it
//! was built from). Each VM gets a qcow2 overlay on the base, so creating one copies nothing.

mod cpio;
pub mod debian;
pub mod import;
mod minimal;
pub mod tree;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

pub use debian::{BASE, DEBIAN};
pub use minimal::MINIMAL;

/// The templates agents build themselves (the server refuses these names for snapshots).
pub const BASE_TEMPLATES: [&str; 3] = [MINIMAL, DEBIAN, BASE];

/// The guest kernel, as installed by install.sh into the agent's kernel dir.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub vmlinuz: PathBuf,
    pub version: String,
    /// The kernel's `modules/` tree (`modules/kernel/drivers/…`).
    pub modules: PathBuf,
}

impl Kernel {
    pub fn find(kernel_dir: &Path) -> anyhow::Result<Kernel> {
        let vmlinuz = kernel_dir.join("vmlinuz");
        if !vmlinuz.is_file() {
            bail!(
                "no guest kernel at {} (install.sh puts one there)",
                vmlinuz.display()
            );
        }
        let version = std::fs::read_to_string(kernel_dir.join("version"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Ok(Kernel {
            vmlinuz,
            version,
            modules: kernel_dir.join("modules"),
        })
    }

    /// Path of module `name` (`virtio_blk`), searched in the modules tree.
    pub fn module(&self, name: &str) -> anyhow::Result<PathBuf> {
        let file = format!("{name}.ko");
        find_file(&self.modules, &file).with_context(|| {
            format!(
                "kernel module {file} not found under {}",
                self.modules.display()
            )
        })
    }
}

fn find_file(dir: &Path, file: &str) -> Option<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) if e.file_name() == file => return Some(p),
                _ => {}
            }
        }
    }
    None
}

/// A template ready to boot.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub rootfs: PathBuf,
    pub initrd: PathBuf,
}

pub fn templates_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("templates")
}

/// The template called `name`, if it is complete on disk.
pub fn template(data_dir: &Path, name: &str) -> Option<Template> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        return None;
    }
    let dir = templates_dir(data_dir).join(name);
    let t = Template {
        name: name.to_string(),
        rootfs: dir.join("rootfs.ext4"),
        initrd: dir.join("initrd.gz"),
    };
    (dir.join("stamp").is_file() && t.rootfs.is_file() && t.initrd.is_file()).then_some(t)
}

/// Names of the complete templates in `data_dir/templates`.
pub fn list_templates(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(templates_dir(data_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| template(data_dir, n).is_some())
        .collect();
    names.sort();
    names
}

/// Makes sure the `minimal` template exists and matches its inputs; builds it otherwise.
/// Blocking (runs mkfs, strip, gzip): call from `spawn_blocking`.
pub fn ensure_minimal(
    data_dir: &Path,
    kernel: &Kernel,
    guest_binary: &Path,
) -> anyhow::Result<Template> {
    minimal::ensure(data_dir, kernel, guest_binary)
}

/// Replaces `final_dir` with the fully written `tmp_dir` (rename, so a crash never leaves a
/// half-built template in place).
fn install_dir(tmp_dir: &Path, final_dir: &Path) -> anyhow::Result<()> {
    if final_dir.exists() {
        let old = final_dir.with_file_name(format!(
            ".old-{}-{}",
            final_dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("t"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(final_dir, &old)
            .with_context(|| format!("move {} away", final_dir.display()))?;
        std::fs::rename(tmp_dir, final_dir)
            .with_context(|| format!("install {}", final_dir.display()))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(tmp_dir, final_dir)
            .with_context(|| format!("install {}", final_dir.display()))?;
    }
    Ok(())
}

/// Removes leftovers of interrupted image builds (`.build-<template>-*`, `.old-*`, uploads and
/// archive copies of imports; snapshot folders are the VM manager's). A debootstrap cut short can leave filesystems mounted inside
/// its tree: they are unmounted first, and the removal never crosses into another filesystem.
fn clean_leftovers(templates: &Path) {
    for e in std::fs::read_dir(templates).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let ours = name.starts_with(".old-")
            || name.starts_with(".upload-")
            || name.starts_with(".source-")
            || (name.starts_with(".build-")
                && !name.starts_with(".build-snap")
                && !name.starts_with(".build-boot"));
        if ours && let Err(err) = remove_tree(&e.path()) {
            tracing::warn!(dir = %e.path().display(), error = %format!("{err:#}"), "could not remove a build leftover");
        }
    }
}

/// Unmounts everything mounted at or under `dir` (lazily, deepest first).
pub(crate) fn unmount_under(dir: &Path) -> anyhow::Result<()> {
    let Ok(base) = std::fs::canonicalize(dir) else {
        return Ok(());
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&base))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    for p in points {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())?;
        // SAFETY: a valid NUL-terminated path.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            bail!(
                "unmount {}: {}",
                p.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Removes `dir` and everything under it without crossing into other filesystems (after
/// unmounting what is mounted there); what lies on another filesystem is left and reported.
pub(crate) fn remove_tree(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return Ok(());
    };
    unmount_under(dir)?;
    fn walk(p: &Path, dev: u64) -> anyhow::Result<()> {
        let m = std::fs::symlink_metadata(p)?;
        if m.dev() != dev {
            bail!("{} is on another filesystem", p.display());
        }
        if m.is_dir() {
            for e in std::fs::read_dir(p)? {
                walk(&e?.path(), dev)?;
            }
            std::fs::remove_dir(p).with_context(|| format!("remove {}", p.display()))?;
        } else {
            std::fs::remove_file(p).with_context(|| format!("remove {}", p.display()))?;
        }
        Ok(())
    }
    walk(dir, top.dev())
}

/// Copies the guest program into an image, stripped of debug symbols when `strip` is available,
/// executable.
pub fn install_guest_binary(guest_binary: &Path, dest: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let stripped = std::process::Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(dest)
        .arg(guest_binary)
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !stripped {
        std::fs::copy(guest_binary, dest).context("copy the guest binary")?;
    }
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}
