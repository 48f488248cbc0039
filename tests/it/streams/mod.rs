//! Streaming exec, files and the console log against real QEMU: first on the VM manager directly
//! (flow control, cancellation, concurrency, guest restarts), then through the whole stack
//! (server WebSocket and file routes, agent, guest, CLI).
//!
//! `manager` drives the VM manager directly; `server` goes through server and agent processes.
//! Both share the stream helpers here.

mod manager;
mod server;

use std::time::{Duration, Instant};

use bytes::Bytes;
use sandboxctl::agent::vm::stream::{ExecEvent, ExecStream};
use sandboxctl::proto::api::ExecStreamStart;

pub(crate) fn start(cmd: &str, args: &[&str]) -> ExecStreamStart {
    ExecStreamStart {
        cmd: cmd.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub(crate) fn sh_start(script: &str) -> ExecStreamStart {
    start("sh", &["-c", script])
}

/// What a finished stream produced.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
}

pub(crate) async fn collect(s: &mut ExecStream) -> Collected {
    let mut c = Collected::default();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), s.output.next())
            .await
            .expect("the stream ended in time")
            .expect("stream event");
        match ev {
            ExecEvent::Stdout(b) => c.stdout.extend_from_slice(&b),
            ExecEvent::Stderr(b) => c.stderr.extend_from_slice(&b),
            ExecEvent::Exit(e) => {
                c.exit_code = e.exit_code;
                c.signal = e.signal;
                c.timed_out = e.timed_out;
                return c;
            }
        }
    }
}

/// Stdout until it contains `needle`.
pub(crate) async fn stdout_until(s: &mut ExecStream, needle: &str) -> String {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&out).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.output.next()).await {
            Ok(Ok(ExecEvent::Stdout(b))) => out.extend_from_slice(&b),
            Ok(Ok(ExecEvent::Stderr(_))) => {}
            other => panic!(
                "no {needle:?} in {:?}: {other:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn chunks(data: &[u8], size: usize) -> Vec<Result<Bytes, std::io::Error>> {
    data.chunks(size)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect()
}

pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngExt;
    let mut v = vec![0u8; n];
    rand::rng().fill(&mut v[..]);
    v
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
