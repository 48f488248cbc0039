//! Pause, resume and snapshot of a VM.
//!
//! Pause: QMP `stop`, the memory and device state saved into the VM's folder (`state.tmp`, renamed
//! to `state.bin` when complete: that rename is the commit point), QEMU ended. The VM keeps its
//! folder, disk and place in the capacity figures. A VM whose RAM maps a template's RAM file keeps
//! that file and only the pages its guest changed ([`super::state_diff`]); otherwise the whole RAM
//! is in the state. Resume: a new QEMU with the same command line (the template's RAM mapped
//! privately again, or anonymous RAM) loads `state.bin`, continues, and the guest gets its Init
//! again so its clock jumps to now; `state.bin` is removed once the VM runs. A process started
//! before the pause goes on after it.
//!
//! Snapshot: the same save, into a new template folder, plus a copy of the VM's overlay frozen as
//! the template's top layer; a running VM is continued afterwards (it is stopped for about as long
//! as a pause takes), a paused one stays paused (its `state.bin` is linked, not copied). The
//! template's RAM is then moved into a file ([`VmManager::ram_to_file`]), off the VM's path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::instance::{INIT_WAIT, send_init, wait_gone};
use super::jail;
use super::record::write_atomic;
use super::snapshot::{self, STATE_LIMIT, SnapshotMeta};
use super::template_store::{self, TemplateError};
use super::{
    INCOMING, Qmp, RESTORE_TIMEOUT, STATE_TMP, Vm, VmError, VmInfo, VmManager, VmState,
    now_unix_ms, qemu,
};
use crate::agent::images;
use crate::proto::agent::{SnapshotVmRequest, TemplateInfo};

/// The converted state while [`VmManager::ram_to_file`] writes it.
const CONVERTED: &str = "state.converted";
/// The paused state without the template's pages, while [`super::state_diff`] writes it.
const STATE_LIGHT_TMP: &str = "state.light.tmp";
/// The name QEMU gives the RAM block of the `memory-backend` with id `mem`.
const RAM_BLOCK: &str = "mem";

fn internal(e: anyhow::Error) -> VmError {
    VmError::Internal(e)
}

impl VmManager {
    /// Pauses a running VM: its memory and device state go to `state.bin` in its folder and its
    /// QEMU ends.
    pub async fn pause(&self, id: &str) -> Result<VmInfo, VmError> {
        let vm = self.lookup(id)?;
        let _op = vm.op.lock().await;
        let state = vm.info().state;
        if state != VmState::Running {
            return Err(VmError::Conflict(format!(
                "VM {id} is {}, not running",
                state.as_str()
            )));
        }
        // An Init still on its way would be cut short by the disconnect below and take the VM
        // down with it: let it land first (it is answered within milliseconds or never).
        let _ = vm.channel.identity_settled(INIT_WAIT).await;
        let started = Instant::now();
        let (pid, exited) = {
            let rt = vm.rt();
            (rt.pid, rt.exited.clone())
        };
        let pid = pid.context("the VM has no QEMU").map_err(internal)?;
        let dir = &vm.dir;
        let mut q = Qmp::connect_wait(dir, qemu::QMP_SOCK, Duration::from_secs(5))
            .await
            .map_err(|e| self.gone_or(&vm, e))?;
        q.stop().await.map_err(|e| self.gone_or(&vm, e))?;
        let stopped_ms = started.elapsed().as_millis() as u64;
        vm.channel.disconnect();
        let saved = async {
            q.set_ignore_shared(false).await?;
            q.save_state(STATE_TMP, STATE_LIMIT).await
        }
        .await;
        if let Err(e) = saved {
            let _ = std::fs::remove_file(dir.join(STATE_TMP));
            if q.cont().await.is_ok() {
                tracing::warn!(vm = %id, error = %format!("{e:#}"), "pause failed; the VM goes on running");
            }
            return Err(self.gone_or(&vm, e.context("saving the VM state")));
        }
        // QEMU stays (stopped) until the VM is recorded paused: its exit must not read as a crash.
        let light = vm.rt().memory_file && dir.join(qemu::MEM).is_file() && lighten(dir).await;
        std::fs::rename(dir.join(STATE_TMP), dir.join(qemu::STATE))
            .context("keep the saved state")
            .map_err(internal)?;
        {
            let mut rt = vm.rt();
            rt.pid = None;
            rt.exited = None;
            rt.set_state(VmState::Paused)?;
            rt.memory_file = light;
        }
        if let Err(e) = vm.persist() {
            tracing::warn!(vm = %id, error = %format!("{e:#}"), "recording the pause");
        }
        let _ = q.quit().await;
        drop(q);
        wait_gone(pid, exited, Duration::from_secs(10)).await;
        if qemu::is_alive(pid) {
            qemu::kill(pid, libc::SIGKILL);
        }
        if !light {
            // The whole RAM is in the state: the template's RAM file is no longer needed.
            let _ = std::fs::remove_file(dir.join(qemu::MEM));
        }
        let _ = std::fs::remove_file(qemu::pid_file(dir));
        tracing::debug!(
            vm = %id,
            pause_ms = started.elapsed().as_millis() as u64,
            stop_ms = stopped_ms,
            state_bytes = snapshot::allocated(&dir.join(qemu::STATE)),
            "VM paused"
        );
        Ok(vm.info())
    }

