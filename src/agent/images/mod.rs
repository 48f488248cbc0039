//! Guest kernel and templates: what a VM boots from.
//!
//! A template lives in `data_dir/templates/<name>/` as `rootfs.ext4` (read-only base image),
//! `initrd.gz` (busybox + virtio modules; mounts /dev/vda and switches to it) and `stamp` (what it
//! was built from). Each VM gets a qcow2 overlay on the base, so creating one copies nothing.

mod cpio;
mod minimal;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

pub use minimal::MINIMAL;

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

/// Removes leftovers of interrupted builds.
fn clean_leftovers(templates: &Path) {
    for e in std::fs::read_dir(templates).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".build-") || name.starts_with(".old-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
