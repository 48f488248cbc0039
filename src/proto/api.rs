//! The public REST API's request and response bodies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::proto::vocab::{HostStatus, OnTimeout, SandboxStatus, TemplateKind};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sandbox_ids: Option<Vec<String>>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct SignupRequest {
    pub email: String,
    pub password: String,
    pub name: String,
    /// A team invite's token: the new user joins that team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<String>,
    /// The server's one-time bootstrap token: lets the first account sign up from anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_token: Option<String>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct AuthResponse {
    pub token: String,
    pub user_id: String,
    pub team_id: Option<String>,
    pub email: String,
    pub name: String,
    pub is_admin: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeResponse {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub is_admin: bool,
    pub team_id: Option<String>,
    pub role: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateHostRequest {
    #[serde(rename = "type")]
    pub host_type: String,
    #[serde(default)]
    pub team_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostResponse {
    pub id: String,
    #[serde(rename = "type")]
    pub host_type: String,
    pub team_id: Option<String>,
    pub name: Option<String>,
    pub provider: Option<String>,
    pub zone: Option<String>,
    pub status: HostStatus,
    pub arch: Option<String>,
    pub cpu_cores: Option<u32>,
    pub memory_mb: Option<u64>,
    pub disk_gb: Option<u64>,
    pub address: Option<String>,
    pub accel: Option<String>,
    pub accel_reason: Option<String>,
    /// How the agent puts VMs in cgroups: "v2 PATH: cpu memory pids", or "none: why".
    pub cgroups: Option<String>,
    pub running_vms: Option<u32>,
    /// vCPUs and memory (MB) its live VMs were given, as of its last heartbeat.
    #[serde(default)]
    pub used_vcpus: Option<u32>,
    #[serde(default)]
    pub used_memory_mb: Option<u64>,
    pub last_heartbeat_at: Option<i64>,
    pub created_at: i64,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Base templates ready on the host, as of its last heartbeat.
    #[serde(default)]
    pub templates: Vec<String>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct CreateHostResponse {
    pub host: HostResponse,
    /// Shown once: `sandboxctl agent register --token …` consumes it.
    pub registration_token: String,
    pub registration_expires_at: i64,
    /// The command to paste on the new host.
    pub register_command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostListResponse {
    pub hosts: Vec<HostResponse>,
}

/// A new registration token for a pending host (or one whose credentials were revoked).
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub registration_token: String,
    pub registration_expires_at: i64,
    pub register_command: String,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("registration_expires_at", &self.registration_expires_at)
            .finish_non_exhaustive()
    }
}

/// What deleting a host would end: its live sandboxes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletePreview {
    pub host_id: String,
    pub sandbox_ids: Vec<String>,
}

/// A host's tags (replacing the ones it had).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagsRequest {
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateSandboxRequest {
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mb: Option<u32>,
    #[serde(default)]
    pub timeout_sec: Option<u64>,
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// `false`: no network device; `true` (default): the default egress policy; or a policy
    /// `{internet, allow_out, deny_out}`.
    #[serde(default)]
    pub network: Option<crate::proto::net::NetworkSetting>,
    /// What happens when `timeout_sec` of idleness pass, or the deadline `end_in_sec` does:
    /// `pause` (default) or `kill`.
    #[serde(default)]
    pub on_timeout: Option<String>,
    /// An absolute deadline, in seconds from now, whatever the activity (0 or absent: none).
    #[serde(default)]
    pub end_in_sec: Option<u64>,
    /// Boot the template from scratch instead of restoring its boot snapshot (slower; for
    /// measurements and debugging).
    #[serde(default)]
    pub cold_boot: Option<bool>,
    /// Its ports answer anyone who knows the address (default false: the sandbox's access
    /// token or a credential of its team is needed).
    #[serde(default)]
    pub public_ports: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxResponse {
    pub id: String,
    pub team_id: String,
    pub host_id: Option<String>,
    pub template: String,
    pub status: SandboxStatus,
    pub vcpus: u32,
    pub memory_mb: u32,
    pub timeout_sec: u64,
    pub metadata: BTreeMap<String, String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub error: Option<String>,
    /// Milliseconds the agent took from the create call to the guest's first answer.
    pub boot_ms: Option<u64>,
    /// `pause` or `kill`.
    #[serde(default)]
    pub on_timeout: OnTimeout,
    #[serde(default)]
    pub last_active_at: Option<i64>,
    /// When the idle timeout will pause or kill it (running sandboxes with a timeout).
    #[serde(default)]
    pub timeout_at: Option<i64>,
    /// How its VM started: `cold` or `snapshot`.
    #[serde(default)]
    pub boot_kind: Option<String>,
    /// The egress policy in force; null for a sandbox without a network device.
    #[serde(default)]
    pub network: Option<crate::proto::net::EgressPolicy>,
    /// Its ports answer without the access token.
    #[serde(default)]
    pub public_ports: bool,
    /// The sandbox's access token (`X-Access-Token` on its ports): in the answers to create
    /// and to a get by its team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// The absolute deadline (Unix seconds) at which it is paused or killed as `on_timeout`
    /// says; null: none.
    #[serde(default)]
    pub end_at: Option<i64>,
}

/// One usage sample of a running sandbox, taken by its host every few seconds (kept for the
/// last hour). The fields are E2B's `SandboxMetric`'s; sizes in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SandboxMetric {
    /// When the sample was taken, unix seconds.
    pub timestamp: i64,
    /// The sandbox's vCPUs.
    pub cpu_count: u32,
    /// CPU time used since the previous sample, in percent of all its vCPUs (0–100).
    pub cpu_used_pct: f64,
    /// Memory in use in the guest (total minus available).
    pub mem_used: u64,
    /// Memory the guest's kernel has (a little less than the sandbox's memory size).
    pub mem_total: u64,
    /// Page cache and buffers.
    pub mem_cache: u64,
    /// Used space of the guest's root filesystem.
    pub disk_used: u64,
    pub disk_total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxListResponse {
    pub sandboxes: Vec<SandboxResponse>,
}

/// A sandbox's idle timeout, counting from now. The CLI sends `on_timeout: null` to keep the
/// current choice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimeoutRequest {
    /// 0 = never.
    pub timeout_sec: u64,
    /// `pause` or `kill`.
    #[serde(default)]
    pub on_timeout: Option<String>,
}

/// A sandbox's absolute deadline, counting from now: it may move it earlier or later.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadlineRequest {
    /// Seconds from now; 0 removes the deadline.
    pub end_in_sec: u64,
}

