//! The benchmark's baselines: the same QEMU boot and the same snapshot restore the agent does,
//! with the same kernel, initrd, image and snapshot files, timed until the guest program's first
//! answer — no agent, server or HTTP.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::channel::GuestChannel;
use super::instance::new_init;
use super::qmp::Qmp;
use super::snapshot::{DEFAULT_SHAPE, STATE_LIMIT, Snapshot, link_snapshot_files};
use super::{Accel, AccelChoice, INCOMING, qemu};
use crate::agent::images::{self, Kernel};

/// One cold boot of `template` from the agent data dir's images; the VM is killed afterwards.
pub async fn bare_cold_boot(
    agent_data_dir: &Path,
    kernel_dir: &Path,
    template: &str,
) -> anyhow::Result<Duration> {
    let (kernel, tpl) = kernel_and_template(agent_data_dir, kernel_dir, template)?;
    let accel = qemu::detect_accel(AccelChoice::Auto, &kernel).await;
    let dir = tempfile_dir()?;
    let result = async {
        qemu::prepare_disk(&dir, &kernel, &tpl).await?;
        let id = "sbx_bench_bare";
        let spec = qemu::LaunchSpec {
            id,
            vcpus: 1,
            memory_mb: 256,
            net: qemu::NetDev::Hub,
            confined: false,
            accel: &accel,
            tsc_khz: qemu::host_tsc_khz(),
            memory: qemu::Memory::Anonymous,
            disk: qemu::DISK,
            incoming: false,
        };
        let args = qemu::args(&spec);
        let t = Instant::now();
        let mut child = qemu::spawn(&dir, &args, None, None, false)?;
        let channel = GuestChannel::new(&dir, qemu::AGENT_SOCK);
        let answered = channel.connect(Duration::from_secs(90)).await;
        let elapsed = t.elapsed();
        stop(&channel, &mut child).await;
        answered.map_err(|e| anyhow::anyhow!("the guest did not answer: {e}"))?;
        Ok(elapsed)
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// One restore of `template`'s boot snapshot (the default shape) the way the agent restores:
/// the snapshot's layers and memory file linked, a fresh qcow2 overlay, QEMU started with
/// incoming state, the state loaded over QMP and the VM continued. Timed from the first file
/// operation to the guest program's first answer; the VM is killed afterwards.
pub async fn bare_restore(
    agent_data_dir: &Path,
    kernel_dir: &Path,
    template: &str,
) -> anyhow::Result<Duration> {
    Ok(restore_then(agent_data_dir, kernel_dir, template, 0)
        .await?
        .restore)
}

/// What a bare restored VM's guest channel costs, with no agent, server or HTTP in the way.
#[derive(Debug, Default)]
pub struct BareRoundTrips {
    /// The restore itself (as [`bare_restore`]).
    pub restore: Duration,
    /// A Ping answered by a Pong.
    pub ping: Vec<Duration>,
    /// `ExecStart` of `true` to its `Exit` (the guest forks and runs it).
    pub exec: Vec<Duration>,
    /// The same execs' own time as the guest reports it (start to exit, inside the guest).
    pub exec_in_guest: Vec<Duration>,
}

/// Restores `template`'s boot snapshot like [`bare_restore`], then times `n` pings and `n`
/// execs of `true` on the guest channel, one after another.
pub async fn bare_round_trips(
    agent_data_dir: &Path,
    kernel_dir: &Path,
    template: &str,
    n: usize,
) -> anyhow::Result<BareRoundTrips> {
    restore_then(agent_data_dir, kernel_dir, template, n).await
}

async fn restore_then(
    agent_data_dir: &Path,
    kernel_dir: &Path,
    template: &str,
    round_trips: usize,
) -> anyhow::Result<BareRoundTrips> {
    let (kernel, tpl) = kernel_and_template(agent_data_dir, kernel_dir, template)?;
    let snap_dir = tpl
        .rootfs
        .parent()
        .context("template folder")?
        .join("snapshots")
        .join(DEFAULT_SHAPE.key());
    let snap = Snapshot::load(&snap_dir).with_context(|| {
        format!(
            "no boot snapshot in {} (the agent makes it after the first sandbox)",
            snap_dir.display()
        )
    })?;
    let accel = qemu::detect_accel(AccelChoice::Auto, &kernel).await;
    let dir = tempfile_dir()?;
    let result = async {
        let t = Instant::now();
        link_snapshot_files(&snap, &dir)?;
        qemu::link_file(&snap.dir.join(qemu::STATE), &dir.join(INCOMING), false)?;
        qemu::link_file(&kernel.vmlinuz, &dir.join(qemu::KERNEL), true)?;
        qemu::create_overlay(&dir, qemu::DISK, snap.meta.top(), "qcow2").await?;
        let spec = incoming_spec(
            "sbx_bench_bare",
            &accel,
            (snap.meta.vcpus, snap.meta.memory_mb),
            snap.meta.network,
            snap.meta.memory_file,
        );
        let mut child = qemu::spawn(&dir, &qemu::args(&spec), None, None, false)?;
        let channel = GuestChannel::new(&dir, qemu::AGENT_SOCK);
        let restored = async {
            // A boot snapshot with a RAM file was saved with x-ignore-shared.
            load_until_answer(&dir, &channel, INCOMING, snap.meta.memory_file).await?;
            let mut out = BareRoundTrips {
                restore: t.elapsed(),
                ..Default::default()
            };
            if round_trips > 0 {
                // The round trips run on a guest in a sandbox's state: with an identity, clock
                // and entropy, as the agent gives every sandbox.
                let init = new_init("sbx-bench-bare", &Default::default(), None);
                let wait = Duration::from_secs(20);
                let s = channel.begin_init(&init, wait).await?;
                channel.finish_init(s, Instant::now() + wait, true).await?;
            }
            let wait = Duration::from_secs(10);
            for _ in 0..round_trips {
                let t = Instant::now();
                channel.ping(wait).await?;
                out.ping.push(t.elapsed());
            }
            let req = crate::proto::guest::ExecStart {
                cmd: "true".into(),
                // As the API sends it (the guest then also keeps the command's time).
                timeout_ms: Some(super::DEFAULT_EXEC_TIMEOUT_SEC * 1000),
                ..Default::default()
            };
            for _ in 0..round_trips {
                let t = Instant::now();
                let done = channel.exec(&req, 4096, wait).await?;
                anyhow::ensure!(
                    done.exit.exit_code == 0,
                    "true exited {}",
                    done.exit.exit_code
                );
                out.exec.push(t.elapsed());
                out.exec_in_guest
                    .push(Duration::from_millis(done.exit.duration_ms));
            }
            anyhow::Ok(out)
        }
        .await;
        stop(&channel, &mut child).await;
        restored
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// One resume of the paused sandbox `id` the way the agent resumes it, by bare QEMU: its saved
/// state, disk and RAM file (when the state keeps only the pages its guest changed) used from a
/// copy of its folder (the disk copied, the rest linked: the sandbox's own files stay as they
/// are), QEMU started with incoming state, loaded, continued. Timed from QEMU's start to the
/// guest program's first answer; the VM is killed afterwards.
pub async fn bare_resume(
    agent_data_dir: &Path,
    kernel_dir: &Path,
    id: &str,
) -> anyhow::Result<Duration> {
    let src = agent_data_dir.join("vms").join(id);
    let record = super::record::read_record(&src)
        .with_context(|| format!("no VM record in {}", src.display()))?;
    anyhow::ensure!(
        src.join(qemu::STATE).is_file(),
        "{id} is not paused (no saved state)"
    );
    let kernel = Kernel::find(kernel_dir)?;
    let accel = qemu::detect_accel(AccelChoice::Auto, &kernel).await;
    let dir = tempfile_dir()?;
    let result = async {
        for e in std::fs::read_dir(&src)?.flatten() {
            let name = e.file_name();
            let Some(n) = name.to_str() else { continue };
            if !e.file_type()?.is_file() || n.ends_with(".sock") || n.ends_with(".log") {
                continue;
            }
            if n == qemu::DISK {
                std::fs::copy(e.path(), dir.join(n))?;
            } else {
                qemu::link_file(&e.path(), &dir.join(n), true)?;
            }
        }
        let spec = incoming_spec(
            "sbx_bench_bare_resume",
            &accel,
            (record.vcpus, record.memory_mb),
            record.network,
            record.memory_file && dir.join(qemu::MEM).is_file(),
        );
        let t = Instant::now();
        let mut child = qemu::spawn(&dir, &qemu::args(&spec), None, None, false)?;
        let channel = GuestChannel::new(&dir, qemu::AGENT_SOCK);
        // A pause saves without x-ignore-shared (see `lifecycle`).
        let resumed = load_until_answer(&dir, &channel, qemu::STATE, false)
            .await
            .map(|()| t.elapsed());
        stop(&channel, &mut child).await;
        resumed
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The command line of a bare QEMU standing in for a VM of `shape` (vCPUs, MB): unconfined, its
/// network device attached to nothing, waiting for incoming state, its RAM the folder's RAM file
/// mapped privately when `memory_file` (as the agent maps a template's RAM), else anonymous.
fn incoming_spec<'a>(
    id: &'a str,
    accel: &'a Accel,
    shape: (u32, u32),
    network: bool,
    memory_file: bool,
) -> qemu::LaunchSpec<'a> {
    qemu::LaunchSpec {
        id,
        vcpus: shape.0,
        memory_mb: shape.1,
        net: if network {
            qemu::NetDev::Hub
        } else {
            qemu::NetDev::None
        },
        confined: false,
        accel,
        tsc_khz: qemu::host_tsc_khz(),
        memory: if memory_file {
            qemu::Memory::File {
                path: qemu::MEM,
                shared: false,
            }
        } else {
            qemu::Memory::Anonymous
        },
        disk: qemu::DISK,
        incoming: true,
    }
}

/// Loads the saved state `state` into the bare QEMU waiting in `dir` (with x-ignore-shared when
/// it was saved so), continues it and returns once its guest answers on `channel`.
async fn load_until_answer(
    dir: &Path,
    channel: &GuestChannel,
    state: &str,
    ignore_shared: bool,
) -> anyhow::Result<()> {
    let mut q = Qmp::connect_wait(dir, qemu::QMP_SOCK, Duration::from_secs(10)).await?;
    if ignore_shared {
        q.set_ignore_shared(true).await?;
    }
    q.load_state(state, STATE_LIMIT).await?;
    let (hello, cont) = tokio::join!(channel.connect(Duration::from_secs(30)), q.cont());
    cont?;
    hello.map_err(|e| anyhow::anyhow!("the restored guest did not answer: {e}"))?;
    Ok(())
}

/// Ends a bare VM: its channel closed, QEMU killed and reaped.
async fn stop(channel: &GuestChannel, child: &mut tokio::process::Child) {
    channel.close();
    let _ = child.start_kill();
    let _ = child.wait().await;
}

fn kernel_and_template(
    agent_data_dir: &Path,
    kernel_dir: &Path,
    template: &str,
) -> anyhow::Result<(Kernel, images::Template)> {
    let kernel = Kernel::find(kernel_dir)?;
    let tpl = images::template(agent_data_dir, template)
        .with_context(|| format!("no template '{template}' in {}", agent_data_dir.display()))?;
    Ok((kernel, tpl))
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "sandboxctl-bench-{}-{}",
        std::process::id(),
        crate::ids::new_id("b")
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
