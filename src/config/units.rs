//! Human-readable quantities for the configuration file: sizes (`"64MiB"`), rates (`"2Gbit"`)
//! and durations (`"30s"`).
//!
//! Operators write these by hand, so parsing is forgiving about spaces and the case of unit
//! letters but strict about meaning: `b` after a rate prefix is bits, `B` is bytes, and a value
//! that does not parse is an error that quotes it rather than a silent zero.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte count such as a store capacity or a header limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// A bandwidth in bytes per second; zero means unlimited where the key says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Bytes per second.
    pub bytes_per_sec: u64,
}

/// A duration written as `"30s"`, `"10m"`, `"1h 30m"` or `"500ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// Splits `"1.5 GiB"` into the number and the unit text.
fn split_number(text: &str) -> Result<(f64, &str), String> {
    let text = text.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    let number: String = number.chars().filter(|&c| c != '_').collect();
    if number.is_empty() {
        return Err(format!("{text:?} does not start with a number"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a valid number"))?;
    Ok((value, unit.trim()))
}

/// The multiplier of a decimal (`k`, `M`, `G`, `T`, `P`) or binary (`Ki`, `Mi`, ...) prefix.
fn prefix_multiplier(prefix: &str) -> Option<f64> {
    let lower = prefix.to_ascii_lowercase();
    let value = match lower.as_str() {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "p" => 1e15,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        "ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "pi" => 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(value)
}

/// Converts a finite, non-negative product to `u64`, refusing overflow.
fn to_u64(value: f64, text: &str) -> Result<u64, String> {
    if !value.is_finite() || value < 0.0 || value > u64::MAX as f64 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(value.round() as u64)
}

/// Parses a size: a plain number of bytes, or a number with a unit such as `KB`, `MiB`, `7TB`.
pub fn parse_size(text: &str) -> Result<ByteSize, String> {
    let (number, unit) = split_number(text)?;
    let prefix = unit
        .strip_suffix('B')
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(unit);
    let multiplier = prefix_multiplier(prefix).ok_or_else(|| {
        format!(
            "{text:?} has an unknown size unit {unit:?} (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
        )
    })?;
    Ok(ByteSize(to_u64(number * multiplier, text)?))
}

/// Parses a rate: bits (`"2Gbit"`, `"500Mbps"`) or bytes per second (`"100MB/s"`, `"64MiB/s"`).
/// A plain number is bytes per second.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let (number, unit) = split_number(text)?;
    let unknown =
        || format!("{text:?} has an unknown rate unit {unit:?} (use e.g. 2Gbit, 500Mbps, 100MB/s)");
    let (prefix, bits) = if let Some(prefix) = unit
        .strip_suffix("bit")
        .or_else(|| unit.strip_suffix("bps"))
    {
        (prefix, true)
    } else if let Some(per_sec) = unit.strip_suffix("/s") {
        (per_sec.strip_suffix('B').ok_or_else(unknown)?, false)
    } else if unit.is_empty() {
        ("", false)
    } else {
        return Err(unknown());
    };
    let multiplier = prefix_multiplier(prefix).ok_or_else(unknown)?;
    let bytes = number * multiplier / if bits { 8.0 } else { 1.0 };
    Ok(Rate {
        bytes_per_sec: to_u64(bytes, text)?,
    })
}

/// Parses a duration such as `"30s"`, `"1h 30m"` or `"250ms"`.
pub fn parse_duration(text: &str) -> Result<HumanDuration, String> {
    humantime::parse_duration(text.trim())
        .map(HumanDuration)
        .map_err(|err| format!("{text:?} is not a duration ({err}; use e.g. 30s, 10m, 1h)"))
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 5] = [
            ("PiB", 1 << 50),
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, unit) in UNITS {
            if self.0 >= unit && self.0 % unit == 0 {
                return write!(f, "{}{name}", self.0 / unit);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.bytes_per_sec.saturating_mul(8);
        if self.bytes_per_sec == 0 {
            return write!(f, "0");
        }
        for (name, unit) in [
            ("Gbit", 1_000_000_000u64),
            ("Mbit", 1_000_000),
            ("kbit", 1_000),
        ] {
            if bits >= unit && bits % unit == 0 {
                return write!(f, "{}{name}", bits / unit);
            }
        }
        write!(f, "{}B/s", self.bytes_per_sec)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Accepts either a string with a unit or a bare TOML integer.
#[derive(Deserialize)]
#[serde(untagged)]
enum TextOrNumber {
    Text(String),
    Number(u64),
}

macro_rules! human_serde {
    ($type:ty, $parse:path, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = match TextOrNumber::deserialize(deserializer)
                    .map_err(|_| serde::de::Error::custom(concat!("expected ", $expecting)))?
                {
                    TextOrNumber::Text(text) => text,
                    TextOrNumber::Number(number) => number.to_string(),
                };
                $parse(&text).map_err(serde::de::Error::custom)
            }
        }

        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    };
}

human_serde!(ByteSize, parse_size, "a size such as \"64MiB\"");
human_serde!(Rate, parse_rate, "a rate such as \"2Gbit\"");
human_serde!(HumanDuration, parse_duration, "a duration such as \"30s\"");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_decimal_and_binary_units() {
        assert_eq!(parse_size("64MiB"), Ok(ByteSize(64 << 20)));
        assert_eq!(parse_size("7TB"), Ok(ByteSize(7_000_000_000_000)));
        assert_eq!(parse_size("1.5 GiB"), Ok(ByteSize(3 << 29)));
        assert_eq!(parse_size("4096"), Ok(ByteSize(4096)));
        assert_eq!(parse_size("16kb"), Ok(ByteSize(16_000)));
    }

    #[test]
    fn sizes_refuse_unknown_units_and_garbage() {
        assert!(
            parse_size("64XB")
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("1e99PiB").is_err());
    }

    #[test]
    fn rates_distinguish_bits_from_bytes() {
        assert_eq!(parse_rate("2Gbit").unwrap().bytes_per_sec, 250_000_000);
        assert_eq!(parse_rate("800Mbps").unwrap().bytes_per_sec, 100_000_000);
        assert_eq!(parse_rate("100MB/s").unwrap().bytes_per_sec, 100_000_000);
        assert_eq!(parse_rate("1MiB/s").unwrap().bytes_per_sec, 1 << 20);
        assert_eq!(parse_rate("0").unwrap().bytes_per_sec, 0);
        assert!(parse_rate("2Gfoo").is_err());
    }

    #[test]
    fn durations_use_humantime_syntax() {
        assert_eq!(
            parse_duration("30s"),
            Ok(HumanDuration(Duration::from_secs(30)))
        );
        assert_eq!(
            parse_duration("1h 30m"),
            Ok(HumanDuration(Duration::from_secs(5400)))
        );
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn display_round_trips_through_parse() {
        for text in ["64MiB", "7000000000000B", "2Gbit", "0", "30s"] {
            if let Ok(size) = parse_size(text) {
                assert_eq!(parse_size(&size.to_string()), Ok(size));
            }
            if let Ok(rate) = parse_rate(text) {
                assert_eq!(parse_rate(&rate.to_string()), Ok(rate));
            }
        }
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
        assert_eq!(parse_rate("2Gbit").unwrap().to_string(), "2Gbit");
    }
}
