//! The host end of the guest channel: one connection per VM to QEMU's virtio-serial socket,
//! multiplexing requests by stream id.
//!
//! A connection starts with Hello (fresh nonce) and ignores everything until the matching
//! HelloAck: bytes the guest wrote while no host was connected (replies meant for a previous
//! agent) arrive first and are dropped. Stream ids come from a per-process counter with a random
//! start, so stale replies never match a live request.
//!
//! The reader task never waits for a stream's consumer: each stream has its own [`StreamQueue`],
//! bounded in bytes (one flow-control window of data, because the guest may only send what the
//! consumer granted, plus [`CONTROL_BYTES`] of control frames) and in frames ([`MAX_QUEUED`];
//! data frames that follow one another are merged up to [`CHUNK`]). A stream whose guest
//! overruns these loses the stream, never the agent's memory; frames for no live request are
//! dropped on arrival. Data the host sends (stdin, uploads) waits for the guest's credit in
//! [`GuestSender`], per stream.
//!
//! The guest is hostile until proven otherwise. Its garbage (bytes that are no frame) and its
//! protocol violations (data on a stream that asked for none, a window overrun, a frame only
//! the host sends, an unreadable credit, an oversized control frame) are counted per
//! connection; past [`GARBAGE_BUDGET`] or [`VIOLATION_BUDGET`] the channel is cut off for good:
//! every call fails with [`ChannelError::CutOff`] and the VM manager, told through
//! [`GuestChannel::cut_off_watch`], stops the VM and logs why.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::RngExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
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
    File {
        code: crate::proto::guest::FileErrorCode,
        message: String,
    },
    /// The guest broke the protocol too often and its channel was cut off for good.
    #[error("the guest broke the channel protocol and was cut off ({0})")]
    CutOff(String),
}

/// Bytes of garbage (not frames) a guest may send on one connection before it is cut off. A
/// sane guest sends none after the handshake but for a frame cut short when its program
/// restarts.
pub(super) const GARBAGE_BUDGET: u64 = 1 << 20;
/// Protocol violations a guest may commit on one connection before it is cut off.
pub(super) const VIOLATION_BUDGET: u32 = 64;
/// Frames one stream may hold unconsumed.
pub(super) const MAX_QUEUED: usize = 4096;
/// Bytes of control frames (anything but data) one stream may hold unconsumed; also the
/// largest control frame a guest may send.
pub(super) const CONTROL_BYTES: usize = 64 * 1024;

/// One stream's frames between the reader task and the stream's consumer, bounded.
struct StreamQueue {
    inner: Mutex<QueueInner>,
    ready: Notify,
    /// The stream's data window (0: the stream takes no data).
    window: u64,
}

#[derive(Default)]
struct QueueInner {
    frames: std::collections::VecDeque<Frame>,
    data_bytes: usize,
    control_bytes: usize,
    closed: bool,
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
enum Full {
    Frames,
    ControlBytes,
    DataBytes,
}

fn is_data(kind: FrameKind) -> bool {
    matches!(
        kind,
        FrameKind::Stdout | FrameKind::Stderr | FrameKind::FileData
    )
}

impl StreamQueue {
    fn new(window: u64) -> StreamQueue {
        StreamQueue {
            inner: Mutex::new(QueueInner::default()),
            ready: Notify::new(),
            window,
        }
    }

    /// Queues `f` (merged into the last frame when both are non-empty data of one kind), or says
    /// which bound it would break. A closed queue drops it.
    fn push(&self, f: Frame) -> Result<(), Full> {
        let mut q = lock(&self.inner);
        if q.closed {
            return Ok(());
        }
        let len = f.payload.len();
        if is_data(f.kind) {
            if q.data_bytes + len > self.window as usize {
                return Err(Full::DataBytes);
            }
            if let Some(last) = q.frames.back_mut()
                && last.kind == f.kind
                && !last.payload.is_empty()
                && len > 0
                && last.payload.len() + len <= CHUNK
            {
                last.payload.extend_from_slice(&f.payload);
                q.data_bytes += len;
                return Ok(());
            }
        } else if q.control_bytes + len > CONTROL_BYTES {
            return Err(Full::ControlBytes);
        }
        if q.frames.len() >= MAX_QUEUED {
            return Err(Full::Frames);
        }
        if is_data(f.kind) {
            q.data_bytes += len;
        } else {
            q.control_bytes += len;
        }
        q.frames.push_back(f);
        drop(q);
        self.ready.notify_one();
        Ok(())
    }

    fn close(&self) {
        lock(&self.inner).closed = true;
        self.ready.notify_one();
    }

