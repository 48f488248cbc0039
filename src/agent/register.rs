//! `sandboxctl agent register`: trade a one-time token for host credentials.

use std::path::Path;

use anyhow::{Context, bail};

use super::credentials::{self, Credentials};
use super::facts;
use crate::proto::agent::{Accelerator, RegisterRequest, RegisterResponse};
use crate::proto::api::ErrorBody;

/// Where `install.sh --service agent` puts the agent's systemd unit.
pub const AGENT_UNIT_PATH: &str = "/etc/systemd/system/sandboxctl-agent.service";

/// What to do once registered: start the agent, as the installed service when there is one
/// (`service_installed`), or in a terminal.
pub fn next_step(data_dir: &Path, service_installed: bool) -> String {
    let run = format!("sandboxctl agent run --data-dir {}", data_dir.display());
    if service_installed {
        format!(
            "next, start the agent as a service (it starts at boot too):\n  \
             systemctl start sandboxctl-agent    # logs: journalctl -u sandboxctl-agent -f\n\
             or in this terminal:\n  {run}\n"
        )
    } else {
        format!(
            "next, start the agent in this terminal:\n  {run}\n\
             or as a service that starts at boot (from a sandboxctl checkout):\n  \
             ./install.sh --binary \"$(command -v sandboxctl)\" --service agent\n"
        )
    }
}

/// Registers this host with the server and stores the credentials in `data_dir`.
pub async fn register(
    server_url: &str,
    token: &str,
    data_dir: &Path,
    listen: &str,
    advertise: &str,
) -> anyhow::Result<Credentials> {
    let server_url = server_url.trim_end_matches('/').to_string();
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let (accel, reason) = if facts::cpu_has_virt() && Path::new("/dev/kvm").exists() {
        (
            Accelerator::Kvm,
            "the CPU has vmx/svm and /dev/kvm exists (confirmed when the agent starts)",
        )
    } else {
        (
            Accelerator::Tcg,
            "the CPU advertises no vmx/svm: software emulation",
        )
    };
    let req = RegisterRequest {
        token: token.to_string(),
        facts: facts::gather(data_dir, advertise, accel, reason, ""),
    };
    let http = crate::tls::http_client(|b| b.timeout(std::time::Duration::from_secs(30)))?;
    let resp = http
        .post(format!("{server_url}/v1/hosts/register"))
        .json(&req)
        .send()
        .await
        .with_context(|| format!("cannot reach the server at {server_url}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.bytes().await.unwrap_or_default();
        let msg = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!(
                "the server refused the registration token: it is unknown, already used or expired (tokens last 1 hour; `sandboxctl host token HOST_ID` makes a new one)"
            );
        }
        bail!("registration failed ({status}): {msg}");
    }
    let r: RegisterResponse = resp.json().await.context("reading the server's answer")?;
    let creds = Credentials {
        server_url,
        host_id: r.host_id,
        token: r.token,
        token_expires_at: r.token_expires_at,
        refresh_token: r.refresh_token,
        refresh_expires_at: r.refresh_expires_at,
        server_public_key: r.server_public_key,
        listen: listen.to_string(),
        advertise: advertise.to_string(),
    };
    credentials::save(data_dir, &creds)?;
    Ok(creds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_step_names_the_service_when_it_is_installed() {
        let dir = Path::new("/var/lib/sandboxctl/agent");
        let with = next_step(dir, true);
        assert!(with.contains("systemctl start sandboxctl-agent"), "{with}");
        assert!(with.contains("sandboxctl agent run --data-dir /var/lib/sandboxctl/agent"));
        let without = next_step(dir, false);
        assert!(without.starts_with("next, start the agent in this terminal:\n  sandboxctl agent run --data-dir /var/lib/sandboxctl/agent\n"), "{without}");
        assert!(without.contains("./install.sh --binary"), "{without}");
        assert!(without.contains("--service agent"), "{without}");
    }
}
