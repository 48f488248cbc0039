//! The QEMU side: accelerator detection, the microvm command line, spawning a detached QEMU and
//! looking at its process afterwards.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

use super::jail;
use super::{Accel, AccelChoice};
use crate::agent::images::{Kernel, Template};

pub const QEMU: &str = "qemu-system-x86_64";

/// File names inside a VM's folder (and a snapshot's). QEMU runs with the folder as its working
/// directory and gets these relative names, which keeps unix socket paths short whatever the data
/// dir is; every file a VM boots or restores from is linked into its folder, so it never depends
/// on a template staying where it was.
pub const QMP_SOCK: &str = "qmp.sock";
pub const AGENT_SOCK: &str = "agent.sock";
pub const CONSOLE_LOG: &str = "console.log";
pub const QEMU_LOG: &str = "qemu.log";
/// The VM's own copy-on-write overlay (the top of its disk chain).
pub const DISK: &str = "disk.qcow2";
/// The template's ext4 image (the bottom of the disk chain).
pub const BASE: &str = "base.ext4";
pub const KERNEL: &str = "vmlinuz";
pub const INITRD: &str = "initrd.gz";
/// Guest RAM kept as a file (boot snapshots: QEMU maps it, shared while the template boots,
/// privately in each sandbox restored from it).
pub const MEM: &str = "mem.ram";
/// Device state (and guest RAM, except for boot snapshots) written by a migration.
pub const STATE: &str = "state.bin";
pub const PID_FILE: &str = "qemu.pid";

/// Where the guest's RAM comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory<'a> {
    /// Anonymous memory (cold boots and restores of a full state stream).
    Anonymous,
    /// A file mapping: `shared` for a template being booted for its snapshot (its RAM ends up in
    /// the file), private (copy-on-write) for sandboxes restored from that snapshot.
    File { path: &'a str, shared: bool },
}

impl Memory<'static> {
    /// A sandbox restored from a snapshot: its RAM image (a sealed copy of the snapshot's RAM
    /// file, see [`super::ram`]) mapped privately when the snapshot has one, else anonymous
    /// memory the state stream fills.
    pub fn restored(memory_file: bool) -> Memory<'static> {
        if memory_file {
            Memory::File {
                path: super::ram::RAM_PATH,
                shared: false,
            }
        } else {
            Memory::Anonymous
        }
    }
}

/// The guest's network device and what is behind it. The device (virtio-net, same MMIO slot) is
/// the same for `Tap` and `Hub`, and neither backend has state of its own in a snapshot, so a
/// template booted with `Hub` restores into a sandbox with `Tap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetDev {
    /// No network device.
    None,
    /// The sandbox's tap, handed over as [`jail::TAP_FD`] inside its network namespace.
    Tap,
    /// A device connected to nothing (template boots and conversions: no traffic at all).
    Hub,
}

/// Everything the command line is made from. The kernel and initrd are `KERNEL` and `INITRD` in
/// the working directory.
#[derive(Debug, Clone)]
pub struct LaunchSpec<'a> {
    pub id: &'a str,
    pub vcpus: u32,
    pub memory_mb: u32,
    pub net: NetDev,
    /// Under QEMU's seccomp filter (every VM the manager runs; the bench's bare baseline not).
    pub confined: bool,
    pub accel: &'a Accel,
    pub tsc_khz: Option<u64>,
    pub memory: Memory<'a>,
    /// The qcow2 file that is the guest's disk (the top of its chain).
    pub disk: &'a str,
    /// Start stopped, waiting for `migrate-incoming` instead of booting.
    pub incoming: bool,
}

