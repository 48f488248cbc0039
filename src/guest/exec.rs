//! One exec: a process in its own process group (or, on a PTY, its own session), its output
//! streamed as it comes under the host's flow control, its stdin fed from the host.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::flow::Flow;
use super::{Guest, StreamEntry};
use crate::proto::guest::{
    CHUNK, Credit, ExecStart, ExecStarted, Exit, Frame, FrameKind, PtySize, WINDOW, Windowed,
};

/// How long to wait for the output pipes to close after the process ended (a background
/// grandchild may hold them open forever). The wait starts again while the host is what holds
/// the output back (a slow client), so no output is lost to a slow reader.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Output coalescing: a read under SMALL_READ bytes that follows another read within BURST_GAP
/// waits COALESCE_WAIT before the next one.
const SMALL_READ: usize = 16 * 1024;
const BURST_GAP: Duration = Duration::from_millis(5);
const COALESCE_WAIT: Duration = Duration::from_millis(2);

/// ^D: what "end of input" means on a terminal in canonical mode.
const VEOF: u8 = 0x04;

/// What the reader thread needs to reach a running exec. Registered before the process starts,
/// so a cancel that arrives early still finds it.
pub(crate) struct ExecHandle {
    /// The process group (the process id); 0 until the process started.
    pgid: AtomicI32,
    cancelled: AtomicBool,
    stdin: Option<Mutex<Sender<Vec<u8>>>>,
    /// Credit for output frames.
    flow: Flow,
    /// The PTY's master side, once the process runs on one.
    master: OnceLock<Arc<OwnedFd>>,
}

impl ExecHandle {
    pub(crate) fn stdin(&self, bytes: Vec<u8>) {
        if let Some(tx) = &self.stdin {
            let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(bytes);
        }
    }

    /// Delivers `sig` to the process group; on a PTY to the terminal's foreground process group
    /// (what a terminal does with ^C), which is the job the user is looking at.
    pub(crate) fn signal(&self, sig: i32) {
        let pgid = self.pgid.load(Ordering::SeqCst);
        if let Some(m) = self.master.get() {
            // SAFETY: tcgetpgrp on a descriptor we own.
            let fg = unsafe { libc::tcgetpgrp(m.as_raw_fd()) };
            if fg > 1 {
                kill_group(fg, sig);
                return;
            }
        }
        kill_group(pgid, sig);
    }

    pub(crate) fn resize(&self, size: PtySize) {
        if let Some(m) = self.master.get() {
            let ws = winsize(size);
            // SAFETY: TIOCSWINSZ reads a winsize; the kernel signals SIGWINCH itself.
            unsafe {
                libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws);
            }
        }
    }

    pub(crate) fn grant(&self, bytes: u64) {
        self.flow.grant(bytes);
    }

    /// The host abandoned the stream: kill everything the exec started and stop sending.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.cancel_processes();
        self.flow.close();
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

fn winsize(size: PtySize) -> libc::winsize {
    crate::guest::pty::winsize(size.rows, size.cols)
}

