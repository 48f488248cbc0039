//! Templates made from a user's own root filesystem: a tar archive (gzip-compressed or not) of
//! any Linux distribution's tree. The archive is hostile until proven otherwise, so it is unpacked
//! by hand into a private build folder (see [`super::tree`]): no link it holds is ever followed,
//! neither while unpacking nor while our files are added; symlinks are kept as data (the guest's
//! business); hard links may only point at an earlier regular file of the archive; absolute and
//! climbing (`..`) member names are refused; device nodes and FIFOs are skipped (the guest mounts
//! its own /dev). What the archive expands to is counted as it is written (file bytes plus a
//! header's worth per member, not trusting the headers) and capped, and so is the member count.
//! The guest program is installed beside the tree as for `debian` (its own busybox and libraries
//! under /opt/sandboxctl, which the initramfs starts as init, so the tree needs nothing of ours),
//! and the tree becomes a read-only ext4 image booted by the usual initramfs. The archive is kept
//! next to the image, so the template can be rebuilt for a new guest program or kernel.
//!
//! [`build`] does all of that in a folder of its own, taking no lock; only [`Built::install`] (a
//! rename) touches the templates other sandboxes use.

use std::collections::HashSet;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;

use super::debian::install_guest;
use super::minimal::{build_initrd_for, guest_digest, gzip, make_ext4};
use super::tree::{self, Dir};
use super::{Kernel, Template, install_dir, remove_tree, template, templates_dir};

/// Bumped whenever the image layout changes (2: init is /opt/sandboxctl/init, started by the
/// initramfs; nothing of the tree's is followed).
const FORMAT: u32 = 2;
/// The kept archive, in the template's folder.
pub const SOURCE: &str = "source.tar";
/// What the initramfs starts: busybox init, from the guest's own folder.
const INIT: &str = "/opt/sandboxctl/init";
/// What each member costs against [`Limits::max_bytes`] besides its data.
const MEMBER_COST: u64 = 512;

/// What the caller sent was not a usable root filesystem (400).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadArchive(pub String);

/// What the caller sent expands past a limit (413).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TooLarge(pub String);

/// How far an archive may expand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes written into the tree (file data, link targets, [`MEMBER_COST`] per member).
    pub max_bytes: u64,
    /// Members of the archive, device nodes included.
    pub max_members: u64,
}

impl Limits {
    /// Four times the largest upload.
    pub const DEFAULT_MAX_BYTES: u64 = 16 << 30;
    pub const DEFAULT_MAX_MEMBERS: u64 = 1_000_000;
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: Limits::DEFAULT_MAX_BYTES,
            max_members: Limits::DEFAULT_MAX_MEMBERS,
        }
    }
}

fn stamp(kernel: &Kernel, guest_binary: &Path) -> anyhow::Result<String> {
    Ok(format!(
        "format={FORMAT}\nkind=image\nkernel={}\nguest_sha256={}\n",
        kernel.version,
        guest_digest(guest_binary)?
    ))
}

/// True when `t` was made from a user's archive.
pub fn is_imported(t: &Template) -> bool {
    t.rootfs
        .parent()
        .and_then(|d| std::fs::read_to_string(d.join("stamp")).ok())
        .is_some_and(|s| s.lines().any(|l| l == "kind=image"))
}

/// True when an imported `t` was built for this kernel and guest program.
pub fn is_current(t: &Template, kernel: &Kernel, guest_binary: &Path) -> bool {
    let have = t
        .rootfs
        .parent()
        .and_then(|d| std::fs::read_to_string(d.join("stamp")).ok());
    have.is_some() && have == stamp(kernel, guest_binary).ok()
}

/// An image built in its own folder, not yet a template; dropped uninstalled, it is removed.
#[derive(Debug)]
pub struct Built {
    tmp: PathBuf,
    name: String,
    started: Instant,
}

