//! QEMU's confinement (docs/ARCHITECTURE.md#isolation), set up between fork and exec:
//!
//! 1. the VM's network namespace (its tap opened there as root and handed over as fd 3);
//! 2. a mount namespace in which the agent's data dir (and any other folder named, such as the
//!    server's with `--local-agent`) is an empty tmpfs, with only the VM's own folder bound
//!    back at its place: QEMU sees no other VM, template, key or credential;
//! 3. an unprivileged uid/gid of its own, no supplementary groups, no capabilities, and
//!    `no_new_privs`;
//! 4. QEMU's own seccomp filter (`-sandbox on,…`, see [`SANDBOX_ARG`]), so it can never spawn a
//!    process or gain privileges again. Migrations go through descriptors the agent opens and
//!    passes over QMP, since QEMU may not run `exec:` helpers any more.
//!
//! Everything the child does is a plain system call on memory prepared before the fork.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use super::ram;

/// QEMU's seccomp filter: no obsolete calls, no set*id, no fork/exec, no scheduler/affinity
/// changes.
pub const SANDBOX_ARG: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The descriptor number the tap is handed over on (`-netdev tap,fd=3`).
pub const TAP_FD: i32 = 3;

/// Who a confined QEMU runs as and what it sees.
#[derive(Debug, Clone)]
pub struct Jail {
    pub uid: u32,
    pub gid: u32,
    /// Folders hidden behind an empty tmpfs (the VM's folder is bound back inside).
    pub hidden: Vec<PathBuf>,
    /// The VM's network namespace (`/run/netns/…`), with the tap to open inside it.
    pub netns: Option<PathBuf>,
    /// The sealed RAM image it restores from, handed over as [`ram::RAM_FD`].
    pub ram: Option<Arc<OwnedFd>>,
}

/// The descriptor the VM folder is held on while the data dir is hidden (a mount can only be
/// bound from the caller's own mount namespace, so it is opened after the unshare).
const DIR_FD: i32 = 4;

/// What the child needs, prepared before the fork (no allocation after it).
pub struct Prepared {
    netns: Option<OwnedFd>,
    ram: Option<Arc<OwnedFd>>,
    dir_proc: CString,
    dir: CString,
    ancestors: Vec<CString>,
    hidden: Vec<CString>,
    tun: CString,
    tmpfs: CString,
    tmpfs_opts: CString,
    uid: u32,
    gid: u32,
}

impl Jail {
    /// Opens what the child will use for a QEMU in `dir`.
    pub fn prepare(&self, dir: &Path) -> anyhow::Result<Prepared> {
        let dir = std::fs::canonicalize(dir).with_context(|| format!("find {}", dir.display()))?;
        let netns = match &self.netns {
            Some(p) => Some(OwnedFd::from(
                std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?,
            )),
            None => None,
        };
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).context("path with a NUL byte");
        let dir_c = c(&dir)?;
        let mut hidden = Vec::new();
        let mut paths: Vec<PathBuf> = self
            .hidden
            .iter()
            .filter_map(|h| std::fs::canonicalize(h).ok())
            .collect();
        // Outer folders first: an inner one is then already hidden.
        paths.sort_by_key(|p| p.components().count());
        for p in &paths {
            hidden.push(c(p)?);
        }
        let mut ancestors = Vec::new();
        let mut acc = PathBuf::from("/");
        for comp in dir.components().skip(1) {
            acc.push(comp);
            if acc != dir {
                ancestors.push(c(&acc)?);
            }
        }
        Ok(Prepared {
            netns,
            ram: self.ram.clone(),
            dir_proc: CString::new(format!("/proc/self/fd/{DIR_FD}")).expect("no NUL"),
            dir: dir_c,
            ancestors,
            hidden,
            tun: CString::new("/dev/net/tun").expect("no NUL"),
            tmpfs: CString::new("tmpfs").expect("no NUL"),
            tmpfs_opts: CString::new("mode=0711,size=1m").expect("no NUL"),
            uid: self.uid,
            gid: self.gid,
        })
    }
}