/// A one-shot command in a sandbox. `cmd` runs directly (looked up in PATH), not through a shell.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub timeout_sec: Option<u64>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecResponse {
    /// Output decoded as UTF-8 (invalid sequences replaced).
    pub stdout: String,
    pub stderr: String,
    /// The exit status; 128+N when killed by signal N; 124 when the timeout killed it.
    pub exit_code: i32,
    pub duration_ms: u64,
    #[serde(default)]
    pub timed_out: bool,
    /// True when output beyond the per-stream cap was dropped.
    #[serde(default)]
    pub truncated: bool,
}

/// Output a one-shot exec keeps per stream, as raw bytes and as JSON text.
pub const EXEC_OUTPUT_CAP: usize = 10 * 1024 * 1024;

/// `bytes` as text (invalid UTF-8 replaced), cut at a character so that it takes at most `max`
/// bytes once written as a JSON string (escapes counted). Returns whether it was cut.
pub fn json_text_capped(bytes: &[u8], max: usize) -> (String, bool) {
    let text = String::from_utf8_lossy(bytes);
    let mut size = 0;
    for (i, c) in text.char_indices() {
        size += match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        };
        if size > max {
            return (text[..i].to_string(), true);
        }
    }
    (text.into_owned(), false)
}

impl std::fmt::Debug for AuthResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthResponse")
            .field("user_id", &self.user_id)
            .field("team_id", &self.team_id)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for CreateHostResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateHostResponse")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// The terminal size of a PTY.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

/// The first message on an exec stream: what to run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecStreamStart {
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill after this many seconds (default: never for streams).
    #[serde(default)]
    pub timeout_sec: Option<u64>,
    /// Run on a pseudo-terminal of this size (stdout and stderr then arrive merged as stdout).
    #[serde(default)]
    pub pty: Option<PtySize>,
}

/// Text (JSON) messages a client sends on `GET …/exec/stream`. Stdin goes as binary messages whose
/// first byte is 0 followed by the bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecClientMessage {
    Start(ExecStreamStart),
    Resize {
        rows: u16,
        cols: u16,
    },
    /// A signal number (2 = SIGINT, 15 = SIGTERM, 9 = SIGKILL, …) for the process group.
    Signal {
        signal: i32,
    },
    /// Close stdin.
    Eof,
}

/// Text (JSON) messages the server sends on an exec stream. Output goes as binary messages whose
/// first byte is 1 (stdout) or 2 (stderr), followed by the raw bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecServerMessage {
    Started {
        #[serde(default)]
        pid: Option<u32>,
    },
    Exit {
        exit_code: i32,
        #[serde(default)]
        signal: Option<i32>,
        #[serde(default)]
        timed_out: bool,
        duration_ms: u64,
    },
    Error {
        code: String,
        message: String,
    },
}

pub const STREAM_STDIN: u8 = 0;
pub const STREAM_STDOUT: u8 = 1;
pub const STREAM_STDERR: u8 = 2;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One entry of a sandbox's filesystem.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits, e.g. 420 (0o644).
    pub mode: u32,
    /// Unix seconds.
    pub modified: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

/// A short-lived link to one file of a sandbox, for browsers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DownloadUrlResponse {
    /// Relative to the server: `/v1/sandboxes/{id}/files/download?ticket=…`.
    pub url: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileListResponse {
    pub path: String,
    pub entries: Vec<FileEntry>,
}

