//! The two halves of one request's stream: [`GuestStream`] receives the guest's frames and
//! grants its credit back as they are consumed; [`GuestSender`] sends data as the guest's credit
//! allows, and control frames.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc};

use super::conn::Conn;
use super::queue::StreamQueue;
use super::{ChannelError, lock};
use crate::proto::guest::{CHUNK, Credit, Frame, FrameKind};

/// The replies of one request (the receiving half of a stream). Dropped before its end, it tells
/// the guest to abandon the stream (kill the process, drop the upload).
pub(in crate::agent::vm) struct GuestStream {
    pub(super) id: u64,
    pub(super) queue: Arc<StreamQueue>,
    pub(super) conn: Arc<Conn>,
    pub(super) inflight: Arc<AtomicU64>,
    pub(super) credit: Arc<Semaphore>,
    pub(super) window: u64,
    /// Data consumed and not yet granted back.
    pub(super) owed: u64,
    /// The stream ended (its last frame arrived): nothing to cancel.
    pub(in crate::agent::vm) done: bool,
}

impl GuestStream {
    /// The next frame; `deadline` None waits as long as the stream lives.
    pub(in crate::agent::vm) async fn next(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Frame, ChannelError> {
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
    pub(in crate::agent::vm) async fn ack(&mut self, n: usize) -> Result<(), ChannelError> {
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
    pub(in crate::agent::vm) fn sender(&self) -> GuestSender {
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
pub(in crate::agent::vm) struct GuestSender {
    id: u64,
    conn: Arc<Conn>,
    credit: Arc<Semaphore>,
}

impl GuestSender {
    /// Sends `bytes` as data frames of `kind`, each waiting for the guest's credit; an empty
    /// slice sends the (credit-free) end-of-data frame.
    pub(in crate::agent::vm) async fn data(
        &self,
        kind: FrameKind,
        bytes: &[u8],
    ) -> Result<(), ChannelError> {
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
    pub(in crate::agent::vm) async fn cancel(&self) -> Result<(), ChannelError> {
        self.conn
            .send(&Frame::new(FrameKind::Cancel, self.id, Vec::new()))
            .await
    }

    /// A control frame (signal, resize) for this stream, as JSON.
    pub(in crate::agent::vm) async fn control<T: serde::Serialize>(
        &self,
        kind: FrameKind,
        msg: &T,
    ) -> Result<(), ChannelError> {
        self.conn.send(&Frame::json(kind, self.id, msg)).await
    }
}
