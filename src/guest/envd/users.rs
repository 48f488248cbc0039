//! Who a request acts as: Linux accounts of the guest, chosen by `Authorization: Basic
//! base64("name:")` (RPCs) or `?username=` (`/files`); without one, `user` if the guest has
//! that account, else root. An unknown name is refused.

use std::path::PathBuf;

use axum::http::{HeaderMap, header};
use base64::Engine;

/// The account envd prefers when a request names none (E2B templates have it).
pub(super) const DEFAULT_USER: &str = "user";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) home: PathBuf,
    pub(crate) shell: String,
}

impl User {
    fn root() -> User {
        User {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: PathBuf::from("/root"),
            shell: "/bin/sh".into(),
        }
    }

    /// The groups the account is in besides its primary one (from /etc/group).
    pub(crate) fn groups(&self) -> Vec<u32> {
        let mut out = vec![self.gid];
        for line in read("/etc/group").lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 4
                && f[3].split(',').any(|m| m == self.name)
                && let Ok(gid) = f[2].parse::<u32>()
                && !out.contains(&gid)
            {
                out.push(gid);
            }
        }
        out
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn parse_passwd_line(line: &str) -> Option<User> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 7 {
        return None;
    }
    Some(User {
        name: f[0].to_string(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: PathBuf::from(if f[5].is_empty() { "/" } else { f[5] }),
        shell: if f[6].is_empty() { "/bin/sh" } else { f[6] }.to_string(),
    })
}

/// The account called `name`, from /etc/passwd (root even without one).
pub(crate) fn lookup(name: &str) -> Option<User> {
    let found = read("/etc/passwd")
        .lines()
        .filter_map(parse_passwd_line)
        .find(|u| u.name == name);
    match found {
        None if name == "root" => Some(User::root()),
        other => other,
    }
}

/// The account for a request that names none.
pub(crate) fn default_user() -> User {
    lookup(DEFAULT_USER).unwrap_or_else(User::root)
}

/// The account named `name`, or the default one when `name` is None or empty.
pub(crate) fn select(name: Option<&str>) -> Result<User, String> {
    match name.filter(|n| !n.is_empty()) {
        None => Ok(default_user()),
        Some(n) => lookup(n).ok_or_else(|| format!("user {n:?} does not exist in the sandbox")),
    }
}

/// The user named by `Authorization: Basic base64("name:")`, if the header is there.
pub(crate) fn basic_username(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not text".to_string())?;
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return Err("the Authorization header must be Basic base64(\"user:\")".into());
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| "the Authorization header is not base64".to_string())?;
    let text = String::from_utf8(decoded)
        .map_err(|_| "the Authorization header is not UTF-8".to_string())?;
    let name = text.split(':').next().unwrap_or_default();
    Ok(Some(name.to_string()))
}

/// The name of user `uid` (its number when the guest has no such account).
pub(crate) fn user_name(uid: u32) -> String {
    read("/etc/passwd")
        .lines()
        .filter_map(parse_passwd_line)
        .find(|u| u.uid == uid)
        .map(|u| u.name)
        .unwrap_or_else(|| {
            if uid == 0 {
                "root".into()
            } else {
                uid.to_string()
            }
        })
}

/// The name of group `gid` (its number when the guest has no such group).
pub(crate) fn group_name(gid: u32) -> String {
    read("/etc/group")
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 3 && f[2].parse::<u32>().ok() == Some(gid)).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| {
            if gid == 0 {
                "root".into()
            } else {
                gid.to_string()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn passwd_lines() {
        let u = parse_passwd_line("user:x:1000:1000::/home/user:/bin/bash").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.to_str()),
            (1000, 1000, Some("/home/user"))
        );
        assert!(parse_passwd_line("broken").is_none());
    }

    #[test]
    fn basic_auth() {
        let mut h = HeaderMap::new();
        assert_eq!(basic_username(&h), Ok(None));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjo="),
        );
        assert_eq!(basic_username(&h), Ok(Some("user".into())));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(basic_username(&h).is_err());
        assert_eq!(select(Some("root")).unwrap().uid, 0);
        assert!(select(Some("no-such-user-here")).is_err());
    }
}
