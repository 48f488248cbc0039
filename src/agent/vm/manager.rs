//! The VM manager: the one owner of this host's VMs. It starts up (accelerator, kernel,
//! templates, network, the VMs a previous agent left), keeps the table of VMs, hands out uids,
//! destroys VMs and reports capacity.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use super::boot_snapshots::{BootSnapshots, HostEnv};
use super::instance::Vm;
use super::snapshot;
use super::{
    Accel, VmConfig, VmError, VmInfo, VmState, cgroup, jail, pool, qemu, ram, sampler,
    template_store,
};
use crate::agent::images::{self, Kernel, MINIMAL};
use crate::agent::net::Network;

/// How often console logs are checked against their size limit.
const CONSOLE_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// VMs one agent numbers (uids `uid_base + 1 ..`).
const MAX_VM_UIDS: u32 = 1 << 20;

pub struct VmManager {
    pub(super) cfg: VmConfig,
    pub(super) accel: Accel,
    pub(super) kernel: Kernel,
    pub(super) tsc_khz: Option<u64>,
    pub(super) host_cores: u32,
    pub(super) host_memory_mb: u64,
    pub(super) cgroups: cgroup::Cgroups,
    /// Cold boots at once; restores do not take one.
    pub(super) boot_slots: Arc<tokio::sync::Semaphore>,
    pub(super) vms: Mutex<HashMap<String, Arc<Vm>>>,
    pub(super) guest_binary: PathBuf,
    pub(super) boot: Arc<BootSnapshots>,
    pub(super) builds: Arc<template_store::BaseBuilds>,
    pub(super) templates_lock: tokio::sync::RwLock<()>,
    pub(super) net: Network,
    /// Sealed RAM images of snapshots, shared by the VMs restored from them.
    pub(super) ram: ram::RamCache,
    /// VM numbers in use (uid `uid_base + 1 + n`).
    pub(super) uids: Mutex<std::collections::BTreeSet<u32>>,
    /// VMs restored and waiting for a create (see [`super::pool`]).
    pub(super) pool: pool::Pool,
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
                hidden: cfg.hidden_dirs(),
                netns: None,
                ram: None,
            },
        }));
        let cfg_pool = cfg.warm_pool.clone();
        let mgr = VmManager {
            guest_binary,
            boot,
            builds: Arc::new(template_store::BaseBuilds::default()),
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
            pool: pool::Pool::new(cfg_pool),
        };
        mgr.rediscover().await;
        let known: Vec<String> = mgr.vms().values().map(|v| v.place().to_string()).collect();
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
            if let Some(flavor) = images::debian::flavor(&name)
                && !images::debian::is_current(flavor, &t, &mgr.kernel, &mgr.guest_binary)
            {
                tracing::info!(template = %name, "the template is out of date; rebuilding it");
                if let Err(e) = mgr.build_template(flavor.name).await {
                    tracing::warn!(template = %name, error = %e, "could not start the rebuild");
                }
            }
            mgr.boot.request(&t, snapshot::DEFAULT_SHAPE);
        }
        let mgr = Arc::new(mgr);
        tokio::spawn(cap_console_logs(Arc::downgrade(&mgr)));
        tokio::spawn(sampler::run(Arc::downgrade(&mgr), mgr.cfg.sample_interval));
        if !mgr.pool.cfg.specs.is_empty() {
            tokio::spawn(pool::run(Arc::downgrade(&mgr)));
        }
        Ok(mgr)
    }

    pub fn accel(&self) -> &Accel {
        &self.accel
    }

    /// How this host's VMs are put in cgroups.
    pub fn cgroups(&self) -> &cgroup::Cgroups {
        &self.cgroups
    }

    pub(super) fn vms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Vm>>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn vm_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("vms").join(id)
    }

    /// A live VM; one being destroyed is already gone for every caller.
    pub(super) fn lookup(&self, id: &str) -> Result<Arc<Vm>, VmError> {
        self.vms()
            .get(id)
            .filter(|vm| !vm.destroyed.load(Ordering::Acquire))
            .cloned()
            .ok_or_else(|| VmError::NotFound(id.to_string()))
    }

    pub(super) fn uids(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<u32>> {
        self.uids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A uid no other VM of this agent runs as.
    pub(super) fn claim_uid(&self) -> Result<u32, VmError> {
        let mut used = self.uids();
        let n = (0..MAX_VM_UIDS)
            .find(|n| !used.contains(n))
            .ok_or_else(|| VmError::Conflict("this host runs too many VMs".into()))?;
        used.insert(n);
        Ok(self.cfg.jail.uid_base + 1 + n)
    }

    pub(super) fn release_uid(&self, uid: u32) {
        if let Some(n) = uid.checked_sub(self.cfg.jail.uid_base + 1) {
            self.uids().remove(&n);
        }
    }

    pub async fn get(&self, id: &str) -> Result<VmInfo, VmError> {
        Ok(self.lookup(id)?.info())
    }

    /// The VM's usage samples from `start` to `end` (unix seconds, both included; either
    /// open), oldest first.
    pub fn metrics(
        &self,
        id: &str,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Result<Vec<crate::proto::api::SandboxMetric>, VmError> {
        Ok(self.lookup(id)?.samples().between(start, end))
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
        let last = self.teardown(&vm).await;
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
        tracing::debug!(vm = %id, "VM destroyed");
        Ok(())
    }

    /// Ends the VM's QEMU and removes its cgroup, network, uid and folder; the error is the
    /// folder's when it could not be removed.
    pub(super) async fn teardown(&self, vm: &Vm) -> Option<std::io::Error> {
        vm.channel.close();
        vm.kill_qemu().await;
        vm.rt().stop();
        self.cgroups.remove(vm.place()).await;
        if vm.record.network {
            self.net.destroy(vm.place(), vm.net_place().as_ref()).await;
        }
        if let Some(uid) = vm.record.uid {
            self.release_uid(uid);
        }
        // What QEMU's exit leaves behind can still be settling (a busy host): a few tries, up
        // to about 3 s, before the folder counts as stuck.
        let mut last = None;
        for attempt in 0..10u64 {
            match tokio::fs::remove_dir_all(&vm.dir).await {
                Ok(()) => return None,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
        }
        last
    }

    /// Capacity figures for heartbeats: (VMs, their memory MB, their vcpus), counting starting,
    /// running and paused VMs; the warm pool's VMs count in memory and vCPUs (not as VMs).
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
        let (pool_mem, pool_cpus) = self.pool.usage();
        (n, mem + pool_mem, cpus + pool_cpus)
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
        self.pool.kill_now();
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
            .filter(|vm| vm.rt().state() == VmState::Running)
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

/// Makes `dir` root's alone (0700): VM folders, records, snapshots and credentials below it
/// are out of reach of every other user, whatever their own modes.
pub(super) fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", dir.display()))
}

/// A read-only copy of the guest kernel in the data dir (refreshed when the original changes),
/// so that every VM folder gets it as a hard link.
pub(super) fn own_kernel_copy(vmlinuz: &Path, data_dir: &Path) -> anyhow::Result<PathBuf> {
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

pub(super) fn host_memory_mb() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}
