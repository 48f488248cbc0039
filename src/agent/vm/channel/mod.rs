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
//!
//! Its parts: [`queue`] (one stream's bounded frames), [`conn`] (a live connection),
//! [`reader`] (the reader task that routes and polices) and [`guest_stream`] (a request's
//! receiving and sending halves, with their flow control).

mod conn;
mod guest_stream;
#[cfg(test)]
mod identity_tests;
mod queue;
mod reader;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::RngExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, watch};

use self::conn::{Conn, Pending, Route};
pub(super) use self::guest_stream::{GuestSender, GuestStream};
use self::queue::StreamQueue;
use self::reader::read_loop;
use super::sock::connect_unix;
use crate::proto::guest::{
    ErrorMsg, ExecStart, Exit, Frame, FrameDecoder, FrameKind, GuestStats, Hello, HelloAck, Init,
    InitAck, PROTOCOL_VERSION, Ping, WINDOW, Windowed,
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
    /// The guest program left a ping unanswered for this long: the guest is frozen (out of
    /// processes or memory, a kernel that no longer schedules it), though its VM still runs.
    #[error("the guest stopped answering (a ping went unanswered for {0:?})")]
    Unresponsive(Duration),
}

impl ChannelError {
    /// Counts this error in the agent's `sandboxctl_guest_channel_errors_total` when it is the
    /// channel's (not a guest's refusal or a file error; a cut-off is counted when it happens).
    pub fn count(&self) {
        use super::counters::{ChannelFault, channel_error};
        let fault = match self {
            ChannelError::Timeout => ChannelFault::Timeout,
            ChannelError::Unresponsive(_) => ChannelFault::Unresponsive,
            ChannelError::Protocol(_) => ChannelFault::Protocol,
            ChannelError::Connect(_) | ChannelError::Closed => ChannelFault::Connection,
            ChannelError::Guest(_) | ChannelError::File { .. } | ChannelError::CutOff(_) => return,
        };
        channel_error(fault);
    }
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
/// How often the host pings a guest while it waits for a call's answer (see
/// [`GuestChannel::until_unresponsive`]).
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long a ping may go unanswered before the guest counts as unresponsive. The guest's reader
/// thread answers a ping at once, without starting anything, so even a guest busy on every vCPU
/// answers within milliseconds; one frozen by a fork bomb or out of memory does not.
pub(super) const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(5);
/// The least time a ping gets, even when the call it guards is due sooner.
pub(super) const MIN_PING_WAIT: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a request of this kind acts for the sandbox's user and so must wait for the guest's
/// identity. Only the channel's own traffic does not: the Init itself, health pings and stats.
fn needs_identity(kind: FrameKind) -> bool {
    !matches!(
        kind,
        FrameKind::Init | FrameKind::Ping | FrameKind::StatsRequest
    )
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

/// What an exec produced, with each stream capped.
#[derive(Debug)]
pub struct CapturedOutput {
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
    /// False while an [`Init`] is on its way: requests that act for the sandbox's user wait
    /// (see [`GuestChannel::begin_init`]).
    identity: watch::Sender<bool>,
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
            identity: watch::Sender::new(true),
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
        if needs_identity(frame.kind) {
            self.identity_settled(wait).await?;
        }
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

    /// Sends the guest its identity, clock and entropy ([`Init`]) without waiting for the answer:
    /// the VM counts as started once its guest answered the handshake, and the identity is
    /// applied while the create's answer travels. Until [`GuestChannel::finish_init`] has the
    /// guest's acknowledgement, every request that acts for the sandbox's user (commands,
    /// files, ports) waits, so none ever runs with the template's identity; health pings and
    /// stats do not wait.
    pub(in crate::agent::vm) async fn begin_init(
        &self,
        init: &Init,
        wait: Duration,
    ) -> Result<GuestStream, ChannelError> {
        self.identity.send_replace(false);
        let sent = self
            .open_stream(Frame::json(FrameKind::Init, next_id(), init), wait)
            .await;
        if sent.is_err() {
            // Nothing reached the guest: the caller fails (a create) or carries on (a resume).
            self.identity.send_replace(true);
        }
        sent
    }

    /// Waits (until `deadline`) for the guest's answer to the Init that [`begin_init`] sent.
    /// With `first` (the sandbox's identity, not a resume's clock) anything but the guest's
    /// acknowledgement cuts the guest off and so stops its VM: a guest that may still carry the
    /// template's identity never serves its user. Waiting requests then fail with
    /// [`ChannelError::CutOff`].
    ///
    /// [`begin_init`]: GuestChannel::begin_init
    pub(in crate::agent::vm) async fn finish_init(
        &self,
        mut s: GuestStream,
        deadline: Instant,
        first: bool,
    ) -> Result<InitAck, ChannelError> {
        let answer = s.next(Some(deadline)).await;
        s.done = true;
        let ack = answer.and_then(|f| match f.kind {
            FrameKind::InitAck => f.parse().map_err(|e| ChannelError::Protocol(e.to_string())),
            FrameKind::Error => Err(guest_error(&f)),
            k => Err(ChannelError::Protocol(format!("{k:?} in answer to Init"))),
        });
        // A channel closed on purpose: the VM is going away.
        if let Err(e) = &ack
            && first
            && !self.closed.load(Ordering::Acquire)
            && self.cut_reason().is_none()
        {
            let why = format!("it did not take its identity: {e}");
            tracing::error!(reason = %why, "cutting the guest off");
            self.cut.send_replace(Some(why));
        }
        self.identity.send_replace(true);
        ack
    }

    /// Holds every request for the sandbox's user until [`GuestChannel::release_identity`] or an
    /// Init's answer: for a VM a new agent found running, whose guest may never have had the
    /// Init a previous agent sent just before it went away.
    pub(in crate::agent::vm) fn hold_identity(&self) {
        self.identity.send_replace(false);
    }

    /// Lets held requests go: the guest has its identity.
    pub(in crate::agent::vm) fn release_identity(&self) {
        self.identity.send_replace(true);
    }

    /// Returns once no Init is on its way (at most `wait`).
    pub async fn identity_settled(&self, wait: Duration) -> Result<(), ChannelError> {
        let mut rx = self.identity.subscribe();
        match tokio::time::timeout(wait, rx.wait_for(|given| *given)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ChannelError::Closed),
            Err(_) => Err(ChannelError::Timeout),
        }
    }

    /// Asks the guest program whether it is there: Ok once its Pong arrives within `wait`
    /// (connecting first if needed, within the same time).
    /// The wait covers sending the ping too: a guest that reads nothing leaves the connection's
    /// writer stuck, and a ping queued behind it gets no longer than one that went out.
    pub async fn ping(&self, wait: Duration) -> Result<(), ChannelError> {
        let deadline = Instant::now() + wait;
        let id = next_id();
        let ping = Frame::json(FrameKind::Ping, id, &Ping { token: id });
        let answer = async {
            let mut s = self.open(ping, 0, wait).await?;
            // Nothing to cancel in the guest, whatever happens next.
            s.done = true;
            s.next(Some(deadline)).await
        };
        let f = tokio::time::timeout_at(deadline.into(), answer)
            .await
            .map_err(|_| ChannelError::Timeout)??;
        match f.kind {
            FrameKind::Pong => Ok(()),
            FrameKind::Error => Err(guest_error(&f)),
            k => Err(ChannelError::Protocol(format!("{k:?} in answer to Ping"))),
        }
    }

    /// The guest's memory and disk figures, answered within `wait` (connecting first if needed,
    /// within the same time). A guest program too old to know the request leaves it unanswered:
    /// a [`ChannelError::Timeout`].
    pub async fn stats(&self, wait: Duration) -> Result<GuestStats, ChannelError> {
        let deadline = Instant::now() + wait;
        let id = next_id();
        let answer = async {
            let mut s = self
                .open(Frame::new(FrameKind::StatsRequest, id, Vec::new()), 0, wait)
                .await?;
            s.done = true;
            s.next(Some(deadline)).await
        };
        let f = tokio::time::timeout_at(deadline.into(), answer)
            .await
            .map_err(|_| ChannelError::Timeout)??;
        match f.kind {
            FrameKind::Stats => f.parse().map_err(|e| ChannelError::Protocol(e.to_string())),
            FrameKind::Error => Err(guest_error(&f)),
            k => Err(ChannelError::Protocol(format!(
                "{k:?} in answer to StatsRequest"
            ))),
        }
    }

    /// Pings the guest every [`PROBE_EVERY`] and resolves once one ping went unanswered for
    /// [`UNRESPONSIVE_AFTER`] ([`ChannelError::Unresponsive`]) or the channel failed. Raced
    /// against a call's answer, it ends the wait for a frozen guest within seconds instead of at
    /// the call's deadline. Near `due` (when a healthy guest would have answered the call, e.g.
    /// a command's own timeout) a ping gets only what is left, but at least [`MIN_PING_WAIT`]:
    /// a frozen guest is reported by then, not [`UNRESPONSIVE_AFTER`] later.
    pub(super) async fn until_unresponsive(&self, due: Option<Instant>) -> ChannelError {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let wait = match due {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .clamp(MIN_PING_WAIT, UNRESPONSIVE_AFTER),
                None => UNRESPONSIVE_AFTER,
            };
            match self.ping(wait).await {
                Ok(()) => {}
                Err(ChannelError::Timeout) => return ChannelError::Unresponsive(wait),
                Err(e) => return e,
            }
        }
    }

