//! What the server and the agents say to each other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The largest directory listing an agent assembles (about half a million entries); the server
/// reads no more than this of a listing.
pub const MAX_LISTING_BYTES: u64 = 64 << 20;

/// The largest root filesystem archive an agent takes for a template; the server refuses bigger
/// uploads before passing them on.
pub const MAX_IMAGE_BYTES: u64 = 4 << 30;

/// What an agent knows about its machine, sent at registration and with every heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostFacts {
    pub arch: String,
    pub cpu_cores: u32,
    pub memory_mb: u64,
    pub disk_gb: u64,
    /// `host:port` where the agent serves the server's calls.
    pub address: String,
    pub accel: Accelerator,
    /// Why that accelerator was chosen, in words.
    pub accel_reason: String,
    /// How VMs are put in cgroups: "v2 PATH: cpu memory pids", or "none: why". Empty at
    /// registration (known once the agent runs).
    #[serde(default)]
    pub cgroups: String,
    pub version: String,
}

/// How an agent runs its VMs: hardware virtualisation or software emulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl Accelerator {
    /// The name on the wire and in QEMU's `-accel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not `kvm` or `tcg`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an accelerator (kvm or tcg)")]
pub struct UnknownAccelerator(pub String);

impl std::str::FromStr for Accelerator {
    type Err = UnknownAccelerator;
    fn from_str(s: &str) -> Result<Self, UnknownAccelerator> {
        match s {
            "kvm" => Ok(Accelerator::Kvm),
            "tcg" => Ok(Accelerator::Tcg),
            other => Err(UnknownAccelerator(other.to_string())),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub token: String,
    pub facts: HostFacts,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub host_id: String,
    /// Host JWT, sent as `Authorization: Bearer` on heartbeats.
    pub token: String,
    pub token_expires_at: i64,
    pub refresh_token: String,
    pub refresh_expires_at: i64,
    /// The server's Ed25519 public key (base64url, 32 bytes): calls from the server are signed with it.
    pub server_public_key: String,
}

impl std::fmt::Debug for RegisterResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterResponse")
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub facts: HostFacts,
    /// Live capacity figures.
    pub running_vms: u32,
    pub used_memory_mb: u64,
    pub used_vcpus: u32,
    /// Names of the base templates ready on this host.
    #[serde(default)]
    pub templates: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The host's status after the heartbeat.
    pub status: crate::proto::vocab::HostStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// A refreshed host JWT and the refresh token that replaces the one sent.
#[derive(Serialize, Deserialize)]
pub struct RefreshResponse {
    pub host_id: String,
    pub token: String,
    pub token_expires_at: i64,
    pub refresh_token: String,
    pub refresh_expires_at: i64,
}

/// A microVM the server asks an agent to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateVmRequest {
    /// The sandbox id (`sbx_…`); the VM is known by it on the agent.
    pub id: String,
    pub template: String,
    pub vcpus: u32,
    pub memory_mb: u32,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A network device in a namespace of its own when true; none when false.
    #[serde(default = "yes")]
    pub network: bool,
    /// What the sandbox may reach (None: the default policy).
    #[serde(default)]
    pub egress: Option<crate::proto::net::EgressPolicy>,
    /// Boot the base template from scratch instead of restoring its boot snapshot.
    #[serde(default)]
    pub cold_boot: bool,
    /// The sandbox's access token, derived by the server: what its envd requires
    /// (`X-Access-Token`, file URL signatures). None: envd asks for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
}

/// The `Upgrade` protocol of `GET /v1/vms/{id}/ports/{port}`: after the 101 the connection
/// carries the port's bytes both ways.
pub const PORT_UPGRADE: &str = "sandboxctl-port";

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Starting,
    Running,
    Paused,
    Stopped,
}

impl VmState {
    pub const ALL: [VmState; 4] = [
        VmState::Starting,
        VmState::Running,
        VmState::Paused,
        VmState::Stopped,
    ];

