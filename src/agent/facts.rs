//! What the agent reports about its machine.

use std::path::Path;

use crate::proto::agent::{Accelerator, HostFacts};

pub fn memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

pub fn cpu_cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Free disk space under `dir`, in GB.
pub fn disk_gb(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return 0;
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    (st.f_bavail as u64).saturating_mul(st.f_frsize as u64) / 1_000_000_000
}

/// True when the CPU advertises hardware virtualisation (vmx or svm).
pub fn cpu_has_virt() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false)
}

pub fn gather(
    data_dir: &Path,
    address: &str,
    accel: Accelerator,
    accel_reason: &str,
    cgroups: &str,
) -> HostFacts {
    HostFacts {
        arch: std::env::consts::ARCH.to_string(),
        cpu_cores: cpu_cores(),
        memory_mb: memory_mb(),
        disk_gb: disk_gb(data_dir),
        address: address.to_string(),
        accel,
        accel_reason: accel_reason.to_string(),
        cgroups: cgroups.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn facts_are_plausible() {
        assert!(super::memory_mb() > 0);
        assert!(super::cpu_cores() >= 1);
        assert!(super::disk_gb(std::path::Path::new("/")) > 0);
    }
}
