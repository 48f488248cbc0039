//! The host end of the guest channel: one connection per VM to QEMU's virtio-serial socket,
//! multiplexing requests by stream id.
//!
//! A connection starts with Hello (fresh nonce) and ignores everything until the matching
//! HelloAck: bytes the guest wrote while no host was connected (replies meant for a previous
//! agent) arrive first and are dropped. Stream ids come from a per-process counter with a random
//! start, so stale replies never match a live request.
//!
//! The reader task never waits for a stream's consumer: each stream has its own queue, kept
//! within one flow-control window because the guest may only send what the consumer granted
//! (a guest that sends more loses the stream, not the agent's memory). Data the host sends
//! (stdin, uploads) waits for the guest's credit in [`GuestSender`], per stream.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::RngExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use super::sock::connect_unix;
use crate::proto::guest::{
    CHUNK, Credit, ErrorMsg, ExecStart, Exit, Frame, FrameDecoder, FrameKind, Hello, HelloAck,
    Init, InitAck, PROTOCOL_VERSION, WINDOW, Windowed,
};

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("cannot reach the guest: {0}")]
    Connect(String),
    #[error("the guest connection closed")]
    Closed,
    #[error("the guest did not answer in time")]
    Timeout,
    #[error("the guest refused: {0}")]
    Guest(String),
    #[error("unexpected reply: {0}")]
    Protocol(String),
    /// A file operation failed in the guest, with its reason code (`file_not_found`, …).
    #[error("{message}")]
    File { code: String, message: String },
}

pub(super) fn next_id() -> u64 {
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    let counter = NEXT.get_or_init(|| {
        // Random start (high bits) so ids differ from any previous agent process's.
        let start = (rand::rng().random::<u64>() >> 16) << 12 | 1;
        AtomicU64::new(start)
    });
    counter.fetch_add(1, Ordering::Relaxed)
}

/// Where the reader task delivers one stream's frames, and that stream's flow-control state.
struct Route {
    tx: mpsc::UnboundedSender<Frame>,
    /// Bytes the guest may still send us; 0 = no limit was asked for.
    window: u64,
    /// Data delivered to the queue and not yet granted back: never above `window` for a guest
    /// that keeps the rules.
    inflight: Arc<AtomicU64>,
    /// The guest's credit for our data on this stream (permits = bytes).
    credit: Arc<Semaphore>,
}

impl Route {
    fn close(&self) {
        self.credit.close();
    }
}

type Pending = Arc<Mutex<HashMap<u64, Route>>>;

fn clear(pending: &Pending) {
    for (_, r) in lock(pending).drain() {
        r.close();
    }
}

/// One live connection.
struct Conn {
    out: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    alive: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Conn {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn shutdown(&self) {
        self.alive.store(false, Ordering::Release);
        for t in &self.tasks {
            t.abort();
        }
        clear(&self.pending);
    }

    async fn send(&self, frame: &Frame) -> Result<(), ChannelError> {
        let bytes = frame
            .encode()
            .map_err(|e| ChannelError::Protocol(e.to_string()))?;
        self.out.send(bytes).await.map_err(|_| ChannelError::Closed)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What an exec produced, with each stream capped.
#[derive(Debug)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    pub exit: Exit,
}

/// The channel to one VM's guest program; reconnects on demand.
pub struct GuestChannel {
    dir: PathBuf,
    sock: &'static str,
    slot: Mutex<Option<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<()>,
    closed: AtomicBool,
}

impl GuestChannel {
    pub fn new(dir: &Path, sock: &'static str) -> GuestChannel {
        GuestChannel {
            dir: dir.to_path_buf(),
            sock,
            slot: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
        }
    }

    /// Ends the connection for good; requests in flight fail with `Closed`.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(c) = lock(&self.slot).take() {
            c.shutdown();
        }
    }

    /// Drops the current connection (the VM keeps running); the next request reconnects.
    pub fn disconnect(&self) {
        if let Some(c) = lock(&self.slot).take() {
            c.shutdown();
        }
    }

    fn live(&self) -> Option<Arc<Conn>> {
        lock(&self.slot).as_ref().filter(|c| c.is_alive()).cloned()
    }