    /// The word on the wire (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped => "stopped",
        }
    }

    /// The agent's transition table: every state change of a VM goes through it.
    pub fn can_become(self, next: VmState) -> bool {
        use VmState::*;
        matches!(
            (self, next),
            // Booted or restored, the guest answered and has its identity.
            (Starting, Running)
                // Pause and resume.
                | (Running, Paused)
                | (Paused, Running)
                // QEMU exited or was killed (destroy, a guest cut off), from anywhere; a
                // stopped VM told again stays stopped.
                | (_, Stopped)
                // A boot snapshot that failed to restore falls back to a cold boot of the same
                // VM, whether or not its QEMU had started (and stopped) yet.
                | (Starting | Stopped, Starting)
                // A complete saved state outlives its QEMU: a pause whose QEMU went as it
                // finished, a resume that failed to load it.
                | (Stopped, Paused)
        )
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmInfo {
    pub id: String,
    pub template: String,
    pub state: VmState,
    pub vcpus: u32,
    pub memory_mb: u32,
    pub pid: Option<u32>,
    /// Milliseconds from the create call to the guest's first answer.
    pub boot_ms: Option<u64>,
    /// "cold", "snapshot" or "pool" (a VM of the agent's warm pool, restored ahead).
    pub boot_kind: Option<String>,
    /// Why a stopped VM was stopped by its agent (a guest cut off for breaking the protocol).
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmListResponse {
    pub vms: Vec<VmInfo>,
}

/// Keep a sandbox's memory and disk as a template on its host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotVmRequest {
    /// The template's name on the agent: the server passes the template id (`tpl_…`).
    pub template: String,
    #[serde(default)]
    pub overwrite: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TemplateStatus {
    Building,
    Ready,
    Failed,
}

/// A template as an agent holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateInfo {
    /// `minimal`, `debian`, or a server template id (`tpl_…`) for snapshots and uploaded rootfs.
    pub name: String,
    /// `base` (built by the agent), `snapshot` (memory + disk of a sandbox) or `image` (from an uploaded root filesystem).
    pub kind: String,
    pub status: TemplateStatus,
    /// What a build is doing now, in words.
    #[serde(default)]
    pub progress: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    pub size_bytes: u64,
    /// True when a boot snapshot exists, so sandboxes start by restoring it.
    #[serde(default)]
    pub has_snapshot: bool,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mb: Option<u32>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateListResponse {
    pub templates: Vec<TemplateInfo>,
}

/// Build a base template on the agent (`debian`: debootstrap of Debian stable with python3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildTemplateRequest {
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::VmState::*;
    use super::*;

    #[test]
    fn accelerators_keep_their_wire_names() {
        for (a, name) in [(Accelerator::Kvm, "kvm"), (Accelerator::Tcg, "tcg")] {
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<Accelerator>(&format!("\"{name}\"")).unwrap(),
                a
            );
            assert_eq!(name.parse::<Accelerator>().unwrap(), a);
            assert_eq!(a.to_string(), name);
        }
        assert!(serde_json::from_str::<Accelerator>(r#""magic""#).is_err());
        assert!("KVM".parse::<Accelerator>().is_err());
        // An unknown one is refused as a field of the body, as the server's check did.
        let body = br#"{"facts":{"arch":"x","cpu_cores":1,"memory_mb":1,"disk_gb":1,
            "address":"h:1","accel":"magic","accel_reason":"","version":""},
            "running_vms":0,"used_memory_mb":0,"used_vcpus":0}"#;
        match crate::proto::json::parse_object::<HeartbeatRequest>(body) {
            Err(crate::proto::json::BodyError::Field { field, .. }) => {
                assert_eq!(field, "facts.accel")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn vm_transitions() {
        let allowed = [
            (Starting, Running),
            (Starting, Stopped),
            (Starting, Starting),
            (Running, Paused),
            (Running, Stopped),
            (Paused, Running),
            (Paused, Stopped),
            (Stopped, Stopped),
            (Stopped, Starting),
            (Stopped, Paused),
        ];
        for a in VmState::ALL {
            for b in VmState::ALL {
                assert_eq!(a.can_become(b), allowed.contains(&(a, b)), "{a} -> {b}");
            }
        }
    }

    #[test]
    fn vm_states_serialize_as_their_words() {
        for s in VmState::ALL {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}
