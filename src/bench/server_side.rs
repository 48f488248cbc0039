//! The server's own view of a request's latency: its `http_request_duration_seconds` histogram
//! (time from the request reaching the router to the response head), read from `/metrics` before
//! and after the load. Beside the load generator's figures (from each request's scheduled send)
//! it tells the server's work from the time a request waits for a core or a connection.

use std::collections::BTreeMap;

/// Bucket counts (upper bound in seconds → cumulative count) of one route's histogram.
pub type Buckets = BTreeMap<u64, u64>;

/// Microseconds, as a sortable key for a bucket bound (`+Inf` is `u64::MAX`).
fn bound_key(le: &str) -> Option<u64> {
    if le == "+Inf" {
        return Some(u64::MAX);
    }
    let secs: f64 = le.parse().ok()?;
    Some((secs * 1e6).round() as u64)
}

/// The buckets of `method route` in a Prometheus text exposition.
pub fn buckets(exposition: &str, method: &str, route: &str) -> Buckets {
    let name = format!(
        "{}_http_request_duration_seconds_bucket{{",
        crate::prom::PREFIX
    );
    let (want_method, want_route) = (format!("method=\"{method}\""), format!("route=\"{route}\""));
    let mut out = Buckets::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(&name) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let labels: Vec<&str> = labels.split(',').collect();
        if !labels.contains(&want_method.as_str()) || !labels.contains(&want_route.as_str()) {
            continue;
        }
        let le = labels
            .iter()
            .find_map(|l| l.strip_prefix("le=\"")?.strip_suffix('"'));
        if let (Some(k), Ok(n)) = (le.and_then(bound_key), value.trim().parse::<f64>()) {
            out.insert(k, n as u64);
        }
    }
    out
}

/// The `q` quantile in milliseconds of what was observed between `before` and `after`, by
/// linear interpolation inside its bucket (as Prometheus's `histogram_quantile`).
pub fn quantile_ms(before: &Buckets, after: &Buckets, q: f64) -> Option<f64> {
    let delta: Vec<(u64, u64)> = after
        .iter()
        .map(|(k, n)| (*k, n.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .collect();
    let total = delta.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0u64, 0u64);
    for (bound, count) in delta {
        if count as f64 >= rank {
            if bound == u64::MAX {
                return Some(lower as f64 / 1000.0);
            }
            let inside = (count - below) as f64;
            let frac = if inside > 0.0 {
                (rank - below as f64) / inside
            } else {
                1.0
            };
            return Some((lower as f64 + (bound - lower) as f64 * frac) / 1000.0);
        }
        lower = bound;
        below = count;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_delta_of_two_scrapes() {
        let text = |n1: u64, n2: u64, n3: u64| {
            format!(
                "# TYPE x histogram\n\
                 sandboxctl_http_request_duration_seconds_bucket{{method=\"GET\",route=\"/v1/sandboxes/{{id}}\",le=\"0.001\"}} {n1}\n\
                 sandboxctl_http_request_duration_seconds_bucket{{method=\"GET\",route=\"/v1/sandboxes/{{id}}\",le=\"0.002\"}} {n2}\n\
                 sandboxctl_http_request_duration_seconds_bucket{{method=\"GET\",route=\"/v1/sandboxes/{{id}}\",le=\"+Inf\"}} {n3}\n\
                 sandboxctl_http_request_duration_seconds_bucket{{method=\"POST\",route=\"/v1/sandboxes/{{id}}\",le=\"0.001\"}} 999\n"
            )
        };
        let before = buckets(&text(10, 10, 10), "GET", "/v1/sandboxes/{id}");
        let after = buckets(&text(60, 110, 110), "GET", "/v1/sandboxes/{id}");
        assert_eq!(before.len(), 3);
        // 50 observations under 1 ms, 50 between 1 and 2 ms.
        assert_eq!(quantile_ms(&before, &after, 0.5), Some(1.0));
        let p99 = quantile_ms(&before, &after, 0.99).unwrap();
        assert!((p99 - 1.98).abs() < 1e-9, "{p99}");
        assert_eq!(quantile_ms(&after, &after, 0.5), None);
    }
}
