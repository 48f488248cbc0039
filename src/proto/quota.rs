//! Team quotas (SPEC §15): how many running sandboxes, vCPUs and MB of memory a team may hold at
//! once. The server's default comes from `--team-quota sandboxes=N,vcpus=N,memory_mb=N`; a
//! platform admin may override it per team (`PUT /v1/teams/{id}/quota`).

use serde::{Deserialize, Serialize};

/// Limits per resource; `None` is no limit (in a default) or "the server's default" (in an
/// override).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamQuota {
    #[serde(default)]
    pub sandboxes: Option<u32>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
}

/// What a team holds now: its sandboxes that count against the quota (starting, running or
/// missing; paused and ended ones hold no host resources).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaUsage {
    pub sandboxes: u32,
    pub vcpus: u32,
    pub memory_mb: u64,
}

/// `GET /v1/teams/{id}/quota` and the answer to `PUT`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuotaResponse {
    pub team_id: String,
    /// The limits in force (null: unlimited).
    pub limits: TeamQuota,
    /// This team's overrides (null: the server's default applies).
    pub overrides: TeamQuota,
    /// The server's default.
    pub default: TeamQuota,
    pub usage: QuotaUsage,
}

/// `PUT /v1/teams/{id}/quota`: the team's overrides, replacing earlier ones; a field left out or
/// null falls back to the server's default.
pub type SetQuotaRequest = TeamQuota;

impl TeamQuota {
    /// `self` with `fallback` where `self` has no value.
    pub fn or(self, fallback: TeamQuota) -> TeamQuota {
        TeamQuota {
            sandboxes: self.sandboxes.or(fallback.sandboxes),
            vcpus: self.vcpus.or(fallback.vcpus),
            memory_mb: self.memory_mb.or(fallback.memory_mb),
        }
    }

    /// Why `usage` plus one more sandbox of this size goes over, or None when it fits.
    pub fn exceeded_by(&self, usage: &QuotaUsage, vcpus: u32, memory_mb: u64) -> Option<String> {
        if let Some(max) = self.sandboxes
            && u64::from(usage.sandboxes) + 1 > u64::from(max)
        {
            return Some(format!(
                "the team's quota allows {max} running sandbox(es) and it has {}",
                usage.sandboxes
            ));
        }
        if let Some(max) = self.vcpus
            && u64::from(usage.vcpus) + u64::from(vcpus) > u64::from(max)
        {
            return Some(format!(
                "the team's quota allows {max} vCPU and {} are in use; this sandbox needs {vcpus}",
                usage.vcpus
            ));
        }
        if let Some(max) = self.memory_mb
            && usage.memory_mb.saturating_add(memory_mb) > max
        {
            return Some(format!(
                "the team's quota allows {max} MB of memory and {} MB are in use; this sandbox needs {memory_mb} MB",
                usage.memory_mb
            ));
        }
        None
    }

    /// Parses `sandboxes=N,vcpus=N,memory_mb=N` (any subset, any order; `none` or an empty
    /// string for no limits).
    pub fn parse(s: &str) -> Result<TeamQuota, String> {
        let mut q = TeamQuota::default();
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(q);
        }
        for part in s.split(',') {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                format!("'{part}': expected NAME=N (sandboxes=N,vcpus=N,memory_mb=N)")
            })?;
            let (k, v) = (k.trim(), v.trim());
            let n: u64 = v
                .parse()
                .map_err(|_| format!("{k}: '{v}' is not a whole number"))?;
            let small = || u32::try_from(n).map_err(|_| format!("{k}: {n} is too large"));
            match k {
                "sandboxes" => q.sandboxes = Some(small()?),
                "vcpus" => q.vcpus = Some(small()?),
                "memory_mb" => q.memory_mb = Some(n),
                _ => {
                    return Err(format!(
                        "'{k}' is not a quota (use sandboxes, vcpus and memory_mb)"
                    ));
                }
            }
        }
        Ok(q)
    }
}

impl std::fmt::Display for TeamQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
        write!(
            f,
            "sandboxes={},vcpus={},memory_mb={}",
            show(self.sandboxes.map(u64::from)),
            show(self.vcpus.map(u64::from)),
            show(self.memory_mb)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flag_values() {
        assert_eq!(
            TeamQuota::parse("sandboxes=5,vcpus=8,memory_mb=4096").unwrap(),
            TeamQuota {
                sandboxes: Some(5),
                vcpus: Some(8),
                memory_mb: Some(4096)
            }
        );
        assert_eq!(
            TeamQuota::parse("vcpus=2").unwrap(),
            TeamQuota {
                vcpus: Some(2),
                ..Default::default()
            }
        );
        assert_eq!(TeamQuota::parse("").unwrap(), TeamQuota::default());
        assert!(TeamQuota::parse("cpus=2").unwrap_err().contains("cpus"));
        assert!(TeamQuota::parse("vcpus=x").unwrap_err().contains("vcpus"));
        assert!(TeamQuota::parse("vcpus").is_err());
        assert!(TeamQuota::parse("sandboxes=99999999999").is_err());
    }

    #[test]
    fn checks_usage() {
        let q = TeamQuota::parse("sandboxes=2,vcpus=3,memory_mb=1024").unwrap();
        let mut u = QuotaUsage::default();
        assert!(q.exceeded_by(&u, 1, 512).is_none());
        u.sandboxes = 2;
        assert!(q.exceeded_by(&u, 1, 256).unwrap().contains("2 running"));
        u.sandboxes = 1;
        u.vcpus = 2;
        assert!(q.exceeded_by(&u, 2, 256).unwrap().contains("vCPU"));
        u.vcpus = 0;
        u.memory_mb = 800;
        assert!(q.exceeded_by(&u, 1, 256).unwrap().contains("MB"));
        assert!(TeamQuota::default().exceeded_by(&u, 64, 1 << 40).is_none());
        let over = TeamQuota {
            sandboxes: Some(10),
            ..Default::default()
        };
        assert_eq!(over.or(q).sandboxes, Some(10));
        assert_eq!(over.or(q).vcpus, Some(3));
    }
}
