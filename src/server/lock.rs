//! One server per data dir: the server holds an exclusive `flock` on `<data dir>/server.lock` for
//! as long as it runs, and `server restore` takes the same lock, so a restore cannot swap the
//! database under a running server (nor a server start in the middle of a restore). The kernel
//! drops the lock when the process exits, however it exits.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "server.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "a sandboxctl server is running on {dir} (it holds {lock}); stop it first",
        dir = .0.display(),
        lock = .1.display()
    )]
    Held(PathBuf, PathBuf),
    #[error("cannot lock {path}: {1}", path = .0.display())]
    Io(PathBuf, std::io::Error),
}

/// The held lock; dropping it releases the data dir.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the data dir's lock without waiting; `Held` when another process has it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let path = data_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| LockError::Io(path.clone(), e))?;
        // SAFETY: flock on a descriptor this function owns; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                LockError::Held(data_dir.to_path_buf(), path)
            } else {
                LockError::Io(path, e)
            });
        }
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        // A second open file description is refused, as another process would be.
        let e = DataDirLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(e, LockError::Held(..)), "{e}");
        assert!(e.to_string().contains("stop it first"));
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
