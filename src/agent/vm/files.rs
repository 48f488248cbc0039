//! A VM's files over the guest channel: read and write streamed in chunks under flow control
//! (the agent holds at most a window of a file), list, stat, mkdir, remove. Every wait on the
//! guest runs under the channel's ping guard (`GuestChannel::guarded`), as
//! exec's does: a guest that stops answering pings fails the call within seconds (504
//! `guest_unresponsive`), one that answers them is given the call's own time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::channel::{ChannelError, GuestStream, guest_error, next_id};
use super::stream::channel_error;
use super::{Vm, VmError, VmManager};
use crate::proto::agent::MAX_LISTING_BYTES;
use crate::proto::api::{FileEntry, FileListResponse};
use crate::proto::guest::{FileErrorCode, FileRequest, FileResult, Frame, FrameKind, WINDOW};
use crate::proto::path::SandboxPath;

/// The largest upload the agent takes (the server usually has a lower limit).
pub const MAX_UPLOAD_BYTES: u64 = 4 << 30;
/// How long the guest may take to answer a request, or to finish an upload once all of it is in.
const ANSWER_WAIT: Duration = Duration::from_secs(120);
const CONNECT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The guest refused.
    #[error("{message}")]
    Fs {
        code: FileErrorCode,
        message: String,
    },
    #[error("the upload is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the upload broke off: {0}")]
    Body(String),
}

/// An upload's failure: the channel's (told with the VM in hand, by [`file_error`]) or the
/// file's own.
enum UploadError {
    Channel(ChannelError),
    File(FileError),
}

impl From<ChannelError> for UploadError {
    fn from(e: ChannelError) -> Self {
        UploadError::Channel(e)
    }
}

impl From<FileError> for UploadError {
    fn from(e: FileError) -> Self {
        UploadError::File(e)
    }
}

impl From<VmError> for UploadError {
    fn from(e: VmError) -> Self {
        UploadError::File(e.into())
    }
}

fn file_error(vm: &Vm, e: ChannelError) -> FileError {
    match e {
        ChannelError::File { code, message } => FileError::Fs { code, message },
        e => FileError::Vm(channel_error(vm, e)),
    }
}

/// `path` if it is a [`SandboxPath`], and `req(path)` if the operation allows it (the rules
/// the server and the guest apply too).
fn checked(
    path: &str,
    req: impl FnOnce(SandboxPath) -> FileRequest,
) -> Result<FileRequest, VmError> {
    let req = req(SandboxPath::parse(path)?);
    req.validate()?;
    Ok(req)
}

/// A file being read: its entry, its length when known, then its bytes.
pub struct FileDownload {
    pub entry: FileEntry,
    pub length: Option<u64>,
    vm: Arc<Vm>,
    stream: GuestStream,
    unacked: usize,
    ended: bool,
}

impl FileDownload {
    /// The next chunk; None at the end of the file.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, FileError> {
        if self.ended {
            return Ok(None);
        }
        let taken = std::mem::take(&mut self.unacked);
        self.stream
            .ack(taken)
            .await
            .map_err(|e| file_error(&self.vm, e))?;
        loop {
            let f = self
                .vm
                .channel
                .guarded(None, self.stream.next(None))
                .await
                .map_err(|e| file_error(&self.vm, e))?;
            match f.kind {
                FrameKind::FileData if f.payload.is_empty() => {
                    self.ended = true;
                    self.stream.done = true;
                    return Ok(None);
                }
                FrameKind::FileData => {
                    self.unacked = f.payload.len();
                    return Ok(Some(f.payload));
                }
                FrameKind::Error => {
                    self.ended = true;
                    self.stream.done = true;
                    return Err(file_error(&self.vm, guest_error(&f)));
                }
                k => tracing::debug!(kind = ?k, "unexpected frame in a file read"),
            }
        }
    }

    /// The bytes as a stream for an HTTP body; an error mid-way ends the body abruptly (the
    /// client sees a short read, never a wrong file).
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
        futures_util::stream::unfold(Some(self), |state| async move {
            let mut dl = state?;
            match dl.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(Bytes::from(chunk)), Some(dl))),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "a file read failed mid-way");
                    Some((Err(std::io::Error::other(e.to_string())), None))
                }
            }
        })
    }
}

