//! Whether the box has ever held what it is meant to hold: the latch behind `/readyz`'s
//! "no content" (CONTRACT section 5).
//!
//! Readiness steers viewers (BGP anycast, DNS), so a freshly racked box with empty stores must
//! not draw players it can only answer with 404s; yet a serving box must never be withdrawn
//! merely because a new manifest arrived, however much of it is new. So readiness waits for
//! content once: the first fill pass that completes, or the first time the box holds
//! `fill.ready_share` of the manifest's bytes, sets a latch that is kept in `state_dir/stocked`
//! across restarts and never unset.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use jiff::Timestamp;

/// The latch and the share of bytes that sets it.
#[derive(Debug)]
pub struct Stocked {
    file: PathBuf,
    latched: AtomicBool,
    /// `fill.ready_share` as f64 bits; swapped on reload.
    ready_share: AtomicU64,
}

/// Whether `held` of `total` bytes reaches `share` of them. An empty manifest never does:
/// only a completed pass makes a box with nothing to hold ready.
pub fn holds_enough(held: u64, total: u64, share: f64) -> bool {
    total > 0 && held as f64 >= share * total as f64
}

impl Stocked {
    /// The latch as `state_dir` last saved it (set when its file exists).
    pub fn load(state_dir: &Path) -> Stocked {
        let file = state_dir.join("stocked");
        Stocked {
            latched: AtomicBool::new(file.exists()),
            file,
            ready_share: AtomicU64::new(1.0f64.to_bits()),
        }
    }

    /// Whether the box has held its content once.
    pub fn is_set(&self) -> bool {
        self.latched.load(Ordering::Acquire)
    }

    /// The share of a manifest's bytes that sets the latch before any pass completes.
    pub fn ready_share(&self) -> f64 {
        f64::from_bits(self.ready_share.load(Ordering::Relaxed))
    }

    /// Applies `fill.ready_share` (start and reload).
    pub fn set_ready_share(&self, share: f64) {
        self.ready_share.store(share.to_bits(), Ordering::Relaxed);
    }

    /// Sets the latch and saves it durably, saying why in the log. Setting it twice is
    /// harmless; a save that fails is logged and the latch holds for this process.
    pub async fn set(&self, why: String) {
        if self.latched.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(why = %why, "the box holds its content: /readyz may now say ready");
        let file = self.file.clone();
        let contents = format!("{why}\nat {}\n", Timestamp::now());
        let saved = tokio::task::spawn_blocking(move || {
            crate::durable::write_atomically(&file, contents.as_bytes())
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|saved| saved);
        if let Err(err) = saved {
            tracing::error!(file = %self.file.display(), error = %err, "cannot save that the box holds its content; after a restart it waits for a fill again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_the_bytes_is_enough_and_an_empty_manifest_never_is() {
        assert!(holds_enough(100, 100, 1.0));
        assert!(!holds_enough(99, 100, 1.0));
        assert!(holds_enough(50, 100, 0.5));
        assert!(!holds_enough(49, 100, 0.5));
        assert!(!holds_enough(0, 0, 0.5));
        assert!(holds_enough(u64::MAX / 2, u64::MAX / 2, 1.0));
    }

    #[tokio::test]
    async fn the_latch_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let stocked = Stocked::load(dir.path());
        assert!(!stocked.is_set());
        stocked.set("a fill pass completed".into()).await;
        assert!(stocked.is_set());
        assert!(Stocked::load(dir.path()).is_set());
    }
}
