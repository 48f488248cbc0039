//! Placement: which host gets a new sandbox. Pure over a snapshot of the fleet.

use std::sync::atomic::{AtomicUsize, Ordering};

/// What the scheduler knows about a host.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub host_id: String,
    pub team_id: Option<String>,
    pub cpu_cores: u32,
    pub memory_mb: u64,
    /// vCPUs and memory already promised to live sandboxes.
    pub used_vcpus: u32,
    pub used_memory_mb: u64,
    /// Base templates ready on the host.
    pub templates: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PlacementRequest {
    pub team_id: String,
    pub vcpus: u32,
    pub memory_mb: u32,
    /// Only this host may take it (a snapshot template lives there).
    pub pinned_host: Option<String>,
    /// The base template the host must have ready (None for a pinned snapshot).
    pub base_template: Option<String>,
}

/// vCPUs may be overcommitted this many times over the host's cores unless the server is told
/// otherwise (`--vcpu-overcommit`): sandboxes are mostly idle, memory is the real limit.
pub const DEFAULT_VCPU_OVERCOMMIT: u32 = 16;

/// How much of its sandboxes' memory a host may be promised, in percent of its own: by default
/// no more than it has (`--memory-overcommit`; idle sandboxes restored from one template share
/// most of their pages, but one that touches all its RAM gets it).
pub const DEFAULT_MEMORY_OVERCOMMIT_PERCENT: u32 = 100;

/// How far the scheduler may promise a host's CPU and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overcommit {
    /// vCPUs per core.
    pub vcpus_per_core: u32,
    /// Sandbox memory in percent of the host's.
    pub memory_percent: u32,
}

impl Default for Overcommit {
    fn default() -> Self {
        Overcommit {
            vcpus_per_core: DEFAULT_VCPU_OVERCOMMIT,
            memory_percent: DEFAULT_MEMORY_OVERCOMMIT_PERCENT,
        }
    }
}

pub trait Scheduler: Send + Sync {
    /// The chosen host, or the reason none fits.
    fn place(&self, hosts: &[Candidate], req: &PlacementRequest) -> Result<String, String>;
}

/// The hosts that may take the request, in a stable order.
pub fn eligible<'a>(
    hosts: &'a [Candidate],
    req: &PlacementRequest,
    overcommit: Overcommit,
) -> Result<Vec<&'a Candidate>, String> {
    if hosts.is_empty() {
        return Err("no host is online".into());
    }
    let team_owns_byoc = hosts
        .iter()
        .any(|h| h.team_id.as_deref() == Some(req.team_id.as_str()));
    let mut visible: Vec<&Candidate> = hosts
        .iter()
        .filter(|h| match &h.team_id {
            // A team with its own hosts is pinned to them; BYOC hosts serve only their team.
            Some(t) => t == &req.team_id,
            None => !team_owns_byoc,
        })
        .collect();
    if let Some(pin) = &req.pinned_host {
        visible.retain(|h| &h.host_id == pin);
        if visible.is_empty() {
            return Err(format!(
                "the template lives on host {pin}, which is not online for this team"
            ));
        }
    }
    if visible.is_empty() {
        return Err("no online host serves this team".into());
    }
    if let Some(t) = &req.base_template {
        visible.retain(|h| h.templates.contains(t));
        if visible.is_empty() {
            return Err(format!("no online host has the template '{t}' ready"));
        }
    }
    let fits: Vec<&Candidate> = visible
        .into_iter()
        .filter(|h| {
            h.used_memory_mb + u64::from(req.memory_mb)
                <= h.memory_mb * u64::from(overcommit.memory_percent) / 100
                && h.used_vcpus + req.vcpus <= h.cpu_cores.saturating_mul(overcommit.vcpus_per_core)
                && req.vcpus <= h.cpu_cores
        })
        .collect();
    if fits.is_empty() {
        return Err(format!(
            "no online host has room for {} vCPU and {} MB",
            req.vcpus, req.memory_mb
        ));
    }
    Ok(fits)
}

/// Round-robin over the eligible hosts.
pub struct RoundRobinScheduler {
    next: AtomicUsize,
    overcommit: Overcommit,
}

