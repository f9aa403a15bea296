//! The global `fill.max_rate` cap: a pacing limiter shared by every transfer.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
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
    /// Wakes the waiters when the cap changes, to reprice what is left of their waits.
    changed: Notify,
}

/// A reserved turn on the timeline: when it starts, at the cap it was priced at.
#[derive(Debug, Clone, Copy)]
pub struct Turn {
    start: Instant,
    rate: u64,
}

impl RateLimiter {
    /// A limiter for `bytes_per_sec`; 0 means unlimited.
    pub fn new(bytes_per_sec: u64) -> RateLimiter {
        RateLimiter {
            bytes_per_sec: AtomicU64::new(bytes_per_sec),
            next_free: Mutex::new(Instant::now()),
            changed: Notify::new(),
        }
    }

    /// Changes the cap (SIGHUP); 0 means unlimited. What is queued, and what waiters have
    /// left to wait, is repriced at the new cap: a raised cap speeds them up at once, a
    /// lowered one slows them down (nothing reserved is forgotten).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        let changed = {
            // Under the timeline's lock, as `reserve` reads the cap: a reservation is priced
            // wholly before the change (and repriced with the queue) or wholly after it.
            let mut next_free = self.timeline();
            let old = self.bytes_per_sec.swap(bytes_per_sec, Ordering::Relaxed);
            if old != bytes_per_sec {
                *next_free = reprice(*next_free, Instant::now(), old, bytes_per_sec);
            }
            old != bytes_per_sec
        };
        if changed {
            self.changed.notify_waiters();
        }
    }

    /// Waits until `bytes` more may flow (the fill reserves and waits in two steps, to pay
    /// ahead; this is the one-step form the tests drive the timeline with).
    #[cfg(test)]
    async fn acquire(&self, bytes: usize) {
        if let Some(turn) = self.reserve(bytes) {
            self.wait_for(turn).await;
        }
    }

    /// Counts `bytes` that flowed beyond what was paid for, without waiting for them: the
    /// next caller waits for them instead, so the cap holds.
    pub fn charge(&self, bytes: usize) {
        self.reserve(bytes);
    }

    /// Takes `bytes`' time on the timeline now; returns the turn, which the caller waits for
    /// with [`RateLimiter::wait_for`] (None when unlimited or nothing is reserved).
    pub fn reserve(&self, bytes: usize) -> Option<Turn> {
        if bytes == 0 {
            return None;
        }
        let mut next_free = self.timeline();
        let rate = self.bytes_per_sec.load(Ordering::Relaxed);
        if rate == 0 {
            return None;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let start = (*next_free).max(Instant::now());
        *next_free = start + cost;
        Some(Turn { start, rate })
    }

    /// Waits until `turn` starts, repriced whenever the cap changes meanwhile.
    pub async fn wait_for(&self, mut turn: Turn) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the cap is read, so a change after the read wakes it.
            changed.as_mut().enable();
            let rate = self.bytes_per_sec.load(Ordering::Relaxed);
            if rate != turn.rate {
                turn.start = reprice(turn.start, Instant::now(), turn.rate, rate);
                turn.rate = rate;
            }
            if rate == 0 || turn.start <= Instant::now() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(turn.start) => return,
                _ = changed => {}
            }
        }
    }

    fn timeline(&self) -> std::sync::MutexGuard<'_, Instant> {
        // Only arithmetic runs under the lock: a poisoned one still holds a valid instant.
        self.next_free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `at`, a moment on a timeline priced at `old` bytes/s, repriced at `new`: what lies
/// ahead of `now` scales by old/new; unlimited (0) brings it to `now`.
fn reprice(at: Instant, now: Instant, old: u64, new: u64) -> Instant {
    if at <= now || old == 0 {
        return at;
    }
    if new == 0 {
        return now;
    }
    now + (at - now).mul_f64(old as f64 / new as f64)
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
    async fn a_changed_cap_reprices_the_queue_and_the_waiters() {
        let limiter = std::sync::Arc::new(RateLimiter::new(1_000_000));
        let started = Instant::now();
        limiter.charge(10_000_000);
        // A waiter queued behind 10 s of bytes at 1 MB/s.
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                limiter.acquire(1).await;
                started.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Ten times the cap: the 8 s left take 0.8 s.
        limiter.set_rate(10_000_000);
        let waited = waiter.await.unwrap();
        assert!(
            waited >= Duration::from_millis(2790) && waited <= Duration::from_millis(2810),
            "{waited:?}"
        );
        // A lowered cap slows what is queued: nothing reserved is forgotten.
        limiter.charge(1_000_000);
        limiter.set_rate(1_000_000);
        let before = Instant::now();
        limiter.acquire(1).await;
        assert!(
            before.elapsed() >= Duration::from_millis(990),
            "{:?}",
            before.elapsed()
        );
        // Unlimited releases everyone at once.
        limiter.charge(50_000_000);
        limiter.set_rate(0);
        let before = Instant::now();
        limiter.acquire(1).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_cap_keeps_the_queue() {
        let limiter = RateLimiter::new(1_000_000);
        limiter.charge(1_000_000);
        limiter.set_rate(1_000_000);
        let started = Instant::now();
        limiter.acquire(1).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_unlimited() {
        let limiter = RateLimiter::new(0);
        let started = Instant::now();
        limiter.acquire(usize::MAX).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