/// The kernel command line. Under TCG the TSC calibration can hang when the host is busy
/// (docs/ARCHITECTURE.md#qemu-on-these-hosts): give the rate and skip the checks.
pub fn kernel_cmdline(accel: &Accel, tsc_khz: Option<u64>) -> String {
    // cryptomgr.notests: the crypto self-tests cost ~0.5 s of emulated CPU at every boot.
    let mut s = String::from("console=ttyS0 quiet panic=-1 reboot=t cryptomgr.notests");
    if accel.kind == "tcg" {
        s.push_str(" no_timer_check tsc=reliable");
        if let Some(khz) = tsc_khz {
            s.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    s
}

/// QEMU's arguments (without the program name). Snapshot restores need the same devices in the
/// same order as the VM that was saved (the migration stream names devices by MMIO slot):
/// serial channel, disk, network. RAM is always a memory backend called `mem`, so a state
/// saved from a file-backed VM restores into anonymous memory and the other way round.
pub fn args(spec: &LaunchSpec<'_>) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", spec.id, "-M", "microvm,memory-backend=mem"]);
    if spec.accel.kind == "kvm" {
        push(&["-accel", "kvm", "-cpu", "host"]);
    } else if spec.vcpus > 1 {
        push(&["-accel", "tcg,thread=multi", "-cpu", "max"]);
    } else {
        push(&["-accel", "tcg", "-cpu", "max"]);
    }
    let mem = spec.memory_mb.to_string();
    let smp = spec.vcpus.to_string();
    push(&["-m", &mem, "-smp", &smp]);
    let backend = match spec.memory {
        Memory::Anonymous => format!("memory-backend-ram,id=mem,size={mem}M"),
        Memory::File { path, shared } => format!(
            "memory-backend-file,id=mem,size={mem}M,mem-path={path},share={}",
            if shared { "on" } else { "off" }
        ),
    };
    push(&["-object", &backend]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    // Appended to, so that a resumed VM's log goes on where it stopped (and can be cut short
    // while QEMU writes: see `cap_console_log`).
    push(&[
        "-chardev",
        &format!("file,id=console,path={CONSOLE_LOG},append=on"),
    ]);
    push(&["-serial", "chardev:console"]);
    push(&["-qmp", &format!("unix:{QMP_SOCK},server=on,wait=off")]);
    let cmdline = kernel_cmdline(spec.accel, spec.tsc_khz);
    push(&["-kernel", KERNEL, "-initrd", INITRD, "-append", &cmdline]);
    push(&[
        "-device",
        "virtio-serial-device",
        "-chardev",
        &format!("socket,id=agent,path={AGENT_SOCK},server=on,wait=off"),
        "-device",
        "virtserialport,chardev=agent,name=agent0",
    ]);
    push(&[
        "-blockdev",
        &format!("driver=file,filename={},node-name=file0", spec.disk),
        "-blockdev",
        "driver=qcow2,file=file0,node-name=disk0",
        "-device",
        "virtio-blk-device,drive=disk0",
    ]);
    let netdev = match spec.net {
        NetDev::None => None,
        NetDev::Tap => Some(format!("tap,id=n0,fd={}", jail::TAP_FD)),
        NetDev::Hub => Some("hubport,id=n0,hubid=0".to_string()),
    };
    if let Some(n) = netdev {
        push(&["-netdev", &n, "-device", "virtio-net-device,netdev=n0"]);
    }
    if spec.confined {
        push(&["-sandbox", jail::SANDBOX_ARG]);
    }
    if spec.incoming {
        push(&["-S", "-incoming", "defer"]);
    }
    a
}

/// Makes `dst` the same file as `src`: a hard link (so deleting or rebuilding a template never
/// pulls a file from under a VM), else a copy (another filesystem), or with `symlink_ok` a
/// symbolic link (for the kernel, which lives outside the data dir and is never deleted by us).
pub fn link_file(src: &Path, dst: &Path, symlink_ok: bool) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(dst);
    if std::fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    if symlink_ok {
        let abs = std::fs::canonicalize(src).with_context(|| format!("find {}", src.display()))?;
        std::os::unix::fs::symlink(&abs, dst).with_context(|| format!("link {}", src.display()))
    } else {
        std::fs::copy(src, dst)
            .map(|_| ())
            .with_context(|| format!("copy {} to {}", src.display(), dst.display()))
    }
}

/// Creates the qcow2 overlay `name` in `dir` on `backing` (a file name in the same folder:
/// qcow2 resolves relative backing names from the overlay's own folder).
pub async fn create_overlay(
    dir: &Path,
    name: &str,
    backing: &str,
    backing_fmt: &str,
) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("qemu-img")
        .current_dir(dir)
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            backing_fmt,
            "-b",
            backing,
            name,
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .context("run qemu-img (install qemu-utils)")?;
    if !out.status.success() {
        anyhow::bail!(
            "qemu-img create failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// QEMU's version line (`QEMU emulator version 7.2.…`): snapshots are only restored by the
/// QEMU that wrote them.
pub async fn version() -> String {
    let out = tokio::process::Command::new(QEMU)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await;
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
        Err(_) => String::new(),
    }
}

/// Lays out a cold boot of `template` in `dir`: the kernel, initrd and base image linked in and
/// a qcow2 overlay (`DISK`) on the base.
pub async fn prepare_disk(dir: &Path, kernel: &Kernel, template: &Template) -> anyhow::Result<()> {
    link_file(&kernel.vmlinuz, &dir.join(KERNEL), true)?;
    link_file(&template.initrd, &dir.join(INITRD), false)?;
    link_file(&template.rootfs, &dir.join(BASE), false)?;
    create_overlay(dir, DISK, BASE, "raw").await
}

/// Starts QEMU in its own session (it outlives the agent) with `dir` as working directory and,
/// when given, inside `cgroup` and confined by `jail` (both entered between fork and exec;
/// `tap`: open the namespace's tap as fd 3).
pub fn spawn(
    dir: &Path,
    args: &[String],
    cgroup: Option<&super::cgroup::VmCgroup>,
    jail: Option<&jail::Jail>,
    tap: bool,
) -> anyhow::Result<tokio::process::Child> {
    let prepared = jail.map(|j| j.prepare(dir)).transpose()?;
    let log = std::fs::File::create(dir.join(QEMU_LOG)).context("create qemu.log")?;
    let log2 = log.try_clone()?;
    let mut cmd = tokio::process::Command::new(QEMU);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(false);
    let mut enter = cgroup.map(super::cgroup::enter_hook);
    // SAFETY: setsid, the cgroup hook's write and the jail's calls are async-signal-safe
    // system calls on memory prepared before the fork; the caller holds the VmCgroup (its fd)
    // until spawn returns; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if let Some(hook) = &mut enter {
                hook()?;
            }
            match &prepared {
                Some(p) => p.enter(tap),
                None => Ok(()),
            }
        });
    }
    cmd.spawn()
        .with_context(|| format!("start {QEMU} (install qemu-system-x86)"))
}

