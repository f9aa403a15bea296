//! What the box is doing ([`Mode`]), the operator's [`Override`], and the value of the mode
//! channel ([`ModeState`]).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

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

/// The value carried by the mode channel: everything any part needs to know about the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeState {
    /// The current mode.
    pub mode: Mode,
    /// When serving resumes, if known (the end of the fill window), for `Retry-After`.
    pub serving_resumes_at: Option<Timestamp>,
    /// The operator's override in force.
    pub mode_override: Override,
    /// When the mode next changes by the clock alone, if it will.
    pub next_switch: Option<Timestamp>,
}

impl ModeState {
    /// Plain serving with no window in sight.
    pub const SERVING: ModeState = ModeState {
        mode: Mode::Serving,
        serving_resumes_at: None,
        mode_override: Override::Auto,
        next_switch: None,
    };
}

/// Creates the one mode channel of a daemon, starting in `initial`.
pub fn mode_channel(initial: ModeState) -> (watch::Sender<ModeState>, watch::Receiver<ModeState>) {
    watch::channel(initial)
}

/// The operator's override of the windows (`POST /v1/mode`, `tidecache mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Override {
    /// Follow the fill windows.
    #[default]
    Auto,
    /// Fill now, whatever the windows say, until told otherwise.
    Fill,
    /// Serve now, whatever the windows say, until told otherwise.
    Serve,
}

impl Override {
    /// The name used in status JSON, the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Override::Auto => "auto",
            Override::Fill => "fill",
            Override::Serve => "serve",
        }
    }
}
