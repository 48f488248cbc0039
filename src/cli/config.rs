//! The CLI's config file: `$SANDBOXCTL_CONFIG` or `~/.config/sandboxctl/config.toml` (mode 0600).

use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Clone, Default, Serialize, Deserialize)]
pub struct CliConfig {
    pub server: Option<String>,
    pub token: Option<String>,
    pub email: Option<String>,
}

impl std::fmt::Debug for CliConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CliConfig")
            .field("server", &self.server)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

pub fn path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SANDBOXCTL_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(
            std::env::var_os("HOME").context("HOME is not set; set SANDBOXCTL_CONFIG")?,
        )
        .join(".config"),
    };
    Ok(base.join("sandboxctl").join("config.toml"))
}

pub fn load() -> anyhow::Result<CliConfig> {
    let p = path()?;
    match std::fs::read_to_string(&p) {
        Ok(s) => toml::from_str(&s).with_context(|| format!("{} is not valid TOML", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CliConfig::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

pub fn save(c: &CliConfig) -> anyhow::Result<()> {
    let p = path()?;
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let s = toml::to_string(c)?;
    crate::fsutil::write_private_atomic(&p, s.as_bytes())
        .with_context(|| format!("writing {}", p.display()))
}
