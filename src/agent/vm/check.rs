//! `sandboxctl agent check`: what an agent would use on this machine (guest kernel, QEMU,
//! accelerator, cgroups), each tried for real, one verdict a line, and an exit code scripts can
//! trust.

use std::path::PathBuf;

use anyhow::Context;

use super::cgroup::{CgroupChoice, Cgroups};
use super::{AccelChoice, jail, qemu};
use crate::agent::images::Kernel;

/// One part of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckPart {
    Kernel,
    Qemu,
    Accel,
    Cgroups,
    /// A sandbox network namespace made and removed for real.
    Network,
    /// A QEMU started confined (uid, seccomp, no_new_privs, mount namespace) and inspected.
    Confinement,
}

#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub kernel_dir: PathBuf,
    pub accel: AccelChoice,
    pub cgroup_root: CgroupChoice,
    /// The uid confined QEMUs run as.
    pub vm_uid_base: u32,
    pub net: crate::agent::net::NetConfig,
    /// Only these parts (all when empty).
    pub only: Vec<CheckPart>,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub part: CheckPart,
    pub ok: bool,
    pub what: String,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let part = match self.part {
            CheckPart::Kernel => "kernel",
            CheckPart::Qemu => "qemu",
            CheckPart::Accel => "accel",
            CheckPart::Cgroups => "cgroups",
            CheckPart::Network => "network",
            CheckPart::Confinement => "confinement",
        };
        let mark = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{mark} {part}: {}", self.what)
    }
}

/// Runs the parts asked for, in order. A part that cannot work fails; one that works in a
/// lesser way (software emulation, cgroups without controllers) passes and says so.
pub async fn check(cfg: &CheckConfig) -> Vec<Verdict> {
    let wanted = |p: CheckPart| cfg.only.is_empty() || cfg.only.contains(&p);
    let mut out = Vec::new();
    let kernel = Kernel::find(&cfg.kernel_dir);
    if wanted(CheckPart::Kernel) {
        out.push(match &kernel {
            Ok(k) => Verdict {
                part: CheckPart::Kernel,
                ok: true,
                what: format!("{} ({})", k.vmlinuz.display(), k.version),
            },
            Err(e) => Verdict {
                part: CheckPart::Kernel,
                ok: false,
                what: e.to_string(),
            },
        });
    }
    if wanted(CheckPart::Qemu) {
        let v = qemu::version().await;
        out.push(Verdict {
            part: CheckPart::Qemu,
            ok: !v.is_empty(),
            what: if v.is_empty() {
                format!("{} did not run: install qemu-system-x86", qemu::QEMU)
            } else {
                v
            },
        });
    }
    if wanted(CheckPart::Accel) {
        out.push(match &kernel {
            Ok(k) => {
                let a = qemu::detect_accel(cfg.accel, k).await;
                Verdict {
                    part: CheckPart::Accel,
                    ok: true,
                    what: format!("{} ({})", a.kind, a.reason),
                }
            }
            Err(_) => Verdict {
                part: CheckPart::Accel,
                ok: false,
                what: "needs the guest kernel for its probe boot".into(),
            },
        });
    }
    if wanted(CheckPart::Cgroups) {
        let cg = Cgroups::detect(&cfg.cgroup_root);
        out.push(Verdict {
            part: CheckPart::Cgroups,
            ok: true,
            what: cg.summary().to_string(),
        });
        if cg.root().is_some() {
            let t = tokio::task::spawn_blocking(move || cg.self_test()).await;
            out.push(match t {
                Ok(Ok(seen)) => Verdict {
                    part: CheckPart::Cgroups,
                    ok: true,
                    what: format!("self-test: {seen}"),
                },
                Ok(Err(e)) => Verdict {
                    part: CheckPart::Cgroups,
                    ok: false,
                    what: format!("self-test: {e:#}"),
                },
                Err(e) => Verdict {
                    part: CheckPart::Cgroups,
                    ok: false,
                    what: format!("self-test panicked: {e}"),
                },
            });
        }
    }
    if wanted(CheckPart::Network) {
        out.push(match crate::agent::net::bench_setup(cfg.net.clone(), 1).await {
            Ok((setup, _)) => Verdict {
                part: CheckPart::Network,
                ok: true,
                what: format!(
                    "a sandbox network namespace (veth, tap, nftables rules, DNS) made in {} ms and removed",
                    setup.first().map(|d| d.as_millis()).unwrap_or(0)
                ),
            },
            Err(e) => Verdict {
                part: CheckPart::Network,
                ok: false,
                what: format!("{e:#}"),
            },
        });
    }
    if wanted(CheckPart::Confinement) {
        out.push(match confinement_self_test(cfg.vm_uid_base).await {
            Ok(seen) => Verdict {
                part: CheckPart::Confinement,
                ok: true,
                what: seen,
            },
            Err(e) => Verdict {
                part: CheckPart::Confinement,
                ok: false,
                what: format!("{e:#}"),
            },
        });
    }
    out
}

/// Starts a QEMU confined as VMs are (no guest: `-M none -S`) in a scratch data dir, reads back
/// what confines it and ends it. Returns what was seen, for `sandboxctl agent check`.
async fn confinement_self_test(uid: u32) -> anyhow::Result<String> {
    let data = std::env::temp_dir().join(format!("sandboxctl-check-{}", std::process::id()));
    let dir = data.join("vms").join("sbx_check");
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(data.join("secret"))?;
    let result = async {
        jail::hand_over(&dir, uid, uid, &[])?;
        let confined = jail::Jail {
            uid,
            gid: uid,
            hidden: vec![data.clone()],
            netns: None,
            ram: None,
        };
        let args: Vec<String> = [
            "-M",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-qmp",
            "unix:qmp.sock,server=on,wait=off",
            "-sandbox",
            jail::SANDBOX_ARG,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut child = qemu::spawn(&dir, &args, None, Some(&confined), false)?;
        let pid = child.id().context("QEMU exited at once")?;
        let seen = async {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !dir.join("qmp.sock").exists() {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "QEMU did not start: {}",
                    qemu::console_tail(&dir, 3)
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
                    .unwrap_or_default()
            };
            let view: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root{}", data.display()))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            anyhow::ensure!(field("Uid:") == uid.to_string(), "QEMU runs as uid {}", field("Uid:"));
            anyhow::ensure!(field("Seccomp:") == "2", "no seccomp filter (Seccomp: {})", field("Seccomp:"));
            anyhow::ensure!(field("NoNewPrivs:") == "1", "no_new_privs is off");
            anyhow::ensure!(field("CapEff:").trim_start_matches('0').is_empty(), "capabilities left: {}", field("CapEff:"));
            anyhow::ensure!(view == ["vms"], "QEMU sees {view:?} in the data dir");
            anyhow::Ok(format!(
                "QEMU ran as uid {uid} with no capabilities, no_new_privs and its seccomp filter, seeing only its own folder"
            ))
        }
        .await;
        let _ = child.start_kill();
        let _ = child.wait().await;
        seen
    }
    .await;
    let _ = std::fs::remove_dir_all(&data);
    result
}
