//! The benchmark's baseline: the same QEMU boot the agent does, with the same kernel, initrd and
//! image, timed from QEMU's start to the guest program's first answer — no agent, server or HTTP.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::channel::GuestChannel;
use super::{AccelChoice, qemu};
use crate::agent::images::{self, Kernel};

/// One cold boot of `template` from the agent data dir's images; the VM is killed afterwards.
pub async fn bare_cold_boot(
    agent_data_dir: &Path,
    kernel_dir: &Path,
    template: &str,
) -> anyhow::Result<Duration> {
    let kernel = Kernel::find(kernel_dir)?;
    let tpl = images::template(agent_data_dir, template)
        .with_context(|| format!("no template '{template}' in {}", agent_data_dir.display()))?;
    let accel = qemu::detect_accel(AccelChoice::Auto, &kernel).await;
    let dir = tempfile_dir()?;
    let result = async {
        qemu::prepare_disk(&dir, &kernel, &tpl).await?;
        let id = "sbx_bench_bare";
        let spec = qemu::LaunchSpec {
            id,
            vcpus: 1,
            memory_mb: 256,
            network: true,
            accel: &accel,
            tsc_khz: qemu::host_tsc_khz(),
            memory: qemu::Memory::Anonymous,
            disk: qemu::DISK,
            incoming: false,
        };
        let args = qemu::args(&spec);
        let t = Instant::now();
        let mut child = qemu::spawn(&dir, &args, None)?;
        let channel = GuestChannel::new(&dir, qemu::AGENT_SOCK);
        let answered = channel.connect(Duration::from_secs(90)).await;
        let elapsed = t.elapsed();
        channel.close();
        let _ = child.start_kill();
        let _ = child.wait().await;
        answered.map_err(|e| anyhow::anyhow!("the guest did not answer: {e}"))?;
        Ok(elapsed)
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
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
