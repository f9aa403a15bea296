//! Fill windows: `"HH:MM-HH:MM"` in local wall-clock time, and where an instant stands
//! against them in a real time zone.
//!
//! Daylight-saving edges are defined, not left to chance:
//! - a wall-clock time skipped by spring-forward (02:30 on a night clocks jump 02:00 -> 03:00)
//!   means the first valid instant after it: the transition itself (03:00 new time);
//! - a wall-clock time that happens twice at fall-back (01:30 on a night clocks go
//!   02:00 -> 01:00) means its first occurrence.
//!
//! So a `02:00-06:00` window is 4 hours on most nights, 3 on the spring-forward night in zones
//! that jump at 02:00, and 4 on the fall-back night (it starts at 02:00 after the repeat).
//! Several windows may overlap or touch; they merge into one fill.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::{AmbiguousOffset, TimeZone};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Minutes in a day; window ends of `24:00` are allowed and mean midnight.
const MINUTES_PER_DAY: u16 = 24 * 60;

/// A daily window in local wall-clock minutes since midnight; `end < start` crosses midnight,
/// and `end == start` (only `"00:00-24:00"` parses to it) is the whole day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillWindow {
    /// Start, minutes after local midnight.
    pub start_minute: u16,
    /// End, minutes after local midnight (exclusive).
    pub end_minute: u16,
}

impl FillWindow {
    /// A window from `start_minute` to `end_minute` (minutes after local midnight).
    pub const fn new(start_minute: u16, end_minute: u16) -> Self {
        FillWindow {
            start_minute,
            end_minute,
        }
    }

    /// Whether the window runs past midnight into the next day.
    pub fn crosses_midnight(&self) -> bool {
        self.end_minute < self.start_minute
    }
}

/// Parses `HH:MM` (00:00 to 24:00) into minutes after midnight.
fn parse_clock(text: &str) -> Result<u16, String> {
    let (hours, minutes) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not HH:MM"))?;
    let valid_digits = |part: &str| part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit());
    if !valid_digits(hours) || !valid_digits(minutes) {
        return Err(format!("{text:?} is not HH:MM"));
    }
    let hours: u16 = hours
        .parse()
        .map_err(|_| format!("{text:?} is not HH:MM"))?;
    let minutes: u16 = minutes
        .parse()
        .map_err(|_| format!("{text:?} is not HH:MM"))?;
    let total = hours * 60 + minutes;
    if minutes >= 60 || total > MINUTES_PER_DAY {
        return Err(format!("{text:?} is not a time of day"));
    }
    Ok(total)
}

impl FromStr for FillWindow {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (start, end) = text
            .trim()
            .split_once('-')
            .ok_or_else(|| format!("{text:?} is not \"HH:MM-HH:MM\""))?;
        let (start, end) = (parse_clock(start.trim())?, parse_clock(end.trim())?);
        if (start, end) == (0, MINUTES_PER_DAY) {
            // The whole day: filling around the clock (a box being seeded, say).
            return Ok(FillWindow::new(0, 0));
        }
        let (start, end) = (start % MINUTES_PER_DAY, end % MINUTES_PER_DAY);
        if start == end {
            return Err(format!(
                "{text:?} is empty: start and end are the same time (\"00:00-24:00\" is the whole day)"
            ));
        }
        Ok(FillWindow::new(start, end))
    }
}

impl fmt::Display for FillWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = if self.end_minute == self.start_minute {
            self.end_minute + MINUTES_PER_DAY
        } else {
            self.end_minute
        };
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start_minute / 60,
            self.start_minute % 60,
            end / 60,
            end % 60
        )
    }
}

