//! The messages of E2B's envd (`process.Process`, `filesystem.Filesystem`) in ProtoJSON, the
//! encoding the E2B SDKs speak (/work/shared/E2B.md §3.1-3.3): lowerCamelCase out and both
//! cases in, proto3 defaults omitted, `int64` as strings, `bytes` as base64, enums by name (or
//! number in), a oneof as its one key, `optional` fields present whenever set.

use std::collections::BTreeMap;

use base64::Engine;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

// ---------------------------------------------------------------- ProtoJSON scalars

/// `bytes`: standard base64 with padding out; standard or URL-safe, padded or not, in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct B64(pub Vec<u8>);

impl Serialize for B64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        decode_b64(&s)
            .map(B64)
            .ok_or_else(|| de::Error::custom("not base64"))
    }
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = s.trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .ok()
}

/// A number that may come as a JSON number or a string (ProtoJSON accepts both for every
/// integer type).
fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Num(u32),
        Str(String),
    }
    match N::deserialize(d)? {
        N::Num(n) => Ok(n),
        N::Str(s) => s.parse().map_err(de::Error::custom),
    }
}

fn int64_as_string<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// A closed proto enum: its names on the wire, its numbers accepted too.
macro_rules! proto_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $num:literal => $wire:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub enum $name {
            #[default]
            $($variant),+
        }

        impl $name {
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }
            pub fn number(self) -> i32 {
                match self { $($name::$variant => $num),+ }
            }
            fn from_number(n: i64) -> Option<Self> {
                match n { $($num => Some($name::$variant),)+ _ => None }
            }
            fn from_name(s: &str) -> Option<Self> {
                match s { $($wire => Some($name::$variant),)+ _ => None }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = serde_json::Value::deserialize(d)?;
                let found = match &v {
                    serde_json::Value::String(s) => $name::from_name(s),
                    serde_json::Value::Number(n) => n.as_i64().and_then($name::from_number),
                    serde_json::Value::Null => Some($name::default()),
                    _ => None,
                };
                found.ok_or_else(|| {
                    de::Error::custom(format!("unknown {} value {v}", stringify!($name)))
                })
            }
        }
    };
}

