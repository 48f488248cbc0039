//! Which requests on the main listener go to a sandbox's port, and to which (pure, no I/O).
//!
//! 1. By host name: with `--sandbox-domain DOMAIN`, a `Host` (or HTTP/2 authority) of
//!    `{port}-{sandbox_id}.{DOMAIN}` goes to that port of that sandbox, whatever the path.
//! 2. By path: the API and E2B's control-plane paths stay with the server, whatever headers
//!    they carry (some SDK versions put the sandbox headers on control-plane calls).
//! 3. By headers: anything else that carries `E2b-Sandbox-Id` (any case) goes to the sandbox, on
//!    the port in `E2b-Sandbox-Port` (default 49983, envd's).
//!
//! Everything else is the server's (the API's 404s, the dashboard).

use axum::http::{HeaderMap, Uri, header};

use crate::server::sandboxes::ports::ENVD_PORT;

pub const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";
pub const SANDBOX_PORT_HEADER: &str = "e2b-sandbox-port";

/// A sandbox's port a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As the request named it (parsed and checked by the caller).
    pub sandbox_id: String,
    pub port: u16,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    /// The server's own (API, E2B control plane, dashboard).
    Server,
    Sandbox(Target),
    /// Routing headers that cannot be used: the header and why.
    Bad(&'static str, String),
}

/// The paths the server answers itself, whatever routing headers come with them.
pub fn is_control_plane(path: &str) -> bool {
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    let prefixed = |p: &str| path.starts_with(p);
    under("/v1")
        || path == "/healthz"
        || under("/sandboxes")
        || under("/v2/sandboxes")
        || under("/snapshots")
        || prefixed("/templates")
        || prefixed("/v2/templates")
        || prefixed("/v3/templates")
        || prefixed("/volumes")
        || prefixed("/secrets")
}

/// Where a request goes.
pub fn route(uri: &Uri, headers: &HeaderMap, domain: Option<&str>) -> Routed {
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()));
    if let (Some(domain), Some(host)) = (domain, host)
        && let Some(t) = host_target(host, domain)
    {
        return Routed::Sandbox(t);
    }
    if is_control_plane(uri.path()) {
        return Routed::Server;
    }
    let Some(id) = headers.get(SANDBOX_ID_HEADER) else {
        return Routed::Server;
    };
    let Ok(id) = id.to_str() else {
        return Routed::Bad(SANDBOX_ID_HEADER, "is not a sandbox id".into());
    };
    let port = match headers.get(SANDBOX_PORT_HEADER) {
        None => ENVD_PORT,
        Some(v) => match v.to_str().ok().and_then(parse_port) {
            Some(p) => p,
            None => {
                return Routed::Bad(
                    SANDBOX_PORT_HEADER,
                    "must be a port number from 1 to 65535".into(),
                );
            }
        },
    };
    Routed::Sandbox(Target {
        sandbox_id: id.trim().to_string(),
        port,
    })
}

fn parse_port(s: &str) -> Option<u16> {
    let s = s.trim();
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|p| *p > 0)
}

/// `{port}-{sandbox_id}.{domain}` (any case, an optional `:port` and trailing dot) as a target.
pub fn host_target(host: &str, domain: &str) -> Option<Target> {
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let label = host.strip_suffix(&domain)?.strip_suffix('.')?;
    if label.contains('.') {
        return None;
    }
    let (port, id) = label.split_once('-')?;
    Some(Target {
        sandbox_id: id.to_string(),
        port: parse_port(port)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> (Uri, HeaderMap) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        (uri.parse().unwrap(), h)
    }

    fn target(id: &str, port: u16) -> Routed {
        Routed::Sandbox(Target {
            sandbox_id: id.into(),
            port,
        })
    }

    #[test]
    fn host_names_route_whatever_the_path() {
        let d = Some("sbx.example.test");
        let (u, h) = req("/v1/me", &[("host", "8000-sbx-abc.SBX.example.test:443")]);
        assert_eq!(route(&u, &h, d), target("sbx-abc", 8000));
        let (u, h) = req("https://49983-sbx-abc.sbx.example.test/files", &[]);
        assert_eq!(route(&u, &h, d), target("sbx-abc", 49983));
        // Not ours: another domain, a deeper name, no port, no domain configured.
        for host in [
            "8000-sbx-abc.other.test",
            "a.8000-sbx-abc.sbx.example.test",
            "sbx-abc.sbx.example.test",
            "api.sbx.example.test",
            "0-sbx-abc.sbx.example.test",
        ] {
            let (u, h) = req("/", &[("host", host)]);
            assert_eq!(route(&u, &h, d), Routed::Server, "{host}");
        }
        let (u, h) = req("/", &[("host", "8000-sbx-abc.sbx.example.test")]);
        assert_eq!(route(&u, &h, None), Routed::Server);
    }

    #[test]
    fn headers_route_everything_but_control_plane_paths() {
        let hdrs = [("E2B-SANDBOX-ID", "sbx-abc"), ("e2b-sandbox-port", "8000")];
        for path in [
            "/",
            "/health",
            "/files?path=%2Ftmp",
            "/process.Process/Start",
            "/app/v1",
        ] {
            let (u, h) = req(path, &hdrs);
            assert_eq!(route(&u, &h, None), target("sbx-abc", 8000), "{path}");
        }
        for path in [
            "/v1/sandboxes",
            "/v1",
            "/healthz",
            "/sandboxes",
            "/sandboxes/sbx-abc/connect",
            "/v2/sandboxes",
            "/snapshots",
            "/templates/base",
            "/v2/templates",
            "/v3/templates",
            "/volumes",
            "/secrets/x",
        ] {
            let (u, h) = req(path, &hdrs);
            assert_eq!(route(&u, &h, None), Routed::Server, "{path}");
        }
        // envd's port by default; a bad port names the header.
        let (u, h) = req("/health", &[("e2b-sandbox-id", "sbx-abc")]);
        assert_eq!(route(&u, &h, None), target("sbx-abc", ENVD_PORT));
        for bad in ["0", "65536", "x", "-1"] {
            let (u, h) = req(
                "/",
                &[("e2b-sandbox-id", "sbx-abc"), ("e2b-sandbox-port", bad)],
            );
            assert!(
                matches!(route(&u, &h, None), Routed::Bad(SANDBOX_PORT_HEADER, _)),
                "{bad}"
            );
        }
        let (u, h) = req("/", &[]);
        assert_eq!(route(&u, &h, None), Routed::Server);
    }
}
