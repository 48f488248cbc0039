//! One request relayed over a byte stream to a sandbox's port: HTTP/1.1 to the app (whatever
//! the client spoke to us), bodies streamed both ways as they come (no buffering: a chunked or
//! `application/connect+json` response reaches the client chunk by chunk), upgrades (WebSocket
//! and any other protocol) bridged as raw bytes once both sides switched. No timeout of its own:
//! a response may run for hours while bytes flow.

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Version};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

/// Headers that describe one hop, never passed on (besides those `Connection` names).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The app closed the connection or answered something that is not HTTP/1.
    #[error("the app in the sandbox did not answer: {0}")]
    NoAnswer(String),
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers; keeps `Upgrade` (and `Connection: upgrade`) when `upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let upgrade_to = headers.get(header::UPGRADE).cloned();
    for h in named {
        headers.remove(h);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    if upgrade && let Some(u) = upgrade_to {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, u);
    }
}

/// Sends `req` (headers already cleaned of our own) to the app at the other end of `upstream`
/// and answers with the app's response, streamed.
pub async fn forward(
    upstream: reqwest::Upgraded,
    mut req: Request,
) -> Result<Response, ForwardError> {
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade
        .then(|| req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    let (mut parts, body) = req.into_parts();
    // HTTP/2 carries the host in the URI: the app gets it as `Host`.
    if !parts.headers.contains_key(header::HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut out = hyper::Request::builder()
        .method(parts.method)
        .uri(path)
        .version(Version::HTTP_11)
        .body(body)
        .map_err(|e| ForwardError::NoAnswer(e.to_string()))?;
    *out.headers_mut() = parts.headers;

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(upstream))
        .await
        .map_err(|e| ForwardError::NoAnswer(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "sandbox port connection ended");
        }
    });
    let mut resp = sender
        .send_request(out)
        .await
        .map_err(|e| ForwardError::NoAnswer(e.to_string()))?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ForwardError::NoAnswer(
                "the app switched protocols unasked".into(),
            ));
        };
        let app_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (client, app) = match tokio::join!(client_upgrade, app_upgrade) {
                (Ok(c), Ok(a)) => (c, a),
                (c, a) => {
                    tracing::debug!(client = c.is_ok(), app = a.is_ok(), "an upgrade failed");
                    return;
                }
            };
            let (mut client, mut app) = (TokioIo::new(client), TokioIo::new(app));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut app).await;
        });
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, Body::new(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }
}
