//! The box's mode and its fill windows.
//!
//! The mode (`serving`, `draining`, `filling`) has exactly one source of truth: a
//! [`tokio::sync::watch`] channel made by [`mode_channel`]. The data plane, readiness, metrics
//! and the fill engine hold receivers and read the current value; nobody keeps a copy. The
//! time-windowed scheduler that drives the sender (issue: the scheduler) lives here too.

mod window;

use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::watch;

pub use window::FillWindow;

/// What the box is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Read-only: viewers are served, nothing is written to the stores.
    Serving,
    /// Serving is stopping: `/readyz` fails so steering moves players away.
    Draining,
    /// The fill engine writes; viewers get the `during_fill` answer.
    Filling,
}

impl Mode {
    /// Every mode, for metrics that publish one series per mode.
    pub const ALL: [Mode; 3] = [Mode::Serving, Mode::Draining, Mode::Filling];

    /// The name used in status JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Serving => "serving",
            Mode::Draining => "draining",
            Mode::Filling => "filling",
        }
    }
}

/// The value carried by the mode channel: the mode and when the current fill window ends,
/// so a refused viewer can be told how long to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeState {
    /// The current mode.
    pub mode: Mode,
    /// When serving resumes, if known (end of the fill window).
    pub serving_resumes_at: Option<SystemTime>,
}

impl ModeState {
    /// Plain serving with no window in sight.
    pub const SERVING: ModeState = ModeState {
        mode: Mode::Serving,
        serving_resumes_at: None,
    };
}

/// Creates the one mode channel of a daemon, starting in `initial`.
pub fn mode_channel(initial: ModeState) -> (watch::Sender<ModeState>, watch::Receiver<ModeState>) {
    watch::channel(initial)
}
