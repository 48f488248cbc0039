//! The VM record on disk: `vm.json` in the VM's folder, enough to reattach after an agent
//! restart, and the small files written next to it (QEMU's pid file).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::qemu;
use crate::agent::net::SandboxNet;

const RECORD: &str = "vm.json";

/// What is kept on disk about a VM (`vm.json`), enough to reattach after an agent restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct VmRecord {
    pub(super) id: String,
    pub(super) template: String,
    pub(super) vcpus: u32,
    pub(super) memory_mb: u32,
    pub(super) network: bool,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    pub(super) accel: String,
    pub(super) created_unix_ms: u64,
    pub(super) boot_ms: Option<u64>,
    pub(super) boot_kind: Option<String>,
    /// The base template the disk chain starts from (`template` itself for base templates).
    #[serde(default)]
    pub(super) base: String,
    /// The frozen disk chain under `disk.qcow2`, bottom to top (file names in the folder).
    #[serde(default)]
    pub(super) layers: Vec<String>,
    /// RAM is a private mapping of `mem.ram` (restored from a boot snapshot, not yet paused).
    #[serde(default)]
    pub(super) memory_file: bool,
    /// The sandbox's network namespace slot and egress policy (network VMs).
    #[serde(default)]
    pub(super) net: Option<SandboxNet>,
    /// The uid (and gid) its QEMU runs as.
    #[serde(default)]
    pub(super) uid: Option<u32>,
    /// The token envd requires, sent to the guest in every `Init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) access_token: Option<String>,
    /// The name its folder, cgroup and network namespace were made under, when not its id: a
    /// VM handed over from the warm pool keeps its `pool-…` place (see [`super::pool`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) place: Option<String>,
}

impl VmRecord {
    /// The name of its folder, cgroup and network namespace.
    pub(super) fn place(&self) -> &str {
        self.place.as_deref().unwrap_or(&self.id)
    }
}

pub(super) fn read_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(qemu::pid_file(dir))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Writes `path` whole or not at all, private to root (0600): records hold a sandbox's env.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

pub(super) fn write_record(dir: &Path, record: &VmRecord) -> anyhow::Result<()> {
    write_atomic(&dir.join(RECORD), &serde_json::to_vec_pretty(record)?)
}

/// Reads the record in `dir`, if it is there and readable.
pub(super) fn read_record(dir: &Path) -> Option<VmRecord> {
    std::fs::read(dir.join(RECORD))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}
