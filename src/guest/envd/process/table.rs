//! The processes envd started: each runs as its user in a process group of its own (or, on a
//! PTY, a session), with threads that read its output and fan it out to every stream attached
//! to it. A process outlives the streams: it runs until it exits or is signalled, and the
//! table forgets it only then.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::super::users::User;
use crate::proto::envd::{B64, DataEvent, EndEvent, ProcessConfig, ProcessEvent, PtySize};

/// How long output may keep coming after the process exited (a background child may hold the
/// pipes open forever).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// What a stream attached to a process receives.
pub(crate) type Events = UnboundedReceiver<ProcessEvent>;

struct Fanout {
    subscribers: Vec<UnboundedSender<ProcessEvent>>,
    ended: bool,
}

/// One running process.
pub(crate) struct Proc {
    pub(crate) pid: u32,
    pub(crate) tag: Option<String>,
    pub(crate) config: ProcessConfig,
    stdin: Mutex<Option<File>>,
    /// The terminal's master side, for a process on a PTY.
    master: Option<Arc<OwnedFd>>,
    fanout: Mutex<Fanout>,
}

impl Proc {
    fn fanout(&self) -> std::sync::MutexGuard<'_, Fanout> {
        self.fanout.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a stream: it gets every event from now on. None once the process has ended.
    pub(crate) fn subscribe(&self) -> Option<Events> {
        let mut f = self.fanout();
        if f.ended {
            return None;
        }
        let (tx, rx) = unbounded_channel();
        f.subscribers.push(tx);
        Some(rx)
    }

    fn publish(&self, event: ProcessEvent) {
        let mut f = self.fanout();
        if matches!(event, ProcessEvent::End(_)) {
            f.ended = true;
        }
        f.subscribers.retain(|s| s.send(event.clone()).is_ok());
        if f.ended {
            f.subscribers.clear();
        }
    }

    /// Writes to the process's stdin (or its terminal). Blocking.
    pub(crate) fn write_stdin(&self, bytes: &[u8]) -> Result<(), String> {
        if let Some(m) = &self.master {
            let mut f = File::from(m.try_clone().map_err(|e| e.to_string())?);
            return f.write_all(bytes).map_err(|e| e.to_string());
        }
        let mut stdin = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        match stdin.as_mut() {
            Some(f) => f.write_all(bytes).map_err(|e| e.to_string()),
            None => Err("the process's stdin is closed or was not enabled (stdin: true)".into()),
        }
    }

    /// Closes stdin: the process reads end of file.
    pub(crate) fn close_stdin(&self) -> Result<(), String> {
        if self.master.is_some() {
            return Err("a process on a PTY has no stdin to close".into());
        }
        self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(())
    }

    pub(crate) fn resize(&self, size: PtySize) -> Result<(), String> {
        let Some(m) = &self.master else {
            return Err("the process does not run on a PTY".into());
        };
        let ws = winsize(size);
        // SAFETY: TIOCSWINSZ reads a winsize; the kernel signals SIGWINCH itself.
        let rc = unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(())
    }

    /// Sends `sig` to the process's group (its session's, on a PTY).
    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a negative pid signals the process group; no memory involved.
        unsafe {
            libc::kill(-(self.pid as i32), sig);
        }
    }
}

/// The processes envd knows, by pid.
#[derive(Default)]
pub(crate) struct Table {
    procs: Mutex<HashMap<u32, Arc<Proc>>>,
}

