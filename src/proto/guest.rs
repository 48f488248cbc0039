//! The host ↔ guest channel: one multiplexed, binary-safe byte stream over virtio-serial.
//!
//! Every message is a [`Frame`]:
//!
//! ```text
//! offset size
//!      0    4  magic "SBXg"
//!      4    1  kind (FrameKind)
//!      5    1  flags (reserved, 0)
//!      6    2  reserved, 0
//!      8    8  stream id, little endian (0 = the connection itself)
//!     16    4  payload length, little endian (≤ MAX_PAYLOAD)
//!     20    4  header check: FNV-1a 32 of bytes 0..20
//!     24    n  payload
//! ```
//!
//! Control messages carry JSON payloads (the structs below); data messages (`Stdin`, `Stdout`,
//! `Stderr`, `FileData`) carry raw bytes, so non-UTF-8 output crosses unchanged. The magic plus the
//! header check let a reader resynchronise after garbage: [`FrameDecoder`] skips bytes until a
//! header checks out.
//!
//! Streams are multiplexed by id, and data is flow-controlled per stream so that one slow reader
//! never stalls the channel or piles up memory on either side: a sender of data frames may have at
//! most the bytes the receiver granted in flight. The host grants its initial window in the
//! request (`window` in [`ExecStart`] and the reading [`FileRequest`]s) and more with [`Credit`]
//! frames as its consumer takes the data; the guest grants the host's stdin and upload bytes with
//! `Credit` frames only (its first one doubles as "ready": the process started, the upload's
//! temporary file is open). Empty data frames (end of stdin, end of a file) need no credit.
//!
//! virtio-serial delivers guest writes made while no host is connected to the *next* host
//! connection, so a host opens every connection with [`Hello`] carrying a fresh nonce and drops
//! everything until the matching [`HelloAck`]. Request ids are chosen by the host and never reused
//! within a host process, so late replies to a previous connection's requests are recognisably stale.
//!
//! Serde and std only: no tokio in here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Bumped when a frame kind or payload changes incompatibly.
pub const PROTOCOL_VERSION: u32 = 2;
pub const MAGIC: [u8; 4] = *b"SBXg";
pub const HEADER_LEN: usize = 24;
/// Largest payload a peer may send; bigger lengths are treated as garbage.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Size of the data chunks either side sends (stdout, stderr, stdin, file data).
pub const CHUNK: usize = 64 * 1024;
/// The flow-control window both sides use per stream: bytes of data in flight before the
/// receiver grants more. At least a few chunks, so stdout and stderr can share it.
pub const WINDOW: u64 = 1024 * 1024;

