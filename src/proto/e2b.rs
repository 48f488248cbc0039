//! The wire types of E2B's control plane (`/sandboxes`, `/v2/sandboxes`, `/snapshots`), as the
//! official SDKs send and parse them (/work/shared/E2B.md §2). Field names are E2B's (camelCase,
//! `templateID`); times are RFC 3339 strings. Objects the SDK parses with `from_dict` are omitted
//! rather than sent as `null`. Shared by the E2B front-end and the in-guest envd.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The envd version every sandbox reports (`envdVersion`). The SDKs pick behaviour by it
/// (see /work/shared/E2B.md §2.8): at 0.5.7 they send no user unless asked (envd applies its
/// default user), may close stdin, and upload with `application/octet-stream` (gzip too); they
/// do not send file metadata headers (0.6.2) nor ask watches for entries (0.6.3).
pub const ENVD_VERSION: &str = "0.5.7";

/// The TCP port envd listens on inside every sandbox.
pub const ENVD_PORT: u16 = 49983;

/// The `clientID` every answer carries (the SDK requires the field, and reads nothing from it).
pub const CLIENT_ID: &str = "sandboxctl";

/// `POST /sandboxes` and `POST /v2/sandboxes` (`NewSandbox` / `NewSandboxV2`). Fields we cannot
/// honour are kept as raw values so the front-end can refuse them by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandboxRequest {
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Seconds until the sandbox's deadline (`endAt`); default 300.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Pause at the deadline instead of ending.
    #[serde(default)]
    pub auto_pause: Option<bool>,
    #[serde(default)]
    pub auto_pause_memory: Option<bool>,
    #[serde(default)]
    pub auto_resume: Option<Value>,
    /// snake_case on the wire, as E2B spells it.
    #[serde(default, rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    #[serde(default)]
    pub network: Option<NetworkConfig>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub mcp: Option<Value>,
    #[serde(default)]
    pub iam: Option<Value>,
    #[serde(default)]
    pub volume_mounts: Option<Value>,
    /// v1 only; always on here.
    #[serde(default)]
    pub secure: Option<bool>,
}

/// E2B's network settings (create's `network`, and `PUT /sandboxes/{id}/network`, which also
/// takes `allow_internet_access`). Only `allowOut`/`denyOut` (CIDRs) and internet access map onto
/// our egress policy; the other keys are kept to be refused by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    #[serde(default)]
    pub allow_out: Option<Vec<String>>,
    #[serde(default)]
    pub deny_out: Option<Vec<String>>,
    #[serde(default, rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    #[serde(default)]
    pub allow_public_traffic: Option<Value>,
    #[serde(default)]
    pub mask_request_host: Option<Value>,
    #[serde(default)]
    pub dns_servers: Option<Value>,
    #[serde(default)]
    pub egress_proxy: Option<Value>,
    #[serde(default)]
    pub https_ports: Option<Value>,
    #[serde(default)]
    pub rules: Option<Value>,
}

/// `POST /sandboxes/{id}/connect`, `/v2/…/connect` and the legacy `/resume`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectRequest {
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub memory: Option<bool>,
    /// Legacy resume only.
    #[serde(default)]
    pub auto_pause: Option<bool>,
}

/// `POST /sandboxes/{id}/timeout`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimeoutRequest {
    pub timeout: u64,
}

/// `POST /sandboxes/{id}/refreshes` (older SDKs' keep-alive).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RefreshRequest {
    #[serde(default)]
    pub duration: Option<u64>,
}

/// `POST /sandboxes/{id}/pause`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseRequest {
    #[serde(default)]
    pub memory: Option<bool>,
    #[serde(default)]
    pub require_healthy_guest: Option<bool>,
}

/// `POST /sandboxes/{id}/snapshots`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapshotRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub memory: Option<bool>,
}

/// A created, connected or resumed sandbox (`Sandbox`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub envd_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// What the SDKs send as `E2B-Traffic-Access-Token` to a private port: the same token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// `running` or `paused`: the only states E2B knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Running,
    Paused,
}

/// What happens at the deadline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    pub auto_resume: bool,
    /// `pause` or `kill`.
    pub on_timeout: String,
}

/// The egress policy as E2B shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInfo {
    pub allow_out: Vec<String>,
    pub deny_out: Vec<String>,
}

/// `GET /sandboxes/{id}` (`SandboxDetail`) and, without the detail-only fields, a list item
/// (`ListedSandbox`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxInfo {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    pub started_at: String,
    pub end_at: String,
    pub envd_version: String,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    pub state: SandboxState,
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_internet_access: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// `POST /sandboxes/{id}/snapshots` → 201.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotCreated {
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    pub names: Vec<String>,
}

/// One item of `GET /snapshots`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    pub names: Vec<String>,
}

/// Every error: an integer `code` (the HTTP status) and a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Error {
    pub code: u16,
    pub message: String,
}
