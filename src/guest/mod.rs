//! The in-VM side: `sandboxctl guest --port /dev/vport0p1`, respawned by busybox init.
//!
//! It serves the host over one virtio-serial port (see [`crate::proto::guest`]): a reader thread
//! decodes frames, a writer thread owns every write to the port, and each exec runs on its own
//! threads, so a command that prints a lot or never exits cannot stall the others.
//!
//! virtio-serial quirks handled here: `read()` returns 0 at once, repeatedly, while no host is
//! connected (we back off), and writes block while the host is away (only the writer thread and
//! the exec threads feeding it wait; the reader keeps going).

mod exec;
mod sys;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use crate::proto::guest::{
    ErrorMsg, ExecStart, Frame, FrameDecoder, FrameKind, Hello, HelloAck, Init, InitAck,
    PROTOCOL_VERSION, Signal,
};

/// Where the last [`Init`] is kept, so a respawned guest program keeps the sandbox's identity.
const INIT_STATE: &str = "/run/sandboxctl/init.json";

/// Frames queued for the writer thread; a full queue slows producers (exec output) down.
const WRITE_QUEUE: usize = 64;

/// Runs the guest program until the process is killed. Blocking.
pub fn run(port: &Path) -> anyhow::Result<()> {
    let reader = open_port(port)?;
    let writer_file = reader.try_clone().context("dup the port")?;
    let (tx, rx) = sync_channel::<Frame>(WRITE_QUEUE);
    std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || writer_loop(writer_file, rx))
        .context("spawn the writer thread")?;
    let init = std::fs::read(INIT_STATE)
        .ok()
        .and_then(|b| serde_json::from_slice::<Init>(&b).ok());
    let guest = Arc::new(Guest {
        out: tx,
        init: Mutex::new(init),
        execs: Mutex::new(HashMap::new()),
    });
    eprintln!(
        "sandboxctl guest {} serving {}",
        env!("CARGO_PKG_VERSION"),
        port.display()
    );
    // Tell a host that is already connected that this is a new guest program (the previous one
    // crashed): its requests in flight will get no answer. Nonce 0 is never a host's.
    guest.send(guest.hello_ack(0));
    reader_loop(reader, &guest);
    Ok(())
}

fn open_port(port: &Path) -> anyhow::Result<File> {
    // The device may appear a moment after we start (module loading).
    let mut last = None;
    for _ in 0..100 {
        match OpenOptions::new().read(true).write(true).open(port) {
            Ok(f) => return Ok(f),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("no port")))
    .with_context(|| format!("open {}", port.display()))
}

