//! Directory watches on inotify: `WatchDir` streams the events; `CreateWatcher`,
//! `GetWatcherEvents` and `RemoveWatcher` keep them for a client that polls (the Python SDK's
//! synchronous `watch_dir`). Events name paths relative to the watched directory, the way
//! fsnotify reports them: create (or moved in), write, remove, rename (moved away), chmod.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;

use super::Envd;
use super::connect::{
    Code, RpcError, RpcResult, keepalive_interval, stream_error, stream_request, stream_response,
    unary_request, unary_response,
};
use super::resolve_required;
use crate::proto::envd::{
    CreateWatcherResponse, Empty, EventType, FilesystemEvent, GetWatcherEventsResponse,
    WatchDirResponse, WatchRequest, WatcherRequest,
};

/// Events a polled watcher keeps while nobody collects them.
const MAX_QUEUED: usize = 10_000;

const MASK: u32 = libc::IN_CREATE
    | libc::IN_MODIFY
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB;

/// One watch: a thread reading inotify, events queued for whoever collects them.
pub(crate) struct Watcher {
    queue: Mutex<Vec<FilesystemEvent>>,
    notify: Notify,
    stop: AtomicBool,
}

impl Watcher {
    fn drain(&self) -> Vec<FilesystemEvent> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Watchers made by `CreateWatcher`, by id.
#[derive(Default)]
pub(crate) struct Watchers {
    map: Mutex<HashMap<String, Arc<Watcher>>>,
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Watcher>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Inotify {
    fd: OwnedFd,
    /// Watch descriptor → directory relative to the root ("" for the root).
    dirs: HashMap<i32, PathBuf>,
    root: PathBuf,
    recursive: bool,
}

impl Inotify {
    fn add(&mut self, rel: &Path) -> std::io::Result<()> {
        let full = self.root.join(rel);
        let c = CString::new(full.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a valid descriptor and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), MASK) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.dirs.insert(wd, rel.to_path_buf());
        if self.recursive
            && let Ok(rd) = std::fs::read_dir(&full)
        {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = self.add(&rel.join(e.file_name()));
                }
            }
        }
        Ok(())
    }
}

/// Starts watching `root` (a directory).
fn start(root: PathBuf, recursive: bool) -> std::io::Result<Arc<Watcher>> {
    // SAFETY: plain syscall; the descriptor is owned right after.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: inotify_init1 returned a descriptor we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ino = Inotify {
        fd,
        dirs: HashMap::new(),
        root,
        recursive,
    };
    ino.add(Path::new(""))?;
    let watcher = Arc::new(Watcher {
        queue: Mutex::new(Vec::new()),
        notify: Notify::new(),
        stop: AtomicBool::new(false),
    });
    let w = watcher.clone();
    std::thread::Builder::new()
        .name("envd-watch".into())
        .spawn(move || read_loop(ino, &w))?;
    Ok(watcher)
}

fn read_loop(mut ino: Inotify, w: &Watcher) {
    let mut buf = vec![0u8; 64 * 1024];
    while !w.stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: ino.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, 200) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: reading into a buffer we own, within its length.
        let n = unsafe { libc::read(ino.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        let mut events = Vec::new();
        let mut off = 0usize;
        let header = std::mem::size_of::<libc::inotify_event>();
        while off + header <= n as usize {
            // SAFETY: the kernel wrote whole inotify_event records; read_unaligned copes with
            // the byte buffer's alignment.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
            let name_bytes = &buf[off + header..off + header + ev.len as usize];
            off += header + ev.len as usize;
            let name_end = name_bytes
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(name_bytes.len());
            let name = std::ffi::OsStr::from_bytes(&name_bytes[..name_end]);
            if ev.mask & libc::IN_IGNORED != 0 {
                ino.dirs.remove(&ev.wd);
                continue;
            }
            let Some(dir) = ino.dirs.get(&ev.wd).cloned() else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            let rel = dir.join(name);
            let kind = if ev.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
                EventType::Create
            } else if ev.mask & libc::IN_MODIFY != 0 {
                EventType::Write
            } else if ev.mask & libc::IN_DELETE != 0 {
                EventType::Remove
            } else if ev.mask & libc::IN_MOVED_FROM != 0 {
                EventType::Rename
            } else if ev.mask & libc::IN_ATTRIB != 0 {
                EventType::Chmod
            } else {
                continue;
            };
            if ino.recursive && kind == EventType::Create && ev.mask & libc::IN_ISDIR != 0 {
                let _ = ino.add(&rel);
            }
            events.push(FilesystemEvent {
                name: rel.to_string_lossy().into_owned(),
                kind,
            });
        }
        if !events.is_empty() {
            let mut q = w.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.extend(events);
            let over = q.len().saturating_sub(MAX_QUEUED);
            q.drain(..over);
            drop(q);
            w.notify.notify_one();
        }
    }
}

