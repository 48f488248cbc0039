//! Streaming exec (stdin, output as it comes, signals, PTY) and the console log.
//!
//! Memory stays bounded whatever the command prints: the guest sends at most one flow-control
//! window ([`WINDOW`]) of output ahead of what the consumer of [`ExecEvents::next`] has taken, so
//! a slow consumer (a slow WebSocket client) slows the guest's reader down, the pipe fills and
//! the command blocks in `write`, exactly as it would on a slow terminal. Nothing is dropped.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::channel::{ChannelError, GuestSender, GuestStream, guest_error, next_id};
use super::{Vm, VmError, VmManager, VmState, qemu};
use crate::proto::api::ExecStreamStart;
use crate::proto::guest::{
    ExecStart, ExecStarted, Exit, Frame, FrameKind, PtySize, Signal, WINDOW, Windowed,
};

pub const DEFAULT_LOG_TAIL: u64 = 64 * 1024;
pub const MAX_LOG_TAIL: u64 = 1024 * 1024;
/// How long the guest may take to start the process.
const START_WAIT: Duration = Duration::from_secs(30);

/// What a running exec produces, in order; `Exit` is the last.
#[derive(Debug)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(Exit),
}

/// A started exec: its pid (None when it could not start; its stderr and exit code say why),
/// its output and its input.
pub struct ExecStream {
    pub pid: Option<u32>,
    pub output: ExecEvents,
    pub input: ExecInput,
}

/// The receiving half. Dropped before the exit, it kills the process group.
pub struct ExecEvents {
    vm: Arc<Vm>,
    stream: GuestStream,
    first: Option<Frame>,
    /// Bytes handed out by the last `next`, granted back to the guest on the following call.
    unacked: usize,
}

impl ExecEvents {
    /// The next event. After `Exit` (or an error) the stream is over.
    pub async fn next(&mut self) -> Result<ExecEvent, VmError> {
        let taken = std::mem::take(&mut self.unacked);
        self.stream
            .ack(taken)
            .await
            .map_err(|e| channel_error(&self.vm, e))?;
        loop {
            let f = match self.first.take() {
                Some(f) => f,
                None => self
                    .stream
                    .next(None)
                    .await
                    .map_err(|e| channel_error(&self.vm, e))?,
            };
            match f.kind {
                FrameKind::Stdout => {
                    self.unacked = f.payload.len();
                    return Ok(ExecEvent::Stdout(f.payload));
                }
                FrameKind::Stderr => {
                    self.unacked = f.payload.len();
                    return Ok(ExecEvent::Stderr(f.payload));
                }
                FrameKind::Exit => {
                    self.stream.done = true;
                    let exit = f
                        .parse()
                        .map_err(|e| VmError::GuestUnavailable(format!("bad exit: {e}")))?;
                    return Ok(ExecEvent::Exit(exit));
                }
                FrameKind::Error => {
                    self.stream.done = true;
                    return Err(channel_error(&self.vm, guest_error(&f)));
                }
                k => tracing::debug!(kind = ?k, "unexpected frame in an exec stream"),
            }
        }
    }
}

/// The sending half; cheap to clone.
#[derive(Clone)]
pub struct ExecInput {
    vm: Arc<Vm>,
    sender: GuestSender,
}

impl ExecInput {
    /// Bytes for the process's stdin (or the terminal). Waits while the guest has a window's
    /// worth not yet written to the process.
    pub async fn stdin(&self, bytes: &[u8]) -> Result<(), VmError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.sender
            .data(FrameKind::Stdin, bytes)
            .await
            .map_err(|e| channel_error(&self.vm, e))
    }

    /// Closes stdin (on a PTY: types ^D).
    pub async fn eof(&self) -> Result<(), VmError> {
        self.sender
            .data(FrameKind::Stdin, &[])
            .await
            .map_err(|e| channel_error(&self.vm, e))
    }

    /// A signal for the process group (on a PTY: the terminal's foreground group).
    pub async fn signal(&self, signal: i32) -> Result<(), VmError> {
        Signal { signal }.validate()?;
        self.sender
            .control(FrameKind::Signal, &Signal { signal })
            .await
            .map_err(|e| channel_error(&self.vm, e))
    }

    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), VmError> {
        PtySize { rows, cols }.validate()?;
        self.sender
            .control(FrameKind::Resize, &PtySize { rows, cols })
            .await
            .map_err(|e| channel_error(&self.vm, e))
    }

    /// Abandons the exec: the guest kills what it started and drops the rest of its output;
    /// the exit still comes.
    pub async fn kill(&self) -> Result<(), VmError> {
        self.sender
            .cancel()
            .await
            .map_err(|e| channel_error(&self.vm, e))
    }
}