fn writer_loop(mut port: File, rx: Receiver<Frame>) {
    let mut buf = Vec::with_capacity(128 * 1024);
    while let Ok(frame) = rx.recv() {
        buf.clear();
        if frame.encode_into(&mut buf).is_err() {
            continue;
        }
        // Coalesce whatever else is queued into one write.
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(f) => {
                    let _ = f.encode_into(&mut buf);
                }
                Err(_) => break,
            }
        }
        let mut off = 0;
        while off < buf.len() {
            match port.write(&buf[off..]) {
                Ok(0) => std::thread::sleep(Duration::from_millis(50)),
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

fn reader_loop(mut port: File, guest: &Arc<Guest>) {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut backoff = Duration::from_millis(5);
    loop {
        match port.read(&mut buf) {
            Ok(0) => {
                // No host connected: forget partial input and wait a little.
                decoder.reset();
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
            Ok(n) => {
                backoff = Duration::from_millis(5);
                decoder.push(&buf[..n]);
                while let Some(frame) = decoder.next_frame() {
                    guest.handle(frame);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// What the guest knows: the output queue, its identity and the running execs.
pub(crate) struct Guest {
    out: SyncSender<Frame>,
    init: Mutex<Option<Init>>,
    execs: Mutex<HashMap<u64, exec::ExecHandle>>,
}

impl Guest {
    pub(crate) fn send(&self, frame: Frame) {
        let _ = self.out.send(frame);
    }

    fn error(&self, id: u64, message: impl Into<String>) {
        self.send(Frame::json(
            FrameKind::Error,
            id,
            &ErrorMsg {
                message: message.into(),
            },
        ));
    }

    fn handle(self: &Arc<Self>, frame: Frame) {
        match frame.kind {
            FrameKind::Hello => match frame.parse::<Hello>() {
                Ok(hello) => {
                    // Streams belong to the connection that opened them: a new host cannot know
                    // their ids, so what a previous host left running is ended.
                    let orphans: Vec<u64> = self.lock_execs().keys().copied().collect();
                    for id in orphans {
                        if let Some(h) = self.lock_execs().get(&id) {
                            h.signal(libc::SIGKILL);
                        }
                    }
                    self.send(self.hello_ack(hello.nonce));
                }
                Err(e) => self.error(0, e.to_string()),
            },
            FrameKind::Ping => self.send(Frame::new(FrameKind::Pong, frame.id, frame.payload)),
            FrameKind::Init => match frame.parse::<Init>() {
                Ok(init) => {
                    let previous = sys::now_unix_ms();
                    sys::apply_init(&init);
                    if let Ok(bytes) = serde_json::to_vec(&init) {
                        let _ = std::fs::create_dir_all("/run/sandboxctl");
                        let _ = std::fs::write(INIT_STATE, bytes);
                    }
                    *self.lock_init() = Some(init);
                    let ack = InitAck {
                        previous_time_unix_ms: previous,
                    };
                    self.send(Frame::json(FrameKind::InitAck, frame.id, &ack));
                }
                Err(e) => self.error(frame.id, e.to_string()),
            },
            FrameKind::ExecStart => match frame.parse::<ExecStart>() {
                Ok(req) => {
                    if self.lock_execs().contains_key(&frame.id) {
                        self.error(frame.id, "stream id already in use");
                        return;
                    }
                    if req.pty.is_some() {
                        self.error(frame.id, "exec on a PTY is not supported by this guest yet");
                        return;
                    }
                    let base_env = self.base_env();
                    exec::start(self.clone(), frame.id, req, base_env);
                }
                Err(e) => self.error(frame.id, e.to_string()),
            },
            FrameKind::Stdin => {
                let execs = self.lock_execs();
                if let Some(h) = execs.get(&frame.id) {
                    h.stdin(frame.payload);
                }
            }
            FrameKind::Signal => match frame.parse::<Signal>() {
                Ok(sig) => {
                    if let Some(h) = self.lock_execs().get(&frame.id) {
                        h.signal(sig.signal);
                    }
                }
                Err(e) => self.error(frame.id, e.to_string()),
            },
            FrameKind::Resize | FrameKind::FileRequest | FrameKind::FileData => {
                self.error(
                    frame.id,
                    format!("{:?} is not supported by this guest yet", frame.kind),
                );
            }
            // Host-bound kinds arriving here are ignored.
            _ => {}
        }
    }

    fn hello_ack(&self, nonce: u64) -> Frame {
        let ack = HelloAck {
            nonce,
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            sandbox_id: self.lock_init().as_ref().map(|i| i.sandbox_id.clone()),
            uptime_ms: sys::uptime_ms(),
            running: self.lock_execs().len() as u32,
        };
        Frame::json(FrameKind::HelloAck, 0, &ack)
    }

    /// The environment every exec starts from: defaults plus the sandbox's env from Init.
    fn base_env(&self) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = [
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ),
            ("HOME", "/root"),
            ("USER", "root"),
            ("LOGNAME", "root"),
            ("SHELL", "/bin/sh"),
            ("LANG", "C.UTF-8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some(init) = self.lock_init().as_ref() {
            env.insert("SANDBOX_ID".into(), init.sandbox_id.clone());
            env.extend(init.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        env
    }

    fn lock_init(&self) -> std::sync::MutexGuard<'_, Option<Init>> {
        self.init.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock_execs(&self) -> std::sync::MutexGuard<'_, HashMap<u64, exec::ExecHandle>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }
}