/// True when `pid` is a live (not zombie) QEMU whose working directory is `dir`.
pub fn is_our_qemu(pid: u32, dir: &Path) -> bool {
    if !is_alive(pid) {
        return false;
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let want = std::fs::canonicalize(dir).ok();
    let exe_ok = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
        .unwrap_or(false);
    exe_ok && cwd.is_some() && cwd == want
}

/// True when the process exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S …": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub fn kill(pid: u32, sig: i32) {
    if pid > 1 {
        // SAFETY: plain kill(2).
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

/// The host's TSC rate in kHz, for `tsc_early_khz=`: the nominal rate in the CPU's model name
/// ("… @ 2.30GHz") or else the "cpu MHz" line of /proc/cpuinfo.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_tsc_khz(&info)
}

fn parse_tsc_khz(info: &str) -> Option<u64> {
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    if let Some(model) = field("model name")
        && let Some((_, ghz)) = model.rsplit_once('@')
        && let Some(num) = ghz.trim().strip_suffix("GHz")
        && let Ok(g) = num.trim().parse::<f64>()
    {
        return Some((g * 1_000_000.0).round() as u64);
    }
    let mhz = field("cpu MHz")?.parse::<f64>().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// Picks the accelerator. Auto: KVM only with vmx/svm in /proc/cpuinfo, an openable /dev/kvm and
/// a probe boot that works; TCG otherwise, with the reason.
pub async fn detect_accel(choice: AccelChoice, kernel: &Kernel) -> Accel {
    match choice {
        AccelChoice::Tcg => Accel {
            kind: "tcg",
            reason: "software emulation chosen by configuration".into(),
        },
        AccelChoice::Kvm => Accel {
            kind: "kvm",
            reason: "KVM chosen by configuration".into(),
        },
        AccelChoice::Auto => {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let hw = cpuinfo
                .lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
            if !hw {
                return Accel {
                    kind: "tcg",
                    reason: "the CPU advertises no hardware virtualisation (no vmx/svm flag), \
                             so VMs run under QEMU software emulation"
                        .into(),
                };
            }
            if let Err(e) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
            {
                return Accel {
                    kind: "tcg",
                    reason: format!("/dev/kvm cannot be opened ({e}); using software emulation"),
                };
            }
            match probe_kvm(kernel).await {
                Ok(()) => Accel {
                    kind: "kvm",
                    reason: "hardware virtualisation with a working /dev/kvm".into(),
                },
                Err(e) => Accel {
                    kind: "tcg",
                    reason: format!("a KVM probe boot failed ({e:#}); using software emulation"),
                },
            }
        }
    }
}

/// Boots the kernel under KVM with no root filesystem: a working KVM gets as far as the
/// "unable to mount root" panic, which (panic=-1, -no-reboot) ends QEMU.
async fn probe_kvm(kernel: &Kernel) -> anyhow::Result<()> {
    let fut = tokio::process::Command::new(QEMU)
        .args([
            "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "128", "-smp", "1",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .args(["-append", "console=ttyS0 panic=-1 reboot=t"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .context("timed out")?
        .context("run qemu")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Kernel panic") || text.contains("VFS:") {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        anyhow::bail!(
            "{}",
            err.lines().last().unwrap_or("the kernel did not start")
        )
    }
}

/// A console log grows to this size before its start is cut away: the guest decides what it
/// writes to its serial port, and the host's disk must not fill up with it.
pub const CONSOLE_LOG_MAX: u64 = 2 << 20;
/// What is kept of it then.
pub const CONSOLE_LOG_KEEP: u64 = 512 << 10;
/// The first line of a log that was cut.
pub const CONSOLE_CUT_MARK: &str = "[sandboxctl: earlier console output was cut]\n";

/// Cuts the VM's console log down to its last [`CONSOLE_LOG_KEEP`] bytes once it is over
/// [`CONSOLE_LOG_MAX`]. QEMU appends (O_APPEND), so its next write lands after what is kept.
/// Returns whether the log was cut.
pub fn cap_console_log(dir: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let path = dir.join(CONSOLE_LOG);
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len <= CONSOLE_LOG_MAX {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(len - CONSOLE_LOG_KEEP))?;
    let mut tail = Vec::with_capacity(CONSOLE_LOG_KEEP as usize);
    (&mut f).take(CONSOLE_LOG_KEEP).read_to_end(&mut tail)?;
    // Start the kept part at a line.
    let from = tail
        .iter()
        .position(|b| *b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    f.set_len(0)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(CONSOLE_CUT_MARK.as_bytes())?;
    f.write_all(&tail[from..])?;
    Ok(true)
}

/// Starts `to`'s console log with the end of `from`'s: a VM restored from a snapshot shows the
/// boot it was saved from.
pub fn seed_console_log(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut src = match std::fs::File::open(from.join(CONSOLE_LOG)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = src.metadata()?.len();
    src.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_LOG_KEEP)))?;
    let mut dst = std::fs::File::create(to.join(CONSOLE_LOG))?;
    std::io::copy(&mut src.take(CONSOLE_LOG_KEEP), &mut dst)?;
    Ok(())
}

/// The last `n` lines of the VM's console, for error messages.
pub fn console_tail(dir: &Path, n: usize) -> String {
    let read = |name: &str| {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(dir.join(name)) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 << 10)));
        let mut b = Vec::new();
        let _ = f.take(16 << 10).read_to_end(&mut b);
        String::from_utf8_lossy(&b).into_owned()
    };
    let mut text = read(CONSOLE_LOG);
    text.push_str(&read(QEMU_LOG));
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