/// What a frame is. Values are stable on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// host → guest, id 0, [`Hello`].
    Hello = 0x01,
    /// guest → host, id 0, [`HelloAck`].
    HelloAck = 0x02,
    /// host → guest, [`Init`]: the sandbox's identity. Also sent after a snapshot restore.
    Init = 0x03,
    /// guest → host, [`InitAck`].
    InitAck = 0x04,
    /// host → guest, [`Ping`]; guest → host `Pong` with the same payload.
    Ping = 0x05,
    Pong = 0x06,
    /// both ways, [`Credit`]: the receiver of a stream's data lets the sender send this many more
    /// bytes.
    Credit = 0x07,
    /// host → guest, no payload: abandon the stream (kill an exec's process group, abort a file
    /// transfer and remove its temporary file). No answer.
    Cancel = 0x08,

    /// host → guest, [`ExecStart`]: starts a process under this stream id.
    ExecStart = 0x10,
    /// guest → host, [`ExecStarted`].
    ExecStarted = 0x11,
    /// host → guest, raw bytes for the process's stdin; an empty payload closes it.
    Stdin = 0x12,
    /// guest → host, raw bytes.
    Stdout = 0x13,
    /// guest → host, raw bytes.
    Stderr = 0x14,
    /// host → guest, [`Signal`]: delivered to the process group.
    Signal = 0x15,
    /// host → guest, [`Resize`]: the PTY's new size.
    Resize = 0x16,
    /// guest → host, [`Exit`]: the last frame of an exec stream.
    Exit = 0x17,

    /// host → guest, [`FileRequest`] (read, write, list, stat, mkdir, remove).
    FileRequest = 0x20,
    /// both ways: raw bytes of a file being read or written (or of a directory listing); an
    /// empty payload ends the data.
    FileData = 0x21,
    /// guest → host, [`FileResult`]: the request succeeded. For `Read` and `List` it comes first
    /// and the data follows; for the others it is the last frame.
    FileResult = 0x22,

    /// host → guest, no payload: how much memory and disk the guest uses.
    StatsRequest = 0x40,
    /// guest → host, [`GuestStats`]: the answer, the last frame of its stream.
    Stats = 0x41,
    /// host → guest, `Windowed<`[`PortOpen`]`>`: connect to a TCP port on the guest's loopback
    /// and relay bytes both ways under this stream id.
    PortOpen = 0x30,
    /// guest → host, no payload: the connection is up; the guest's first [`Credit`] follows
    /// (the host's bytes wait for it).
    PortOpened = 0x31,
    /// both ways: raw bytes of a port stream; an empty payload ends that direction (a half
    /// close). The stream is over once both directions ended (or on `Cancel`, or an `Error`).
    PortData = 0x32,
    /// guest → host, [`ErrorMsg`]: nothing listens on the port (the connection was refused).
    /// The last frame of its stream.
    PortClosed = 0x33,

    /// guest → host, [`ErrorMsg`]: the request under this id failed (or, with id 0, the frame
    /// could not be understood). Always the last frame of its stream.
    Error = 0x7f,
}

impl FrameKind {
    pub fn from_u8(v: u8) -> Option<FrameKind> {
        use FrameKind::*;
        Some(match v {
            0x01 => Hello,
            0x02 => HelloAck,
            0x03 => Init,
            0x04 => InitAck,
            0x05 => Ping,
            0x06 => Pong,
            0x07 => Credit,
            0x08 => Cancel,
            0x10 => ExecStart,
            0x11 => ExecStarted,
            0x12 => Stdin,
            0x13 => Stdout,
            0x14 => Stderr,
            0x15 => Signal,
            0x16 => Resize,
            0x17 => Exit,
            0x20 => FileRequest,
            0x21 => FileData,
            0x22 => FileResult,
            0x40 => StatsRequest,
            0x41 => Stats,
            0x30 => PortOpen,
            0x31 => PortOpened,
            0x32 => PortData,
            0x33 => PortClosed,
            0x7f => Error,
            _ => return None,
        })
    }
}

/// One message on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub id: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD} byte limit")]
    TooLarge(usize),
    #[error("bad {kind:?} payload: {source}")]
    Payload {
        kind: FrameKind,
        source: serde_json::Error,
    },
}

impl Frame {
    pub fn new(kind: FrameKind, id: u64, payload: Vec<u8>) -> Frame {
        Frame { kind, id, payload }
    }

    /// A frame whose payload is `msg` as JSON.
    pub fn json<T: Serialize>(kind: FrameKind, id: u64, msg: &T) -> Frame {
        // Serialising these plain structs cannot fail.
        let payload = serde_json::to_vec(msg).unwrap_or_default();
        Frame { kind, id, payload }
    }