impl Built {
    /// Renames the image into place as template `name` (replacing one of that name). The one
    /// step to take under the templates lock.
    pub fn install(self, data_dir: &Path) -> anyhow::Result<Template> {
        install_dir(&self.tmp, &templates_dir(data_dir).join(&self.name))?;
        tracing::info!(
            template = %self.name,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "built template from an archive"
        );
        template(data_dir, &self.name).context("template missing right after its build")
    }
}

impl Drop for Built {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.tmp) {
            tracing::warn!(error = %format!("{e:#}"), dir = %self.tmp.display(), "could not remove an image build");
        }
    }
}

/// Builds an image for template `name` from the archive at `archive` (moved into the build) in a
/// folder of its own. Blocking. A [`BadArchive`] or [`TooLarge`] error is the caller's fault;
/// anything else is the host's. Nothing is left behind on error.
pub fn build(
    data_dir: &Path,
    kernel: &Kernel,
    guest_binary: &Path,
    name: &str,
    archive: &Path,
    limits: &Limits,
) -> anyhow::Result<Built> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let templates = templates_dir(data_dir);
    std::fs::create_dir_all(&templates)?;
    let stamp = stamp(kernel, guest_binary)?;
    // Unique: builds of the same name may run side by side (the last install wins).
    let tmp = templates.join(format!(
        ".build-{name}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    remove_tree(&tmp)?;
    std::fs::create_dir_all(&tmp)?;
    let built = Built {
        tmp: tmp.clone(),
        name: name.to_string(),
        started: Instant::now(),
    };
    // The tree may hold set-uid files: nobody else on the host may reach them.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
    let root = tmp.join("root");
    std::fs::create_dir(&root)?;
    let members = unpack(archive, &root, limits)?;
    if members == 0 {
        return Err(BadArchive("the archive is empty".into()).into());
    }
    install_guest(&root, guest_binary, &tmp)?;
    let rootfs = tmp.join("rootfs.ext4");
    make_ext4(&root, &rootfs)?;
    remove_tree(&root)?;
    std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o444))?;
    std::fs::write(
        tmp.join("initrd.gz"),
        gzip(&build_initrd_for(kernel, INIT)?)?,
    )?;
    if archive != tmp.join(SOURCE) {
        std::fs::rename(archive, tmp.join(SOURCE)).context("keep the archive")?;
    }
    std::fs::write(tmp.join("stamp"), &stamp)?;
    Ok(built)
}

/// Rebuilds an imported template from its kept archive (a new guest program or kernel) and
/// installs it.
pub fn rebuild(
    data_dir: &Path,
    kernel: &Kernel,
    guest_binary: &Path,
    t: &Template,
    limits: &Limits,
) -> anyhow::Result<Template> {
    let dir = t.rootfs.parent().context("template folder")?;
    let copy = templates_dir(data_dir).join(format!(".source-{}-{}", t.name, std::process::id()));
    std::fs::hard_link(dir.join(SOURCE), &copy)
        .or_else(|_| std::fs::copy(dir.join(SOURCE), &copy).map(|_| ()))
        .context("take the kept archive")?;
    let built = build(data_dir, kernel, guest_binary, &t.name, &copy, limits);
    let _ = std::fs::remove_file(&copy);
    built?.install(data_dir)
}

/// Why an I/O error on a member is the archive's fault, if it is.
fn member_fault(e: &std::io::Error) -> Option<&'static str> {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
            Some("goes through a link or a file of the archive")
        }
        Some(libc::EISDIR) => Some("would replace a directory"),
        Some(libc::ENAMETOOLONG) => Some("has too long a name"),
        _ if e.kind() == std::io::ErrorKind::InvalidInput => Some("is not a usable name"),
        _ => None,
    }
}

