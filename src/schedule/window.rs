//! Fill windows as written in the configuration: `"HH:MM-HH:MM"` in local wall-clock time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Minutes in a day; window ends of `24:00` are allowed and mean midnight.
const MINUTES_PER_DAY: u16 = 24 * 60;

/// A daily window in local wall-clock minutes since midnight; `end < start` crosses midnight.
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
        let start = parse_clock(start.trim())? % MINUTES_PER_DAY;
        let end = parse_clock(end.trim())? % MINUTES_PER_DAY;
        if start == end {
            return Err(format!(
                "{text:?} is empty: start and end are the same time"
            ));
        }
        Ok(FillWindow::new(start, end))
    }
}

impl fmt::Display for FillWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start_minute / 60,
            self.start_minute % 60,
            self.end_minute / 60,
            self.end_minute % 60
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
