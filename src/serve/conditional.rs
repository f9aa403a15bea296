//! Conditional requests (RFC 9110 section 13): `If-Match`, `If-None-Match`,
//! `If-Modified-Since`, `If-Unmodified-Since` and `If-Range`, evaluated in the RFC's order.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The request headers that matter here, as text (absent ones are `None`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Preconditions<'a> {
    /// `If-Match`.
    pub if_match: Option<&'a str>,
    /// `If-None-Match`.
    pub if_none_match: Option<&'a str>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<&'a str>,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: Option<&'a str>,
    /// `If-Range`.
    pub if_range: Option<&'a str>,
}

/// What the preconditions say to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the representation; `honor_range` is false when `If-Range` did not match.
    Proceed {
        /// Whether a `Range` header may be applied.
        honor_range: bool,
    },
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    PreconditionFailed,
}

/// An entity tag from a request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    /// The opaque tag including its quotes.
    opaque: &'a str,
}

/// Parses a comma-separated list of entity tags; `None` means `*`. Malformed members are skipped.
fn parse_tags(header: &str) -> Option<Vec<EntityTag<'_>>> {
    if header.trim() == "*" {
        return None;
    }
    let mut tags = Vec::new();
    let mut rest = header.trim_start();
    while !rest.is_empty() {
        let (weak, body) = match rest.strip_prefix("W/") {
            Some(body) => (true, body),
            None => (false, rest),
        };
        if !body.starts_with('"') {
            rest = body
                .split_once(',')
                .map_or("", |(_, after)| after)
                .trim_start();
            continue;
        }
        match body[1..].find('"') {
            Some(close) => {
                tags.push(EntityTag {
                    weak,
                    opaque: &body[..close + 2],
                });
                rest = body[close + 2..]
                    .trim_start()
                    .trim_start_matches(',')
                    .trim_start();
            }
            None => break,
        }
    }
    Some(tags)
}

/// How two entity tags are compared (RFC 9110 section 8.8.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    /// Both tags must be strong and equal (`If-Match`).
    Strong,
    /// Equal opaque tags match whether weak or not (`If-None-Match`).
    Weak,
}

/// Whether any listed tag matches `etag` (our tags are always strong).
fn list_matches(header: &str, etag: &str, comparison: Comparison) -> bool {
    match parse_tags(header) {
        None => true,
        Some(tags) => tags
            .iter()
            .any(|tag| tag.opaque == etag && (comparison == Comparison::Weak || !tag.weak)),
    }
}

/// Parses an HTTP date; `None` for anything invalid (and the header is then ignored).
fn http_date(text: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(text.trim()).ok()
}

/// `Last-Modified` as a `SystemTime` from Unix seconds.
pub fn last_modified_time(unix_seconds: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_seconds.max(0) as u64)
}

