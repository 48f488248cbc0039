//! Connecting to a VM's unix sockets whatever the length of the data dir (sun_path holds 108
//! bytes): long paths go through `/proc/self/fd/<dir fd>/<name>`.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use tokio::net::UnixStream;

const SUN_PATH_MAX: usize = 100;

pub async fn connect_unix(dir: &Path, name: &str) -> anyhow::Result<UnixStream> {
    let full = dir.join(name);
    if full.as_os_str().len() < SUN_PATH_MAX {
        return UnixStream::connect(&full)
            .await
            .with_context(|| format!("connect {}", full.display()));
    }
    let dir_fd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)
        .with_context(|| format!("open {}", dir.display()))?;
    let via = format!("/proc/self/fd/{}/{name}", dir_fd.as_raw_fd());
    let stream = UnixStream::connect(&via)
        .await
        .with_context(|| format!("connect {}", full.display()));
    drop(dir_fd);
    stream
}