/// What to start.
pub(crate) struct Spawn {
    pub(crate) config: ProcessConfig,
    pub(crate) tag: Option<String>,
    pub(crate) user: User,
    pub(crate) cwd: std::path::PathBuf,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) stdin: bool,
    pub(crate) pty: Option<PtySize>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Proc>>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, pid: u32) -> Option<Arc<Proc>> {
        self.lock().get(&pid).cloned()
    }

    pub(crate) fn by_tag(&self, tag: &str) -> Option<Arc<Proc>> {
        self.lock()
            .values()
            .find(|p| p.tag.as_deref() == Some(tag))
            .cloned()
    }

    pub(crate) fn list(&self) -> Vec<Arc<Proc>> {
        let mut all: Vec<Arc<Proc>> = self.lock().values().cloned().collect();
        all.sort_by_key(|p| p.pid);
        all
    }

    /// Starts a process; the returned stream is attached before any output is read, so it
    /// sees all of it.
    pub(crate) fn spawn(self: &Arc<Self>, s: Spawn) -> std::io::Result<(Arc<Proc>, Events)> {
        let mut cmd = Command::new(&s.config.cmd);
        cmd.args(&s.config.args)
            .env_clear()
            .envs(&s.env)
            .current_dir(&s.cwd);
        let groups: Vec<libc::gid_t> = s.user.groups();
        let (uid, gid) = (s.user.uid, s.user.gid);
        let pty = match s.pty {
            Some(size) => Some(open_pty(size)?),
            None => None,
        };
        let mut stdin_pipe = false;
        match &pty {
            Some((_, slave)) => {
                cmd.stdin(Stdio::from(slave.try_clone()?))
                    .stdout(Stdio::from(slave.try_clone()?))
                    .stderr(Stdio::from(slave.try_clone()?));
            }
            None => {
                stdin_pipe = s.stdin;
                cmd.stdin(if s.stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            }
        }
        let on_pty = pty.is_some();
        // SAFETY: between fork and exec only async-signal-safe calls on data prepared before
        // the fork.
        unsafe {
            cmd.pre_exec(move || {
                if on_pty {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::ioctl(0, libc::TIOCSCTTY, 0);
                } else if libc::setpgid(0, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(gid) < 0
                    || libc::setuid(uid) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        drop(cmd);
        let master = pty.map(|(m, _slave)| Arc::new(m));
        let pid = child.id();
        let proc = Arc::new(Proc {
            pid,
            tag: s.tag,
            config: s.config,
            stdin: Mutex::new(if stdin_pipe {
                child.stdin.take().map(|p| File::from(OwnedFd::from(p)))
            } else {
                None
            }),
            master: master.clone(),
            fanout: Mutex::new(Fanout {
                subscribers: Vec::new(),
                ended: false,
            }),
        });
        let events = proc.subscribe().expect("a new process has not ended");
        self.lock().insert(pid, proc.clone());

        let (done_tx, done_rx) = std_mpsc::channel::<()>();
        let mut readers = 0;
        let mut reader = |src: File, wrap: fn(Vec<u8>) -> DataEvent| {
            readers += 1;
            let (p, done) = (proc.clone(), done_tx.clone());
            std::thread::Builder::new()
                .name(format!("envd-out-{pid}"))
                .spawn(move || {
                    pump(src, &p, wrap);
                    let _ = done.send(());
                })
        };
        if let Some(m) = &master {
            reader(File::from(m.try_clone()?), |b| DataEvent::Pty(B64(b)))?;
        }
        if let Some(out) = child.stdout.take() {
            reader(File::from(OwnedFd::from(out)), |b| {
                DataEvent::Stdout(B64(b))
            })?;
        }
        if let Some(err) = child.stderr.take() {
            reader(File::from(OwnedFd::from(err)), |b| {
                DataEvent::Stderr(B64(b))
            })?;
        }
        drop(done_tx);
        let (table, p) = (self.clone(), proc.clone());
        std::thread::Builder::new()
            .name(format!("envd-wait-{pid}"))
            .spawn(move || {
                let status = child.wait();
                for _ in 0..readers {
                    if done_rx.recv_timeout(DRAIN_GRACE).is_err() {
                        break;
                    }
                }
                table.lock().remove(&p.pid);
                p.publish(ProcessEvent::End(end_event(status)));
            })?;
        Ok((proc, events))
    }
}

fn pump(mut src: File, proc: &Proc, wrap: fn(Vec<u8>) -> DataEvent) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => proc.publish(ProcessEvent::Data(wrap(buf[..n].to_vec()))),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // EIO: the terminal's last slave closed.
            Err(_) => return,
        }
    }
}

/// The end event as upstream envd reports it (Go's `ProcessState` words).
fn end_event(status: std::io::Result<ExitStatus>) -> EndEvent {
    match status {
        Ok(st) => match (st.code(), st.signal()) {
            (Some(code), _) => {
                let status = format!("exit status {code}");
                EndEvent {
                    exit_code: code,
                    exited: true,
                    error: (code != 0).then(|| status.clone()),
                    status,
                }
            }
            (None, sig) => {
                let status = format!("signal: {}", signal_name(sig.unwrap_or(0)));
                EndEvent {
                    exit_code: -1,
                    exited: false,
                    error: Some(status.clone()),
                    status,
                }
            }
        },
        Err(e) => EndEvent {
            exit_code: -1,
            exited: false,
            status: "unknown".into(),
            error: Some(e.to_string()),
        },
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGHUP => "hangup".into(),
        libc::SIGINT => "interrupt".into(),
        libc::SIGQUIT => "quit".into(),
        libc::SIGABRT => "aborted".into(),
        libc::SIGKILL => "killed".into(),
        libc::SIGSEGV => "segmentation fault".into(),
        libc::SIGPIPE => "broken pipe".into(),
        libc::SIGALRM => "alarm clock".into(),
        libc::SIGTERM => "terminated".into(),
        other => format!("signal {other}"),
    }
}

fn winsize(size: PtySize) -> libc::winsize {
    let clamp = |n: u32| n.min(u32::from(u16::MAX)) as u16;
    crate::guest::pty::winsize(clamp(size.rows), clamp(size.cols))
}

fn open_pty(size: PtySize) -> std::io::Result<(OwnedFd, OwnedFd)> {
    crate::guest::pty::open(winsize(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_events_use_go_words() {
        let ok = end_event(Ok(ExitStatus::from_raw(0)));
        assert_eq!(
            (ok.exit_code, ok.exited, ok.status.as_str()),
            (0, true, "exit status 0")
        );
        assert_eq!(ok.error, None);
        let failed = end_event(Ok(ExitStatus::from_raw(3 << 8)));
        assert_eq!(failed.error.as_deref(), Some("exit status 3"));
        let killed = end_event(Ok(ExitStatus::from_raw(libc::SIGKILL)));
        assert_eq!(
            (killed.exit_code, killed.status.as_str()),
            (-1, "signal: killed")
        );
    }
}