impl<'de> Deserialize<'de> for FillWindow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for FillWindow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The absolute instant of a local wall-clock time (`minute` after midnight, up to 24:00) on
/// `date` in `zone`, with the daylight-saving rules of the module doc.
pub fn local_instant(zone: &TimeZone, date: Date, minute: u16) -> Timestamp {
    let (date, minute) = if minute >= MINUTES_PER_DAY {
        (date.tomorrow().unwrap_or(date), minute - MINUTES_PER_DAY)
    } else {
        (date, minute)
    };
    let civil = date.at((minute / 60) as i8, (minute % 60) as i8, 0, 0);
    let ambiguous = zone.to_ambiguous_timestamp(civil);
    match ambiguous.offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(civil),
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(civil),
        AmbiguousOffset::Gap { before, .. } => {
            // Read with the offset in force before the gap, the skipped time lands at or after
            // the transition; the last transition up to it is the first valid instant.
            // (`preceding` is strictly before, hence the nanosecond.)
            before.to_timestamp(civil).map(|past_the_gap| {
                let just_after = past_the_gap
                    .checked_add(jiff::SignedDuration::from_nanos(1))
                    .unwrap_or(past_the_gap);
                zone.preceding(just_after)
                    .next()
                    .map_or(past_the_gap, |transition| transition.timestamp())
            })
        }
    }
    .unwrap_or(Timestamp::MAX)
}

/// A fill window on one particular night: `[start, end)` in absolute time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    /// When filling starts.
    pub start: Timestamp,
    /// When serving resumes.
    pub end: Timestamp,
}

/// Where an instant stands against the fill windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowPosition {
    /// Inside a window (after merging overlaps) that ends at `ends`.
    Inside {
        /// When the (merged) window ends.
        ends: Timestamp,
    },
    /// Outside every window; the next one starts at `next_start` (none when there are no
    /// windows at all).
    Outside {
        /// When the next window starts.
        next_start: Option<Timestamp>,
    },
}

/// The concrete windows from the day before `now` to two days after it, merged where they
/// overlap or touch, in order. Windows last at most a day, so this covers `now` and the next
/// start whatever the zone.
pub fn intervals_around(windows: &[FillWindow], zone: &TimeZone, now: Timestamp) -> Vec<Interval> {
    let today = zone.to_datetime(now).date();
    let mut intervals = Vec::with_capacity(windows.len() * 4);
    for offset in -1..=2 {
        let Ok(date) = today.checked_add(jiff::Span::new().days(offset)) else {
            continue;
        };
        for window in windows {
            let end_minute = if window.end_minute <= window.start_minute {
                window.end_minute + MINUTES_PER_DAY
            } else {
                window.end_minute
            };
            let start = local_instant(zone, date, window.start_minute);
            let end = local_instant(zone, date, end_minute);
            if start < end {
                intervals.push(Interval { start, end });
            }
        }
    }
    intervals.sort_by_key(|interval| interval.start);
    let mut merged: Vec<Interval> = Vec::with_capacity(intervals.len());
    for interval in intervals {
        match merged.last_mut() {
            Some(last) if interval.start <= last.end => last.end = last.end.max(interval.end),
            _ => merged.push(interval),
        }
    }
    merged
}

