//! The mode state machine, as a pure function of the current phase, the time, the operator's
//! override and the windows, so every transition is unit-tested without waiting.

use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::mode::{Mode, ModeState, Override};
use super::window::{FillWindow, WindowPosition, position};

/// Where the machine is. Draining remembers when it ends; the rest is recomputed each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving viewers.
    Serving,
    /// Moving viewers away before filling. The drain is a length of time, not a place on
    /// the calendar, so it ends on the monotonic clock: a wall clock stepped back an hour
    /// mid-drain must not leave the box an hour unready.
    Draining {
        /// The monotonic reading at which the drain ends.
        ends_at: Duration,
    },
    /// Filling.
    Filling,
}

/// What the machine needs to know besides the time: the windows, their zone, the drain.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The daily fill windows.
    pub windows: Vec<FillWindow>,
    /// The zone they are written in.
    pub zone: TimeZone,
    /// How long viewers get between serving and filling.
    pub drain: Duration,
}

/// The outcome of one step: the new phase, what to publish, and when to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The phase to keep for the next step.
    pub phase: Phase,
    /// The value for the mode channel.
    pub state: ModeState,
    /// The next instant at which the outcome can change by the clock alone.
    pub wake_at: Option<Timestamp>,
}

/// Decides the mode at `now` (wall clock, for where windows fall), `elapsed` being the
/// monotonic clock's reading (for how long a drain has lasted).
///
/// - `auto` fills inside a window and serves outside; `fill` and `serve` hold until changed.
/// - Serving to filling always goes through draining for `plan.drain` (skipped when zero),
///   so steering has time to move players away; a fill that stops being wanted mid-drain
///   goes straight back to serving.
/// - Filling to serving is immediate at the window's end (the fill engine checkpoints).
pub fn step(
    phase: Phase,
    now: Timestamp,
    elapsed: Duration,
    wanted: Override,
    plan: &Plan,
) -> Step {
    let (fill_wanted, window_end, next_window_start) = match wanted {
        Override::Fill => (true, None, None),
        Override::Serve => (false, None, None),
        Override::Auto => match position(&plan.windows, &plan.zone, now) {
            // Windows that cover the whole day ("00:00-24:00", or ones that touch around
            // the clock) merge into one with no real end: it has none, like a fill override,
            // rather than a made-up one days away.
            WindowPosition::Inside { ends } => (
                true,
                Some(ends).filter(|ends| ends_within_a_day(now, *ends)),
                None,
            ),
            WindowPosition::Outside { next_start } => (false, None, next_start),
        },
    };
    let phase = match (phase, fill_wanted) {
        (_, false) => Phase::Serving,
        (Phase::Serving, true) if plan.drain.is_zero() => Phase::Filling,
        (Phase::Serving, true) => Phase::Draining {
            ends_at: elapsed.saturating_add(plan.drain),
        },
        (Phase::Draining { ends_at }, true) if elapsed < ends_at => Phase::Draining { ends_at },
        (Phase::Draining { .. } | Phase::Filling, true) => Phase::Filling,
    };
    let (mode, next_switch) = match phase {
        Phase::Serving => (Mode::Serving, next_window_start),
        Phase::Draining { ends_at } => (
            Mode::Draining,
            wall_after(now, ends_at.saturating_sub(elapsed)),
        ),
        Phase::Filling => (Mode::Filling, window_end),
    };
    Step {
        phase,
        state: ModeState {
            mode,
            serving_resumes_at: window_end,
            mode_override: wanted,
            next_switch,
        },
        wake_at: next_switch,
    }
}

/// Whether `ends` is a real window end: no window lasts longer than a day (25 hours on a
/// fall-back night), so one further away is windows merged around the clock.
fn ends_within_a_day(now: Timestamp, ends: Timestamp) -> bool {
    ends.duration_since(now) <= jiff::SignedDuration::from_hours(25)
}

