//! The limits a sandbox request must keep, pure and shared by every front-end.

use std::collections::BTreeMap;

use super::error::{SandboxError, SandboxResult};
use crate::proto::vocab::OnTimeout;

pub const DEFAULT_TEMPLATE: &str = "minimal";
pub const DEFAULT_VCPUS: u32 = 1;
pub const DEFAULT_MEMORY_MB: u32 = 256;
pub const DEFAULT_TIMEOUT_SEC: u64 = 300;
pub const MAX_VCPUS: u32 = 16;
pub const MIN_MEMORY_MB: u32 = 128;
pub const MAX_MEMORY_MB: u32 = 65536;
pub const MAX_TIMEOUT_SEC: u64 = 7 * 86400;
const MAX_MAP_ENTRIES: usize = 100;
const MAX_VALUE_BYTES: usize = 4096;

/// Metadata: string keys and values (env follows `proto::validate::validate_env`).
pub fn check_metadata(field: &str, m: &BTreeMap<String, String>) -> SandboxResult<()> {
    if m.len() > MAX_MAP_ENTRIES {
        return Err(SandboxError::invalid(
            field,
            format!("at most {MAX_MAP_ENTRIES} entries"),
        ));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > 128 || k.chars().any(char::is_control) {
            return Err(SandboxError::invalid(
                field,
                "keys must be 1 to 128 printable characters",
            ));
        }
        if v.len() > MAX_VALUE_BYTES || v.contains('\0') {
            return Err(SandboxError::invalid(
                &format!("{field}.{k}"),
                format!("values must be at most {MAX_VALUE_BYTES} bytes, no NUL"),
            ));
        }
    }
    Ok(())
}

pub fn valid_template_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !t.starts_with('.')
}

/// A template name as a request gives it.
pub fn check_template_name(field: &str, t: &str) -> SandboxResult<()> {
    if valid_template_name(t) {
        Ok(())
    } else {
        Err(SandboxError::invalid(
            field,
            "1 to 64 letters, digits, '-', '_' or '.'",
        ))
    }
}

/// vCPUs and memory within the limits.
pub fn check_size(vcpus: u32, memory_mb: u32) -> SandboxResult<()> {
    if !(1..=MAX_VCPUS).contains(&vcpus) {
        return Err(SandboxError::invalid(
            "vcpus",
            format!("must be 1 to {MAX_VCPUS}"),
        ));
    }
    if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&memory_mb) {
        return Err(SandboxError::invalid(
            "memory_mb",
            format!("must be {MIN_MEMORY_MB} to {MAX_MEMORY_MB}"),
        ));
    }
    Ok(())
}

/// An idle timeout: 0 (never) to a week.
pub fn check_timeout(timeout_sec: u64) -> SandboxResult<()> {
    if timeout_sec > MAX_TIMEOUT_SEC {
        return Err(SandboxError::invalid(
            "timeout_sec",
            format!("must be 0 (never) to {MAX_TIMEOUT_SEC}"),
        ));
    }
    Ok(())
}

/// An absolute deadline in seconds from now: 0 (none) to a week.
pub fn check_deadline(field: &str, secs: u64) -> SandboxResult<()> {
    if secs > MAX_TIMEOUT_SEC {
        return Err(SandboxError::invalid(
            field,
            format!("must be 0 (none) to {MAX_TIMEOUT_SEC}"),
        ));
    }
    Ok(())
}

/// What an idle timeout does, as a request spells it.
pub fn parse_on_timeout(s: &str) -> SandboxResult<OnTimeout> {
    s.parse()
        .map_err(|_| SandboxError::invalid("on_timeout", "must be pause or kill"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert!(check_size(1, 128).is_ok() && check_size(16, 65536).is_ok());
        assert!(check_size(0, 256).is_err() && check_size(17, 256).is_err());
        assert!(check_size(1, 127).is_err() && check_size(1, 65537).is_err());
        assert!(check_timeout(0).is_ok() && check_timeout(MAX_TIMEOUT_SEC + 1).is_err());
        assert_eq!(parse_on_timeout("kill").unwrap(), OnTimeout::Kill);
        assert!(parse_on_timeout("Kill").is_err());
        assert!(valid_template_name("my-tpl.v2") && !valid_template_name(".hidden"));
        let meta = BTreeMap::from([("1X".to_string(), "v".to_string())]);
        assert!(check_metadata("metadata", &meta).is_ok());
        let nul = BTreeMap::from([("k".to_string(), "a\0b".to_string())]);
        assert!(check_metadata("metadata", &nul).is_err());
    }
}
