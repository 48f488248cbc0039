//! Starting a new VM's QEMU: from a base template's boot snapshot or cold from its kernel, the
//! guest then given its identity and the VM marked running. Restoring a snapshot is in
//! [`super::restore`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use tokio::sync::watch;

use super::channel::ChannelError;
use super::instance::{Vm, send_init};
use super::record::write_atomic;
use super::snapshot::Snapshot;
use super::{BOOT_TIMEOUT, VmError, VmInfo, VmManager, VmState, jail, qemu};
use crate::agent::images::Template;

/// Why a boot attempt failed: hung boots are worth another try.
pub(super) enum BootError {
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

/// Where a new VM comes from.
pub(super) enum Source {
    /// A base template: restored from its boot snapshot for the VM's shape when there is one,
    /// cold-booted otherwise.
    Base(Template),
    /// A sandbox snapshot (`tpl_…`): restored, with no other way to start.
    Snapshot(Snapshot),
}

impl VmManager {
    /// Starts a VM from its source: a sandbox snapshot is restored; a base template is restored
    /// from its boot snapshot unless `cold` asks for a boot from scratch (or none exists).
    pub(super) async fn start_vm(
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
                    rt.set_state(VmState::Starting).map_err(VmError::from)?;
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
    pub(super) async fn fresh_dir(&self, vm: &Vm) -> anyhow::Result<()> {
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

    pub(super) fn launch_spec<'a>(
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
    pub(super) fn spawn_qemu(
        &self,
        vm: &Arc<Vm>,
        spec: &qemu::LaunchSpec<'_>,
    ) -> Result<u32, VmError> {
        let args = qemu::args(spec);
        tracing::debug!(vm = %vm.id, ?args, "starting QEMU");
        let cgroup = self
            .cgroups
            .prepare(vm.place(), vm.record.vcpus, vm.record.memory_mb)?;
        let jail = jail::Jail {
            uid: vm.uid(),
            gid: vm.uid(),
            hidden: self.cfg.hidden_dirs(),
            netns: vm.record.network.then(|| self.net.netns_path(vm.place())),
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
                    if rt.state() != VmState::Stopped {
                        tracing::info!(vm = %vm.id, ?status, "QEMU exited");
                    }
                    rt.stop();
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
    pub(super) async fn cold_boot(
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
        if let Err(e) = &hello {
            e.count();
        }
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

    /// Gives the guest its identity (id, env, current clock, fresh entropy) and marks the VM
    /// running.
    pub(super) async fn finish_start(
        &self,
        vm: &Arc<Vm>,
        kind: &'static str,
        started: Instant,
    ) -> Result<VmInfo, BootError> {
        send_init(vm, true)
            .await
            .map_err(|e| VmError::GuestUnavailable(format!("init: {e}")))?;
        let boot_ms = started.elapsed().as_millis() as u64;
        {
            let mut rt = vm.rt();
            if vm.destroyed.load(Ordering::Acquire) || rt.state() == VmState::Stopped {
                return Err(VmError::NotFound(vm.id.clone()).into());
            }
            rt.set_state(VmState::Running).map_err(VmError::from)?;
            rt.boot_ms = Some(boot_ms);
            rt.boot_kind = Some(kind.into());
        }
        vm.persist()?;
        super::counters::boot(kind);
        tracing::debug!(
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
}
