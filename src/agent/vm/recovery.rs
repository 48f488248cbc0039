//! After an agent restart: the VMs a previous agent left are taken back (a live QEMU, or a
//! saved state) with their network; the rest is removed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::instance::{Vm, confirm_identity, wait_gone};
use super::record::{read_pid, read_record};
use super::runtime::Runtime;
use super::vm_id::validate_id;
use super::{Qmp, STATE_TMP, VmManager, VmState, qemu};

impl VmManager {
    /// Reattaches to live VMs in `data_dir/vms` and removes the rest.
    pub(super) async fn rediscover(&self) {
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
                        (rt.pid, rt.state())
                    };
                    tracing::info!(vm = %name, ?pid, ?state, "found a VM of a previous agent");
                    self.vms().insert(vm.id.clone(), vm);
                }
                Err(why) => {
                    tracing::info!(vm = %name, %why, "removing a VM left by a previous agent");
                    if let Some(pid) = read_pid(&dir)
                        && qemu::is_our_qemu(pid, &dir)
                    {
                        qemu::kill(pid, libc::SIGKILL);
                        // Its cgroup can only go once it is gone.
                        wait_gone(pid, None, Duration::from_secs(10)).await;
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                    if validate_id(&name).is_ok() || super::pool::is_place(&name) {
                        self.cgroups.remove(&name).await;
                    }
                }
            }
        }
    }

    /// Takes back the network of a VM a previous agent left; a paused VM whose namespace is gone
    /// (a host reboot) gets a new one with the same policy.
    pub(super) async fn reattach_net(&self, vm: &Arc<Vm>) {
        let Some(place) = vm.net_place() else { return };
        let Err(e) = self.net.reattach(vm.place(), &place).await else {
            return;
        };
        if vm.rt().state() != VmState::Paused {
            tracing::warn!(vm = %vm.id, error = %format!("{e:#}"), "the running VM's network could not be taken back");
            return;
        }
        match self.net.create(vm.place(), &place.policy).await {
            Ok(n) => {
                *vm.net.lock().unwrap_or_else(|p| p.into_inner()) = Some(n);
                let _ = vm.persist();
            }
            Err(e) => {
                tracing::warn!(vm = %vm.id, error = %format!("{e:#}"), "could not make the paused VM's network again")
            }
        }
    }

    /// A VM a previous agent left: a live QEMU (running, or stopped by an interrupted pause or
    /// snapshot, which is continued: the server still counts it running) or a saved state
    /// (`state.bin`: paused; a QEMU still around it is ended).
    pub(super) async fn reattach(&self, name: &str, dir: &Path) -> Result<Arc<Vm>, String> {
        if validate_id(name).is_err() && !super::pool::is_place(name) {
            return Err("not a VM folder name".into());
        }
        let record = read_record(dir).ok_or("no readable vm.json")?;
        if record.place() != name {
            return Err("vm.json names another VM".into());
        }
        // A warm pool VM that was never handed over has no sandbox id: it is not kept.
        validate_id(&record.id).map_err(|_| "a warm pool VM that was never handed over")?;
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
        // A paused state that keeps only the pages its guest changed (`memory_file`, see
        // `state_diff`) needs its template's RAM file to resume; a full one does not.
        if pid.is_none() && !record.memory_file {
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
        // A running VM maps its template's RAM file; a paused one with a light state resumes on
        // it (and fails to, rather than resume without the pages, if the file went missing).
        rt.memory_file = record.memory_file;
        let vm = Arc::new(Vm::new(dir, record, rt));
        vm.police_guest();
        if pid.is_some() {
            confirm_identity(&vm);
        } else {
            let _ = vm.persist();
        }
        Ok(vm)
    }
}
