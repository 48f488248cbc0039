//! File operations for the host: read, write, list, stat, mkdir, remove. Each runs on its own
//! thread; data moves in chunks under flow control, so neither side holds a whole file.
//!
//! Writes go to a temporary file (`.sbxtmp-<stream id>`) in the target's directory, renamed over
//! the target only when the host says the data is complete: a cancelled, broken or abandoned
//! upload leaves nothing behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::flow::Flow;
use super::{Guest, StreamEntry};
use crate::proto::api::FileListResponse;
use crate::proto::guest::{
    CHUNK, Credit, ErrorMsg, FileEntry, FileErrorCode, FileKind, FileRequest, FileResult, Frame,
    FrameKind, WINDOW,
};
use crate::proto::path::SandboxPath;

/// An upload that receives nothing for this long is abandoned (its host went away for good).
const UPLOAD_IDLE: Duration = Duration::from_secs(600);

/// Filesystems whose files report sizes that are not their content's length.
const PSEUDO_FS: [i64; 4] = [
    0x9fa0,      // proc
    0x6265_6572, // sysfs
    0x6367_7270, // cgroup2
    0x6462_6720, // debugfs
];

/// What the reader thread needs to reach a running file operation.
pub(crate) struct FileHandle {
    /// Credit for data going to the host (read, list).
    flow: Flow,
    /// Chunks of an upload, for the writing thread.
    data: Mutex<Option<Sender<Vec<u8>>>>,
    cancelled: AtomicBool,
}

impl FileHandle {
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
    }
}

/// Why an operation failed, in the codes the agent maps to HTTP statuses.
#[derive(Debug)]
struct FsError {
    code: FileErrorCode,
    message: String,
}

