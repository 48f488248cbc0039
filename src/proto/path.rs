//! A path inside a sandbox, checked once when it is parsed: what the server, the agent and the
//! guest all accept for file operations. Also the octal permission bits of an upload.

use serde::{Deserialize, Serialize};

use super::invalid::Invalid;

/// Longest path, in bytes (Linux's PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
/// The largest permission bits a file may get.
pub const MAX_MODE: u32 = 0o7777;

/// An absolute path of at most [`MAX_PATH_BYTES`] bytes, without NUL, made of plain components:
/// no `.`, no `..` and no empty ones (so no `//` and no trailing `/`), except `/` itself. Nothing
/// is normalised: a path that is not already plain is refused, so every hop sees the same path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxPath(String);

impl SandboxPath {
    /// `path` if it follows the rules above; the error names the field `path`.
    pub fn parse(path: &str) -> Result<SandboxPath, Invalid> {
        if !path.starts_with('/') || path.len() > MAX_PATH_BYTES || path.contains('\0') {
            return Err(Invalid::new(
                "path",
                "must be an absolute path (at most 4096 bytes, no NUL)",
            ));
        }
        if path != "/"
            && path
                .split('/')
                .skip(1)
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(Invalid::new(
                "path",
                "must be a plain absolute path: no '.', '..' or empty components",
            ));
        }
        Ok(SandboxPath(path.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `/`.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }
}

impl TryFrom<String> for SandboxPath {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        SandboxPath::parse(&s)
    }
}

impl From<SandboxPath> for String {
    fn from(p: SandboxPath) -> String {
        p.0
    }
}

impl AsRef<str> for SandboxPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SandboxPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Permission bits written in octal, one to four digits (`644`, `0755`, `4755`).
pub fn parse_mode(mode: &str) -> Result<u32, Invalid> {
    let octal =
        !mode.is_empty() && mode.len() <= 4 && mode.bytes().all(|b| matches!(b, b'0'..=b'7'));
    octal
        .then(|| u32::from_str_radix(mode, 8).ok())
        .flatten()
        .ok_or_else(|| Invalid::new("mode", "octal permission bits such as 644"))
}

/// Permission bits as a number: at most [`MAX_MODE`].
pub fn check_mode(mode: u32) -> Result<(), Invalid> {
    if mode > MAX_MODE {
        return Err(Invalid::new("mode", "octal permission bits such as 644"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_absolute_paths_only() {
        for good in [
            "/",
            "/root",
            "/root/a b/ü.txt",
            "/a/.hidden",
            "/a/b..c",
            "/..a",
        ] {
            assert_eq!(SandboxPath::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "", "relative", "a/b", "/a/../b", "/..", "/.", "/a/./b", "//", "/a//b", "/a/", "/a\0b",
        ] {
            let e = SandboxPath::parse(bad).unwrap_err();
            assert_eq!(e.field, "path", "{bad:?}");
        }
        assert!(SandboxPath::parse(&format!("/{}", "a".repeat(4095))).is_ok());
        assert!(SandboxPath::parse(&format!("/{}", "a".repeat(4096))).is_err());
        assert!(SandboxPath::parse("/").unwrap().is_root());
        assert!(!SandboxPath::parse("/x").unwrap().is_root());
    }

    #[test]
    fn paths_are_checked_when_read_from_the_wire() {
        let p: SandboxPath = serde_json::from_str(r#""/etc/hostname""#).unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), r#""/etc/hostname""#);
        assert!(serde_json::from_str::<SandboxPath>(r#""/etc/../shadow""#).is_err());
        assert!(serde_json::from_str::<SandboxPath>(r#""etc""#).is_err());
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("644").unwrap(), 0o644);
        assert_eq!(parse_mode("0755").unwrap(), 0o755);
        assert_eq!(parse_mode("7777").unwrap(), 0o7777);
        for bad in ["", "8", "64a", "10000", "-644", "+644", " 644"] {
            assert_eq!(parse_mode(bad).unwrap_err().field, "mode", "{bad:?}");
        }
        assert!(check_mode(0o7777).is_ok());
        assert!(check_mode(0o10000).is_err());
    }
}
