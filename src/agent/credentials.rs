//! The agent's credentials, kept in its data dir (mode 0600, written atomically).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub const FILE: &str = "credentials.json";

#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub server_url: String,
    pub host_id: String,
    pub token: String,
    pub token_expires_at: i64,
    pub refresh_token: String,
    pub refresh_expires_at: i64,
    /// The server's Ed25519 public key, pinned at registration.
    pub server_public_key: String,
    /// Where the agent listens, and the address it told the server.
    pub listen: String,
    pub advertise: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server_url", &self.server_url)
            .field("host_id", &self.host_id)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .finish_non_exhaustive()
    }
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

pub fn load(data_dir: &Path) -> anyhow::Result<Option<Credentials>> {
    let p = path(data_dir);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!("{} is damaged; register the agent again", p.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

pub fn save(data_dir: &Path, c: &Credentials) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let json = serde_json::to_vec_pretty(c)?;
    crate::fsutil::write_private_atomic(&path(data_dir), &json).context("saving credentials")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saved_credentials_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let c = Credentials {
            server_url: "http://s".into(),
            host_id: "host_1".into(),
            token: "secret-token".into(),
            token_expires_at: 1,
            refresh_token: "secret-refresh".into(),
            refresh_expires_at: 2,
            server_public_key: "k".into(),
            listen: "127.0.0.1:9090".into(),
            advertise: "127.0.0.1:9090".into(),
        };
        save(dir.path(), &c).unwrap();
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back.refresh_token, "secret-refresh");
        assert!(!format!("{c:?}").contains("secret"));
        assert!(load(&dir.path().join("nope")).unwrap().is_none());
    }
}