/// Evaluates the preconditions for a GET or HEAD of a representation with this strong `etag`
/// (with quotes) and `Last-Modified` (Unix seconds).
pub fn evaluate(request: &Preconditions<'_>, etag: &str, last_modified: i64) -> Verdict {
    let modified = last_modified_time(last_modified);
    if let Some(if_match) = request.if_match {
        if !list_matches(if_match, etag, Comparison::Strong) {
            return Verdict::PreconditionFailed;
        }
    } else if let Some(since) = request.if_unmodified_since.and_then(http_date) {
        if modified > since {
            return Verdict::PreconditionFailed;
        }
    }
    if let Some(if_none_match) = request.if_none_match {
        if list_matches(if_none_match, etag, Comparison::Weak) {
            return Verdict::NotModified;
        }
    } else if let Some(since) = request.if_modified_since.and_then(http_date) {
        if modified <= since {
            return Verdict::NotModified;
        }
    }
    let honor_range = match request.if_range {
        None => true,
        Some(value) => {
            let value = value.trim();
            if value.starts_with('"') || value.starts_with("W/") {
                !value.starts_with("W/") && value == etag
            } else {
                http_date(value) == Some(modified)
            }
        }
    };
    Verdict::Proceed { honor_range }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETAG: &str = "\"abc\"";
    const MODIFIED: i64 = 1_700_000_000;

    fn date(unix: i64) -> String {
        httpdate::fmt_http_date(last_modified_time(unix))
    }

    fn verdict(request: Preconditions<'_>) -> Verdict {
        evaluate(&request, ETAG, MODIFIED)
    }

    const PROCEED: Verdict = Verdict::Proceed { honor_range: true };

    #[test]
    fn no_preconditions_proceed() {
        assert_eq!(verdict(Preconditions::default()), PROCEED);
    }

    #[test]
    fn if_none_match_uses_weak_comparison_and_lists() {
        let matching = [
            "\"abc\"",
            "W/\"abc\"",
            "\"x\", \"abc\"",
            "*",
            "\"x\",W/\"abc\"",
        ];
        for value in matching {
            let request = Preconditions {
                if_none_match: Some(value),
                ..Default::default()
            };
            assert_eq!(verdict(request), Verdict::NotModified, "{value}");
        }
        let request = Preconditions {
            if_none_match: Some("\"other\""),
            ..Default::default()
        };
        assert_eq!(verdict(request), PROCEED);
    }

    #[test]
    fn if_match_uses_strong_comparison() {
        for (value, expected) in [
            ("\"abc\"", PROCEED),
            ("*", PROCEED),
            ("W/\"abc\"", Verdict::PreconditionFailed),
            ("\"nope\"", Verdict::PreconditionFailed),
        ] {
            let request = Preconditions {
                if_match: Some(value),
                ..Default::default()
            };
            assert_eq!(verdict(request), expected, "{value}");
        }
    }

    #[test]
    fn if_modified_since_compares_seconds() {
        for (since, expected) in [
            (MODIFIED, Verdict::NotModified),
            (MODIFIED + 10, Verdict::NotModified),
            (MODIFIED - 1, PROCEED),
        ] {
            let text = date(since);
            let request = Preconditions {
                if_modified_since: Some(&text),
                ..Default::default()
            };
            assert_eq!(verdict(request), expected, "{since}");
        }
    }

    #[test]
    fn if_none_match_overrides_if_modified_since() {
        let text = date(MODIFIED);
        let request = Preconditions {
            if_none_match: Some("\"other\""),
            if_modified_since: Some(&text),
            ..Default::default()
        };
        assert_eq!(verdict(request), PROCEED);
    }

    #[test]
    fn if_unmodified_since_fails_when_modified_later() {
        let before = date(MODIFIED - 1);
        let request = Preconditions {
            if_unmodified_since: Some(&before),
            ..Default::default()
        };
        assert_eq!(verdict(request), Verdict::PreconditionFailed);
        let after = date(MODIFIED);
        let request = Preconditions {
            if_unmodified_since: Some(&after),
            ..Default::default()
        };
        assert_eq!(verdict(request), PROCEED);
    }

    #[test]
    fn invalid_dates_are_ignored() {
        let request = Preconditions {
            if_modified_since: Some("yesterday"),
            if_unmodified_since: Some("tomorrow"),
            ..Default::default()
        };
        assert_eq!(verdict(request), PROCEED);
    }

    #[test]
    fn if_range_with_matching_validator_honors_range() {
        let exact = date(MODIFIED);
        for value in [ETAG, exact.as_str()] {
            let request = Preconditions {
                if_range: Some(value),
                ..Default::default()
            };
            assert_eq!(verdict(request), PROCEED, "{value}");
        }
    }

    #[test]
    fn if_range_mismatch_or_weak_tag_sends_whole() {
        let later = date(MODIFIED + 1);
        for value in ["\"old\"", "W/\"abc\"", later.as_str(), "garbage"] {
            let request = Preconditions {
                if_range: Some(value),
                ..Default::default()
            };
            assert_eq!(
                verdict(request),
                Verdict::Proceed { honor_range: false },
                "{value}"
            );
        }
    }
}
