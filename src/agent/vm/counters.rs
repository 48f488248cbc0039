//! What the VM manager counts as it works, for the agent's `/metrics` (`agent::prometheus`):
//! boots by kind and guest-channel errors by kind. Process-wide (one agent per process); every
//! known kind is there from the start, at 0.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

pub type KindCounters = Family<KindLabels, Counter>;

fn with_kinds(kinds: &[&'static str]) -> KindCounters {
    let f = KindCounters::default();
    for &kind in kinds {
        let _ = f.get_or_create(&KindLabels { kind });
    }
    f
}

static BOOTS: LazyLock<KindCounters> = LazyLock::new(|| with_kinds(&["snapshot", "cold"]));
static CHANNEL_ERRORS: LazyLock<KindCounters> = LazyLock::new(|| {
    with_kinds(&[
        "timeout",
        "unresponsive",
        "protocol",
        "cut_off",
        "connection",
    ])
});

/// VMs booted, by kind (a handle on the process's counters).
pub fn boots() -> KindCounters {
    BOOTS.clone()
}

/// Guest-channel errors, by kind (a handle on the process's counters).
pub fn channel_errors() -> KindCounters {
    CHANNEL_ERRORS.clone()
}

/// Counts a VM that booted: `snapshot` (restored) or `cold`.
pub(super) fn boot(kind: &'static str) {
    BOOTS.get_or_create(&KindLabels { kind }).inc();
}

/// What went wrong on a guest channel.
#[derive(Clone, Copy, Debug)]
pub(super) enum ChannelFault {
    /// An answer did not come by its deadline.
    Timeout,
    /// The guest left a ping unanswered (frozen).
    Unresponsive,
    /// An unexpected or malformed frame.
    Protocol,
    /// The guest broke the protocol too often and was cut off.
    CutOff,
    /// The guest could not be reached, or its connection closed.
    Connection,
}

/// Counts a guest-channel error.
pub(super) fn channel_error(fault: ChannelFault) {
    let kind = match fault {
        ChannelFault::Timeout => "timeout",
        ChannelFault::Unresponsive => "unresponsive",
        ChannelFault::Protocol => "protocol",
        ChannelFault::CutOff => "cut_off",
        ChannelFault::Connection => "connection",
    };
    CHANNEL_ERRORS.get_or_create(&KindLabels { kind }).inc();
}