    /// The payload read as JSON.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        serde_json::from_slice(&self.payload).map_err(|source| FrameError::Payload {
            kind: self.kind,
            source,
        })
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(self.payload.len()));
        }
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&MAGIC);
        header[4] = self.kind as u8;
        header[8..16].copy_from_slice(&self.id.to_le_bytes());
        header[16..20].copy_from_slice(&(self.payload.len() as u32).to_le_bytes());
        let check = fnv1a(&header[0..20]);
        header[20..24].copy_from_slice(&check.to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.payload);
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Turns a byte stream into frames, skipping garbage, in time linear in the bytes pushed: the
/// search for a header resumes where it stopped and never looks at a byte twice (but for a
/// partial header at the end of a push, looked at again after the next one, and the 24 bytes
/// of each candidate header), and consumed bytes are dropped only once they are half the buffer. A header's length is
/// checked against [`MAX_PAYLOAD`] before anything waits for the payload, so the buffer never
/// holds more than one frame plus the caller's last push.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Where the unread bytes start in `buf`.
    pos: usize,
    /// Bytes thrown away while looking for a frame header.
    pub skipped: u64,
    /// Bytes looked at to find and check headers: the decoder's work, for tests.
    pub scanned: u64,
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Forgets any partial frame (e.g. when the peer reconnects).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }

    /// Bytes held: at most one frame plus the last push.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn skip(&mut self, n: usize) {
        self.pos += n;
        self.skipped += n as u64;
    }

    /// The next complete frame, if the buffer holds one.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            // Find the magic: its first byte, then the other three.
            let rest = &self.buf[self.pos..];
            let mut found = None;
            let mut i = 0;
            while let Some(off) = rest[i..].iter().position(|b| *b == MAGIC[0]) {
                let at = i + off;
                let have = (rest.len() - at).min(MAGIC.len());
                if rest[at..at + have] == MAGIC[..have] {
                    found = Some(at);
                    break;
                }
                i = at + 1;
            }
            let Some(start) = found else {
                // No magic, nor the start of one at the end: all garbage.
                self.scanned += rest.len() as u64;
                let n = rest.len();
                self.skip(n);
                return None;
            };
            self.scanned += (start + MAGIC.len()) as u64;
            self.skip(start);
            let rest = &self.buf[self.pos..];
            if rest.len() < HEADER_LEN {
                // A partial magic or header: looked at again (≤ 23 bytes) after the next push.
                return None;
            }
            let h = &rest[..HEADER_LEN];
            self.scanned += HEADER_LEN as u64;
            let check = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
            let len = u32::from_le_bytes([h[16], h[17], h[18], h[19]]) as usize;
            let kind = FrameKind::from_u8(h[4]);
            let valid = check == fnv1a(&h[0..20]) && len <= MAX_PAYLOAD && kind.is_some();
            let Some(kind) = kind.filter(|_| valid) else {
                // Not a real header: skip the magic's first byte and look on from there.
                self.skip(1);
                continue;
            };
            if rest.len() < HEADER_LEN + len {
                // The header is checked again (24 bytes) after the next push.
                return None;
            }
            let id = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
            let payload = rest[HEADER_LEN..HEADER_LEN + len].to_vec();
            self.pos += HEADER_LEN + len;
            return Some(Frame { kind, id, payload });
        }
    }
}

// ---- payloads ----

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    /// Fresh per connection attempt, never 0; echoed in [`HelloAck`]. Receiving a Hello ends the
    /// guest's running streams (they belonged to a previous connection).
    pub nonce: u64,
    pub protocol: u32,
}

/// The answer to [`Hello`]. The guest program also sends one unasked, with nonce 0, when it
/// starts: a host connected at that moment learns that its requests in flight are lost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HelloAck {
    /// The Hello's nonce; 0 when unasked. A host never uses 0.
    pub nonce: u64,
    pub protocol: u32,
    /// The guest program's version (the crate version).
    pub version: String,
    /// The sandbox id given by the last [`Init`], if any.
    pub sandbox_id: Option<String>,
    /// Milliseconds since the guest kernel booted.
    pub uptime_ms: u64,
    /// Execs still running in the guest.
    pub running: u32,
}

