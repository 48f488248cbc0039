//! The warm pool (`agent run --warm-pool TEMPLATE/SHAPE=N`): N VMs per template and shape
//! restored from the boot snapshot and waiting, without an identity, so that a create of that
//! template and shape takes one instead of restoring.
//!
//! A waiting VM is an ordinary restore that stops before its `Init` ([`VmManager::restore_guest`]):
//! confined like every VM (its own uid, cgroup and mount namespace), its network namespace made
//! with the default egress policy. It lives under a place name `pool-<hex>` (its folder, cgroup
//! and namespace keep that name for life, see [`super::record::VmRecord::place`]), is never listed
//! to the server, and counts in the memory and vCPUs the heartbeat reports. The hand-over gives
//! it the sandbox's id, env, clock, entropy and egress policy (the same `Init` a fresh restore
//! gets, see [`VmManager::finish_start`]) and records it with `boot_kind` "pool"; the pool is then
//! refilled in the background, one VM at a time. It is drained (its VMs killed) while
//! `MemAvailable` is under `--warm-pool-min-available-mb` and when the agent stops; a later
//! agent removes any waiting VM it finds (see [`super::recovery`]).

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rand::RngExt;

use super::boot::BootError;
use super::instance::Vm;
use super::record::VmRecord;
use super::runtime::Runtime;
use super::snapshot::Shape;
use super::{
    BOOT_TIMEOUT, MAX_VCPUS, MIN_MEMORY_MB, VmError, VmInfo, VmManager, VmState, now_unix_ms,
    template_store,
};
use crate::agent::images;
use crate::proto::agent::CreateVmRequest;
use crate::proto::net::EgressPolicy;

/// Place names of pool VMs start with this; sandbox ids never do.
const PLACE_PREFIX: &str = "pool-";
/// Most VMs one `--warm-pool` entry keeps waiting.
pub const MAX_POOL_SIZE: u32 = 64;
/// Below this much `MemAvailable` (MB) the pool is drained and not refilled.
pub const DEFAULT_MIN_AVAILABLE_MB: u64 = 2048;
/// How often the pool checks the host's memory and its fill.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long a shape whose fill failed waits before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// One `--warm-pool` entry: `TEMPLATE/SHAPE=N`, SHAPE as boot snapshots name it
/// (`256m-1c-net`: memory MB, vCPUs, network device or `nonet`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmPoolSpec {
    pub template: String,
    pub shape: Shape,
    pub size: u32,
}

impl FromStr for WarmPoolSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let syntax = "expected TEMPLATE/SHAPE=N, e.g. minimal/256m-1c-net=2";
        let (left, n) = s.rsplit_once('=').ok_or(syntax)?;
        let (template, shape) = left.split_once('/').ok_or(syntax)?;
        if !template_store::valid_name(template) {
            return Err(format!("{template:?} is not a template name ({syntax})"));
        }
        let shape = parse_shape(shape).ok_or_else(|| {
            format!("{shape:?} is not a shape: MEMORYm-VCPUSc-net or -nonet, e.g. 256m-1c-net")
        })?;
        if shape.memory_mb < MIN_MEMORY_MB || !(1..=MAX_VCPUS).contains(&shape.vcpus) {
            return Err(format!(
                "shape {}: memory must be at least {MIN_MEMORY_MB} MB and vCPUs 1 to {MAX_VCPUS}",
                shape.key()
            ));
        }
        let size: u32 = n
            .parse()
            .ok()
            .filter(|n| (1..=MAX_POOL_SIZE).contains(n))
            .ok_or_else(|| format!("N must be a number from 1 to {MAX_POOL_SIZE}"))?;
        Ok(WarmPoolSpec {
            template: template.to_string(),
            shape,
            size,
        })
    }
}

