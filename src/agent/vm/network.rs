//! A VM's egress policy, changed while it runs.

use super::{VmError, VmManager, bad};
use crate::proto::net::EgressPolicy;

impl VmManager {
    /// Replaces a sandbox's egress policy; it applies at once to new connections.
    pub async fn set_network(
        &self,
        id: &str,
        mut policy: EgressPolicy,
    ) -> Result<EgressPolicy, VmError> {
        policy.validate().map_err(|(f, m)| bad(f, m))?;
        let vm = self.lookup(id)?;
        let Some(mut place) = vm.net_place() else {
            return Err(VmError::Conflict(format!(
                "VM {id} has no network device; its policy cannot be changed"
            )));
        };
        self.net
            .apply(vm.place(), &policy)
            .await
            .map_err(|e| VmError::Internal(e.context("applying the egress policy")))?;
        place.policy = policy.clone();
        *vm.net.lock().unwrap_or_else(|p| p.into_inner()) = Some(place);
        vm.persist()?;
        Ok(policy)
    }

    /// The egress policy of a VM (None: no network device).
    pub fn network_of(&self, id: &str) -> Result<Option<EgressPolicy>, VmError> {
        Ok(self.lookup(id)?.net_place().map(|n| n.policy))
    }

    /// This agent's network namespaces (for checks and tests).
    pub fn namespaces(&self) -> Vec<String> {
        self.net.namespaces()
    }
}
