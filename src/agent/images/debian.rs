//! The Debian templates: Debian stable (bookworm) minbase made by debootstrap, plus the guest
//! program, booted by the same initramfs as `minimal`. Two [`Flavor`]s share the build: `debian`
//! (python3) and `base` (E2B's default template: bash, python3, pip, git, curl, sudo and the user
//! `user`, uid 1000, home `/home/user`, passwordless sudo).
//!
//! The guest program is installed under `/opt/sandboxctl` with the host libraries it was linked
//! against and started through their dynamic loader, so it never depends on the distribution's
//! own libc; busybox (also under `/opt/sandboxctl`) is PID 1 and brings the network up.
//!
//! The build runs in `templates/.build-<name>-<pid>/` and is renamed into place at the end: an
//! interrupted build leaves nothing that looks like a template (the leftover is removed, mounts
//! and all, by the next agent). Downloaded packages are kept in `data_dir/cache/debootstrap`,
//! so a second build fetches nothing. The mirror is `$SANDBOXCTL_DEBIAN_MIRROR` or
//! `http://deb.debian.org/debian`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::minimal::{
    BUSYBOX, GUEST_PORT, build_initrd, guest_digest, gzip, make_ext4, shared_libraries,
};
use super::tree::{Dir, b};
use super::{Kernel, Template, install_dir, remove_tree, template, templates_dir, unmount_under};

pub const DEBIAN: &str = "debian";
pub const BASE: &str = "base";
const SUITE: &str = "bookworm";
/// Bumped whenever the image layout or init scripts change.
const FORMAT: u32 = 1;
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const OPT: &str = "opt/sandboxctl";

/// One Debian template: its name, the packages beyond minbase, and what is set up in the tree
/// once they are installed.
pub struct Flavor {
    pub name: &'static str,
    packages: &'static [&'static str],
    setup: fn(&Path) -> anyhow::Result<()>,
}

/// `debian`: minbase with python3.
pub const DEBIAN_FLAVOR: Flavor = Flavor {
    name: DEBIAN,
    packages: &["python3"],
    setup: |_| Ok(()),
};

/// `base`: what E2B's `base` template offers, and its user.
pub const BASE_FLAVOR: Flavor = Flavor {
    name: BASE,
    packages: &[
        "bash",
        "ca-certificates",
        "curl",
        "git",
        "python3",
        "python3-pip",
        "python3-venv",
        "sudo",
    ],
    setup: add_user,
};

/// The flavor named `name`, if it is one.
pub fn flavor(name: &str) -> Option<&'static Flavor> {
    [&DEBIAN_FLAVOR, &BASE_FLAVOR]
        .into_iter()
        .find(|f| f.name == name)
}

/// What the template is made of.
fn stamp(flavor: &Flavor, kernel: &Kernel, guest_binary: &Path) -> anyhow::Result<String> {
    Ok(format!(
        "format={FORMAT}\nsuite={SUITE}\npackages={}\nkernel={}\nguest_sha256={}\n",
        flavor.packages.join(","),
        kernel.version,
        guest_digest(guest_binary)?
    ))
}

/// True when `t` was built as `flavor` from this kernel and guest program.
pub fn is_current(flavor: &Flavor, t: &Template, kernel: &Kernel, guest_binary: &Path) -> bool {
    let Some(dir) = t.rootfs.parent() else {
        return false;
    };
    let have = std::fs::read_to_string(dir.join("stamp")).ok();
    have.is_some() && have == stamp(flavor, kernel, guest_binary).ok()
}

/// The user E2B's SDKs run as by default.
pub const USER: &str = "user";
pub const USER_UID: u32 = 1000;

