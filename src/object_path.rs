//! Object paths: the one rule set shared by viewer requests and manifests.
//!
//! An object path is what follows the `/` in a viewer URL and what a manifest's `path` holds:
//! relative, `/`-separated, UTF-8, at most [`MAX_PATH_BYTES`], no `.` or `..` segment, no
//! empty segment, no NUL or other control byte, no backslash, and no segment longer than a
//! file name may be. Because a stored object is the plain file `objects/<path>`, these rules
//! are also what keeps a path from escaping the store.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// What stays as it is in an object path written into a URL: the unreserved characters of
/// RFC 3986 and `/`. Everything else is percent-encoded, as browsers' URL parsers and hls.js
/// leave a path they were given encoded.
const URL_PATH_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// An object path as a URL carries it: percent-encoded except the unreserved characters and `/`. What the
/// fill asks origins for, what `tidecache sign-url` prints and signs.
pub fn to_url_path(path: &str) -> String {
    utf8_percent_encode(path, URL_PATH_KEEP).to_string()
}

/// A request's URL path rewritten in the one encoding [`to_url_path`] gives (decoded once,
/// repeated slashes merged as [`from_request`] merges them, then encoded), so two spellings
/// of the same object's path (`%7E` and `~`, `%73` and `s`, `//t` and `/t`) compare equal;
/// `None` when it does not decode to UTF-8.
pub fn canonical_url_path(uri_path: &str) -> Option<String> {
    let decoded = percent_decode_str(uri_path).decode_utf8().ok()?;
    let mut merged = String::with_capacity(decoded.len());
    for character in decoded.chars() {
        if !(character == '/' && merged.ends_with('/')) {
            merged.push(character);
        }
    }
    Some(to_url_path(&merged))
}

/// Longest object path, in bytes after percent-decoding (CONTRACT section 3).
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest single segment: a file name on ext4, XFS and most others.
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Longer than [`MAX_PATH_BYTES`] or with a segment longer than [`MAX_SEGMENT_BYTES`].
    #[error("path is too long")]
    TooLong,
    /// A `.` or `..` segment.
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    /// A NUL or other control character.
    #[error("path has a control character")]
    ControlCharacter,
    /// A backslash, which some tools treat as a separator.
    #[error("path has a backslash")]
    Backslash,
    /// A `%` not followed by two hex digits: a broken or hostile client.
    #[error("path has a malformed percent-escape")]
    BadPercentEscape,
    /// Percent-decoding gave bytes that are not UTF-8.
    #[error("path is not valid UTF-8")]
    NotUtf8,
    /// Empty, absolute, or with an empty segment (manifests only; viewers get slashes merged).
    #[error("path is empty, absolute or has an empty segment")]
    EmptySegment,
}

/// Checks a manifest or store path against every rule.
pub fn validate(path: &str) -> Result<(), PathError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if path.is_empty() || path.split('/').any(str::is_empty) {
        return Err(PathError::EmptySegment);
    }
    check_segments(path)
}

/// Rules on characters and segments, shared by both entry points.
fn check_segments(path: &str) -> Result<(), PathError> {
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter);
    }
    for segment in path.split('/') {
        if segment == "." || segment == ".." {
            return Err(PathError::DotSegment);
        }
        if segment.len() > MAX_SEGMENT_BYTES {
            return Err(PathError::TooLong);
        }
    }
    Ok(())
}

