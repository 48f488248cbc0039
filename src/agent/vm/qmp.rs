//! A small QMP client: one command at a time over QEMU's control socket.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
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
    /// QEMU's working directory: relative state paths are files in it.
    dir: PathBuf,
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
            dir: dir.to_path_buf(),
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
        let file = open_state(&self.dir.join(path), true)?;
        self.send_fd("state-out", file.as_raw_fd()).await?;
        self.execute("migrate", Some(json!({ "uri": "fd:state-out" })))
            .await?;
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
        let file = open_state(&self.dir.join(path), false)?;
        self.send_fd("state-in", file.as_raw_fd()).await?;
        self.execute("migrate-incoming", Some(json!({ "uri": "fd:state-in" })))
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

    /// Hands `fd` to QEMU under `name` (QMP `getfd`, the descriptor travelling as SCM_RIGHTS
    /// with the command): a confined QEMU opens no files itself.
    pub async fn send_fd(&mut self, name: &str, fd: RawFd) -> anyhow::Result<()> {
        let mut line =
            serde_json::to_vec(&json!({ "execute": "getfd", "arguments": { "fdname": name } }))?;
        line.push(b'\n');
        let sock = self.writer.as_ref();
        loop {
            sock.writable().await?;
            match sock.try_io(tokio::io::Interest::WRITABLE, || {
                send_with_fd(sock.as_raw_fd(), &line, fd)
            }) {
                Ok(n) if n == line.len() => break,
                Ok(n) => bail!("QMP getfd: short write ({n} of {})", line.len()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e).context("QMP getfd"),
            }
        }
        loop {
            let v = self.read_message().await?;
            if v.get("return").is_some() {
                return Ok(());
            }
            if let Some(e) = v.get("error") {
                bail!(
                    "QMP getfd: {}",
                    e.get("desc").and_then(Value::as_str).unwrap_or("error")
                );
            }
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

/// A state file opened by the agent for QEMU: created private (0600) for a save, read-only for
/// a load.
fn open_state(path: &Path, write: bool) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    if write {
        o.write(true).create(true).truncate(true).mode(0o600);
    } else {
        o.read(true);
    }
    o.open(path)
        .with_context(|| format!("open {}", path.display()))
}

/// One `sendmsg` of `data` with `fd` attached (SCM_RIGHTS).
fn send_with_fd(sock: RawFd, data: &[u8], fd: RawFd) -> std::io::Result<usize> {
    // SAFETY: a msghdr over our buffers with one SCM_RIGHTS control message sized by the
    // CMSG macros; sendmsg copies everything before returning.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
        let mut control = vec![0u8; space];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // `as _`: the field is usize with glibc, u32 with musl.
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        let n = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}