/// Adds the user `user` (uid and gid 1000, home `/home/user` from `/etc/skel`, bash, in the
/// `sudo` group, passwordless sudo) to a Debian tree of ours.
pub fn add_user(root: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::chown;
    let etc = root.join("etc");
    let append_line = |file: &str, line: &str| -> anyhow::Result<()> {
        let path = etc.join(file);
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.split(':').next() == line.split(':').next())
        {
            return Ok(());
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(line);
        text.push('\n');
        std::fs::write(&path, text).with_context(|| format!("write /etc/{file}"))
    };
    append_line(
        "passwd",
        &format!("{USER}:x:{USER_UID}:{USER_UID}::/home/{USER}:/bin/bash"),
    )?;
    append_line("group", &format!("{USER}:x:{USER_UID}:"))?;
    append_line("shadow", &format!("{USER}:!:19000:0:99999:7:::"))?;
    append_line("gshadow", &format!("{USER}:!::"))?;
    // Into the sudo group (the group line's member list).
    let group = etc.join("group");
    let text = std::fs::read_to_string(&group)?;
    let text: Vec<String> = text
        .lines()
        .map(|l| match l.strip_prefix("sudo:") {
            Some(rest)
                if !l
                    .split(':')
                    .nth(3)
                    .unwrap_or("")
                    .split(',')
                    .any(|m| m == USER) =>
            {
                let sep = if l.ends_with(':') { "" } else { "," };
                format!("sudo:{rest}{sep}{USER}")
            }
            _ => l.to_string(),
        })
        .collect();
    std::fs::write(&group, text.join("\n") + "\n")?;
    let sudoers = etc.join("sudoers.d");
    std::fs::create_dir_all(&sudoers)?;
    let rule = sudoers.join(USER);
    std::fs::write(&rule, format!("{USER} ALL=(ALL:ALL) NOPASSWD: ALL\n"))?;
    std::fs::set_permissions(&rule, std::fs::Permissions::from_mode(0o440))?;
    // The home, from /etc/skel, owned by the user.
    let home = root.join("home").join(USER);
    std::fs::create_dir_all(&home)?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o750))?;
    for e in std::fs::read_dir(etc.join("skel"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let to = home.join(e.file_name());
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), &to)?;
            chown(&to, Some(USER_UID), Some(USER_UID))?;
        }
    }
    chown(&home, Some(USER_UID), Some(USER_UID)).context("chown /home/user")?;
    Ok(())
}

/// Builds the template (minutes: the packages are downloaded). Blocking. `progress` hears what
/// the build is doing; `cancel` stops it.
pub fn build(
    data_dir: &Path,
    flavor: &Flavor,
    kernel: &Kernel,
    guest_binary: &Path,
    progress: &dyn Fn(&str),
    cancel: &AtomicBool,
) -> anyhow::Result<Template> {
    let started = Instant::now();
    let name = flavor.name;
    let templates = templates_dir(data_dir);
    std::fs::create_dir_all(&templates)?;
    let stamp = stamp(flavor, kernel, guest_binary)?;
    let tmp = templates.join(format!(".build-{name}-{}", std::process::id()));
    remove_tree(&tmp)?;
    std::fs::create_dir_all(&tmp)?;
    let result = (|| {
        let root = tmp.join("root");
        let cache = std::fs::canonicalize(data_dir)?
            .join("cache")
            .join("debootstrap");
        std::fs::create_dir_all(&cache)?;
        debootstrap(
            &root,
            flavor.packages,
            &cache,
            &tmp.join("debootstrap.log"),
            progress,
            cancel,
        )?;
        progress("setting up");
        (flavor.setup)(&root)?;
        progress("installing the guest program");
        unmount_under(&root)?;
        install_guest(&root, guest_binary, &tmp)?;
        link_sbin_init(&root)?;
        for junk in ["var/cache/apt/archives", "var/lib/apt/lists"] {
            clear_dir(&root.join(junk));
        }
        progress("making image");
        let rootfs = tmp.join("rootfs.ext4");
        make_ext4(&root, &rootfs)?;
        remove_tree(&root)?;
        std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o444))?;
        std::fs::write(tmp.join("initrd.gz"), gzip(&build_initrd(kernel)?)?)?;
        std::fs::write(tmp.join("stamp"), &stamp)?;
        let _ = std::fs::remove_file(tmp.join("debootstrap.log"));
        anyhow::Ok(())
    })();
    if let Err(e) = result {
        if let Err(e2) = remove_tree(&tmp) {
            tracing::warn!(template = name, error = %format!("{e2:#}"), "could not remove the failed build");
        }
        return Err(e.context(format!("build the {name} template")));
    }
    install_dir(&tmp, &templates.join(name))?;
    tracing::info!(
        template = name,
        elapsed_s = started.elapsed().as_secs(),
        "built template"
    );
    template(data_dir, name)
        .with_context(|| format!("template {name} missing right after its build"))
}

/// Runs debootstrap into `root`, turning its log lines into progress.
fn debootstrap(
    root: &Path,
    packages: &[&str],
    cache: &Path,
    log: &Path,
    progress: &dyn Fn(&str),
    cancel: &AtomicBool,
) -> anyhow::Result<()> {
    let mirror = std::env::var("SANDBOXCTL_DEBIAN_MIRROR")
        .ok()
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_MIRROR.to_string());
    progress("debootstrap: starting");
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", packages.join(",")))
        .arg(format!("--cache-dir={}", cache.display()))
        .arg(SUITE)
        .arg(root)
        .arg(&mirror)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe. Dies with the thread that waits for it (the agent).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("run debootstrap (install the debootstrap package)")?;
    let pgid = child.id() as i32;
    let (tx, rx) = mpsc::channel::<String>();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut logfile = std::fs::File::create(log).ok();
    let mut fetched = 0u32;
    let mut tail: Vec<String> = Vec::new();
    let status = loop {
        if cancel.load(Ordering::Acquire) {
            // SAFETY: plain kill(2) of the process group debootstrap leads.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            let _ = child.wait();
            let _ = unmount_under(root);
            bail!("cancelled");
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some(f) = logfile.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if let Some(p) = progress_of(&line, &mut fetched) {
                    progress(&p);
                }
                tail.push(line);
                if tail.len() > 8 {
                    tail.remove(0);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break child.wait()?,
        }
    };
    let _ = unmount_under(root);
    if !status.success() {
        bail!("debootstrap failed ({status}): {}", tail.join(" | "));
    }
    Ok(())
}

