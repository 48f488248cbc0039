//! One exec: a process in its own process group, its output streamed as it comes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Guest;
use crate::proto::guest::{CHUNK, ExecStart, ExecStarted, Exit, Frame, FrameKind};

/// How long to wait for the output pipes to close after the process ended (a background
/// grandchild may hold them open forever).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// What the reader thread needs to reach a running exec.
pub(crate) struct ExecHandle {
    pgid: i32,
    stdin: Option<Mutex<Sender<Vec<u8>>>>,
}

impl ExecHandle {
    pub(crate) fn stdin(&self, bytes: Vec<u8>) {
        if let Some(tx) = &self.stdin {
            let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(bytes);
        }
    }

    pub(crate) fn signal(&self, sig: i32) {
        kill_group(self.pgid, sig);
    }
}

fn kill_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals the process group; no memory involved.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// Starts the exec on its own thread and returns at once.
pub(crate) fn start(
    guest: Arc<Guest>,
    id: u64,
    req: ExecStart,
    base_env: BTreeMap<String, String>,
) {
    let g = guest.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("exec-{id}"))
        .spawn(move || run(g, id, req, base_env));
    if let Err(e) = spawned {
        guest.send(Frame::new(
            FrameKind::Stderr,
            id,
            format!("sandboxctl: {e}\n").into_bytes(),
        ));
        guest.send(exit_frame(id, 126, None, false, Duration::ZERO));
    }
}

fn exit_frame(id: u64, code: i32, signal: Option<i32>, timed_out: bool, d: Duration) -> Frame {
    let exit = Exit {
        exit_code: code,
        signal,
        timed_out,
        duration_ms: d.as_millis() as u64,
    };
    Frame::json(FrameKind::Exit, id, &exit)
}

fn run(guest: Arc<Guest>, id: u64, req: ExecStart, mut env: BTreeMap<String, String>) {
    let started = Instant::now();
    let fail = |code: i32, msg: String| {
        guest.send(Frame::new(FrameKind::Stderr, id, msg.into_bytes()));
        guest.send(exit_frame(id, code, None, false, started.elapsed()));
    };
    if let Some(cwd) = &req.cwd
        && !std::path::Path::new(cwd).is_dir()
    {
        fail(126, format!("sandboxctl: cwd {cwd}: No such directory\n"));
        return;
    }
    env.extend(req.env.clone());
    let mut cmd = Command::new(&req.cmd);
    cmd.args(&req.args)
        .env_clear()
        .envs(&env)
        .current_dir(req.cwd.as_deref().unwrap_or("/root"))
        .stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if req.cwd.is_none() && !std::path::Path::new("/root").is_dir() {
        cmd.current_dir("/");
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let (code, what) = match e.kind() {
                std::io::ErrorKind::NotFound => (127, "command not found".to_string()),
                std::io::ErrorKind::PermissionDenied => (126, "Permission denied".to_string()),
                _ => (126, e.to_string()),
            };
            fail(code, format!("sandboxctl: {}: {what}\n", req.cmd));
            return;
        }
    };
    let pid = child.id();
    let pgid = pid as i32;
    let stdin_tx = child.stdin.take().map(|stdin| {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut stdin = stdin;
            while let Ok(bytes) = rx.recv() {
                if bytes.is_empty() || stdin.write_all(&bytes).is_err() {
                    break;
                }
            }
        });
        Mutex::new(tx)
    });
    guest.lock_execs().insert(
        id,
        ExecHandle {
            pgid,
            stdin: stdin_tx,
        },
    );
    guest.send(Frame::json(
        FrameKind::ExecStarted,
        id,
        &ExecStarted { pid },
    ));

    // Output readers: forward until EOF, or just drain once the exec has been reported.
    let finished = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut readers = 0;
    let pipes: [(Option<Box<dyn Read + Send>>, FrameKind); 2] = [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            FrameKind::Stdout,
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            FrameKind::Stderr,
        ),
    ];
    for (pipe, kind) in pipes {
        let Some(mut pipe) = pipe else { continue };
        let g = guest.clone();
        let finished = finished.clone();
        let done = done_tx.clone();
        readers += 1;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if !finished.load(Ordering::Acquire) {
                            g.send(Frame::new(kind, id, buf[..n].to_vec()));
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = done.send(());
        });
    }
    drop(done_tx);

    let (status_tx, status_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let status = wait(&mut child);
        let _ = status_tx.send(status);
    });
    let timeout = req.timeout_ms.map(Duration::from_millis);
    let mut timed_out = false;
    let status = match timeout {
        Some(t) => match status_rx.recv_timeout(t) {
            Ok(s) => Some(s),
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                kill_group(pgid, libc::SIGKILL);
                status_rx.recv().ok()
            }
            Err(RecvTimeoutError::Disconnected) => None,
        },
        None => status_rx.recv().ok(),
    };
    let duration = started.elapsed();
    if timed_out {
        // Whatever else the group started goes too, so the pipes close.
        kill_group(pgid, libc::SIGKILL);
    }
    let deadline = Instant::now() + DRAIN_GRACE;
    for _ in 0..readers {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    finished.store(true, Ordering::Release);
    guest.lock_execs().remove(&id);

    let (code, signal) = match status {
        Some(Ok(st)) => match (st.code(), st.signal()) {
            (Some(c), _) => (c, None),
            (None, Some(s)) => (128 + s, Some(s)),
            (None, None) => (1, None),
        },
        _ => (1, None),
    };
    let code = if timed_out { 124 } else { code };
    guest.send(exit_frame(id, code, signal, timed_out, duration));
}

fn wait(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    loop {
        match child.wait() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
