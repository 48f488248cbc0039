//! The microVM manager: the one owner of this host's VMs.
//!
//! Each VM is a QEMU (`-M microvm`) in its own session with a folder `data_dir/vms/<id>/`
//! holding its pid file, record (`vm.json`), sockets (QMP, guest channel), console log and qcow2
//! overlay. QEMU outlives the agent; a restarted agent finds its VMs there again.
//!
//! Locking: the VM table is a std mutex held only to look up, insert or remove; each VM's mutable
//! state has its own small lock and its guest channel multiplexes concurrent requests, so work on
//! one VM never waits for another.

mod bare;
pub use bare::bare_cold_boot;
mod channel;
mod qemu;
mod qmp;
mod sock;

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
use crate::proto::guest::{ExecStart, Init};
use channel::{ChannelError, GuestChannel};
pub use qmp::Qmp;

/// Output kept per stream of an exec; the rest is drained and dropped.
pub const OUTPUT_CAP: usize = 10 * 1024 * 1024;
pub const DEFAULT_EXEC_TIMEOUT_SEC: u64 = 60;
pub const MAX_EXEC_TIMEOUT_SEC: u64 = 3600;
pub const MAX_VCPUS: u32 = 16;
pub const MIN_MEMORY_MB: u32 = 128;
/// How long one cold boot may take before it counts as hung (TCG on a busy host is slow: 10 s
/// seen with both cores loaded), and how many boots create tries.
const BOOT_TIMEOUT: Duration = Duration::from_secs(45);
const BOOT_ATTEMPTS: u32 = 2;
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
}

#[derive(Debug)]
struct Runtime {
    state: VmState,
    pid: Option<u32>,
    boot_ms: Option<u64>,
    boot_kind: Option<String>,
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
    rt: Mutex<Runtime>,
    channel: GuestChannel,
    destroyed: AtomicBool,
    /// Set to true when QEMU (our child) has exited and been reaped. None for reattached VMs.
    exited: Option<watch::Receiver<bool>>,
}

