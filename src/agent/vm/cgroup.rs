//! Per-VM cgroups (cgroup v2): every sandbox's QEMU runs in `<root>/<vm id>`, with `memory.max`,
//! `cpu.max` and `pids.max` set from its shape where the host's v2 hierarchy has those
//! controllers. QEMU enters its cgroup between fork and exec, so no byte of guest RAM is ever
//! allocated outside it.
//!
//! The root defaults to `sandboxctl` at the top of the cgroup2 mount (as Docker's cgroupfs driver
//! does); `--cgroup-root PATH` picks another (a systemd `Delegate=yes` unit's folder, say) and
//! `--cgroup-root off` turns this off. A host without a writable cgroup2 mount runs VMs without
//! one; what was found is reported with the host's facts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Controllers whose limits a VM gets, in the order they are enabled.
const WANTED: [&str; 3] = ["cpu", "memory", "pids"];
/// Memory QEMU needs beyond the guest's RAM (device state, TCG translation cache, I/O buffers).
const MEMORY_OVERHEAD_MB: u64 = 384;
/// Threads of one QEMU: vCPUs, I/O workers, RCU, QMP.
const PIDS_MAX: u32 = 256;
/// cpu.max period, microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// What `--cgroup-root` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupChoice {
    /// `sandboxctl` at the top of the cgroup2 mount, where it can be made.
    Auto,
    Off,
    Path(PathBuf),
}

impl std::str::FromStr for CgroupChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(CgroupChoice::Auto),
            "off" => Ok(CgroupChoice::Off),
            p if p.starts_with('/') => Ok(CgroupChoice::Path(PathBuf::from(p))),
            _ => Err("expected auto, off or an absolute path inside the cgroup2 mount".into()),
        }
    }
}

/// The folder VM cgroups are made in, and the controllers they get.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: Option<PathBuf>,
    controllers: Vec<&'static str>,
    summary: String,
}

/// One VM's cgroup, ready for its QEMU.
#[derive(Debug)]
pub struct VmCgroup {
    pub path: PathBuf,
    /// `cgroup.procs`, opened before the fork: the child writes "0" into it.
    pub procs: std::fs::File,
}

impl Cgroups {
    /// No cgroups; `why` says so in the host's facts.
    pub fn none(why: impl Into<String>) -> Cgroups {
        Cgroups {
            root: None,
            controllers: Vec::new(),
            summary: format!("none: {}", why.into()),
        }
    }

    pub fn detect(choice: &CgroupChoice) -> Cgroups {
        let mount = match cgroup2_mount() {
            Some(m) => m,
            None if *choice == CgroupChoice::Off => return Cgroups::none("turned off"),
            None => return Cgroups::none("this host has no cgroup2 mount"),
        };
        let root = match choice {
            CgroupChoice::Off => return Cgroups::none("turned off (--cgroup-root off)"),
            CgroupChoice::Auto => mount.join("sandboxctl"),
            CgroupChoice::Path(p) if p.starts_with(&mount) && p != &mount => p.clone(),
            CgroupChoice::Path(p) => {
                return Cgroups::none(format!(
                    "--cgroup-root {} is not below the cgroup2 mount {}",
                    p.display(),
                    mount.display()
                ));
            }
        };
        match prepare_root(&mount, &root) {
            Ok(controllers) => {
                let summary = if controllers.is_empty() {
                    format!(
                        "v2 {} (grouped, not limited: this host's v2 hierarchy offers no cpu, \
                         memory or pids controller; they are bound to cgroup v1)",
                        root.display()
                    )
                } else {
                    format!("v2 {}: {}", root.display(), controllers.join(" "))
                };
                Cgroups {
                    root: Some(root),
                    controllers,
                    summary,
                }
            }
            Err(e) => Cgroups::none(format!("cannot use {}: {e}", root.display())),
        }
    }