/// Unpacks a tar (or tar.gz) archive into `root` (an empty folder); returns how many members it
/// wrote. Never follows a link: see the module's notes.
fn unpack(archive: &Path, root: &Path, limits: &Limits) -> anyhow::Result<u64> {
    let mut f = std::fs::File::open(archive).context("open the archive")?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    f.rewind()?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let bad = |e: std::io::Error| BadArchive(format!("not a readable tar archive: {e}"));
    let top = Dir::open_root(root).with_context(|| format!("open {}", root.display()))?;
    let mut ar = tar::Archive::new(reader);
    // Regular files written so far, by their path in the tree: what hard links may point at.
    let mut files: HashSet<Vec<u8>> = HashSet::new();
    // Directory modes are set at the end, so a read-only directory still takes its members.
    let mut dir_modes: Vec<(Vec<u8>, u32, u32, u32)> = Vec::new();
    let (mut seen, mut written, mut bytes) = (0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 64 * 1024];
    let too_many = |limits: &Limits| {
        TooLarge(format!(
            "the archive has more than {} members",
            limits.max_members
        ))
    };
    let too_big = |limits: &Limits| {
        TooLarge(format!(
            "the archive expands to more than {} bytes",
            limits.max_bytes
        ))
    };
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        seen += 1;
        bytes += MEMBER_COST;
        if seen > limits.max_members {
            return Err(too_many(limits).into());
        }
        if bytes > limits.max_bytes {
            return Err(too_big(limits).into());
        }
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        if matches!(
            kind,
            T::Char | T::Block | T::Fifo | T::XGlobalHeader | T::XHeader
        ) {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let comps =
            tree::components(&raw).map_err(|why| BadArchive(format!("member {shown} {why}")))?;
        let Some((name, parents)) = comps.split_last() else {
            continue; // the tree's own top ("./")
        };
        let key = comps.join(&b'/');
        let fault = |e: std::io::Error| -> anyhow::Error {
            match member_fault(&e) {
                Some(why) => BadArchive(format!("member {shown} {why}")).into(),
                None => anyhow::Error::new(e).context(format!("unpack {shown}")),
            }
        };
        // Unreadable numbers (some writers leave fields blank) fall back to root and plain modes.
        let header = entry.header();
        let plain = if kind == T::Directory { 0o755 } else { 0o644 };
        let mode = header.mode().unwrap_or(plain);
        let uid = header
            .uid()
            .ok()
            .and_then(|u| u32::try_from(u).ok())
            .unwrap_or(0);
        let gid = header
            .gid()
            .ok()
            .and_then(|g| u32::try_from(g).ok())
            .unwrap_or(0);
        let mtime = header.mtime().unwrap_or(0).min(i64::MAX as u64) as i64;
        let dir = top.walk(parents, true).map_err(fault)?;
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                let mut out = dir.create_file(name, 0o600).map_err(fault)?;
                loop {
                    let n = entry.read(&mut buf).map_err(bad)?;
                    if n == 0 {
                        break;
                    }
                    bytes += n as u64;
                    if bytes > limits.max_bytes {
                        return Err(too_big(limits).into());
                    }
                    out.write_all(&buf[..n])
                        .with_context(|| format!("write {shown}"))?;
                }
                tree::set_owner_mode_mtime(&out, uid, gid, mode, mtime)
                    .with_context(|| format!("set the mode of {shown}"))?;
                files.insert(key);
            }
            T::Directory => {
                dir.real_subdir(name).map_err(fault)?;
                files.remove(&key);
                dir_modes.push((key, uid, gid, mode));
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| BadArchive(format!("symlink {shown} has no target")))?;
                bytes += target.len() as u64;
                if bytes > limits.max_bytes {
                    return Err(too_big(limits).into());
                }
                dir.symlink(name, &target).map_err(fault)?;
                dir.chown(name, uid, gid)
                    .with_context(|| format!("set the owner of {shown}"))?;
                files.remove(&key);
            }
            T::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                let to = String::from_utf8_lossy(&target).into_owned();
                let not_ours = || {
                    BadArchive(format!(
                        "hard link {shown} points at {to}, which is not an earlier file of the archive"
                    ))
                };
                let tcomps = tree::components(&target).map_err(|_| not_ours())?;
                if !files.contains(&tcomps.join(&b'/')) {
                    return Err(not_ours().into());
                }
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(not_ours().into());
                };
                let from = top.walk(tparents, false).map_err(|_| not_ours())?;
                dir.hard_link(name, &from, tname).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::InvalidInput {
                        not_ours().into()
                    } else {
                        fault(e)
                    }
                })?;
                files.insert(key);
            }
            other => {
                return Err(BadArchive(format!(
                    "member {shown} is of a type images cannot hold ({other:?})"
                ))
                .into());
            }
        }
        written += 1;
    }
    for (path, uid, gid, mode) in dir_modes.iter().rev() {
        let comps: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
        // A later member may have put something else there: then that stands.
        if let Ok(d) = top.walk(&comps, false) {
            d.set_owner_mode(*uid, *gid, *mode)
                .context("set a directory's mode")?;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    type Builder = tar::Builder<std::fs::File>;

    fn archive(dir: &Path, name: &str, build: impl FnOnce(&mut Builder)) -> PathBuf {
        let path = dir.join(name);
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        build(&mut b);
        b.finish().unwrap();
        path
    }

    fn header(kind: tar::EntryType, name: &str, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(kind);
        // Written raw: the builder itself refuses names with '..' or a leading '/'.
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h
    }

    fn file(b: &mut Builder, name: &str, data: &[u8]) {
        let mut h = header(tar::EntryType::Regular, name, data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn dir(b: &mut Builder, name: &str) {
        let mut h = header(tar::EntryType::Directory, name, 0);
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }

    /// A symlink or hard link `name` → `target`, both written raw.
    fn link(b: &mut Builder, kind: tar::EntryType, name: &str, target: &str) {
        let mut h = header(kind, name, 0);
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }

    fn symlink(b: &mut Builder, name: &str, target: &str) {
        link(b, tar::EntryType::Symlink, name, target);
    }

    /// Everything under `dir` (names, kinds, contents, link targets, modes), links not followed.
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
        use std::os::unix::fs::MetadataExt;
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                let what = if m.is_symlink() {
                    format!("link {:?}", std::fs::read_link(&p).unwrap())
                } else if m.is_dir() {
                    stack.push(p.clone());
                    "dir".to_string()
                } else {
                    format!("file {:?}", std::fs::read(&p).unwrap())
                };
                out.insert(p, format!("{what} mode {:o} nlink {}", m.mode(), m.nlink()));
            }
        }
        out
    }

    /// A canary folder with a file, its snapshot, and a fresh empty root next to it.
    fn canary(d: &Path) -> (PathBuf, BTreeMap<PathBuf, String>, PathBuf) {
        let c = d.join("canary");
        std::fs::create_dir_all(c.join("sub")).unwrap();
        std::fs::write(c.join("hostname"), "canary-host\n").unwrap();
        std::fs::write(c.join("sub/file"), "canary\n").unwrap();
        let before = snapshot(&c);
        let root = d.join("root");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir(&root).unwrap();
        (c, before, root)
    }

    fn bad(e: anyhow::Error) -> String {
        match e.downcast::<BadArchive>() {
            Ok(b) => b.0,
            Err(e) => panic!("not the archive's fault: {e:#}"),
        }
    }

    #[test]
    fn unpacks_files_dirs_and_links_and_skips_devices() {
        let d = tempfile::tempdir().unwrap();
        let a = archive(d.path(), "a.tar", |b| {
            dir(b, "./");
            dir(b, "./etc/");
            file(b, "./etc/os-release", b"ID=mine\n");
            symlink(b, "etc/abs", "/etc/os-release");
            symlink(b, "etc/up", "../../../../etc/passwd");
            link(b, tar::EntryType::Link, "etc/again", "./etc/os-release");
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Char);
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
            h.set_mode(0o666);
            h.set_size(0);
            b.append_data(&mut h, "dev/null", std::io::empty()).unwrap();
        });
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        assert_eq!(unpack(&a, &root, &Limits::default()).unwrap(), 5);
        assert_eq!(
            std::fs::read_to_string(root.join("etc/os-release")).unwrap(),
            "ID=mine\n"
        );
        // Links are data: absolute and climbing targets are kept as they are.
        assert_eq!(
            std::fs::read_link(root.join("etc/abs")).unwrap(),
            Path::new("/etc/os-release")
        );
        assert_eq!(
            std::fs::read_link(root.join("etc/up")).unwrap(),
            Path::new("../../../../etc/passwd")
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(root.join("etc/again")).unwrap().nlink(),
            2
        );
        assert!(
            !root.join("dev/null").exists(),
            "the device node is skipped"
        );

        // Compressed, the same.
        let gz = d.path().join("a.tar.gz");
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        std::io::copy(&mut std::fs::File::open(&a).unwrap(), &mut enc).unwrap();
        enc.finish().unwrap();
        let root_gz = d.path().join("root-gz");
        std::fs::create_dir(&root_gz).unwrap();
        assert_eq!(unpack(&gz, &root_gz, &Limits::default()).unwrap(), 5);
        assert!(root_gz.join("etc/os-release").is_file());

        let junk = d.path().join("junk.tar");
        std::fs::write(&junk, vec![7u8; 2000]).unwrap();
        let e = bad(unpack(&junk, &root, &Limits::default()).unwrap_err());
        assert!(e.contains("tar"), "{e}");
    }

    /// Every way out of the tree an archive can try: each refused with the member named, the
    /// canary folder byte for byte as it was.
    #[test]
    fn refuses_every_way_out_of_the_tree() {
        let d = tempfile::tempdir().unwrap();
        type Build = Box<dyn Fn(&mut Builder, &Path)>;
        let cases: Vec<(&str, Build, &str)> = vec![
            (
                "absolute path",
                Box::new(|b, c| file(b, &format!("{}/pwned", c.display()), b"x")),
                "absolute",
            ),
            (
                "climbing path",
                Box::new(|b, _| file(b, "../canary/pwned", b"x")),
                "'..'",
            ),
            (
                "file through a symlinked folder",
                Box::new(|b, c| {
                    symlink(b, "out", c.to_str().unwrap());
                    file(b, "out/pwned", b"x");
                }),
                "out/pwned",
            ),
            (
                "file over a symlink to a host file",
                Box::new(|b, c| {
                    symlink(b, "sub", c.join("sub").to_str().unwrap());
                    file(b, "sub/file", b"overwritten");
                }),
                "sub/file",
            ),
            (
                "relative symlink climbing out, then through it",
                Box::new(|b, _| {
                    symlink(b, "up", "../canary");
                    dir(b, "up/newdir/");
                }),
                "up/newdir",
            ),
            (
                "hard link to a host file",
                Box::new(|b, c| {
                    link(
                        b,
                        tar::EntryType::Link,
                        "h",
                        c.join("hostname").to_str().unwrap(),
                    )
                }),
                "not an earlier file",
            ),
            (
                "hard link climbing out",
                Box::new(|b, _| link(b, tar::EntryType::Link, "h", "../canary/hostname")),
                "not an earlier file",
            ),
            (
                "hard link through a symlinked folder",
                Box::new(|b, c| {
                    symlink(b, "out", c.to_str().unwrap());
                    link(b, tar::EntryType::Link, "h", "out/hostname");
                }),
                "not an earlier file",
            ),
            (
                "hard link to a name that was a file, then became a link out",
                Box::new(|b, c| {
                    file(b, "f", b"x");
                    symlink(b, "f", c.join("hostname").to_str().unwrap());
                    link(b, tar::EntryType::Link, "h", "f");
                }),
                "not an earlier file",
            ),
        ];
        for (what, build, expect) in cases {
            let (c, before, root) = canary(d.path());
            let a = archive(d.path(), "evil.tar", |b| build(b, &c));
            let e = bad(unpack(&a, &root, &Limits::default()).unwrap_err());
            assert!(e.contains(expect), "{what}: {e}");
            assert_eq!(snapshot(&c), before, "{what}: the canary changed");
        }
    }

    /// An archive whose folders are links to host folders: our own files (the guest program,
    /// busybox, init files) replace the links with real folders and never land in the canary.
    #[test]
    fn our_files_never_follow_the_archives_links() {
        let d = tempfile::tempdir().unwrap();
        let (c, before, root) = canary(d.path());
        let a = archive(d.path(), "a.tar", |b| {
            for top in ["etc", "opt", "run", "tmp", "dev"] {
                symlink(b, top, c.to_str().unwrap());
            }
            dir(b, "sbin/");
            file(b, "sbin/keep", b"mine");
        });
        unpack(&a, &root, &Limits::default()).unwrap();
        install_guest(&root, Path::new("/bin/true"), d.path()).unwrap();
        assert_eq!(snapshot(&c), before, "the canary changed");
        for top in ["etc", "opt", "run", "tmp", "dev"] {
            let m = std::fs::symlink_metadata(root.join(top)).unwrap();
            assert!(m.is_dir(), "{top} is a real folder now");
        }
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "sandbox\n"
        );
        assert!(root.join("opt/sandboxctl/bin/busybox").is_file());
        assert_eq!(
            std::fs::read_link(root.join("opt/sandboxctl/init")).unwrap(),
            Path::new("bin/busybox")
        );
        assert_eq!(std::fs::read(root.join("sbin/keep")).unwrap(), b"mine");

        // Files of ours that the archive made links (or folders): replaced, not followed.
        let (c, before, root) = canary(d.path());
        let a = archive(d.path(), "b.tar", |b| {
            dir(b, "etc/");
            symlink(b, "etc/hostname", c.join("hostname").to_str().unwrap());
            symlink(b, "etc/resolv.conf", c.join("sub/file").to_str().unwrap());
            link(
                b,
                tar::EntryType::Symlink,
                "etc/hosts",
                "../../canary/sub/file",
            );
            dir(b, "etc/inittab/");
            dir(b, "opt/");
            symlink(b, "opt/sandboxctl", c.to_str().unwrap());
        });
        unpack(&a, &root, &Limits::default()).unwrap();
        install_guest(&root, Path::new("/bin/true"), d.path()).unwrap();
        assert_eq!(snapshot(&c), before, "the canary changed");
        assert_eq!(std::fs::read(root.join("etc/resolv.conf")).unwrap(), b"");
        assert!(root.join("etc/inittab").is_file());
    }

    #[test]
    fn expansion_and_member_count_are_capped() {
        let d = tempfile::tempdir().unwrap();
        // 64 MiB of zeros in one member, about 64 KiB compressed.
        let bomb = d.path().join("bomb.tar.gz");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&bomb).unwrap(),
            flate2::Compression::best(),
        );
        {
            let mut b = tar::Builder::new(&mut gz);
            let mut h = tar::Header::new_gnu();
            h.set_size(64 << 20);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, "zeros", std::io::repeat(0).take(64 << 20))
                .unwrap();
            b.finish().unwrap();
        }
        gz.finish().unwrap();
        assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let limits = Limits {
            max_bytes: 8 << 20,
            max_members: 100,
        };
        let e = unpack(&bomb, &root, &limits).unwrap_err();
        let e = e.downcast::<TooLarge>().expect("too large");
        assert!(e.0.contains(&format!("{}", 8 << 20)), "{e}");
        // Written no further than the limit (plus one read buffer).
        assert!(std::fs::metadata(root.join("zeros")).unwrap().len() <= (8 << 20) + (64 << 10));

        let many = archive(d.path(), "many.tar", |b| {
            for i in 0..101 {
                file(b, &format!("f{i}"), b"");
            }
        });
        let root = d.path().join("root2");
        std::fs::create_dir(&root).unwrap();
        let e = unpack(&many, &root, &limits).unwrap_err();
        assert!(
            e.downcast_ref::<TooLarge>()
                .is_some_and(|t| t.0.contains("more than 100 members")),
            "{e:#}"
        );
    }
}
