//! `sandboxctl server --local-agent`: an agent for this machine in the same process, registered
//! automatically, and a ready admin login on a fresh server. A composition point: it puts a server
//! and an agent together, so it lives beside the roles rather than in one of them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::agent::images::import::Limits;
use crate::agent::run::AgentConfig;
use crate::agent::vm::AccelChoice;
use crate::agent::vm::cgroup::CgroupChoice;
use crate::agent::{credentials, register};
use crate::crypto::{self, sha256_hex};
use crate::server::db::hosts::{self, NewHost};
use crate::server::db::users;
use crate::server::{AppState, Companion};

#[derive(Debug, Clone)]
pub struct LocalAgentConfig {
    pub listen: String,
    pub kernel_dir: PathBuf,
    pub accel: AccelChoice,
    pub cgroup_root: CgroupChoice,
    pub max_concurrent_boots: usize,
    pub import_limits: Limits,
    pub heartbeat_interval: Duration,
    pub sample_interval: Duration,
    pub admin_email: String,
    pub net: crate::agent::net::NetConfig,
    pub jail: crate::agent::vm::JailConfig,
    /// The local agent's `/metrics` listener.
    pub metrics: crate::agent::prometheus::MetricsConfig,
    /// VMs kept restored and waiting for creates (`--warm-pool`).
    pub warm_pool: crate::agent::vm::pool::WarmPoolConfig,
}

/// What goes with the server: the admin made before it answers anyone ([`ensure_admin`]), then
/// [`start`] once it listens, its failure reported on stderr and in the logs (the server keeps
/// serving).
pub fn companion(data_dir: PathBuf, cfg: LocalAgentConfig) -> Companion {
    let (dir, email) = (data_dir.clone(), cfg.admin_email.clone());
    Companion {
        prepare: Box::new(move |state| {
            Box::pin(async move { ensure_admin(&state, &dir, &email).await })
        }),
        run: Box::new(move |state| {
            Box::pin(async move {
                if let Err(e) = start(state, &data_dir, cfg).await {
                    eprintln!("sandboxctl: the local agent failed: {e:#}");
                    tracing::error!(error = ?e, "local agent failed");
                }
            })
        }),
    }
}

/// Registers the local agent on first start, and runs it.
pub async fn start(state: AppState, data_dir: &Path, cfg: LocalAgentConfig) -> anyhow::Result<()> {
    let agent_dir = data_dir.join("agent");
    if credentials::load(&agent_dir)?.is_none() {
        let token = crypto::random_token("hrt_");
        let hash = sha256_hex(token.as_bytes());
        state
            .db
            .call(move |c| {
                hosts::create(
                    c,
                    &NewHost {
                        host_type: "regular",
                        team_id: None,
                        name: Some("local"),
                        provider: Some("local"),
                        zone: None,
                        created_by: None,
                    },
                    &hash,
                )
            })
            .await?;
        register::register(
            &state.settings.public_url,
            &token,
            &agent_dir,
            &cfg.listen,
            &cfg.listen,
        )
        .await
        .context("registering the local agent")?;
        println!("local agent registered (listening on {})", cfg.listen);
    }
    println!("starting the local agent (the first start builds the guest image: a few seconds)");
    crate::agent::run::run(
        AgentConfig {
            data_dir: agent_dir,
            kernel_dir: cfg.kernel_dir,
            listen: None,
            accel: cfg.accel,
            cgroup_root: cfg.cgroup_root,
            max_concurrent_boots: cfg.max_concurrent_boots,
            import_limits: cfg.import_limits,
            heartbeat_interval: cfg.heartbeat_interval,
            sample_interval: cfg.sample_interval,
            warm_pool: cfg.warm_pool,
            guest_binary: None,
            net: cfg.net,
            metrics: cfg.metrics,
            jail: crate::agent::vm::JailConfig {
                // The server's keys and database sit beside the agent's folder.
                hidden: vec![data_dir.to_path_buf()],
                ..cfg.jail
            },
            // The local agent ends with its server's process.
            shutdown_timeout: Duration::ZERO,
        },
        std::future::pending(),
    )
    .await
}

/// On a fresh server, creates the platform admin (its password in `DATA_DIR/admin-password`)
/// before the server answers anyone, so no signup can race it; prints how to log in.
async fn ensure_admin(state: &AppState, data_dir: &Path, email: &str) -> anyhow::Result<()> {
    let pw_file = data_dir.join("admin-password");
    let n = state.db.call(|c| users::count(c)).await?;
    let url = &state.settings.public_url;
    if n == 0 {
        let password = crypto::random_token("")
            .chars()
            .take(20)
            .collect::<String>();
        crate::fsutil::write_private_atomic(&pw_file, password.as_bytes())?;
        let pw = password.clone();
        let hash = tokio::task::spawn_blocking(move || crypto::hash_password(&pw)).await??;
        let em = email.to_string();
        state
            .db
            .call(move |c| users::create_with_team(c, &em, "Admin", Some(&hash), true))
            .await?;
        println!(
            "created the platform admin {email}; its password is in {}",
            pw_file.display()
        );
    }
    if pw_file.exists() {
        println!(
            "log in with:\n  sandboxctl login --server {url} --email {email} --password-stdin < {}",
            pw_file.display()
        );
    } else {
        println!("log in with: sandboxctl login --server {url} --email YOUR_EMAIL");
    }
    Ok(())
}
