//! The open-loop load of `sandboxctl bench server`: requests leave on a fixed schedule whatever
//! the server does, and each one's latency is measured from the time it was scheduled, so a
//! server that stalls shows up as latency (no coordinated omission) instead of a slower sender.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

/// One team's API key and the sandboxes it may ask about.
#[derive(Debug, Clone)]
pub struct TeamTarget {
    pub key: String,
    pub sandboxes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Get,
    List,
}

#[derive(Debug, Default)]
pub struct LoadResult {
    /// Latencies (ms from the scheduled send) of the answers that were 200.
    pub get: Vec<f64>,
    pub list: Vec<f64>,
    pub get_errors: u64,
    pub list_errors: u64,
    /// The first few errors, in words.
    pub error_samples: Vec<String>,
    /// Requests scheduled (sent or not).
    pub scheduled: u64,
    /// Requests that had to wait for a free connection slot before they could be sent.
    pub queued: u64,
}

/// Requests in flight at most (more wait their turn, their wait counted in their latency).
const MAX_IN_FLIGHT: usize = 512;

/// xorshift64*: the request mix, reproducible from run to run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Sends `rate` requests a second for `duration` to the server at `base`: a share `list_share`
/// of them `GET /v1/sandboxes` (the team's list), the rest `GET /v1/sandboxes/{id}` of one of the
/// team's sandboxes, each with a random team's API key.
pub async fn run(
    base: &str,
    teams: &[TeamTarget],
    rate: f64,
    duration: Duration,
    list_share: f64,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(!teams.is_empty(), "no teams to send requests for");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .timeout(Duration::from_secs(30))
        .build()?;
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let (tx, mut rx) = mpsc::unbounded_channel::<(Kind, Result<f64, String>)>();
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let step = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut rng = Rng(0x05EE_D0F5_A11D_B0C5);
    let mut out = LoadResult::default();
    let start = Instant::now() + Duration::from_millis(10);
    for k in 0..total {
        let at = start + step.mul_f64(k as f64);
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        let team = &teams[rng.below(teams.len())];
        let kind = if rng.unit() < list_share || team.sandboxes.is_empty() {
            Kind::List
        } else {
            Kind::Get
        };
        let url = match kind {
            Kind::List => format!("{base}/v1/sandboxes"),
            Kind::Get => format!(
                "{base}/v1/sandboxes/{}",
                team.sandboxes[rng.below(team.sandboxes.len())]
            ),
        };
        let (http, key, slots, tx) = (http.clone(), team.key.clone(), slots.clone(), tx.clone());
        if slots.available_permits() == 0 {
            out.queued += 1;
        }
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            let result = async {
                let resp = http
                    .get(url)
                    .bearer_auth(key)
                    .send()
                    .await
                    .map_err(|e| e.without_url().to_string())?;
                let status = resp.status();
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| e.without_url().to_string())?;
                if !status.is_success() {
                    return Err(format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&body)
                            .chars()
                            .take(200)
                            .collect::<String>()
                    ));
                }
                Ok(at.elapsed().as_secs_f64() * 1000.0)
            }
            .await;
            let _ = tx.send((kind, result));
        });
        out.scheduled += 1;
    }
    drop(tx);
    while let Some((kind, r)) = rx.recv().await {
        match (kind, r) {
            (Kind::Get, Ok(ms)) => out.get.push(ms),
            (Kind::List, Ok(ms)) => out.list.push(ms),
            (k, Err(e)) => {
                if k == Kind::Get {
                    out.get_errors += 1;
                } else {
                    out.list_errors += 1;
                }
                if out.error_samples.len() < 5 {
                    out.error_samples.push(e);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_spread() {
        let mut r = Rng(0x05EE_D0F5_A11D_B0C5);
        let lists = (0..10_000).filter(|_| r.unit() < 0.1).count();
        assert!((800..1200).contains(&lists), "{lists}");
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[r.below(7)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }
}