/// The sandbox's identity and clock; sent after boot and after every snapshot restore.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Init {
    pub sandbox_id: String,
    /// Environment every exec starts with (before the exec's own variables).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Wall-clock time to set, in milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// Random bytes to mix into the guest's entropy pool.
    #[serde(default)]
    pub entropy: Vec<u8>,
    /// Hostname to set; the sandbox id when absent.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The token the in-guest envd requires (`X-Access-Token`, file URL signatures); None:
    /// envd asks for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InitAck {
    /// The guest's clock before it was set (ms since the epoch), to log the skew.
    pub previous_time_unix_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ping {
    pub token: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credit {
    pub bytes: u64,
}

/// The terminal size of a PTY: the same on the API and on the guest channel.
pub use super::api::PtySize;

/// Starts a process. It runs directly (looked up in PATH), not through a shell.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecStart {
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Added to the sandbox's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// The guest kills the process group after this long and reports exit code 124.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// True: the host will send `Stdin` frames (the last one empty), after the guest's first
    /// [`Credit`]. False: stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// Run on a PTY of this size: stdin, stdout and stderr are the terminal, whose output comes
    /// as `Stdout`; an empty `Stdin` frame types the EOF character (^D); signals go to the
    /// terminal's foreground process group.
    #[serde(default)]
    pub pty: Option<PtySize>,
}

/// A request with the host's initial flow-control window: the `ExecStart` frame's payload is a
/// `Windowed<ExecStart>` (the request's fields plus `window`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Windowed<T> {
    #[serde(flatten)]
    pub request: T,
    /// Bytes of data the guest may send before the host grants more with [`Credit`]; 0 (or
    /// absent) means no limit.
    #[serde(default)]
    pub window: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecStarted {
    pub pid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Signal {
    /// A signal number (9 = SIGKILL, 15 = SIGTERM, …).
    pub signal: i32,
}

pub type Resize = PtySize;

/// How an exec ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exit {
    /// The exit status; 128+N when killed by signal N; 124 on timeout; 127 when the command was
    /// not found, 126 when it could not be started.
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
}

pub use crate::proto::api::{FileEntry, FileKind};
use crate::proto::path::SandboxPath;

/// File operations on plain absolute paths ([`SandboxPath`]; [`FileRequest::validate`] adds
/// what depends on the operation). Data moves in
/// [`FileData`](FrameKind::FileData) chunks under the flow control described above.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FileRequest {
    /// → `FileResult` (the file's entry and length), `FileData`…, empty `FileData`. Regular
    /// files and character devices only.
    Read {
        path: SandboxPath,
        #[serde(default)]
        window: u64,
    },
    /// → `Credit` (ready), then the host sends `FileData`… and an empty `FileData`; → `FileResult`
    /// once the data is in place. The guest writes a temporary file in the same directory and
    /// renames it over `path` only at the end: a cancelled upload leaves nothing. The parent
    /// directory must exist. Without `mode`, a replaced file keeps its mode; a new one gets 0644.
    Write {
        path: SandboxPath,
        #[serde(default)]
        mode: Option<u32>,
    },
    /// → `FileResult` (the directory's entry), `FileData`… carrying the JSON of a
    /// [`FileListResponse`](crate::proto::api::FileListResponse), empty `FileData`.
    List {
        path: SandboxPath,
        #[serde(default)]
        window: u64,
    },
    /// → `FileResult` (lstat: a symlink is described, not followed).
    Stat { path: SandboxPath },
    /// → `FileResult`. With `parents`, missing parents are made and an existing directory is fine.
    Mkdir {
        path: SandboxPath,
        #[serde(default)]
        parents: bool,
    },
    /// → `FileResult` without an entry. A directory needs `recursive` unless it is empty.
    Remove {
        path: SandboxPath,
        #[serde(default)]
        recursive: bool,
    },
}

/// Opens a TCP connection to `127.0.0.1:port` inside the guest (see [`FrameKind::PortOpen`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortOpen {
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileResult {
    #[serde(default)]
    pub entry: Option<FileEntry>,
    /// `Read`: the exact number of bytes that will follow, when known (regular files outside
    /// /proc and /sys).
    #[serde(default)]
    pub length: Option<u64>,
}

