//! One stream's frames between the reader task and the stream's consumer, bounded in bytes
//! (one flow-control window of data plus [`CONTROL_BYTES`] of control frames) and in frames
//! ([`MAX_QUEUED`]); data frames that follow one another are merged up to [`CHUNK`].

use std::sync::Mutex;

use tokio::sync::Notify;

use super::{CONTROL_BYTES, MAX_QUEUED, lock};
use crate::proto::guest::{CHUNK, Frame, FrameKind};

/// One stream's frames between the reader task and the stream's consumer, bounded.
pub(super) struct StreamQueue {
    inner: Mutex<QueueInner>,
    ready: Notify,
    /// The stream's data window (0: the stream takes no data).
    window: u64,
}

#[derive(Default)]
pub(super) struct QueueInner {
    frames: std::collections::VecDeque<Frame>,
    data_bytes: usize,
    control_bytes: usize,
    closed: bool,
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Full {
    Frames,
    ControlBytes,
    DataBytes,
}

pub(super) fn is_data(kind: FrameKind) -> bool {
    matches!(
        kind,
        FrameKind::Stdout | FrameKind::Stderr | FrameKind::FileData | FrameKind::PortData
    )
}

impl StreamQueue {
    pub(super) fn new(window: u64) -> StreamQueue {
        StreamQueue {
            inner: Mutex::new(QueueInner::default()),
            ready: Notify::new(),
            window,
        }
    }

    /// Queues `f` (merged into the last frame when both are non-empty data of one kind), or says
    /// which bound it would break. A closed queue drops it.
    pub(super) fn push(&self, f: Frame) -> Result<(), Full> {
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

    pub(super) fn close(&self) {
        lock(&self.inner).closed = true;
        self.ready.notify_one();
    }

    /// The next frame; None once the queue is closed and empty. One consumer.
    pub(super) async fn recv(&self) -> Option<Frame> {
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
    pub(super) fn len(&self) -> (usize, usize, usize) {
        let q = lock(&self.inner);
        (q.frames.len(), q.data_bytes, q.control_bytes)
    }
}