/// The wall-clock instant `left` after `now` (what status shows as the drain's end).
fn wall_after(now: Timestamp, left: Duration) -> Option<Timestamp> {
    let left = jiff::SignedDuration::try_from(left).ok()?;
    now.checked_add(left).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("RFC 3339 instant")
    }

    fn plan(windows: &[&str], drain_secs: u64) -> Plan {
        Plan {
            windows: windows.iter().map(|text| text.parse().unwrap()).collect(),
            zone: TimeZone::UTC,
            drain: Duration::from_secs(drain_secs),
        }
    }

    /// Runs the machine through instants in order, as the driver would, with a monotonic
    /// clock that keeps pace with them (no clock steps).
    fn walk(plan: &Plan, wanted: Override, instants: &[&str]) -> Vec<Step> {
        let mut phase = Phase::Serving;
        let origin = instants
            .first()
            .map_or(Timestamp::UNIX_EPOCH, |first| at(first));
        instants
            .iter()
            .map(|instant| {
                let elapsed =
                    Duration::try_from(at(instant).duration_since(origin)).unwrap_or_default();
                let step = step(phase, at(instant), elapsed, wanted, plan);
                phase = step.phase;
                step
            })
            .collect()
    }

    #[test]
    fn a_whole_day_window_has_no_end_to_announce() {
        let steps = walk(
            &plan(&["00:00-24:00"], 0),
            Override::Auto,
            &["2026-11-25T12:00:00Z", "2026-11-26T23:59:59Z"],
        );
        for step in &steps {
            assert_eq!(step.state.mode, Mode::Filling);
            assert_eq!(step.state.next_switch, None);
            assert_eq!(
                step.state.serving_resumes_at, None,
                "Retry-After falls back"
            );
        }
        let touching = walk(
            &plan(&["00:00-12:00", "12:00-24:00"], 0),
            Override::Auto,
            &["2026-11-25T18:00:00Z"],
        );
        assert_eq!(touching[0].state.next_switch, None);
    }

    #[test]
    fn a_wall_clock_stepped_back_mid_drain_does_not_stretch_the_drain() {
        let plan = plan(&["00:00-24:00"], 60);
        let second = Duration::from_secs(1);
        let draining = step(
            Phase::Serving,
            at("2026-11-25T02:00:00Z"),
            Duration::ZERO,
            Override::Auto,
            &plan,
        );
        assert_eq!(draining.state.mode, Mode::Draining);
        // NTP steps the wall clock back an hour, 10 s into the drain.
        let stepped = step(
            draining.phase,
            at("2026-11-25T01:00:10Z"),
            10 * second,
            Override::Auto,
            &plan,
        );
        assert_eq!(stepped.state.mode, Mode::Draining);
        assert_eq!(
            stepped.wake_at,
            Some(at("2026-11-25T01:01:00Z")),
            "50 s left, on the new wall clock"
        );
        let done = step(
            stepped.phase,
            at("2026-11-25T01:01:00Z"),
            60 * second,
            Override::Auto,
            &plan,
        );
        assert_eq!(
            done.state.mode,
            Mode::Filling,
            "the drain lasted 60 s, not an hour"
        );
    }

    #[test]
    fn a_night_serves_drains_fills_and_serves_again() {
        let plan = plan(&["02:00-06:00"], 30);
        let steps = walk(
            &plan,
            Override::Auto,
            &[
                "2026-11-25T01:00:00Z",
                "2026-11-25T02:00:00Z",
                "2026-11-25T02:00:29Z",
                "2026-11-25T02:00:30Z",
                "2026-11-25T05:59:59Z",
                "2026-11-25T06:00:00Z",
            ],
        );
        let modes: Vec<Mode> = steps.iter().map(|step| step.state.mode).collect();
        assert_eq!(
            modes,
            [
                Mode::Serving,
                Mode::Draining,
                Mode::Draining,
                Mode::Filling,
                Mode::Filling,
                Mode::Serving
            ]
        );
        assert_eq!(steps[0].wake_at, Some(at("2026-11-25T02:00:00Z")));
        assert_eq!(steps[1].wake_at, Some(at("2026-11-25T02:00:30Z")));
        assert_eq!(steps[3].wake_at, Some(at("2026-11-25T06:00:00Z")));
        assert_eq!(steps[5].wake_at, Some(at("2026-11-26T02:00:00Z")));
        let window_end = at("2026-11-25T06:00:00Z");
        assert_eq!(steps[1].state.serving_resumes_at, Some(window_end));
        assert_eq!(steps[3].state.serving_resumes_at, Some(window_end));
        assert_eq!(steps[5].state.serving_resumes_at, None);
    }

    #[test]
    fn zero_drain_fills_at_once() {
        let steps = walk(
            &plan(&["02:00-06:00"], 0),
            Override::Auto,
            &["2026-11-25T03:00:00Z"],
        );
        assert_eq!(steps[0].state.mode, Mode::Filling);
    }

    #[test]
    fn starting_inside_a_window_drains_first() {
        let steps = walk(
            &plan(&["02:00-06:00"], 30),
            Override::Auto,
            &["2026-11-25T03:00:00Z"],
        );
        assert_eq!(steps[0].state.mode, Mode::Draining);
    }

    #[test]
    fn a_window_ending_mid_drain_goes_straight_back_to_serving() {
        let steps = walk(
            &plan(&["02:00-02:01"], 120),
            Override::Auto,
            &["2026-11-25T02:00:00Z", "2026-11-25T02:01:00Z"],
        );
        assert_eq!(steps[0].state.mode, Mode::Draining);
        assert_eq!(steps[1].state.mode, Mode::Serving);
    }

    #[test]
    fn fill_override_fills_outside_windows_with_no_end() {
        let steps = walk(
            &plan(&["02:00-06:00"], 0),
            Override::Fill,
            &["2026-11-25T12:00:00Z", "2026-11-26T12:00:00Z"],
        );
        for step in &steps {
            assert_eq!(step.state.mode, Mode::Filling);
            assert_eq!(step.state.mode_override, Override::Fill);
            assert_eq!(
                step.state.serving_resumes_at, None,
                "Retry-After falls back"
            );
            assert_eq!(step.state.next_switch, None);
            assert_eq!(step.wake_at, None);
        }
    }

    #[test]
    fn serve_override_serves_inside_windows() {
        let steps = walk(
            &plan(&["02:00-06:00"], 30),
            Override::Serve,
            &["2026-11-25T03:00:00Z"],
        );
        assert_eq!(steps[0].state.mode, Mode::Serving);
        assert_eq!(steps[0].state.next_switch, None);
    }

    #[test]
    fn auto_after_an_override_returns_to_the_windows() {
        let plan = plan(&["02:00-06:00"], 0);
        let filling = step(
            Phase::Serving,
            at("2026-11-25T12:00:00Z"),
            Duration::ZERO,
            Override::Fill,
            &plan,
        );
        assert_eq!(filling.state.mode, Mode::Filling);
        let auto = step(
            filling.phase,
            at("2026-11-25T12:00:01Z"),
            Duration::from_secs(1),
            Override::Auto,
            &plan,
        );
        assert_eq!(auto.state.mode, Mode::Serving);
        assert_eq!(auto.state.next_switch, Some(at("2026-11-26T02:00:00Z")));
    }

    #[test]
    fn no_windows_and_auto_serves_forever() {
        let steps = walk(&plan(&[], 30), Override::Auto, &["2026-11-25T03:00:00Z"]);
        assert_eq!(steps[0].state.mode, Mode::Serving);
        assert_eq!(steps[0].wake_at, None);
    }
}
