//! The Connect protocol with the JSON codec over HTTP/1.1 (/work/shared/E2B.md §3.1): unary
//! calls are a JSON body each way; streams are envelopes (`flags u8 | length u32 BE | JSON`)
//! ending in an end-stream envelope (flags 2) that carries the error, if any.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// Largest message we accept (unary body or one envelope).
pub(super) const MAX_MESSAGE: usize = 16 << 20;

const FLAG_END_STREAM: u8 = 0x02;
const FLAG_COMPRESSED: u8 = 0x01;

/// Connect error codes (the ones envd uses) and their HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Code {
    Canceled,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Unimplemented,
    Internal,
    Unauthenticated,
}

impl Code {
    pub(super) fn name(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    pub(super) fn status(self) -> StatusCode {
        match self {
            Code::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// An RPC's failure: a Connect code and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RpcError {
    pub(super) code: Code,
    pub(super) message: String,
}

pub(super) type RpcResult<T> = Result<T, RpcError>;

impl RpcError {
    pub(super) fn new(code: Code, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    pub(super) fn invalid(message: impl Into<String>) -> RpcError {
        RpcError::new(Code::InvalidArgument, message)
    }

    pub(super) fn not_found(message: impl Into<String>) -> RpcError {
        RpcError::new(Code::NotFound, message)
    }

    /// An I/O failure about `what` (a path), with the code its errno means.
    pub(super) fn io(e: &std::io::Error, what: &str) -> RpcError {
        let code = match e.raw_os_error() {
            Some(libc::ENOENT) => Code::NotFound,
            Some(libc::EEXIST) => Code::AlreadyExists,
            Some(libc::EACCES) | Some(libc::EPERM) => Code::PermissionDenied,
            Some(libc::ENOTDIR)
            | Some(libc::EISDIR)
            | Some(libc::EINVAL)
            | Some(libc::ENOTEMPTY)
            | Some(libc::ENAMETOOLONG)
            | Some(libc::ELOOP) => Code::InvalidArgument,
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Code::ResourceExhausted,
            _ => Code::Internal,
        };
        RpcError::new(code, format!("{what}: {e}"))
    }

    fn body(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code.name(), "message": self.message})
    }
}

impl IntoResponse for RpcError {
    /// The unary form: the code's HTTP status and `{"code","message"}`.
    fn into_response(self) -> Response {
        let mut r = (self.code.status(), axum::Json(self.body())).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> RpcResult<T> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            RpcError::invalid(format!("invalid message: {}", e.inner()))
        } else {
            RpcError::invalid(format!("invalid field {path}: {}", e.inner()))
        }
    })
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
}