impl VmManager {
    /// Opens one file request and waits for its first answer.
    async fn file_request(
        &self,
        id: &str,
        req: &FileRequest,
        window: u64,
        wait: Duration,
    ) -> Result<(Arc<Vm>, GuestStream, FileResult), FileError> {
        let vm = self.running_vm(id)?;
        let answered = async {
            let mut stream = vm
                .channel
                .open(
                    Frame::json(FrameKind::FileRequest, next_id(), req),
                    window,
                    CONNECT_WAIT,
                )
                .await?;
            let f = stream.next(Some(Instant::now() + wait)).await?;
            Ok((stream, f))
        };
        let (mut stream, f) = vm
            .channel
            .guarded(None, answered)
            .await
            .map_err(|e| file_error(&vm, e))?;
        match f.kind {
            FrameKind::FileResult => {
                let r: FileResult = f
                    .parse()
                    .map_err(|e| VmError::GuestUnavailable(e.to_string()))?;
                Ok((vm, stream, r))
            }
            FrameKind::Error => {
                stream.done = true;
                Err(file_error(&vm, guest_error(&f)))
            }
            k => Err(FileError::Vm(VmError::GuestUnavailable(format!(
                "{k:?} in answer to a file request"
            )))),
        }
    }

    /// A request answered by one `FileResult`.
    async fn file_simple(
        &self,
        id: &str,
        req: FileRequest,
    ) -> Result<Option<FileEntry>, FileError> {
        let (_, mut stream, r) = self.file_request(id, &req, 0, ANSWER_WAIT).await?;
        stream.done = true;
        Ok(r.entry)
    }

    pub async fn file_read(&self, id: &str, path: &str) -> Result<FileDownload, FileError> {
        let req = checked(path, |path| FileRequest::Read {
            path,
            window: WINDOW,
        })?;
        let (vm, stream, r) = self.file_request(id, &req, WINDOW, ANSWER_WAIT).await?;
        let entry = r
            .entry
            .ok_or_else(|| VmError::GuestUnavailable("a read answered without an entry".into()))?;
        Ok(FileDownload {
            entry,
            length: r.length,
            vm,
            stream,
            unacked: 0,
            ended: false,
        })
    }

