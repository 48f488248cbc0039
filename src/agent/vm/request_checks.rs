//! What the agent checks in a request before it acts: VM ids, commands, env.

use std::collections::BTreeMap;

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

/// What one-shot and streamed execs both check: the command, its arguments, env and cwd.
pub(super) fn check_command(
    cmd: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
) -> Result<(), VmError> {
    if cmd.is_empty() || cmd.contains('\0') {
        return Err(bad("cmd", "must be a non-empty command name or path"));
    }
    if args.iter().any(|a| a.contains('\0')) {
        return Err(bad("args", "must not contain NUL bytes"));
    }
    validate_env(env)?;
    if let Some(cwd) = cwd
        && (!cwd.starts_with('/') || cwd.contains('\0'))
    {
        return Err(bad("cwd", "must be an absolute path"));
    }
    Ok(())
}

pub(super) fn validate_env(env: &BTreeMap<String, String>) -> Result<(), VmError> {
    for (k, v) in env {
        let mut bytes = k.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad("env", format!("{k:?} is not a valid variable name")));
        }
        if v.contains('\0') {
            return Err(bad("env", format!("the value of {k} contains a NUL byte")));
        }
    }
    Ok(())
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

    #[test]
    fn env_names_are_checked() {
        let mut env = BTreeMap::new();
        env.insert("GOOD_1".to_string(), "x".to_string());
        assert!(validate_env(&env).is_ok());
        env.insert("1BAD".to_string(), "x".to_string());
        assert!(matches!(
            validate_env(&env),
            Err(VmError::BadRequest { field: "env", .. })
        ));
    }
}
