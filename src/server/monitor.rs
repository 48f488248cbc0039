//! `HostMonitor`: marks hosts whose heartbeats stopped as unreachable (and their sandboxes missing).

use std::time::Duration;

use crate::server::AppState;
use crate::server::db::{hosts, now};

pub struct HostMonitor;

impl HostMonitor {
    /// Runs forever on the state's intervals.
    pub async fn run(state: AppState) {
        let interval = state.settings.monitor_interval;
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = Self::tick(&state).await {
                tracing::warn!(error = %e, "host monitor pass failed");
            }
        }
    }

    /// One pass: the passive staleness check.
    pub async fn tick(state: &AppState) -> anyhow::Result<()> {
        let stale = state.settings.host_stale_after;
        let cutoff = now() - i64::try_from(stale.max(Duration::from_secs(1)).as_secs()).unwrap_or(i64::MAX);
        let changed = state.db.call(move |c| hosts::mark_stale(c, cutoff)).await?;
        for h in changed {
            tracing::warn!(host = %h, "host missed its heartbeats: unreachable, its sandboxes missing");
        }
        Ok(())
    }
}
