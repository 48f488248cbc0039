//! One live, handshaken connection to a guest: its writer queue, the routes of its open streams
//! and the tasks that serve it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use super::queue::StreamQueue;
use super::{ChannelError, lock};
use crate::proto::guest::Frame;

/// Where the reader task delivers one stream's frames, and that stream's flow-control state.
pub(super) struct Route {
    pub(super) queue: Arc<StreamQueue>,
    /// Bytes the guest may still send us; 0 = no limit was asked for.
    pub(super) window: u64,
    /// Data delivered to the queue and not yet granted back: never above `window` for a guest
    /// that keeps the rules.
    pub(super) inflight: Arc<AtomicU64>,
    /// The guest's credit for our data on this stream (permits = bytes).
    pub(super) credit: Arc<Semaphore>,
}

impl Route {
    pub(super) fn close(&self) {
        self.credit.close();
        self.queue.close();
    }
}

pub(super) type Pending = Arc<Mutex<HashMap<u64, Route>>>;

pub(super) fn clear(pending: &Pending) {
    for (_, r) in lock(pending).drain() {
        r.close();
    }
}

/// One live connection.
pub(super) struct Conn {
    pub(super) out: mpsc::Sender<Vec<u8>>,
    pub(super) pending: Pending,
    pub(super) alive: Arc<AtomicBool>,
    pub(super) tasks: Vec<JoinHandle<()>>,
    /// The channel's cut-off reason (shared with it).
    pub(super) cut: Arc<watch::Sender<Option<String>>>,
}

impl Conn {
    pub(super) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    pub(super) fn shutdown(&self) {
        self.alive.store(false, Ordering::Release);
        for t in &self.tasks {
            t.abort();
        }
        clear(&self.pending);
    }

    pub(super) async fn send(&self, frame: &Frame) -> Result<(), ChannelError> {
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
