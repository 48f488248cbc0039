//! envd's `GET /files` (download) and `POST /files` (upload), /work/shared/E2B.md §3.4: the
//! access token as a header or a URL signature, the user from `?username=`, files owned by
//! that user, errors as `{"code","message"}` with E2B's statuses.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::Envd;
use super::filesystem::create_dirs_as;
use super::users::{self, User};
use crate::proto::envd::{HttpError, WriteInfo};

#[derive(Debug, Default, Deserialize)]
pub(super) struct FilesQuery {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    signature_expiration: Option<i64>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = HttpError {
        code: status.as_u16(),
        message: message.into(),
    };
    (status, axum::Json(body)).into_response()
}

fn io_error(e: &std::io::Error, what: &Path) -> Response {
    let status = match e.raw_os_error() {
        Some(libc::ENOENT) => StatusCode::NOT_FOUND,
        Some(libc::EISDIR)
        | Some(libc::ENOTDIR)
        | Some(libc::EINVAL)
        | Some(libc::ENAMETOOLONG) => StatusCode::BAD_REQUEST,
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => StatusCode::INSUFFICIENT_STORAGE,
        Some(libc::EACCES) | Some(libc::EPERM) => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, format!("{}: {e}", what.display()))
}

/// `"v1_" + base64_nopad(sha256("{path}:{op}:{username}:{token}[:{expiration}]"))`, what the
/// SDKs put in `download_url()` and `upload_url()`.
pub(super) fn signature(
    path: &str,
    op: &str,
    username: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let raw = match expiration {
        Some(exp) => format!("{path}:{op}:{username}:{token}:{exp}"),
        None => format!("{path}:{op}:{username}:{token}"),
    };
    let digest = Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// With an access token set, a request needs it in `X-Access-Token` or a valid, unexpired
/// signature for this path, operation and user.
/// An early answer of a `/files` handler (boxed: a `Response` is large).
type Refused = Box<Response>;

fn authorize(envd: &Envd, headers: &HeaderMap, q: &FilesQuery, op: &str) -> Result<(), Refused> {
    let Some(token) = envd.token() else {
        return Ok(());
    };
    if let Some(given) = headers.get("x-access-token")
        && crate::crypto::ct_eq(given.as_bytes(), token.as_bytes())
    {
        return Ok(());
    }
    let denied = || {
        error(
            StatusCode::UNAUTHORIZED,
            "missing or invalid access token or signature",
        )
    };
    let Some(sig) = &q.signature else {
        return Err(Box::new(denied()));
    };
    let expected = signature(
        q.path.as_deref().unwrap_or(""),
        op,
        q.username.as_deref().unwrap_or(""),
        &token,
        q.signature_expiration,
    );
    if !crate::crypto::ct_eq(sig.as_bytes(), expected.as_bytes()) {
        return Err(Box::new(denied()));
    }
    if let Some(exp) = q.signature_expiration
        && exp < crate::time::unix_now()
    {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "the signature has expired",
        )));
    }
    Ok(())
}

fn user_of(q: &FilesQuery) -> Result<User, Refused> {
    users::select(q.username.as_deref()).map_err(|m| Box::new(error(StatusCode::UNAUTHORIZED, m)))
}

fn target(user: &User, path: &str) -> Result<PathBuf, Refused> {
    if path.is_empty() {
        return Err(Box::new(error(StatusCode::BAD_REQUEST, "path is required")));
    }
    if path.contains('\0') {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "path contains a NUL byte",
        )));
    }
    Ok(super::resolve(user, path))
}

/// `GET /files?path=`: the file's bytes, gzip-compressed when the client accepts it.
pub(super) async fn download(
    State(envd): State<Arc<Envd>>,
    Query(q): Query<FilesQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&envd, &headers, &q, "read") {
        return *r;
    }
    let user = match user_of(&q) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let path = match target(&user, q.path.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let meta = match tokio::fs::metadata(&path).await {
        Ok(m) => m,
        Err(e) => return io_error(&e, &path),
    };
    if meta.is_dir() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{} is a directory", path.display()),
        );
    }
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => return io_error(&e, &path),
    };
    let gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| e.split(';').next().is_some_and(|n| n.trim() == "gzip"));
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let sink = ChannelWriter { tx: tx.clone() };
        let result = if gzip {
            let mut enc = flate2::write::GzEncoder::new(sink, flate2::Compression::fast());
            copy(file, &mut enc).and_then(|()| enc.finish().map(|_| ()))
        } else {
            let mut sink = sink;
            copy(file, &mut sink)
        };
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut response = Response::new(Body::from_stream(body));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type(&path));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    } else if let Ok(v) = HeaderValue::from_str(&meta.len().to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    response
}

fn copy(mut from: std::fs::File, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return to.flush();
        }
        to.write_all(&buf[..n])?;
    }
}

fn content_type(path: &Path) -> HeaderValue {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    HeaderValue::from_static(match ext.as_str() {
        "txt" | "log" | "md" | "py" | "sh" | "rs" => "text/plain; charset=utf-8",
        "html" | "htm" => "text/html; charset=utf-8",
        "json" => "application/json",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gz" => "application/gzip",
        _ => "application/octet-stream",
    })
}

