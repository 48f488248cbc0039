//! The few system calls the guest makes about itself: clock, entropy, hostname, memory and disk
//! figures.

use std::io::Write;
use std::os::fd::AsRawFd;

use crate::proto::guest::{GuestStats, Init};

pub(crate) fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|f| f.parse::<f64>().ok())
        })
        .map(|secs| (secs * 1000.0) as u64)
        .unwrap_or(0)
}

/// Memory from `/proc/meminfo` and the root filesystem's size: cheap (one small read and one
/// statvfs), so the reader thread answers it at once.
pub(crate) fn stats() -> GuestStats {
    let mut st = std::fs::read_to_string("/proc/meminfo")
        .map(|m| meminfo(&m))
        .unwrap_or_default();
    let mut fs: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a writable statvfs.
    if unsafe { libc::statvfs(c"/".as_ptr(), &mut fs) } == 0 {
        let frsize = fs.f_frsize as u64;
        st.disk_total = (fs.f_blocks as u64).saturating_mul(frsize);
        st.disk_used = (fs.f_blocks as u64)
            .saturating_sub(fs.f_bfree as u64)
            .saturating_mul(frsize);
    }
    st
}

/// The memory figures of a `/proc/meminfo` text (its values are in kB).
fn meminfo(text: &str) -> GuestStats {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    let total = field("MemTotal").unwrap_or(0);
    let available = field("MemAvailable")
        .or_else(|| field("MemFree"))
        .unwrap_or(0);
    GuestStats {
        mem_total: total,
        mem_used: total.saturating_sub(available),
        mem_cache: field("Cached").unwrap_or(0) + field("Buffers").unwrap_or(0),
        ..GuestStats::default()
    }
}

pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Sets the clock, feeds the entropy pool and sets the hostname. Failures are logged, not fatal:
/// a sandbox with a wrong clock is still a sandbox.
pub(crate) fn apply_init(init: &Init) {
    if init.time_unix_ms > 0 {
        let ts = libc::timespec {
            tv_sec: (init.time_unix_ms / 1000) as _,
            tv_nsec: ((init.time_unix_ms % 1000) * 1_000_000) as libc::c_long,
        };
        // SAFETY: a valid timespec pointer for the duration of the call.
        let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
        if rc != 0 {
            eprintln!(
                "sandboxctl guest: set clock: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    if !init.entropy.is_empty() {
        add_entropy(&init.entropy);
    }
    let hostname = init.hostname.as_deref().unwrap_or(&init.sandbox_id);
    let hostname = &hostname[..hostname.len().min(64)];
    // SAFETY: pointer and length describe a live byte slice.
    let rc = unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
    if rc != 0 {
        eprintln!(
            "sandboxctl guest: sethostname: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// `_IOW('R', 0x03, int[2])`
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;

fn add_entropy(bytes: &[u8]) {
    let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/urandom") else {
        return;
    };
    // Crediting needs CAP_SYS_ADMIN (we are root); a plain write mixes without crediting.
    let words = bytes.len().div_ceil(4);
    let mut info: Vec<u32> = vec![0; 2 + words];
    info[0] = (bytes.len() * 8) as u32; // entropy_count (bits)
    info[1] = bytes.len() as u32; // buf_size (bytes)
    // SAFETY: `info` has room for the header plus `bytes`, copied as raw bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            info.as_mut_ptr().add(2).cast::<u8>(),
            bytes.len(),
        );
    }
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of the size we built.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    if rc != 0 {
        let _ = f.write_all(bytes);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn meminfo_gives_bytes_used_and_cached() {
        let text = "MemTotal:         490000 kB\nMemFree:          300000 kB\n\
                    MemAvailable:     400000 kB\nBuffers:            1000 kB\n\
                    Cached:            20000 kB\nSwapCached:            0 kB\n";
        let st = super::meminfo(text);
        assert_eq!(st.mem_total, 490_000 * 1024);
        assert_eq!(st.mem_used, 90_000 * 1024);
        assert_eq!(st.mem_cache, 21_000 * 1024);
        // An old kernel without MemAvailable: free memory stands in.
        let st = super::meminfo("MemTotal: 100 kB\nMemFree: 40 kB\n");
        assert_eq!(st.mem_used, 60 * 1024);
    }
}
