//! What each client command does, one module per concept. Errors print one sentence; exit codes:
//! 0 ok, 1 failure, 2 usage; `sandbox exec` exits with the command's own code.

mod accounts;
mod files;
mod hosts;
mod keys;
mod metrics;
mod output;
pub mod ports;
mod sandboxes;
mod teams;
mod templates;
pub mod terminal;

use anyhow::{Context, bail};

pub use accounts::{login, logout, password, signup, whoami};
pub use hosts::host;
pub use keys::key;
pub use sandboxes::sandbox;
pub use teams::team;
pub use templates::template;

use super::client::ApiClient;
use super::config;

/// The client for the stored (or env-given) server and token.
pub fn client() -> anyhow::Result<ApiClient> {
    let cfg = config::load()?;
    let server = std::env::var("SANDBOXCTL_SERVER")
        .ok()
        .filter(|s| !s.is_empty())
        .or(cfg.server)
        .context("no server configured: run `sandboxctl login --server URL --email EMAIL` (or set SANDBOXCTL_SERVER)")?;
    let token = std::env::var("SANDBOXCTL_TOKEN")
        .ok()
        .filter(|s| !s.is_empty())
        .or(cfg.token);
    if token.is_none() {
        bail!(
            "not logged in: run `sandboxctl login --server {server} --email EMAIL` (or set SANDBOXCTL_TOKEN to an API key)"
        );
    }
    Ok(ApiClient::new(&server, token))
}