    /// Streams `body` into `path`: the file appears, complete, only when all of it arrived.
    /// More than `limit` bytes → [`FileError::TooLarge`] and nothing is written.
    pub async fn file_write<S, E>(
        &self,
        id: &str,
        path: &str,
        mode: Option<u32>,
        body: S,
        limit: u64,
    ) -> Result<FileEntry, FileError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let req = checked(path, |path| FileRequest::Write { path, mode })?;
        let limit = limit.min(MAX_UPLOAD_BYTES);
        let vm = self.running_vm(id)?;
        // The whole upload waits on the guest under the one guard: a guest that stops answering
        // pings ends it within seconds, one that answers them (a slow disk, a large file) never.
        let written = self.upload(id, &vm, &req, body, limit);
        match vm.channel.guarded(None, written).await {
            Ok(entry) => Ok(entry),
            Err(UploadError::Channel(e)) => Err(file_error(&vm, e)),
            Err(UploadError::File(e)) => Err(e),
        }
    }

    async fn upload<S, E>(
        &self,
        id: &str,
        vm: &Arc<Vm>,
        req: &FileRequest,
        body: S,
        limit: u64,
    ) -> Result<FileEntry, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let path = req.path().as_str();
        let mut stream = vm
            .channel
            .open(
                Frame::json(FrameKind::FileRequest, next_id(), req),
                0,
                CONNECT_WAIT,
            )
            .await?;
        let tx = stream.sender();
        let upload = async move {
            let mut body = std::pin::pin!(body);
            let mut total = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| FileError::Body(e.to_string()))?;
                total += chunk.len() as u64;
                if total > limit {
                    return Err(FileError::TooLarge(limit).into());
                }
                tx.data(FrameKind::FileData, &chunk).await?;
            }
            tx.data(FrameKind::FileData, &[]).await?;
            Ok::<u64, UploadError>(total)
        };
        let mut upload = std::pin::pin!(upload);
        let mut deadline = None;
        loop {
            tokio::select! {
                r = &mut upload, if deadline.is_none() => {
                    let total = r?;
                    tracing::debug!(vm = %id, path, bytes = total, "upload sent");
                    deadline = Some(Instant::now() + ANSWER_WAIT);
                }
                f = stream.next(deadline) => {
                    let f = f?;
                    match f.kind {
                        FrameKind::FileResult if deadline.is_some() => {
                            stream.done = true;
                            let r: FileResult = f
                                .parse()
                                .map_err(|e| VmError::GuestUnavailable(e.to_string()))?;
                            return r.entry.ok_or_else(|| {
                                FileError::from(VmError::GuestUnavailable(
                                    "a write answered without an entry".into(),
                                ))
                                .into()
                            });
                        }
                        FrameKind::Error => {
                            stream.done = true;
                            return Err(guest_error(&f).into());
                        }
                        k => {
                            return Err(VmError::GuestUnavailable(format!(
                                "{k:?} during an upload"
                            ))
                            .into());
                        }
                    }
                }
            }
        }
    }

    pub async fn file_list(&self, id: &str, path: &str) -> Result<FileListResponse, FileError> {
        let req = checked(path, |path| FileRequest::List {
            path,
            window: WINDOW,
        })?;
        let (vm, stream, r) = self.file_request(id, &req, WINDOW, ANSWER_WAIT).await?;
        if r.length.is_some_and(|n| n > MAX_LISTING_BYTES) {
            return Err(FileError::Fs {
                code: FileErrorCode::TooLarge,
                message: format!("{path}: the listing is over {MAX_LISTING_BYTES} bytes"),
            });
        }
        let mut dl = FileDownload {
            entry: r.entry.unwrap_or_else(|| placeholder(path)),
            length: r.length,
            vm,
            stream,
            unacked: 0,
            ended: false,
        };
        let mut json = Vec::new();
        while let Some(chunk) = dl.next_chunk().await? {
            json.extend_from_slice(&chunk);
            if json.len() as u64 > MAX_LISTING_BYTES {
                return Err(FileError::Fs {
                    code: FileErrorCode::TooLarge,
                    message: format!("{path}: the listing is over {MAX_LISTING_BYTES} bytes"),
                });
            }
        }
        serde_json::from_slice(&json)
            .map_err(|e| VmError::GuestUnavailable(format!("bad listing: {e}")).into())
    }

    pub async fn file_stat(&self, id: &str, path: &str) -> Result<FileEntry, FileError> {
        let req = checked(path, |path| FileRequest::Stat { path })?;
        let e = self.file_simple(id, req).await?;
        e.ok_or_else(|| VmError::GuestUnavailable("stat answered without an entry".into()).into())
    }

    pub async fn file_mkdir(
        &self,
        id: &str,
        path: &str,
        parents: bool,
    ) -> Result<FileEntry, FileError> {
        let req = checked(path, |path| FileRequest::Mkdir { path, parents })?;
        let e = self.file_simple(id, req).await?;
        e.ok_or_else(|| VmError::GuestUnavailable("mkdir answered without an entry".into()).into())
    }

    pub async fn file_remove(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), FileError> {
        let req = checked(path, |path| FileRequest::Remove { path, recursive })?;
        self.file_simple(id, req).await?;
        Ok(())
    }
}

fn placeholder(path: &str) -> FileEntry {
    FileEntry {
        name: path.rsplit('/').next().unwrap_or("/").to_string(),
        path: path.to_string(),
        kind: crate::proto::api::FileKind::Dir,
        size: 0,
        mode: 0,
        modified: 0,
        link_target: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_follow_the_shared_rules() {
        let stat = |p: &str| checked(p, |path| FileRequest::Stat { path });
        assert!(stat("/root/a b/ü.txt").is_ok());
        assert!(stat("/").is_ok());
        for p in ["", "relative", "/a/../b", "/..", "/a\0b", "/a//b", "/a/./b"] {
            assert!(
                matches!(stat(p), Err(VmError::BadRequest { field: "path", .. })),
                "{p:?}"
            );
        }
        assert!(stat(&format!("/{}", "a".repeat(4096))).is_err());
        let rm = |p: &str| {
            checked(p, |path| FileRequest::Remove {
                path,
                recursive: true,
            })
        };
        assert!(matches!(
            rm("/"),
            Err(VmError::BadRequest { field: "path", .. })
        ));
        let write = |mode| checked("/f", |path| FileRequest::Write { path, mode });
        assert!(write(Some(0o644)).is_ok());
        assert!(matches!(
            write(Some(0o10000)),
            Err(VmError::BadRequest { field: "mode", .. })
        ));
    }
}