    /// One line for the host's facts: "v2 PATH: cpu memory pids", or "none: why".
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// The folder VM cgroups are made in, when there is one.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The controllers whose limits each VM gets.
    pub fn controllers(&self) -> &[&'static str] {
        &self.controllers
    }

    /// Makes (or reuses) the VM's cgroup and sets its limits. `None` when this host has no
    /// cgroups for VMs.
    pub fn prepare(
        &self,
        id: &str,
        vcpus: u32,
        memory_mb: u32,
    ) -> anyhow::Result<Option<VmCgroup>> {
        let Some(root) = &self.root else {
            return Ok(None);
        };
        let path = root.join(id);
        make_dir(&path)?;
        for (file, value) in self.limits(vcpus, memory_mb) {
            write_file(&path.join(file), &value)?;
        }
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))
            .map_err(|e| anyhow::anyhow!("open {}/cgroup.procs: {e}", path.display()))?;
        Ok(Some(VmCgroup { path, procs }))
    }

    /// The limit files a VM of this shape gets, with their values, for the controllers this
    /// host has.
    fn limits(&self, vcpus: u32, memory_mb: u32) -> Vec<(&'static str, String)> {
        self.controllers
            .iter()
            .filter_map(|c| match *c {
                "memory" => Some((
                    "memory.max",
                    ((u64::from(memory_mb) + MEMORY_OVERHEAD_MB) << 20).to_string(),
                )),
                "cpu" => Some((
                    "cpu.max",
                    format!(
                        "{} {CPU_PERIOD_US}",
                        u64::from(vcpus.max(1)) * CPU_PERIOD_US
                    ),
                )),
                "pids" => Some(("pids.max", PIDS_MAX.to_string())),
                _ => None,
            })
            .collect()
    }

    /// Places a `sleep` in a throwaway cgroup the way QEMU is placed, and checks that it landed
    /// there with the limits a 1-vCPU, 256 MiB VM gets. Returns what was seen, in words.
    pub fn self_test(&self) -> anyhow::Result<String> {
        let Some(root) = &self.root else {
            anyhow::bail!("no cgroup root ({})", self.summary);
        };
        let id = format!("check-{}", std::process::id());
        let cg = self.prepare(&id, 1, 256)?.expect("a root gives a cgroup");
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        let hook = enter_hook(&cg);
        // SAFETY: the hook only calls write(2) on an fd that outlives the spawn.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, hook);
        }
        let seen = (|| {
            let mut child = cmd
                .spawn()
                .map_err(|e| anyhow::anyhow!("start sleep: {e}"))?;
            let pid = child.id();
            let result = (|| {
                let procs = std::fs::read_to_string(cg.path.join("cgroup.procs"))?;
                anyhow::ensure!(
                    procs.lines().any(|l| l == pid.to_string()),
                    "the process is not in {}",
                    cg.path.display()
                );
                let mut seen = vec![format!("a process was placed in {}", cg.path.display())];
                for (file, want) in self.limits(1, 256) {
                    let got = std::fs::read_to_string(cg.path.join(file))?;
                    anyhow::ensure!(
                        got.trim() == want,
                        "{file} is {:?}, not {want:?}",
                        got.trim()
                    );
                    seen.push(format!("{file} {want}"));
                }
                anyhow::Ok(seen.join(", "))
            })();
            let _ = child.kill();
            let _ = child.wait();
            result
        })();
        drop(cg);
        let removed = (0..50).any(|_| match std::fs::remove_dir(root.join(&id)) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                false
            }
        });
        let seen = seen?;
        anyhow::ensure!(removed, "could not remove {}", root.join(&id).display());
        Ok(seen)
    }

    /// Removes the VM's cgroup once its QEMU is gone (a cgroup with a process in it cannot be
    /// removed; the kernel may take a moment after the process is reaped).
    pub async fn remove(&self, id: &str) {
        let Some(root) = &self.root else { return };
        let path = root.join(id);
        for _ in 0..50 {
            match std::fs::remove_dir(&path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        tracing::warn!(cgroup = %path.display(), "could not remove the VM's cgroup");
    }
}

/// What a child runs between fork and exec to enter `cg` (write(2) of "0" to its `cgroup.procs`,
/// opened before the fork). The fd must stay open until the spawn returns.
pub fn enter_hook(cg: &VmCgroup) -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&cg.procs);
    move || {
        // SAFETY: write(2) is async-signal-safe; `fd` is open (see above).
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Where the unified (v2) hierarchy is mounted: `/sys/fs/cgroup` on v2 hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        // "36 25 0:31 / /sys/fs/cgroup rw,… shared:9 - cgroup2 cgroup2 rw,…"
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// Makes `root` and enables in it (and, where needed, its parent) the wanted controllers the
/// hierarchy offers. Returns those that VM cgroups will have.
fn prepare_root(mount: &Path, root: &Path) -> anyhow::Result<Vec<&'static str>> {
    let parent = root.parent().unwrap_or(mount);
    let wanted = listed_in(&WANTED, &parent.join("cgroup.controllers"))?;
    // A controller must be enabled in the parent's subtree before `root` can pass it on. That
    // works for the mount's top and for a delegated folder with no processes of its own.
    enable(parent, &wanted);
    make_dir(root)?;
    let usable = listed_in(&wanted, &root.join("cgroup.controllers"))?;
    enable(root, &usable);
    listed_in(&usable, &root.join("cgroup.subtree_control"))
}