    /// A live, handshaken connection, made if needed within `wait`.
    async fn conn(&self, wait: Duration) -> Result<(Arc<Conn>, Option<HelloAck>), ChannelError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ChannelError::Closed);
        }
        if let Some(c) = self.live() {
            return Ok((c, None));
        }
        let _connecting = self.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok((c, None));
        }
        let (conn, ack) = self.handshake(Instant::now() + wait).await?;
        let conn = Arc::new(conn);
        *lock(&self.slot) = Some(conn.clone());
        // close() may have run meanwhile and found the slot empty.
        if self.closed.load(Ordering::Acquire) {
            self.close();
            return Err(ChannelError::Closed);
        }
        Ok((conn, Some(ack)))
    }

    /// Connects (retrying until the socket exists and the guest answers) and says Hello.
    pub async fn connect(&self, wait: Duration) -> Result<HelloAck, ChannelError> {
        self.disconnect();
        match self.conn(wait).await? {
            (_, Some(ack)) => Ok(ack),
            (_, None) => Err(ChannelError::Protocol("connection raced".into())),
        }
    }

    async fn handshake(&self, deadline: Instant) -> Result<(Conn, HelloAck), ChannelError> {
        let stream = loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(ChannelError::Closed);
            }
            match connect_unix(&self.dir, self.sock).await {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(ChannelError::Connect(format!("{e:#}")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let (mut r, mut w) = stream.into_split();
        let mut decoder = FrameDecoder::new();
        let mut nonces = HashSet::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut next_hello = Instant::now();
        let ack = 'outer: loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(ChannelError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ChannelError::Timeout);
            }
            if now >= next_hello {
                let nonce = rand::rng().random::<u64>() | 1;
                nonces.insert(nonce);
                let hello = Frame::json(
                    FrameKind::Hello,
                    0,
                    &Hello {
                        nonce,
                        protocol: PROTOCOL_VERSION,
                    },
                );
                let bytes = hello
                    .encode()
                    .map_err(|e| ChannelError::Protocol(e.to_string()))?;
                w.write_all(&bytes)
                    .await
                    .map_err(|e| ChannelError::Connect(e.to_string()))?;
                next_hello = now + Duration::from_secs(1);
            }
            let until = next_hello.min(deadline);
            let n = match tokio::time::timeout_at(until.into(), r.read(&mut buf)).await {
                Err(_) => continue,
                Ok(Ok(0)) => {
                    return Err(ChannelError::Connect("QEMU closed the guest socket".into()));
                }
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(ChannelError::Connect(e.to_string())),
            };
            decoder.push(&buf[..n]);
            while let Some(f) = decoder.next_frame() {
                if f.kind == FrameKind::HelloAck
                    && let Ok(ack) = f.parse::<HelloAck>()
                    && nonces.contains(&ack.nonce)
                {
                    break 'outer ack;
                }
                tracing::debug!(kind = ?f.kind, id = f.id, "dropping a frame from before the handshake");
            }
        };
        if decoder.skipped > 0 {
            tracing::debug!(
                bytes = decoder.skipped,
                "skipped garbage before the handshake"
            );
        }
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let alive = Arc::new(AtomicBool::new(true));
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
        let writer_alive = alive.clone();
        let writer = tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if w.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            writer_alive.store(false, Ordering::Release);
        });
        let reader = tokio::spawn(read_loop(r, decoder, pending.clone(), alive.clone()));
        Ok((
            Conn {
                out: tx,
                pending,
                alive,
                tasks: vec![writer, reader],
            },
            ack,
        ))
    }

    /// Sends `frame` as the opening of stream `frame.id` and returns the stream's replies.
    /// `window`: the initial credit the request gave the guest for its data (0 = no limit).
    pub(super) async fn open(
        &self,
        frame: Frame,
        window: u64,
        wait: Duration,
    ) -> Result<GuestStream, ChannelError> {
        let (conn, _) = self.conn(wait).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let id = frame.id;
        let inflight = Arc::new(AtomicU64::new(0));
        let credit = Arc::new(Semaphore::new(0));
        lock(&conn.pending).insert(
            id,
            Route {
                tx,
                window,
                inflight: inflight.clone(),
                credit: credit.clone(),
            },
        );
        let stream = GuestStream {
            id,
            rx,
            conn,
            inflight,
            credit,
            window,
            owed: 0,
            done: false,
        };
        stream.conn.send(&frame).await?;
        Ok(stream)
    }

    async fn open_stream(&self, frame: Frame, wait: Duration) -> Result<GuestStream, ChannelError> {
        self.open(frame, 0, wait).await
    }

    /// Gives the guest its identity, clock and entropy.
    pub async fn init(&self, init: &Init, wait: Duration) -> Result<InitAck, ChannelError> {
        let id = next_id();
        let mut s = self
            .open_stream(Frame::json(FrameKind::Init, id, init), wait)
            .await?;
        let f = s.next(Some(Instant::now() + wait)).await?;
        s.done = true;
        match f.kind {
            FrameKind::InitAck => f.parse().map_err(|e| ChannelError::Protocol(e.to_string())),
            FrameKind::Error => Err(guest_error(&f)),
            k => Err(ChannelError::Protocol(format!("{k:?} in answer to Init"))),
        }
    }

    /// Runs a command to its end, keeping at most `cap` bytes of each output stream.
    /// `wait` bounds the whole call (the guest enforces the command's own timeout).
    pub async fn exec(
        &self,
        req: &ExecStart,
        cap: usize,
        wait: Duration,
    ) -> Result<ExecOutput, ChannelError> {
        let deadline = Instant::now() + wait;
        let id = next_id();
        let start = Windowed {
            request: req.clone(),
            window: WINDOW,
        };
        let mut s = self
            .open(
                Frame::json(FrameKind::ExecStart, id, &start),
                WINDOW,
                Duration::from_secs(10),
            )
            .await?;
        let mut out = ExecOutput {
            stdout: Vec::new(),
            stderr: Vec::new(),
            truncated: false,
            exit: Exit {
                exit_code: -1,
                signal: None,
                timed_out: false,
                duration_ms: 0,
            },
        };
        loop {
            let f = s.next(Some(deadline)).await?;
            match f.kind {
                FrameKind::Stdout | FrameKind::Stderr => {
                    let buf = if f.kind == FrameKind::Stdout {
                        &mut out.stdout
                    } else {
                        &mut out.stderr
                    };
                    let room = cap.saturating_sub(buf.len());
                    if f.payload.len() > room {
                        out.truncated = true;
                    }
                    buf.extend_from_slice(&f.payload[..f.payload.len().min(room)]);
                    s.ack(f.payload.len()).await?;
                }
                FrameKind::ExecStarted => tracing::debug!(id, "exec started"),
                FrameKind::Exit => {
                    s.done = true;
                    out.exit = f
                        .parse()
                        .map_err(|e| ChannelError::Protocol(e.to_string()))?;
                    return Ok(out);
                }
                FrameKind::Error => {
                    s.done = true;
                    return Err(guest_error(&f));
                }
                k => tracing::debug!(id, kind = ?k, "unexpected frame in an exec stream"),
            }
        }
    }
}

