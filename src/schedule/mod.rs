//! The box's mode, its fill windows, and the scheduler that switches between them.
//!
//! What lives where:
//! - `window`: `"HH:MM-HH:MM"` windows and where an instant stands against them in a real
//!   time zone (daylight-saving edges defined there).
//! - [`machine`]: the mode state machine as a pure function of phase, time, override and
//!   windows.
//! - `mode`: the [`Mode`] and the [`ModeState`] every part observes.
//! - this file: the injected [`Clock`], the persisted operator [`Override`], and the
//!   [`Scheduler`] task that drives the state machine.
//!
//! The mode has exactly one source of truth: a [`tokio::sync::watch`] channel whose sender
//! only the scheduler holds. The data plane, readiness, status, metrics and the fill engine
//! hold receivers and read the current value; nobody keeps a copy.

pub mod machine;
mod mode;
mod window;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use prometheus::IntCounterVec;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::signal::Shutdown;

pub use machine::{Phase, Plan};
pub use mode::{Mode, ModeState, Override, mode_channel};
pub use window::{FillWindow, Interval, WindowPosition, intervals_around, local_instant, position};

/// The longest the scheduler sleeps on the system clock before looking again, so a clock
/// step (NTP, a suspended VM) is noticed within this long.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// A source of time for the scheduler, injected so the state machine and the daemon can be
/// driven through a night in a test without waiting.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current instant on the wall clock (where windows fall; may step).
    fn now(&self) -> Timestamp;
    /// Time elapsed since some fixed origin, never going back (how long a drain lasted).
    fn elapsed(&self) -> Duration;
    /// Resolves at `instant` or earlier (callers re-check the time and sleep again).
    fn sleep_until(&self, instant: Timestamp) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn elapsed(&self) -> Duration {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(std::time::Instant::now).elapsed()
    }

    fn sleep_until(&self, instant: Timestamp) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let left = instant
            .duration_since(Timestamp::now())
            .try_into()
            .unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(left.min(MAX_SLEEP)))
    }
}

/// A clock that moves only when told to, for tests and simulations. Moving it forward is
/// time passing (the monotonic reading advances as much); moving it back is a wall-clock step
/// (the monotonic reading stays).
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<Timestamp>,
    elapsed: std::sync::Mutex<Duration>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock {
            now: watch::Sender::new(start),
            elapsed: std::sync::Mutex::new(Duration::ZERO),
        }
    }

    /// Moves the clock to `instant`, waking whoever sleeps until then.
    pub fn set(&self, instant: Timestamp) {
        let previous = self.now.send_replace(instant);
        if let Ok(forward) = Duration::try_from(instant.duration_since(previous)) {
            if let Ok(mut elapsed) = self.elapsed.lock() {
                *elapsed = elapsed.saturating_add(forward);
            }
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.borrow()
    }

    fn elapsed(&self) -> Duration {
        self.elapsed
            .lock()
            .map_or(Duration::ZERO, |elapsed| *elapsed)
    }

    fn sleep_until(&self, instant: Timestamp) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut now = self.now.subscribe();
        Box::pin(async move {
            let _ = now.wait_for(|now| *now >= instant).await;
        })
    }
}

/// Why the operator's override could not be read or saved.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct OverrideError {
    /// The state file.
    path: String,
    /// What went wrong.
    source: io::Error,
}

/// The operator's override as saved in the state directory, so a restart keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct SavedOverride {
    #[serde(rename = "override")]
    mode_override: Override,
}

/// Reads and writes the override's state file.
#[derive(Debug, Clone)]
pub struct OverrideFile {
    path: PathBuf,
}

impl OverrideFile {
    /// The override file inside `state_dir`.
    pub fn in_dir(state_dir: &Path) -> OverrideFile {
        OverrideFile {
            path: state_dir.join("mode-override.json"),
        }
    }

    /// The saved override; `auto` when none was saved. A damaged file is reported, not
    /// guessed at, so the operator sees why an override did not survive.
    pub fn load(&self) -> Result<Override, OverrideError> {
        let error = |source| OverrideError {
            path: self.path.display().to_string(),
            source,
        };
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice::<SavedOverride>(&bytes)
                .map(|saved| saved.mode_override)
                .map_err(|err| error(io::Error::new(io::ErrorKind::InvalidData, err))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Override::Auto),
            Err(err) => Err(error(err)),
        }
    }

    /// Saves the override durably (temp file, fsync, rename, fsync the directory).
    pub fn save(&self, mode_override: Override) -> Result<(), OverrideError> {
        let bytes = serde_json::to_vec(&SavedOverride { mode_override })
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err));
        bytes
            .and_then(|bytes| crate::durable::write_atomically(&self.path, &bytes))
            .map_err(|source| OverrideError {
                path: self.path.display().to_string(),
                source,
            })
    }
}