/// Turns a viewer request's URI path (query already removed) into an object path.
///
/// Percent-decodes exactly once (so `%2e%2e` is `..` and refused, while `%252e` stays the
/// literal name `%2e`), merges repeated slashes as nginx does (players that join a base URL
/// with a leading-slash path send `//`), and applies every rule of [`validate`]. A trailing
/// slash is kept: `/t/x.ts/` names a directory, not the object `t/x.ts` (CONTRACT section
/// 4), and since no stored path ends with one, it is a miss.
pub fn from_request(uri_path: &str) -> Result<Cow<'_, str>, PathError> {
    if uri_path.len() > MAX_PATH_BYTES * 3 + 1 {
        return Err(PathError::TooLong);
    }
    if !percent_escapes_are_well_formed(uri_path) {
        return Err(PathError::BadPercentEscape);
    }
    let decoded = percent_decode_str(uri_path)
        .decode_utf8()
        .map_err(|_| PathError::NotUtf8)?;
    let needs_merge = |text: &str| text.contains("//");
    let path: Cow<'_, str> = match decoded {
        // The common case, `/title/seg.ts` with no escapes: a borrowed slice, no allocation.
        Cow::Borrowed(text) if !needs_merge(text) => {
            Cow::Borrowed(text.strip_prefix('/').unwrap_or(text))
        }
        decoded => {
            let merged: Vec<&str> = decoded
                .split('/')
                .filter(|segment| !segment.is_empty())
                .collect();
            let mut merged = merged.join("/");
            if decoded.ends_with('/') && !merged.is_empty() {
                merged.push('/');
            }
            Cow::Owned(merged)
        }
    };
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    check_segments(&path)?;
    Ok(path)
}

/// Whether every `%` starts a two-hex-digit escape (the decoder would pass others through).
fn percent_escapes_are_well_formed(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(offset) = bytes[at..].iter().position(|&byte| byte == b'%') {
        let escape = at + offset;
        match bytes.get(escape + 1..escape + 3) {
            Some([high, low]) if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
                at = escape + 3;
            }
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths_lose_the_leading_slash() {
        assert_eq!(
            from_request("/title/1080p/seg_1.m4s").unwrap(),
            "title/1080p/seg_1.m4s"
        );
        assert_eq!(from_request("//title//seg.ts").unwrap(), "title/seg.ts");
        assert_eq!(from_request("/").unwrap(), "");
    }

    #[test]
    fn a_trailing_slash_is_kept_so_it_never_names_an_object() {
        assert_eq!(from_request("/t/x.ts/").unwrap(), "t/x.ts/");
        assert_eq!(from_request("//t//x.ts//").unwrap(), "t/x.ts/");
        assert!(
            validate("t/x.ts/").is_err(),
            "no stored path ends with a slash"
        );
    }

    #[test]
    fn request_paths_are_percent_decoded_once() {
        assert_eq!(from_request("/a%20b/c.ts").unwrap(), "a b/c.ts");
        assert_eq!(from_request("/%252e%252e/x").unwrap(), "%2e%2e/x");
    }

    #[test]
    fn malformed_percent_escapes_are_refused() {
        for bad in ["/%zz", "/a%", "/a%4", "/%4g/x"] {
            assert_eq!(from_request(bad), Err(PathError::BadPercentEscape), "{bad}");
        }
        assert_eq!(from_request("/%41%62").unwrap(), "Ab");
    }

    #[test]
    fn traversal_is_refused_plain_and_encoded() {
        for bad in [
            "/../etc/passwd",
            "/a/../b",
            "/%2e%2e/x",
            "/a/%2E%2e/b",
            "/./a",
            "/a/.",
        ] {
            assert_eq!(from_request(bad), Err(PathError::DotSegment), "{bad}");
        }
    }

    #[test]
    fn nul_backslash_control_and_bad_utf8_are_refused() {
        assert_eq!(from_request("/a%00b"), Err(PathError::ControlCharacter));
        assert_eq!(from_request("/a%0ab"), Err(PathError::ControlCharacter));
        assert_eq!(from_request("/a%5c..%5cb"), Err(PathError::Backslash));
        assert_eq!(from_request("/a%ff"), Err(PathError::NotUtf8));
    }

    #[test]
    fn over_long_paths_and_segments_are_refused() {
        let long = format!("/{}", "a/".repeat(600));
        assert_eq!(from_request(&long), Err(PathError::TooLong));
        let long_segment = format!("/{}", "a".repeat(256));
        assert_eq!(from_request(&long_segment), Err(PathError::TooLong));
        assert!(validate(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn manifest_paths_must_be_relative_and_without_empty_segments() {
        assert!(validate("title/seg.ts").is_ok());
        for bad in ["", "/abs", "a//b", "a/", "a/../b", "a\\b", "a\0b"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }
}
