//! Templates made from a user's own root filesystem: a tar archive (gzip-compressed or not) of
//! any Linux distribution's tree. It is unpacked into a private build folder (members that
//! would land outside the tree are refused; device nodes and FIFOs are skipped, the guest mounts
//! its own /dev), the guest program is installed beside it as for `debian` (its own busybox and
//! libraries under /opt/sandboxctl, so the tree needs nothing of ours), and the tree becomes a
//! read-only ext4 image booted by the usual initramfs. The archive is kept next to the image, so
//! the template can be rebuilt for a new guest program or kernel.

use std::io::{Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};
use std::time::Instant;

use anyhow::Context;

use super::debian::install_guest;
use super::minimal::{build_initrd, guest_digest, gzip, make_ext4};
use super::{Kernel, Template, install_dir, remove_tree, template, templates_dir};

/// Bumped whenever the image layout changes.
const FORMAT: u32 = 1;
/// The kept archive, in the template's folder.
pub const SOURCE: &str = "source.tar";

/// What the caller sent was not a usable root filesystem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadArchive(pub String);

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

/// Builds template `name` from the archive at `archive` (moved into the template). Blocking.
/// A [`BadArchive`] error is the caller's fault; anything else is the host's.
pub fn build(
    data_dir: &Path,
    kernel: &Kernel,
    guest_binary: &Path,
    name: &str,
    archive: &Path,
) -> anyhow::Result<Template> {
    let started = Instant::now();
    let templates = templates_dir(data_dir);
    std::fs::create_dir_all(&templates)?;
    let stamp = stamp(kernel, guest_binary)?;
    let tmp = templates.join(format!(".build-{name}-{}", std::process::id()));
    remove_tree(&tmp)?;
    std::fs::create_dir_all(&tmp)?;
    // The tree may hold set-uid files: nobody else on the host may reach them.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
    let result = (|| {
        let root = tmp.join("root");
        std::fs::create_dir(&root)?;
        let members = unpack(archive, &root)?;
        if members == 0 {
            return Err(BadArchive("the archive is empty".into()).into());
        }
        install_guest(&root, guest_binary)?;
        let rootfs = tmp.join("rootfs.ext4");
        make_ext4(&root, &rootfs)?;
        remove_tree(&root)?;
        std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o444))?;
        std::fs::write(tmp.join("initrd.gz"), gzip(&build_initrd(kernel)?)?)?;
        if archive != tmp.join(SOURCE) {
            std::fs::rename(archive, tmp.join(SOURCE)).context("keep the archive")?;
        }
        std::fs::write(tmp.join("stamp"), &stamp)?;
        anyhow::Ok(())
    })();
    if let Err(e) = result {
        if let Err(e2) = remove_tree(&tmp) {
            tracing::warn!(error = %format!("{e2:#}"), "could not remove the failed image build");
        }
        return Err(e);
    }
    install_dir(&tmp, &templates.join(name))?;
    tracing::info!(
        template = name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "built template from an archive"
    );
    template(data_dir, name).context("template missing right after its build")
}

/// Rebuilds an imported template from its kept archive (a new guest program or kernel).
pub fn rebuild(
    data_dir: &Path,
    kernel: &Kernel,
    guest_binary: &Path,
    t: &Template,
) -> anyhow::Result<Template> {
    let dir = t.rootfs.parent().context("template folder")?;
    let copy = templates_dir(data_dir).join(format!(".source-{}-{}", t.name, std::process::id()));
    std::fs::hard_link(dir.join(SOURCE), &copy)
        .or_else(|_| std::fs::copy(dir.join(SOURCE), &copy).map(|_| ()))
        .context("take the kept archive")?;
    let built = build(data_dir, kernel, guest_binary, &t.name, &copy);
    let _ = std::fs::remove_file(&copy);
    built
}

/// Unpacks a tar (or tar.gz) archive into `root`; returns how many members it had.
fn unpack(archive: &Path, root: &Path) -> anyhow::Result<u64> {
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
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    let mut members = 0;
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            continue;
        }
        let path = entry.path().map_err(bad)?.into_owned();
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(BadArchive(format!(
                "member {} climbs out of the tree ('..')",
                path.display()
            ))
            .into());
        }
        match entry.unpack_in(root) {
            Ok(true) => members += 1,
            Ok(false) => {
                return Err(BadArchive(format!(
                    "member {} would land outside the tree",
                    path.display()
                ))
                .into());
            }
            Err(e) => {
                return Err(BadArchive(format!("member {}: {e}", path.display())).into());
            }
        }
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(
        dir: &Path,
        build: impl FnOnce(&mut tar::Builder<std::fs::File>),
    ) -> std::path::PathBuf {
        let path = dir.join("a.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        build(&mut b);
        b.finish().unwrap();
        path
    }

    fn file(b: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        // Written raw: the builder itself refuses names with '..'.
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    fn unpacks_and_refuses_escapes() {
        let d = tempfile::tempdir().unwrap();
        let a = archive(d.path(), |b| {
            file(b, "etc/os-release", b"ID=mine\n");
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
        assert_eq!(unpack(&a, &root).unwrap(), 1, "the device node is skipped");
        assert_eq!(
            std::fs::read_to_string(root.join("etc/os-release")).unwrap(),
            "ID=mine\n"
        );
        assert!(!root.join("dev/null").exists());

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
        assert_eq!(unpack(&gz, &root_gz).unwrap(), 1);
        assert!(root_gz.join("etc/os-release").is_file());

        let evil = archive(d.path(), |b| file(b, "../escaped", b"x"));
        let e = unpack(&evil, &root).unwrap_err();
        assert!(e.downcast_ref::<BadArchive>().is_some(), "{e:#}");
        assert!(!d.path().join("escaped").exists());

        // A symlink out of the tree, then a member through it.
        let through = archive(d.path(), |b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            b.append_link(&mut h, "out", d.path()).unwrap();
            file(b, "out/pwned", b"x");
        });
        let root2 = d.path().join("root2");
        std::fs::create_dir(&root2).unwrap();
        let e = unpack(&through, &root2).unwrap_err();
        assert!(e.downcast_ref::<BadArchive>().is_some(), "{e:#}");
        assert!(format!("{e:#}").contains("out/pwned"), "{e:#}");
        assert!(!d.path().join("pwned").exists());

        let junk = d.path().join("junk.tar");
        std::fs::write(&junk, vec![7u8; 2000]).unwrap();
        let e = unpack(&junk, &root).unwrap_err();
        assert!(e.downcast_ref::<BadArchive>().is_some(), "{e:#}");
    }
}
