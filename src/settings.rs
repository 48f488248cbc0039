//! Small value types parsed from flags and environment variables.

use std::time::Duration;

/// Parses `30s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 30.0 * 86400.0 {
        return Err(format!(
            "'{s}' is out of range (more than 0, at most 30 days)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a listen address for an optional listener: `HOST:PORT`, or `off` for none.
pub fn parse_optional_listen(s: &str) -> Result<OptionalListen, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(OptionalListen(None));
    }
    s.parse()
        .map(|a| OptionalListen(Some(a)))
        .map_err(|_| format!("'{s}' is not an address like 127.0.0.1:9464 (or 'off')"))
}

/// A listener's address, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalListen(pub Option<std::net::SocketAddr>);

/// A sampling interval: a duration of at least one second.
pub fn parse_sample_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("'{s}' is too short (at least 1s)"));
    }
    Ok(d)
}

/// A DNS domain (`sbx.example.com`): dot-separated labels of letters, digits and `-`, made
/// lower-case, without a trailing dot.
pub fn parse_domain(s: &str) -> Result<String, String> {
    let d = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if d.is_empty() || d.len() > 253 || !d.split('.').all(label_ok) {
        return Err(format!(
            "'{s}' is not a domain name (like sbx.example.com: letters, digits, '-' and dots)"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert_eq!(parse_domain("Sbx.Example.com.").unwrap(), "sbx.example.com");
        for bad in ["", "a..b", "-a.b", "a_b.c", "http://x.y", "*.x.y"] {
            assert!(parse_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_sample_interval("5s").unwrap(), Duration::from_secs(5));
        assert!(parse_sample_interval("500ms").is_err());
    }
}