/// `struct ifreq` as TUNSETIFF reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn fail(step: &[u8]) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    // SAFETY: write(2) of a static message to stderr (QEMU's log).
    unsafe {
        libc::write(2, b"sandboxctl jail: ".as_ptr().cast(), 17);
        libc::write(2, step.as_ptr().cast(), step.len());
        libc::write(2, b"\n".as_ptr().cast(), 1);
    }
    e
}

impl Prepared {
    /// Runs in the child between fork and exec: only system calls on prepared memory.
    ///
    /// # Safety
    /// Call only in a freshly forked child.
    pub unsafe fn enter(&self, tap: bool) -> std::io::Result<()> {
        // SAFETY (whole body): plain system calls on NUL-terminated strings and descriptors
        // prepared before the fork.
        unsafe {
            if let Some(ns) = &self.netns {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(fail(b"setns"));
                }
                if tap {
                    let fd = libc::open(self.tun.as_ptr(), libc::O_RDWR);
                    if fd < 0 {
                        return Err(fail(b"open /dev/net/tun"));
                    }
                    let mut req = IfReq {
                        name: [0; 16],
                        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
                        _pad: [0; 22],
                    };
                    req.name[..4].copy_from_slice(b"tap0");
                    if libc::ioctl(fd, libc::TUNSETIFF, &mut req as *mut IfReq) != 0 {
                        return Err(fail(b"TUNSETIFF tap0"));
                    }
                    if fd != TAP_FD {
                        if libc::dup2(fd, TAP_FD) < 0 {
                            return Err(fail(b"dup2 tap"));
                        }
                        libc::close(fd);
                    }
                }
            }
            if let Some(ram) = &self.ram {
                // dup2 leaves the copy open across exec (the original is close-on-exec).
                if libc::dup2(ram.as_raw_fd(), ram::RAM_FD) < 0 {
                    return Err(fail(b"dup2 the RAM image"));
                }
            }
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(fail(b"unshare mount namespace"));
            }
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(fail(b"make mounts private"));
            }
            let fd = libc::open(self.dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY);
            if fd < 0 {
                return Err(fail(b"open the VM folder"));
            }
            if fd != DIR_FD {
                if libc::dup2(fd, DIR_FD) < 0 {
                    return Err(fail(b"dup2 the VM folder"));
                }
                libc::close(fd);
            }
            for h in &self.hidden {
                if libc::mount(
                    self.tmpfs.as_ptr(),
                    h.as_ptr(),
                    self.tmpfs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    self.tmpfs_opts.as_ptr().cast(),
                ) != 0
                    && *libc::__errno_location() != libc::ENOENT
                {
                    return Err(fail(b"hide a folder"));
                }
            }
            for a in &self.ancestors {
                if libc::mkdir(a.as_ptr(), 0o711) != 0 && *libc::__errno_location() != libc::EEXIST
                {
                    return Err(fail(b"mkdir in the hidden folder"));
                }
            }
            if libc::mkdir(self.dir.as_ptr(), 0o700) != 0
                && *libc::__errno_location() != libc::EEXIST
            {
                return Err(fail(b"mkdir the VM folder"));
            }
            if libc::mount(
                self.dir_proc.as_ptr(),
                self.dir.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return Err(fail(b"bind the VM folder"));
            }
            libc::close(DIR_FD);
            if libc::chdir(self.dir.as_ptr()) != 0 {
                return Err(fail(b"chdir"));
            }
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(fail(b"setgroups"));
            }
            if libc::setgid(self.gid) != 0 {
                return Err(fail(b"setgid"));
            }
            if libc::setuid(self.uid) != 0 {
                return Err(fail(b"setuid"));
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(fail(b"no_new_privs"));
            }
        }
        Ok(())
    }
}

/// Gives `uid` the VM's folder and the files QEMU writes in it (`names` that exist); files
/// linked in from templates stay root's and read-only.
pub fn hand_over(dir: &Path, uid: u32, gid: u32, names: &[&str]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for n in names {
        let p = dir.join(n);
        match std::os::unix::fs::lchown(&p, Some(uid), Some(gid)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("chown {}", p.display())),
        }
    }
    Ok(())
}

/// Takes a folder back from a confined QEMU (a template build's, before it is installed).
pub fn reclaim(dir: &Path) -> anyhow::Result<()> {
    std::os::unix::fs::chown(dir, Some(0), Some(0))
        .with_context(|| format!("chown {}", dir.display()))
}
