//! The microVM manager: the one owner of this host's VMs.
//!
//! Each VM is a QEMU (`-M microvm`) in its own session with a folder `data_dir/vms/<id>/`
//! holding its pid file, record (`vm.json`), sockets (QMP, guest channel), console log and qcow2
//! overlay. QEMU outlives the agent; a restarted agent finds its VMs there again.
//!
//! Creating a VM restores the boot snapshot of its template (see [`snapshot`]) when one exists
//! for its shape, and cold-boots otherwise; either way it then gets its identity (Init: id, env,
//! clock, entropy). Pausing saves the memory and device state into the folder (`state.bin`) and
//! ends QEMU; resuming restores it. Everything a VM boots or restores from is linked into its
//! folder, so templates can be rebuilt or deleted under live and paused VMs.
//!
//! Locking: the VM table is a std mutex held only to look up, insert or remove; each VM's mutable
//! state has its own small lock and its guest channel multiplexes concurrent requests, so work on
//! one VM never waits for another. Pause, resume and snapshot of one VM take its `op` lock, one
//! at a time. Template folders are swapped or removed under `templates_lock` (write) while a
//! create links their files under it (read).
//!
//! The manager's work, by concept: [`manager`] (start-up, the VM table, uids, destroy,
//! capacity), [`create`] (checks and attempts), [`boot`] (a new VM's QEMU, cold or from a boot
//! snapshot), [`restore`], [`lifecycle`] (pause, resume, snapshot), [`exec`] and [`stream`],
//! [`files`], [`network`] (egress policy), [`pool`] (the warm pool), [`recovery`] (after an
//! agent restart),
//! [`template_store`] and [`boot_snapshots`], [`sampler`] and [`samples`] (usage samples). A VM
//! is an [`instance::Vm`]: its [`record`] on
//! disk, its [`runtime`] state, which changes only through [`runtime::Runtime::set_state`] (see
//! [`VmState::can_become`]), and its guest [`channel`].

mod bare;
mod boot;
mod boot_snapshots;
pub mod cgroup;
mod channel;
pub mod check;
pub mod counters;
mod create;
mod error;
mod exec;
pub mod files;
mod import;
mod instance;
pub mod jail;
mod lifecycle;
mod manager;
mod network;
pub mod pool;
pub mod ports;
mod qemu;
mod qmp;
mod ram;
mod record;
mod recovery;
mod restore;
mod runtime;
mod sampler;
mod samples;
pub mod snapshot;
mod sock;
mod state_diff;
pub mod stream;
mod template_store;
mod vm_id;

use std::path::PathBuf;
use std::time::Duration;

pub use crate::proto::agent::{CreateVmRequest, VmInfo, VmState};
pub use crate::proto::api::{ExecRequest, ExecResponse};

use crate::agent::images;
pub use bare::{BareRoundTrips, bare_cold_boot, bare_restore, bare_resume, bare_round_trips};
pub use error::VmError;
use error::bad;
pub use import::MAX_IMAGE_BYTES;
use instance::Vm;
pub use manager::VmManager;
pub use qmp::Qmp;
pub use runtime::StateRefused;
pub use template_store::TemplateError;
pub use vm_id::validate_id;

/// Output kept per stream of an exec; the rest is drained and dropped.
pub const OUTPUT_CAP: usize = crate::proto::api::EXEC_OUTPUT_CAP;
pub const DEFAULT_EXEC_TIMEOUT_SEC: u64 = 60;
pub const MAX_VCPUS: u32 = 16;
pub const MIN_MEMORY_MB: u32 = 128;
/// How long one cold boot may take before it counts as hung (TCG on a busy host is slow: 10 s
/// seen with both cores loaded), and how many boots create tries.
const BOOT_TIMEOUT: Duration = Duration::from_secs(45);
const BOOT_ATTEMPTS: u32 = 2;
/// How long a restored guest may take to answer (it answers in well under a second).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(30);
/// The snapshot state a VM is being restored from (a link to the template's `state.bin`).
const INCOMING: &str = "incoming.bin";
/// A pause writes here first and renames to `state.bin` once complete.
const STATE_TMP: &str = "state.tmp";

#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The agent's data dir; VMs live in `data_dir/vms/<id>/`, templates in `data_dir/templates/`.
    pub data_dir: PathBuf,
    /// Holds `vmlinuz`, `version`, `modules/`.
    pub kernel_dir: PathBuf,
    pub accel: AccelChoice,
    /// The program installed in templates as the guest program; None = this executable.
    pub guest_binary: Option<PathBuf>,
    /// Where per-VM cgroups are made.
    pub cgroup_root: cgroup::CgroupChoice,
    /// Cold boots at once (0: one per core).
    pub max_concurrent_boots: usize,
    /// Sandbox networking (namespaces, rules, DNS).
    pub net: crate::agent::net::NetConfig,
    /// Who QEMU runs as and what it may see.
    pub jail: JailConfig,
    /// How far a team's root filesystem archive may expand on import.
    pub import_limits: images::import::Limits,
    /// How often each running VM's CPU, memory and disk are sampled (the `sampler` module).
    pub sample_interval: Duration,
    /// VMs kept restored and waiting for creates (the `pool` module).
    pub warm_pool: pool::WarmPoolConfig,
}

/// QEMU's confinement settings (see [`jail`]).
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// Template boots run as this uid (and gid); VM number n as `uid_base + 1 + n`.
    pub uid_base: u32,
    /// Folders besides the data dir that QEMU must not see (the server's, for a local agent).
    pub hidden: Vec<PathBuf>,
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            uid_base: DEFAULT_UID_BASE,
            hidden: Vec::new(),
        }
    }
}

/// Far above the uids people and packages get; below 2^31 for tools that print signed ids.
pub const DEFAULT_UID_BASE: u32 = 1_900_000_000;

impl VmConfig {
    /// Folders QEMU must not see: the data dir and what the configuration adds.
    fn hidden_dirs(&self) -> Vec<PathBuf> {
        let mut v = vec![self.data_dir.clone()];
        v.extend(self.jail.hidden.iter().cloned());
        v
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone)]
pub struct Accel {
    /// "kvm" or "tcg".
    pub kind: &'static str,
    pub reason: String,
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