fn fs_error(code: FileErrorCode, message: impl Into<String>) -> FsError {
    FsError {
        code,
        message: message.into(),
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> FsError {
    use FileErrorCode::*;
    let code = match e.raw_os_error() {
        Some(libc::ENOENT) => FileNotFound,
        Some(libc::EISDIR) => IsADirectory,
        Some(libc::ENOTDIR) => NotADirectory,
        Some(libc::EEXIST) => Exists,
        Some(libc::ENOTEMPTY) => NotEmpty,
        Some(libc::EACCES | libc::EPERM | libc::EROFS | libc::ETXTBSY) => PermissionDenied,
        Some(libc::ENOSPC | libc::EDQUOT) => NoSpace,
        Some(libc::ENAMETOOLONG | libc::ELOOP | libc::EINVAL) => InvalidPath,
        _ => IoError,
    };
    fs_error(code, format!("{}: {e}", path.display()))
}

/// The path of a request the guest is willing to carry out: the same rules as the server's and
/// the agent's ([`FileRequest::validate`]), checked again because the guest trusts no host.
fn checked(req: &FileRequest) -> Result<&SandboxPath, FsError> {
    req.validate()
        .map_err(|e| fs_error(FileErrorCode::InvalidPath, e.to_string()))?;
    Ok(req.path())
}

fn unix_secs(md: &std::fs::Metadata) -> i64 {
    md.mtime()
}

/// What `lstat` says about `path`.
fn entry(path: &Path) -> Result<FileEntry, FsError> {
    let md = std::fs::symlink_metadata(path).map_err(|e| io_error(path, &e))?;
    let ft = md.file_type();
    let kind = if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    let link_target = if ft.is_symlink() {
        std::fs::read_link(path)
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    } else {
        None
    };
    Ok(FileEntry {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        path: path.to_string_lossy().into_owned(),
        kind,
        size: md.len(),
        mode: md.mode() & 0o7777,
        modified: unix_secs(&md),
        link_target,
    })
}

/// Registers the operation under `id` and starts it on its own thread.
pub(crate) fn start(guest: Arc<Guest>, id: u64, req: FileRequest) {
    let window = match &req {
        FileRequest::Read { window, .. } | FileRequest::List { window, .. } => *window,
        _ => 0,
    };
    let (data_tx, data_rx) = match &req {
        FileRequest::Write { .. } => {
            let (tx, rx) = mpsc::channel();
            (Some(tx), Some(rx))
        }
        _ => (None, None),
    };
    let handle = Arc::new(FileHandle {
        flow: Flow::new(window),
        data: Mutex::new(data_tx),
        cancelled: AtomicBool::new(false),
    });
    guest.insert_stream(id, StreamEntry::File(handle.clone()));
    let g = guest.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("file-{id}"))
        .spawn(move || {
            let result = run(&g, id, &handle, req, data_rx);
            g.remove_stream(id);
            if let Err(e) = result
                && !handle.cancelled.load(Ordering::SeqCst)
            {
                send_error(&g, id, e);
            }
        });
    if let Err(e) = spawned {
        guest.remove_stream(id);
        send_error(
            &guest,
            id,
            fs_error(FileErrorCode::IoError, format!("no thread: {e}")),
        );
    }
}

fn send_error(guest: &Guest, id: u64, e: FsError) {
    guest.send(Frame::json(
        FrameKind::Error,
        id,
        &ErrorMsg {
            message: e.message,
            code: Some(e.code),
        },
    ));
}

fn send_result(guest: &Guest, id: u64, entry: Option<FileEntry>, length: Option<u64>) {
    guest.send(Frame::json(
        FrameKind::FileResult,
        id,
        &FileResult { entry, length },
    ));
}

fn run(
    guest: &Guest,
    id: u64,
    handle: &FileHandle,
    req: FileRequest,
    data: Option<Receiver<Vec<u8>>>,
) -> Result<(), FsError> {
    let p = Path::new(checked(&req)?.as_str()).to_path_buf();
    match req {
        FileRequest::Stat { .. } => {
            let e = entry(&p)?;
            send_result(guest, id, Some(e), None);
        }
        FileRequest::Mkdir { parents, .. } => {
            let made = if parents {
                std::fs::create_dir_all(&p)
            } else {
                std::fs::create_dir(&p)
            };
            made.map_err(|e| io_error(&p, &e))?;
            send_result(guest, id, Some(entry(&p)?), None);
        }
        FileRequest::Remove { recursive, .. } => {
            let md = std::fs::symlink_metadata(&p).map_err(|e| io_error(&p, &e))?;
            let removed = if md.is_dir() && recursive {
                std::fs::remove_dir_all(&p)
            } else if md.is_dir() {
                std::fs::remove_dir(&p)
            } else {
                std::fs::remove_file(&p)
            };
            removed.map_err(|e| io_error(&p, &e))?;
            send_result(guest, id, None, None);
        }
        FileRequest::List { .. } => {
            let dir = entry(&p)?;
            let mut entries = Vec::new();
            for e in std::fs::read_dir(&p).map_err(|e| io_error(&p, &e))? {
                let e = e.map_err(|e| io_error(&p, &e))?;
                // An entry removed meanwhile is simply not listed.
                if let Ok(fe) = entry(&e.path()) {
                    entries.push(fe);
                }
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            let listing = serde_json::to_vec(&FileListResponse {
                path: p.to_string_lossy().into_owned(),
                entries,
            })
            .map_err(|e| fs_error(FileErrorCode::IoError, e.to_string()))?;
            send_result(guest, id, Some(dir), Some(listing.len() as u64));
            send_data(
                guest,
                id,
                handle,
                &mut &listing[..],
                Some(listing.len() as u64),
            )?;
        }
        FileRequest::Read { .. } => {
            // Non-blocking open: a FIFO without a writer must not hang the thread.
            let mut f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&p)
                .map_err(|e| io_error(&p, &e))?;
            let md = f.metadata().map_err(|e| io_error(&p, &e))?;
            let ft = md.file_type();
            if ft.is_dir() {
                return Err(fs_error(
                    FileErrorCode::IsADirectory,
                    format!("{}: Is a directory", p.display()),
                ));
            }
            if !ft.is_file() && !ft.is_char_device() {
                return Err(fs_error(
                    FileErrorCode::NotAFile,
                    format!("{}: not a regular file", p.display()),
                ));
            }
            // SAFETY: fcntl on a descriptor we own: back to blocking reads.
            unsafe {
                let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
            let length = (ft.is_file() && md.len() > 0 && !on_pseudo_fs(&f)).then_some(md.len());
            let mut e = entry(&p)?;
            // Describe what is read (the target, when `path` is a symlink).
            e.size = md.len();
            e.kind = if ft.is_file() {
                FileKind::File
            } else {
                FileKind::Other
            };
            send_result(guest, id, Some(e), length);
            send_data(guest, id, handle, &mut f, length)?;
        }
        FileRequest::Write { mode, .. } => {
            let rx = data.ok_or_else(|| fs_error(FileErrorCode::IoError, "no data channel"))?;
            write(guest, id, handle, &p, mode, rx)?;
        }
    }
    Ok(())
}

fn on_pseudo_fs(f: &File) -> bool {
    // SAFETY: fstatfs fills a zeroed statfs for a descriptor we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::fstatfs(f.as_raw_fd(), &mut st) == 0 && PSEUDO_FS.contains(&(st.f_type as i64))
    }
}

/// Sends `src` as FileData chunks under the host's credit, then the empty end frame. With
/// `length`, exactly that many bytes (a file that shrank meanwhile is an error).
fn send_data(
    guest: &Guest,
    id: u64,
    handle: &FileHandle,
    src: &mut dyn Read,
    length: Option<u64>,
) -> Result<(), FsError> {
    let mut buf = vec![0u8; CHUNK];
    let mut left = length;
    loop {
        if left == Some(0) {
            break;
        }
        let Some(mut want) = handle.flow.take(CHUNK) else {
            // Cancelled: the host no longer listens.
            return Ok(());
        };
        if let Some(l) = left {
            want = want.min(l as usize);
        }
        let n = loop {
            match src.read(&mut buf[..want]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(fs_error(FileErrorCode::IoError, format!("read: {e}")));
                }
                Ok(n) => break n,
            }
        };
        handle.flow.give_back(want - n);
        if n == 0 {
            if left.is_some() {
                return Err(fs_error(
                    FileErrorCode::IoError,
                    "the file shrank while being read",
                ));
            }
            break;
        }
        if let Some(l) = left.as_mut() {
            *l -= n as u64;
        }
        guest.send(Frame::new(FrameKind::FileData, id, buf[..n].to_vec()));
    }
    guest.send(Frame::new(FrameKind::FileData, id, Vec::new()));
    Ok(())
}