/// The guest's memory (`/proc/meminfo`) and root filesystem (`statvfs("/")`), in bytes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuestStats {
    pub mem_total: u64,
    /// `MemTotal - MemAvailable`.
    pub mem_used: u64,
    /// Page cache and buffers (`Cached + Buffers`).
    pub mem_cache: u64,
    pub disk_total: u64,
    pub disk_used: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorMsg {
    pub message: String,
    /// Why a file operation failed; None for other requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<FileErrorCode>,
}

/// Why a file operation failed, as the guest reports it to the agent and the agent to the
/// server. The names on the wire are the snake_case ones (`file_not_found`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileErrorCode {
    FileNotFound,
    IsADirectory,
    NotADirectory,
    Exists,
    NotEmpty,
    PermissionDenied,
    InvalidPath,
    /// Reading something that is neither a regular file nor a character device.
    NotAFile,
    NoSpace,
    /// A directory listing over [`MAX_LISTING_BYTES`](crate::proto::agent::MAX_LISTING_BYTES)
    /// (the agent's, never the guest's).
    TooLarge,
    /// Any other failure; also what a code this version does not know reads as.
    #[serde(other)]
    IoError,
}

impl FileErrorCode {
    pub const ALL: [FileErrorCode; 11] = [
        FileErrorCode::FileNotFound,
        FileErrorCode::IsADirectory,
        FileErrorCode::NotADirectory,
        FileErrorCode::Exists,
        FileErrorCode::NotEmpty,
        FileErrorCode::PermissionDenied,
        FileErrorCode::InvalidPath,
        FileErrorCode::NotAFile,
        FileErrorCode::NoSpace,
        FileErrorCode::IoError,
        FileErrorCode::TooLarge,
    ];

    /// The name on the guest channel.
    pub fn as_str(self) -> &'static str {
        match self {
            FileErrorCode::FileNotFound => "file_not_found",
            FileErrorCode::IsADirectory => "is_a_directory",
            FileErrorCode::NotADirectory => "not_a_directory",
            FileErrorCode::Exists => "exists",
            FileErrorCode::NotEmpty => "not_empty",
            FileErrorCode::PermissionDenied => "permission_denied",
            FileErrorCode::InvalidPath => "invalid_path",
            FileErrorCode::NotAFile => "not_a_file",
            FileErrorCode::NoSpace => "no_space",
            FileErrorCode::IoError => "io_error",
            FileErrorCode::TooLarge => "too_large",
        }
    }

    /// The code of an agent's error answer: the name, but `payload_too_large` for
    /// [`TooLarge`](FileErrorCode::TooLarge) (the code every 413 carries).
    pub fn http_code(self) -> &'static str {
        match self {
            FileErrorCode::TooLarge => "payload_too_large",
            c => c.as_str(),
        }
    }

    /// The HTTP status of an agent's error answer with this code. `InvalidPath` is a 400 that
    /// the agent answers as a refused `path` field.
    pub fn http_status(self) -> u16 {
        match self {
            FileErrorCode::FileNotFound => 404,
            FileErrorCode::IsADirectory
            | FileErrorCode::NotADirectory
            | FileErrorCode::Exists
            | FileErrorCode::NotEmpty
            | FileErrorCode::NotAFile => 409,
            FileErrorCode::PermissionDenied => 403,
            FileErrorCode::InvalidPath => 400,
            FileErrorCode::TooLarge => 413,
            FileErrorCode::NoSpace => 507,
            FileErrorCode::IoError => 500,
        }
    }

    /// The code named `code` on the guest channel or in an agent's answer, if it is one.
    pub fn from_code(code: &str) -> Option<FileErrorCode> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == code || c.http_code() == code)
    }
}

