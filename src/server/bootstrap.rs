//! The first account of a fresh server (SPEC §15): it becomes the platform admin, so nobody may
//! race the operator for it. It signs up from a loopback client, or from anywhere with the
//! one-time bootstrap token that a server without accounts makes at start, prints and keeps in
//! `DATA_DIR/bootstrap-token` (0600). Which signup wins is decided in the signup's transaction
//! (`db::users::signup`); once an account exists the token is worthless and its file goes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::crypto::{self, Secret};
use crate::server::AppState;
use crate::server::db::users;

/// The bootstrap token's file in the data dir.
pub const TOKEN_FILE: &str = "bootstrap-token";

pub struct Bootstrap {
    token: Mutex<Option<Secret>>,
    file: PathBuf,
}

impl Bootstrap {
    pub fn new(data_dir: &Path) -> Bootstrap {
        Bootstrap {
            token: Mutex::new(None),
            file: data_dir.join(TOKEN_FILE),
        }
    }

    /// True when `given` is the live bootstrap token.
    pub fn matches(&self, given: &str) -> bool {
        let guard = self.token.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .is_some_and(|t| crypto::ct_eq(t.expose().as_bytes(), given.as_bytes()))
    }

    /// The first account exists: the token is dropped and its file removed.
    pub fn finished(&self) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let _ = std::fs::remove_file(&self.file);
    }

    fn issue(&self) -> anyhow::Result<String> {
        let token = crypto::random_token("sbb_");
        crate::fsutil::write_private_atomic(&self.file, token.as_bytes())?;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(Secret(token.clone()));
        Ok(token)
    }
}

/// May this caller create the first account? From loopback (unless the server demands the token
/// there too), or with the bootstrap token.
pub fn may_bootstrap(st: &AppState, peer: IpAddr, token: Option<&str>) -> bool {
    let local = peer.to_canonical().is_loopback() && !st.settings.bootstrap_requires_token;
    local || token.is_some_and(|t| st.bootstrap.matches(t))
}

/// At start: on a server without accounts, makes the bootstrap token and tells the operator how
/// the first (admin) account signs up; otherwise removes a token file left from before.
pub async fn announce(st: &AppState, data_dir: &Path) -> anyhow::Result<()> {
    let n = st.db.call(|c| users::count(c)).await?;
    if n > 0 {
        st.bootstrap.finished();
        return Ok(());
    }
    let token = st.bootstrap.issue()?;
    let file = data_dir.join(TOKEN_FILE);
    let url = &st.settings.public_url;
    if st.settings.bootstrap_requires_token {
        println!(
            "no account yet: the first signup, with the bootstrap token, becomes the platform admin"
        );
    } else {
        println!(
            "no account yet: the first signup from this machine (a loopback client), or from anywhere with the bootstrap token, becomes the platform admin"
        );
    }
    println!(
        "bootstrap token (one use, also in {}): {token}\n  sandboxctl signup --server {url} --email YOU --name NAME --bootstrap-token-file {}\n  or open {url}/#bootstrap={token}",
        file.display(),
        file.display()
    );
    tracing::info!(file = %file.display(), "no account yet: bootstrap token issued");
    Ok(())
}
