//! Per-VM usage samples: every `--sample-interval` (5 s by default) each running VM gets one
//! [`SandboxMetric`], kept in memory for the last [`WINDOW`](super::samples::WINDOW) (see
//! [`super::samples`]) and served by `GET /v1/vms/{id}/metrics`.
//!
//! CPU comes from the host's side: the VM's cgroup (`cpu.stat` `usage_usec`) or, without one,
//! its QEMU's `/proc/PID/stat` (user + system time of all its threads); the share of the VM's
//! vCPUs used since the previous sample is the figure. Memory and disk come from the guest, one
//! small request over the guest channel (the guest reads `/proc/meminfo` and `statvfs("/")`).
//! A sample costs one file read and one frame each way per VM. Paused and stopped VMs get no
//! samples: a gap in the series is the time they were not running.

use std::path::Path;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::instance::Vm;
use super::samples::{CpuMark, WINDOW, cpu_pct};
use super::{VmManager, VmState};
use crate::proto::api::SandboxMetric;

/// How long the guest may take to give its figures (it answers in milliseconds).
const GUEST_WAIT: Duration = Duration::from_secs(2);

/// Samples every running VM every `interval` while the manager lives.
pub(super) async fn run(mgr: Weak<VmManager>, interval: Duration) {
    let interval = interval.max(Duration::from_secs(1));
    let max = (WINDOW.as_secs() / interval.as_secs()).max(1) as usize + 1;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(m) = mgr.upgrade() else { return };
        let vms: Vec<_> = m.vms().values().cloned().collect();
        let cgroup_root = m.cgroups.root().map(Path::to_path_buf);
        drop(m);
        let samples = vms.iter().map(|vm| sample(vm, cgroup_root.as_deref(), max));
        futures_util::future::join_all(samples).await;
    }
}

/// Takes one sample of `vm` if it is running.
async fn sample(vm: &Vm, cgroup_root: Option<&Path>, max: usize) {
    let (state, pid) = {
        let rt = vm.rt();
        (rt.state(), rt.pid)
    };
    let (Some(pid), VmState::Running) = (pid, state) else {
        vm.samples().pause();
        return;
    };
    let cgroup = cgroup_root.map(|r| r.join(vm.place()));
    let Some(usage_us) = cpu_usage_us(cgroup.as_deref(), pid) else {
        return;
    };
    let mark = CpuMark {
        pid,
        usage_us,
        at: Instant::now(),
    };
    let guest = match vm.channel.stats(GUEST_WAIT).await {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::debug!(vm = %vm.id, error = %e, "no memory and disk figures from the guest");
            None
        }
    };
    // The VM may have been paused meanwhile: a sample is only for a VM that is still running
    // in the same QEMU.
    if vm.rt().state() != VmState::Running || vm.rt().pid != Some(pid) {
        return;
    }
    let mut s = vm.samples();
    let previous = s.last_cpu.replace(mark);
    if let Some(g) = guest {
        s.last_guest = Some(g);
    }
    let Some(previous) = previous.filter(|p| p.pid == pid) else {
        return; // the first reading of this QEMU: the next sample has something to compare
    };
    let g = s.last_guest.unwrap_or_default();
    let metric = SandboxMetric {
        timestamp: crate::time::unix_now(),
        cpu_count: vm.record.vcpus,
        cpu_used_pct: cpu_pct(previous, mark, vm.record.vcpus),
        mem_used: g.mem_used,
        mem_total: g.mem_total,
        mem_cache: g.mem_cache,
        disk_used: g.disk_used,
        disk_total: g.disk_total,
    };
    s.push(metric, max);
}

/// CPU time used so far, in microseconds: the cgroup's `usage_usec` when the VM has a cgroup,
/// its QEMU's user + system time otherwise.
fn cpu_usage_us(cgroup: Option<&Path>, pid: u32) -> Option<u64> {
    if let Some(stat) = cgroup.and_then(|c| std::fs::read_to_string(c.join("cpu.stat")).ok())
        && let Some(us) = cgroup_usage_us(&stat)
    {
        return Some(us);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    proc_usage_us(&stat, if hz > 0 { hz as u64 } else { 100 })
}

fn cgroup_usage_us(cpu_stat: &str) -> Option<u64> {
    cpu_stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// utime + stime (fields 14 and 15 of `/proc/PID/stat`, in clock ticks) in microseconds.
fn proc_usage_us(stat: &str, ticks_per_sec: u64) -> Option<u64> {
    // "pid (comm) S ppid …": fields after the last ')' start at field 3.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / ticks_per_sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_parse() {
        assert_eq!(
            cgroup_usage_us("usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n"),
            Some(1234)
        );
        let stat =
            "4242 (qemu-system-x86) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 4 0";
        assert_eq!(proc_usage_us(stat, 100), Some(3_000_000));
    }
}
