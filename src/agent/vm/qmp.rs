//! A small QMP client: one command at a time over QEMU's control socket.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::sock::connect_unix;

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

const TIMEOUT: Duration = Duration::from_secs(5);

impl Qmp {
    /// Connects to `dir/name`, reads the greeting and leaves negotiation mode.
    pub async fn connect(dir: &Path, name: &str) -> anyhow::Result<Qmp> {
        let stream: UnixStream = connect_unix(dir, name).await?;
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = qmp.read_message().await.context("QMP greeting")?;
        if greeting.get("QMP").is_none() {
            bail!("not a QMP greeting: {greeting}");
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(TIMEOUT, self.reader.read_line(&mut line))
            .await
            .context("QMP timed out")??;
        if n == 0 {
            bail!("QMP socket closed");
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// Runs a command and returns its `return` value; events in between are skipped.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg)?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        loop {
            let v = self.read_message().await?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!(
                    "QMP {command}: {}",
                    e.get("desc").and_then(Value::as_str).unwrap_or("error")
                );
            }
            tracing::debug!(event = %v, "QMP event");
        }
    }

    /// Connects, retrying while QEMU has not created its socket yet.
    pub async fn connect_wait(dir: &Path, name: &str, wait: Duration) -> anyhow::Result<Qmp> {
        let deadline = Instant::now() + wait;
        loop {
            match Qmp::connect(dir, name).await {
                Ok(q) => return Ok(q),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.execute("stop", None).await.map(|_| ())
    }

    pub async fn cont(&mut self) -> anyhow::Result<()> {
        self.execute("cont", None).await.map(|_| ())
    }

    /// Asks QEMU to exit; returns once it has acknowledged.
    pub async fn quit(&mut self) -> anyhow::Result<()> {
        self.execute("quit", None).await.map(|_| ())
    }

    /// `x-ignore-shared`: leave RAM in shared file backends out of the migration stream (set on
    /// both sides of a boot-snapshot save and restore).
    pub async fn set_ignore_shared(&mut self, on: bool) -> anyhow::Result<()> {
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": on }] })),
        )
        .await
        .map(|_| ())
    }

    /// Saves the (stopped) VM's state into `path` (relative to QEMU's working directory, or
    /// absolute) and waits for the end. QEMU's default bandwidth cap (32 MiB/s) is lifted: the
    /// target is a local file.
    pub async fn save_state(&mut self, path: &str, limit: Duration) -> anyhow::Result<()> {
        self.execute(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": 64u64 << 30, "downtime-limit": 60_000 })),
        )
        .await?;
        let uri = format!("exec:cat > {}", shell_quote(path));
        self.execute("migrate", Some(json!({ "uri": uri }))).await?;
        let deadline = Instant::now() + limit;
        loop {
            let v = self.execute("query-migrate", None).await?;
            match v.get("status").and_then(Value::as_str).unwrap_or("") {
                "completed" => return Ok(()),
                s @ ("failed" | "cancelled") => bail!(
                    "saving the VM state {s}: {}",
                    v.get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                ),
                _ => {}
            }
            if Instant::now() >= deadline {
                let _ = self.execute("migrate_cancel", None).await;
                bail!("saving the VM state took over {} s", limit.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Loads a state saved by [`Qmp::save_state`] into a QEMU started with `-S -incoming defer`
    /// and waits until it is loaded (the VM stays stopped until `cont`). A failed load ends QEMU.
    pub async fn load_state(&mut self, path: &str, limit: Duration) -> anyhow::Result<()> {
        let uri = format!("exec:cat {}", shell_quote(path));
        self.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await?;
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status().await.context("while loading the VM state")?;
            if status != "inmigrate" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("loading the VM state took over {} s", limit.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// "running", "paused", … (QMP's `query-status`).
    pub async fn status(&mut self) -> anyhow::Result<String> {
        let v = self.execute("query-status", None).await?;
        Ok(v.get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }
}

/// `s` as one word for `/bin/sh` (QEMU runs `exec:` migration URIs through it).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quotes_for_sh() {
        assert_eq!(shell_quote("state.bin"), "'state.bin'");
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
    }
}