pub(super) fn guest_error(f: &Frame) -> ChannelError {
    match f.parse::<ErrorMsg>() {
        Ok(ErrorMsg {
            message,
            code: Some(code),
        }) => ChannelError::File { code, message },
        Ok(e) => ChannelError::Guest(e.message),
        Err(_) => ChannelError::Guest("unknown error".into()),
    }
}

/// The replies of one request (the receiving half of a stream). Dropped before its end, it tells
/// the guest to abandon the stream (kill the process, drop the upload).
pub(super) struct GuestStream {
    id: u64,
    rx: mpsc::UnboundedReceiver<Frame>,
    conn: Arc<Conn>,
    inflight: Arc<AtomicU64>,
    credit: Arc<Semaphore>,
    window: u64,
    /// Data consumed and not yet granted back.
    owed: u64,
    /// The stream ended (its last frame arrived): nothing to cancel.
    pub(super) done: bool,
}

impl GuestStream {
    /// The next frame; `deadline` None waits as long as the stream lives.
    pub(super) async fn next(&mut self, deadline: Option<Instant>) -> Result<Frame, ChannelError> {
        let got = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), self.rx.recv())
                .await
                .map_err(|_| ChannelError::Timeout)?,
            None => self.rx.recv().await,
        };
        got.ok_or(ChannelError::Closed)
    }

    /// The consumer is done with `n` bytes of data: the guest may send them again. Grants go
    /// out in batches of a quarter window.
    pub(super) async fn ack(&mut self, n: usize) -> Result<(), ChannelError> {
        if self.window == 0 || n == 0 {
            return Ok(());
        }
        self.owed += n as u64;
        if self.owed >= self.window / 4 {
            let bytes = std::mem::take(&mut self.owed);
            self.inflight.fetch_sub(bytes, Ordering::AcqRel);
            self.conn
                .send(&Frame::json(FrameKind::Credit, self.id, &Credit { bytes }))
                .await?;
        }
        Ok(())
    }

    /// The sending half, for stdin, signals and uploads while this half receives.
    pub(super) fn sender(&self) -> GuestSender {
        GuestSender {
            id: self.id,
            conn: self.conn.clone(),
            credit: self.credit.clone(),
        }
    }
}

