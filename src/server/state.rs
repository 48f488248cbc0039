//! The sandbox and host state machines (docs/ARCHITECTURE.md#state-machines), pure and unit-tested.

pub use crate::proto::vocab::{HostStatus, SandboxStatus};

impl SandboxStatus {
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

impl HostStatus {
    pub fn can_become(self, next: HostStatus) -> bool {
        use HostStatus::*;
        matches!(
            (self, next),
            (Pending, Online)
                | (Online | Draining, Unreachable)
                | (Unreachable, Online | Draining)
                | (Online, Draining)
                | (Draining, Online)
        )
    }

    /// A host whose sandboxes can be reached: online, or draining (taking no new ones).
    pub fn serves_sandboxes(self) -> bool {
        matches!(self, Self::Online | Self::Draining)
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
        for &a in SandboxStatus::ALL {
            for &b in SandboxStatus::ALL {
                assert_eq!(a.can_become(b), allowed.contains(&(a, b)), "{a} -> {b}");
            }
        }
        for &s in SandboxStatus::ALL {
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
        assert!(
            Draining.can_become(Unreachable),
            "a drained host can die too"
        );
        assert!(Unreachable.can_become(Draining), "and comes back drained");
    }
}
