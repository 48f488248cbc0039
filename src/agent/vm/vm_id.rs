//! A VM's id: the sandbox id (`sbx_…`), which names the VM's folder, so it must be a safe path
//! component.

use super::{VmError, bad};

/// `sbx_` followed by 1 to 60 of `[A-Za-z0-9_-]`: ids become path components.
pub fn validate_id(id: &str) -> Result<(), VmError> {
    let ok = id.strip_prefix("sbx_").is_some_and(|rest| {
        (1..=60).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    if ok {
        Ok(())
    } else {
        Err(bad("id", "must match ^sbx_[A-Za-z0-9_-]{1,60}$"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_safe_path_components() {
        assert!(validate_id("sbx_abc-DEF_09").is_ok());
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
