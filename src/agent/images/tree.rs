//! A folder tree written without ever following a link inside it: every path component is opened
//! relative to its parent's descriptor with `O_NOFOLLOW`, new files are made with `O_EXCL` after
//! whatever stood at their name is unlinked (so a link, or a file hard-linked elsewhere, is never
//! written through), and symlinks are made as data, never resolved. Trees from users (template
//! imports) are unpacked and completed with this, so a link they hold can point anywhere without
//! the agent (root) writing there.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What stands at a name in a directory (never followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

/// One directory of the tree, opened without following links.
#[derive(Debug)]
pub struct Dir(OwnedFd);

fn cname(name: &[u8]) -> io::Result<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a plain name: {:?}", String::from_utf8_lossy(name)),
        ));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The plain names of a relative path ("a/b/./c" → a, b, c); `..` or an absolute path is refused.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if path.starts_with(b"/") {
        return Err("is an absolute path");
    }
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("climbs out of the tree ('..')"),
            c => out.push(c),
        }
    }
    Ok(out)
}

impl Dir {
    /// Opens `path` (a directory, not a link) as the top of a tree.
    pub fn open_root(path: &Path) -> io::Result<Dir> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
        // SAFETY: a valid NUL-terminated path; the descriptor is owned below.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(Dir(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn fd(&self) -> libc::c_int {
        self.0.as_raw_fd()
    }

    /// What stands at `name`, if anything.
    pub fn kind(&self, name: &[u8]) -> io::Result<Option<Kind>> {
        let c = cname(name)?;
        // SAFETY: zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor, name and out-parameter.
        let rc =
            unsafe { libc::fstatat(self.fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENOENT) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }))
    }

    /// The directory `name` below this one. A link or anything else at `name` fails (`ELOOP`,
    /// `ENOTDIR`); a missing one is made (mode 0755) when `create`.
    pub fn subdir(&self, name: &[u8], create: bool) -> io::Result<Dir> {
        let c = cname(name)?;
        let open = || {
            // SAFETY: valid descriptor and name.
            check(unsafe {
                libc::openat(
                    self.fd(),
                    c.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            })
        };
        let fd = match open() {
            Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {
                // SAFETY: valid descriptor and name.
                let rc = unsafe { libc::mkdirat(self.fd(), c.as_ptr(), 0o755) };
                if rc < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(e);
                    }
                }
                open()?
            }
            r => r?,
        };
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(Dir(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The directory `name`, made a real one: a link, file or other node standing there is
    /// removed first (never followed).
    pub fn real_subdir(&self, name: &[u8]) -> io::Result<Dir> {
        match self.kind(name)? {
            Some(Kind::Dir) | None => {}
            Some(_) => self.unlink(name)?,
        }
        self.subdir(name, true)
    }

    /// The directory at `path` (plain names) below this one, every component opened without
    /// following links, missing ones made when `create`.
    pub fn walk(&self, path: &[&[u8]], create: bool) -> io::Result<Dir> {
        let mut d = self.subdir_dup()?;
        for c in path {
            d = d.subdir(c, create)?;
        }
        Ok(d)
    }

    fn subdir_dup(&self) -> io::Result<Dir> {
        Ok(Dir(self.0.try_clone()?))
    }

    /// Removes the non-directory entry `name` (a link is removed, not its target).
    pub fn unlink(&self, name: &[u8]) -> io::Result<()> {
        let c = cname(name)?;
        // SAFETY: valid descriptor and name.
        check(unsafe { libc::unlinkat(self.fd(), c.as_ptr(), 0) }).map(|_| ())
    }

    /// Removes whatever stands at `name`, a directory with everything under it (links inside
    /// are removed, never followed). Nothing there is fine.
    pub fn remove_all(&self, name: &[u8]) -> io::Result<()> {
        match self.kind(name)? {
            None => Ok(()),
            Some(Kind::Dir) => {
                let sub = self.subdir(name, false)?;
                for e in std::fs::read_dir(format!("/proc/self/fd/{}", sub.fd()))? {
                    sub.remove_all(e?.file_name().as_bytes())?;
                }
                drop(sub);
                let c = cname(name)?;
                // SAFETY: valid descriptor and name.
                check(unsafe { libc::unlinkat(self.fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
                    .map(|_| ())
            }
            Some(_) => self.unlink(name),
        }
    }

    /// Clears the way for a new non-directory at `name`: whatever non-directory stands there is
    /// unlinked; a directory there is an error (`EISDIR`).
    fn make_room(&self, name: &[u8]) -> io::Result<()> {
        match self.kind(name)? {
            None => Ok(()),
            Some(Kind::Dir) => Err(io::Error::from_raw_os_error(libc::EISDIR)),
            Some(_) => self.unlink(name),
        }
    }

    /// A new, empty file at `name` (mode `mode`), replacing a non-directory standing there: never
    /// opened through a link, never an existing inode.
    pub fn create_file(&self, name: &[u8], mode: u32) -> io::Result<File> {
        self.make_room(name)?;
        let c = cname(name)?;
        // SAFETY: valid descriptor and name.
        let fd = check(unsafe {
            libc::openat(
                self.fd(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })?;
        // SAFETY: a fresh descriptor nobody else owns.
        let f = unsafe { File::from_raw_fd(fd) };
        set_mode(&f, mode)?;
        Ok(f)
    }

    /// Writes `content` as a new file `name` with `mode` (see [`Dir::create_file`]).
    pub fn write_file(&self, name: &[u8], mode: u32, content: &[u8]) -> io::Result<()> {
        let mut f = self.create_file(name, mode)?;
        f.write_all(content)
    }

    /// Copies the host file `from` (a path of ours, not the tree's) into a new file `name`.
    pub fn copy_in(&self, name: &[u8], mode: u32, from: &Path) -> io::Result<u64> {
        let mut src = File::open(from)?;
        let mut f = self.create_file(name, mode)?;
        io::copy(&mut src, &mut f)
    }

    /// A symlink `name` → `target`, kept as data (the target is never resolved here),
    /// replacing a non-directory standing at `name`.
    pub fn symlink(&self, name: &[u8], target: &[u8]) -> io::Result<()> {
        self.make_room(name)?;
        let c = cname(name)?;
        let t = CString::new(target)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a link"))?;
        // SAFETY: valid strings and descriptor.
        check(unsafe { libc::symlinkat(t.as_ptr(), self.fd(), c.as_ptr()) }).map(|_| ())
    }

    /// A hard link `name` to the regular file `from_name` in `from` (which must be a regular
    /// file, not a link to one), replacing a non-directory standing at `name`.
    pub fn hard_link(&self, name: &[u8], from: &Dir, from_name: &[u8]) -> io::Result<()> {
        if from.kind(from_name)? != Some(Kind::File) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the link's target is not a regular file",
            ));
        }
        self.make_room(name)?;
        let (c, f) = (cname(name)?, cname(from_name)?);
        // SAFETY: valid descriptors and names; flags 0 never follows a link at `from_name`.
        check(unsafe { libc::linkat(from.fd(), f.as_ptr(), self.fd(), c.as_ptr(), 0) }).map(|_| ())
    }

    /// Sets owner of `name` without following a link there.
    pub fn chown(&self, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
        let c = cname(name)?;
        // SAFETY: valid descriptor and name.
        check(unsafe { libc::fchownat(self.fd(), c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
            .map(|_| ())
    }

    /// Sets this directory's owner and mode.
    pub fn set_owner_mode(&self, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
        // SAFETY: a valid descriptor.
        check(unsafe { libc::fchown(self.fd(), uid, gid) })?;
        // SAFETY: a valid descriptor.
        check(unsafe { libc::fchmod(self.fd(), (mode & 0o7777) as libc::mode_t) }).map(|_| ())
    }

    /// Sets this directory's mode.
    pub fn set_mode(&self, mode: u32) -> io::Result<()> {
        // SAFETY: a valid descriptor.
        check(unsafe { libc::fchmod(self.fd(), (mode & 0o7777) as libc::mode_t) }).map(|_| ())
    }
}

/// Sets an open file's mode (exactly: no umask).
pub fn set_mode(f: &File, mode: u32) -> io::Result<()> {
    // SAFETY: a valid descriptor.
    check(unsafe { libc::fchmod(f.as_raw_fd(), (mode & 0o7777) as libc::mode_t) }).map(|_| ())
}

/// Sets an open file's owner, then its mode (a chown clears set-uid bits, so the mode comes
/// last), then its modification time.
pub fn set_owner_mode_mtime(f: &File, uid: u32, gid: u32, mode: u32, mtime: i64) -> io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: a valid descriptor.
    check(unsafe { libc::fchown(fd, uid, gid) })?;
    set_mode(f, mode)?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime as _,
            tv_nsec: 0,
        },
    ];
    // SAFETY: a valid descriptor and two timespecs.
    check(unsafe { libc::futimens(fd, times.as_ptr()) }).map(|_| ())
}

/// `name` as bytes, for the callers that hold `&str`s.
pub fn b(name: &str) -> &[u8] {
    OsStr::new(name).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_writes_through_links() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("f"), "canary").unwrap();
        let root_path = d.path().join("root");
        std::fs::create_dir(&root_path).unwrap();
        std::os::unix::fs::symlink(&outside, root_path.join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), root_path.join("f")).unwrap();
        std::fs::hard_link(outside.join("f"), root_path.join("hard")).unwrap();
        let root = Dir::open_root(&root_path).unwrap();

        // A link where a directory is wanted: refused when walking, replaced on request.
        let e = root.walk(&[b"etc"], true).unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
            "{e}"
        );
        let etc = root.real_subdir(b"etc").unwrap();
        etc.write_file(b"hostname", 0o644, b"sandbox\n").unwrap();
        assert!(root_path.join("etc").is_dir() && !root_path.join("etc").is_symlink());
        // A link or a hard link where a file is wanted: replaced, not written through.
        root.write_file(b"f", 0o600, b"mine").unwrap();
        root.write_file(b"hard", 0o600, b"mine").unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.join("f")).unwrap(),
            "canary"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        assert_eq!(
            std::fs::read_to_string(root_path.join("f")).unwrap(),
            "mine"
        );

        // Symlinks are data; a hard link to a link is refused.
        root.symlink(b"abs", b"/etc/passwd").unwrap();
        assert_eq!(
            std::fs::read_link(root_path.join("abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(root.hard_link(b"h2", &root, b"abs").is_err());
        root.hard_link(b"h3", &root, b"f").unwrap();
        assert!(cname(b"..").is_err() && cname(b"a/b").is_err());
        assert_eq!(components(b"./a//b/.").unwrap(), vec![&b"a"[..], b"b"]);
        assert!(components(b"a/../b").is_err() && components(b"/a").is_err());
    }
}
