//! The guest's side of per-stream flow control: how many bytes a stream may still send to the
//! host. Threads that produce data (exec output readers, file readers) take credit before they
//! read, so a host that stops granting leaves the data where it is (in the pipe, in the file)
//! and the producing process blocks, instead of the guest buffering it.

use std::sync::{Condvar, Mutex};

#[derive(Debug)]
struct State {
    /// Bytes the host still lets us send; ignored when `unlimited`.
    credit: u64,
    unlimited: bool,
    /// Set when the stream ended or was cancelled: nobody should wait any more.
    closed: bool,
    /// Threads waiting for credit right now.
    waiting: u32,
}

#[derive(Debug)]
pub(crate) struct Flow {
    state: Mutex<State>,
    cv: Condvar,
}

impl Flow {
    /// `window` = 0 means no flow control (the host asked for none).
    pub(crate) fn new(window: u64) -> Flow {
        Flow {
            state: Mutex::new(State {
                credit: window,
                unlimited: window == 0,
                closed: false,
                waiting: 0,
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until some credit is available and takes up to `max` bytes of it; None once the
    /// flow is closed.
    pub(crate) fn take(&self, max: usize) -> Option<usize> {
        let mut st = self.lock();
        loop {
            if st.closed {
                return None;
            }
            if st.unlimited {
                return Some(max);
            }
            if st.credit > 0 {
                let n = st.credit.min(max as u64);
                st.credit -= n;
                return Some(n as usize);
            }
            st.waiting += 1;
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            st.waiting -= 1;
        }
    }

    /// Returns credit taken but not used.
    pub(crate) fn give_back(&self, n: usize) {
        if n > 0 {
            self.grant(n as u64);
        }
    }

    /// The host granted `n` more bytes.
    pub(crate) fn grant(&self, n: u64) {
        let mut st = self.lock();
        st.credit = st.credit.saturating_add(n);
        drop(st);
        self.cv.notify_all();
    }

    /// Wakes every waiter for good.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
    }

    /// True while a producer waits for the host to grant credit (the host is slow, not the
    /// process).
    pub(crate) fn starved(&self) -> bool {
        let st = self.lock();
        !st.closed && st.waiting > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn takes_at_most_the_credit_and_waits_for_more() {
        let f = Arc::new(Flow::new(100));
        assert_eq!(f.take(64), Some(64));
        assert_eq!(f.take(64), Some(36));
        f.give_back(6);
        assert_eq!(f.take(64), Some(6));
        let f2 = f.clone();
        let t = std::thread::spawn(move || f2.take(64));
        std::thread::sleep(Duration::from_millis(50));
        assert!(f.starved());
        f.grant(10);
        assert_eq!(t.join().unwrap(), Some(10));
        let f2 = f.clone();
        let t = std::thread::spawn(move || f2.take(64));
        std::thread::sleep(Duration::from_millis(20));
        f.close();
        assert_eq!(t.join().unwrap(), None);
        assert!(!f.starved());
    }

    #[test]
    fn zero_window_means_unlimited() {
        let f = Flow::new(0);
        for _ in 0..10 {
            assert_eq!(f.take(1 << 20), Some(1 << 20));
        }
    }
}