/// A template sandboxes can start from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateResponse {
    /// `tpl_…` for the team's own templates; the name for base templates.
    pub id: String,
    pub name: String,
    /// `base`, `snapshot` or `image`.
    pub kind: TemplateKind,
    pub team_id: Option<String>,
    /// Where a snapshot lives (sandboxes from it start there); None for base templates.
    pub host_id: Option<String>,
    /// Base templates: how many online hosts have it.
    #[serde(default)]
    pub hosts: Option<u32>,
    pub vcpus: Option<u32>,
    pub memory_mb: Option<u32>,
    pub size_bytes: Option<u64>,
    pub source_sandbox_id: Option<String>,
    pub created_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateListResponse {
    pub templates: Vec<TemplateResponse>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub sandbox_id: String,
    pub name: String,
}

/// Building a base template (`debian`) on every online regular host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateBuildRequest {
    pub name: String,
}

// The build answers below were JSON maps, whose keys serialize sorted: their fields keep that
// order so the bytes on the wire stay the same.

/// The answer to a base template build: the hosts that started it and those that could not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateBuildResponse {
    pub failed: Vec<HostBuildFailed>,
    pub hosts: Vec<HostBuildStarted>,
    pub name: String,
}

/// A host that started building a base template.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostBuildStarted {
    pub host_id: String,
    pub progress: Option<String>,
    pub status: crate::proto::agent::TemplateStatus,
}

/// A host that could not start a build, or could not be asked how it went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostBuildFailed {
    pub error: String,
    pub host_id: String,
}

/// How a base template build goes on each online regular host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateBuildStatusResponse {
    pub hosts: Vec<HostBuildStatus>,
    pub name: String,
}

/// One host's build of a base template.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HostBuildStatus {
    /// The host has the template, built or building.
    Known {
        error: Option<String>,
        host_id: String,
        progress: Option<String>,
        size_bytes: u64,
        status: crate::proto::agent::TemplateStatus,
    },
    /// The host did not answer.
    Unreachable(HostBuildFailed),
}

#[cfg(test)]
mod json_cap_tests {
    use super::json_text_capped;

    #[test]
    fn output_is_capped_by_its_json_size() {
        assert_eq!(json_text_capped(b"hello", 5), ("hello".into(), false));
        assert_eq!(json_text_capped(b"hello", 4), ("hell".into(), true));
        // A NUL is written as \u0000: six bytes.
        let (s, cut) = json_text_capped(&[0u8; 10], 12);
        assert_eq!((s.len(), cut), (2, true));
        // Invalid UTF-8 becomes U+FFFD (three bytes); no character is split.
        let (s, cut) = json_text_capped(&[0xff, 0xfe, b'a'], 5);
        assert_eq!((s.as_str(), cut), ("\u{fffd}", true));
        let (s, cut) = json_text_capped("a\"b\n".as_bytes(), 6);
        assert_eq!((s.as_str(), cut), ("a\"b\n", false));
        for (text, max) in [("x\0y\u{1}é\"\\\n\t".repeat(50), 77), ("abc".into(), 0)] {
            let (s, _) = json_text_capped(text.as_bytes(), max);
            let json = serde_json::to_string(&s).unwrap();
            assert!(json.len() - 2 <= max, "{} > {max}", json.len() - 2);
        }
    }
}

#[cfg(test)]
mod build_answer_tests {
    use super::*;
    use crate::proto::agent::TemplateStatus;

    /// The typed build answers write the bytes the handlers' `json!` maps wrote before them.
    #[test]
    fn build_answers_keep_their_bytes() {
        let started = TemplateBuildResponse {
            failed: vec![HostBuildFailed {
                error: "down".into(),
                host_id: "h2".into(),
            }],
            hosts: vec![HostBuildStarted {
                host_id: "h1".into(),
                progress: None,
                status: TemplateStatus::Building,
            }],
            name: "debian".into(),
        };
        let was = serde_json::json!({
            "name": "debian",
            "hosts": [{ "host_id": "h1", "status": "building", "progress": null }],
            "failed": [{ "host_id": "h2", "error": "down" }],
        });
        assert_eq!(
            serde_json::to_string(&started).unwrap(),
            serde_json::to_string(&was).unwrap()
        );
        let status = TemplateBuildStatusResponse {
            hosts: vec![
                HostBuildStatus::Known {
                    error: None,
                    host_id: "h1".into(),
                    progress: Some("debootstrap: fetching".into()),
                    size_bytes: 7,
                    status: TemplateStatus::Building,
                },
                HostBuildStatus::Unreachable(HostBuildFailed {
                    error: "down".into(),
                    host_id: "h2".into(),
                }),
            ],
            name: "debian".into(),
        };
        let was = serde_json::json!({
            "name": "debian",
            "hosts": [
                { "host_id": "h1", "status": "building", "progress": "debootstrap: fetching", "error": null, "size_bytes": 7 },
                { "host_id": "h2", "error": "down" },
            ],
        });
        let text = serde_json::to_string(&status).unwrap();
        assert_eq!(text, serde_json::to_string(&was).unwrap());
        // And it reads back as what it was.
        let back: TemplateBuildStatusResponse = serde_json::from_str(&text).unwrap();
        assert!(matches!(
            back.hosts[0],
            HostBuildStatus::Known { size_bytes: 7, .. }
        ));
        assert!(matches!(&back.hosts[1], HostBuildStatus::Unreachable(f) if f.host_id == "h2"));
    }
}