/// A blocking writer that hands its bytes to an async body.
struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A blocking reader over an async body's chunks.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Writes what `rx` delivers to `path` (parents made for `user`), owned by `user`.
async fn write_file(
    user: User,
    path: PathBuf,
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    gzip: bool,
) -> Result<WriteInfo, Response> {
    let p = path.clone();
    let result = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        if p.is_dir() {
            return Err(std::io::Error::from_raw_os_error(libc::EISDIR));
        }
        if let Some(parent) = p.parent() {
            create_dirs_as(&user, parent)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&p)?;
        std::os::unix::fs::chown(&p, Some(user.uid), Some(user.gid))?;
        let reader = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut src: Box<dyn Read> = if gzip {
            Box::new(flate2::read::MultiGzDecoder::new(reader))
        } else {
            Box::new(reader)
        };
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n])?;
        }
        f.sync_data()
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(WriteInfo {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_string_lossy().into_owned(),
            kind: "file",
        }),
        Ok(Err(e)) if e.raw_os_error() == Some(libc::EISDIR) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("{} is a directory", path.display()),
        )),
        Ok(Err(e))
            if e.kind() == std::io::ErrorKind::InvalidData
                || e.kind() == std::io::ErrorKind::InvalidInput =>
        {
            Err(error(
                StatusCode::BAD_REQUEST,
                format!("the upload is not valid gzip: {e}"),
            ))
        }
        Ok(Err(e)) => Err(io_error(&e, &path)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// `POST /files`: multipart (each `file` part's raw filename is its path, unless `?path=`
/// names it) or the raw body (`application/octet-stream`, optionally `Content-Encoding: gzip`).
pub(super) async fn upload(
    State(envd): State<Arc<Envd>>,
    Query(q): Query<FilesQuery>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    if let Err(r) = authorize(&envd, &headers, &q, "write") {
        return *r;
    }
    let user = match user_of(&q) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let written = if ct.starts_with("multipart/form-data") {
        upload_multipart(&user, &q, request).await
    } else if ct.starts_with("application/octet-stream") {
        let gzip = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
        let path = match target(&user, q.path.as_deref().unwrap_or("")) {
            Ok(p) => p,
            Err(r) => return *r,
        };
        let (tx, rx) = mpsc::channel(8);
        let mut stream = request.into_body().into_data_stream();
        let feed = async move {
            while let Some(chunk) = stream.next().await {
                let item = chunk.map_err(std::io::Error::other);
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        };
        let (_, r) = tokio::join!(feed, write_file(user.clone(), path, rx, gzip));
        r.map(|w| vec![w])
    } else {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "Content-Type must be multipart/form-data or application/octet-stream, not {ct:?}"
            ),
        );
    };
    match written {
        Ok(list) => axum::Json(list).into_response(),
        Err(r) => r,
    }
}

/// The raw filename of a multipart part (directories kept: it is the destination path).
fn raw_filename(headers: &HeaderMap) -> Option<String> {
    let cd = headers.get(header::CONTENT_DISPOSITION)?.to_str().ok()?;
    let start = cd.find("filename=\"").map(|i| i + 10)?;
    let rest = &cd[start..];
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '"' => return Some(out),
            c => out.push(c),
        }
    }
    None
}

async fn upload_multipart(
    user: &User,
    q: &FilesQuery,
    request: Request,
) -> Result<Vec<WriteInfo>, Response> {
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))?;
    let mut written: Vec<WriteInfo> = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))?
    {
        if field.name() != Some("file") {
            continue;
        }
        let name = match (&q.path, raw_filename(field.headers())) {
            (Some(p), _) if !p.is_empty() => p.clone(),
            (_, Some(f)) => f,
            (_, None) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "a file part needs a filename (its path) or ?path=",
                ));
            }
        };
        let path = target(user, &name).map_err(|r| *r)?;
        if seen.contains(&path) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("{} is uploaded twice in one request", path.display()),
            ));
        }
        seen.push(path.clone());
        let (tx, rx) = mpsc::channel(8);
        let feed = async move {
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        if tx.send(Ok(chunk)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.body_text()))).await;
                        break;
                    }
                }
            }
        };
        let (_, r) = tokio::join!(feed, write_file(user.clone(), path, rx, false));
        written.push(r?);
    }
    if written.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "the request has no part named \"file\"",
        ));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_sdk() {
        // e2b/sandbox/signature.py: base64(sha256(raw)) without padding.
        let sig = signature("/tmp/a", "read", "", "tok", None);
        let digest = Sha256::digest(b"/tmp/a:read::tok");
        let expected = base64::engine::general_purpose::STANDARD
            .encode(digest)
            .trim_end_matches('=')
            .to_string();
        assert_eq!(sig, format!("v1_{expected}"));
        assert_ne!(sig, signature("/tmp/a", "write", "", "tok", None));
        assert_ne!(sig, signature("/tmp/a", "read", "", "tok", Some(1)));
    }

    #[test]
    fn raw_filenames_keep_directories() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static(
                r#"form-data; name="file"; filename="/home/user/a \"b\"/c.txt""#,
            ),
        );
        assert_eq!(
            raw_filename(&h).as_deref(),
            Some(r#"/home/user/a "b"/c.txt"#)
        );
    }
}
