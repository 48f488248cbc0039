//! A small QMP client: one command at a time over QEMU's control socket.

use std::path::Path;
use std::time::Duration;

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

    /// "running", "paused", … (QMP's `query-status`).
    pub async fn status(&mut self) -> anyhow::Result<String> {
        let v = self.execute("query-status", None).await?;
        Ok(v.get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }
}
