//! One VM as the manager holds it: its record, its runtime state, its guest channel and the
//! lock its pause, resume and snapshot take.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngExt;
use tokio::sync::watch;

use super::channel::{ChannelError, GuestChannel};
use super::record::{VmRecord, write_record};
use super::runtime::Runtime;
use super::samples::Samples;
use super::snapshot::Shape;
use super::{VmError, VmInfo, VmState, now_unix_ms, qemu};
use crate::agent::net::SandboxNet;
use crate::proto::guest::Init;

pub(super) struct Vm {
    pub(super) id: String,
    pub(super) dir: PathBuf,
    pub(super) record: VmRecord,
    /// The network place in force (the record's, updated by policy changes).
    pub(super) net: Mutex<Option<SandboxNet>>,
    pub(super) rt: Mutex<Runtime>,
    pub(super) channel: GuestChannel,
    pub(super) destroyed: AtomicBool,
    /// Held by pause, resume and snapshot.
    pub(super) op: tokio::sync::Mutex<()>,
    /// Its usage samples (see [`super::sampler`]).
    pub(super) samples: Mutex<Samples>,
}

impl Vm {
    pub(super) fn new(dir: &Path, record: VmRecord, rt: Runtime) -> Vm {
        Vm {
            id: record.id.clone(),
            dir: dir.to_path_buf(),
            net: Mutex::new(record.net.clone()),
            record,
            rt: Mutex::new(rt),
            channel: GuestChannel::new(dir, qemu::AGENT_SOCK),
            destroyed: AtomicBool::new(false),
            op: tokio::sync::Mutex::new(()),
            samples: Mutex::new(Samples::default()),
        }
    }

    pub(super) fn rt(&self) -> std::sync::MutexGuard<'_, Runtime> {
        self.rt.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn samples(&self) -> std::sync::MutexGuard<'_, Samples> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn net_place(&self) -> Option<SandboxNet> {
        self.net.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The name of its folder, cgroup and network namespace (its id, but for a VM handed over
    /// from the warm pool).
    pub(super) fn place(&self) -> &str {
        self.record.place()
    }

    pub(super) fn uid(&self) -> u32 {
        self.record.uid.unwrap_or(u32::MAX)
    }

    pub(super) fn shape(&self) -> Shape {
        Shape {
            memory_mb: self.record.memory_mb,
            vcpus: self.record.vcpus,
            network: self.record.network,
        }
    }

    /// Writes `vm.json` with the current runtime facts.
    pub(super) fn persist(&self) -> anyhow::Result<()> {
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
    pub(super) fn info(&self) -> VmInfo {
        let mut rt = self.rt();
        if matches!(rt.state(), VmState::Running | VmState::Paused)
            && rt.pid.is_some_and(|pid| !qemu::is_alive(pid))
        {
            tracing::warn!(vm = %self.id, "QEMU is gone; marking the VM stopped");
            rt.stop();
        }
        VmInfo {
            id: self.id.clone(),
            template: self.record.template.clone(),
            state: rt.state(),
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
    pub(super) fn stopped_error(&self) -> VmError {
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
    pub(super) fn police_guest(self: &Arc<Vm>) {
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
            vm.rt().stop();
        });
    }

    /// Ends QEMU (SIGKILL) and waits until it is gone.
    pub(super) async fn kill_qemu(&self) {
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
pub(super) async fn wait_gone(pid: u32, exited: Option<watch::Receiver<bool>>, limit: Duration) {
    let deadline = Instant::now() + limit;
    if let Some(mut rx) = exited {
        let _ = tokio::time::timeout_at(deadline.into(), rx.wait_for(|e| *e)).await;
    }
    while qemu::is_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sandbox's identity as of now: its id, env and token, the host's clock and fresh entropy.
pub(super) fn new_init(
    sandbox_id: &str,
    env: &std::collections::BTreeMap<String, String>,
    access_token: Option<String>,
) -> Init {
    let mut entropy = vec![0u8; 64];
    rand::rng().fill(&mut entropy[..]);
    Init {
        sandbox_id: sandbox_id.to_string(),
        env: env.clone(),
        time_unix_ms: now_unix_ms(),
        entropy,
        hostname: None,
        access_token,
    }
}

/// How long a guest gets to take its Init.
pub(super) const INIT_WAIT: Duration = Duration::from_secs(20);

/// Sends the guest its identity with the current clock and fresh entropy (after a boot, a
/// restore and every resume) and returns once it is sent: the guest applies it while the
/// caller answers, and requests for the sandbox's user wait until it has (see
/// [`GuestChannel::begin_init`](super::channel::GuestChannel::begin_init)). `first`: the
/// sandbox's identity (a create), so a guest that does not take it is stopped; otherwise (a
/// resume) only the clock is late and that is logged.
pub(super) async fn send_init(vm: &Arc<Vm>, first: bool) -> Result<(), ChannelError> {
    let init = new_init(&vm.id, &vm.record.env, vm.record.access_token.clone());
    let deadline = Instant::now() + INIT_WAIT;
    let stream = vm.channel.begin_init(&init, INIT_WAIT).await?;
    let vm = vm.clone();
    tokio::spawn(async move {
        match vm.channel.finish_init(stream, deadline, first).await {
            Ok(ack) => {
                let skew = init.time_unix_ms as i64 - ack.previous_time_unix_ms as i64;
                tracing::debug!(vm = %vm.id, skew_ms = skew, "guest clock set");
            }
            // Deleted before the guest answered: nothing to tell.
            Err(ChannelError::Closed) if vm.destroyed.load(Ordering::Acquire) => {}
            Err(e) => {
                e.count();
                tracing::warn!(vm = %vm.id, first, error = %e, "the guest did not take its Init");
            }
        }
    });
    Ok(())
}

/// For a VM found running by a new agent: user requests wait while the guest is asked who it
/// is, and a guest that never got its Init (the previous agent went away between the create's
/// answer and the guest's acknowledgement) gets it now.
pub(super) fn confirm_identity(vm: &Arc<Vm>) {
    vm.channel.hold_identity();
    let vm = vm.clone();
    tokio::spawn(async move {
        let known = match vm.channel.connect(INIT_WAIT).await {
            Ok(hello) => hello.sandbox_id.as_deref() == Some(vm.id.as_str()),
            Err(e) => {
                // Requests then fail on their own (the guest is unreachable).
                tracing::warn!(vm = %vm.id, error = %e, "could not ask the guest for its identity");
                vm.channel.release_identity();
                return;
            }
        };
        if known {
            vm.channel.release_identity();
            return;
        }
        tracing::warn!(vm = %vm.id, "the guest never took its identity; sending it again");
        if let Err(e) = send_init(&vm, true).await {
            tracing::warn!(vm = %vm.id, error = %e, "could not send the guest its identity");
            vm.channel.release_identity();
        }
    });
}
