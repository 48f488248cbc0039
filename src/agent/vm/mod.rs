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

mod bare;
pub mod cgroup;
pub use bare::{bare_cold_boot, bare_restore};
pub use import::MAX_IMAGE_BYTES;
mod channel;
pub mod check;
pub mod files;
mod import;
pub mod jail;
mod lifecycle;
mod qemu;
mod qmp;
mod ram;
pub mod snapshot;
mod sock;
pub mod stream;
mod templates;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use crate::proto::agent::{CreateVmRequest, VmInfo, VmState};
pub use crate::proto::api::{ExecRequest, ExecResponse};

use crate::agent::images::{self, Kernel, MINIMAL, Template};
use crate::agent::net::{Network, SandboxNet};
use crate::proto::api::json_text_capped;
use crate::proto::guest::{ExecStart, Init};
use crate::proto::net::EgressPolicy;
use crate::proto::validate::{Invalid, validate_env};
use channel::{ChannelError, GuestChannel};
pub use qmp::Qmp;
use snapshot::{BootSnapshots, HostEnv, STATE_LIMIT, Shape, Snapshot};
pub use templates::TemplateError;

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
/// How often console logs are checked against their size limit.
const CONSOLE_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// A pause writes here first and renames to `state.bin` once complete.
const STATE_TMP: &str = "state.tmp";
/// Extra time the host waits beyond an exec's own timeout (the guest enforces that one).
const EXEC_GRACE: Duration = Duration::from_secs(30);
const RECORD: &str = "vm.json";

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
/// VMs one agent numbers (uids `uid_base + 1 ..`).
const MAX_VM_UIDS: u32 = 1 << 20;

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

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("no VM {0}")]
    NotFound(String),
    /// Wrong state, already exists.
    #[error("{0}")]
    Conflict(String),
    #[error("{field}: {message}")]
    BadRequest {
        field: &'static str,
        message: String,
    },
    #[error("guest did not answer: {0}")]
    GuestUnavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn bad(field: &'static str, message: impl Into<String>) -> VmError {
    VmError::BadRequest {
        field,
        message: message.into(),
    }
}

impl From<Invalid> for VmError {
    fn from(e: Invalid) -> Self {
        let message = match e.key {
            Some(k) => format!("{k}: {}", e.message),
            None => e.message,
        };
        bad(e.field, message)
    }
}

/// What is kept on disk about a VM (`vm.json`), enough to reattach after an agent restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VmRecord {
    id: String,
    template: String,
    vcpus: u32,
    memory_mb: u32,
    network: bool,
    #[serde(default)]
    env: BTreeMap<String, String>,
    accel: String,
    created_unix_ms: u64,
    boot_ms: Option<u64>,
    boot_kind: Option<String>,
    /// The base template the disk chain starts from (`template` itself for base templates).
    #[serde(default)]
    base: String,
    /// The frozen disk chain under `disk.qcow2`, bottom to top (file names in the folder).
    #[serde(default)]
    layers: Vec<String>,
    /// RAM is a private mapping of `mem.ram` (restored from a boot snapshot, not yet paused).
    #[serde(default)]
    memory_file: bool,
    /// The sandbox's network namespace slot and egress policy (network VMs).
    #[serde(default)]
    net: Option<SandboxNet>,
    /// The uid (and gid) its QEMU runs as.
    #[serde(default)]
    uid: Option<u32>,
}

#[derive(Debug)]
struct Runtime {
    state: VmState,
    pid: Option<u32>,
    boot_ms: Option<u64>,
    boot_kind: Option<String>,
    /// Turns true when the current QEMU (our child) has exited and been reaped. None for a
    /// reattached QEMU and while there is none (paused).
    exited: Option<watch::Receiver<bool>>,
    layers: Vec<String>,
    memory_file: bool,
}

impl Runtime {
    fn new(state: VmState) -> Runtime {
        Runtime {
            state,
            pid: None,
            boot_ms: None,
            boot_kind: None,
            exited: None,
            layers: Vec::new(),
            memory_file: false,
        }
    }
}

/// Why a boot attempt failed: hung boots are worth another try.
enum BootError {
    Hung(String),
    Failed(VmError),
}

impl From<VmError> for BootError {
    fn from(e: VmError) -> BootError {
        BootError::Failed(e)
    }
}

impl From<anyhow::Error> for BootError {
    fn from(e: anyhow::Error) -> BootError {
        BootError::Failed(VmError::Internal(e))
    }
}

struct Vm {
    id: String,
    dir: PathBuf,
    record: VmRecord,
    /// The network place in force (the record's, updated by policy changes).
    net: Mutex<Option<SandboxNet>>,
    rt: Mutex<Runtime>,
    channel: GuestChannel,
    destroyed: AtomicBool,
    /// Held by pause, resume and snapshot.
    op: tokio::sync::Mutex<()>,
}

impl Vm {
    fn new(dir: &Path, record: VmRecord, rt: Runtime) -> Vm {
        Vm {
            id: record.id.clone(),
            dir: dir.to_path_buf(),
            net: Mutex::new(record.net.clone()),
            record,
            rt: Mutex::new(rt),
            channel: GuestChannel::new(dir, qemu::AGENT_SOCK),
            destroyed: AtomicBool::new(false),
            op: tokio::sync::Mutex::new(()),
        }
    }