/// A unary request's message (`application/json`).
pub(super) async fn unary_request<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> RpcResult<T> {
    let ct = content_type(headers);
    if !ct.starts_with("application/json") {
        return Err(RpcError::new(
            Code::Unimplemented,
            format!("unsupported content type {ct:?}: this envd speaks application/json"),
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_MESSAGE)
        .await
        .map_err(|e| RpcError::invalid(format!("reading the request: {e}")))?;
    parse(&bytes)
}

/// The answer to a unary call.
pub(super) fn unary_response<T: Serialize>(result: RpcResult<T>) -> Response {
    match result {
        Ok(v) => {
            let mut r = axum::Json(v).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => e.into_response(),
    }
}

/// Splits a byte stream into envelopes.
#[derive(Default)]
pub(super) struct EnvelopeDecoder {
    buf: Vec<u8>,
}

impl EnvelopeDecoder {
    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole envelope: its flags and payload.
    pub(super) fn next_envelope(&mut self) -> RpcResult<Option<(u8, Vec<u8>)>> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_MESSAGE {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("message of {len} bytes is over the limit of {MAX_MESSAGE}"),
            ));
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(RpcError::new(
                Code::Unimplemented,
                "compressed messages are not supported",
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Ok(Some((flags, payload)))
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The messages of a client stream, one at a time.
pub(super) struct MessageStream {
    body: axum::body::BodyDataStream,
    decoder: EnvelopeDecoder,
}

impl MessageStream {
    pub(super) fn new(headers: &HeaderMap, body: Body) -> RpcResult<MessageStream> {
        let ct = content_type(headers);
        if !ct.starts_with("application/connect+json") {
            return Err(RpcError::new(
                Code::Unimplemented,
                format!("unsupported content type {ct:?}: streams are application/connect+json"),
            ));
        }
        Ok(MessageStream {
            body: body.into_data_stream(),
            decoder: EnvelopeDecoder::default(),
        })
    }

    /// The next message; None at the end of the stream.
    pub(super) async fn next<T: DeserializeOwned>(&mut self) -> RpcResult<Option<T>> {
        loop {
            if let Some((flags, payload)) = self.decoder.next_envelope()? {
                if flags & FLAG_END_STREAM != 0 {
                    return Ok(None);
                }
                return parse(&payload).map(Some);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.decoder.push(&chunk),
                Some(Err(e)) => {
                    return Err(RpcError::new(
                        Code::Canceled,
                        format!("reading the request: {e}"),
                    ));
                }
                None if self.decoder.is_empty() => return Ok(None),
                None => return Err(RpcError::invalid("the request ends inside a message")),
            }
        }
    }
}

/// The one message of a server-streaming request.
pub(super) async fn stream_request<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> RpcResult<T> {
    MessageStream::new(headers, body)?
        .next()
        .await?
        .ok_or_else(|| RpcError::invalid("the request carries no message"))
}

pub(super) fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// The sending half of a streaming response. Every message is written out at once; `end`
/// writes the end-stream envelope. Dropped without `end`, the stream ends with `internal`.
pub(super) struct StreamSender {
    tx: mpsc::Sender<Bytes>,
    ended: bool,
}

impl StreamSender {
    /// Sends one message; false when the client has gone.
    pub(super) async fn send<T: Serialize>(&self, msg: &T) -> bool {
        let Ok(json) = serde_json::to_vec(msg) else {
            return false;
        };
        self.tx.send(envelope(0, &json)).await.is_ok()
    }

    /// Ends the stream: `{}` on success, `{"error":{…}}` on failure.
    pub(super) async fn end(mut self, result: RpcResult<()>) {
        self.ended = true;
        let payload = match result {
            Ok(()) => serde_json::json!({}),
            Err(e) => serde_json::json!({ "error": e.body() }),
        };
        let json = serde_json::to_vec(&payload).unwrap_or_else(|_| b"{}".to_vec());
        let _ = self.tx.send(envelope(FLAG_END_STREAM, &json)).await;
    }

    /// Resolves when the client is gone.
    pub(super) async fn closed(&self) {
        self.tx.closed().await
    }
}

impl Drop for StreamSender {
    fn drop(&mut self) {
        if !self.ended {
            let err = RpcError::new(Code::Internal, "the stream ended unexpectedly");
            let json =
                serde_json::to_vec(&serde_json::json!({ "error": err.body() })).unwrap_or_default();
            let _ = self.tx.try_send(envelope(FLAG_END_STREAM, &json));
        }
    }
}

/// A streaming response (200, `application/connect+json`) and the sender that feeds it.
pub(super) fn stream_response() -> (StreamSender, Response) {
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/connect+json")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    (StreamSender { tx, ended: false }, response)
}

/// A streaming call that failed before it started: 200 and an end-stream envelope with the
/// error (what connect clients expect of a stream).
pub(super) fn stream_error(e: RpcError) -> Response {
    let json = serde_json::to_vec(&serde_json::json!({ "error": e.body() })).unwrap_or_default();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/connect+json")
        .body(Body::from(envelope(FLAG_END_STREAM, &json)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `Connect-Timeout-Ms`: the call's deadline, if the client set one.
pub(super) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// `Keepalive-Ping-Interval` (seconds): how often an idle stream sends a keepalive. The SDKs
/// send 50; without the header, the same.
pub(super) fn keepalive_interval(headers: &HeaderMap) -> Duration {
    let secs = headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(50);
    Duration::from_secs(secs.min(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_split_across_chunks() {
        let mut d = EnvelopeDecoder::default();
        let a = envelope(0, br#"{"start":{}}"#);
        let b = envelope(2, b"{}");
        let all = [a.as_ref(), b.as_ref()].concat();
        d.push(&all[..3]);
        assert_eq!(d.next_envelope().unwrap(), None);
        d.push(&all[3..20]);
        assert_eq!(
            d.next_envelope().unwrap(),
            Some((0, br#"{"start":{}}"#.to_vec()))
        );
        d.push(&all[20..]);
        assert_eq!(d.next_envelope().unwrap(), Some((2, b"{}".to_vec())));
        assert!(d.is_empty());
    }

    #[test]
    fn oversized_and_compressed_envelopes_are_refused() {
        let mut d = EnvelopeDecoder::default();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(d.next_envelope().unwrap_err().code, Code::ResourceExhausted);
        let mut d = EnvelopeDecoder::default();
        d.push(&envelope(1, b"x"));
        assert_eq!(d.next_envelope().unwrap_err().code, Code::Unimplemented);
    }

    #[test]
    fn codes_map_to_statuses() {
        assert_eq!(Code::NotFound.status(), 404);
        assert_eq!(Code::Unauthenticated.status(), 401);
        assert_eq!(Code::AlreadyExists.status(), 409);
        assert_eq!(Code::DeadlineExceeded.status(), 504);
        assert_eq!(Code::Canceled.status(), 499);
        let e = RpcError::io(&std::io::Error::from_raw_os_error(libc::ENOENT), "/nope");
        assert_eq!(e.code, Code::NotFound);
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse::<crate::proto::envd::ListDirRequest>(br#"{"path": 5}"#).unwrap_err();
        assert!(e.message.contains("path"), "{}", e.message);
        let ok = parse::<crate::proto::envd::ListDirRequest>(b"").unwrap();
        assert_eq!(ok.depth, 0);
    }

    #[test]
    fn headers() {
        let mut h = HeaderMap::new();
        assert_eq!(timeout(&h), None);
        assert_eq!(keepalive_interval(&h), Duration::from_secs(50));
        h.insert("connect-timeout-ms", HeaderValue::from_static("1500"));
        h.insert("keepalive-ping-interval", HeaderValue::from_static("2"));
        assert_eq!(timeout(&h), Some(Duration::from_millis(1500)));
        assert_eq!(keepalive_interval(&h), Duration::from_secs(2));
    }
}
