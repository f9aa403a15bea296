//! Whether the box has ever held what it is meant to hold: the latch behind `/readyz`'s
//! "no content" (CONTRACT section 5).
//!
//! Readiness steers viewers (BGP anycast, DNS), so a freshly racked box with empty stores must
//! not draw players it can only answer with 404s; yet a serving box must never be withdrawn
//! merely because a new manifest arrived, however much of it is new. So readiness waits for
//! content once: the first fill pass that completes without a failure (toward a manifest with
//! objects), or the first time the box holds `fill.ready_share` of a manifest's bytes, stored
//! and verified, sets a latch that is kept in `state_dir/stocked` across restarts. At start a
//! latch is not honoured while the stores hold no object at all (disks replaced or wiped).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use jiff::Timestamp;

/// The latch, the share of bytes that sets it, and the last measure of what is held.
#[derive(Debug)]
pub struct Stocked {
    file: PathBuf,
    latched: AtomicBool,
    /// Why the latch was set, while saving it has failed (retried at each chance).
    unsaved: Mutex<Option<String>>,
    /// `fill.ready_share` as f64 bits; swapped on reload.
    ready_share: AtomicU64,
    measured: Mutex<Option<Measured>>,
}

/// How much of a manifest the stores were last found to hold, stored and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    /// The manifest measured against.
    pub manifest_id: String,
    /// Its bytes the stores hold.
    pub held: u64,
    /// All its bytes.
    pub total: u64,
}

/// Whether `held` of `total` bytes reaches `share` of them. An empty manifest never does:
/// a box with nothing to hold is not worth sending viewers to.
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
            unsaved: Mutex::new(None),
            ready_share: AtomicU64::new(1.0f64.to_bits()),
            measured: Mutex::new(None),
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

    /// Records how much of a manifest the stores hold (for the not-ready reason).
    pub fn measure(&self, measured: Measured) {
        if let Ok(mut slot) = self.measured.lock() {
            *slot = Some(measured);
        }
    }

    /// The last measure, if any.
    pub fn measured(&self) -> Option<Measured> {
        self.measured.lock().ok().and_then(|slot| slot.clone())
    }

    /// Does not honour a saved latch in this process (the stores hold nothing): the file
    /// stays, so stores that come back at the next start count again.
    pub fn suspend(&self, why: &str) {
        if self.latched.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                why,
                "the box held its content before, but not now: /readyz says no content until it does again"
            );
        }
    }

    /// Sets the latch and saves it durably, saying why in the log. Setting it twice is
    /// harmless. A save that fails is logged and retried by [`Stocked::retry_save`]; the
    /// latch holds for this process meanwhile.
    pub async fn set(&self, why: String) {
        if self.latched.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(why = %why, "the box holds its content: /readyz may now say ready");
        self.save(why).await;
    }

    /// Saves a latch whose save failed before; nothing to do otherwise.
    pub async fn retry_save(&self) {
        let pending = self.unsaved.lock().ok().and_then(|mut slot| slot.take());
        if let Some(why) = pending {
            self.save(why).await;
        }
    }

    async fn save(&self, why: String) {
        let file = self.file.clone();
        let contents = format!("{why}\nat {}\n", Timestamp::now());
        let saved = tokio::task::spawn_blocking(move || {
            crate::durable::write_atomically(&file, contents.as_bytes())
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|saved| saved);
        if let Err(err) = saved {
            tracing::error!(file = %self.file.display(), error = %err, "cannot save that the box holds its content; retried at the next fill progress, manifest or reload");
            if let Ok(mut slot) = self.unsaved.lock() {
                *slot = Some(why);
            }
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
    async fn the_latch_survives_a_restart_and_a_failed_save_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let stocked = Stocked::load(&state);
        assert!(!stocked.is_set());
        // The state directory does not exist yet: the save fails, the latch holds.
        stocked.set("a fill pass completed".into()).await;
        assert!(stocked.is_set());
        assert!(!Stocked::load(&state).is_set());
        std::fs::create_dir(&state).unwrap();
        stocked.retry_save().await;
        assert!(Stocked::load(&state).is_set());
        stocked.suspend("test");
        assert!(!stocked.is_set());
        assert!(Stocked::load(&state).is_set(), "the file stays");
    }
}