    /// The next frame; None once the queue is closed and empty. One consumer.
    async fn recv(&self) -> Option<Frame> {
        loop {
            {
                let mut q = lock(&self.inner);
                if let Some(f) = q.frames.pop_front() {
                    if is_data(f.kind) {
                        q.data_bytes -= f.payload.len();
                    } else {
                        q.control_bytes -= f.payload.len();
                    }
                    return Some(f);
                }
                if q.closed {
                    return None;
                }
            }
            // notify_one keeps a permit when nobody waits: no wake-up is lost.
            self.ready.notified().await;
        }
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize, usize) {
        let q = lock(&self.inner);
        (q.frames.len(), q.data_bytes, q.control_bytes)
    }
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
    queue: Arc<StreamQueue>,
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
        self.queue.close();
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
    /// The channel's cut-off reason (shared with it).
    cut: Arc<watch::Sender<Option<String>>>,
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
    /// Why the guest was cut off, once it was.
    cut: Arc<watch::Sender<Option<String>>>,
}

impl GuestChannel {
    pub fn new(dir: &Path, sock: &'static str) -> GuestChannel {
        GuestChannel {
            dir: dir.to_path_buf(),
            sock,
            slot: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            cut: Arc::new(watch::Sender::new(None)),
        }
    }

    /// Why the guest's channel was cut off, if it was (for good: see the module notes).
    pub fn cut_reason(&self) -> Option<String> {
        self.cut.borrow().clone()
    }

