//! Creating a VM: the request checked against this host, its uid and network claimed, then
//! booted (a hung cold boot gets one more try); a failed create leaves nothing behind.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::boot::{BootError, Source};
use super::instance::Vm;
use super::record::VmRecord;
use super::runtime::Runtime;
use super::snapshot::Snapshot;
use super::vm_id::validate_id;
use super::{
    BOOT_ATTEMPTS, MAX_VCPUS, MIN_MEMORY_MB, VmError, VmInfo, VmManager, VmState, bad, now_unix_ms,
    template_store,
};
use crate::agent::images;
use crate::agent::net::SandboxNet;
use crate::proto::agent::CreateVmRequest;
use crate::proto::validate::validate_env;

impl VmManager {
    pub(super) fn validate(&self, req: &CreateVmRequest) -> Result<Source, VmError> {
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
    pub(super) fn snapshot_template(&self, name: &str) -> Option<Snapshot> {
        if !template_store::valid_name(name) {
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
        if !req.cold_boot
            && matches!(source, Source::Base(_))
            && let Some(r) = self.take_from_pool(&req, policy.as_ref(), started).await
        {
            return r;
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

    /// Boots (or restores) the VM, trying a hung cold boot once more.
    pub(super) async fn create_attempts(
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
                    access_token: req.access_token.clone(),
                    place: None,
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
                // A cold boot under TCG can stall for good (TSC calibration on a busy host, see
                // docs/ARCHITECTURE.md#qemu-on-these-hosts); a second try usually goes through.
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
}
