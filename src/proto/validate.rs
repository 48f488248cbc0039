//! What a caller may ask to run in a sandbox, written once: the command, its arguments, env, cwd
//! and timeout, terminal sizes, signals, and the file requests of the guest channel. Every hop
//! calls the same `validate()`: the server (a 400 naming the field), the agent's API, and the
//! guest, which refuses what a broken or hostile host sends.

use std::collections::BTreeMap;

use super::api::{ExecRequest, ExecStreamStart, PtySize};
use super::guest::{ExecStart, FileRequest, Init, Signal};
pub use super::invalid::Invalid;
use super::path::{MAX_PATH_BYTES, check_mode};

/// Longest command name or path, in bytes.
pub const MAX_CMD_BYTES: usize = 4096;
/// Most arguments a command may get, and the longest one.
pub const MAX_ARGS: usize = 4096;
pub const MAX_ARG_BYTES: usize = 128 * 1024;
/// Most variables in an env (a sandbox's or an exec's), the longest name and the longest value.
pub const MAX_ENV_ENTRIES: usize = 100;
pub const MAX_ENV_NAME_BYTES: usize = 128;
pub const MAX_ENV_VALUE_BYTES: usize = 4096;
/// Longest `timeout_sec` of an exec, one-shot or streamed.
pub const MAX_EXEC_TIMEOUT_SEC: u64 = 3600;
/// Largest number of rows or columns of a PTY.
pub const MAX_PTY_SIDE: u16 = 1000;

/// A variable name: letters, digits and `_`, not starting with a digit, at most
/// [`MAX_ENV_NAME_BYTES`].
pub fn valid_env_name(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_ENV_NAME_BYTES
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// An environment: at most [`MAX_ENV_ENTRIES`] variables with valid names and values of at most
/// [`MAX_ENV_VALUE_BYTES`] without NUL. `field` names it in the error (`env`).
pub fn validate_env(field: &'static str, env: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if env.len() > MAX_ENV_ENTRIES {
        return Err(Invalid::new(
            field,
            format!("at most {MAX_ENV_ENTRIES} entries"),
        ));
    }
    for (k, v) in env {
        if !valid_env_name(k) {
            return Err(Invalid::keyed(
                field,
                k,
                "not a valid variable name (letters, digits, _)",
            ));
        }
        if v.len() > MAX_ENV_VALUE_BYTES || v.contains('\0') {
            return Err(Invalid::keyed(
                field,
                k,
                format!("values must be at most {MAX_ENV_VALUE_BYTES} bytes, no NUL"),
            ));
        }
    }
    Ok(())
}

/// The program and its arguments, whatever runs them.
fn validate_program(cmd: &str, args: &[String]) -> Result<(), Invalid> {
    if cmd.is_empty() || cmd.len() > MAX_CMD_BYTES || cmd.contains('\0') {
        return Err(Invalid::new(
            "cmd",
            "required: the program to run (not through a shell)",
        ));
    }
    if args.len() > MAX_ARGS
        || args
            .iter()
            .any(|a| a.contains('\0') || a.len() > MAX_ARG_BYTES)
    {
        return Err(Invalid::new(
            "args",
            "at most 4096 arguments of at most 128 KiB, no NUL bytes",
        ));
    }
    Ok(())
}

/// The working directory: absolute, at most [`MAX_PATH_BYTES`], no NUL (the guest says whether
/// it exists).
fn validate_cwd(cwd: Option<&str>) -> Result<(), Invalid> {
    if let Some(cwd) = cwd
        && (!cwd.starts_with('/') || cwd.len() > MAX_PATH_BYTES || cwd.contains('\0'))
    {
        return Err(Invalid::new("cwd", "must be an absolute path"));
    }
    Ok(())
}

fn validate_timeout_sec(t: Option<u64>) -> Result<(), Invalid> {
    if let Some(t) = t
        && !(1..=MAX_EXEC_TIMEOUT_SEC).contains(&t)
    {
        return Err(Invalid::new(
            "timeout_sec",
            format!("must be 1 to {MAX_EXEC_TIMEOUT_SEC}"),
        ));
    }
    Ok(())
}

impl ExecRequest {
    pub fn validate(&self) -> Result<(), Invalid> {
        // The order of the checks decides which of several bad fields is named.
        validate_program(&self.cmd, &self.args)?;
        validate_timeout_sec(self.timeout_sec)?;
        validate_env("env", &self.env)?;
        validate_cwd(self.cwd.as_deref())
    }
}

impl ExecStreamStart {
    pub fn validate(&self) -> Result<(), Invalid> {
        validate_program(&self.cmd, &self.args)?;
        validate_timeout_sec(self.timeout_sec)?;
        validate_env("env", &self.env)?;
        validate_cwd(self.cwd.as_deref())?;
        self.pty.map_or(Ok(()), |p| p.validate())
    }
}

