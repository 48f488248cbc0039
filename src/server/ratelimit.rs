//! Token-bucket rate limits for login, signup and token refresh, per client IP and per account,
//! and the pool that bounds password hashing.
//!
//! Failed logins lock an account per client IP: an attacker who fails from one address is slowed
//! there and nowhere else. When an account fails from so many addresses that it looks attacked as
//! a whole, addresses it logged in from before keep the normal path and every other address gets
//! a slow one (one attempt a minute), so no one can keep the real owner out.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// A bucket of `capacity` attempts that refills one attempt every `refill`.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub capacity: u32,
    pub refill: Duration,
}

pub struct RateLimiter {
    limit: Limit,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(limit: Limit) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one attempt for `key`; when none is left, the seconds until one is.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    /// Without taking anything: the seconds until `key` has an attempt again, if it has none now.
    pub fn blocked(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        let per_sec = 1.0 / self.limit.refill.as_secs_f64().max(0.001);
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = buckets.get(key)?;
        let tokens = (tokens + now.duration_since(*at).as_secs_f64() * per_sec)
            .min(f64::from(self.limit.capacity));
        (tokens < 1.0).then(|| ((1.0 - tokens) / per_sec).ceil().max(1.0) as u64)
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), u64> {
        let cap = f64::from(self.limit.capacity);
        let per_sec = 1.0 / self.limit.refill.as_secs_f64().max(0.001);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Drop full buckets so memory stays bounded under a flood of distinct keys.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < cap
            });
        }
        let (tokens, at) = buckets.entry(key.to_string()).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(cap);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

/// Addresses remembered per account as ones it logged in from.
const KNOWN_ADDRESSES: usize = 8;
/// Accounts whose known addresses are kept (the map is cleared past this).
const KNOWN_ACCOUNTS: usize = 100_000;

/// The limits the server applies to login, signup and refresh.
pub struct AuthLimits {
    /// Every auth call, per client address.
    pub per_ip: RateLimiter,
    /// Failed logins per account and client address.
    failures_here: RateLimiter,
    /// Failed logins per account from everywhere: when empty, the account is under attack.
    failures_anywhere: RateLimiter,
    /// Under attack, attempts per account from an address it never logged in from.
    slow_path: RateLimiter,
    known: Mutex<HashMap<String, VecDeque<IpAddr>>>,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self {
            per_ip: RateLimiter::new(Limit {
                capacity: 60,
                refill: Duration::from_secs(1),
            }),
            failures_here: RateLimiter::new(Limit {
                capacity: 10,
                refill: Duration::from_secs(30),
            }),
            failures_anywhere: RateLimiter::new(Limit {
                capacity: 100,
                refill: Duration::from_secs(10),
            }),
            slow_path: RateLimiter::new(Limit {
                capacity: 1,
                refill: Duration::from_secs(60),
            }),
            known: Mutex::new(HashMap::new()),
        }
    }
}

impl AuthLimits {
    /// May `ip` try to log in to `account` now? Otherwise the seconds until it may.
    pub fn login_allowed(&self, account: &str, ip: IpAddr) -> Result<(), u64> {
        let here = format!("{account}|{ip}");
        if let Some(s) = self.failures_here.blocked(&here) {
            return Err(s);
        }
        if self.failures_anywhere.blocked(account).is_some() && !self.is_known(account, ip) {
            return self.slow_path.check(&here);
        }
        Ok(())
    }

    /// Records a failed login to `account` from `ip`.
    pub fn login_failed(&self, account: &str, ip: IpAddr) {
        let _ = self.failures_here.check(&format!("{account}|{ip}"));
        let _ = self.failures_anywhere.check(account);
    }

    /// Records a successful login: `ip` keeps the normal path for `account` while it is attacked.
    pub fn login_succeeded(&self, account: &str, ip: IpAddr) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= KNOWN_ACCOUNTS && !known.contains_key(account) {
            known.clear();
        }
        let ips = known.entry(account.to_string()).or_default();
        ips.retain(|k| *k != ip);
        if ips.len() >= KNOWN_ADDRESSES {
            ips.pop_front();
        }
        ips.push_back(ip);
    }

    fn is_known(&self, account: &str, ip: IpAddr) -> bool {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.get(account).is_some_and(|ips| ips.contains(&ip))
    }
}

/// Password hashing is refused for now: too many are running and waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashBusy;

/// Runs argon2 work (19 MiB each) at most `running` at a time on blocking threads, with at most
/// `waiting` callers queued for up to `wait`; anything beyond is refused at once, so a login
/// flood costs bounded memory and leaves the blocking pool to the database.
pub struct HashPool {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    wait: Duration,
}

impl HashPool {
    pub fn new(running: usize, waiting: usize, wait: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(running.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting: waiting,
            wait,
        }
    }

    /// Runs `work` once a slot is free; [`HashBusy`] when the queue is full or the wait too long.
    /// The slot is held until `work` ends, even if the caller went away meanwhile.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashBusy> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(HashBusy);
                }
                let got =
                    tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await;
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                match got {
                    Ok(Ok(p)) => p,
                    _ => return Err(HashBusy),
                }
            }
        };
        tokio::task::spawn_blocking(move || {
            let _slot = permit;
            work()
        })
        .await
        .map_err(|_| HashBusy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_empty_and_refill() {
        let rl = RateLimiter::new(Limit {
            capacity: 3,
            refill: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.check_at("a", t0).is_ok());
        }
        let wait = rl.check_at("a", t0).unwrap_err();
        assert!((1..=10).contains(&wait), "{wait}");
        assert!(rl.check_at("b", t0).is_ok(), "keys are independent");
        assert!(rl.check_at("a", t0 + Duration::from_secs(10)).is_ok());
        assert!(rl.check_at("a", t0 + Duration::from_secs(10)).is_err());
    }

    #[test]
    fn one_address_cannot_lock_out_another() {
        let l = AuthLimits::default();
        let (attacker, owner): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "198.51.100.7".parse().unwrap(),
        );
        for _ in 0..10 {
            assert!(l.login_allowed("a", attacker).is_ok());
            l.login_failed("a", attacker);
        }
        assert!(l.login_allowed("a", attacker).is_err());
        assert!(l.login_allowed("a", owner).is_ok());
    }

    #[test]
    fn an_attacked_account_keeps_known_and_slow_paths() {
        let l = AuthLimits::default();
        let owner: IpAddr = "198.51.100.7".parse().unwrap();
        l.login_succeeded("a", owner);
        for i in 0..120u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.login_failed("a", ip);
        }
        assert!(l.login_allowed("a", owner).is_ok(), "known address");
        assert!(l.login_allowed("a", owner).is_ok(), "known address, again");
        let new: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(l.login_allowed("a", new).is_ok(), "slow path: one attempt");
        assert!(l.login_allowed("a", new).is_err(), "slow path: then a wait");
        assert!(
            l.login_allowed("b", new).is_ok(),
            "other accounts unaffected"
        );
    }

    #[tokio::test]
    async fn the_hash_pool_refuses_beyond_its_queue() {
        let pool = Arc::new(HashPool::new(1, 1, Duration::from_secs(5)));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let p = pool.clone();
        let running = tokio::spawn(async move { p.run(move || rx.recv().is_ok()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let p = pool.clone();
        let queued = tokio::spawn(async move { p.run(|| 2).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.run(|| 3).await, Err(HashBusy), "queue full");
        tx.send(()).unwrap();
        assert_eq!(running.await.unwrap(), Ok(true));
        assert_eq!(queued.await.unwrap(), Ok(2));
        assert_eq!(pool.run(|| 4).await, Ok(4));
    }
}
