//! One-shot exec: a command run to its end in a running VM, its output capped.

use std::time::Duration;

use super::stream::channel_error;
use super::{
    DEFAULT_EXEC_TIMEOUT_SEC, ExecRequest, ExecResponse, OUTPUT_CAP, VmError, VmManager, VmState,
};
use crate::proto::api::json_text_capped;
use crate::proto::guest::ExecStart;

/// Extra time the host waits beyond an exec's own timeout (the guest enforces that one).
const EXEC_GRACE: Duration = Duration::from_secs(30);

impl VmManager {
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecResponse, VmError> {
        let vm = self.lookup(id)?;
        req.validate()?;
        let timeout = req.timeout_sec.unwrap_or(DEFAULT_EXEC_TIMEOUT_SEC);
        match vm.info().state {
            VmState::Running => {}
            VmState::Starting => {
                return Err(VmError::Conflict(format!("VM {id} is still starting")));
            }
            VmState::Paused => return Err(VmError::Conflict(format!("VM {id} is paused"))),
            VmState::Stopped => return Err(vm.stopped_error()),
        }
        let start = ExecStart {
            cmd: req.cmd,
            args: req.args,
            env: req.env,
            cwd: req.cwd,
            timeout_ms: Some(timeout * 1000),
            stdin: false,
            pty: None,
        };
        let wait = Duration::from_secs(timeout) + EXEC_GRACE;
        let out = vm
            .channel
            .exec(&start, OUTPUT_CAP, wait)
            .await
            .map_err(|e| channel_error(&vm, e))?;
        tracing::debug!(vm = %id, code = out.exit.exit_code, ms = out.exit.duration_ms, "exec done");
        let (stdout, cut_out) = json_text_capped(&out.stdout, OUTPUT_CAP);
        let (stderr, cut_err) = json_text_capped(&out.stderr, OUTPUT_CAP);
        Ok(ExecResponse {
            stdout,
            stderr,
            exit_code: out.exit.exit_code,
            duration_ms: out.exit.duration_ms,
            timed_out: out.exit.timed_out,
            truncated: out.truncated || cut_out || cut_err,
        })
    }
}