/// The directory a watch request names, checked.
fn watched_dir(envd: &Envd, headers: &HeaderMap, req: &WatchRequest) -> RpcResult<PathBuf> {
    let user = envd.user(headers)?;
    let dir = resolve_required(&user, &req.path, "path")?;
    let shown = dir.display().to_string();
    let meta = std::fs::metadata(&dir).map_err(|e| RpcError::io(&e, &shown))?;
    if !meta.is_dir() {
        return Err(RpcError::invalid(format!("{shown} is not a directory")));
    }
    Ok(dir)
}

/// `WatchDir`: `start`, then the events as they happen, keepalives while idle.
pub(super) async fn watch_dir(envd: Arc<Envd>, headers: HeaderMap, body: Body) -> Response {
    let req = match stream_request::<WatchRequest>(&headers, body).await {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    let watcher = match watched_dir(&envd, &headers, &req)
        .and_then(|dir| start(dir, req.recursive).map_err(|e| RpcError::io(&e, &req.path)))
    {
        Ok(w) => w,
        Err(e) => return stream_error(e),
    };
    let keepalive = keepalive_interval(&headers);
    let (tx, response) = stream_response();
    tokio::spawn(async move {
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        if tx.send(&WatchDirResponse::Start {}).await {
            loop {
                tokio::select! {
                    () = watcher.notify.notified() => {
                        let mut gone = false;
                        for ev in watcher.drain() {
                            if !tx.send(&WatchDirResponse::Filesystem(ev)).await {
                                gone = true;
                                break;
                            }
                        }
                        if gone {
                            break;
                        }
                    }
                    _ = ticks.tick() => {
                        if !tx.send(&WatchDirResponse::Keepalive {}).await {
                            break;
                        }
                    }
                    () = tx.closed() => break,
                }
            }
        }
        watcher.stop();
    });
    response
}

/// The polled watchers' calls.
pub(super) async fn polling(
    envd: Arc<Envd>,
    method: &str,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match method {
        "CreateWatcher" => {
            let result = async {
                let req = unary_request::<WatchRequest>(&headers, body).await?;
                let dir = watched_dir(&envd, &headers, &req)?;
                let watcher = start(dir, req.recursive).map_err(|e| RpcError::io(&e, &req.path))?;
                let id = crate::crypto::random_token("w_");
                envd.watchers.lock().insert(id.clone(), watcher);
                Ok(CreateWatcherResponse { watcher_id: id })
            }
            .await;
            unary_response(result)
        }
        "GetWatcherEvents" => {
            let result = async {
                let req = unary_request::<WatcherRequest>(&headers, body).await?;
                let w = envd.watchers.lock().get(&req.watcher_id).cloned();
                let w = w.ok_or_else(|| {
                    RpcError::not_found(format!("watcher {:?} not found", req.watcher_id))
                })?;
                Ok(GetWatcherEventsResponse { events: w.drain() })
            }
            .await;
            unary_response(result)
        }
        "RemoveWatcher" => {
            let result = async {
                let req = unary_request::<WatcherRequest>(&headers, body).await?;
                let w = envd.watchers.lock().remove(&req.watcher_id);
                let w = w.ok_or_else(|| {
                    RpcError::not_found(format!("watcher {:?} not found", req.watcher_id))
                })?;
                w.stop();
                Ok(Empty {})
            }
            .await;
            unary_response(result)
        }
        other => RpcError::new(Code::Unimplemented, format!("no method {other}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn events_name_paths_below_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let w = start(tmp.path().to_path_buf(), true).unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        // The new directory is watched from the moment its create event is read.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while std::time::Instant::now() < deadline
            && !seen.iter().any(|e: &FilesystemEvent| e.name == "sub")
        {
            seen.extend(w.drain());
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::write(tmp.path().join("sub/f"), b"x").unwrap();
        std::fs::remove_file(tmp.path().join("sub/f")).unwrap();
        while std::time::Instant::now() < deadline
            && !seen
                .iter()
                .any(|e| e.name == "sub/f" && e.kind == EventType::Remove)
        {
            seen.extend(w.drain());
            std::thread::sleep(Duration::from_millis(20));
        }
        w.stop();
        let kinds: Vec<(String, EventType)> = seen.into_iter().map(|e| (e.name, e.kind)).collect();
        assert!(
            kinds.contains(&("sub".into(), EventType::Create)),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("sub/f".into(), EventType::Create)),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("sub/f".into(), EventType::Write)),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("sub/f".into(), EventType::Remove)),
            "{kinds:?}"
        );
    }
}