/// Whether `now` is inside a fill window, and when that changes.
pub fn position(windows: &[FillWindow], zone: &TimeZone, now: Timestamp) -> WindowPosition {
    let intervals = intervals_around(windows, zone, now);
    if let Some(inside) = intervals
        .iter()
        .find(|interval| interval.start <= now && now < interval.end)
    {
        return WindowPosition::Inside { ends: inside.end };
    }
    WindowPosition::Outside {
        next_start: intervals
            .iter()
            .map(|interval| interval.start)
            .find(|start| *start > now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).expect("zone in the tz database")
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("RFC 3339 instant")
    }

    fn windows(texts: &[&str]) -> Vec<FillWindow> {
        texts.iter().map(|text| text.parse().unwrap()).collect()
    }

    #[test]
    fn inside_and_outside_a_window_within_one_day() {
        let utc = zone("UTC");
        let night = windows(&["02:00-06:00"]);
        assert_eq!(
            position(&night, &utc, at("2026-11-25T03:00:00Z")),
            WindowPosition::Inside {
                ends: at("2026-11-25T06:00:00Z")
            }
        );
        assert_eq!(
            position(&night, &utc, at("2026-11-25T06:00:00Z")),
            WindowPosition::Outside {
                next_start: Some(at("2026-11-26T02:00:00Z"))
            },
            "the end is exclusive"
        );
        assert_eq!(
            position(&night, &utc, at("2026-11-25T01:59:59Z")),
            WindowPosition::Outside {
                next_start: Some(at("2026-11-25T02:00:00Z"))
            }
        );
        assert_eq!(
            position(&night, &utc, at("2026-11-25T02:00:00Z")),
            WindowPosition::Inside {
                ends: at("2026-11-25T06:00:00Z")
            },
            "the start is inclusive"
        );
    }

    #[test]
    fn windows_cross_midnight_from_either_side() {
        let utc = zone("UTC");
        let late = windows(&["23:00-03:00"]);
        assert_eq!(
            position(&late, &utc, at("2026-11-25T23:30:00Z")),
            WindowPosition::Inside {
                ends: at("2026-11-26T03:00:00Z")
            }
        );
        assert_eq!(
            position(&late, &utc, at("2026-11-26T01:00:00Z")),
            WindowPosition::Inside {
                ends: at("2026-11-26T03:00:00Z")
            }
        );
        let to_midnight = windows(&["22:00-24:00"]);
        assert_eq!(
            position(&to_midnight, &utc, at("2026-11-25T23:59:00Z")),
            WindowPosition::Inside {
                ends: at("2026-11-26T00:00:00Z")
            }
        );
    }

    #[test]
    fn local_time_follows_the_zone() {
        let tokyo = zone("Asia/Tokyo");
        assert_eq!(
            position(
                &windows(&["02:00-06:00"]),
                &tokyo,
                at("2026-11-25T12:00:00Z")
            ),
            WindowPosition::Outside {
                next_start: Some(at("2026-11-25T17:00:00Z"))
            }
        );
    }

    #[test]
    fn several_windows_and_overlapping_ones_merge() {
        let utc = zone("UTC");
        let split = windows(&["01:00-02:00", "04:00-05:00"]);
        assert_eq!(
            position(&split, &utc, at("2026-11-25T03:00:00Z")),
            WindowPosition::Outside {
                next_start: Some(at("2026-11-25T04:00:00Z"))
            }
        );
        let overlapping = windows(&["01:00-03:00", "02:00-05:00", "05:00-06:00"]);
        assert_eq!(
            position(&overlapping, &utc, at("2026-11-25T01:30:00Z")),
            WindowPosition::Inside {
                ends: at("2026-11-25T06:00:00Z")
            },
            "overlapping and touching windows are one fill"
        );
    }

    #[test]
    fn no_windows_means_never_filling() {
        assert_eq!(
            position(&[], &zone("UTC"), at("2026-11-25T03:00:00Z")),
            WindowPosition::Outside { next_start: None }
        );
    }

    #[test]
    fn spring_forward_start_begins_at_the_first_valid_instant() {
        // America/New_York jumps 02:00 EST -> 03:00 EDT on 2026-03-08 (07:00Z).
        let new_york = zone("America/New_York");
        assert_eq!(
            position(
                &windows(&["02:30-06:00"]),
                &new_york,
                at("2026-03-08T06:00:00Z")
            ),
            WindowPosition::Outside {
                next_start: Some(at("2026-03-08T07:00:00Z"))
            }
        );
        assert_eq!(
            position(
                &windows(&["02:30-06:00"]),
                &new_york,
                at("2026-03-08T07:00:00Z")
            ),
            WindowPosition::Inside {
                ends: at("2026-03-08T10:00:00Z")
            },
            "06:00 EDT is 10:00Z: a 3-hour window that night"
        );
        // Europe/London jumps 01:00 GMT -> 02:00 BST on 2026-03-29 (01:00Z).
        let london = zone("Europe/London");
        assert_eq!(
            position(
                &windows(&["01:30-04:00"]),
                &london,
                at("2026-03-29T00:30:00Z")
            ),
            WindowPosition::Outside {
                next_start: Some(at("2026-03-29T01:00:00Z"))
            }
        );
    }

    #[test]
    fn fall_back_ambiguous_time_means_its_first_occurrence() {
        // America/New_York repeats 01:00-02:00 on 2026-11-01 (EDT until 06:00Z, then EST).
        let new_york = zone("America/New_York");
        assert_eq!(
            position(
                &windows(&["01:30-05:00"]),
                &new_york,
                at("2026-11-01T05:00:00Z")
            ),
            WindowPosition::Outside {
                next_start: Some(at("2026-11-01T05:30:00Z"))
            },
            "01:30 EDT, the first 01:30"
        );
        assert_eq!(
            position(
                &windows(&["01:30-05:00"]),
                &new_york,
                at("2026-11-01T06:00:00Z")
            ),
            WindowPosition::Inside {
                ends: at("2026-11-01T10:00:00Z")
            },
            "05:00 EST is 10:00Z: a 4.5-hour window that night"
        );
        // Europe/London repeats 01:00-02:00 on 2026-10-25 (BST until 01:00Z, then GMT).
        let london = zone("Europe/London");
        assert_eq!(
            position(
                &windows(&["02:00-06:00"]),
                &london,
                at("2026-10-25T01:30:00Z")
            ),
            WindowPosition::Outside {
                next_start: Some(at("2026-10-25T02:00:00Z"))
            }
        );
    }

    #[test]
    fn every_day_of_a_year_has_its_window_in_local_time() {
        let zones = [
            "Europe/London",
            "America/New_York",
            "Australia/Lord_Howe",
            "UTC",
        ];
        let night = windows(&["02:00-06:00"]);
        for name in zones {
            let zone = zone(name);
            let mut date = jiff::civil::date(2026, 1, 1);
            while date.year() == 2026 {
                let noon = local_instant(&zone, date, 12 * 60);
                let WindowPosition::Outside {
                    next_start: Some(start),
                } = position(&night, &zone, noon)
                else {
                    panic!("{name} {date}: noon is outside the window");
                };
                let local = start.to_zoned_datetime(zone.clone());
                assert_eq!(local.date(), date.tomorrow().unwrap(), "{name} {date}");
                assert!(
                    local.hour() >= 2 && local.hour() < 4,
                    "{name} {date}: starts at {local}"
                );
                date = date.tomorrow().unwrap();
            }
        }
    }

    #[test]
    fn parses_a_window_inside_one_day() {
        let window: FillWindow = "02:00-06:00".parse().unwrap();
        assert_eq!(window, FillWindow::new(120, 360));
        assert!(!window.crosses_midnight());
        assert_eq!(window.to_string(), "02:00-06:00");
    }

    #[test]
    fn parses_a_window_across_midnight() {
        let window: FillWindow = "23:30-05:15".parse().unwrap();
        assert!(window.crosses_midnight());
        let until_midnight: FillWindow = "22:00-24:00".parse().unwrap();
        assert_eq!(until_midnight.end_minute, 0);
    }

    #[test]
    fn refuses_malformed_windows() {
        for bad in [
            "2-6",
            "02:00",
            "25:00-06:00",
            "02:60-03:00",
            "02:00-02:00",
            "aa:bb-cc:dd",
        ] {
            assert!(
                bad.parse::<FillWindow>().is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn midnight_to_midnight_is_the_whole_day() {
        let whole: FillWindow = "00:00-24:00".parse().unwrap();
        assert_eq!(whole.to_string(), "00:00-24:00");
        for zone_name in ["UTC", "Europe/Paris", "America/New_York"] {
            let tz = zone(zone_name);
            // Ordinary days and both daylight-saving edges: always inside.
            for now in [
                "2026-06-15T12:00:00Z",
                "2026-03-29T01:30:00Z",
                "2026-11-01T06:30:00Z",
                "2026-12-31T23:59:59Z",
            ] {
                assert!(
                    matches!(
                        position(&[whole], &tz, at(now)),
                        WindowPosition::Inside { .. }
                    ),
                    "{zone_name} {now}"
                );
            }
        }
        assert!(
            "06:00-06:00".parse::<FillWindow>().is_err(),
            "still ambiguous"
        );
        assert!("24:00-24:00".parse::<FillWindow>().is_err());
    }
}
