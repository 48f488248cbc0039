//! The sandbox and host state machines (SPEC §3), pure and unit-tested.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxStatus {
    Pending,
    Starting,
    Running,
    Paused,
    Stopped,
    Error,
    Missing,
}

impl SandboxStatus {
    pub const ALL: [SandboxStatus; 7] = [
        Self::Pending,
        Self::Starting,
        Self::Running,
        Self::Paused,
        Self::Stopped,
        Self::Error,
        Self::Missing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Error => "error",
            Self::Missing => "missing",
        }
    }

    /// `stopped` and `error` are terminal; `missing` is reversible.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Stopped | Self::Error)
    }

    pub fn can_become(self, next: SandboxStatus) -> bool {
        use SandboxStatus::*;
        matches!(
            (self, next),
            (Pending, Starting)
                | (Starting, Running)
                | (Running, Paused)
                | (Paused, Running)
                | (Running | Paused, Stopped)
                | (Pending | Starting, Error)
                | (Pending | Starting | Running, Missing)
                | (Missing, Running | Paused | Stopped)
        )
    }
}

impl fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown sandbox status '{s}'"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStatus {
    Pending,
    Online,
    Unreachable,
    Draining,
}

impl HostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Online => "online",
            Self::Unreachable => "unreachable",
            Self::Draining => "draining",
        }
    }

    pub fn can_become(self, next: HostStatus) -> bool {
        use HostStatus::*;
        matches!(
            (self, next),
            (Pending, Online)
                | (Online, Unreachable)
                | (Unreachable, Online)
                | (Online, Draining)
                | (Draining, Online)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::SandboxStatus::*;
    use super::*;

    #[test]
    fn sandbox_transitions() {
        let allowed = [
            (Pending, Starting),
            (Starting, Running),
            (Running, Paused),
            (Paused, Running),
            (Running, Stopped),
            (Paused, Stopped),
            (Pending, Error),
            (Starting, Error),
            (Pending, Missing),
            (Starting, Missing),
            (Running, Missing),
            (Missing, Running),
            (Missing, Paused),
            (Missing, Stopped),
        ];
        for a in SandboxStatus::ALL {
            for b in SandboxStatus::ALL {
                assert_eq!(a.can_become(b), allowed.contains(&(a, b)), "{a} -> {b}");
            }
        }
        for s in SandboxStatus::ALL {
            assert_eq!(s.as_str().parse::<SandboxStatus>().unwrap(), s);
        }
        assert!(Stopped.is_terminal() && Error.is_terminal() && !Missing.is_terminal());
    }

    #[test]
    fn host_transitions() {
        use HostStatus::*;
        assert!(Pending.can_become(Online));
        assert!(Online.can_become(Unreachable));
        assert!(Unreachable.can_become(Online));
        assert!(Online.can_become(Draining));
        assert!(!Pending.can_become(Unreachable));
        assert!(!Draining.can_become(Pending));
        assert!(Draining.can_become(Online), "undrain");
    }
}
