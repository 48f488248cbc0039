//! The one log line and latency sample of each sandbox create, pause, resume and delete. Only
//! the service writes them (the REST handlers, the monitor and the agent do not repeat them), so
//! an operator finds each operation once, with its sandbox, team, host and duration.

use std::time::Instant;

use super::SandboxService;
use super::error::SandboxResult;
use crate::server::prometheus::Operation;

/// Who asked for an operation, as the log line says.
pub const BY_REQUEST: &str = "request";
pub const BY_IDLE_TIMEOUT: &str = "idle timeout";
pub const BY_TEAM_DELETED: &str = "team deleted";
pub const BY_HOST_DELETED: &str = "host deleted";

/// An operation under way on one sandbox.
pub(super) struct OpLog<'a> {
    pub op: Operation,
    pub sandbox: &'a str,
    pub team: &'a str,
    pub host: Option<&'a str>,
    pub by: &'static str,
    pub started: Instant,
}

impl OpLog<'_> {
    /// Records the operation's latency and logs it: info when it worked, warn when not.
    /// `boot_kind` is the created VM's (`snapshot`, `cold` or `pool`).
    pub fn finish<T>(
        self,
        svc: &SandboxService<'_>,
        result: &SandboxResult<T>,
        boot_kind: Option<&str>,
    ) {
        let took = self.started.elapsed();
        svc.st.metrics.observe(self.op, result.is_ok(), took);
        let duration_ms = took.as_millis() as u64;
        let (sandbox, team, host, by) = (self.sandbox, self.team, self.host.unwrap_or(""), self.by);
        let op = self.op.as_str();
        match (result, self.op) {
            (Ok(_), Operation::Create) => tracing::info!(
                sandbox,
                team,
                host,
                duration_ms,
                by,
                boot_kind = boot_kind.unwrap_or(""),
                "sandbox created"
            ),
            (Ok(_), Operation::Pause) => {
                tracing::info!(sandbox, team, host, duration_ms, by, "sandbox paused")
            }
            (Ok(_), Operation::Resume) => {
                tracing::info!(sandbox, team, host, duration_ms, by, "sandbox resumed")
            }
            (Ok(_), Operation::Delete) => {
                tracing::info!(sandbox, team, host, duration_ms, by, "sandbox deleted")
            }
            (Err(e), _) => tracing::warn!(
                sandbox,
                team,
                host,
                duration_ms,
                by,
                operation = op,
                error = %e,
                "sandbox {op} failed"
            ),
        }
    }
}
