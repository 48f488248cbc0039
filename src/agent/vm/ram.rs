//! A snapshot's RAM as a sealed memfd that every sandbox restored from it maps privately.
//!
//! QEMU 7.2 maps a `memory-backend-file` privately only after opening the file read-write
//! (`readonly=on` makes guest RAM read-only too), and it keeps that descriptor. A template's RAM
//! file that a confined QEMU may open read-write is one a compromised QEMU could rewrite under
//! every other tenant's sandbox. So the agent copies the RAM once into a memfd sealed against
//! writes, growth and shrinking, and hands it to QEMU as `/proc/self/fd/5`: QEMU opens it
//! read-write, maps it privately (the guest's writes stay in its own copy-on-write pages), and
//! can never change a byte of it. Unchanged pages stay shared between all its sandboxes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;

/// The descriptor number QEMU finds the RAM on.
pub const RAM_FD: i32 = 5;
/// What QEMU is told to open.
pub const RAM_PATH: &str = "/proc/self/fd/5";

/// A file's identity: (device, inode).
type FileId = (u64, u64);

/// Sealed RAM images by the file they were read from, with that file's path.
#[derive(Default)]
pub struct RamCache {
    images: Mutex<HashMap<FileId, (PathBuf, Arc<OwnedFd>)>>,
}

impl RamCache {
    /// The sealed image of the RAM file `path` (made on first use).
    pub fn get(&self, path: &Path) -> anyhow::Result<Arc<OwnedFd>> {
        let md = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        let key = (md.dev(), md.ino());
        let mut images = self.images.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, fd)) = images.get(&key) {
            return Ok(fd.clone());
        }
        // Images of files that were replaced or removed are no longer restored from.
        images.retain(|k, (p, _)| {
            std::fs::metadata(p)
                .map(|m| (m.dev(), m.ino()) == *k)
                .unwrap_or(false)
        });
        let fd = Arc::new(sealed_copy(path)?);
        images.insert(key, (path.to_path_buf(), fd.clone()));
        Ok(fd)
    }
}

/// Copies the data of `path` (holes stay holes) into a new memfd and seals it.
fn sealed_copy(path: &Path) -> anyhow::Result<OwnedFd> {
    let mut src = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let len = src.metadata()?.len();
    // SAFETY: memfd_create with a static name; the descriptor is owned at once.
    let raw = unsafe {
        libc::memfd_create(
            c"sandboxctl-ram".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut dst = File::from(fd.try_clone()?);
    dst.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let data = seek(&src, pos, libc::SEEK_DATA);
        let Some(start) = data else { break };
        let end = seek(&src, start, libc::SEEK_HOLE).unwrap_or(len).min(len);
        src.seek(SeekFrom::Start(start))?;
        dst.seek(SeekFrom::Start(start))?;
        let mut left = end - start;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            src.read_exact(&mut buf[..n])?;
            dst.write_all(&buf[..n])?;
            left -= n as u64;
        }
        pos = end;
    }
    drop(dst);
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error()).context("seal the RAM image");
    }
    Ok(fd)
}

fn seek(f: &File, from: u64, whence: i32) -> Option<u64> {
    // SAFETY: lseek on a descriptor we hold.
    let r = unsafe { libc::lseek(f.as_raw_fd(), from as libc::off_t, whence) };
    (r >= 0).then_some(r as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_a_sealed_copy() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mem.ram");
        let mut f = File::create(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        f.seek(SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(b"guest page").unwrap();
        drop(f);
        let cache = RamCache::default();
        let fd = cache.get(&p).unwrap();
        assert!(Arc::ptr_eq(&fd, &cache.get(&p).unwrap()), "made once");
        let mut copy = File::from(fd.try_clone().unwrap());
        assert_eq!(copy.metadata().unwrap().len(), 8 << 20);
        let mut b = [0u8; 10];
        copy.seek(SeekFrom::Start(3 << 20)).unwrap();
        copy.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"guest page");
        // Reopened read-write through /proc, as QEMU does: writes and resizes are refused.
        let mut rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap();
        assert!(rw.write_all(b"x").is_err());
        assert!(rw.set_len(1).is_err());
    }
}
