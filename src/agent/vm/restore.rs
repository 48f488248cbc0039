//! Restoring a snapshot into a new VM: the snapshot's files linked into the VM's folder, QEMU
//! started waiting for the state, the state loaded, the guest reached while the VM continues.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::boot::BootError;
use super::channel::ChannelError;
use super::instance::Vm;
use super::snapshot::{self, STATE_LIMIT, Snapshot};
use super::{INCOMING, Qmp, RESTORE_TIMEOUT, VmError, VmInfo, VmManager, qemu};

impl VmManager {
    /// Restores `snap` into `vm`: the snapshot's files linked into the VM's folder, a fresh
    /// overlay on its top layer, QEMU started waiting for the state, the state loaded, the
    /// guest channel connected while the VM continues.
    pub(super) async fn restore(
        &self,
        vm: &Arc<Vm>,
        snap: &Snapshot,
        started: Instant,
    ) -> Result<VmInfo, BootError> {
        self.restore_guest(vm, snap, started).await?;
        self.finish_start(vm, "snapshot", started).await
    }

    /// The restore up to the guest's answer, without its identity: a warm pool VM waits there
    /// (see [`super::pool`]).
    pub(super) async fn restore_guest(
        &self,
        vm: &Arc<Vm>,
        snap: &Snapshot,
        started: Instant,
    ) -> Result<(), BootError> {
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
        // Connect while the VM starts running: the guest answers at once
        // (docs/ARCHITECTURE.md#qemu-on-these-hosts).
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
        if let Err(e) = &hello {
            e.count();
        }
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
        Ok(())
    }
}
