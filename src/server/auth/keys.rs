//! The server's secrets, generated on first start and kept in the data dir (mode 0600).

use std::path::Path;

use anyhow::Context;

use crate::crypto::{SigningKeyPair, random_bytes};

/// Reads a 32-byte secret from `path`, creating it with fresh random bytes if it does not exist.
pub fn load_or_create_secret(path: &Path) -> anyhow::Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(b) if b.len() == 32 => {
            let mut out = [0u8; 32];
            out.copy_from_slice(&b);
            Ok(out)
        }
        Ok(_) => anyhow::bail!(
            "{} is damaged (expected 32 bytes); remove it to make a new one (this logs everyone out)",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = random_bytes::<32>();
            crate::fsutil::write_private_atomic(path, &secret)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(secret)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The user-token (JWT) secret's file in the data dir.
pub const JWT_KEY_FILE: &str = "jwt.key";
/// The seed of the key the server signs its calls to agents with (agents pin it at registration).
pub const AGENT_SIGNING_KEY_FILE: &str = "agent-signing.key";

/// The key sandbox access tokens are derived from (`crypto::sandbox_access_token`).
pub const SANDBOX_ACCESS_KEY_FILE: &str = "sandbox-access.key";

pub struct ServerKeys {
    pub jwt_secret: [u8; 32],
    pub sandbox_access: [u8; 32],
    pub agent_signing: SigningKeyPair,
}

impl ServerKeys {
    pub fn load(data_dir: &Path) -> anyhow::Result<ServerKeys> {
        Ok(ServerKeys {
            jwt_secret: load_or_create_secret(&data_dir.join(JWT_KEY_FILE))?,
            sandbox_access: load_or_create_secret(&data_dir.join(SANDBOX_ACCESS_KEY_FILE))?,
            agent_signing: SigningKeyPair::from_seed(load_or_create_secret(
                &data_dir.join(AGENT_SIGNING_KEY_FILE),
            )?),
        })
    }
}
