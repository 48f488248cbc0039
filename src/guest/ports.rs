//! Port streams: the host asks for a TCP port on the guest's loopback and the guest relays bytes
//! between that connection and the channel, both ways, under flow control. This is how a
//! sandbox's ports are reached from outside (through the agent and the server) without any
//! network route into or out of the VM: it works for sandboxes without a network device too.
//!
//! Two threads per stream: one reads the connection and sends `PortData` as the host's credit
//! allows (a host that stops granting leaves the bytes in the socket, so the peer slows down);
//! one writes the host's `PortData` to the connection and grants the host more as it goes. An
//! empty `PortData` is a half close in its direction; the stream is over once both directions
//! ended, or the host cancels it.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::flow::Flow;
use super::{Guest, StreamEntry};
use crate::proto::guest::{CHUNK, Credit, ErrorMsg, Frame, FrameKind, PortOpen, WINDOW, Windowed};

/// How long connecting to a port inside the guest may take (loopback: at once, or refused).
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// What the reader thread needs to reach a running port stream.
pub(crate) struct PortHandle {
    /// Credit for bytes going to the host.
    flow: Flow,
    /// Bytes from the host, for the writing thread; None once it ended.
    data: Mutex<Option<Sender<Vec<u8>>>>,
    /// The connection, to shut it down on cancel.
    conn: Mutex<Option<TcpStream>>,
    cancelled: AtomicBool,
    /// Directions that ended (1 = to the host, 2 = from the host); the stream is removed at 3.
    ended: AtomicU8,
}

impl PortHandle {
    pub(crate) fn data(&self, bytes: Vec<u8>) {
        if let Some(tx) = self.data.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(bytes);
        }
    }

    pub(crate) fn grant(&self, bytes: u64) {
        self.flow.grant(bytes);
    }

    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.flow.close();
        self.data.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(c) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Ends direction `bit` of stream `id`; the last one removes the stream.
fn end(guest: &Guest, id: u64, h: &PortHandle, bit: u8) {
    if (h.ended.fetch_or(bit, Ordering::SeqCst) | bit) == 3 {
        guest.remove_stream(id);
    }
}

/// Connects to the port and starts relaying; answers `PortOpened` (then credit) or `PortClosed`.
pub(crate) fn start(guest: Arc<Guest>, id: u64, req: Windowed<PortOpen>) {
    let handle = Arc::new(PortHandle {
        flow: Flow::new(req.window),
        data: Mutex::new(None),
        conn: Mutex::new(None),
        cancelled: AtomicBool::new(false),
        ended: AtomicU8::new(0),
    });
    // Registered before the connect, so a cancel that comes meanwhile is not lost.
    guest.insert_stream(id, StreamEntry::Port(handle.clone()));
    let port = req.request.port;
    let spawned = std::thread::Builder::new()
        .name(format!("port-{port}"))
        .spawn(move || run(guest, id, port, handle));
    if let Err(e) = spawned {
        eprintln!("port stream: cannot spawn a thread: {e}");
    }
}

fn run(guest: Arc<Guest>, id: u64, port: u16, handle: Arc<PortHandle>) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let conn = match TcpStream::connect_timeout(&addr, CONNECT_WAIT) {
        Ok(c) => c,
        Err(e) => {
            guest.remove_stream(id);
            let message = match e.kind() {
                ErrorKind::ConnectionRefused => format!("nothing listens on port {port}"),
                _ => format!("cannot connect to port {port}: {e}"),
            };
            guest.send(Frame::json(
                FrameKind::PortClosed,
                id,
                &ErrorMsg {
                    message,
                    code: None,
                },
            ));
            return;
        }
    };
    let _ = conn.set_nodelay(true);
    let (tx, rx) = channel::<Vec<u8>>();
    let (writer, reader) = match (conn.try_clone(), conn.try_clone()) {
        (Ok(w), Ok(r)) => (w, r),
        _ => {
            guest.remove_stream(id);
            guest.send(Frame::json(
                FrameKind::Error,
                id,
                &ErrorMsg {
                    message: "cannot share the connection between threads".into(),
                    code: None,
                },
            ));
            return;
        }
    };
    *handle.data.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    *handle.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
    if handle.cancelled.load(Ordering::SeqCst) {
        // Cancelled while connecting: end what was just set up.
        handle.cancel();
    }
    guest.send(Frame::new(FrameKind::PortOpened, id, Vec::new()));
    guest.send(Frame::json(
        FrameKind::Credit,
        id,
        &Credit { bytes: WINDOW },
    ));
    let (g, h) = (guest.clone(), handle.clone());
    let spawned = std::thread::Builder::new()
        .name("port-in".into())
        .spawn(move || from_host(g, id, h, writer, rx));
    if spawned.is_err() {
        handle.cancel();
    }
    to_host(guest, id, handle, reader);
}

/// The connection → the host, within the host's credit.
fn to_host(guest: Arc<Guest>, id: u64, handle: Arc<PortHandle>, mut conn: TcpStream) {
    let mut buf = vec![0u8; CHUNK];
    while let Some(n) = handle.flow.take(CHUNK) {
        match conn.read(&mut buf[..n]) {
            Ok(0) => break,
            Ok(got) => {
                handle.flow.give_back(n - got);
                guest.send(Frame::new(FrameKind::PortData, id, buf[..got].to_vec()));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => handle.flow.give_back(n),
            Err(_) => break,
        }
    }
    // End of this direction (the peer closed, or a reset): the host half-closes its client.
    guest.send(Frame::new(FrameKind::PortData, id, Vec::new()));
    end(&guest, id, &handle, 1);
}

/// The host's bytes → the connection; each chunk written is granted back to the host.
fn from_host(
    guest: Arc<Guest>,
    id: u64,
    handle: Arc<PortHandle>,
    mut conn: TcpStream,
    rx: Receiver<Vec<u8>>,
) {
    while let Ok(bytes) = rx.recv() {
        if bytes.is_empty() {
            break;
        }
        if conn.write_all(&bytes).is_err() {
            // The peer is gone: nothing more will be read either.
            handle.cancel();
            break;
        }
        guest.send(Frame::json(
            FrameKind::Credit,
            id,
            &Credit {
                bytes: bytes.len() as u64,
            },
        ));
    }
    let _ = conn.shutdown(Shutdown::Write);
    handle.data.lock().unwrap_or_else(|p| p.into_inner()).take();
    end(&guest, id, &handle, 2);
}
