//! The server's Prometheus series (`GET /metrics`, served by `api::prometheus`): requests by route and
//! status, sandboxes and hosts by state (counted in the database at each scrape), sandbox
//! operations' latency, boot kinds and SQLite timings.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::db::{Db, DbResult, hosts, sandboxes};
use crate::prom::{self, HttpMetrics};
use crate::proto::vocab::{HostStatus, SandboxStatus};

/// A sandbox operation whose latency is measured and which is logged once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Pause,
    Resume,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Pause => "pause",
            Operation::Resume => "resume",
            Operation::Delete => "delete",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

pub struct ServerMetrics {
    registry: Registry,
    pub http: Arc<HttpMetrics>,
    operations: Family<OperationLabels, Histogram, fn() -> Histogram>,
    boots: Family<KindLabels, Counter>,
    sandboxes: Family<StateLabels, Gauge>,
    hosts: Family<StateLabels, Gauge>,
}

impl ServerMetrics {
    /// The server's series, with the database's call timings.
    pub fn new(db: &Db) -> ServerMetrics {
        let mut r = prom::registry();
        let http = HttpMetrics::new(&mut r);
        let operations: Family<OperationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(prom::operation_histogram);
        let (boots, sandboxes, hosts) = (Family::default(), Family::default(), Family::default());
        r.register(
            "sandbox_operation_duration_seconds",
            "Time a sandbox create, pause, resume or delete took, by operation and outcome (ok, error)",
            operations.clone(),
        );
        r.register(
            "sandbox_boots",
            "Sandboxes started, by how their VM booted (snapshot: restored from a boot snapshot; cold: a full boot)",
            boots.clone(),
        );
        r.register("sandboxes", "Sandboxes by state", sandboxes.clone());
        r.register("hosts", "Hosts by state", hosts.clone());
        r.register(
            "db_wait_duration_seconds",
            "Time a database call waited for the SQLite connection",
            db.timings().wait.clone(),
        );
        r.register(
            "db_query_duration_seconds",
            "Time a database call's SQLite statements took",
            db.timings().query.clone(),
        );
        // Both kinds from the start, at 0: a scraper sees them before the first boot.
        for kind in ["snapshot", "cold"] {
            let _ = boots.get_or_create(&KindLabels { kind: kind.into() });
        }
        ServerMetrics {
            registry: r,
            http,
            operations,
            boots,
            sandboxes,
            hosts,
        }
    }

    /// Records how long an operation took and whether it worked.
    pub fn observe(&self, op: Operation, ok: bool, took: Duration) {
        self.operations
            .get_or_create(&OperationLabels {
                operation: op.as_str(),
                outcome: if ok { "ok" } else { "error" },
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a VM boot of `kind` (`snapshot` or `cold`, as the agent reports it).
    pub fn boot(&self, kind: &str) {
        self.boots
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// The series in Prometheus text, with sandboxes and hosts counted now.
    pub async fn render(&self, db: &Db) -> DbResult<String> {
        let (sbx, hst) = db
            .call(|c| Ok((sandboxes::count_by_status(c)?, hosts::count_by_status(c)?)))
            .await?;
        for &s in SandboxStatus::ALL {
            let n = sbx.iter().find(|(k, _)| *k == s).map_or(0, |(_, n)| *n);
            self.sandboxes
                .get_or_create(&StateLabels { state: s.as_str() })
                .set(n as i64);
        }
        for &s in HostStatus::ALL {
            let n = hst.iter().find(|(k, _)| *k == s).map_or(0, |(_, n)| *n);
            self.hosts
                .get_or_create(&StateLabels { state: s.as_str() })
                .set(n as i64);
        }
        Ok(prom::encode(&self.registry))
    }
}