/// A channel failure as the API reports it: the one mapping for exec, streaming exec and file
/// calls. A guest that stopped answering pings, or did not answer by the call's deadline, is
/// the guest's own state (504 `guest_unresponsive`); the connection stays, and the next request
/// finds out again within seconds whether the guest is back (its late answers are dropped).
pub(super) fn channel_error(vm: &Vm, e: ChannelError) -> VmError {
    if vm.destroyed.load(Ordering::Acquire) {
        return VmError::NotFound(vm.id.clone());
    }
    e.count();
    match e {
        ChannelError::Guest(m) => VmError::GuestUnavailable(m),
        ChannelError::CutOff(_) => vm.stopped_error(),
        e @ (ChannelError::Unresponsive(_) | ChannelError::Timeout) => {
            VmError::GuestUnresponsive(e.to_string())
        }
        e => VmError::GuestUnavailable(e.to_string()),
    }
}

impl VmManager {
    /// The VM, if it is running.
    pub(super) fn running_vm(&self, id: &str) -> Result<Arc<Vm>, VmError> {
        let vm = self.lookup(id)?;
        match vm.info().state {
            VmState::Running => Ok(vm),
            VmState::Starting => Err(VmError::Conflict(format!("VM {id} is still starting"))),
            VmState::Paused => Err(VmError::Conflict(format!("VM {id} is paused"))),
            VmState::Stopped => Err(vm.stopped_error()),
        }
    }

    /// Whether a stream could start now (the VM exists and runs).
    pub fn exec_stream_ready(&self, id: &str) -> Result<(), VmError> {
        self.running_vm(id).map(|_| ())
    }

    /// Starts a command with stdin open and returns once the guest started it (or reported why
    /// it could not).
    pub async fn exec_stream(&self, id: &str, req: ExecStreamStart) -> Result<ExecStream, VmError> {
        req.validate()?;
        let pty = req.pty;
        let vm = self.running_vm(id)?;
        let start = Windowed {
            request: ExecStart {
                cmd: req.cmd,
                args: req.args,
                env: req.env,
                cwd: req.cwd,
                timeout_ms: req.timeout_sec.map(|t| t * 1000),
                stdin: true,
                pty,
            },
            window: WINDOW,
        };
        let sid = next_id();
        let started = async {
            let mut stream = vm
                .channel
                .open(
                    Frame::json(FrameKind::ExecStart, sid, &start),
                    WINDOW,
                    Duration::from_secs(10),
                )
                .await?;
            let f = stream.next(Some(Instant::now() + START_WAIT)).await?;
            Ok((stream, f))
        };
        let (mut stream, f) = vm
            .channel
            .guarded(None, started)
            .await
            .map_err(|e| channel_error(&vm, e))?;
        let (pid, first) = match f.kind {
            FrameKind::ExecStarted => {
                let s: ExecStarted = f
                    .parse()
                    .map_err(|e| VmError::GuestUnavailable(e.to_string()))?;
                (Some(s.pid), None)
            }
            FrameKind::Error => {
                stream.done = true;
                return Err(channel_error(&vm, guest_error(&f)));
            }
            // It could not start: stderr and the exit follow.
            _ => (None, Some(f)),
        };
        tracing::debug!(vm = %id, ?pid, pty = pty.is_some(), "exec stream started");
        let input = ExecInput {
            vm: vm.clone(),
            sender: stream.sender(),
        };
        Ok(ExecStream {
            pid,
            output: ExecEvents {
                vm,
                stream,
                first,
                unacked: 0,
            },
            input,
        })
    }

    /// The last `tail_bytes` (at most [`MAX_LOG_TAIL`]) of the VM's console log.
    pub async fn console_log(&self, id: &str, tail_bytes: u64) -> Result<Vec<u8>, VmError> {
        let vm = self.lookup(id)?;
        let path = vm.dir.join(qemu::CONSOLE_LOG);
        let n = tail_bytes.min(MAX_LOG_TAIL);
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(n)))?;
            let mut out = Vec::with_capacity(n.min(len) as usize);
            f.take(n).read_to_end(&mut out)?;
            Ok(out)
        })
        .await
        .map_err(|e| VmError::Internal(anyhow::anyhow!("reading the console log: {e}")))?;
        read.map_err(|e| VmError::Internal(anyhow::anyhow!("reading the console log: {e}")))
    }
}
