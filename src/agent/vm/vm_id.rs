//! A VM's id: the sandbox id (`sbx-…`, or `sbx_…` from older servers), which names the VM's
//! folder, so it must be a safe path component.

use super::{VmError, bad};

/// `sbx-` followed by 1 to 59 of `[a-z0-9]`, or `sbx_` followed by 1 to 60 of `[A-Za-z0-9_-]`:
/// ids become path components.
pub fn validate_id(id: &str) -> Result<(), VmError> {
    let dns = id.strip_prefix("sbx-").is_some_and(|rest| {
        (1..=59).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    });
    let ok = dns
        || id.strip_prefix("sbx_").is_some_and(|rest| {
            (1..=60).contains(&rest.len())
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(bad(
            "id",
            "must match ^sbx-[a-z0-9]{1,59}$ (or ^sbx_[A-Za-z0-9_-]{1,60}$)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_safe_path_components() {
        assert!(validate_id("sbx_abc-DEF_09").is_ok());
        assert!(validate_id("sbx-abc09").is_ok());
        assert!(validate_id("sbx-abc/x").is_err());
        for bad in [
            "sbx_",
            "abc",
            "sbx_../x",
            "sbx_a/b",
            "sbx_a.b",
            "SBX_a",
            &format!("sbx_{}", "a".repeat(61)),
        ] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