/// Those of `controllers` that `file` (a space-separated list) names.
fn listed_in(controllers: &[&'static str], file: &Path) -> anyhow::Result<Vec<&'static str>> {
    let listed = read_controllers(file)?;
    Ok(controllers
        .iter()
        .copied()
        .filter(|c| listed.iter().any(|l| l == c))
        .collect())
}

/// Makes a cgroup folder; one that exists is fine.
fn make_dir(path: &Path) -> anyhow::Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => anyhow::bail!("create cgroup {}: {e}", path.display()),
    }
}

fn enable(dir: &Path, controllers: &[&str]) {
    for c in controllers {
        if let Err(e) = write_file(&dir.join("cgroup.subtree_control"), &format!("+{c}")) {
            tracing::debug!(cgroup = %dir.display(), controller = c, error = %e, "controller not enabled");
        }
    }
}

fn read_controllers(file: &Path) -> anyhow::Result<Vec<String>> {
    let s = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("read {}: {e}", file.display()))?;
    Ok(s.split_whitespace().map(str::to_string).collect())
}

fn write_file(file: &Path, value: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .map_err(|e| anyhow::anyhow!("open {}: {e}", file.display()))?;
    f.write_all(value.as_bytes())
        .map_err(|e| anyhow::anyhow!("write {value:?} to {}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse() {
        assert_eq!("auto".parse::<CgroupChoice>(), Ok(CgroupChoice::Auto));
        assert_eq!("off".parse::<CgroupChoice>(), Ok(CgroupChoice::Off));
        assert_eq!(
            "/sys/fs/cgroup/x".parse::<CgroupChoice>(),
            Ok(CgroupChoice::Path("/sys/fs/cgroup/x".into()))
        );
        assert!("relative".parse::<CgroupChoice>().is_err());
    }

    #[test]
    fn off_and_outside_paths_report_why() {
        let off = Cgroups::detect(&CgroupChoice::Off);
        assert!(off.summary().starts_with("none: "), "{}", off.summary());
        assert!(off.prepare("sbx_x", 1, 256).unwrap().is_none());
        if cgroup2_mount().is_some() {
            let outside = Cgroups::detect(&CgroupChoice::Path("/tmp/not-a-cgroup".into()));
            assert!(
                outside.summary().contains("not below the cgroup2 mount"),
                "{}",
                outside.summary()
            );
        }
    }
}
