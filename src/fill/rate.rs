//! The global `fill.max_rate` cap: a pacing limiter shared by every transfer.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Paces bytes so that, across all transfers, no more than `bytes_per_sec` flow on average.
/// Each caller reserves its bytes on a shared timeline and sleeps until its turn, so the cap
/// holds however many transfers share it, without a background refill task.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: AtomicU64,
    /// Where the timeline is free from; only ever held for the arithmetic, never across a
    /// wait.
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

    /// Changes the cap (SIGHUP); 0 means unlimited. What was reserved at the old cap is
    /// forgotten: a raised cap applies to the next byte, not after a queue priced at the old.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        if self.bytes_per_sec.swap(bytes_per_sec, Ordering::Relaxed) != bytes_per_sec {
            *self.timeline() = Instant::now();
        }
    }

    /// Waits until `bytes` more may flow.
    pub async fn acquire(&self, bytes: usize) {
        if let Some(start) = self.reserve(bytes) {
            tokio::time::sleep_until(start).await;
        }
    }

    /// Counts `bytes` that have flowed without waiting for them (an attempt that ended
    /// while it still owed): the next caller waits for them instead, so the cap holds.
    pub fn charge(&self, bytes: usize) {
        self.reserve(bytes);
    }

    /// Takes `bytes`' time on the timeline now; returns when that time starts, which the
    /// caller waits for (None when unlimited or nothing is reserved).
    pub fn reserve(&self, bytes: usize) -> Option<Instant> {
        let rate = self.bytes_per_sec.load(Ordering::Relaxed);
        if rate == 0 || bytes == 0 {
            return None;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let mut next_free = self.timeline();
        let start = (*next_free).max(Instant::now());
        *next_free = start + cost;
        Some(start)
    }

    fn timeline(&self) -> std::sync::MutexGuard<'_, Instant> {
        // Only arithmetic runs under the lock: a poisoned one still holds a valid instant.
        self.next_free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        limiter.charge(500_000);
        assert_eq!(started.elapsed(), Duration::ZERO);
        limiter.acquire(1).await;
        assert_eq!(started.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_cap_forgets_what_was_queued_at_the_old_one() {
        let limiter = RateLimiter::new(1_000_000);
        limiter.charge(10_000_000);
        limiter.set_rate(10_000_000);
        let started = Instant::now();
        limiter.acquire(1 << 20).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        limiter.acquire(1).await;
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_unlimited() {
        let limiter = RateLimiter::new(0);
        let started = Instant::now();
        limiter.acquire(usize::MAX).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