impl PtySize {
    /// Rows and columns from 1 to [`MAX_PTY_SIDE`].
    pub fn validate(&self) -> Result<(), Invalid> {
        let side = 1..=MAX_PTY_SIDE;
        if !side.contains(&self.rows) || !side.contains(&self.cols) {
            return Err(Invalid::new(
                "pty",
                format!("rows and cols must be 1 to {MAX_PTY_SIDE}"),
            ));
        }
        Ok(())
    }
}

impl ExecStart {
    /// The same rules as the API's requests; the timeout in milliseconds.
    pub fn validate(&self) -> Result<(), Invalid> {
        validate_program(&self.cmd, &self.args)?;
        validate_env("env", &self.env)?;
        validate_cwd(self.cwd.as_deref())?;
        if let Some(ms) = self.timeout_ms
            && !(1..=MAX_EXEC_TIMEOUT_SEC * 1000).contains(&ms)
        {
            return Err(Invalid::new(
                "timeout_ms",
                format!("must be 1 to {}", MAX_EXEC_TIMEOUT_SEC * 1000),
            ));
        }
        self.pty.map_or(Ok(()), |p| p.validate())
    }
}

impl Signal {
    /// A signal number from 1 to 64.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(1..=64).contains(&self.signal) {
            return Err(Invalid::new(
                "signal",
                "must be a signal number from 1 to 64",
            ));
        }
        Ok(())
    }
}

impl Init {
    /// The sandbox's env follows the rules of every env.
    pub fn validate(&self) -> Result<(), Invalid> {
        validate_env("env", &self.env)
    }
}

