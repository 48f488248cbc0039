//! The closed vocabularies of the API: sandbox and host statuses, team roles, template kinds and
//! what an idle timeout does. Each is an enum that travels as the same lower-case string as
//! before (`"running"`, `"owner"`…), so the JSON on the wire is unchanged. The server stores them
//! as those strings too (its `db` layer implements the SQLite conversions).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string is not a word of the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{value}'")]
pub struct UnknownWord {
    pub what: &'static str,
    pub value: String,
}

macro_rules! vocabulary {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownWord { what: $what, value: s.to_string() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

vocabulary!(
    /// Where a sandbox is in its life (docs/ARCHITECTURE.md#state-machines); the transitions are in
    /// `server::state`.
    SandboxStatus, "sandbox status" {
        Pending => "pending",
        Starting => "starting",
        Running => "running",
        Paused => "paused",
        Stopped => "stopped",
        Error => "error",
        Missing => "missing",
    }
);

vocabulary!(
    /// Where a host is in its life (docs/ARCHITECTURE.md#state-machines); the transitions are in
    /// `server::state`.
    HostStatus, "host status" {
        Pending => "pending",
        Online => "online",
        Unreachable => "unreachable",
        Draining => "draining",
    }
);

vocabulary!(
    /// A member's role in a team.
    TeamRole, "role" {
        Owner => "owner",
        Admin => "admin",
        Member => "member",
    }
);

vocabulary!(
    /// Who may sign up on a server (`server --signup`): only with a team invite, anyone, or no one.
    /// The first account of a fresh server is created in every mode (the bootstrap).
    SignupMode, "signup mode" {
        Invite => "invite",
        Open => "open",
        Closed => "closed",
    }
);

vocabulary!(
    /// What a template is: one the agents build, a team's snapshot of a sandbox, or a team's
    /// imported root filesystem.
    TemplateKind, "template kind" {
        Base => "base",
        Snapshot => "snapshot",
        Image => "image",
    }
);

vocabulary!(
    /// What happens to a sandbox idle past its timeout.
    OnTimeout, "on_timeout" {
        Pause => "pause",
        Kill => "kill",
    }
);

/// The API's default: a sandbox idle past its timeout is paused.
impl Default for OnTimeout {
    fn default() -> Self {
        OnTimeout::Pause
    }
}

impl TeamRole {
    /// Owners and admins manage the team's members, hosts and settings.
    pub fn is_team_admin(self) -> bool {
        matches!(self, TeamRole::Owner | TeamRole::Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T>(all: &[T])
    where
        T: Copy
            + fmt::Debug
            + PartialEq
            + Serialize
            + for<'de> Deserialize<'de>
            + FromStr
            + fmt::Display,
    {
        for v in all {
            let json = serde_json::to_string(v).unwrap();
            assert_eq!(json, format!("\"{v}\""), "serialized as its word");
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), *v);
        }
    }

    #[test]
    fn words_travel_as_before() {
        round_trip(SandboxStatus::ALL);
        round_trip(HostStatus::ALL);
        round_trip(TeamRole::ALL);
        round_trip(TemplateKind::ALL);
        round_trip(OnTimeout::ALL);
        round_trip(SignupMode::ALL);
        assert_eq!(
            serde_json::to_string(&SandboxStatus::Running).unwrap(),
            r#""running""#
        );
        assert_eq!(
            serde_json::to_string(&OnTimeout::Kill).unwrap(),
            r#""kill""#
        );
        assert!(serde_json::from_str::<OnTimeout>(r#""Pause""#).is_err());
        assert_eq!(
            "sleep".parse::<OnTimeout>().unwrap_err().to_string(),
            "unknown on_timeout 'sleep'"
        );
        assert!(TeamRole::Admin.is_team_admin() && !TeamRole::Member.is_team_admin());
        assert_eq!(HostStatus::Draining, "draining");
    }
}
