//! `schedule.timezone`: an IANA zone name, resolved once when the file is read, or `local`,
//! the host's zone, resolved when the daemon starts (it is a fact of the host, not of the
//! file: `check-config`, `doctor` and `verify` work in a container without one).

use std::fmt;

use jiff::tz::TimeZone;

/// The time zone fill windows are read in, as the operator named it and as resolved.
///
/// A named zone is resolved while the configuration is parsed, so `check-config` reports a
/// zone this build does not know, and nothing parses the name again.
#[derive(Clone)]
pub struct TimeZoneSetting {
    name: String,
    /// `None` for `local`, resolved by [`TimeZoneSetting::resolve`].
    zone: Option<TimeZone>,
}

impl TimeZoneSetting {
    /// UTC, the default.
    pub fn utc() -> TimeZoneSetting {
        TimeZoneSetting {
            name: "UTC".to_owned(),
            zone: Some(TimeZone::UTC),
        }
    }

    /// Resolves an IANA name (`Europe/London`); `local` is kept for [`Self::resolve`].
    pub fn parse(name: &str) -> Result<TimeZoneSetting, String> {
        let zone = if name == "local" {
            None
        } else {
            Some(TimeZone::get(name).map_err(|_| {
                format!(
                    "unknown time zone {name:?} (use an IANA name such as Europe/London, or \"local\")"
                )
            })?)
        };
        Ok(TimeZoneSetting {
            name: name.to_owned(),
            zone,
        })
    }

    /// The name as written in the file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The zone: the named one, or for `local` the host's, read now.
    pub fn resolve(&self) -> Result<TimeZone, String> {
        match &self.zone {
            Some(zone) => Ok(zone.clone()),
            None => TimeZone::try_system()
                .map_err(|err| format!("\"local\": the host's time zone cannot be read: {err}")),
        }
    }
}

impl fmt::Debug for TimeZoneSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TimeZoneSetting({:?})", self.name)
    }
}

/// Two settings are the same when they name the same zone (what a reload compares).
impl PartialEq for TimeZoneSetting {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

string_setting!(TimeZoneSetting, |zone| zone.name().to_owned());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_zone_resolves_and_keeps_its_name() {
        let london = TimeZoneSetting::parse("Europe/London").unwrap();
        assert_eq!(london.name(), "Europe/London");
        assert_eq!(london.resolve().unwrap().iana_name(), Some("Europe/London"));
        assert_eq!(
            TimeZoneSetting::parse("local").unwrap().name(),
            "local",
            "the host's zone is read when the daemon starts, not when the file is"
        );
    }

    #[test]
    fn an_unknown_zone_is_refused_with_a_hint() {
        let err = TimeZoneSetting::parse("Mars/Olympus").unwrap_err();
        assert!(
            err.contains("Mars/Olympus") && err.contains("IANA"),
            "{err}"
        );
    }
}
