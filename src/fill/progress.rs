//! Fill progress as `/v1/status` shows it, and the report kept after each pass.

use std::time::Instant;

use serde::Serialize;

/// Failures listed by name in a report; beyond that they are counted only.
const MAX_LISTED_FAILURES: usize = 100;

/// `fill.state` in status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FillState {
    /// No manifest yet.
    Idle,
    /// A pass is working.
    Running,
    /// The last pass finished: every object stored or failed.
    Done,
    /// The window ended before the pass finished; the next window resumes.
    Paused,
}

/// One object that could not be stored, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The object path.
    pub path: String,
    /// Why, in one line: what did not match, never what the source held.
    pub reason: String,
    /// What was found instead (a size, a hash), when that describes the source's content:
    /// shown only to holders of the admin token (`GET /v1/status` with it) and in the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
}

/// The end-of-pass report, logged and kept in status as `last_fill`.
#[derive(Debug, Clone, Serialize)]
pub struct FillReport {
    /// The manifest the pass worked toward.
    pub manifest_id: String,
    /// `done` or `paused`.
    pub state: FillState,
    /// When the pass started (RFC 3339, UTC).
    pub started_at: String,
    /// Wall-clock seconds the pass took.
    pub duration_secs: f64,
    /// Objects fetched and stored by this pass.
    pub stored: u64,
    /// Objects already stored and left alone.
    pub already_present: u64,
    /// Objects that failed (download, verification, or no room).
    pub failed: u64,
    /// Of the failed, those skipped for lack of room.
    pub skipped_no_room: u64,
    /// Objects deleted because they left the manifest.
    pub deleted: u64,
    /// Bytes downloaded by this pass.
    pub bytes_fetched: u64,
    /// The first failures with their reasons.
    pub failures: Vec<Failure>,
}

/// Live counters of the current (or last) pass.
#[derive(Debug)]
pub struct Progress {
    /// The state.
    pub state: FillState,
    /// The manifest worked toward.
    pub manifest_id: Option<String>,
    /// Objects in that manifest.
    pub objects_total: u64,
    /// Objects stored (already-present ones count).
    pub objects_done: u64,
    /// Objects failed.
    pub objects_failed: u64,
    /// Bytes in that manifest.
    pub bytes_total: u64,
    /// Bytes stored, including partial progress of objects in flight.
    pub bytes_done: u64,
    /// Bytes of whole objects stored and verified (already present or stored by this
    /// pass): what readiness counts, never bytes still in flight.
    pub bytes_verified: u64,
    /// Bytes downloaded by this pass.
    pub bytes_fetched: u64,
    rate_window_start: Instant,
    rate_window_bytes: u64,
    bytes_per_sec: u64,
    /// The failures of the current pass.
    pub failures: Vec<Failure>,
    /// How many failures there were beyond those listed.
    pub more_failures: u64,
    /// The report of the last finished or paused pass.
    pub last_fill: Option<FillReport>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            state: FillState::Idle,
            manifest_id: None,
            objects_total: 0,
            objects_done: 0,
            objects_failed: 0,
            bytes_total: 0,
            bytes_done: 0,
            bytes_verified: 0,
            bytes_fetched: 0,
            rate_window_start: Instant::now(),
            rate_window_bytes: 0,
            bytes_per_sec: 0,
            failures: Vec::new(),
            more_failures: 0,
            last_fill: None,
        }
    }
}

/// The `fill` object of `/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct FillStatus {
    /// `idle`, `running`, `done` or `paused`.
    pub state: FillState,
    /// The manifest the fill works toward.
    pub manifest_id: Option<String>,
    /// Objects in that manifest.
    pub objects_total: u64,
    /// Objects stored (already-present ones count).
    pub objects_done: u64,
    /// Objects failed.
    pub objects_failed: u64,
    /// Bytes in that manifest.
    pub bytes_total: u64,
    /// Bytes stored.
    pub bytes_done: u64,
    /// Current ingest rate (0 when not running).
    pub bytes_per_sec: u64,
    /// The report of the last pass, if any.
    pub last_fill: Option<FillReport>,
}

impl FillStatus {
    /// This status without what failed objects' sources held, for a reader without the
    /// admin token: a manifest naming a file must not turn the status into a way to learn
    /// that file's size or hash.
    pub fn for_anyone(mut self) -> FillStatus {
        if let Some(report) = &mut self.last_fill {
            for failure in &mut report.failures {
                failure.found = None;
            }
        }
        self
    }
}

impl Progress {
    /// Counts `bytes` written (or, negative progress, given back when an object failed).
    pub fn add_bytes(&mut self, bytes: u64) {
        self.bytes_done = self.bytes_done.saturating_add(bytes);
        self.bytes_fetched = self.bytes_fetched.saturating_add(bytes);
        self.rate_window_bytes += bytes;
        let elapsed = self.rate_window_start.elapsed();
        if elapsed.as_secs_f64() >= 1.0 {
            self.bytes_per_sec = (self.rate_window_bytes as f64 / elapsed.as_secs_f64()) as u64;
            self.rate_window_start = Instant::now();
            self.rate_window_bytes = 0;
        }
    }

    /// Takes back bytes counted for an object that then failed.
    pub fn take_back(&mut self, bytes: u64) {
        self.bytes_done = self.bytes_done.saturating_sub(bytes);
    }

    /// Records a failed object.
    pub fn fail(&mut self, path: &str, reason: String) {
        self.fail_with(path, reason, None);
    }

    /// Records a failed object, with what was found instead for the token's holders.
    pub fn fail_with(&mut self, path: &str, reason: String, found: Option<String>) {
        self.objects_failed += 1;
        if self.failures.len() < MAX_LISTED_FAILURES {
            self.failures.push(Failure {
                path: path.to_owned(),
                reason,
                found,
            });
        } else {
            self.more_failures += 1;
        }
    }

    /// The status view, with what failed objects' sources held (see [`Failure::found`]);
    /// [`FillStatus::for_anyone`] takes that out.
    pub fn status(&self) -> FillStatus {
        let stale = self.rate_window_start.elapsed().as_secs() >= 5;
        FillStatus {
            state: self.state,
            manifest_id: self.manifest_id.clone(),
            objects_total: self.objects_total,
            objects_done: self.objects_done,
            objects_failed: self.objects_failed,
            bytes_total: self.bytes_total,
            bytes_done: self.bytes_done,
            bytes_per_sec: if self.state == FillState::Running && !stale {
                self.bytes_per_sec
            } else {
                0
            },
            last_fill: self.last_fill.clone(),
        }
    }
}