    /// Hears when the guest is cut off (the value becomes `Some(reason)`); closed when the
    /// channel is dropped.
    pub fn cut_off_watch(&self) -> watch::Receiver<Option<String>> {
        self.cut.subscribe()
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
        if let Some(why) = self.cut_reason() {
            return Err(ChannelError::CutOff(why));
        }
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
        let reader = tokio::spawn(read_loop(
            r,
            decoder,
            pending.clone(),
            alive.clone(),
            self.cut.clone(),
        ));
        Ok((
            Conn {
                out: tx,
                pending,
                alive,
                tasks: vec![writer, reader],
                cut: self.cut.clone(),
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
        let queue = Arc::new(StreamQueue::new(window));
        let id = frame.id;
        let inflight = Arc::new(AtomicU64::new(0));
        let credit = Arc::new(Semaphore::new(0));
        lock(&conn.pending).insert(
            id,
            Route {
                queue: queue.clone(),
                window,
                inflight: inflight.clone(),
                credit: credit.clone(),
            },
        );
        let stream = GuestStream {
            id,
            queue,
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
    queue: Arc<StreamQueue>,
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
            Some(d) => tokio::time::timeout_at(d.into(), self.queue.recv())
                .await
                .map_err(|_| ChannelError::Timeout)?,
            None => self.queue.recv().await,
        };
        match got {
            Some(f) => Ok(f),
            None => Err(match self.conn.cut.borrow().clone() {
                Some(why) => ChannelError::CutOff(why),
                None => ChannelError::Closed,
            }),
        }
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

/// What one connection's guest has done wrong so far.
#[derive(Debug, Default)]
struct Conduct {
    /// `decoder.skipped` when the handshake ended.
    garbage_before: u64,
    violations: u32,
}

impl Conduct {
    /// Counts one violation; the reason to cut the guest off once past the budget.
    fn violation(&mut self, what: &str) -> Option<String> {
        self.violations += 1;
        tracing::warn!(violations = self.violations, "guest channel: {what}");
        (self.violations > VIOLATION_BUDGET)
            .then(|| format!("{} protocol violations, the last: {what}", self.violations))
    }

    fn garbage(&self, decoder: &FrameDecoder) -> Option<String> {
        let garbage = decoder.skipped.saturating_sub(self.garbage_before);
        (garbage > GARBAGE_BUDGET).then(|| format!("{garbage} bytes of garbage"))
    }
}

async fn read_loop(
    mut r: OwnedReadHalf,
    mut decoder: FrameDecoder,
    pending: Pending,
    alive: Arc<AtomicBool>,
    cut: Arc<watch::Sender<Option<String>>>,
) {
    let mut buf = vec![0u8; 128 * 1024];
    let mut conduct = Conduct {
        garbage_before: decoder.skipped,
        violations: 0,
    };
    // Frames already decoded during the handshake's last read come first.
    let why = 'read: loop {
        while let Some(f) = decoder.next_frame() {
            if f.kind == FrameKind::HelloAck {
                match f.parse::<HelloAck>() {
                    // nonce 0: the guest program restarted; nothing in flight will be answered.
                    Ok(a) if a.nonce == 0 => {
                        tracing::warn!(
                            "the guest program restarted; failing its requests in flight"
                        );
                        clear(&pending);
                    }
                    // A late answer to one of the handshake's Hellos.
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(why) = conduct.violation(&format!("unreadable HelloAck: {e}")) {
                            break 'read Some(why);
                        }
                    }
                }
                continue;
            }
            if let Err(what) = deliver(&pending, f)
                && let Some(why) = conduct.violation(&what)
            {
                break 'read Some(why);
            }
        }
        if let Some(why) = conduct.garbage(&decoder) {
            break 'read Some(why);
        }
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break None,
            Ok(n) => decoder.push(&buf[..n]),
        }
    };
    alive.store(false, Ordering::Release);
    if let Some(why) = why {
        tracing::error!(reason = %why, "the guest broke the channel protocol; cutting it off");
        cut.send_replace(Some(why));
    }
    clear(&pending);
}

/// Hands one frame to its stream, applying credits and policing the guest: a frame that breaks
/// the protocol is dropped (with its stream, where it overran one) and described in the error.
fn deliver(pending: &Pending, f: Frame) -> Result<(), String> {
    use FrameKind::*;
    if matches!(
        f.kind,
        Hello | Init | Ping | Cancel | ExecStart | Stdin | Signal | Resize | FileRequest
    ) {
        return Err(format!("sent {:?}, a frame only the host sends", f.kind));
    }
    if !is_data(f.kind) && f.payload.len() > CONTROL_BYTES {
        return Err(format!(
            "a {:?} frame of {} bytes (control frames are at most {CONTROL_BYTES})",
            f.kind,
            f.payload.len()
        ));
    }
    let id = f.id;
    let mut routes = lock(pending);
    let Some(route) = routes.get(&id) else {
        tracing::debug!(kind = ?f.kind, id, "dropping a frame for no live request");
        return Ok(());
    };
    let (queue, credit, inflight, window) = (
        route.queue.clone(),
        route.credit.clone(),
        route.inflight.clone(),
        route.window,
    );
    let mut drop_stream = || {
        if let Some(r) = routes.remove(&id) {
            r.close();
        }
    };
    match f.kind {
        Credit => {
            let Ok(c) = f.parse::<crate::proto::guest::Credit>() else {
                return Err("an unreadable Credit".into());
            };
            // A semaphore holds at most MAX_PERMITS; a sane guest never comes close.
            let room = Semaphore::MAX_PERMITS.saturating_sub(credit.available_permits());
            credit.add_permits((c.bytes.min(u64::from(u32::MAX)) as usize).min(room));
            return Ok(());
        }
        Stdout | Stderr | FileData if window == 0 => {
            drop_stream();
            return Err(format!("{:?} data on a stream that takes none", f.kind));
        }
        Stdout | Stderr | FileData => {
            let len = f.payload.len() as u64;
            let inflight = inflight.fetch_add(len, Ordering::AcqRel) + len;
            if inflight > window {
                drop_stream();
                return Err(format!(
                    "overran its flow-control window ({inflight} > {window} bytes); the stream is dropped"
                ));
            }
        }
        _ => {}
    }
    match queue.push(f) {
        Ok(()) => Ok(()),
        // Many small frames of alternating kinds for a consumer that does not keep up: a sane
        // guest can do that, so the stream goes but nothing is counted against the guest.
        Err(Full::Frames) => {
            tracing::warn!(
                "a guest stream holds {MAX_QUEUED} frames its consumer has not taken; dropping it"
            );
            drop_stream();
            Ok(())
        }
        Err(full) => {
            drop_stream();
            Err(format!("filled its stream's queue ({full:?})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::guest::MAGIC;

    fn pending_with(id: u64, window: u64) -> (Pending, Arc<StreamQueue>) {
        let queue = Arc::new(StreamQueue::new(window));
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        lock(&pending).insert(
            id,
            Route {
                queue: queue.clone(),
                window,
                inflight: Arc::new(AtomicU64::new(0)),
                credit: Arc::new(Semaphore::new(0)),
            },
        );
        (pending, queue)
    }

    /// A guest flooding a live stream with control frames fills a bounded queue, then loses
    /// the stream; what it sends after that is dropped on arrival.
    #[test]
    fn control_floods_are_bounded() {
        let (pending, queue) = pending_with(5, WINDOW);
        let mut errors = 0;
        for _ in 0..100_000 {
            let f = Frame::new(FrameKind::ExecStarted, 5, vec![b'x'; 100]);
            if deliver(&pending, f).is_err() {
                errors += 1;
            }
        }
        assert_eq!(
            errors, 1,
            "one violation: the overflow that dropped the stream"
        );
        assert!(lock(&pending).is_empty(), "the stream is gone");
        let (frames, _, control) = queue.len();
        assert!(
            control <= CONTROL_BYTES && frames <= CONTROL_BYTES / 100,
            "{frames} {control}"
        );
        // Frames for no live request take no memory.
        for i in 0..10_000 {
            let f = Frame::new(FrameKind::Stdout, 1000 + i, vec![0; CHUNK]);
            assert!(deliver(&pending, f).is_ok());
        }
        assert_eq!(queue.len().0, frames);
    }

    /// Many small data frames within the window are merged: the queue holds the window's bytes
    /// in a few frames, never one per byte.
    #[tokio::test]
    async fn small_data_frames_are_merged_within_the_window() {
        let (pending, queue) = pending_with(5, WINDOW);
        for i in 0..100_000u32 {
            let kind = if i < 50_000 {
                FrameKind::Stdout
            } else {
                FrameKind::Stderr
            };
            deliver(&pending, Frame::new(kind, 5, vec![b'.'])).unwrap();
        }
        let (frames, data, _) = queue.len();
        assert_eq!(data, 100_000);
        assert!(
            frames <= 2 * (50_000usize.div_ceil(CHUNK) + 1),
            "{frames} frames"
        );
        let mut got = 0;
        while got < 100_000 {
            got += queue.recv().await.unwrap().payload.len();
        }
        assert_eq!(queue.len(), (0, 0, 0));
        // Past the window: a violation, and the stream is dropped.
        let over = Frame::new(FrameKind::Stdout, 5, vec![0; WINDOW as usize - 100_000 + 1]);
        let e = deliver(&pending, over).unwrap_err();
        assert!(e.contains("window"), "{e}");
        assert!(lock(&pending).is_empty());
        assert!(queue.recv().await.is_none(), "the consumer sees the end");
    }

    #[test]
    fn protocol_violations_are_named() {
        let (pending, _) = pending_with(5, 0);
        let cases = [
            Frame::new(FrameKind::ExecStart, 5, b"{}".to_vec()),
            Frame::new(FrameKind::Hello, 0, b"{}".to_vec()),
            Frame::new(FrameKind::Error, 5, vec![b' '; CONTROL_BYTES + 1]),
            Frame::new(FrameKind::Credit, 5, b"not json".to_vec()),
            Frame::new(FrameKind::Stdout, 5, b"data nobody asked for".to_vec()),
        ];
        for f in cases {
            let kind = f.kind;
            assert!(deliver(&pending, f).is_err(), "{kind:?}");
        }
        let mut c = Conduct::default();
        for _ in 0..VIOLATION_BUDGET {
            assert!(c.violation("x").is_none());
        }
        assert!(c.violation("x").unwrap().contains("violations"));
    }

    /// The reader cuts a guest off once its garbage passes the budget: requests in flight end,
    /// and the reason is published for the VM manager.
    #[tokio::test]
    async fn garbage_past_the_budget_cuts_the_guest_off() {
        let (host, mut guest) = tokio::net::UnixStream::pair().unwrap();
        let (r, _w) = host.into_split();
        let (pending, queue) = pending_with(5, WINDOW);
        let cut = Arc::new(watch::Sender::new(None));
        let mut heard = cut.subscribe();
        let alive = Arc::new(AtomicBool::new(true));
        let reader = tokio::spawn(read_loop(
            r,
            FrameDecoder::new(),
            pending.clone(),
            alive.clone(),
            cut.clone(),
        ));
        // A frame in order first: delivered.
        let ok = Frame::new(FrameKind::Stdout, 5, b"fine".to_vec());
        guest.write_all(&ok.encode().unwrap()).await.unwrap();
        assert_eq!(queue.recv().await.unwrap(), ok);
        // Then magics with no header, past the budget (the writer may be cut off mid-way).
        let garbage = MAGIC.repeat(GARBAGE_BUDGET as usize / 4 + 64 * 1024);
        let _ = guest.write_all(&garbage).await;
        let why = tokio::time::timeout(Duration::from_secs(30), heard.wait_for(|w| w.is_some()))
            .await
            .expect("cut off in time")
            .unwrap()
            .clone()
            .unwrap();
        assert!(why.contains("garbage"), "{why}");
        reader.await.unwrap();
        assert!(!alive.load(Ordering::Acquire));
        assert!(lock(&pending).is_empty());
        assert!(queue.recv().await.is_none());
    }
}