    /// Resumes a paused VM where it stopped and resynchronises its clock.
    pub async fn resume(&self, id: &str) -> Result<VmInfo, VmError> {
        let vm = self.lookup(id)?;
        let _op = vm.op.lock().await;
        let state = vm.info().state;
        if state != VmState::Paused {
            return Err(VmError::Conflict(format!(
                "VM {id} is {}, not paused",
                state.as_str()
            )));
        }
        let started = Instant::now();
        let dir = &vm.dir;
        let live = vm.rt().pid.filter(|p| qemu::is_alive(*p));
        if live.is_some() {
            // A QEMU that was only stopped: continue it.
            let mut q = Qmp::connect_wait(dir, qemu::QMP_SOCK, Duration::from_secs(5))
                .await
                .map_err(|e| self.gone_or(&vm, e))?;
            q.cont().await.map_err(|e| self.gone_or(&vm, e))?;
        } else {
            if !dir.join(qemu::STATE).is_file() {
                return Err(internal(anyhow::anyhow!(
                    "the paused VM has no saved state in {}",
                    dir.display()
                )));
            }
            let memory_file = vm.rt().memory_file;
            let spec = self.launch_spec(&vm, true, memory_file);
            let pid = self.spawn_qemu(&vm, &spec)?;
            let loaded = self.load_and_continue(&vm).await;
            if let Err(e) = loaded {
                vm.channel.disconnect();
                vm.kill_qemu().await;
                {
                    let mut rt = vm.rt();
                    rt.pid = None;
                    rt.exited = None;
                    // The saved state is still there: the VM stays paused.
                    if rt.state() == VmState::Stopped
                        && let Err(refused) = rt.set_state(VmState::Paused)
                    {
                        tracing::error!(vm = %id, error = %refused, "the state table refused a return to paused");
                    }
                }
                let _ = std::fs::remove_file(qemu::pid_file(dir));
                tracing::warn!(vm = %id, pid, error = %format!("{e:#}"), "resume failed; the VM stays paused");
                return Err(self.gone_or(&vm, e));
            }
        }
        if let Err(refused) = vm.rt().set_state(VmState::Running) {
            // QEMU went away as it continued.
            return Err(self.gone_or_vm(&vm, refused.into()));
        }
        if let Err(e) = vm.persist() {
            tracing::warn!(vm = %id, error = %format!("{e:#}"), "recording the resume");
        }
        // The VM runs whatever happens now; a guest that does not answer yet is reached by the
        // next request.
        let answered = match vm.channel.connect(RESTORE_TIMEOUT).await {
            // A guest that never had its identity (see `confirm_identity`) is held to it as a
            // create's; otherwise only its clock is set again.
            Ok(hello) => send_init(&vm, hello.sandbox_id.as_deref() != Some(id))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = answered {
            tracing::warn!(vm = %id, error = %e, "the resumed guest did not take its Init");
        }
        tracing::debug!(
            vm = %id,
            resume_ms = started.elapsed().as_millis() as u64,
            "VM resumed"
        );
        Ok(vm.info())
    }

    /// Loads `state.bin` into the VM's new QEMU and continues it; the saved state is removed
    /// once the VM runs.
    async fn load_and_continue(&self, vm: &Arc<Vm>) -> anyhow::Result<()> {
        let dir = &vm.dir;
        let mut exited = vm.rt().exited.clone().context("no exit watch")?;
        let load = async {
            let mut q = Qmp::connect_wait(dir, qemu::QMP_SOCK, Duration::from_secs(10)).await?;
            q.set_ignore_shared(false).await?;
            q.load_state(qemu::STATE, STATE_LIMIT).await?;
            anyhow::Ok(q)
        };
        let mut q = tokio::select! {
            r = load => r?,
            _ = exited.wait_for(|e| *e) => {
                anyhow::bail!("QEMU exited while loading the saved state: {}", qemu::console_tail(dir, 4));
            }
        };
        vm.channel.disconnect();
        q.cont().await.context("continue the VM")?;
        let _ = std::fs::remove_file(dir.join(qemu::STATE));
        let _ = std::fs::remove_file(dir.join(INCOMING));
        Ok(())
    }

    /// Pauses every running VM (the agent lost its credentials: nothing may run unaccounted).
    /// Returns how many were paused.
    pub async fn pause_all(&self) -> usize {
        let vms: Vec<Arc<Vm>> = self.vms().values().cloned().collect();
        let mut paused = 0;
        for vm in vms {
            if vm.info().state != VmState::Running {
                continue;
            }
            match self.pause(&vm.id).await {
                Ok(_) => paused += 1,
                Err(e) => tracing::warn!(vm = %vm.id, error = %e, "could not pause"),
            }
        }
        tracing::warn!(paused, "paused every running VM");
        paused
    }

    /// Keeps the VM's memory and disk as the template `req.template` on this host. A running VM
    /// is stopped for the save and continued; a paused one stays paused.
    pub async fn snapshot(
        &self,
        id: &str,
        req: &SnapshotVmRequest,
    ) -> Result<TemplateInfo, TemplateError> {
        let name = req.template.as_str();
        if !template_store::valid_name(name) || images::BASE_TEMPLATES.contains(&name) {
            return Err(VmError::BadRequest {
                field: "template",
                message: "must be 1 to 64 letters, digits, '-', '_' or '.', and not a base template's name".into(),
            }
            .into());
        }
        let vm = self.lookup(id)?;
        let _op = vm.op.lock().await;
        let templates_dir = images::templates_dir(&self.cfg.data_dir);
        let final_dir = templates_dir.join(name);
        if final_dir.exists() && !req.overwrite {
            return Err(TemplateError::AlreadyExists(name.to_string()));
        }
        let state = vm.info().state;
        if !matches!(state, VmState::Running | VmState::Paused) {
            return Err(VmError::Conflict(format!(
                "VM {id} is {}; only running and paused VMs are snapshotted",
                state.as_str()
            ))
            .into());
        }
        let started = Instant::now();
        std::fs::create_dir_all(&templates_dir)
            .with_context(|| format!("create {}", templates_dir.display()))?;
        let tmp = templates_dir.join(format!(".build-snap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        let result = self.snapshot_into(&vm, &tmp).await;
        let meta = match result {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(match e {
                    TemplateError::Vm(v) => TemplateError::Vm(self.gone_or_vm(&vm, v)),
                    other => other,
                });
            }
        };
        {
            let _files = self.templates_lock.write().await;
            if final_dir.exists() && !req.overwrite {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(TemplateError::AlreadyExists(name.to_string()));
            }
            snapshot::install_folder(&tmp, &final_dir)?;
        }
        let snap = snapshot::Snapshot {
            dir: final_dir,
            meta,
        };
        tracing::info!(
            vm = %id,
            template = %name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            size_bytes = snap.size_bytes(),
            "snapshot kept as a template"
        );
        Ok(template_store::snapshot_info(name, &snap))
    }

    /// Writes the VM's state and frozen disk into `tmp`.
    async fn snapshot_into(
        &self,
        vm: &Arc<Vm>,
        tmp: &std::path::Path,
    ) -> Result<SnapshotMeta, TemplateError> {
        let dir = &vm.dir;
        let layers = vm.rt().layers.clone();
        for l in &layers {
            qemu::link_file(&dir.join(l), &tmp.join(l), false)?;
        }
        qemu::link_file(&dir.join(qemu::INITRD), &tmp.join(qemu::INITRD), false)?;
        let layer = snapshot::new_layer_name();
        let live = vm.rt().pid.filter(|p| qemu::is_alive(*p));
        // A paused state without the template's pages: the conversion below needs them.
        let light = live.is_none() && vm.rt().memory_file;
        if live.is_some() {
            let mut q = Qmp::connect_wait(dir, qemu::QMP_SOCK, Duration::from_secs(5)).await?;
            let was_running = q.status().await? == "running";
            q.stop().await?;
            let saved = async {
                q.set_ignore_shared(false).await?;
                let target = tmp.join(qemu::STATE);
                q.save_state(&target.to_string_lossy(), STATE_LIMIT).await?;
                // The migration flushed and let go of the disk: the overlay is consistent.
                tokio::fs::copy(dir.join(qemu::DISK), tmp.join(&layer))
                    .await
                    .context("copy the VM's disk")?;
                anyhow::Ok(())
            }
            .await;
            if was_running && let Err(e) = q.cont().await {
                tracing::error!(vm = %vm.id, error = %format!("{e:#}"), "could not continue the VM after its snapshot");
            }
            saved?;
        } else {
            if !dir.join(qemu::STATE).is_file() {
                return Err(VmError::Conflict(format!("VM {} has no saved state", vm.id)).into());
            }
            qemu::link_file(&dir.join(qemu::STATE), &tmp.join(qemu::STATE), false)?;
            if light {
                tokio::fs::copy(dir.join(qemu::MEM), tmp.join(qemu::MEM))
                    .await
                    .context("copy the template's RAM under the paused state")?;
                // The conversion's QEMU writes the paused state's pages into it.
                std::fs::set_permissions(
                    tmp.join(qemu::MEM),
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .context("make the RAM copy writable")?;
            }
            tokio::fs::copy(dir.join(qemu::DISK), tmp.join(&layer))
                .await
                .context("copy the VM's disk")?;
        }
        snapshot::read_only(&tmp.join(&layer))?;
        let mut chain = layers;
        chain.push(layer);
        let mut meta = SnapshotMeta {
            kind: "snapshot".into(),
            base: vm.record.base.clone(),
            vcpus: vm.record.vcpus,
            memory_mb: vm.record.memory_mb,
            network: vm.record.network,
            accel: self.accel.kind.to_string(),
            qemu: self.boot.env.qemu_version.clone(),
            memory_file: false,
            layers: chain,
            created_unix_ms: now_unix_ms(),
            stamp: None,
            source_vm: Some(vm.id.clone()),
            netdev: Some("tap".into()),
        };
        // The VM goes on meanwhile: this works on the copies in `tmp`.
        let t = Instant::now();
        match self.ram_to_file(tmp, &meta).await {
            Ok(()) => {
                meta.memory_file = true;
                tracing::debug!(vm = %vm.id, ms = t.elapsed().as_millis() as u64, "snapshot RAM moved to a file");
            }
            Err(e) if light => {
                return Err(VmError::Internal(
                    e.context("moving the paused VM's RAM into the snapshot"),
                )
                .into());
            }
            Err(e) => {
                tracing::warn!(vm = %vm.id, error = %format!("{e:#}"), "keeping the snapshot's RAM in its state stream (slower restores)");
                for f in [qemu::MEM, CONVERTED, qemu::DISK, qemu::KERNEL] {
                    let _ = std::fs::remove_file(tmp.join(f));
                }
            }
        }
        write_atomic(
            &tmp.join(snapshot::META),
            &serde_json::to_vec_pretty(&meta).context("meta")?,
        )?;
        Ok(meta)
    }

    /// Rewrites a snapshot whose RAM is in `state.bin` into the boot-snapshot form: RAM in
    /// `mem.ram`, device state alone in `state.bin`. A QEMU that never runs the guest loads the
    /// state into a shared file backend and saves it again with `x-ignore-shared`. VMs restored
    /// from it then map the RAM privately: faster to start, and they share its unchanged pages.
    async fn ram_to_file(&self, tmp: &std::path::Path, meta: &SnapshotMeta) -> anyhow::Result<()> {
        qemu::link_file(&self.kernel.vmlinuz, &tmp.join(qemu::KERNEL), true)?;
        // A throwaway overlay: the frozen top layer is never opened for writing.
        qemu::create_overlay(tmp, qemu::DISK, meta.top(), "qcow2").await?;
        let spec = qemu::LaunchSpec {
            id: "snapshot-convert",
            vcpus: meta.vcpus,
            memory_mb: meta.memory_mb,
            net: if meta.network {
                qemu::NetDev::Hub
            } else {
                qemu::NetDev::None
            },
            confined: true,
            accel: &self.accel,
            tsc_khz: self.tsc_khz,
            memory: qemu::Memory::File {
                path: qemu::MEM,
                shared: true,
            },
            disk: qemu::DISK,
            incoming: true,
        };
        let j = &self.boot.env.jail;
        jail::hand_over(
            tmp,
            j.uid,
            j.gid,
            &[qemu::DISK, qemu::CONSOLE_LOG, qemu::MEM],
        )?;
        let mut child = qemu::spawn(tmp, &qemu::args(&spec), None, Some(j), false)?;
        let pid = child.id().context("QEMU exited at once")?;
        write_atomic(&qemu::pid_file(tmp), format!("{pid}\n").as_bytes())?;
        let converted = async {
            let mut q = Qmp::connect_wait(tmp, qemu::QMP_SOCK, Duration::from_secs(10)).await?;
            q.set_ignore_shared(false).await?;
            q.load_state(qemu::STATE, STATE_LIMIT).await?;
            q.set_ignore_shared(true).await?;
            q.save_state(CONVERTED, STATE_LIMIT).await?;
            let _ = q.quit().await;
            anyhow::Ok(())
        };
        let result = tokio::select! {
            r = converted => r,
            status = child.wait() => Err(anyhow::anyhow!(
                "QEMU exited ({status:?}): {}", qemu::console_tail(tmp, 4)
            )),
        };
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            qemu::kill(pid, libc::SIGKILL);
            let _ = child.wait().await;
        }
        for f in [
            qemu::PID_FILE,
            qemu::DISK,
            qemu::KERNEL,
            qemu::QMP_SOCK,
            qemu::AGENT_SOCK,
            qemu::CONSOLE_LOG,
            qemu::QEMU_LOG,
        ] {
            let _ = std::fs::remove_file(tmp.join(f));
        }
        result?;
        std::fs::rename(tmp.join(CONVERTED), tmp.join(qemu::STATE))?;
        snapshot::read_only(&tmp.join(qemu::MEM))?;
        jail::reclaim(tmp)?;
        Ok(())
    }

    /// `NotFound` when the VM was destroyed meanwhile (that is why the operation failed),
    /// `Internal(e)` otherwise.
    fn gone_or(&self, vm: &Vm, e: anyhow::Error) -> VmError {
        self.gone_or_vm(vm, VmError::Internal(e))
    }

    fn gone_or_vm(&self, vm: &Vm, e: VmError) -> VmError {
        if vm.destroyed.load(std::sync::atomic::Ordering::Acquire) {
            VmError::NotFound(vm.id.clone())
        } else {
            e
        }
    }
}

/// Rewrites the VM's just-saved `state.tmp` without the RAM pages its template's RAM file still
/// holds (see [`super::state_diff`]). False when that failed: the full state is kept and the
/// resume maps no RAM file.
async fn lighten(dir: &std::path::Path) -> bool {
    let dir = dir.to_path_buf();
    let t = Instant::now();
    let done = tokio::task::spawn_blocking(move || {
        let light = dir.join(STATE_LIGHT_TMP);
        let r = super::state_diff::drop_template_pages(
            &dir.join(STATE_TMP),
            &light,
            RAM_BLOCK,
            &dir.join(qemu::MEM),
        )
        .and_then(|f| {
            std::fs::rename(&light, dir.join(STATE_TMP))?;
            Ok(f)
        });
        if r.is_err() {
            let _ = std::fs::remove_file(&light);
        }
        r
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|r| r);
    match done {
        Ok(f) => {
            tracing::debug!(
                pages = f.pages,
                dropped = f.dropped,
                ms = t.elapsed().as_millis() as u64,
                "paused state: the template's pages dropped"
            );
            true
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "keeping the whole RAM in the paused state (a heavier resume)");
            false
        }
    }
}