impl FileRequest {
    /// The path is checked when it is parsed ([`SandboxPath`](super::path::SandboxPath)); this
    /// adds what depends on the operation: `/` is never removed, a mode is at most 0o7777.
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            FileRequest::Remove { path, .. } if path.is_root() => {
                Err(Invalid::new("path", "refusing to remove /"))
            }
            FileRequest::Write {
                mode: Some(mode), ..
            } => check_mode(*mode),
            _ => Ok(()),
        }
    }

    /// The path the request is about.
    pub fn path(&self) -> &super::path::SandboxPath {
        match self {
            FileRequest::Read { path, .. }
            | FileRequest::Write { path, .. }
            | FileRequest::List { path, .. }
            | FileRequest::Stat { path }
            | FileRequest::Mkdir { path, .. }
            | FileRequest::Remove { path, .. } => path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::path::SandboxPath;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn exec(cmd: &str) -> ExecRequest {
        ExecRequest {
            cmd: cmd.into(),
            ..Default::default()
        }
    }

    #[test]
    fn env_names_values_and_size() {
        assert!(validate_env("env", &env(&[("GOOD_1", "x"), ("_x", "")])).is_ok());
        let e = validate_env("env", &env(&[("1BAD", "x")])).unwrap_err();
        assert_eq!((e.field, e.field_path().as_str()), ("env", "env.1BAD"));
        assert_eq!(
            e.to_string(),
            "env.1BAD: not a valid variable name (letters, digits, _)"
        );
        for bad in ["", "A-B", "A B", "É", "A=B"] {
            assert!(validate_env("env", &env(&[(bad, "x")])).is_err(), "{bad:?}");
        }
        let long = "A".repeat(MAX_ENV_NAME_BYTES + 1);
        assert!(validate_env("env", &env(&[(&long, "x")])).is_err());
        let e = validate_env("env", &env(&[("A", "a\0b")])).unwrap_err();
        assert_eq!(e.field_path(), "env.A");
        let big = "v".repeat(MAX_ENV_VALUE_BYTES + 1);
        assert!(validate_env("env", &env(&[("A", &big)])).is_err());
        let many: BTreeMap<String, String> = (0..=MAX_ENV_ENTRIES)
            .map(|i| (format!("V{i}"), String::new()))
            .collect();
        let e = validate_env("env", &many).unwrap_err();
        assert_eq!((e.field, e.key), ("env", None));
    }

    #[test]
    fn exec_requests() {
        assert!(exec("echo").validate().is_ok());
        assert_eq!(exec("").validate().unwrap_err().field, "cmd");
        assert_eq!(exec("a\0").validate().unwrap_err().field, "cmd");
        assert_eq!(exec(&"x".repeat(4097)).validate().unwrap_err().field, "cmd");
        let mut r = exec("echo");
        r.args = vec!["a\0b".into()];
        assert_eq!(r.validate().unwrap_err().field, "args");
        r.args = vec![String::new(); MAX_ARGS + 1];
        assert_eq!(r.validate().unwrap_err().field, "args");
        r.args = vec!["x".repeat(MAX_ARG_BYTES + 1)];
        assert_eq!(r.validate().unwrap_err().field, "args");
        let mut r = exec("echo");
        for (t, ok) in [(0, false), (1, true), (3600, true), (3601, false)] {
            r.timeout_sec = Some(t);
            assert_eq!(r.validate().is_ok(), ok, "{t}");
        }
        let mut r = exec("echo");
        r.env = env(&[("1BAD", "")]);
        assert_eq!(r.validate().unwrap_err().field_path(), "env.1BAD");
        let mut r = exec("echo");
        for (cwd, ok) in [
            ("/tmp", true),
            ("tmp", false),
            ("/a\0", false),
            ("/a/../b", true),
        ] {
            r.cwd = Some(cwd.into());
            assert_eq!(r.validate().is_ok(), ok, "{cwd:?}");
        }
        r.cwd = Some(format!("/{}", "a".repeat(4096)));
        assert_eq!(r.validate().unwrap_err().field, "cwd");
        // A bad command is named before a bad timeout, a bad timeout before a bad env.
        let mut r = exec("");
        r.timeout_sec = Some(0);
        assert_eq!(r.validate().unwrap_err().field, "cmd");
        let mut r = exec("echo");
        r.timeout_sec = Some(0);
        r.env = env(&[("1BAD", "")]);
        assert_eq!(r.validate().unwrap_err().field, "timeout_sec");
    }

    #[test]
    fn stream_starts_and_pty_sizes() {
        let mut s = ExecStreamStart {
            cmd: "sh".into(),
            ..Default::default()
        };
        assert!(s.validate().is_ok());
        s.timeout_sec = Some(3601);
        assert_eq!(s.validate().unwrap_err().field, "timeout_sec");
        s.timeout_sec = None;
        for (rows, cols, ok) in [
            (24, 80, true),
            (1, 1, true),
            (1000, 1000, true),
            (0, 80, false),
            (24, 0, false),
            (1001, 80, false),
            (24, 1001, false),
        ] {
            s.pty = Some(PtySize { rows, cols });
            assert_eq!(s.validate().is_ok(), ok, "{rows}x{cols}");
            assert_eq!(PtySize { rows, cols }.validate().is_ok(), ok);
        }
        assert_eq!(
            PtySize { rows: 0, cols: 0 }
                .validate()
                .unwrap_err()
                .to_string(),
            "pty: rows and cols must be 1 to 1000"
        );
    }

    #[test]
    fn guest_exec_starts() {
        let mut s = ExecStart {
            cmd: "true".into(),
            timeout_ms: Some(60_000),
            ..Default::default()
        };
        assert!(s.validate().is_ok());
        s.timeout_ms = Some(0);
        assert_eq!(s.validate().unwrap_err().field, "timeout_ms");
        s.timeout_ms = Some(MAX_EXEC_TIMEOUT_SEC * 1000 + 1);
        assert!(s.validate().is_err());
        s.timeout_ms = None;
        s.pty = Some(PtySize { rows: 0, cols: 80 });
        assert_eq!(s.validate().unwrap_err().field, "pty");
        s.pty = None;
        s.env = env(&[("A=B", "x")]);
        assert_eq!(s.validate().unwrap_err().field, "env");
        s.env = BTreeMap::new();
        s.cwd = Some("relative".into());
        assert_eq!(s.validate().unwrap_err().field, "cwd");
    }

    #[test]
    fn signals_and_inits() {
        assert!(Signal { signal: 9 }.validate().is_ok());
        assert!(Signal { signal: 64 }.validate().is_ok());
        assert!(Signal { signal: 0 }.validate().is_err());
        assert!(Signal { signal: 65 }.validate().is_err());
        let mut init = Init {
            sandbox_id: "sbx_a".into(),
            env: env(&[("A", "1")]),
            time_unix_ms: 0,
            entropy: Vec::new(),
            hostname: None,
            access_token: None,
        };
        assert!(init.validate().is_ok());
        init.env = env(&[("A\0", "1")]);
        assert!(init.validate().is_err());
    }

    #[test]
    fn file_requests() {
        let p = |s: &str| SandboxPath::parse(s).unwrap();
        let rm = |s: &str| FileRequest::Remove {
            path: p(s),
            recursive: true,
        };
        assert!(rm("/root/x").validate().is_ok());
        let e = rm("/").validate().unwrap_err();
        assert_eq!(e.to_string(), "path: refusing to remove /");
        let write = |mode| FileRequest::Write {
            path: p("/root/f"),
            mode,
        };
        assert!(write(None).validate().is_ok());
        assert!(write(Some(0o755)).validate().is_ok());
        assert_eq!(write(Some(0o10000)).validate().unwrap_err().field, "mode");
        assert!(FileRequest::Stat { path: p("/") }.validate().is_ok());
        assert_eq!(FileRequest::Stat { path: p("/x") }.path().as_str(), "/x");
        // A path that breaks the rules does not even parse off the wire.
        let bad = r#"{"op":"stat","path":"/root/../etc"}"#;
        assert!(serde_json::from_str::<FileRequest>(bad).is_err());
        let good = r#"{"op":"stat","path":"/root"}"#;
        assert!(serde_json::from_str::<FileRequest>(good).is_ok());
    }
}