// ---------------------------------------------------------------- process.Process

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    #[serde(default, deserialize_with = "lenient_u32")]
    pub cols: u32,
    #[serde(default, deserialize_with = "lenient_u32")]
    pub rows: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pty {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<PtySize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessConfig {
    #[serde(default)]
    pub cmd: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct StartRequest {
    #[serde(default)]
    pub process: ProcessConfig,
    #[serde(default)]
    pub pty: Option<Pty>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub stdin: Option<bool>,
}

/// Which process a call is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessSelector {
    Pid(#[serde(deserialize_with = "lenient_u32")] u32),
    Tag(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConnectRequest {
    pub process: ProcessSelector,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UpdateRequest {
    pub process: ProcessSelector,
    #[serde(default)]
    pub pty: Option<Pty>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessInput {
    Stdin(B64),
    Pty(B64),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SendInputRequest {
    pub process: ProcessSelector,
    #[serde(default)]
    pub input: Option<ProcessInput>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CloseStdinRequest {
    pub process: ProcessSelector,
}

proto_enum! {
    /// The signals `SendSignal` knows.
    Signal {
        Unspecified = 0 => "SIGNAL_UNSPECIFIED",
        Sigterm = 15 => "SIGNAL_SIGTERM",
        Sigkill = 9 => "SIGNAL_SIGKILL",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SendSignalRequest {
    pub process: ProcessSelector,
    #[serde(default)]
    pub signal: Signal,
}

/// One message of the `StreamInput` client stream (a oneof: one key).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StreamInputRequest {
    Start {
        process: ProcessSelector,
    },
    Data {
        #[serde(default)]
        input: Option<ProcessInput>,
    },
    Keepalive {},
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessInfo {
    pub config: ProcessConfig,
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ListResponse {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessInfo>,
}

/// Output of a process: stdout, stderr, or the terminal's output on a PTY.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DataEvent {
    Stdout(B64),
    Stderr(B64),
    Pty(B64),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub exit_code: i32,
    #[serde(skip_serializing_if = "is_false")]
    pub exited: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The events of `Start` and `Connect` streams: `start` first, `data`, one `end`; keepalives
/// while idle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessEvent {
    Start { pid: u32 },
    Data(DataEvent),
    End(EndEvent),
    Keepalive {},
}

/// `StartResponse` and `ConnectResponse` alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessEventResponse {
    pub event: ProcessEvent,
}

/// Every empty response (`{}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Empty {}

// ---------------------------------------------------------------- filesystem.Filesystem

proto_enum! {
    FileType {
        Unspecified = 0 => "FILE_TYPE_UNSPECIFIED",
        File = 1 => "FILE_TYPE_FILE",
        Directory = 2 => "FILE_TYPE_DIRECTORY",
        Symlink = 3 => "FILE_TYPE_SYMLINK",
    }
}

proto_enum! {
    EventType {
        Unspecified = 0 => "EVENT_TYPE_UNSPECIFIED",
        Create = 1 => "EVENT_TYPE_CREATE",
        Write = 2 => "EVENT_TYPE_WRITE",
        Remove = 3 => "EVENT_TYPE_REMOVE",
        Rename = 4 => "EVENT_TYPE_RENAME",
        Chmod = 5 => "EVENT_TYPE_CHMOD",
    }
}

impl FileType {
    fn is_unspecified(&self) -> bool {
        *self == FileType::Unspecified
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryInfo {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "type", skip_serializing_if = "FileType::is_unspecified")]
    pub kind: FileType,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(
        serialize_with = "int64_as_string",
        skip_serializing_if = "is_zero_i64"
    )]
    pub size: i64,
    /// Permission bits only (`0o644` is 420).
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub mode: u32,
    /// As `ls -l` shows them (`-rw-r--r--`, `drwxr-xr-x`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub permissions: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub owner: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified_time: Option<String>,
    /// The absolute target, for a symbolic link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub is_symlink: bool,
}

/// `Stat`, `MakeDir`, `Move` and `Remove`: a path (or two).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PathRequest {
    #[serde(default)]
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct MoveRequest {
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub destination: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ListDirRequest {
    #[serde(default)]
    pub path: String,
    #[serde(default, deserialize_with = "lenient_u32")]
    pub depth: u32,
}

/// `WatchDir` and `CreateWatcher`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct WatchRequest {
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub recursive: bool,
    #[serde(default, alias = "include_entry", rename = "includeEntry")]
    pub include_entry: bool,
    #[serde(default, alias = "allow_network_mounts", rename = "allowNetworkMounts")]
    pub allow_network_mounts: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct WatcherRequest {
    #[serde(default, alias = "watcher_id", rename = "watcherId")]
    pub watcher_id: String,
}

/// `Stat`, `MakeDir` and `Move` answer with one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryResponse {
    pub entry: EntryInfo,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ListDirResponse {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<EntryInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilesystemEvent {
    /// Relative to the watched directory.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: EventType,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum WatchDirResponse {
    Start {},
    Filesystem(FilesystemEvent),
    Keepalive {},
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateWatcherResponse {
    pub watcher_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GetWatcherEventsResponse {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<FilesystemEvent>,
}

// ---------------------------------------------------------------- /files

/// One uploaded file in the `POST /files` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteInfo {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// The JSON error of envd's plain HTTP endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpError {
    pub code: u16,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn start_request_accepts_what_the_sdk_sends() {
        let r: StartRequest = serde_json::from_value(json!({
            "process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo hi"], "envs": {"A": "1"}},
            "stdin": false, "unknownField": 1
        }))
        .unwrap();
        assert_eq!(r.process.args.len(), 3);
        assert_eq!(r.stdin, Some(false));
        let pty: StartRequest = serde_json::from_value(json!({
            "process": {"cmd": "/bin/bash"}, "pty": {"size": {"cols": 80, "rows": "24"}}
        }))
        .unwrap();
        assert_eq!(
            pty.pty.unwrap().size.unwrap(),
            PtySize { cols: 80, rows: 24 }
        );
    }

    #[test]
    fn events_follow_protojson() {
        let start = ProcessEventResponse {
            event: ProcessEvent::Start { pid: 42 },
        };
        assert_eq!(
            serde_json::to_value(&start).unwrap(),
            json!({"event": {"start": {"pid": 42}}})
        );
        let data = ProcessEventResponse {
            event: ProcessEvent::Data(DataEvent::Stdout(B64(b"hi\n".to_vec()))),
        };
        assert_eq!(
            serde_json::to_value(&data).unwrap(),
            json!({"event": {"data": {"stdout": "aGkK"}}})
        );
        let ok = EndEvent {
            exited: true,
            status: "exit status 0".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(ProcessEvent::End(ok)).unwrap(),
            json!({"end": {"exited": true, "status": "exit status 0"}})
        );
        assert_eq!(
            serde_json::to_value(ProcessEvent::Keepalive {}).unwrap(),
            json!({"keepalive": {}})
        );
        assert_eq!(
            serde_json::to_value(WatchDirResponse::Start {}).unwrap(),
            json!({"start": {}})
        );
    }

    #[test]
    fn selectors_signals_and_input() {
        let r: SendSignalRequest =
            serde_json::from_value(json!({"process": {"pid": 42}, "signal": "SIGNAL_SIGKILL"}))
                .unwrap();
        assert_eq!(r.signal, Signal::Sigkill);
        let r: SendSignalRequest =
            serde_json::from_value(json!({"process": {"tag": "t"}, "signal": 15})).unwrap();
        assert_eq!(
            (r.process, r.signal),
            (ProcessSelector::Tag("t".into()), Signal::Sigterm)
        );
        assert!(
            serde_json::from_value::<SendSignalRequest>(
                json!({"process": {"pid": 1}, "signal": "SIGHUP"})
            )
            .is_err()
        );
        let r: SendInputRequest =
            serde_json::from_value(json!({"process": {"pid": 42}, "input": {"stdin": "YWJj"}}))
                .unwrap();
        assert_eq!(r.input, Some(ProcessInput::Stdin(B64(b"abc".to_vec()))));
        // URL-safe and unpadded base64 are accepted too.
        let r: SendInputRequest =
            serde_json::from_value(json!({"process": {"pid": 1}, "input": {"pty": "-_8"}}))
                .unwrap();
        assert_eq!(r.input, Some(ProcessInput::Pty(B64(vec![0xfb, 0xff]))));
        let s: StreamInputRequest =
            serde_json::from_value(json!({"start": {"process": {"pid": 42}}})).unwrap();
        assert_eq!(
            s,
            StreamInputRequest::Start {
                process: ProcessSelector::Pid(42)
            }
        );
        let w: WatcherRequest = serde_json::from_value(json!({"watcher_id": "w1"})).unwrap();
        assert_eq!(w.watcher_id, "w1");
        let w: WatcherRequest = serde_json::from_value(json!({"watcherId": "w2"})).unwrap();
        assert_eq!(w.watcher_id, "w2");
    }

    #[test]
    fn entries_omit_defaults_and_send_int64_as_strings() {
        let e = EntryInfo {
            name: "a".into(),
            kind: FileType::File,
            path: "/tmp/a".into(),
            size: 1,
            mode: 0o644,
            permissions: "-rw-r--r--".into(),
            owner: "user".into(),
            group: "user".into(),
            modified_time: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"name": "a", "type": "FILE_TYPE_FILE", "path": "/tmp/a", "size": "1",
                   "mode": 420, "permissions": "-rw-r--r--", "owner": "user", "group": "user",
                   "modifiedTime": "2026-01-01T00:00:00Z"})
        );
        assert_eq!(
            serde_json::to_value(ListDirResponse::default()).unwrap(),
            json!({})
        );
    }
}
