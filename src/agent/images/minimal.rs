//! The `minimal` template: busybox + the sandboxctl binary (as the guest program), built from
//! host packages with `mkfs.ext4 -d` (no loop mounts).

use std::io::{Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use super::cpio::Cpio;
use super::{Kernel, Template, clean_leftovers, install_dir, template, templates_dir};

pub const MINIMAL: &str = "minimal";

/// Bumped whenever the image layout, init scripts or initramfs change.
const FORMAT: u32 = 1;

/// Where busybox-static puts its binary.
pub(super) const BUSYBOX: &str = "/bin/busybox";

/// The port the guest program serves (virtio-serial port 1 of device 0, named `agent0`).
pub const GUEST_PORT: &str = "/dev/vport0p1";

/// Modules the initramfs loads, in dependency order (docs/ARCHITECTURE.md#qemu-on-these-hosts).
/// microvm has no PCI, so the virtio_pci family is left out.
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_console",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_blk",
];

/// Free space in the root filesystem beyond its content (the image is sparse).
const FREE_BYTES: u64 = 1 << 30;

pub(super) fn ensure(
    data_dir: &Path,
    kernel: &Kernel,
    guest_binary: &Path,
) -> anyhow::Result<Template> {
    let templates = templates_dir(data_dir);
    std::fs::create_dir_all(&templates)
        .with_context(|| format!("create {}", templates.display()))?;
    clean_leftovers(&templates);
    let stamp = stamp(kernel, guest_binary)?;
    let final_dir = templates.join(MINIMAL);
    if let Some(t) = template(data_dir, MINIMAL)
        && std::fs::read_to_string(final_dir.join("stamp"))
            .ok()
            .as_deref()
            == Some(stamp.as_str())
    {
        tracing::debug!("template minimal is up to date");
        return Ok(t);
    }
    let started = Instant::now();
    let tmp = templates.join(format!(".build-{MINIMAL}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = build(&tmp, kernel, guest_binary, &stamp);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context("build the minimal template"));
    }
    install_dir(&tmp, &final_dir)?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "built template minimal"
    );
    template(data_dir, MINIMAL).context("template minimal missing right after its build")
}

/// SHA-256 of the guest program, hex.
pub(super) fn guest_digest(guest_binary: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(guest_binary)
        .with_context(|| format!("open the guest binary {}", guest_binary.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// What the template is made of: rebuilt when any of it changes.
fn stamp(kernel: &Kernel, guest_binary: &Path) -> anyhow::Result<String> {
    let digest = guest_digest(guest_binary)?;
    let bb = std::fs::metadata(BUSYBOX)
        .with_context(|| format!("{BUSYBOX} (install busybox-static)"))?;
    let bb_mtime = bb
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(format!(
        "format={FORMAT}\nkernel={}\nguest_sha256={digest}\nbusybox={}:{bb_mtime}\n",
        kernel.version,
        bb.len()
    ))
}

fn build(out: &Path, kernel: &Kernel, guest_binary: &Path, stamp: &str) -> anyhow::Result<()> {
    let root = out.join("root");
    build_root(&root, guest_binary)?;
    let rootfs = out.join("rootfs.ext4");
    make_ext4(&root, &rootfs)?;
    std::fs::remove_dir_all(&root)?;
    let mut perms = std::fs::metadata(&rootfs)?.permissions();
    perms.set_mode(0o444);
    std::fs::set_permissions(&rootfs, perms)?;
    let initrd = build_initrd(kernel)?;
    std::fs::write(out.join("initrd.gz"), gzip(&initrd)?)?;
    std::fs::write(out.join("stamp"), stamp)?;
    Ok(())
}

pub(super) fn write_file(path: &Path, mode: u32, content: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, content).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn build_root(root: &Path, guest_binary: &Path) -> anyhow::Result<()> {
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "usr/local/bin",
        "etc/init.d",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "var/tmp",
        "var/log",
        "home",
        "mnt",
        "lib",
        "lib64",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::set_permissions(
        root.join("var/tmp"),
        std::fs::Permissions::from_mode(0o1777),
    )?;
    std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700))?;

    // busybox and its applets.
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).context("copy busybox")?;
    let list = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .context("busybox --list-full")?;
    if !list.status.success() {
        bail!("busybox --list-full failed");
    }
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        let link = root.join(applet);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if !link.exists() {
            symlink("/bin/busybox", &link).with_context(|| format!("link {applet}"))?;
        }
    }

    // The guest program, stripped, with the libraries it links.
    let dest = root.join("usr/bin/sandboxctl");
    super::install_guest_binary(guest_binary, &dest)?;
    for lib in shared_libraries(guest_binary)? {
        let rel = lib.strip_prefix("/").unwrap_or(&lib);
        let target = root.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Copies the content (following symlinks), under the name the loader asks for.
        std::fs::copy(&lib, &target).with_context(|| format!("copy {}", lib.display()))?;
    }

    // init.
    let inittab = INITTAB.replace("@PORT@", GUEST_PORT);
    write_file(&root.join("etc/inittab"), 0o644, inittab.as_bytes())?;
    write_file(&root.join("etc/init.d/rcS"), 0o755, RCS.as_bytes())?;
    write_file(&root.join("etc/hostname"), 0o644, b"sandbox\n")?;
    write_file(
        &root.join("etc/hosts"),
        0o644,
        b"127.0.0.1 localhost\n::1 localhost\n",
    )?;
    write_file(&root.join("etc/resolv.conf"), 0o644, b"")?;
    write_file(
        &root.join("etc/passwd"),
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    write_file(
        &root.join("etc/group"),
        0o644,
        b"root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
    )?;
    write_file(
        &root.join("etc/shadow"),
        0o600,
        b"root:*:19000:0:99999:7:::\n",
    )?;
    write_file(
        &root.join("etc/profile"),
        0o644,
        b"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
    )?;
    Ok(())
}

