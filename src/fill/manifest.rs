//! The fill manifest (CONTRACT section 3): parsing and full validation before anything changes.
//!
//! A manifest is the whole desired content of the box. It is refused whole, with a message
//! naming the first bad object, when any part of it is wrong; the manifest in force stays.

use std::collections::HashSet;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;
use serde::Deserialize;

use crate::object_path;

/// The only manifest format version this build reads.
pub const MANIFEST_VERSION: u64 = 1;

/// Longest manifest id accepted.
const MAX_ID_LEN: usize = 256;

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the manifest's shape.
    #[error("manifest is not valid: {0}")]
    Syntax(String),
    /// Valid JSON, but a field breaks a rule; the message names where.
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    version: u64,
    id: String,
    #[serde(default)]
    base_url: Option<String>,
    objects: Vec<RawObject>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObject {
    path: String,
    size: u64,
    sha256: String,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    url: Option<String>,
}

/// Where an object's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An `http` or `https` URL.
    Http(String),
    /// A local file (`file://` URL), for seeding from a disk.
    File(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Http(url) => f.write_str(url),
            Source::File(path) => write!(f, "file://{}", path.display()),
        }
    }
}

/// One object the box should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestObject {
    /// The viewer path.
    pub path: String,
    /// Length in bytes.
    pub size: u64,
    /// Expected SHA-256.
    pub sha256: [u8; 32],
    /// Higher fetches first; ties keep manifest order.
    pub priority: i64,
    /// Where to fetch it.
    pub source: Source,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The origin's name for this manifest.
    pub id: String,
    /// Every object, in manifest order.
    pub objects: Vec<ManifestObject>,
    /// Sum of the objects' sizes.
    pub total_bytes: u64,
}

/// Parses and validates a manifest; nothing is accepted unless everything is valid.
pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|err| ManifestError::Syntax(err.to_string()))?;
    let invalid = |message: String| Err(ManifestError::Invalid(message));
    if raw.version != MANIFEST_VERSION {
        return invalid(format!(
            "version: {} is not supported (this build reads version {MANIFEST_VERSION})",
            raw.version
        ));
    }
    if raw.id.trim().is_empty() || raw.id.len() > MAX_ID_LEN || raw.id.chars().any(char::is_control)
    {
        return invalid(format!(
            "id: must be 1 to {MAX_ID_LEN} characters without control characters"
        ));
    }
    if let Some(base) = &raw.base_url {
        check_url(base).map_err(|reason| ManifestError::Invalid(format!("base_url: {reason}")))?;
    }
    let mut seen = HashSet::with_capacity(raw.objects.len());
    let mut objects = Vec::with_capacity(raw.objects.len());
    let mut total_bytes: u64 = 0;
    for (number, object) in raw.objects.into_iter().enumerate() {
        let at = |reason: String| {
            ManifestError::Invalid(format!("objects[{number}] ({:?}): {reason}", object.path))
        };
        object_path::validate(&object.path).map_err(|err| at(format!("path: {err}")))?;
        if !seen.insert(object.path.clone()) {
            return Err(at("path: duplicate; each path may appear once".to_owned()));
        }
        let sha256 = parse_sha256(&object.sha256)
            .ok_or_else(|| at("sha256: must be 64 hex digits".to_owned()))?;
        let source = match (&object.url, &raw.base_url) {
            (Some(url), _) => check_url(url).map_err(|reason| at(format!("url: {reason}")))?,
            (None, Some(base)) => {
                let url = join(base, &object.path);
                check_url(&url).map_err(|reason| at(format!("url: {reason}")))?
            }
            (None, None) => return Err(at("no url and no base_url to fetch it from".to_owned())),
        };
        total_bytes = total_bytes
            .checked_add(object.size)
            .ok_or_else(|| at("size: the manifest's total overflows".to_owned()))?;
        objects.push(ManifestObject {
            path: object.path,
            size: object.size,
            sha256,
            priority: object.priority,
            source,
        });
    }
    check_no_directory_prefix(&objects, &seen)?;
    Ok(Manifest {
        id: raw.id,
        objects,
        total_bytes,
    })
}

/// Refuses a manifest where one path is a directory of another (`t/a.ts` and `t/a.ts/c.ts`):
/// no file system can hold a file and a directory under one name (CONTRACT section 3).
fn check_no_directory_prefix(
    objects: &[ManifestObject],
    paths: &HashSet<String>,
) -> Result<(), ManifestError> {
    for (number, object) in objects.iter().enumerate() {
        let directories = object
            .path
            .match_indices('/')
            .map(|(slash, _)| &object.path[..slash]);
        for directory in directories {
            if paths.contains(directory) {
                return Err(ManifestError::Invalid(format!(
                    "objects[{number}] ({:?}): path: {directory:?} is also an object; a path cannot be both an object and a directory of others",
                    object.path
                )));
            }
        }
    }
    Ok(())
}

/// `base_url` + the percent-encoded path, with exactly one `/` between them.
fn join(base: &str, path: &str) -> String {
    let encoded = object_path::to_url_path(path);
    if base.ends_with('/') {
        format!("{base}{encoded}")
    } else {
        format!("{base}/{encoded}")
    }
}