    /// Runs `call`, a wait on the guest (connecting, sending a request, its answers), while
    /// [`Self::until_unresponsive`] pings the guest: a guest that leaves a ping unanswered ends
    /// it with [`ChannelError::Unresponsive`] within seconds. A guest that answers pings is never
    /// cut off however long `call` takes (a large upload, a slow command): the wait is `call`'s
    /// own. `due` is when a healthy guest would have answered `call` (see `until_unresponsive`).
    /// Exec, streaming exec and every file call wait on the guest through this one guard.
    pub(super) async fn guarded<T, E: From<ChannelError>>(
        &self,
        due: Option<Instant>,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let probe = self.until_unresponsive(due);
        tokio::pin!(probe, call);
        tokio::select! {
            r = &mut call => r,
            e = &mut probe => Err(e.into()),
        }
    }

    /// Runs a command to its end, keeping at most `cap` bytes of each output stream.
    /// `wait` bounds the whole call (the guest enforces the command's own timeout); a guest that
    /// stops answering pings meanwhile ends it early with [`ChannelError::Unresponsive`].
    pub async fn exec(
        &self,
        req: &ExecStart,
        cap: usize,
        wait: Duration,
    ) -> Result<CapturedOutput, ChannelError> {
        let deadline = Instant::now() + wait;
        let due = req
            .timeout_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        self.guarded(due, self.exec_until_exit(req, cap, deadline))
            .await
    }

    async fn exec_until_exit(
        &self,
        req: &ExecStart,
        cap: usize,
        deadline: Instant,
    ) -> Result<CapturedOutput, ChannelError> {
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
        let mut out = CapturedOutput {
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