impl Drop for GuestStream {
    fn drop(&mut self) {
        if let Some(r) = lock(&self.conn.pending).remove(&self.id) {
            r.close();
        }
        if !self.done && self.conn.is_alive() {
            let cancel = Frame::new(FrameKind::Cancel, self.id, Vec::new());
            if let Ok(bytes) = cancel.encode() {
                let out = self.conn.out.clone();
                // The writer queue may be full (an upload in flight): don't lose the cancel.
                if let Err(mpsc::error::TrySendError::Full(bytes)) = out.try_send(bytes)
                    && let Ok(rt) = tokio::runtime::Handle::try_current()
                {
                    rt.spawn(async move {
                        let _ = out.send(bytes).await;
                    });
                }
            }
        }
    }
}

/// The sending half of a stream.
#[derive(Clone)]
pub(super) struct GuestSender {
    id: u64,
    conn: Arc<Conn>,
    credit: Arc<Semaphore>,
}

impl GuestSender {
    /// Sends `bytes` as data frames of `kind`, each waiting for the guest's credit; an empty
    /// slice sends the (credit-free) end-of-data frame.
    pub(super) async fn data(&self, kind: FrameKind, bytes: &[u8]) -> Result<(), ChannelError> {
        if bytes.is_empty() {
            return self.conn.send(&Frame::new(kind, self.id, Vec::new())).await;
        }
        for chunk in bytes.chunks(CHUNK) {
            let permits = self
                .credit
                .acquire_many(chunk.len() as u32)
                .await
                .map_err(|_| ChannelError::Closed)?;
            permits.forget();
            self.conn
                .send(&Frame::new(kind, self.id, chunk.to_vec()))
                .await?;
        }
        Ok(())
    }

    /// Tells the guest to abandon the stream.
    pub(super) async fn cancel(&self) -> Result<(), ChannelError> {
        self.conn
            .send(&Frame::new(FrameKind::Cancel, self.id, Vec::new()))
            .await
    }

    /// A control frame (signal, resize) for this stream, as JSON.
    pub(super) async fn control<T: serde::Serialize>(
        &self,
        kind: FrameKind,
        msg: &T,
    ) -> Result<(), ChannelError> {
        self.conn.send(&Frame::json(kind, self.id, msg)).await
    }
}

async fn read_loop(
    mut r: OwnedReadHalf,
    mut decoder: FrameDecoder,
    pending: Pending,
    alive: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 128 * 1024];
    // Frames already decoded during the handshake's last read.
    loop {
        while let Some(f) = decoder.next_frame() {
            if f.kind == FrameKind::HelloAck {
                // nonce 0: the guest program restarted; nothing in flight will be answered.
                if f.parse::<HelloAck>().is_ok_and(|a| a.nonce == 0) {
                    tracing::warn!("the guest program restarted; failing its requests in flight");
                    clear(&pending);
                }
                continue;
            }
            deliver(&pending, f);
        }
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => decoder.push(&buf[..n]),
        }
    }
    alive.store(false, Ordering::Release);
    clear(&pending);
}

/// Hands one frame to its stream, applying credits and policing the guest's window.
fn deliver(pending: &Pending, f: Frame) {
    let mut routes = lock(pending);
    let Some(route) = routes.get(&f.id) else {
        tracing::debug!(kind = ?f.kind, id = f.id, "dropping a frame for no live request");
        return;
    };
    match f.kind {
        FrameKind::Credit => {
            if let Ok(c) = f.parse::<Credit>() {
                // A semaphore holds at most MAX_PERMITS; a sane guest never comes close.
                let room = Semaphore::MAX_PERMITS.saturating_sub(route.credit.available_permits());
                route
                    .credit
                    .add_permits((c.bytes.min(u64::from(u32::MAX)) as usize).min(room));
            }
            return;
        }
        FrameKind::Stdout | FrameKind::Stderr | FrameKind::FileData if route.window > 0 => {
            let len = f.payload.len() as u64;
            let inflight = route.inflight.fetch_add(len, Ordering::AcqRel) + len;
            if inflight > route.window {
                tracing::warn!(
                    id = f.id,
                    inflight,
                    window = route.window,
                    "the guest overran its flow-control window; dropping the stream"
                );
                if let Some(r) = routes.remove(&f.id) {
                    r.close();
                }
                return;
            }
        }
        _ => {}
    }
    // The requester may have gone away: then the frame is just dropped.
    let _ = route.tx.send(f);
}