/// Registers the exec under `id` and starts it on its own thread; returns at once.
pub(crate) fn start(
    guest: Arc<Guest>,
    id: u64,
    req: Windowed<ExecStart>,
    base_env: BTreeMap<String, String>,
) {
    let Windowed {
        request: req,
        window,
    } = req;
    let (stdin_tx, stdin_rx) = if req.stdin || req.pty.is_some() {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        (Some(Mutex::new(tx)), Some(rx))
    } else {
        (None, None)
    };
    let handle = Arc::new(ExecHandle {
        pgid: AtomicI32::new(0),
        cancelled: AtomicBool::new(false),
        stdin: stdin_tx,
        flow: Flow::new(window),
        master: OnceLock::new(),
    });
    guest.insert_stream(id, StreamEntry::Exec(handle.clone()));
    let (g, h) = (guest.clone(), handle.clone());
    let spawned = std::thread::Builder::new()
        .name(format!("exec-{id}"))
        .spawn(move || run(g, id, h, req, base_env, stdin_rx));
    if let Err(e) = spawned {
        guest.send(Frame::new(
            FrameKind::Stderr,
            id,
            format!("sandboxctl: {e}\n").into_bytes(),
        ));
        guest.send(exit_frame(id, 126, None, false, Duration::ZERO));
        guest.remove_stream(id);
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

fn credit_frame(id: u64, bytes: u64) -> Frame {
    Frame::json(FrameKind::Credit, id, &Credit { bytes })
}

fn open_pty(size: PtySize) -> std::io::Result<(OwnedFd, OwnedFd)> {
    crate::guest::pty::open(winsize(size))
}

fn run(
    guest: Arc<Guest>,
    id: u64,
    handle: Arc<ExecHandle>,
    req: ExecStart,
    mut env: BTreeMap<String, String>,
    stdin_rx: Option<Receiver<Vec<u8>>>,
) {
    let started = Instant::now();
    let fail = |code: i32, msg: String| {
        guest.send(Frame::new(FrameKind::Stderr, id, msg.into_bytes()));
        guest.send(exit_frame(id, code, None, false, started.elapsed()));
        guest.remove_stream(id);
    };
    if let Some(cwd) = &req.cwd
        && !std::path::Path::new(cwd).is_dir()
    {
        fail(126, format!("sandboxctl: cwd {cwd}: No such directory\n"));
        return;
    }
    env.extend(req.env.clone());
    if req.pty.is_some() && !env.contains_key("TERM") {
        env.insert("TERM".into(), "xterm-256color".into());
    }
    let mut cmd = Command::new(&req.cmd);
    cmd.args(&req.args).env_clear().envs(&env);
    match &req.cwd {
        Some(cwd) => cmd.current_dir(cwd),
        None if std::path::Path::new("/root").is_dir() => cmd.current_dir("/root"),
        None => cmd.current_dir("/"),
    };
    let mut master = None;
    match req.pty {
        Some(size) => {
            let (m, slave) = match open_pty(size) {
                Ok(p) => p,
                Err(e) => {
                    fail(126, format!("sandboxctl: cannot open a PTY: {e}\n"));
                    return;
                }
            };
            let dups = (slave.try_clone(), slave.try_clone());
            let (Ok(out), Ok(err)) = dups else {
                fail(126, "sandboxctl: cannot duplicate the PTY\n".into());
                return;
            };
            cmd.stdin(Stdio::from(slave))
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err));
            // SAFETY: only async-signal-safe calls between fork and exec. The stdio descriptors
            // are in place by then, so fd 0 is the terminal: a new session, and the terminal
            // becomes its controlling one.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            master = Some(Arc::new(m));
        }
        None => {
            cmd.stdin(if stdin_rx.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        }
    }
    let spawned = cmd.spawn();
    // The command keeps the PTY's slave end open in this process: let go of it, or the output
    // never ends.
    drop(cmd);
    let mut child = match spawned {
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
    handle.pgid.store(pgid, Ordering::SeqCst);
    if let Some(m) = &master {
        let _ = handle.master.set(m.clone());
    }
    if handle.cancelled.load(Ordering::SeqCst) {
        handle.cancel();
    }
    guest.send(Frame::json(
        FrameKind::ExecStarted,
        id,
        &ExecStarted { pid },
    ));

    // Stdin: written as it comes; each chunk's credit goes back once the process has it.
    let stdin_sink: Option<Box<dyn Write + Send>> = match (&master, child.stdin.take()) {
        (Some(m), _) => m
            .try_clone()
            .ok()
            .map(|fd| Box::new(File::from(fd)) as Box<dyn Write + Send>),
        (None, Some(pipe)) => Some(Box::new(pipe)),
        (None, None) => None,
    };
    if let (Some(mut sink), Some(rx)) = (stdin_sink, stdin_rx) {
        let on_pty = master.is_some();
        let g = guest.clone();
        guest.send(credit_frame(id, WINDOW));
        std::thread::spawn(move || {
            while let Ok(bytes) = rx.recv() {
                if bytes.is_empty() {
                    if on_pty {
                        let _ = sink.write_all(&[VEOF]);
                        continue;
                    }
                    break;
                }
                if sink.write_all(&bytes).is_err() {
                    break;
                }
                g.send(credit_frame(id, bytes.len() as u64));
            }
        });
    }

    // Output readers: forward under flow control until EOF, or just drain once the exec has been
    // reported (or cancelled).
    let gate = Arc::new(Mutex::new(false));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut readers = 0;
    let pipes: Vec<(Box<dyn Read + Send>, FrameKind)> = match &master {
        Some(m) => m
            .try_clone()
            .ok()
            .map(|fd| {
                (
                    Box::new(File::from(fd)) as Box<dyn Read + Send>,
                    FrameKind::Stdout,
                )
            })
            .into_iter()
            .collect(),
        None => {
            let mut v: Vec<(Box<dyn Read + Send>, FrameKind)> = Vec::new();
            if let Some(s) = child.stdout.take() {
                v.push((Box::new(s), FrameKind::Stdout));
            }
            if let Some(s) = child.stderr.take() {
                v.push((Box::new(s), FrameKind::Stderr));
            }
            v
        }
    };
    for (mut pipe, kind) in pipes {
        let g = guest.clone();
        let h = handle.clone();
        let gate = gate.clone();
        let done = done_tx.clone();
        readers += 1;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            let mut last_read = Instant::now() - BURST_GAP;
            loop {
                let taken = h.flow.take(CHUNK);
                let want = taken.unwrap_or(CHUNK);
                let r = pipe.read(&mut buf[..want]);
                let used = match &r {
                    Ok(n) => *n,
                    Err(_) => 0,
                };
                if taken.is_some() {
                    h.flow.give_back(want - used);
                }
                match r {
                    Ok(0) => break,
                    Ok(n) => {
                        {
                            let finished = gate.lock().unwrap_or_else(|p| p.into_inner());
                            if !*finished && taken.is_some() {
                                g.send(Frame::new(kind, id, buf[..n].to_vec()));
                            }
                        }
                        // A burst of small writes (most programs write 4 KiB at a time): let the
                        // pipe fill a little before the next read, so frames carry more than a
                        // page each. Interactive output (one small write now and then) is not
                        // delayed.
                        let now = Instant::now();
                        if n < SMALL_READ && now.duration_since(last_read) < BURST_GAP {
                            std::thread::sleep(COALESCE_WAIT);
                        }
                        last_read = now;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // EIO on a PTY master: every holder of the terminal closed it.
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
                handle.cancel_processes();
                status_rx.recv().ok()
            }
            Err(RecvTimeoutError::Disconnected) => None,
        },
        None => status_rx.recv().ok(),
    };
    let duration = started.elapsed();
    if timed_out {
        // Whatever else the group started goes too, so the pipes close.
        handle.cancel_processes();
    }
    let mut deadline = Instant::now() + DRAIN_GRACE;
    let mut left = readers;
    while left > 0 {
        let now = Instant::now();
        if !timed_out && handle.flow.starved() {
            deadline = now + DRAIN_GRACE;
        }
        if now >= deadline {
            break;
        }
        match done_rx.recv_timeout((deadline - now).min(Duration::from_millis(100))) {
            Ok(()) => left -= 1,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    *gate.lock().unwrap_or_else(|p| p.into_inner()) = true;
    handle.flow.close();
    guest.remove_stream(id);

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

impl ExecHandle {
    /// SIGKILL for the process group and the terminal's foreground group, without touching the
    /// flow (the output so far is still sent).
    fn cancel_processes(&self) {
        let pgid = self.pgid.load(Ordering::SeqCst);
        if let Some(m) = self.master.get() {
            // SAFETY: as in `signal`.
            let fg = unsafe { libc::tcgetpgrp(m.as_raw_fd()) };
            if fg > 1 && fg != pgid {
                kill_group(fg, libc::SIGKILL);
            }
        }
        kill_group(pgid, libc::SIGKILL);
    }
}

fn wait(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    loop {
        match child.wait() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