/// The operator's handle on the override: saves it, then tells the scheduler.
#[derive(Debug)]
pub struct OverrideControl {
    file: OverrideFile,
    sender: watch::Sender<Override>,
    saving: tokio::sync::Mutex<()>,
}

impl OverrideControl {
    /// Sets the override; it is saved before it takes effect, so what the operator was told
    /// took effect also survives a restart.
    pub async fn set(&self, mode_override: Override) -> Result<(), OverrideError> {
        let _one_at_a_time = self.saving.lock().await;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.save(mode_override))
            .await
            .map_err(|err| OverrideError {
                path: self.file.path.display().to_string(),
                source: io::Error::other(err),
            })??;
        self.sender.send_replace(mode_override);
        Ok(())
    }
}

/// What the rest of the daemon holds of a scheduler.
#[derive(Debug)]
pub struct SchedulerHandles {
    /// The mode channel, for everyone to observe.
    pub mode: watch::Receiver<ModeState>,
    /// Where the operator's override goes (through [`OverrideControl`]).
    pub overrides: watch::Sender<Override>,
    /// Where a reloaded schedule goes (SIGHUP).
    pub plan: watch::Sender<Plan>,
}

/// The task that owns the mode channel's sender and drives the state machine.
pub struct Scheduler {
    plan: Plan,
    plans: watch::Receiver<Plan>,
    clock: Arc<dyn Clock>,
    mode: watch::Sender<ModeState>,
    overrides: watch::Receiver<Override>,
    phase: Phase,
    transitions: IntCounterVec,
    /// Whether the current mode was logged and told to systemd yet (the first step is).
    announced: bool,
}

impl Scheduler {
    /// Builds the scheduler and takes its first step at once, so the daemon starts in the
    /// right mode (a box started inside its window starts draining, never serving by mistake
    /// for a moment with an empty answer).
    pub fn start(
        plan: Plan,
        clock: Arc<dyn Clock>,
        initial_override: Override,
        transitions: IntCounterVec,
    ) -> (Scheduler, SchedulerHandles) {
        let (mode, mode_rx) = mode_channel(ModeState::SERVING);
        let (override_tx, overrides) = watch::channel(initial_override);
        let (plan_tx, plans) = watch::channel(plan.clone());
        let mut scheduler = Scheduler {
            plan,
            plans,
            clock,
            mode,
            overrides,
            phase: Phase::Serving,
            transitions,
            announced: false,
        };
        scheduler.step();
        (
            scheduler,
            SchedulerHandles {
                mode: mode_rx,
                overrides: override_tx,
                plan: plan_tx,
            },
        )
    }