/// Checks a source URL's scheme and shape and turns it into a [`Source`].
fn check_url(url: &str) -> Result<Source, String> {
    if let Some(rest) = url.strip_prefix("file://") {
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if !path.starts_with('/') {
            return Err(format!(
                "{url:?}: a file URL needs an absolute path (file:///...)"
            ));
        }
        let decoded = percent_decode_str(path)
            .decode_utf8()
            .map_err(|_| format!("{url:?}: not UTF-8 once decoded"))?;
        if decoded.split('/').any(|segment| segment == "..") {
            return Err(format!("{url:?}: '..' is not allowed"));
        }
        return Ok(Source::File(PathBuf::from(decoded.as_ref())));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{url:?} is not a valid URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(Source::Http(url.to_owned())),
        Some("http" | "https") => Err(format!("{url:?} has no host")),
        _ => Err(format!("{url:?}: the scheme must be http, https or file")),
    }
}

/// 64 hex digits into bytes.
fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    crate::store::unhex(text)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn manifest(objects: &str) -> String {
        format!(
            r#"{{"version": 1, "id": "2026-11-25T00:00Z", "base_url": "https://origin.example/content/", "objects": [{objects}]}}"#
        )
    }

    fn object(path: &str) -> String {
        format!(r#"{{"path": "{path}", "size": 4, "sha256": "{SHA}"}}"#)
    }

    fn refused(text: &str) -> String {
        parse(text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_manifest_resolves_sources_and_totals() {
        let text = manifest(&format!(
            r#"{}, {{"path": "t/master.m3u8", "size": 412, "sha256": "{SHA}", "priority": 100, "url": "http://other.example/m.m3u8"}}, {}"#,
            object("t/1080p/seg 1.m4s"),
            object("t/local.ts").replace(
                r#""sha256""#,
                r#""url": "file:///srv/seed/local.ts", "sha256""#
            )
        ));
        let parsed = parse(text.as_bytes()).unwrap();
        assert_eq!(parsed.id, "2026-11-25T00:00Z");
        assert_eq!(parsed.total_bytes, 420);
        assert_eq!(
            parsed.objects[0].source,
            Source::Http("https://origin.example/content/t/1080p/seg%201.m4s".to_owned())
        );
        assert_eq!(parsed.objects[1].priority, 100);
        assert_eq!(
            parsed.objects[1].source,
            Source::Http("http://other.example/m.m3u8".to_owned())
        );
        assert_eq!(
            parsed.objects[2].source,
            Source::File(PathBuf::from("/srv/seed/local.ts"))
        );
        assert_eq!(parsed.objects[0].sha256[0], 0x9f);
    }

    #[test]
    fn an_empty_manifest_is_valid_and_empties_the_box() {
        assert!(parse(manifest("").as_bytes()).unwrap().objects.is_empty());
    }

    #[test]
    fn each_kind_of_bad_object_is_named() {
        let cases = [
            (
                object("../etc/passwd"),
                "objects[0] (\"../etc/passwd\"): path",
            ),
            (object("/abs.ts"), "objects[0] (\"/abs.ts\"): path"),
            (object("a\\\\b.ts"), "path"),
            (object("a\\u0000b.ts"), "path"),
            (object(&"x".repeat(1025)), "path"),
            (
                format!("{}, {}", object("a.ts"), object("a.ts")),
                "objects[1] (\"a.ts\"): path: duplicate",
            ),
            (
                format!("{}, {}", object("t/a.ts"), object("t/a.ts/c.ts")),
                "objects[1] (\"t/a.ts/c.ts\"): path: \"t/a.ts\" is also an object",
            ),
            (
                format!("{}, {}", object("t/a.ts/c.ts"), object("t/a.ts")),
                "objects[0] (\"t/a.ts/c.ts\"): path: \"t/a.ts\" is also an object",
            ),
            (object("a.ts").replace(SHA, "abc"), "sha256"),
            (object("a.ts").replace(SHA, &"g".repeat(64)), "sha256"),
            (
                object("a.ts").replace(r#""sha256""#, r#""url": "ftp://x/a.ts", "sha256""#),
                "scheme must be http, https or file",
            ),
            (
                object("a.ts").replace(r#""sha256""#, r#""url": "file://relative/a.ts", "sha256""#),
                "absolute path",
            ),
            (object("a.ts").replace("4", "-4"), "manifest is not valid"),
            (
                object("a.ts").replace(r#""size""#, r#""priorty": 1, "size""#),
                "unknown field `priorty`",
            ),
        ];
        for (objects, expected) in cases {
            let message = refused(&manifest(&objects));
            assert!(message.contains(expected), "{objects}: {message}");
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        assert!(refused(r#"{"version": 2, "id": "x", "objects": []}"#).contains("version"));
        assert!(refused(r#"{"version": 1, "id": " ", "objects": []}"#).contains("id"));
        assert!(
            refused(r#"{"version": 1, "id": "x", "base_url": "gopher://x/", "objects": []}"#)
                .contains("base_url")
        );
        assert!(refused("not json").contains("not valid"));
        let no_source = format!(
            r#"{{"version": 1, "id": "x", "objects": [{}]}}"#,
            object("a.ts")
        );
        assert!(refused(&no_source).contains("no url and no base_url"));
    }
}
