//! `sandboxctl agent check`: what an agent would use on this machine (guest kernel, QEMU,
//! accelerator, cgroups), each tried for real, one verdict a line, and an exit code scripts can
//! trust.

use std::path::PathBuf;

use super::cgroup::{CgroupChoice, Cgroups};
use super::{AccelChoice, qemu};
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
        out.push(match super::jail::self_test(cfg.vm_uid_base).await {
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
