//! The server's wall clock: what "now" is for token expiry, heartbeat staleness and idle
//! timeouts. It is the system clock, unless a test moved it.
//!
//! **For tests only:** when the environment variable [`TEST_CLOCK_FILE_ENV`] names a file at
//! server start, every reading adds the whole number of seconds in that file (read on each call,
//! so a test moves the running server's time by rewriting it; a missing file means no offset).
//! This is how the integration suite lets a token expire or a host go stale without editing the
//! database. Production servers never set it.

use std::path::PathBuf;
use std::sync::OnceLock;

/// Names the offset file of a test clock (see the module docs). Not for production use.
pub const TEST_CLOCK_FILE_ENV: &str = "SANDBOXCTL_TEST_CLOCK_FILE";

/// A source of Unix time in whole seconds.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// A file holding seconds to add to the system time (tests only).
    offset_file: Option<PathBuf>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { offset_file: None }
    }

    /// The system clock moved by the seconds in `path`, read on every call (tests only).
    pub fn offset_by_file(path: PathBuf) -> Clock {
        Clock {
            offset_file: Some(path),
        }
    }

    /// The system clock, or the test clock [`TEST_CLOCK_FILE_ENV`] asks for.
    pub fn from_env() -> Clock {
        match std::env::var_os(TEST_CLOCK_FILE_ENV) {
            Some(p) if !p.is_empty() => Clock::offset_by_file(PathBuf::from(p)),
            _ => Clock::system(),
        }
    }

    /// Seconds since the Unix epoch, as this clock reads them.
    pub fn now(&self) -> i64 {
        crate::time::unix_now().saturating_add(self.offset())
    }

    fn offset(&self) -> i64 {
        let Some(path) = &self.offset_file else {
            return 0;
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return 0;
        };
        match text.trim().parse::<i64>() {
            Ok(secs) => secs,
            Err(_) => {
                let file = path.display();
                tracing::warn!(%file, "test clock file holds no whole seconds; ignored");
                0
            }
        }
    }
}

/// The process's clock, chosen from the environment on first use.
pub fn global() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(Clock::from_env)
}

/// Seconds since the Unix epoch on the process's clock.
pub fn now() -> i64 {
    global().now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_has_no_offset() {
        let before = crate::time::unix_now();
        let t = Clock::system().now();
        assert!(t >= before && t <= crate::time::unix_now());
    }

    #[test]
    fn offset_file_moves_the_clock_on_every_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("offset");
        let clock = Clock::offset_by_file(file.clone());
        let base = crate::time::unix_now();
        assert!(clock.now() - base <= 1, "a missing file means no offset");
        std::fs::write(&file, "3601\n").unwrap();
        assert!((clock.now() - base - 3601).abs() <= 1);
        std::fs::write(&file, "-50").unwrap();
        assert!((clock.now() - base + 50).abs() <= 1);
        std::fs::write(&file, "soon").unwrap();
        assert!(clock.now() - base <= 1, "garbage is ignored");
    }
}