impl Vm {
    fn rt(&self) -> std::sync::MutexGuard<'_, Runtime> {
        self.rt.lock().unwrap_or_else(|p| p.into_inner())
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
        }
    }

    /// Ends QEMU (SIGKILL) and waits until it is gone.
    async fn kill_qemu(&self) {
        let pid = self.rt().pid;
        let Some(pid) = pid else { return };
        qemu::kill(pid, libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Some(rx) = &self.exited {
            let mut rx = rx.clone();
            let _ = tokio::time::timeout_at(deadline.into(), rx.wait_for(|e| *e)).await;
        }
        while qemu::is_alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub struct VmManager {
    cfg: VmConfig,
    accel: Accel,
    kernel: Kernel,
    tsc_khz: Option<u64>,
    host_cores: u32,
    host_memory_mb: u64,
    vms: Mutex<HashMap<String, Arc<Vm>>>,
}

impl VmManager {
    /// Detects the accelerator, makes sure the `minimal` template is built and current, and
    /// reattaches to VMs a previous agent left running (cleaning up the dead ones).
    pub async fn start(cfg: VmConfig) -> anyhow::Result<Arc<VmManager>> {
        let vms_dir = cfg.data_dir.join("vms");
        std::fs::create_dir_all(&vms_dir)
            .with_context(|| format!("create {}", vms_dir.display()))?;
        let kernel = Kernel::find(&cfg.kernel_dir)?;
        let accel = qemu::detect_accel(cfg.accel, &kernel).await;
        tracing::info!(accel = accel.kind, reason = %accel.reason, "VM accelerator");
        let guest_binary = match &cfg.guest_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("find this executable")?,
        };
        let (data_dir, k) = (cfg.data_dir.clone(), kernel.clone());
        tokio::task::spawn_blocking(move || images::ensure_minimal(&data_dir, &k, &guest_binary))
            .await
            .context("template build panicked")??;
        let mgr = VmManager {
            tsc_khz: qemu::host_tsc_khz(),
            host_cores: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            host_memory_mb: host_memory_mb().unwrap_or(1024),
            cfg,
            accel,
            kernel,
            vms: Mutex::new(HashMap::new()),
        };
        mgr.rediscover().await;
        Ok(Arc::new(mgr))
    }

    pub fn accel(&self) -> &Accel {
        &self.accel
    }

    fn vms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Vm>>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn vm_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("vms").join(id)
    }

    fn lookup(&self, id: &str) -> Result<Arc<Vm>, VmError> {
        self.vms()
            .get(id)
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
                    tracing::info!(vm = %name, pid = ?vm.rt().pid, "reattached to a running VM");
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
                }
            }
        }
    }

    async fn reattach(&self, name: &str, dir: &Path) -> Result<Arc<Vm>, String> {
        validate_id(name).map_err(|e| e.to_string())?;
        let record: VmRecord = std::fs::read(dir.join(RECORD))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("no readable vm.json")?;
        if record.id != name {
            return Err("vm.json names another VM".into());
        }
        let pid = read_pid(dir).ok_or("no pid file")?;
        if !qemu::is_our_qemu(pid, dir) {
            return Err(format!("QEMU (pid {pid}) is not running"));
        }
        let mut q = tokio::time::timeout(Duration::from_secs(5), Qmp::connect(dir, qemu::QMP_SOCK))
            .await
            .map_err(|_| "QMP did not answer".to_string())?
            .map_err(|e| format!("QMP: {e:#}"))?;
        let status = q.status().await.map_err(|e| format!("QMP: {e:#}"))?;
        let state = match status.as_str() {
            "paused" => VmState::Paused,
            _ => VmState::Running,
        };
        Ok(Arc::new(Vm {
            id: name.to_string(),
            dir: dir.to_path_buf(),
            channel: GuestChannel::new(dir, qemu::AGENT_SOCK),
            rt: Mutex::new(Runtime {
                state,
                pid: Some(pid),
                boot_ms: record.boot_ms,
                boot_kind: record.boot_kind.clone(),
            }),
            record,
            destroyed: AtomicBool::new(false),
            exited: None,
        }))
    }

    fn validate(&self, req: &CreateVmRequest) -> Result<Template, VmError> {
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
        validate_env(&req.env)?;
        images::template(&self.cfg.data_dir, &req.template).ok_or_else(|| {
            bad(
                "template",
                format!("unknown template {:?} on this host", req.template),
            )
        })
    }

    /// Boots a VM from a template; returns once the guest program has answered.
    pub async fn create(&self, req: CreateVmRequest) -> Result<VmInfo, VmError> {
        let started = Instant::now();
        let template = self.validate(&req)?;
        let dir = self.vm_dir(&req.id);
        let mut attempt = 1;
        loop {
            let (exited_tx, exited_rx) = watch::channel(false);
            let vm = Arc::new(Vm {
                id: req.id.clone(),
                dir: dir.clone(),
                record: VmRecord {
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
                },
                rt: Mutex::new(Runtime {
                    state: VmState::Starting,
                    pid: None,
                    boot_ms: None,
                    boot_kind: None,
                }),
                channel: GuestChannel::new(&dir, qemu::AGENT_SOCK),
                destroyed: AtomicBool::new(false),
                exited: Some(exited_rx),
            });
            {
                let mut vms = self.vms();
                if vms.contains_key(&req.id) {
                    return Err(VmError::Conflict(format!("VM {} already exists", req.id)));
                }
                vms.insert(req.id.clone(), vm.clone());
            }
            let err = match self.boot(&vm, &template, exited_tx, started).await {
                Ok(info) => return Ok(info),
                Err(e) => e,
            };
            vm.channel.close();
            vm.kill_qemu().await;
            let _ = tokio::fs::remove_dir_all(&dir).await;
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

    async fn boot(
        &self,
        vm: &Arc<Vm>,
        template: &Template,
        exited_tx: watch::Sender<bool>,
        started: Instant,
    ) -> Result<VmInfo, BootError> {
        let dir = &vm.dir;
        if dir.exists() {
            // Left over from a VM that is no longer known: it is not running.
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("create {}", dir.display()))?;
        write_record(dir, &vm.record)?;
        qemu::prepare_disk(dir, template).await?;
        let spec = qemu::LaunchSpec {
            id: &vm.id,
            vcpus: vm.record.vcpus,
            memory_mb: vm.record.memory_mb,
            network: vm.record.network,
            accel: &self.accel,
            kernel: &self.kernel,
            template,
            tsc_khz: self.tsc_khz,
        };
        let args = qemu::args(&spec);
        tracing::debug!(vm = %vm.id, ?args, "starting QEMU");
        let mut child = qemu::spawn(dir, &args)?;
        let pid = child.id().context("QEMU exited at once")?;
        write_atomic(&qemu::pid_file(dir), format!("{pid}\n").as_bytes())?;
        vm.rt().pid = Some(pid);
        let weak = Arc::downgrade(vm);
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = exited_tx.send(true);
            if let Some(vm) = weak.upgrade() {
                let mut rt = vm.rt();
                if rt.state != VmState::Stopped {
                    tracing::info!(vm = %vm.id, ?status, "QEMU exited");
                }
                rt.state = VmState::Stopped;
            }
        });
        if vm.destroyed.load(Ordering::Acquire) {
            return Err(VmError::NotFound(vm.id.clone()).into());
        }

        // Wait for the guest program, or for QEMU to die, whichever comes first.
        let mut exited = vm.exited.clone().context("no exit watch")?;
        let hello = tokio::select! {
            r = vm.channel.connect(BOOT_TIMEOUT) => r,
            _ = exited.wait_for(|e| *e) => {
                return Err(BootError::Failed(VmError::Internal(anyhow::anyhow!(
                    "QEMU exited during boot: {}", qemu::console_tail(dir, 8)
                ))));
            }
        };
        let hello = match hello {
            Ok(h) => h,
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
        };
        let boot_ms = started.elapsed().as_millis() as u64;
        tracing::debug!(vm = %vm.id, guest = %hello.version, uptime_ms = hello.uptime_ms, "guest answered");
        let mut entropy = vec![0u8; 64];
        rand::rng().fill(&mut entropy[..]);
        let init = Init {
            sandbox_id: vm.id.clone(),
            env: vm.record.env.clone(),
            time_unix_ms: now_unix_ms(),
            entropy,
            hostname: None,
        };
        vm.channel
            .init(&init, Duration::from_secs(20))
            .await
            .map_err(|e| VmError::GuestUnavailable(format!("init: {e}")))?;
        {
            let mut rt = vm.rt();
            if vm.destroyed.load(Ordering::Acquire) || rt.state == VmState::Stopped {
                return Err(VmError::NotFound(vm.id.clone()).into());
            }
            rt.state = VmState::Running;
            rt.boot_ms = Some(boot_ms);
            rt.boot_kind = Some("cold".into());
        }
        let mut record = vm.record.clone();
        record.boot_ms = Some(boot_ms);
        record.boot_kind = Some("cold".into());
        write_record(dir, &record)?;
        tracing::info!(
            vm = %vm.id,
            boot_ms,
            accel = self.accel.kind,
            vcpus = vm.record.vcpus,
            memory_mb = vm.record.memory_mb,
            "VM booted"
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

    /// Ends the QEMU process and removes every file of the VM.
    pub async fn destroy(&self, id: &str) -> Result<(), VmError> {
        let vm = self
            .vms()
            .remove(id)
            .ok_or_else(|| VmError::NotFound(id.to_string()))?;
        vm.destroyed.store(true, Ordering::Release);
        vm.channel.close();
        vm.kill_qemu().await;
        vm.rt().state = VmState::Stopped;
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
        let timeout = req.timeout_sec.unwrap_or(DEFAULT_EXEC_TIMEOUT_SEC);
        if timeout == 0 || timeout > MAX_EXEC_TIMEOUT_SEC {
            return Err(bad(
                "timeout_sec",
                format!("must be between 1 and {MAX_EXEC_TIMEOUT_SEC}"),
            ));
        }
        if req.cmd.is_empty() || req.cmd.contains('\0') {
            return Err(bad("cmd", "must be a non-empty command name or path"));
        }
        if req.args.iter().any(|a| a.contains('\0')) {
            return Err(bad("args", "must not contain NUL bytes"));
        }
        validate_env(&req.env)?;
        if let Some(cwd) = &req.cwd
            && (!cwd.starts_with('/') || cwd.contains('\0'))
        {
            return Err(bad("cwd", "must be an absolute path"));
        }
        match vm.info().state {
            VmState::Running => {}
            VmState::Starting => {
                return Err(VmError::Conflict(format!("VM {id} is still starting")));
            }
            VmState::Paused => return Err(VmError::Conflict(format!("VM {id} is paused"))),
            VmState::Stopped => return Err(VmError::Conflict(format!("VM {id} has stopped"))),
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
            Err(e) => {
                // A broken connection is retried by the next request.
                vm.channel.disconnect();
                return Err(VmError::GuestUnavailable(e.to_string()));
            }
        };
        tracing::debug!(vm = %id, code = out.exit.exit_code, ms = out.exit.duration_ms, "exec done");
        Ok(ExecResponse {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            exit_code: out.exit.exit_code,
            duration_ms: out.exit.duration_ms,
            timed_out: out.exit.timed_out,
            truncated: out.truncated,
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

    /// Names of the templates available on this host (at least "minimal").
    pub async fn templates(&self) -> Vec<String> {
        let mut t = images::list_templates(&self.cfg.data_dir);
        if !t.iter().any(|n| n == MINIMAL) {
            tracing::warn!("template minimal is missing");
        }
        t.dedup();
        t
    }

    /// Lets go of every VM without stopping it (agent shutdown): a later agent reattaches.
    pub fn detach_all(&self) {
        for vm in self.vms().values() {
            vm.channel.close();
        }
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

fn validate_env(env: &BTreeMap<String, String>) -> Result<(), VmError> {
    for (k, v) in env {
        let mut bytes = k.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad("env", format!("{k:?} is not a valid variable name")));
        }
        if v.contains('\0') {
            return Err(bad("env", format!("the value of {k} contains a NUL byte")));
        }
    }
    Ok(())
}

fn read_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(qemu::pid_file(dir))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
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

    #[test]
    fn env_names_are_checked() {
        let mut env = BTreeMap::new();
        env.insert("GOOD_1".to_string(), "x".to_string());
        assert!(validate_env(&env).is_ok());
        env.insert("1BAD".to_string(), "x".to_string());
        assert!(matches!(
            validate_env(&env),
            Err(VmError::BadRequest { field: "env", .. })
        ));
    }
}
