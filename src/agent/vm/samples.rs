//! One VM's usage samples: a window of the last [`WINDOW`] of [`SandboxMetric`]s and the CPU
//! reading the next sample is measured against (see [`super::sampler`], which takes them).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::proto::api::SandboxMetric;
use crate::proto::guest::GuestStats;

/// How long samples are kept.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// One VM's samples and the CPU reading the next one is measured against.
#[derive(Debug, Default)]
pub(super) struct Samples {
    window: VecDeque<SandboxMetric>,
    pub(super) last_cpu: Option<CpuMark>,
    /// The guest's last figures, for a sample whose guest was slow to answer.
    pub(super) last_guest: Option<GuestStats>,
}

/// A cumulative CPU reading of one QEMU.
#[derive(Debug, Clone, Copy)]
pub(super) struct CpuMark {
    pub(super) pid: u32,
    pub(super) usage_us: u64,
    pub(super) at: Instant,
}

impl Samples {
    /// Forgets the CPU reading (the VM stopped running: the next QEMU counts from zero, and the
    /// paused time is no CPU time).
    pub(super) fn pause(&mut self) {
        self.last_cpu = None;
    }

    /// Adds a sample and drops those older than the window (and beyond `max` samples).
    pub(super) fn push(&mut self, m: SandboxMetric, max: usize) {
        self.window.push_back(m);
        let oldest = m.timestamp - WINDOW.as_secs() as i64;
        while self
            .window
            .front()
            .is_some_and(|f| f.timestamp < oldest || self.window.len() > max)
        {
            self.window.pop_front();
        }
    }

    /// The samples taken from `start` to `end` (unix seconds, both included), oldest first.
    pub(super) fn between(&self, start: Option<i64>, end: Option<i64>) -> Vec<SandboxMetric> {
        self.window
            .iter()
            .filter(|m| start.is_none_or(|s| m.timestamp >= s))
            .filter(|m| end.is_none_or(|e| m.timestamp <= e))
            .copied()
            .collect()
    }
}

/// The share of `vcpus` the CPU time between two readings is, in percent (0–100, two
/// decimals).
pub(super) fn cpu_pct(a: CpuMark, b: CpuMark, vcpus: u32) -> f64 {
    let wall_us = b.at.duration_since(a.at).as_micros() as f64;
    if wall_us <= 0.0 {
        return 0.0;
    }
    let used = b.usage_us.saturating_sub(a.usage_us) as f64;
    let pct = used * 100.0 / (wall_us * f64::from(vcpus.max(1)));
    (pct.clamp(0.0, 100.0) * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(timestamp: i64) -> SandboxMetric {
        SandboxMetric {
            timestamp,
            cpu_count: 1,
            cpu_used_pct: 0.0,
            mem_used: 0,
            mem_total: 0,
            mem_cache: 0,
            disk_used: 0,
            disk_total: 0,
        }
    }

    #[test]
    fn the_window_keeps_the_last_hour_and_answers_ranges() {
        let mut s = Samples::default();
        for t in (0..5000).step_by(5) {
            s.push(metric(t), 10_000);
        }
        let all = s.between(None, None);
        assert_eq!(all.first().unwrap().timestamp, 4995 - 3600);
        assert_eq!(all.last().unwrap().timestamp, 4995);
        let some = s.between(Some(4000), Some(4010));
        let ts: Vec<i64> = some.iter().map(|m| m.timestamp).collect();
        assert_eq!(ts, vec![4000, 4005, 4010]);
        assert!(s.between(Some(5000), None).is_empty());
        // A count bound too (a short interval).
        s.push(metric(5000), 3);
        assert_eq!(s.between(None, None).len(), 3);
    }

    #[test]
    fn cpu_is_a_share_of_the_vcpus() {
        let at = Instant::now();
        let a = CpuMark {
            pid: 1,
            usage_us: 1_000_000,
            at,
        };
        let b = CpuMark {
            pid: 1,
            usage_us: 2_000_000,
            at: at + Duration::from_secs(2),
        };
        assert_eq!(cpu_pct(a, b, 1), 50.0);
        assert_eq!(cpu_pct(a, b, 2), 25.0);
        // Emulation threads beyond the vCPUs: never over 100.
        assert_eq!(
            cpu_pct(
                a,
                CpuMark {
                    usage_us: 9_000_000,
                    ..b
                },
                1
            ),
            100.0
        );
    }
}
