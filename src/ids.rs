//! Random, prefixed, URL-safe identifiers (`usr_…`, `team_…`, `host_…`, `sbx_…`, `key_…`, `tpl_…`,
//! `ses_…`), and a newtype for each kind that checks its format when parsed from text a caller
//! sent (`FromStr`, `Deserialize`), so a malformed id is refused at the edge.

use std::fmt;
use std::str::FromStr;

use rand::RngExt;

const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A new id: `prefix_` followed by 16 random lower-case alphanumerics (~82 bits).
pub fn new_id(prefix: &str) -> String {
    let mut rng = rand::rng();
    let tail: String = (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}_{tail}")
}

/// True when `s` looks like an id with this prefix (safe to use as a path component).
pub fn is_valid(prefix: &str, s: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .is_some_and(|t| {
            !t.is_empty()
                && t.len() <= 60
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// A parsed text is not an id of the wanted kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a {what} id ({prefix}_…)")]
pub struct BadId {
    pub what: &'static str,
    pub prefix: &'static str,
}

/// What every typed id offers generic code (an extractor that refuses a malformed one, say).
pub trait TypedId: FromStr<Err = BadId> + fmt::Display {
    /// What the id names, for messages ("sandbox not found").
    const WHAT: &'static str;
}

/// A new sandbox id: `sbx-` followed by 16 random lower-case alphanumerics, a valid DNS label
/// (sandbox ids appear in host names: `{port}-{id}.{domain}`).
pub fn new_sandbox_id() -> String {
    new_id("sbx").replacen('_', "-", 1)
}

/// True for a sandbox id: a DNS-safe one (`sbx-` and 1 to 59 lower-case letters and digits)
/// or one made before ids were DNS-safe (`sbx_…`, still read from existing databases).
pub fn is_valid_sandbox_id(s: &str) -> bool {
    match s.strip_prefix("sbx-") {
        Some(t) => {
            (1..=59).contains(&t.len())
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        }
        None => is_valid("sbx", s),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        id_type!($(#[$doc])* $name, $prefix, $what, new_id($prefix), |s| is_valid($prefix, s));
    };
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal, $generate:expr, $valid:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new random id.
            pub fn generate() -> Self {
                Self($generate)
            }

            /// An id read back from our own storage, which only ever holds ids this server made
            /// (or the operator set up); not for text a caller sent — parse that.
            pub fn from_stored(s: impl Into<String>) -> Self {
                Self(s.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl TypedId for $name {
            const WHAT: &'static str = $what;
        }

        impl FromStr for $name {
            type Err = BadId;
            fn from_str(s: &str) -> Result<Self, BadId> {
                let valid: fn(&str) -> bool = $valid;
                if valid(s) {
                    Ok(Self(s.to_string()))
                } else {
                    Err(BadId {
                        what: $what,
                        prefix: $prefix,
                    })
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                self == &other.0
            }
        }
    };
}

id_type!(
    /// A sandbox (`sbx-…`, a DNS label; `sbx_…` for sandboxes made by older versions).
    SandboxId, "sbx", "sandbox", new_sandbox_id(), is_valid_sandbox_id
);
id_type!(
    /// A host (`host_…`).
    HostId, "host", "host"
);
id_type!(
    /// A team (`team_…`).
    TeamId, "team", "team"
);
id_type!(
    /// A team template (`tpl_…`); base templates are named, not ids.
    TemplateId, "tpl", "template"
);
id_type!(
    /// A user (`usr_…`).
    UserId, "usr", "user"
);
id_type!(
    /// An API key (`key_…`).
    KeyId, "key", "API key"
);
id_type!(
    /// A team invite (`inv_…`); the invite's secret token is something else.
    InviteId, "inv", "invite"
);
id_type!(
    /// A user's sign-in session (`ses_…`): every user token names one.
    SessionId, "ses", "session"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_prefix_and_are_unique() {
        let a = new_id("sbx");
        let b = new_id("sbx");
        assert!(a.starts_with("sbx_") && a.len() == 20);
        assert_ne!(a, b);
        assert!(is_valid("sbx", &a));
        assert!(!is_valid("sbx", "sbx_../etc"));
        assert!(!is_valid("sbx", "host_abc"));
        assert!(!is_valid("sbx", "sbx_"));
    }

    #[test]
    fn typed_ids_check_their_format_when_parsed() {
        let id = SandboxId::generate();
        assert_eq!(id.as_str().parse::<SandboxId>().unwrap(), id);
        assert_eq!(
            "sbx_../etc".parse::<SandboxId>(),
            Err(BadId {
                what: "sandbox",
                prefix: "sbx"
            })
        );
        assert!("host_abc".parse::<SandboxId>().is_err());
        // New ids are DNS labels; old ones still parse.
        assert!(id.starts_with("sbx-") && id.len() == 20);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
        assert!("sbx_Old-id_1".parse::<SandboxId>().is_ok());
        for bad in ["sbx-", "sbx-Upper", "sbx-a_b", "sbx-a.b", "sbx-a-"] {
            assert!(bad.parse::<SandboxId>().is_err(), "{bad}");
        }
        assert!("host_abc".parse::<HostId>().is_ok());
        assert!(serde_json::from_str::<TeamId>(r#""team_x1""#).is_ok());
        assert!(serde_json::from_str::<TeamId>(r#""team_""#).is_err());
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{id}\""));
        assert_eq!(id, id.as_str());
    }
}
