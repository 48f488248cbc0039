//! What changes about a VM while it lives: its state, its QEMU, how it booted and its disk
//! chain. The state moves only through [`Runtime::set_state`], which follows
//! [`VmState::can_become`] and refuses anything else with a [`StateRefused`].

use tokio::sync::watch;

use super::VmState;

/// A state change the transition table does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} VM cannot become {to}")]
pub struct StateRefused {
    pub from: VmState,
    pub to: VmState,
}

#[derive(Debug)]
pub(super) struct Runtime {
    /// Private: changed only by [`Runtime::set_state`].
    state: VmState,
    pub(super) pid: Option<u32>,
    pub(super) boot_ms: Option<u64>,
    pub(super) boot_kind: Option<String>,
    /// Turns true when the current QEMU (our child) has exited and been reaped. None for a
    /// reattached QEMU and while there is none (paused).
    pub(super) exited: Option<watch::Receiver<bool>>,
    pub(super) layers: Vec<String>,
    pub(super) memory_file: bool,
}

impl Runtime {
    pub(super) fn new(state: VmState) -> Runtime {
        Runtime {
            state,
            pid: None,
            boot_ms: None,
            boot_kind: None,
            exited: None,
            layers: Vec::new(),
            memory_file: false,
        }
    }

    pub(super) fn state(&self) -> VmState {
        self.state
    }

    /// Moves the VM to `next` if the table allows it from where it is.
    pub(super) fn set_state(&mut self, next: VmState) -> Result<(), StateRefused> {
        if !self.state.can_become(next) {
            return Err(StateRefused {
                from: self.state,
                to: next,
            });
        }
        self.state = next;
        Ok(())
    }

    /// Marks the VM stopped (its QEMU is gone or going): allowed from every state.
    pub(super) fn stop(&mut self) {
        if let Err(e) = self.set_state(VmState::Stopped) {
            tracing::error!(error = %e, "the state table refused a stop");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_state_follows_the_table() {
        let mut rt = Runtime::new(VmState::Starting);
        rt.set_state(VmState::Running).unwrap();
        assert_eq!(
            rt.set_state(VmState::Starting),
            Err(StateRefused {
                from: VmState::Running,
                to: VmState::Starting
            })
        );
        assert_eq!(
            rt.state(),
            VmState::Running,
            "a refused change changes nothing"
        );
        rt.stop();
        assert_eq!(rt.state(), VmState::Stopped);
        rt.stop();
        assert_eq!(rt.state(), VmState::Stopped);
    }
}