    /// The operator's handle for this scheduler's override, saving to `file`.
    pub fn control(file: OverrideFile, sender: watch::Sender<Override>) -> OverrideControl {
        OverrideControl {
            file,
            sender,
            saving: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs until `stop` is raised: steps whenever the clock reaches the next switch or the
    /// override changes.
    pub async fn run(mut self, mut stop: Shutdown) {
        loop {
            let wake_at = self.step();
            let clock = Arc::clone(&self.clock);
            let sleep = clock.sleep_until(wake_at.unwrap_or(Timestamp::MAX));
            tokio::select! {
                _ = sleep => {}
                changed = self.overrides.changed() => {
                    if changed.is_err() {
                        // The control is gone (the daemon is stopping); the clock still rules.
                        let last = *self.overrides.borrow();
                        self.overrides = watch::channel(last).1;
                    }
                }
                changed = self.plans.changed() => {
                    if changed.is_ok() {
                        self.plan = self.plans.borrow_and_update().clone();
                        tracing::info!(windows = self.plan.windows.len(), drain = ?self.plan.drain, "schedule reloaded");
                    } else {
                        let last = self.plan.clone();
                        self.plans = watch::channel(last).1;
                    }
                }
                _ = stop.raised() => return,
            }
        }
    }

    /// One step of the state machine; publishes the result and returns when to look again.
    fn step(&mut self) -> Option<Timestamp> {
        let wanted = *self.overrides.borrow_and_update();
        let step = machine::step(
            self.phase,
            self.clock.now(),
            self.clock.elapsed(),
            wanted,
            &self.plan,
        );
        self.phase = step.phase;
        let previous = *self.mode.borrow();
        if previous.mode != step.state.mode || !self.announced {
            self.announce(previous.mode, &step.state);
            self.announced = true;
        }
        self.mode.send_if_modified(|state| {
            let changed = *state != step.state;
            *state = step.state;
            changed
        });
        step.wake_at
    }

    /// Logs a mode switch, counts it and tells systemd.
    fn announce(&self, from: Mode, state: &ModeState) {
        let next = state
            .next_switch
            .map_or_else(|| "none".to_owned(), |at| at.to_string());
        tracing::info!(
            from = from.as_str(),
            to = state.mode.as_str(),
            mode_override = state.mode_override.as_str(),
            next_switch = %next,
            "mode switch"
        );
        self.transitions
            .with_label_values(&[state.mode.as_str()])
            .inc();
        let status = format!(
            "mode: {} (override {}, next switch {next})",
            state.mode.as_str(),
            state.mode_override.as_str()
        );
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&status)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn counter() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("t", "t"), &["to"]).unwrap()
    }

    fn plan() -> Plan {
        Plan {
            windows: vec!["02:00-06:00".parse().unwrap()],
            zone: jiff::tz::TimeZone::UTC,
            drain: Duration::from_secs(30),
        }
    }

    #[test]
    fn override_file_round_trips_and_defaults_to_auto() {
        let dir = tempfile::tempdir().unwrap();
        let file = OverrideFile::in_dir(dir.path());
        assert_eq!(file.load().unwrap(), Override::Auto);
        file.save(Override::Fill).unwrap();
        assert_eq!(file.load().unwrap(), Override::Fill);
        std::fs::write(dir.path().join("mode-override.json"), b"{garbage").unwrap();
        assert!(file.load().is_err(), "a damaged file is reported");
    }

    #[tokio::test]
    async fn the_scheduler_follows_a_manual_clock_through_a_night() {
        let clock = Arc::new(ManualClock::new(at("2026-11-25T01:59:00Z")));
        let transitions = counter();
        let (scheduler, handles) =
            Scheduler::start(plan(), clock.clone(), Override::Auto, transitions.clone());
        let mut mode = handles.mode.clone();
        assert_eq!(mode.borrow().mode, Mode::Serving);
        let (stop_tx, stop_rx) = crate::signal::channel();
        let task = tokio::spawn(scheduler.run(stop_rx));

        for (instant, expected) in [
            ("2026-11-25T02:00:00Z", Mode::Draining),
            ("2026-11-25T02:00:30Z", Mode::Filling),
            ("2026-11-25T06:00:00Z", Mode::Serving),
        ] {
            clock.set(at(instant));
            let reached = tokio::time::timeout(
                Duration::from_secs(5),
                mode.wait_for(|state| state.mode == expected),
            )
            .await;
            assert!(reached.is_ok(), "{expected:?} at {instant}");
        }
        assert_eq!(
            transitions.with_label_values(&["filling"]).get(),
            1,
            "one transition into filling"
        );
        stop_tx.raise();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn an_override_takes_effect_at_once_and_is_saved() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(at("2026-11-25T12:00:00Z")));
        let (scheduler, handles) = Scheduler::start(plan(), clock, Override::Auto, counter());
        let mut mode = handles.mode.clone();
        let control = Scheduler::control(OverrideFile::in_dir(dir.path()), handles.overrides);
        let (_stop_tx, stop_rx) = crate::signal::channel();
        tokio::spawn(scheduler.run(stop_rx));
        control.set(Override::Fill).await.unwrap();
        let draining = tokio::time::timeout(
            Duration::from_secs(5),
            mode.wait_for(|state| state.mode == Mode::Draining),
        )
        .await
        .map(|state| state.map(|state| state.mode_override));
        assert!(matches!(draining, Ok(Ok(Override::Fill))));
        assert_eq!(
            OverrideFile::in_dir(dir.path()).load().unwrap(),
            Override::Fill
        );
    }
}
