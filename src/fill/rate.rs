//! The global `fill.max_rate` cap: a pacing limiter shared by every transfer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Paces bytes so that, across all transfers, no more than `bytes_per_sec` flow on average.
/// Each caller reserves its bytes on a shared timeline and sleeps until its turn, so the cap
/// holds however many transfers share it, without a background refill task.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: AtomicU64,
    next_free: Mutex<Instant>,
}

impl RateLimiter {
    /// A limiter for `bytes_per_sec`; 0 means unlimited.
    pub fn new(bytes_per_sec: u64) -> RateLimiter {
        RateLimiter {
            bytes_per_sec: AtomicU64::new(bytes_per_sec),
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Changes the cap (SIGHUP); 0 means unlimited.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.bytes_per_sec.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Waits until `bytes` more may flow.
    pub async fn acquire(&self, bytes: usize) {
        if let Some(start) = self.reserve(bytes).await {
            tokio::time::sleep_until(start).await;
        }
    }

    /// Counts `bytes` that have flowed without waiting for them (the end of a transfer): the
    /// next caller waits for them instead, so the cap still holds.
    pub async fn charge(&self, bytes: usize) {
        self.reserve(bytes).await;
    }

    /// Takes `bytes`' time on the timeline; returns when it starts (None when unlimited).
    async fn reserve(&self, bytes: usize) -> Option<Instant> {
        let rate = self.bytes_per_sec.load(Ordering::Relaxed);
        if rate == 0 {
            return None;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let mut next_free = self.next_free.lock().await;
        let start = (*next_free).max(Instant::now());
        *next_free = start + cost;
        Some(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_cap_holds_across_callers() {
        let limiter = std::sync::Arc::new(RateLimiter::new(1_000_000));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    limiter.acquire(100_000).await;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1900) && elapsed <= Duration::from_millis(2000),
            "2 MB at 1 MB/s took {elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_charged_is_waited_for_by_the_next_caller() {
        let limiter = RateLimiter::new(1_000_000);
        let started = Instant::now();
        limiter.charge(500_000).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        limiter.acquire(1).await;
        assert_eq!(started.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_unlimited() {
        let limiter = RateLimiter::new(0);
        let started = Instant::now();
        limiter.acquire(usize::MAX).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