/// The libraries and loader `ldd` lists for `binary` (empty for a static binary).
pub(super) fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path
            && p.starts_with('/')
        {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len() + 4096,
                Err(_) => {}
            }
        }
    }
    total
}

pub(super) fn make_ext4(root: &Path, image: &Path) -> anyhow::Result<()> {
    let size = (dir_size(root) * 12 / 10 + FREE_BYTES).div_ceil(1 << 20) << 20;
    let f = std::fs::File::create(image)?;
    f.set_len(size)?;
    drop(f);
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "sbxroot",
            "-m",
            "0",
            "-O",
            "^has_journal",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(root)
        .arg(image)
        .output()
        .context("run mkfs.ext4 (install e2fsprogs)")?;
    if !out.status.success() {
        bail!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub(super) fn build_initrd(kernel: &Kernel) -> anyhow::Result<Vec<u8>> {
    build_initrd_for(kernel, "/sbin/init")
}

/// The initramfs, switching to `init` (a path in the root filesystem) at its end.
pub(super) fn build_initrd_for(kernel: &Kernel, init: &str) -> anyhow::Result<Vec<u8>> {
    let mut c = Cpio::new();
    for d in [
        "/bin",
        "/dev",
        "/proc",
        "/sys",
        "/newroot",
        "/lib",
        "/lib/modules",
    ] {
        c.dir(d);
    }
    c.char_dev("/dev/console", 0o600, 5, 1);
    c.char_dev("/dev/null", 0o666, 1, 3);
    let busybox = std::fs::read(BUSYBOX).with_context(|| format!("read {BUSYBOX}"))?;
    c.file("/bin/busybox", 0o755, &busybox);
    for applet in [
        "sh",
        "mount",
        "umount",
        "insmod",
        "sleep",
        "switch_root",
        "echo",
        "mkdir",
        "cat",
    ] {
        c.symlink(&format!("/bin/{applet}"), "busybox");
    }
    for m in MODULES {
        let path = kernel.module(m)?;
        let data = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        c.file(&format!("/lib/modules/{m}.ko"), 0o644, &data);
    }
    let script = INITRAMFS_INIT
        .replace("@MODULES@", &MODULES.join(" "))
        .replace("@INIT@", init);
    c.file("/init", 0o755, script.as_bytes());
    Ok(c.finish())
}

pub(super) fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-1", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("run gzip")?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip writer panicked"))??;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

const INITRAMFS_INIT: &str = r#"#!/bin/sh
# sandboxctl initramfs: load the virtio drivers, mount /dev/vda, switch to it.
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
for m in @MODULES@; do
  insmod /lib/modules/$m.ko || echo "initramfs: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ]; do
  i=$((i+1))
  if [ $i -gt 1000 ]; then echo "initramfs: no /dev/vda"; exit 1; fi
  sleep 0.01
done
mount -t ext4 -o rw,noatime /dev/vda /newroot || { echo "initramfs: cannot mount /dev/vda"; exit 1; }
mount -o move /dev /newroot/dev
umount /proc
exec switch_root /newroot @INIT@
"#;

const INITTAB: &str = "::sysinit:/etc/init.d/rcS
::respawn:/usr/bin/sandboxctl guest --port @PORT@
::shutdown:/bin/umount -a -r
";

const RCS: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
[ -e /proc/mounts ] || mount -t proc proc /proc
[ -d /sys/class ] || mount -t sysfs sysfs /sys
[ -e /dev/null ] || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
hostname -F /etc/hostname
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  ip addr add 10.0.2.15/24 dev eth0
  ip link set eth0 up
  ip route add default via 10.0.2.2
  echo "nameserver 10.0.2.3" > /etc/resolv.conf
fi
"#;