fn write(
    guest: &Guest,
    id: u64,
    handle: &FileHandle,
    path: &Path,
    mode: Option<u32>,
    rx: Receiver<Vec<u8>>,
) -> Result<(), FsError> {
    let (Some(parent), Some(_)) = (path.parent(), path.file_name()) else {
        return Err(fs_error(FileErrorCode::IsADirectory, "/ is a directory"));
    };
    let keep_mode = match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => {
            return Err(fs_error(
                FileErrorCode::IsADirectory,
                format!("{}: Is a directory", path.display()),
            ));
        }
        // A symlink is replaced by the file; its target's mode is the one worth keeping.
        Ok(md) if md.file_type().is_symlink() => std::fs::metadata(path)
            .ok()
            .filter(|t| t.is_file())
            .map(|t| t.mode() & 0o7777),
        Ok(md) => Some(md.mode() & 0o7777),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(path, &e)),
    };
    match std::fs::metadata(parent) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(fs_error(
                FileErrorCode::NotADirectory,
                format!("{}: Not a directory", parent.display()),
            ));
        }
        Err(e) => return Err(io_error(parent, &e)),
    }
    let mode = mode.or(keep_mode).unwrap_or(0o644) & 0o7777;
    let tmp = parent.join(format!(".sbxtmp-{id:016x}"));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_error(path, &e))?;
    let result = receive(guest, id, handle, file, &rx, path).and_then(|()| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io_error(path, &e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_error(path, &e))
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    send_result(guest, id, Some(entry(path)?), None);
    Ok(())
}

/// Writes the upload's chunks into `file` until the empty end chunk.
fn receive(
    guest: &Guest,
    id: u64,
    handle: &FileHandle,
    mut file: File,
    rx: &Receiver<Vec<u8>>,
    path: &Path,
) -> Result<(), FsError> {
    // The first grant says "ready".
    guest.send(Frame::json(
        FrameKind::Credit,
        id,
        &Credit { bytes: WINDOW },
    ));
    let mut owed = 0u64;
    loop {
        if handle.cancelled.load(Ordering::SeqCst) {
            return Err(fs_error(FileErrorCode::IoError, "cancelled"));
        }
        match rx.recv_timeout(UPLOAD_IDLE) {
            Ok(chunk) if chunk.is_empty() => break,
            Ok(chunk) => {
                file.write_all(&chunk).map_err(|e| io_error(path, &e))?;
                owed += chunk.len() as u64;
                if owed >= WINDOW / 8 {
                    guest.send(Frame::json(FrameKind::Credit, id, &Credit { bytes: owed }));
                    owed = 0;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(fs_error(FileErrorCode::IoError, "the upload stalled"));
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(fs_error(FileErrorCode::IoError, "cancelled"));
            }
        }
    }
    file.flush().map_err(|e| io_error(path, &e))?;
    Ok(())
}
