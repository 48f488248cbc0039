//! Token-bucket rate limits for login, signup and token refresh, per client IP and per account.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// The limits the server applies.
pub struct AuthLimits {
    pub per_ip: RateLimiter,
    pub per_account: RateLimiter,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self {
            per_ip: RateLimiter::new(Limit {
                capacity: 60,
                refill: Duration::from_secs(1),
            }),
            per_account: RateLimiter::new(Limit {
                capacity: 10,
                refill: Duration::from_secs(30),
            }),
        }
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
}