/// The progress text for a debootstrap log line, if it changes it.
fn progress_of(line: &str, fetched: &mut u32) -> Option<String> {
    let msg = line.strip_prefix("I: ")?;
    if msg.starts_with("Retrieving InRelease")
        || msg.starts_with("Checking Release")
        || msg.starts_with("Retrieving Packages")
        || msg.starts_with("Validating Packages")
        || msg.starts_with("Resolving dependencies")
        || msg.starts_with("Found ")
    {
        return Some("debootstrap: fetching package lists".into());
    }
    if msg.starts_with("Retrieving ") {
        *fetched += 1;
        return Some(format!("debootstrap: fetching packages ({fetched})"));
    }
    if msg.starts_with("Extracting ") {
        return Some("debootstrap: extracting packages".into());
    }
    if msg.starts_with("Installing ") || msg.starts_with("Unpacking ") {
        return Some("debootstrap: installing packages".into());
    }
    if msg.starts_with("Configuring ") {
        return Some("debootstrap: configuring packages".into());
    }
    None
}

fn clear_dir(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            let _ = std::fs::remove_dir_all(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Puts the guest program, busybox and the init files into a root tree (the Debian one, or a
/// user's archive): everything is written through [`Dir`], so a link the tree holds is never
/// followed, and where the tree has a link or a file in place of a directory we need (`etc`,
/// `opt`, the mount points) it is replaced by a real directory. `scratch` is a folder of ours
/// outside the tree. `/sbin/init` is left alone: the initramfs of an imported image starts
/// `/opt/sandboxctl/init` (busybox init) itself, and the Debian build links `/sbin/init` to it.
pub(super) fn install_guest(
    root: &Path,
    guest_binary: &Path,
    scratch: &Path,
) -> anyhow::Result<()> {
    let top = Dir::open_root(root).with_context(|| format!("open {}", root.display()))?;
    // The mount points init needs (a tree from an archive may lack them).
    for d in ["proc", "sys", "dev", "tmp", "run"] {
        top.real_subdir(b(d))
            .with_context(|| format!("make /{d}"))?;
    }
    let etc = top.real_subdir(b"etc").context("make /etc")?;
    // /opt/sandboxctl is ours: whatever the tree had there goes.
    let opt = top
        .real_subdir(b"opt")
        .and_then(|o| {
            o.remove_all(b"sandboxctl")
                .and_then(|_| o.real_subdir(b"sandboxctl"))
        })
        .with_context(|| format!("make /{OPT}"))?;
    let bin = opt.real_subdir(b"bin").context("make the guest's bin")?;
    let lib = opt.real_subdir(b"lib").context("make the guest's lib")?;
    let stripped = scratch.join("sandboxctl.guest");
    super::install_guest_binary(guest_binary, &stripped)?;
    let copied = bin.copy_in(b"sandboxctl", 0o755, &stripped);
    let _ = std::fs::remove_file(&stripped);
    copied.context("copy the guest program")?;
    bin.copy_in(b"busybox", 0o755, Path::new(BUSYBOX))
        .context("copy busybox")?;

    // The libraries the guest program was linked against, and their loader.
    let mut loader: Option<String> = None;
    for l in shared_libraries(guest_binary)? {
        let file = l
            .file_name()
            .context("library without a name")?
            .to_string_lossy()
            .into_owned();
        lib.copy_in(b(&file), 0o755, &l)
            .with_context(|| format!("copy {}", l.display()))?;
        if file.starts_with("ld-linux") {
            loader = Some(file);
        }
    }
    let run = match loader {
        Some(ld) => format!(
            "exec /{OPT}/lib/{ld} --library-path /{OPT}/lib /{OPT}/bin/sandboxctl guest --port \"$1\""
        ),
        None => format!("exec /{OPT}/bin/sandboxctl guest --port \"$1\""),
    };
    let files: [(&Dir, &str, u32, String); 6] = [
        (
            &opt,
            "guest",
            0o755,
            format!(
                "#!/bin/sh\n# sandboxctl guest program, with the libraries it was built for.\n{run}\n"
            ),
        ),
        (&opt, "rcS", 0o755, RCS.replace("@OPT@", OPT)),
        (
            &etc,
            "inittab",
            0o644,
            format!(
                "::sysinit:/{OPT}/rcS\n::respawn:/{OPT}/guest {GUEST_PORT}\n::shutdown:/{OPT}/bin/busybox umount -a -r\n"
            ),
        ),
        (&etc, "hostname", 0o644, "sandbox\n".into()),
        (
            &etc,
            "hosts",
            0o644,
            "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n".into(),
        ),
        (&etc, "resolv.conf", 0o644, String::new()),
    ];
    for (dir, name, mode, content) in files {
        dir.remove_all(b(name))
            .with_context(|| format!("clear the way for {name}"))?;
        dir.write_file(b(name), mode, content.as_bytes())
            .with_context(|| format!("write {name}"))?;
    }
    opt.symlink(b"init", b"bin/busybox")
        .context("link the guest's init")?;
    Ok(())
}

/// `/sbin/init` → the guest's busybox, in the Debian tree (ours: its links are followed).
fn link_sbin_init(root: &Path) -> anyhow::Result<()> {
    let init = root.join("sbin/init");
    if init.exists() || init.is_symlink() {
        std::fs::remove_file(&init)?;
    }
    std::fs::create_dir_all(root.join("sbin"))?;
    symlink(PathBuf::from("/").join(OPT).join("bin/busybox"), &init).context("link /sbin/init")?;
    Ok(())
}

const RCS: &str = r#"#!/bin/sh
# sandboxctl: bring the Debian sandbox up (run once by busybox init).
BB=/@OPT@/bin/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
[ -e /proc/mounts ] || $BB mount -t proc proc /proc
[ -d /sys/class ] || $BB mount -t sysfs sysfs /sys
[ -e /dev/null ] || $BB mount -t devtmpfs devtmpfs /dev
$BB mkdir -p /dev/pts /dev/shm
$BB mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
$BB mount -t tmpfs -o mode=1777 tmpfs /dev/shm
$BB mount -t tmpfs -o mode=1777 tmpfs /tmp
$BB mount -t tmpfs -o mode=755 tmpfs /run
$BB mkdir -p /run/lock
$BB ln -sf /proc/self/fd /dev/fd
$BB ln -sf /proc/self/fd/0 /dev/stdin
$BB ln -sf /proc/self/fd/1 /dev/stdout
$BB ln -sf /proc/self/fd/2 /dev/stderr
$BB hostname -F /etc/hostname
$BB ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  $BB ip addr add 10.0.2.15/24 dev eth0
  $BB ip link set eth0 up
  $BB ip route add default via 10.0.2.2
  echo "nameserver 10.0.2.3" > /etc/resolv.conf
fi
"#;

#[cfg(test)]
mod tests {
    use super::progress_of;
    use super::*;

    #[test]
    fn base_gets_its_user_once() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/skel")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nsudo:x:27:\n").unwrap();
        std::fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        std::fs::write(root.join("etc/skel/.bashrc"), "# bashrc\n").unwrap();
        add_user(root).unwrap();
        add_user(root).unwrap();
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert_eq!(
            passwd,
            "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n"
        );
        let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
        assert_eq!(group, "root:x:0:\nsudo:x:27:user\nuser:x:1000:\n");
        let rule = root.join("etc/sudoers.d/user");
        assert_eq!(
            std::fs::read_to_string(&rule).unwrap(),
            "user ALL=(ALL:ALL) NOPASSWD: ALL\n"
        );
        assert_eq!(std::fs::metadata(&rule).unwrap().mode() & 0o777, 0o440);
        let home = std::fs::metadata(root.join("home/user")).unwrap();
        assert_eq!((home.uid(), home.gid()), (1000, 1000));
        let rc = std::fs::metadata(root.join("home/user/.bashrc")).unwrap();
        assert_eq!(rc.uid(), 1000);
        assert!(
            flavor("base").is_some() && flavor("debian").is_some() && flavor("minimal").is_none()
        );
    }

    #[test]
    fn progress_from_debootstrap_lines() {
        let mut n = 0;
        assert_eq!(
            progress_of("I: Retrieving InRelease ", &mut n).as_deref(),
            Some("debootstrap: fetching package lists")
        );
        assert_eq!(
            progress_of("I: Retrieving libc6 2.36-9", &mut n).as_deref(),
            Some("debootstrap: fetching packages (1)")
        );
        assert_eq!(
            progress_of("I: Retrieving python3 3.11", &mut n).as_deref(),
            Some("debootstrap: fetching packages (2)")
        );
        assert_eq!(
            progress_of("I: Configuring libc-bin...", &mut n).as_deref(),
            Some("debootstrap: configuring packages")
        );
        assert_eq!(progress_of("W: something", &mut n), None);
    }
}