    fn rt(&self) -> std::sync::MutexGuard<'_, Runtime> {
        self.rt.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn net_place(&self) -> Option<SandboxNet> {
        self.net.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn uid(&self) -> u32 {
        self.record.uid.unwrap_or(u32::MAX)
    }

    fn shape(&self) -> Shape {
        Shape {
            memory_mb: self.record.memory_mb,
            vcpus: self.record.vcpus,
            network: self.record.network,
        }
    }

    /// Writes `vm.json` with the current runtime facts.
    fn persist(&self) -> anyhow::Result<()> {
        let mut record = self.record.clone();
        {
            let rt = self.rt();
            record.boot_ms = rt.boot_ms;
            record.boot_kind = rt.boot_kind.clone();
            record.layers = rt.layers.clone();
            record.memory_file = rt.memory_file;
        }
        record.net = self.net_place();
        write_record(&self.dir, &record)
    }

    /// The current info, noticing a QEMU that has gone away.
    fn info(&self) -> VmInfo {
        let mut rt = self.rt();
        if matches!(rt.state, VmState::Running | VmState::Paused)
            && rt.pid.is_some_and(|pid| !qemu::is_alive(pid))
        {
            tracing::warn!(vm = %self.id, "QEMU is gone; marking the VM stopped");
            rt.state = VmState::Stopped;
        }
        VmInfo {
            id: self.id.clone(),
            template: self.record.template.clone(),
            state: rt.state,
            vcpus: self.record.vcpus,
            memory_mb: self.record.memory_mb,
            pid: rt.pid,
            boot_ms: rt.boot_ms,
            boot_kind: rt.boot_kind.clone(),
            error: self.channel.cut_reason().map(|why| {
                format!("the agent stopped it: its guest broke the channel protocol ({why})")
            }),
        }
    }

    /// The answer to a call on a stopped VM, saying why when the guest was cut off.
    fn stopped_error(&self) -> VmError {
        match self.channel.cut_reason() {
            Some(why) => VmError::Conflict(format!(
                "VM {} was stopped: its guest broke the channel protocol ({why})",
                self.id
            )),
            None => VmError::Conflict(format!("VM {} has stopped", self.id)),
        }
    }

    /// Watches the VM's guest channel: a guest cut off for breaking the protocol has its VM
    /// stopped (QEMU killed), with the reason in the log and in the answers to later calls.
    /// Other VMs never notice.
    fn police_guest(self: &Arc<Vm>) {
        let weak = Arc::downgrade(self);
        let mut cut = self.channel.cut_off_watch();
        tokio::spawn(async move {
            let Ok(why) = cut.wait_for(|w| w.is_some()).await.map(|w| w.clone()) else {
                return; // the channel is gone with its VM
            };
            let Some(vm) = weak.upgrade() else { return };
            tracing::error!(
                vm = %vm.id,
                reason = why.as_deref().unwrap_or(""),
                "the guest broke the channel protocol: its channel is cut off and the VM stopped"
            );
            vm.kill_qemu().await;
            vm.rt().state = VmState::Stopped;
        });
    }

    /// Ends QEMU (SIGKILL) and waits until it is gone.
    async fn kill_qemu(&self) {
        let (pid, exited) = {
            let rt = self.rt();
            (rt.pid, rt.exited.clone())
        };
        let Some(pid) = pid else { return };
        qemu::kill(pid, libc::SIGKILL);
        wait_gone(pid, exited, Duration::from_secs(10)).await;
    }
}

/// Waits until QEMU `pid` has exited (reaped, when it is our child).
async fn wait_gone(pid: u32, exited: Option<watch::Receiver<bool>>, limit: Duration) {
    let deadline = Instant::now() + limit;
    if let Some(mut rx) = exited {
        let _ = tokio::time::timeout_at(deadline.into(), rx.wait_for(|e| *e)).await;
    }
    while qemu::is_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keeps every running VM's console log under [`qemu::CONSOLE_LOG_MAX`] while the manager lives.
async fn cap_console_logs(mgr: std::sync::Weak<VmManager>) {
    let mut tick = tokio::time::interval(CONSOLE_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(m) = mgr.upgrade() else { return };
        let dirs: Vec<(String, PathBuf)> = m
            .vms()
            .values()
            .filter(|vm| vm.rt().state == VmState::Running)
            .map(|vm| (vm.id.clone(), vm.dir.clone()))
            .collect();
        drop(m);
        for (id, dir) in dirs {
            match tokio::task::spawn_blocking(move || qemu::cap_console_log(&dir)).await {
                Ok(Ok(true)) => tracing::info!(vm = %id, "console log cut to its end"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(vm = %id, error = %e, "could not cut the console log"),
                Err(e) => tracing::warn!(vm = %id, error = %e, "console log check panicked"),
            }
        }
    }
}

/// Where a new VM comes from.
enum Source {
    /// A base template: restored from its boot snapshot for the VM's shape when there is one,
    /// cold-booted otherwise.
    Base(Template),
    /// A sandbox snapshot (`tpl_…`): restored, with no other way to start.
    Snapshot(Snapshot),
}

pub struct VmManager {
    cfg: VmConfig,
    accel: Accel,
    kernel: Kernel,
    tsc_khz: Option<u64>,
    host_cores: u32,
    host_memory_mb: u64,
    cgroups: cgroup::Cgroups,
    /// Cold boots at once; restores do not take one.
    boot_slots: Arc<tokio::sync::Semaphore>,
    vms: Mutex<HashMap<String, Arc<Vm>>>,
    guest_binary: PathBuf,
    boot: Arc<BootSnapshots>,
    builds: Arc<templates::BaseBuilds>,
    templates_lock: tokio::sync::RwLock<()>,
    net: Network,
    /// Sealed RAM images of snapshots, shared by the VMs restored from them.
    ram: ram::RamCache,
    /// VM numbers in use (uid `uid_base + 1 + n`).
    uids: Mutex<std::collections::BTreeSet<u32>>,
}

impl VmManager {
    /// Detects the accelerator, makes sure the `minimal` template is built and current, and
    /// reattaches to VMs a previous agent left running (cleaning up the dead ones).
    pub async fn start(cfg: VmConfig) -> anyhow::Result<Arc<VmManager>> {
        let vms_dir = cfg.data_dir.join("vms");
        std::fs::create_dir_all(&vms_dir)
            .with_context(|| format!("create {}", vms_dir.display()))?;
        private_dir(&cfg.data_dir)?;
        let mut kernel = Kernel::find(&cfg.kernel_dir)?;
        // QEMU sees nothing but its VM's folder: the kernel is linked in from a copy here.
        kernel.vmlinuz = own_kernel_copy(&kernel.vmlinuz, &cfg.data_dir)?;
        let net = Network::start(cfg.net.clone(), &cfg.data_dir)
            .await
            .context("sandbox networking")?;
        let accel = qemu::detect_accel(cfg.accel, &kernel).await;
        tracing::info!(accel = accel.kind, reason = %accel.reason, "VM accelerator");
        let guest_binary = match &cfg.guest_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("find this executable")?,
        };
        let (data_dir, k, g) = (cfg.data_dir.clone(), kernel.clone(), guest_binary.clone());
        tokio::task::spawn_blocking(move || images::ensure_minimal(&data_dir, &k, &g))
            .await
            .context("template build panicked")??;
        let templates_dir = images::templates_dir(&cfg.data_dir);
        tokio::task::spawn_blocking(move || snapshot::clean_leftovers(&templates_dir))
            .await
            .context("template cleanup panicked")?;
        let tsc_khz = qemu::host_tsc_khz();
        let cgroups = cgroup::Cgroups::detect(&cfg.cgroup_root);
        tracing::info!(cgroups = cgroups.summary(), "VM cgroups");
        let host_cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let boot_slots = Arc::new(tokio::sync::Semaphore::new(
            match cfg.max_concurrent_boots {
                0 => host_cores,
                n => n,
            },
        ));
        let boot = Arc::new(BootSnapshots::new(HostEnv {
            data_dir: cfg.data_dir.clone(),
            accel: accel.clone(),
            kernel: kernel.clone(),
            tsc_khz,
            qemu_version: qemu::version().await,
            boot_slots: boot_slots.clone(),
            jail: jail::Jail {
                uid: cfg.jail.uid_base,
                gid: cfg.jail.uid_base,
                hidden: hidden_dirs(&cfg),
                netns: None,
                ram: None,
            },
        }));
        let mgr = VmManager {
            guest_binary,
            boot,
            builds: Arc::new(templates::BaseBuilds::default()),
            templates_lock: tokio::sync::RwLock::new(()),
            tsc_khz,
            host_cores: host_cores as u32,
            cgroups,
            boot_slots,
            host_memory_mb: host_memory_mb().unwrap_or(1024),
            cfg,
            accel,
            kernel,
            vms: Mutex::new(HashMap::new()),
            net,
            ram: Default::default(),
            uids: Mutex::new(Default::default()),
        };
        mgr.rediscover().await;
        let known: Vec<String> = mgr.vms().keys().cloned().collect();
        let removed = mgr.net.reconcile(&known).await;
        if removed > 0 {
            tracing::info!(removed, "removed network namespaces left without a VM");
        }
        // Each base template is booted once and snapshotted, in the background. A debian
        // template built for another guest program or kernel is rebuilt (the old one serves
        // until the new one is in place).
        for name in images::list_templates(&mgr.cfg.data_dir) {
            let Some(t) = images::template(&mgr.cfg.data_dir, &name) else {
                continue;
            };
            if images::import::is_imported(&t)
                && !images::import::is_current(&t, &mgr.kernel, &mgr.guest_binary)
            {
                tracing::info!(template = %name, "rebuilding an imported template for this guest program and kernel");
                let (d, k, g, old) = (
                    mgr.cfg.data_dir.clone(),
                    mgr.kernel.clone(),
                    mgr.guest_binary.clone(),
                    t.clone(),
                );
                let limits = mgr.cfg.import_limits;
                match tokio::task::spawn_blocking(move || {
                    images::import::rebuild(&d, &k, &g, &old, &limits)
                })
                .await
                {
                    Ok(Ok(new)) => mgr.boot.request(&new, snapshot::DEFAULT_SHAPE),
                    Ok(Err(e)) => {
                        tracing::warn!(template = %name, error = %format!("{e:#}"), "could not rebuild; the old image serves");
                        mgr.boot.request(&t, snapshot::DEFAULT_SHAPE)
                    }
                    Err(e) => {
                        tracing::warn!(template = %name, error = %e, "the rebuild panicked");
                        None
                    }
                };
                continue;
            }
            if name == images::DEBIAN
                && !images::debian::is_current(&t, &mgr.kernel, &mgr.guest_binary)
            {
                tracing::info!("the debian template is out of date; rebuilding it");
                if let Err(e) = mgr.build_template(images::DEBIAN).await {
                    tracing::warn!(error = %e, "could not start the debian rebuild");
                }
            }
            mgr.boot.request(&t, snapshot::DEFAULT_SHAPE);
        }
        let mgr = Arc::new(mgr);
        tokio::spawn(cap_console_logs(Arc::downgrade(&mgr)));
        Ok(mgr)
    }

    pub fn accel(&self) -> &Accel {
        &self.accel
    }

    /// How this host's VMs are put in cgroups.
    pub fn cgroups(&self) -> &cgroup::Cgroups {
        &self.cgroups
    }

    fn vms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Vm>>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn vm_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("vms").join(id)
    }

    /// A live VM; one being destroyed is already gone for every caller.
    fn lookup(&self, id: &str) -> Result<Arc<Vm>, VmError> {
        self.vms()
            .get(id)
            .filter(|vm| !vm.destroyed.load(Ordering::Acquire))
            .cloned()
            .ok_or_else(|| VmError::NotFound(id.to_string()))
    }

    /// Reattaches to live VMs in `data_dir/vms` and removes the rest.
    async fn rediscover(&self) {
        let Ok(entries) = std::fs::read_dir(self.cfg.data_dir.join("vms")) else {
            return;
        };
        for e in entries.flatten() {
            let dir = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            match self.reattach(&name, &dir).await {
                Ok(vm) => {
                    if let Some(n) = vm
                        .record
                        .uid
                        .and_then(|u| u.checked_sub(self.cfg.jail.uid_base + 1))
                    {
                        self.uids().insert(n);
                    }
                    self.reattach_net(&vm).await;
                    let (pid, state) = {
                        let rt = vm.rt();
                        (rt.pid, rt.state)
                    };
                    tracing::info!(vm = %name, ?pid, ?state, "found a VM of a previous agent");
                    self.vms().insert(name, vm);
                }
                Err(why) => {
                    tracing::info!(vm = %name, %why, "removing a VM left by a previous agent");
                    if let Some(pid) = read_pid(&dir)
                        && qemu::is_our_qemu(pid, &dir)
                    {
                        qemu::kill(pid, libc::SIGKILL);
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                    if validate_id(&name).is_ok() {
                        self.cgroups.remove(&name).await;
                    }
                }
            }
        }
    }

    /// Takes back the network of a VM a previous agent left; a paused VM whose namespace is gone
    /// (a host reboot) gets a new one with the same policy.
    async fn reattach_net(&self, vm: &Arc<Vm>) {
        let Some(place) = vm.net_place() else { return };
        let Err(e) = self.net.reattach(&vm.id, &place).await else {
            return;
        };
        if vm.rt().state != VmState::Paused {
            tracing::warn!(vm = %vm.id, error = %format!("{e:#}"), "the running VM's network could not be taken back");
            return;
        }
        match self.net.create(&vm.id, &place.policy).await {
            Ok(n) => {
                *vm.net.lock().unwrap_or_else(|p| p.into_inner()) = Some(n);
                let _ = vm.persist();
            }
            Err(e) => {
                tracing::warn!(vm = %vm.id, error = %format!("{e:#}"), "could not make the paused VM's network again")
            }
        }
    }

    /// Replaces a sandbox's egress policy; it applies at once to new connections.
    pub async fn set_network(
        &self,
        id: &str,
        mut policy: EgressPolicy,
    ) -> Result<EgressPolicy, VmError> {
        policy.validate().map_err(|(f, m)| bad(f, m))?;
        let vm = self.lookup(id)?;
        let Some(mut place) = vm.net_place() else {
            return Err(VmError::Conflict(format!(
                "VM {id} has no network device; its policy cannot be changed"
            )));
        };
        self.net
            .apply(id, &policy)
            .await
            .map_err(|e| VmError::Internal(e.context("applying the egress policy")))?;
        place.policy = policy.clone();
        *vm.net.lock().unwrap_or_else(|p| p.into_inner()) = Some(place);
        vm.persist()?;
        Ok(policy)
    }

    /// The egress policy of a VM (None: no network device).
    pub fn network_of(&self, id: &str) -> Result<Option<EgressPolicy>, VmError> {
        Ok(self.lookup(id)?.net_place().map(|n| n.policy))
    }

    /// This agent's network namespaces (for checks and tests).
    pub fn namespaces(&self) -> Vec<String> {
        self.net.namespaces()
    }

    /// A VM a previous agent left: a live QEMU (running, or stopped by an interrupted pause or
    /// snapshot, which is continued: the server still counts it running) or a saved state
    /// (`state.bin`: paused; a QEMU still around it is ended).
    async fn reattach(&self, name: &str, dir: &Path) -> Result<Arc<Vm>, String> {
        validate_id(name).map_err(|e| e.to_string())?;
        let record: VmRecord = std::fs::read(dir.join(RECORD))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("no readable vm.json")?;
        if record.id != name {
            return Err("vm.json names another VM".into());
        }
        let saved = dir.join(qemu::STATE).is_file();
        let live = read_pid(dir).filter(|pid| qemu::is_our_qemu(*pid, dir));
        let _ = std::fs::remove_file(dir.join(STATE_TMP));
        let (state, pid) = match live {
            Some(pid) => {
                let status = async {
                    let mut q = tokio::time::timeout(
                        Duration::from_secs(5),
                        Qmp::connect(dir, qemu::QMP_SOCK),
                    )
                    .await
                    .map_err(|_| "QMP did not answer".to_string())?
                    .map_err(|e| format!("QMP: {e:#}"))?;
                    let status = q.status().await.map_err(|e| format!("QMP: {e:#}"))?;
                    if status != "running" && !saved {
                        q.cont().await.map_err(|e| format!("continue the VM: {e:#}"))?;
                        tracing::info!(vm = %name, %status, "continued a VM stopped by an interrupted operation");
                        return Ok::<_, String>("running".to_string());
                    }
                    Ok(status)
                }
                .await;
                match (status, saved) {
                    (Ok(s), true) if s == "running" => {
                        // A resume got as far as continuing the VM: its saved state is stale.
                        let _ = std::fs::remove_file(dir.join(qemu::STATE));
                        (VmState::Running, Some(pid))
                    }
                    (Ok(_), false) => (VmState::Running, Some(pid)),
                    (_, true) => {
                        // Stopped around a complete saved state (a pause that did not get to end
                        // QEMU, or a resume that did not get to continue): the state file wins.
                        qemu::kill(pid, libc::SIGKILL);
                        wait_gone(pid, None, Duration::from_secs(10)).await;
                        (VmState::Paused, None)
                    }
                    (Err(e), false) => return Err(e),
                }
            }
            None if saved => (VmState::Paused, None),
            None => return Err("QEMU is not running and there is no saved state".into()),
        };
        if pid.is_none() {
            let _ = std::fs::remove_file(dir.join(qemu::MEM));
        }
        let mut rt = Runtime::new(state);
        rt.pid = pid;
        rt.boot_ms = record.boot_ms;
        rt.boot_kind = record.boot_kind.clone();
        rt.layers = if record.layers.is_empty() {
            vec![qemu::BASE.to_string()]
        } else {
            record.layers.clone()
        };
        rt.memory_file = record.memory_file && pid.is_some();
        let vm = Arc::new(Vm::new(dir, record, rt));
        vm.police_guest();
        if pid.is_none() {
            let _ = vm.persist();
        }
        Ok(vm)
    }

    fn validate(&self, req: &CreateVmRequest) -> Result<Source, VmError> {
        validate_id(&req.id)?;
        let max_vcpus = self.host_cores.clamp(1, MAX_VCPUS);
        if req.vcpus < 1 || req.vcpus > max_vcpus {
            return Err(bad(
                "vcpus",
                format!("must be between 1 and {max_vcpus} on this host"),
            ));
        }
        if u64::from(req.memory_mb) < u64::from(MIN_MEMORY_MB)
            || u64::from(req.memory_mb) > self.host_memory_mb
        {
            return Err(bad(
                "memory_mb",
                format!(
                    "must be between {MIN_MEMORY_MB} and {} on this host",
                    self.host_memory_mb
                ),
            ));
        }
        validate_env("env", &req.env)?;
        if let Some(t) = images::template(&self.cfg.data_dir, &req.template) {
            return Ok(Source::Base(t));
        }
        if let Some(s) = self.snapshot_template(&req.template) {
            if s.meta.vcpus != req.vcpus {
                return Err(bad(
                    "vcpus",
                    format!(
                        "the snapshot {} restores with {} vCPU",
                        req.template, s.meta.vcpus
                    ),
                ));
            }
            if s.meta.memory_mb != req.memory_mb {
                return Err(bad(
                    "memory_mb",
                    format!(
                        "the snapshot {} restores with {} MB",
                        req.template, s.meta.memory_mb
                    ),
                ));
            }
            if let Some(why) = s.incompatible(self.accel.kind, &self.boot.env.qemu_version) {
                return Err(bad(
                    "template",
                    format!(
                        "the snapshot {} cannot be restored on this host: {why}",
                        req.template
                    ),
                ));
            }
            return Ok(Source::Snapshot(s));
        }
        Err(bad(
            "template",
            format!("unknown template {:?} on this host", req.template),
        ))
    }

    /// The sandbox snapshot template called `name`, if complete.
    fn snapshot_template(&self, name: &str) -> Option<Snapshot> {
        if !templates::valid_name(name) {
            return None;
        }
        let dir = images::templates_dir(&self.cfg.data_dir).join(name);
        Snapshot::load(&dir).filter(|s| s.meta.kind == "snapshot")
    }

    /// Starts a VM from a template; returns once the guest program has answered and has its
    /// identity. A sandbox snapshot's network setting wins over the request's (the devices must
    /// be those it was saved with).
    pub async fn create(&self, mut req: CreateVmRequest) -> Result<VmInfo, VmError> {
        let started = Instant::now();
        let source = self.validate(&req)?;
        let base = match &source {
            Source::Base(t) => t.name.clone(),
            Source::Snapshot(s) => {
                req.network = s.meta.network;
                s.meta.base.clone()
            }
        };
        let mut policy = req.network.then(|| req.egress.clone().unwrap_or_default());
        if let Some(p) = &mut policy {
            p.validate().map_err(|(f, m)| bad(f, m))?;
        }
        if self.vms().contains_key(&req.id) {
            return Err(VmError::Conflict(format!("VM {} already exists", req.id)));
        }
        let uid = self.claim_uid()?;
        let net = match &policy {
            Some(p) => match self.net.create(&req.id, p).await {
                Ok(n) => Some(n),
                Err(e) => {
                    self.release_uid(uid);
                    return Err(VmError::Internal(
                        e.context("setting up the sandbox network"),
                    ));
                }
            },
            None => None,
        };
        let id = req.id.clone();
        let result = self
            .create_attempts(req, &source, base, started, uid, net.clone())
            .await;
        if result.is_err() {
            if net.is_some() {
                self.net.destroy(&id, net.as_ref()).await;
            }
            self.release_uid(uid);
        }
        result
    }

    fn uids(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<u32>> {
        self.uids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A uid no other VM of this agent runs as.
    fn claim_uid(&self) -> Result<u32, VmError> {
        let mut used = self.uids();
        let n = (0..MAX_VM_UIDS)
            .find(|n| !used.contains(n))
            .ok_or_else(|| VmError::Conflict("this host runs too many VMs".into()))?;
        used.insert(n);
        Ok(self.cfg.jail.uid_base + 1 + n)
    }

    fn release_uid(&self, uid: u32) {
        if let Some(n) = uid.checked_sub(self.cfg.jail.uid_base + 1) {
            self.uids().remove(&n);
        }
    }

    /// Boots (or restores) the VM, trying a hung cold boot once more.
    async fn create_attempts(
        &self,
        req: CreateVmRequest,
        source: &Source,
        base: String,
        started: Instant,
        uid: u32,
        net: Option<SandboxNet>,
    ) -> Result<VmInfo, VmError> {
        let dir = self.vm_dir(&req.id);
        let mut attempt = 1;
        loop {
            let vm = Arc::new(Vm::new(
                &dir,
                VmRecord {
                    id: req.id.clone(),
                    template: req.template.clone(),
                    vcpus: req.vcpus,
                    memory_mb: req.memory_mb,
                    network: req.network,
                    env: req.env.clone(),
                    accel: self.accel.kind.to_string(),
                    created_unix_ms: now_unix_ms(),
                    boot_ms: None,
                    boot_kind: None,
                    base: base.clone(),
                    layers: Vec::new(),
                    memory_file: false,
                    net: net.clone(),
                    uid: Some(uid),
                },
                Runtime::new(VmState::Starting),
            ));
            vm.police_guest();
            {
                let mut vms = self.vms();
                if vms.contains_key(&req.id) {
                    return Err(VmError::Conflict(format!("VM {} already exists", req.id)));
                }
                vms.insert(req.id.clone(), vm.clone());
            }
            let err = match self.start_vm(&vm, source, started, req.cold_boot).await {
                Ok(info) => return Ok(info),
                Err(e) => e,
            };
            vm.channel.close();
            vm.kill_qemu().await;
            let _ = tokio::fs::remove_dir_all(&dir).await;
            self.cgroups.remove(&req.id).await;
            {
                let mut vms = self.vms();
                if vms.get(&req.id).is_some_and(|v| Arc::ptr_eq(v, &vm)) {
                    vms.remove(&req.id);
                }
            }
            if vm.destroyed.load(Ordering::Acquire) {
                return Err(VmError::NotFound(req.id));
            }
            match err {
                // A cold boot under TCG can stall for good (VM.md: timer calibration on a busy
                // host); a second try usually goes through.
                BootError::Hung(why) if attempt < BOOT_ATTEMPTS => {
                    tracing::warn!(vm = %req.id, attempt, %why, "the guest did not come up; booting again");
                    attempt += 1;
                }
                BootError::Hung(why) => {
                    tracing::warn!(vm = %req.id, %why, "boot failed");
                    return Err(VmError::Internal(anyhow::anyhow!(
                        "the guest did not come up: {why}"
                    )));
                }
                BootError::Failed(e) => {
                    tracing::warn!(vm = %req.id, error = %e, "boot failed");
                    return Err(e);
                }
            }
        }
    }

    /// Starts a VM from its source: a sandbox snapshot is restored; a base template is restored
    /// from its boot snapshot unless `cold` asks for a boot from scratch (or none exists).
    async fn start_vm(
        &self,
        vm: &Arc<Vm>,
        source: &Source,
        started: Instant,
        cold: bool,
    ) -> Result<VmInfo, BootError> {
        let template = match source {
            Source::Snapshot(s) => return self.restore(vm, s, started).await,
            Source::Base(t) => t,
        };
        let shape = vm.shape();
        let snapshot = if cold {
            None
        } else {
            self.boot.ready_or_wait(template, shape, BOOT_TIMEOUT).await
        };
        if let Some(snap) = snapshot {
            match self.restore(vm, &snap, started).await {
                Ok(info) => return Ok(info),
                Err(_) if vm.destroyed.load(Ordering::Acquire) => {
                    return Err(VmError::NotFound(vm.id.clone()).into());
                }
                Err(e) => {
                    let why = match e {
                        BootError::Hung(w) => w,
                        BootError::Failed(e) => e.to_string(),
                    };
                    tracing::warn!(vm = %vm.id, template = %template.name, %why, "restoring the boot snapshot failed; dropping it and cold-booting");
                    self.boot.invalidate(&snap);
                    vm.channel.disconnect();
                    vm.kill_qemu().await;
                    let mut rt = vm.rt();
                    rt.state = VmState::Starting;
                    rt.pid = None;
                    rt.exited = None;
                }
            }
        }
        let info = self.cold_boot(vm, template, started).await?;
        // On demand: the next sandbox of this shape restores instead.
        self.boot.request(template, shape);
        Ok(info)
    }

    /// A fresh, empty VM folder with its record.
    async fn fresh_dir(&self, vm: &Vm) -> anyhow::Result<()> {
        let dir = &vm.dir;
        if dir.exists() {
            // Left over from a VM that is no longer known: it is not running.
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("create {}", dir.display()))?;
        vm.persist()
    }

    fn launch_spec<'a>(
        &'a self,
        vm: &'a Vm,
        incoming: bool,
        memory_file: bool,
    ) -> qemu::LaunchSpec<'a> {
        qemu::LaunchSpec {
            id: &vm.id,
            vcpus: vm.record.vcpus,
            memory_mb: vm.record.memory_mb,
            net: if vm.record.network {
                qemu::NetDev::Tap
            } else {
                qemu::NetDev::None
            },
            confined: true,
            accel: &self.accel,
            tsc_khz: self.tsc_khz,
            memory: qemu::Memory::restored(memory_file),
            disk: qemu::DISK,
            incoming,
        }
    }

    /// Starts QEMU for `vm` and watches it: when it exits while still the VM's QEMU, the VM is
    /// stopped.
    fn spawn_qemu(&self, vm: &Arc<Vm>, spec: &qemu::LaunchSpec<'_>) -> Result<u32, VmError> {
        let args = qemu::args(spec);
        tracing::debug!(vm = %vm.id, ?args, "starting QEMU");
        let cgroup = self
            .cgroups
            .prepare(&vm.id, vm.record.vcpus, vm.record.memory_mb)?;
        let jail = jail::Jail {
            uid: vm.uid(),
            gid: vm.uid(),
            hidden: hidden_dirs(&self.cfg),
            netns: vm.record.network.then(|| self.net.netns_path(&vm.id)),
            ram: match spec.memory {
                qemu::Memory::File { shared: false, .. } => Some(
                    self.ram
                        .get(&vm.dir.join(qemu::MEM))
                        .context("the snapshot's RAM image")?,
                ),
                _ => None,
            },
        };
        jail::hand_over(
            &vm.dir,
            jail.uid,
            jail.gid,
            &[qemu::DISK, qemu::CONSOLE_LOG],
        )?;
        let mut child = qemu::spawn(
            &vm.dir,
            &args,
            cgroup.as_ref(),
            Some(&jail),
            spec.net == qemu::NetDev::Tap,
        )?;
        let pid = child.id().context("QEMU exited at once")?;
        write_atomic(&qemu::pid_file(&vm.dir), format!("{pid}\n").as_bytes())?;
        let (exited_tx, exited_rx) = watch::channel(false);
        {
            let mut rt = vm.rt();
            rt.pid = Some(pid);
            rt.exited = Some(exited_rx);
        }
        let weak = Arc::downgrade(vm);
        tokio::spawn(async move {
            let status = child.wait().await;
            if let Some(vm) = weak.upgrade() {
                let mut rt = vm.rt();
                if rt.pid == Some(pid) {
                    if rt.state != VmState::Stopped {
                        tracing::info!(vm = %vm.id, ?status, "QEMU exited");
                    }
                    rt.state = VmState::Stopped;
                }
            }
            let _ = exited_tx.send(true);
        });
        if vm.destroyed.load(Ordering::Acquire) {
            qemu::kill(pid, libc::SIGKILL);
            return Err(VmError::NotFound(vm.id.clone()));
        }
        Ok(pid)
    }

    /// Boots `template` from its kernel: the fallback when there is no boot snapshot.
    async fn cold_boot(
        &self,
        vm: &Arc<Vm>,
        template: &Template,
        started: Instant,
    ) -> Result<VmInfo, BootError> {
        let dir = &vm.dir;
        {
            let mut rt = vm.rt();
            rt.layers = vec![qemu::BASE.to_string()];
            rt.memory_file = false;
        }
        self.fresh_dir(vm).await?;
        qemu::prepare_disk(dir, &self.kernel, template).await?;
        // Held until the guest answers (or the boot fails): booting is what overloads a host.
        let _slot = self
            .boot_slots
            .acquire()
            .await
            .context("boot slots closed")?;
        let spec = self.launch_spec(vm, false, false);
        self.spawn_qemu(vm, &spec)?;

        // Wait for the guest program, or for QEMU to die, whichever comes first.
        let mut exited = vm.rt().exited.clone().context("no exit watch")?;
        let hello = tokio::select! {
            r = vm.channel.connect(BOOT_TIMEOUT) => r,
            _ = exited.wait_for(|e| *e) => {
                return Err(BootError::Failed(VmError::Internal(anyhow::anyhow!(
                    "QEMU exited during boot: {}", qemu::console_tail(dir, 8)
                ))));
            }
        };
        match hello {
            Ok(h) => {
                tracing::debug!(vm = %vm.id, guest = %h.version, uptime_ms = h.uptime_ms, "guest answered")
            }
            Err(ChannelError::Timeout) => {
                return Err(BootError::Hung(format!(
                    "no answer in {} s (console: {})",
                    BOOT_TIMEOUT.as_secs(),
                    qemu::console_tail(dir, 8)
                )));
            }
            Err(e) => {
                return Err(BootError::Failed(VmError::Internal(anyhow::anyhow!(
                    "the guest did not come up: {e} ({})",
                    qemu::console_tail(dir, 8)
                ))));
            }
        }
        self.finish_start(vm, "cold", started).await
    }

    /// Restores `snap` into `vm`: the snapshot's files linked into the VM's folder, a fresh
    /// overlay on its top layer, QEMU started waiting for the state, the state loaded, the
    /// guest channel connected while the VM continues.
    async fn restore(
        &self,
        vm: &Arc<Vm>,
        snap: &Snapshot,
        started: Instant,
    ) -> Result<VmInfo, BootError> {
        let dir = &vm.dir;
        {
            let mut rt = vm.rt();
            rt.layers = snap.meta.layers.clone();
            rt.memory_file = snap.meta.memory_file;
        }
        self.fresh_dir(vm).await?;
        {
            let _files = self.templates_lock.read().await;
            snapshot::link_snapshot_files(snap, dir)?;
            qemu::link_file(&snap.dir.join(qemu::STATE), &dir.join(INCOMING), false)?;
            if let Err(e) = qemu::seed_console_log(&snap.dir, dir) {
                tracing::warn!(vm = %vm.id, error = %e, "could not copy the snapshot's console log");
            }
        }
        qemu::link_file(&self.kernel.vmlinuz, &dir.join(qemu::KERNEL), true)?;
        qemu::create_overlay(dir, qemu::DISK, snap.meta.top(), "qcow2").await?;
        let spec = self.launch_spec(vm, true, snap.meta.memory_file);
        let prepared = started.elapsed();
        self.spawn_qemu(vm, &spec)?;
        let mut exited = vm.rt().exited.clone().context("no exit watch")?;
        let load = async {
            let mut q = Qmp::connect_wait(dir, qemu::QMP_SOCK, Duration::from_secs(10)).await?;
            if snap.meta.memory_file {
                q.set_ignore_shared(true).await?;
            }
            q.load_state(INCOMING, STATE_LIMIT).await?;
            anyhow::Ok(q)
        };
        let mut q = tokio::select! {
            r = load => r.map_err(|e| {
                VmError::Internal(anyhow::anyhow!("loading the snapshot: {e:#} ({})", qemu::console_tail(dir, 4)))
            })?,
            _ = exited.wait_for(|e| *e) => {
                return Err(BootError::Failed(VmError::Internal(anyhow::anyhow!(
                    "QEMU exited while loading the snapshot: {}", qemu::console_tail(dir, 4)
                ))));
            }
        };
        let loaded = started.elapsed();
        // Connect while the VM starts running: the guest answers at once (VM.md).
        let (hello, cont) = tokio::join!(vm.channel.connect(RESTORE_TIMEOUT), q.cont());
        tracing::debug!(
            vm = %vm.id,
            prepared_ms = prepared.as_millis() as u64,
            loaded_ms = loaded.as_millis() as u64,
            answered_ms = started.elapsed().as_millis() as u64,
            "restore phases"
        );
        cont.context("continue the restored VM")?;
        let _ = std::fs::remove_file(dir.join(INCOMING));
        match hello {
            Ok(h) => {
                tracing::debug!(vm = %vm.id, guest = %h.version, previous = ?h.sandbox_id, "restored guest answered")
            }
            Err(ChannelError::Timeout) => {
                return Err(BootError::Hung(format!(
                    "the restored guest did not answer in {} s",
                    RESTORE_TIMEOUT.as_secs()
                )));
            }
            Err(e) => {
                return Err(BootError::Failed(VmError::Internal(anyhow::anyhow!(
                    "the restored guest did not answer: {e}"
                ))));
            }
        }
        self.finish_start(vm, "snapshot", started).await
    }

    /// Gives the guest its identity (id, env, current clock, fresh entropy) and marks the VM
    /// running.
    async fn finish_start(
        &self,
        vm: &Arc<Vm>,
        kind: &str,
        started: Instant,
    ) -> Result<VmInfo, BootError> {
        send_init(vm)
            .await
            .map_err(|e| VmError::GuestUnavailable(format!("init: {e}")))?;
        let boot_ms = started.elapsed().as_millis() as u64;
        {
            let mut rt = vm.rt();
            if vm.destroyed.load(Ordering::Acquire) || rt.state == VmState::Stopped {
                return Err(VmError::NotFound(vm.id.clone()).into());
            }
            rt.state = VmState::Running;
            rt.boot_ms = Some(boot_ms);
            rt.boot_kind = Some(kind.into());
        }
        vm.persist()?;
        tracing::info!(
            vm = %vm.id,
            boot_ms,
            boot_kind = kind,
            template = %vm.record.template,
            accel = self.accel.kind,
            vcpus = vm.record.vcpus,
            memory_mb = vm.record.memory_mb,
            "VM started"
        );
        Ok(vm.info())
    }

    pub async fn get(&self, id: &str) -> Result<VmInfo, VmError> {
        Ok(self.lookup(id)?.info())
    }

    pub async fn list(&self) -> Vec<VmInfo> {
        let vms: Vec<Arc<Vm>> = self.vms().values().cloned().collect();
        let mut infos: Vec<VmInfo> = vms.iter().map(|v| v.info()).collect();
        infos.sort_by(|a, b| a.id.cmp(&b.id));
        infos
    }

    /// Ends the QEMU process and removes every file of the VM. The VM stays listed (as
    /// stopped) until its files are gone, so a VM missing from the list has left nothing behind.
    pub async fn destroy(&self, id: &str) -> Result<(), VmError> {
        let vm = self.lookup(id)?;
        if vm.destroyed.swap(true, Ordering::AcqRel) {
            // Another caller is destroying it.
            return Err(VmError::NotFound(id.to_string()));
        }
        vm.channel.close();
        vm.kill_qemu().await;
        vm.rt().state = VmState::Stopped;
        self.cgroups.remove(id).await;
        if vm.record.network {
            self.net.destroy(id, vm.net_place().as_ref()).await;
        }
        if let Some(uid) = vm.record.uid {
            self.release_uid(uid);
        }
        let mut last = None;
        for _ in 0..3 {
            match tokio::fs::remove_dir_all(&vm.dir).await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        {
            let mut vms = self.vms();
            if vms.get(id).is_some_and(|v| Arc::ptr_eq(v, &vm)) {
                vms.remove(id);
            }
        }
        if let Some(e) = last {
            return Err(VmError::Internal(anyhow::anyhow!(
                "remove {}: {e}",
                vm.dir.display()
            )));
        }
        tracing::info!(vm = %id, "VM destroyed");
        Ok(())
    }

    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecResponse, VmError> {
        let vm = self.lookup(id)?;
        req.validate()?;
        let timeout = req.timeout_sec.unwrap_or(DEFAULT_EXEC_TIMEOUT_SEC);
        match vm.info().state {
            VmState::Running => {}
            VmState::Starting => {
                return Err(VmError::Conflict(format!("VM {id} is still starting")));
            }
            VmState::Paused => return Err(VmError::Conflict(format!("VM {id} is paused"))),
            VmState::Stopped => return Err(vm.stopped_error()),
        }
        let start = ExecStart {
            cmd: req.cmd,
            args: req.args,
            env: req.env,
            cwd: req.cwd,
            timeout_ms: Some(timeout * 1000),
            stdin: false,
            pty: None,
        };
        let wait = Duration::from_secs(timeout) + EXEC_GRACE;
        let result = vm.channel.exec(&start, OUTPUT_CAP, wait).await;
        let out = match result {
            Ok(out) => out,
            Err(_) if vm.destroyed.load(Ordering::Acquire) => {
                return Err(VmError::NotFound(id.to_string()));
            }
            Err(ChannelError::Guest(msg)) => return Err(VmError::GuestUnavailable(msg)),
            Err(ChannelError::CutOff(_)) => return Err(vm.stopped_error()),
            Err(e) => {
                // A broken connection is retried by the next request.
                vm.channel.disconnect();
                return Err(VmError::GuestUnavailable(e.to_string()));
            }
        };
        tracing::debug!(vm = %id, code = out.exit.exit_code, ms = out.exit.duration_ms, "exec done");
        let (stdout, cut_out) = json_text_capped(&out.stdout, OUTPUT_CAP);
        let (stderr, cut_err) = json_text_capped(&out.stderr, OUTPUT_CAP);
        Ok(ExecResponse {
            stdout,
            stderr,
            exit_code: out.exit.exit_code,
            duration_ms: out.exit.duration_ms,
            timed_out: out.exit.timed_out,
            truncated: out.truncated || cut_out || cut_err,
        })
    }

    /// Capacity figures for heartbeats: (VMs, their memory MB, their vcpus), counting starting
    /// and running VMs.
    pub async fn usage(&self) -> (u32, u64, u32) {
        let vms: Vec<Arc<Vm>> = self.vms().values().cloned().collect();
        let mut n = 0;
        let mut mem = 0u64;
        let mut cpus = 0;
        for vm in vms {
            if matches!(
                vm.info().state,
                VmState::Starting | VmState::Running | VmState::Paused
            ) {
                n += 1;
                mem += u64::from(vm.record.memory_mb);
                cpus += vm.record.vcpus;
            }
        }
        (n, mem, cpus)
    }

    /// Names of the base templates available on this host (at least "minimal"); a team's
    /// imported images are not for everyone and are left out.
    pub async fn templates(&self) -> Vec<String> {
        let data_dir = &self.cfg.data_dir;
        let mut t = images::list_templates(data_dir);
        t.retain(|n| {
            !images::template(data_dir, n).is_some_and(|t| images::import::is_imported(&t))
        });
        if !t.iter().any(|n| n == MINIMAL) {
            tracing::warn!("template minimal is missing");
        }
        t.dedup();
        t
    }

    /// Lets go of every VM without stopping it (agent shutdown): a later agent reattaches.
    /// Template builds in progress are stopped (a later agent cleans up after them).
    pub fn detach_all(&self) {
        for vm in self.vms().values() {
            vm.channel.close();
        }
        self.boot.shutdown();
        self.builds.shutdown();
    }
}

impl Drop for VmManager {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// `sbx_` followed by 1 to 60 of `[A-Za-z0-9_-]`: ids become path components.
pub fn validate_id(id: &str) -> Result<(), VmError> {
    let ok = id.strip_prefix("sbx_").is_some_and(|rest| {
        (1..=60).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    if ok {
        Ok(())
    } else {
        Err(bad("id", "must match ^sbx_[A-Za-z0-9_-]{1,60}$"))
    }
}

/// Sends the guest its identity with the current clock and fresh entropy (after a boot, a
/// restore and every resume).
async fn send_init(vm: &Vm) -> Result<(), ChannelError> {
    let mut entropy = vec![0u8; 64];
    rand::rng().fill(&mut entropy[..]);
    let init = Init {
        sandbox_id: vm.id.clone(),
        env: vm.record.env.clone(),
        time_unix_ms: now_unix_ms(),
        entropy,
        hostname: None,
    };
    let ack = vm.channel.init(&init, Duration::from_secs(20)).await?;
    let skew = init.time_unix_ms as i64 - ack.previous_time_unix_ms as i64;
    tracing::debug!(vm = %vm.id, skew_ms = skew, "guest clock set");
    Ok(())
}

fn read_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(qemu::pid_file(dir))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Writes `path` whole or not at all, private to root (0600): records hold a sandbox's env.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
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

fn write_record(dir: &Path, record: &VmRecord) -> anyhow::Result<()> {
    write_atomic(&dir.join(RECORD), &serde_json::to_vec_pretty(record)?)
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Folders QEMU must not see: the data dir and what the configuration adds.
fn hidden_dirs(cfg: &VmConfig) -> Vec<PathBuf> {
    let mut v = vec![cfg.data_dir.clone()];
    v.extend(cfg.jail.hidden.iter().cloned());
    v
}

/// Makes `dir` root's alone (0700): VM folders, records, snapshots and credentials below it
/// are out of reach of every other user, whatever their own modes.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", dir.display()))
}

/// A read-only copy of the guest kernel in the data dir (refreshed when the original changes),
/// so that every VM folder gets it as a hard link.
fn own_kernel_copy(vmlinuz: &Path, data_dir: &Path) -> anyhow::Result<PathBuf> {
    let copy = data_dir.join("vmlinuz");
    let same = match (std::fs::metadata(vmlinuz), std::fs::metadata(&copy)) {
        (Ok(a), Ok(b)) => a.len() == b.len() && std::fs::read(vmlinuz)? == std::fs::read(&copy)?,
        _ => false,
    };
    if !same {
        let tmp = data_dir.join("vmlinuz.tmp");
        std::fs::copy(vmlinuz, &tmp).with_context(|| format!("copy {}", vmlinuz.display()))?;
        snapshot::read_only(&tmp)?;
        std::fs::rename(&tmp, &copy)?;
    }
    Ok(copy)
}

fn host_memory_mb() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_safe_path_components() {
        assert!(validate_id("sbx_abc-DEF_09").is_ok());
        for bad in [
            "sbx_",
            "abc",
            "sbx_../x",
            "sbx_a/b",
            "sbx_a.b",
            "SBX_a",
            &format!("sbx_{}", "a".repeat(61)),
        ] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