/// `256m-1c-net` → the shape (the inverse of [`Shape::key`]).
fn parse_shape(s: &str) -> Option<Shape> {
    let mut parts = s.split('-');
    let memory_mb = parts.next()?.strip_suffix('m')?.parse().ok()?;
    let vcpus = parts.next()?.strip_suffix('c')?.parse().ok()?;
    let network = match parts.next()? {
        "net" => true,
        "nonet" => false,
        _ => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    let shape = Shape {
        memory_mb,
        vcpus,
        network,
    };
    (shape.key() == s).then_some(shape)
}

/// The warm pool's settings.
#[derive(Debug, Clone)]
pub struct WarmPoolConfig {
    pub specs: Vec<WarmPoolSpec>,
    /// Under this much `MemAvailable` (MB) the pool is drained and not refilled.
    pub min_available_mb: u64,
}

impl Default for WarmPoolConfig {
    fn default() -> Self {
        WarmPoolConfig {
            specs: Vec::new(),
            min_available_mb: DEFAULT_MIN_AVAILABLE_MB,
        }
    }
}

/// True for the place name of a pool VM (`pool-` and 16 hex digits).
pub(super) fn is_place(name: &str) -> bool {
    name.strip_prefix(PLACE_PREFIX)
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

struct Member {
    template: String,
    shape: Shape,
    vm: Arc<Vm>,
    /// Restored and waiting (false while it is being restored).
    ready: bool,
}

/// A waiting VM as the bench and tests see it.
#[derive(Debug, Clone)]
pub struct PoolVm {
    /// The name of its folder, cgroup and network namespace.
    pub place: String,
    pub template: String,
    pub shape: String,
    pub pid: Option<u32>,
    pub ready: bool,
}

/// The pool's members and its refill's wake-up.
#[derive(Default)]
pub(super) struct Pool {
    pub(super) cfg: WarmPoolConfig,
    members: Mutex<Vec<Member>>,
    wake: Arc<tokio::sync::Notify>,
    stopped: AtomicBool,
    failed: Mutex<Vec<(String, Instant)>>,
}

impl Pool {
    pub(super) fn new(cfg: WarmPoolConfig) -> Pool {
        Pool {
            cfg,
            ..Default::default()
        }
    }

    fn members(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a waiting VM of `template` and `shape`, if any.
    fn take(&self, template: &str, shape: Shape) -> Option<Arc<Vm>> {
        let mut m = self.members();
        let i = m
            .iter()
            .position(|x| x.ready && x.template == template && x.shape == shape)?;
        Some(m.remove(i).vm)
    }

    /// The first entry short of its size that did not fail lately.
    fn next_missing(&self) -> Option<WarmPoolSpec> {
        let m = self.members();
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        self.cfg
            .specs
            .iter()
            .find(|s| {
                let have = m
                    .iter()
                    .filter(|x| x.template == s.template && x.shape == s.shape)
                    .count();
                have < s.size as usize
                    && !failed
                        .iter()
                        .any(|(k, t)| *k == spec_key(s) && t.elapsed() < RETRY_AFTER)
            })
            .cloned()
    }

    /// (memory MB, vCPUs) of every pool VM, waiting or being restored.
    pub(super) fn usage(&self) -> (u64, u32) {
        self.members().iter().fold((0, 0), |(m, c), x| {
            (m + u64::from(x.shape.memory_mb), c + x.shape.vcpus)
        })
    }

    /// Kills every pool VM's QEMU at once, without waiting (the manager is going away; a later
    /// agent removes their folders).
    pub(super) fn kill_now(&self) {
        self.stopped.store(true, Ordering::Release);
        for m in self.members().iter() {
            if let Some(pid) = m.vm.rt().pid {
                super::qemu::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn spec_key(s: &WarmPoolSpec) -> String {
    format!("{}/{}", s.template, s.shape.key())
}

impl VmManager {
    /// The warm pool's VMs (waiting or being restored).
    pub fn pool_vms(&self) -> Vec<PoolVm> {
        self.pool
            .members()
            .iter()
            .map(|m| PoolVm {
                place: m.vm.place().to_string(),
                template: m.template.clone(),
                shape: m.shape.key(),
                pid: m.vm.rt().pid,
                ready: m.ready,
            })
            .collect()
    }

    /// Kills every pool VM and removes its files; the pool stays empty from now on (the agent
    /// is stopping).
    pub async fn drain_pool(&self) {
        self.pool.stopped.store(true, Ordering::Release);
        self.drain("the agent is stopping").await;
    }

    /// Removes waiting VMs whose QEMU is gone (they would only fail their hand-over).
    async fn prune_dead(&self) {
        let dead: Vec<Member> = {
            let mut m = self.pool.members();
            let (dead, alive): (Vec<Member>, Vec<Member>) = std::mem::take(&mut *m)
                .into_iter()
                .partition(|x| x.ready && x.vm.rt().pid.is_none_or(|p| !super::qemu::is_alive(p)));
            *m = alive;
            dead
        };
        for d in dead {
            tracing::warn!(vm = %d.vm.id, "a warm pool VM's QEMU is gone; replacing it");
            self.discard(&d.vm).await;
        }
    }

    async fn drain(&self, why: &str) {
        let members: Vec<Member> = std::mem::take(&mut *self.pool.members());
        if !members.is_empty() {
            tracing::info!(vms = members.len(), %why, "draining the warm pool");
        }
        for m in members {
            self.discard(&m.vm).await;
        }
    }

    /// Ends a pool VM that was never handed over and removes everything it had.
    async fn discard(&self, vm: &Arc<Vm>) {
        vm.destroyed.store(true, Ordering::Release);
        if let Some(e) = self.teardown(vm).await {
            tracing::warn!(vm = %vm.id, error = %e, "could not remove a warm pool VM's folder");
        }
    }

    /// Restores one VM for `spec` and adds it to the pool.
    async fn fill_one(&self, spec: &WarmPoolSpec) -> Result<(), VmError> {
        let started = Instant::now();
        let template = images::template(&self.cfg.data_dir, &spec.template).ok_or_else(|| {
            VmError::Internal(anyhow::anyhow!("no base template {} here", spec.template))
        })?;
        let snap = match self.boot.ready(&template, spec.shape) {
            Some(s) => Some(s),
            None => match self.boot.request(&template, spec.shape) {
                Some(mut rx) => {
                    let _ = tokio::time::timeout(BOOT_TIMEOUT * 4, rx.wait_for(|d| *d)).await;
                    self.boot.ready(&template, spec.shape)
                }
                None => None,
            },
        }
        .ok_or_else(|| {
            VmError::Internal(anyhow::anyhow!(
                "no boot snapshot of {} for {}",
                spec.template,
                spec.shape.key()
            ))
        })?;
        let place = format!("{PLACE_PREFIX}{:016x}", rand::rng().random::<u64>());
        let uid = self.claim_uid()?;
        let net = if spec.shape.network {
            match self.net.create(&place, &EgressPolicy::default()).await {
                Ok(n) => Some(n),
                Err(e) => {
                    self.release_uid(uid);
                    return Err(VmError::Internal(
                        e.context("setting up a warm pool VM's network"),
                    ));
                }
            }
        } else {
            None
        };
        let vm = Arc::new(Vm::new(
            &self.vm_dir(&place),
            VmRecord {
                id: place.clone(),
                template: spec.template.clone(),
                vcpus: spec.shape.vcpus,
                memory_mb: spec.shape.memory_mb,
                network: spec.shape.network,
                env: Default::default(),
                accel: self.accel.kind.to_string(),
                created_unix_ms: now_unix_ms(),
                boot_ms: None,
                boot_kind: None,
                base: spec.template.clone(),
                layers: Vec::new(),
                memory_file: false,
                net,
                uid: Some(uid),
                access_token: None,
                place: None,
            },
            Runtime::new(VmState::Starting),
        ));
        vm.police_guest();
        self.pool.members().push(Member {
            template: spec.template.clone(),
            shape: spec.shape,
            vm: vm.clone(),
            ready: false,
        });
        let restored = if self.pool.stopped.load(Ordering::Acquire) {
            Err(BootError::Hung("the agent is stopping".into()))
        } else {
            self.restore_guest(&vm, &snap, started).await
        };
        let keep = restored.is_ok() && !self.pool.stopped.load(Ordering::Acquire);
        let found = {
            let mut members = self.pool.members();
            match members.iter().position(|m| Arc::ptr_eq(&m.vm, &vm)) {
                Some(i) if keep => {
                    members[i].ready = true;
                    true
                }
                Some(i) => {
                    members.remove(i);
                    true
                }
                None => false,
            }
        };
        if !found {
            // Drained meanwhile (which discarded it).
            return Ok(());
        }
        if keep {
            // Its restore time on disk marks it waiting (see [`waiting_pids`]).
            vm.rt().boot_ms = Some(started.elapsed().as_millis() as u64);
            if let Err(e) = vm.persist() {
                tracing::warn!(vm = %place, error = %format!("{e:#}"), "recording a warm pool VM");
            }
            tracing::debug!(vm = %place, template = %spec.template, shape = %spec.shape.key(), ms = started.elapsed().as_millis() as u64, "warm pool VM waiting");
            return Ok(());
        }
        self.discard(&vm).await;
        match restored {
            Err(BootError::Hung(why)) => Err(VmError::Internal(anyhow::anyhow!(why))),
            Err(BootError::Failed(e)) => Err(e),
            Ok(()) => Ok(()),
        }
    }

    /// A create of a template and shape the pool holds: one waiting VM gets the sandbox's
    /// identity. None when none is waiting (the create restores as usual); an error only when
    /// the create must not go on (its id is taken).
    pub(super) async fn take_from_pool(
        &self,
        req: &CreateVmRequest,
        policy: Option<&EgressPolicy>,
        started: Instant,
    ) -> Option<Result<VmInfo, VmError>> {
        let shape = Shape {
            memory_mb: req.memory_mb,
            vcpus: req.vcpus,
            network: req.network,
        };
        let waiting = self.pool.take(&req.template, shape)?;
        let handed = self.hand_over(waiting, req, policy, started).await;
        // The refill starts once this create is answered, not in its way.
        self.pool.wake.notify_one();
        match handed {
            Ok(info) => Some(Ok(info)),
            Err(e @ (VmError::Conflict(_) | VmError::NotFound(_))) => Some(Err(e)),
            Err(e) => {
                tracing::warn!(vm = %req.id, error = %e, "the warm pool VM could not be handed over; restoring instead");
                None
            }
        }
    }

    async fn hand_over(
        &self,
        waiting: Arc<Vm>,
        req: &CreateVmRequest,
        policy: Option<&EgressPolicy>,
        started: Instant,
    ) -> Result<VmInfo, VmError> {
        let place = waiting.id.clone();
        let mut net = waiting.net_place();
        if let (Some(n), Some(p)) = (net.as_mut(), policy)
            && n.policy != *p
        {
            if let Err(e) = self.net.apply(&place, p).await {
                self.discard(&waiting).await;
                return Err(VmError::Internal(e.context("applying the egress policy")));
            }
            n.policy = p.clone();
        }
        let old = match Arc::try_unwrap(waiting) {
            Ok(v) => v,
            Err(w) => {
                self.discard(&w).await;
                return Err(VmError::Internal(anyhow::anyhow!(
                    "the warm pool VM is still in use"
                )));
            }
        };
        let Vm {
            dir,
            record,
            rt,
            channel,
            ..
        } = old;
        let record = VmRecord {
            id: req.id.clone(),
            template: req.template.clone(),
            env: req.env.clone(),
            created_unix_ms: now_unix_ms(),
            access_token: req.access_token.clone(),
            place: Some(place),
            net: net.clone(),
            ..record
        };
        let vm = Arc::new(Vm {
            id: req.id.clone(),
            dir,
            net: Mutex::new(net),
            record,
            rt,
            channel,
            destroyed: AtomicBool::new(false),
            op: Default::default(),
            samples: Default::default(),
        });
        vm.police_guest();
        watch_exit(&vm);
        let taken = {
            let mut vms = self.vms();
            let taken = vms.contains_key(&req.id);
            if !taken {
                vms.insert(req.id.clone(), vm.clone());
            }
            taken
        };
        if taken {
            self.discard(&vm).await;
            return Err(VmError::Conflict(format!("VM {} already exists", req.id)));
        }
        match self.finish_start(&vm, "pool", started).await {
            Ok(info) => Ok(info),
            Err(e) => {
                {
                    let mut vms = self.vms();
                    if vms.get(&req.id).is_some_and(|v| Arc::ptr_eq(v, &vm)) {
                        vms.remove(&req.id);
                    }
                }
                let gone = vm.destroyed.load(Ordering::Acquire);
                if !gone {
                    // (A destroy that came meanwhile tears it down itself.)
                    self.discard(&vm).await;
                }
                Err(match e {
                    _ if gone => VmError::NotFound(req.id.clone()),
                    BootError::Failed(e) => e,
                    BootError::Hung(why) => VmError::Internal(anyhow::anyhow!(why)),
                })
            }
        }
    }
}

/// Marks `vm` stopped when its QEMU exits (the watch set up at its spawn was for the pool VM it
/// was before the hand-over).
fn watch_exit(vm: &Arc<Vm>) {
    let (pid, exited) = {
        let rt = vm.rt();
        (rt.pid, rt.exited.clone())
    };
    let (Some(pid), Some(mut rx)) = (pid, exited) else {
        return;
    };
    let weak = Arc::downgrade(vm);
    tokio::spawn(async move {
        let _ = rx.wait_for(|e| *e).await;
        if let Some(vm) = weak.upgrade() {
            let mut rt = vm.rt();
            if rt.pid == Some(pid) {
                if rt.state() != VmState::Stopped {
                    tracing::info!(vm = %vm.id, "QEMU exited");
                }
                rt.stop();
            }
        }
    });
}

/// Keeps the pool filled while the manager lives: one VM at a time, only while the host has
/// memory to spare; drains it under memory pressure.
pub(super) async fn run(mgr: Weak<VmManager>) {
    loop {
        let Some(m) = mgr.upgrade() else { return };
        if m.pool.stopped.load(Ordering::Acquire) {
            return;
        }
        let wake = m.pool.wake.clone();
        let min = m.pool.cfg.min_available_mb;
        m.prune_dead().await;
        let available = mem_available_mb().unwrap_or(u64::MAX);
        if available < min {
            m.drain(&format!("MemAvailable {available} MB is under {min} MB"))
                .await;
        } else if let Some(spec) = m.pool.next_missing()
            && available >= min + u64::from(spec.shape.memory_mb)
        {
            if let Err(e) = m.fill_one(&spec).await {
                tracing::warn!(template = %spec.template, shape = %spec.shape.key(), error = %e, "could not fill the warm pool; trying again later");
                let mut failed = m.pool.failed.lock().unwrap_or_else(|p| p.into_inner());
                failed.retain(|(_, t)| t.elapsed() < RETRY_AFTER);
                failed.push((spec_key(&spec), Instant::now()));
            }
            continue;
        }
        drop(m);
        let _ = tokio::time::timeout(CHECK_INTERVAL, wake.notified()).await;
    }
}

/// QEMU pids of the VMs waiting in the pool of the agent with data dir `data_dir` (for the
/// bench, from another process): folders `vms/pool-…` whose record has a restore time but still
/// no sandbox id.
pub fn waiting_pids(data_dir: &std::path::Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("vms")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| is_place(&e.file_name().to_string_lossy()))
        .filter_map(|e| {
            let dir = e.path();
            let record = super::record::read_record(&dir)?;
            let pid = super::record::read_pid(&dir)?;
            (record.id == e.file_name().to_string_lossy()
                && record.boot_ms.is_some()
                && super::qemu::is_our_qemu(pid, &dir))
            .then_some(pid)
        })
        .collect()
}

/// The host's `MemAvailable` in MB.
pub(super) fn mem_available_mb() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_refuse_with_a_reason() {
        let s: WarmPoolSpec = "minimal/256m-1c-net=2".parse().expect("valid");
        assert_eq!(s.template, "minimal");
        assert_eq!(s.shape, super::super::snapshot::DEFAULT_SHAPE);
        assert_eq!(s.size, 2);
        let s: WarmPoolSpec = "debian/512m-2c-nonet=1".parse().expect("valid");
        assert_eq!(s.shape.key(), "512m-2c-nonet");
        for (bad, says) in [
            ("minimal=2", "TEMPLATE/SHAPE=N"),
            ("minimal/256m-1c-net", "TEMPLATE/SHAPE=N"),
            ("minimal/256m-1c=2", "not a shape"),
            ("minimal/256m-1c-net=0", "N must be"),
            ("minimal/256m-1c-net=65", "N must be"),
            ("minimal/64m-1c-net=1", "memory must be"),
            ("minimal/256m-0c-net=1", "vCPUs"),
            ("../x/256m-1c-net=1", "not a template name"),
            ("minimal/0256m-1c-net=1", "not a shape"),
        ] {
            let e = bad.parse::<WarmPoolSpec>().expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(is_place("pool-00ff00ff00ff00ff"));
        assert!(!is_place("sbx-abc"));
    }
}