impl RoundRobinScheduler {
    pub fn new(overcommit: Overcommit) -> RoundRobinScheduler {
        RoundRobinScheduler {
            next: AtomicUsize::new(0),
            overcommit,
        }
    }
}

impl Default for RoundRobinScheduler {
    fn default() -> Self {
        RoundRobinScheduler::new(Overcommit::default())
    }
}

impl Scheduler for RoundRobinScheduler {
    fn place(&self, hosts: &[Candidate], req: &PlacementRequest) -> Result<String, String> {
        let fits = eligible(hosts, req, self.overcommit)?;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % fits.len();
        Ok(fits[i].host_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, team: Option<&str>) -> Candidate {
        Candidate {
            host_id: id.into(),
            team_id: team.map(Into::into),
            cpu_cores: 2,
            memory_mb: 4096,
            used_vcpus: 0,
            used_memory_mb: 0,
            templates: vec!["minimal".into()],
        }
    }

    fn req(team: &str) -> PlacementRequest {
        PlacementRequest {
            team_id: team.into(),
            vcpus: 1,
            memory_mb: 256,
            pinned_host: None,
            base_template: Some("minimal".into()),
        }
    }

    #[test]
    fn round_robin_spreads() {
        let s = RoundRobinScheduler::default();
        let hosts = [host("a", None), host("b", None), host("c", None)];
        let picks: Vec<String> = (0..6)
            .map(|_| s.place(&hosts, &req("t")).unwrap())
            .collect();
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn byoc_hosts_serve_only_their_team_and_pin_it() {
        let s = RoundRobinScheduler::default();
        let hosts = [host("shared", None), host("mine", Some("t1"))];
        for _ in 0..4 {
            assert_eq!(s.place(&hosts, &req("t1")).unwrap(), "mine");
            assert_eq!(s.place(&hosts, &req("t2")).unwrap(), "shared");
        }
        let only_byoc = [host("mine", Some("t1"))];
        assert!(s.place(&only_byoc, &req("t2")).is_err());
    }

    #[test]
    fn capacity_and_pins_are_respected() {
        let s = RoundRobinScheduler::default();
        let mut full = host("full", None);
        full.used_memory_mb = 4000;
        let hosts = [full, host("free", None)];
        for _ in 0..3 {
            assert_eq!(s.place(&hosts, &req("t")).unwrap(), "free");
        }
        let mut big = req("t");
        big.vcpus = 3;
        assert!(s.place(&hosts, &big).unwrap_err().contains("room"));
        let mut pinned = req("t");
        pinned.pinned_host = Some("full".into());
        assert!(s.place(&hosts, &pinned).is_err());
        pinned.pinned_host = Some("gone".into());
        assert!(s.place(&hosts, &pinned).unwrap_err().contains("gone"));
        assert!(s.place(&[], &req("t")).unwrap_err().contains("no host"));
        let mut debian = req("t");
        debian.base_template = Some("debian".into());
        assert!(s.place(&hosts, &debian).unwrap_err().contains("debian"));
    }

    #[test]
    fn cpu_and_memory_are_overcommitted_as_configured() {
        // 2 cores and 4 GiB: 32 vCPUs and 4 GiB by default; 100 vCPUs and 6 GiB with 50× and 150%.
        let mut h = host("h", None);
        h.used_vcpus = 32;
        let one =
            |s: &RoundRobinScheduler, h: &Candidate| s.place(std::slice::from_ref(h), &req("t"));
        assert!(one(&RoundRobinScheduler::default(), &h).is_err());
        let wide = RoundRobinScheduler::new(Overcommit {
            vcpus_per_core: 50,
            memory_percent: 150,
        });
        assert_eq!(one(&wide, &h).unwrap(), "h");
        h.used_vcpus = 100;
        assert!(one(&wide, &h).unwrap_err().contains("room"));
        h.used_vcpus = 0;
        h.used_memory_mb = 4096;
        assert!(one(&RoundRobinScheduler::default(), &h).is_err());
        assert_eq!(one(&wide, &h).unwrap(), "h");
        h.used_memory_mb = 6144 - 255;
        assert!(one(&wide, &h).is_err());
    }
}