pub fn pid_file(dir: &Path) -> PathBuf {
    dir.join(PID_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_from_model_name_or_mhz() {
        let a = "model name\t: Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz\ncpu MHz\t\t: 2299.998\n";
        assert_eq!(parse_tsc_khz(a), Some(2_300_000));
        let b = "model name\t: Intel(R) Xeon(R) Processor\ncpu MHz\t\t: 2299.998\n";
        assert_eq!(parse_tsc_khz(b), Some(2_299_998));
        assert_eq!(parse_tsc_khz("nothing"), None);
    }

    #[test]
    fn console_log_is_cut_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!cap_console_log(dir.path()).unwrap(), "no log yet");
        let line = |i: usize| format!("line {i:08}\n");
        let mut text = String::new();
        let mut i = 0;
        while (text.len() as u64) <= CONSOLE_LOG_MAX {
            text.push_str(&line(i));
            i += 1;
        }
        std::fs::write(dir.path().join(CONSOLE_LOG), &text).unwrap();
        assert!(cap_console_log(dir.path()).unwrap());
        let cut = std::fs::read_to_string(dir.path().join(CONSOLE_LOG)).unwrap();
        assert!(cut.starts_with(CONSOLE_CUT_MARK));
        assert!(cut.len() as u64 <= CONSOLE_LOG_KEEP + CONSOLE_CUT_MARK.len() as u64);
        assert!(cut.ends_with(&line(i - 1)), "the end is kept");
        let body = &cut[CONSOLE_CUT_MARK.len()..];
        assert!(body.starts_with("line "), "kept from a line start");
        assert!(!cap_console_log(dir.path()).unwrap(), "small enough now");

        let other = tempfile::tempdir().unwrap();
        seed_console_log(dir.path(), other.path()).unwrap();
        let seeded = std::fs::read(other.path().join(CONSOLE_LOG)).unwrap();
        let keep = (cut.len() as u64).min(CONSOLE_LOG_KEEP) as usize;
        assert!(
            seeded == cut.as_bytes()[cut.len() - keep..],
            "the seed is the log's end"
        );
    }

    #[test]
    fn tcg_cmdline_has_calibration_workarounds() {
        let tcg = Accel {
            kind: "tcg",
            reason: String::new(),
        };
        let s = kernel_cmdline(&tcg, Some(2_300_000));
        assert!(s.contains("no_timer_check tsc=reliable tsc_early_khz=2300000"));
        let kvm = Accel {
            kind: "kvm",
            reason: String::new(),
        };
        assert!(!kernel_cmdline(&kvm, Some(1)).contains("tsc"));
    }
}
