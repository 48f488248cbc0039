//! Prometheus exposition shared by the server and the agent: the text encoding, the per-route
//! request metrics (a middleware over an axum router) and the check of a scraper's token.
//!
//! Each role owns its own [`Registry`] (a server and its local agent share one process, each with
//! its own `/metrics`); every series is prefixed `sandboxctl_`. Series are listed in README.md
//! ("Metrics").

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::crypto::{Secret, ct_eq};

/// Every series' prefix.
pub const PREFIX: &str = "sandboxctl";

/// The `Content-Type` of what [`encode`] writes (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A registry whose series are all prefixed `sandboxctl_`.
pub fn registry() -> Registry {
    Registry::with_prefix(PREFIX)
}

/// The registry in Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; a metric that fails to encode is a bug worth seeing.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::error!(error = %e, "encoding metrics");
    }
    out
}

/// Buckets for request and database latencies, in seconds: 0.5 ms to ~33 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 17)
}

/// Buckets for sandbox operations (create, pause, resume, delete), in seconds: 10 ms to ~5 min.
pub fn operation_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 15)
}

/// A histogram with [`latency_buckets`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// A histogram with [`operation_buckets`].
pub fn operation_histogram() -> Histogram {
    Histogram::new(operation_buckets())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The matched route template (`/v1/sandboxes/{id}`), never the raw path; `unmatched` for
    /// paths no route takes.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

/// Requests by route and status, with their latency (until the response's head: a streamed body
/// is not waited for).
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl HttpMetrics {
    /// The request series, registered in `registry`.
    pub fn new(registry: &mut Registry) -> Arc<HttpMetrics> {
        let m = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (until the response head), by method and route template",
            m.duration.clone(),
        );
        Arc::new(m)
    }
}

/// The middleware that counts and times every request of a router (add it with
/// `Router::layer(axum::middleware::from_fn_with_state(metrics, prom::track))`).
pub async fn track(State(m): State<Arc<HttpMetrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = req.method().as_str().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    m.duration
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// Whether the request's `Authorization: Bearer` token is `expected` (compared in constant time).
pub fn bearer_matches(headers: &axum::http::HeaderMap, expected: &Secret) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| ct_eq(t.trim().as_bytes(), expected.expose().as_bytes()))
}

/// A scraper's token from `file` (trimmed), else from the environment variable `env`; an empty
/// one is refused.
pub fn read_token(file: Option<&std::path::Path>, env: &str) -> anyhow::Result<Option<Secret>> {
    let token = match file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("reading --metrics-token-file {}: {e}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var(env).ok().map(|t| t.trim().to_string()),
    };
    match token {
        Some(t) if t.is_empty() => {
            anyhow::bail!("the metrics token (--metrics-token-file or {env}) is empty")
        }
        t => Ok(t.map(Secret)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_is_compared_whole() {
        let want = Secret("s3cret".into());
        let h = |v: &str| {
            let mut m = axum::http::HeaderMap::new();
            m.insert(axum::http::header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert!(bearer_matches(&h("Bearer s3cret"), &want));
        assert!(!bearer_matches(&h("Bearer s3cre"), &want));
        assert!(!bearer_matches(&h("Bearer s3cretx"), &want));
        assert!(!bearer_matches(&h("Basic s3cret"), &want));
        assert!(!bearer_matches(&axum::http::HeaderMap::new(), &want));
    }

    #[test]
    fn a_token_file_is_trimmed_and_an_empty_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "  abc123\n").unwrap();
        let unset = "SANDBOXCTL_TEST_UNSET_METRICS_TOKEN";
        let t = read_token(Some(&f), unset).unwrap().unwrap();
        assert_eq!(t.expose(), "abc123");
        std::fs::write(&f, "\n").unwrap();
        let err = read_token(Some(&f), unset).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let err = read_token(Some(&dir.path().join("missing")), unset)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--metrics-token-file"), "{err}");
        assert!(read_token(None, unset).unwrap().is_none());
    }

    #[test]
    fn series_carry_the_prefix_and_route_templates() {
        let mut r = registry();
        let m = HttpMetrics::new(&mut r);
        m.requests
            .get_or_create(&RequestLabels {
                method: "GET".into(),
                route: "/v1/sandboxes/{id}".into(),
                status: 200,
            })
            .inc();
        let text = encode(&r);
        assert!(
            text.contains(
                r#"sandboxctl_http_requests_total{method="GET",route="/v1/sandboxes/{id}",status="200"} 1"#
            ),
            "{text}"
        );
    }
}
