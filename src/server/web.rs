//! The embedded web dashboard: the single-page app in `web/`, compiled into the binary.
//!
//! Every GET that no route took lands here: a file of the app when one has that path, else the
//! app's `index.html` (its router then reads the URL). `/v1/...` and every other method keep the
//! API's JSON 404. In debug builds rust-embed reads `web/` from disk, so edits show on reload.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::api::error::ApiError;

/// The dashboard's files (the browser tests and their node_modules stay out).
#[derive(rust_embed::Embed)]
#[folder = "web/"]
#[exclude = "tests/*"]
#[exclude = "node_modules/*"]
#[exclude = "*/node_modules/*"]
#[exclude = ".*"]
#[exclude = "*/.*"]
pub struct WebAssets;

/// The page the app's router starts from.
const INDEX: &str = "index.html";

/// Only our own files: scripts, styles, images, API calls and WebSockets (CSP3 `'self'` covers
/// ws/wss to this origin) to this origin. Styles also allow `'unsafe-inline'`: the vendored
/// terminal emulator (xterm.js) sizes its character grid and applies its theme through `<style>`
/// elements it writes at run time. Scripts stay `'self'` only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

/// The fallback of the whole app: the dashboard for GET/HEAD, the API's JSON 404 otherwise.
pub async fn fallback(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    if !(method == Method::GET || method == Method::HEAD) || is_api_path(path) {
        return ApiError::NotFound("route").into_response();
    }
    let Some(rel) = asset_path(path) else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    let head = method == Method::HEAD;
    if let Some(file) = WebAssets::get(&rel) {
        return serve(&rel, file, &headers, head);
    }
    if looks_like_file(&rel) {
        // A missing script or stylesheet must fail loudly, not come back as HTML.
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    match WebAssets::get(INDEX) {
        Some(file) => serve(INDEX, file, &headers, head),
        None => plain(
            StatusCode::NOT_FOUND,
            "the dashboard is not built into this binary",
        ),
    }
}

fn is_api_path(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// The file a URL path names, relative to `web/` (`/` is `index.html`); `None` for paths that try
/// to leave the folder or name hidden files.
fn asset_path(path: &str) -> Option<String> {
    let rel = path.strip_prefix('/').unwrap_or(path);
    if rel.is_empty() {
        return Some(INDEX.to_string());
    }
    let ok = rel.split('/').all(|seg| {
        !seg.is_empty() && !seg.starts_with('.') && !seg.contains('\\') && !seg.contains('\0')
    });
    ok.then(|| rel.to_string())
}

/// Whether the last segment has an extension (`app.js`), as opposed to an app route (`/team`).
fn looks_like_file(rel: &str) -> bool {
    rel.rsplit('/')
        .next()
        .is_some_and(|last| last.contains('.'))
}

pub fn content_type(path: &str) -> &'static str {
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" => "text/plain; charset=utf-8",
        "webmanifest" => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

fn serve(path: &str, file: rust_embed::EmbeddedFile, req: &HeaderMap, head: bool) -> Response {
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..16]));
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag)
        });
    let status = if fresh {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let body = if fresh || head {
        Body::empty()
    } else {
        Body::from(file.data)
    };
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    // No fingerprinted file names: the browser keeps a copy but asks (cheaply, by ETag) every time,
    // so an upgraded server never runs with yesterday's scripts.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    security_headers(h);
    resp
}

fn plain(status: StatusCode, msg: &'static str) -> Response {
    let mut resp = (status, msg).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    security_headers(resp.headers_mut());
    resp
}

fn security_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_app() {
        assert_eq!(asset_path("/").as_deref(), Some("index.html"));
        assert_eq!(asset_path("/app.js").as_deref(), Some("app.js"));
        assert_eq!(
            asset_path("/pages/team.js").as_deref(),
            Some("pages/team.js")
        );
        assert_eq!(
            asset_path("/sandboxes/sbx_1").as_deref(),
            Some("sandboxes/sbx_1")
        );
        for bad in [
            "/../Cargo.toml",
            "/pages/../../x",
            "/.gitignore",
            "//etc/passwd",
            "/a//b",
            "/a\\b",
        ] {
            assert_eq!(asset_path(bad), None, "{bad}");
        }
        assert!(
            is_api_path("/v1")
                && is_api_path("/v1/nope")
                && !is_api_path("/v1x")
                && !is_api_path("/team")
        );
        assert!(looks_like_file("pages/x.js") && !looks_like_file("sandboxes/sbx_1"));
    }

    #[test]
    fn the_app_is_embedded_without_its_tests() {
        for f in ["index.html", "app.js", "api.js", "style.css"] {
            assert!(WebAssets::get(f).is_some(), "{f} is not embedded");
        }
        assert!(
            WebAssets::iter().all(|f| !f.starts_with("tests/") && !f.contains("node_modules")),
            "browser tests leaked into the embed"
        );
        assert_eq!(content_type("a/b.JS"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
    }
}
