//! The in-VM side: `sandboxctl guest --port /dev/vport0p1`, respawned by busybox init.
//!
//! It serves the host over one virtio-serial port (see [`crate::proto::guest`]): a reader thread
//! decodes frames, a writer thread owns every write to the port, and each exec and file
//! operation runs on its own threads, so a command that prints a lot or never exits cannot stall
//! the others. The reader never blocks on a stream: data for a stream goes into that stream's
//! queue, which the host's flow control keeps within one window.
//!
//! virtio-serial quirks handled here: `read()` returns 0 at once, repeatedly, while no host is
//! connected (we back off), and writes block while the host is away (only the writer thread and
//! the exec threads feeding it wait; the reader keeps going).

pub mod envd;
mod exec;
mod files;
mod flow;
mod ports;
mod pty;
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
    Credit, ErrorMsg, ExecStart, FileRequest, Frame, FrameDecoder, FrameKind, Hello, HelloAck,
    Init, InitAck, PROTOCOL_VERSION, PortOpen, Resize, Signal, Windowed,
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
    // envd listens before the host hears from us, and is configured before any InitAck.
    let envd = envd::spawn(std::net::SocketAddr::from((
        [0, 0, 0, 0],
        crate::proto::e2b::ENVD_PORT,
    )))?;
    if let Some(i) = &init {
        envd.configure(i.env.clone(), i.access_token.clone());
    }
    let guest = Arc::new(Guest {
        out: tx,
        envd,
        init: Mutex::new(init),
        streams: Mutex::new(HashMap::new()),
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

/// A running stream the reader thread can reach by id.
#[derive(Clone)]
pub(crate) enum StreamEntry {
    Exec(Arc<exec::ExecHandle>),
    File(Arc<files::FileHandle>),
    Port(Arc<ports::PortHandle>),
}

impl StreamEntry {
    fn cancel(&self) {
        match self {
            StreamEntry::Exec(h) => h.cancel(),
            StreamEntry::File(h) => h.cancel(),
            StreamEntry::Port(h) => h.cancel(),
        }
    }

    fn grant(&self, bytes: u64) {
        match self {
            StreamEntry::Exec(h) => h.grant(bytes),
            StreamEntry::File(h) => h.grant(bytes),
            StreamEntry::Port(h) => h.grant(bytes),
        }
    }
}

/// What the guest knows: the output queue, its identity and the running streams.
pub(crate) struct Guest {
    out: SyncSender<Frame>,
    envd: Arc<envd::Envd>,
    init: Mutex<Option<Init>>,
    streams: Mutex<HashMap<u64, StreamEntry>>,
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
                code: None,
            },
        ));
    }

    fn handle(self: &Arc<Self>, frame: Frame) {
        match frame.kind {
            FrameKind::Hello => match frame.parse::<Hello>() {
                Ok(hello) => {
                    // Streams belong to the connection that opened them: a new host cannot know
                    // their ids, so what a previous host left running is ended.
                    let orphans: Vec<StreamEntry> = self.lock_streams().values().cloned().collect();
                    for s in orphans {
                        s.cancel();
                    }
                    self.send(self.hello_ack(hello.nonce));
                }
                Err(e) => self.error(0, e.to_string()),
            },
            FrameKind::Ping => self.send(Frame::new(FrameKind::Pong, frame.id, frame.payload)),
            FrameKind::StatsRequest => {
                self.send(Frame::json(FrameKind::Stats, frame.id, &sys::stats()));
            }
            FrameKind::Init => match frame.parse::<Init>() {
                Ok(init) if let Err(e) = init.validate() => self.error(frame.id, e.to_string()),
                Ok(init) => {
                    let previous = sys::now_unix_ms();
                    sys::apply_init(&init);
                    self.envd
                        .configure(init.env.clone(), init.access_token.clone());
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
            FrameKind::ExecStart => match frame.parse::<Windowed<ExecStart>>() {
                Ok(req) if let Err(e) = req.request.validate() => {
                    self.error(frame.id, e.to_string());
                }
                Ok(req) => {
                    if self.lock_streams().contains_key(&frame.id) {
                        self.error(frame.id, "stream id already in use");
                        return;
                    }
                    let base_env = self.base_env();
                    exec::start(self.clone(), frame.id, req, base_env);
                }
                Err(e) => self.error(frame.id, e.to_string()),
            },
            // Paths are checked as the request is parsed; the rest when the operation starts.
            FrameKind::FileRequest => match frame.parse::<FileRequest>() {
                Ok(req) => {
                    if self.lock_streams().contains_key(&frame.id) {
                        self.error(frame.id, "stream id already in use");
                        return;
                    }
                    files::start(self.clone(), frame.id, req);
                }
                Err(e) => self.error(frame.id, e.to_string()),
            },
            FrameKind::PortOpen => match frame.parse::<Windowed<PortOpen>>() {
                Ok(req) => {
                    if self.lock_streams().contains_key(&frame.id) {
                        self.error(frame.id, "stream id already in use");
                        return;
                    }
                    ports::start(self.clone(), frame.id, req);
                }
                Err(e) => self.error(frame.id, e.to_string()),
            },
            FrameKind::PortData => {
                if let Some(StreamEntry::Port(h)) = self.stream(frame.id) {
                    h.data(frame.payload);
                }
            }
            FrameKind::Stdin => {
                if let Some(StreamEntry::Exec(h)) = self.stream(frame.id) {
                    h.stdin(frame.payload);
                }
            }
            FrameKind::FileData => {
                if let Some(StreamEntry::File(h)) = self.stream(frame.id) {
                    h.data(frame.payload);
                }
            }
            FrameKind::Credit => {
                if let (Some(s), Ok(c)) = (self.stream(frame.id), frame.parse::<Credit>()) {
                    s.grant(c.bytes);
                }
            }
            FrameKind::Cancel => {
                if let Some(s) = self.stream(frame.id) {
                    s.cancel();
                }
            }
            // A signal or size out of range is ignored, like one for a stream that has ended.
            FrameKind::Signal => match frame.parse::<Signal>() {
                Ok(sig) if sig.validate().is_err() => {}
                Ok(sig) => {
                    if let Some(StreamEntry::Exec(h)) = self.stream(frame.id) {
                        h.signal(sig.signal);
                    }
                }
                Err(e) => self.error(frame.id, e.to_string()),
            },
            FrameKind::Resize => {
                if let (Some(StreamEntry::Exec(h)), Ok(size)) =
                    (self.stream(frame.id), frame.parse::<Resize>())
                    && size.validate().is_ok()
                {
                    h.resize(size);
                }
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
            running: self
                .lock_streams()
                .values()
                .filter(|s| matches!(s, StreamEntry::Exec(_)))
                .count() as u32,
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

    fn lock_streams(&self) -> std::sync::MutexGuard<'_, HashMap<u64, StreamEntry>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stream(&self, id: u64) -> Option<StreamEntry> {
        self.lock_streams().get(&id).cloned()
    }

    pub(crate) fn insert_stream(&self, id: u64, entry: StreamEntry) {
        self.lock_streams().insert(id, entry);
    }

    pub(crate) fn remove_stream(&self, id: u64) {
        self.lock_streams().remove(&id);
    }
}
