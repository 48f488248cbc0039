//! Port tunnels: a TCP connection to a port on the guest's loopback, carried over the guest
//! channel (see `guest::ports`). The agent's API bridges one to a raw byte stream for the server
//! (`GET /v1/vms/{id}/ports/{port}`, upgraded); no network route to the sandbox is involved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::channel::{GuestSender, GuestStream, guest_error, next_id};
use super::stream::channel_error;
use super::{Vm, VmError, VmManager};
use crate::proto::guest::{CHUNK, Frame, FrameKind, PortOpen, WINDOW, Windowed};

/// How long the guest may take to say whether the port accepts.
const OPEN_WAIT: Duration = Duration::from_secs(15);

/// An open connection to a port inside a VM.
pub struct PortTunnel {
    vm: Arc<Vm>,
    stream: GuestStream,
    sender: GuestSender,
}

impl VmManager {
    /// Connects to `port` on the running VM `id`'s loopback; [`VmError::PortClosed`] when nothing
    /// listens there.
    pub async fn open_port(&self, id: &str, port: u16) -> Result<PortTunnel, VmError> {
        if port == 0 {
            return Err(super::bad("port", "must be 1 to 65535"));
        }
        let vm = self.running_vm(id)?;
        let sid = next_id();
        let open = Windowed {
            request: PortOpen { port },
            window: WINDOW,
        };
        let opened = async {
            let mut stream = vm
                .channel
                .open(
                    Frame::json(FrameKind::PortOpen, sid, &open),
                    WINDOW,
                    Duration::from_secs(10),
                )
                .await?;
            let f = stream.next(Some(Instant::now() + OPEN_WAIT)).await?;
            Ok((stream, f))
        };
        let (mut stream, f) = vm
            .channel
            .guarded(None, opened)
            .await
            .map_err(|e| channel_error(&vm, e))?;
        match f.kind {
            FrameKind::PortOpened => {}
            FrameKind::PortClosed => {
                stream.done = true;
                let why = f
                    .parse::<crate::proto::guest::ErrorMsg>()
                    .map(|e| e.message)
                    .unwrap_or_else(|_| format!("nothing listens on port {port}"));
                return Err(VmError::PortClosed(why));
            }
            FrameKind::Error => {
                stream.done = true;
                return Err(channel_error(&vm, guest_error(&f)));
            }
            k => {
                return Err(VmError::GuestUnavailable(format!(
                    "{k:?} in answer to PortOpen"
                )));
            }
        }
        let sender = stream.sender();
        Ok(PortTunnel { vm, stream, sender })
    }
}

impl PortTunnel {
    /// Relays bytes between `io` and the port until both directions ended (or either side
    /// failed). A half close travels: `io`'s EOF half-closes the guest's connection and the
    /// other way round.
    pub async fn bridge<S>(self, io: S)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let PortTunnel {
            vm,
            mut stream,
            sender,
        } = self;
        let (mut rd, mut wr) = tokio::io::split(io);
        let up = async {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = sender.data(FrameKind::PortData, &[]).await;
                        return;
                    }
                    Ok(n) => {
                        if sender.data(FrameKind::PortData, &buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        let down = async {
            loop {
                let f = match stream.next(None).await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::debug!(vm = %vm.id, error = %e, "port stream ended");
                        return false;
                    }
                };
                match f.kind {
                    FrameKind::PortData if f.payload.is_empty() => {
                        let _ = wr.shutdown().await;
                        return true;
                    }
                    FrameKind::PortData => {
                        let n = f.payload.len();
                        if wr.write_all(&f.payload).await.is_err() || wr.flush().await.is_err() {
                            return false;
                        }
                        if stream.ack(n).await.is_err() {
                            return false;
                        }
                    }
                    FrameKind::Error => {
                        stream.done = true;
                        let _ = wr.shutdown().await;
                        return false;
                    }
                    k => tracing::debug!(kind = ?k, "unexpected frame in a port stream"),
                }
            }
        };
        let clean = {
            tokio::pin!(up, down);
            let mut up_done = false;
            let mut down_done = false;
            while !(up_done && down_done) {
                tokio::select! {
                    () = &mut up, if !up_done => up_done = true,
                    ok = &mut down, if !down_done => {
                        down_done = true;
                        // The guest's side is gone or broke: nothing more goes up either.
                        if !ok {
                            break;
                        }
                    }
                }
            }
            up_done && down_done
        };
        if clean {
            // Both directions ended cleanly: the guest removed the stream itself.
            stream.done = true;
        }
        // Otherwise dropping the stream cancels it in the guest.
    }
}