impl std::fmt::Display for FileErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_binary_payload() {
        let f = Frame::new(
            FrameKind::Stdout,
            42,
            vec![0xff, 0x00, b'S', b'B', b'X', b'g', 0xfe],
        );
        let bytes = f.encode().unwrap();
        let mut d = FrameDecoder::new();
        d.push(&bytes);
        assert_eq!(d.next_frame(), Some(f));
        assert_eq!(d.next_frame(), None);
    }

    #[test]
    fn resynchronises_after_garbage_and_partial_frames() {
        let a = Frame::json(
            FrameKind::Hello,
            0,
            &Hello {
                nonce: 7,
                protocol: 1,
            },
        );
        let b = Frame::new(FrameKind::Stderr, 3, b"oops".to_vec());
        let mut stream = b"garbage SBXg SBX".to_vec();
        // A truncated frame (a previous connection's leftovers) before the good ones.
        let partial = b.encode().unwrap();
        stream.extend_from_slice(&partial[..HEADER_LEN - 3]);
        stream.extend_from_slice(&a.encode().unwrap());
        stream.extend_from_slice(&b.encode().unwrap());
        let mut d = FrameDecoder::new();
        // Feed byte by byte to exercise partial reads.
        let mut got = Vec::new();
        for byte in stream {
            d.push(&[byte]);
            while let Some(f) = d.next_frame() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![a, b]);
        assert!(d.skipped > 0);
    }

    #[test]
    fn rejects_oversized_lengths() {
        let mut bytes = Frame::new(FrameKind::Stdout, 1, vec![1, 2, 3])
            .encode()
            .unwrap();
        bytes[16..20].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        let good = Frame::new(FrameKind::Pong, 9, vec![]);
        bytes.extend_from_slice(&good.encode().unwrap());
        let mut d = FrameDecoder::new();
        d.push(&bytes);
        assert_eq!(d.next_frame(), Some(good));
    }

    /// A header that checks out, for any length (even one over the limit).
    fn raw_header(kind: u8, id: u64, len: u32) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = kind;
        h[8..16].copy_from_slice(&id.to_le_bytes());
        h[16..20].copy_from_slice(&len.to_le_bytes());
        let check = fnv1a(&h[0..20]);
        h[20..24].copy_from_slice(&check.to_le_bytes());
        h
    }

    /// Feeds `bytes` in `chunk`-sized pushes; returns the frames and the decoder.
    fn feed(bytes: &[u8], chunk: usize) -> (Vec<Frame>, FrameDecoder, usize) {
        let mut d = FrameDecoder::new();
        let (mut got, mut most) = (Vec::new(), 0);
        for c in bytes.chunks(chunk) {
            d.push(c);
            most = most.max(d.buffered());
            while let Some(f) = d.next_frame() {
                got.push(f);
            }
        }
        (got, d, most)
    }

    /// The worst garbage for a resynchronising reader: a magic at every 4th byte, none with a
    /// valid header. Work (bytes looked at) grows with the input, not its square, and the
    /// buffer never holds more than a push.
    #[test]
    fn resynchronises_in_linear_work() {
        let good = Frame::new(FrameKind::Stdout, 7, b"after the storm".to_vec());
        let work = |n: usize| {
            let mut bytes = MAGIC.repeat(n);
            bytes.extend_from_slice(&good.encode().unwrap());
            let pushes = bytes.len().div_ceil(4096) as u64;
            let (got, d, most) = feed(&bytes, 4096);
            assert_eq!(got, vec![good.clone()]);
            assert_eq!(d.skipped, (n * 4) as u64);
            assert!(most <= 4096 + HEADER_LEN, "buffered {most}");
            assert_eq!(d.buffered(), 0);
            // Each byte found once, each candidate header (one per 4 bytes) checked once, a
            // partial header at the end of a push looked at again.
            let bound = 8 * bytes.len() as u64 + HEADER_LEN as u64 * pushes;
            assert!(d.scanned <= bound, "{} > {bound}", d.scanned);
            d.scanned
        };
        let (small, big) = (work(256 * 1024), work(1024 * 1024));
        // Four times the garbage, four times the work (a quadratic reader would do 16 times).
        assert!(big <= small * 4 + 4096, "{small} → {big}");

        // Random-looking garbage, one byte at a time: still bounded per byte.
        let mut x = 0x9e37_79b9_u32;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let (got, d, most) = feed(&noise, 1);
        assert!(got.is_empty() && most <= HEADER_LEN);
        assert!(d.scanned <= 30 * noise.len() as u64, "{}", d.scanned);
    }

    /// A length over the limit is refused from the header alone: nothing waits for (or buffers)
    /// its payload. A length at the limit waits for exactly one frame.
    #[test]
    fn oversized_lengths_are_refused_before_buffering() {
        let good = Frame::new(FrameKind::Pong, 9, vec![]);
        let mut bytes = raw_header(FrameKind::Stdout as u8, 1, MAX_PAYLOAD as u32 + 1);
        bytes.extend_from_slice(&good.encode().unwrap());
        let (got, d, _) = feed(&bytes, 1);
        assert_eq!(got, vec![good]);
        assert_eq!(d.buffered(), 0);
        let mut bytes = raw_header(FrameKind::Stdout as u8, 1, u32::MAX);
        bytes.extend(std::iter::repeat_n(0u8, 3 * MAX_PAYLOAD));
        let (got, _, most) = feed(&bytes, 64 * 1024);
        assert!(got.is_empty());
        assert!(most <= 64 * 1024 + HEADER_LEN, "buffered {most}");

        let mut bytes = raw_header(FrameKind::Stdout as u8, 1, MAX_PAYLOAD as u32);
        bytes.extend(std::iter::repeat_n(1u8, MAX_PAYLOAD + 10));
        let (got, _, most) = feed(&bytes, 64 * 1024);
        assert_eq!(got.len(), 1);
        assert!(
            most <= HEADER_LEN + MAX_PAYLOAD + 64 * 1024,
            "buffered {most}"
        );
    }

    #[test]
    fn json_payloads_parse() {
        let e = ExecStart {
            cmd: "echo".into(),
            args: vec!["hi".into()],
            ..Default::default()
        };
        let f = Frame::json(FrameKind::ExecStart, 5, &e);
        assert_eq!(f.parse::<ExecStart>().unwrap(), e);
        let w = Windowed {
            request: e.clone(),
            window: WINDOW,
        };
        let f = Frame::json(FrameKind::ExecStart, 5, &w);
        assert_eq!(f.parse::<Windowed<ExecStart>>().unwrap(), w);
        // Without a window: no flow control.
        let f = Frame::json(FrameKind::ExecStart, 5, &e);
        assert_eq!(f.parse::<Windowed<ExecStart>>().unwrap().window, 0);
        let r = FileRequest::Read {
            path: SandboxPath::parse("/etc/hostname").unwrap(),
            window: WINDOW,
        };
        let f = Frame::json(FrameKind::FileRequest, 6, &r);
        assert_eq!(f.parse::<FileRequest>().unwrap(), r);
    }

    #[test]
    fn file_error_codes_keep_their_wire_names() {
        for c in FileErrorCode::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<FileErrorCode>(&json).unwrap(), c);
            assert_eq!(FileErrorCode::from_code(c.as_str()), Some(c));
            assert_eq!(FileErrorCode::from_code(c.http_code()), Some(c));
        }
        assert_eq!(FileErrorCode::from_code("nope"), None);
        let e: ErrorMsg = serde_json::from_str(r#"{"message":"m","code":"not_empty"}"#).unwrap();
        assert_eq!(e.code, Some(FileErrorCode::NotEmpty));
        // A code from a newer guest is an I/O error, not a broken frame.
        let e: ErrorMsg = serde_json::from_str(r#"{"message":"m","code":"brand_new"}"#).unwrap();
        assert_eq!(e.code, Some(FileErrorCode::IoError));
        let e = ErrorMsg {
            message: "m".into(),
            code: None,
        };
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"message":"m"}"#);
        assert_eq!(FileErrorCode::TooLarge.http_code(), "payload_too_large");
    }
}
