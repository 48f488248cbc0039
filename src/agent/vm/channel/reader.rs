//! The reader task of a connection: it hands each frame to its stream without ever waiting for
//! the stream's consumer, applies credits, and polices the guest (garbage and protocol
//! violations are counted; past [`GARBAGE_BUDGET`] or [`VIOLATION_BUDGET`] the channel is cut
//! off for good).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::AsyncReadExt;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{Semaphore, watch};

use super::conn::{Pending, clear};
use super::queue::{Full, is_data};
use super::{CONTROL_BYTES, GARBAGE_BUDGET, MAX_QUEUED, VIOLATION_BUDGET, lock};
use crate::proto::guest::{Frame, FrameDecoder, FrameKind, HelloAck};

/// What one connection's guest has done wrong so far.
#[derive(Debug, Default)]
pub(super) struct Conduct {
    /// `decoder.skipped` when the handshake ended.
    garbage_before: u64,
    violations: u32,
}

impl Conduct {
    /// Counts one violation; the reason to cut the guest off once past the budget.
    pub(super) fn violation(&mut self, what: &str) -> Option<String> {
        self.violations += 1;
        tracing::warn!(violations = self.violations, "guest channel: {what}");
        (self.violations > VIOLATION_BUDGET)
            .then(|| format!("{} protocol violations, the last: {what}", self.violations))
    }

    pub(super) fn garbage(&self, decoder: &FrameDecoder) -> Option<String> {
        let garbage = decoder.skipped.saturating_sub(self.garbage_before);
        (garbage > GARBAGE_BUDGET).then(|| format!("{garbage} bytes of garbage"))
    }
}

pub(super) async fn read_loop(
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
        super::super::counters::channel_error(super::super::counters::ChannelFault::CutOff);
        cut.send_replace(Some(why));
    }
    clear(&pending);
}

/// Hands one frame to its stream, applying credits and policing the guest: a frame that breaks
/// the protocol is dropped (with its stream, where it overran one) and described in the error.
pub(super) fn deliver(pending: &Pending, f: Frame) -> Result<(), String> {
    use FrameKind::*;
    if matches!(
        f.kind,
        Hello
            | Init
            | Ping
            | Cancel
            | ExecStart
            | Stdin
            | Signal
            | Resize
            | FileRequest
            | StatsRequest
            | PortOpen
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
        Stdout | Stderr | FileData | PortData if window == 0 => {
            drop_stream();
            return Err(format!("{:?} data on a stream that takes none", f.kind));
        }
        Stdout | Stderr | FileData | PortData => {
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
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::super::conn::Route;
    use super::super::queue::StreamQueue;
    use super::*;
    use crate::proto::guest::{CHUNK, MAGIC, WINDOW};

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
