//! The origin side: `tidecache manifest build DIR --base-url URL` hashes a tree in parallel
//! and writes the manifest that makes a box hold exactly that tree.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sha2::{Digest, Sha256};

use std::collections::HashMap;

use super::manifest::{MANIFEST_VERSION, Manifest, ObjectRef, Source};

/// Why a manifest could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file's relative path cannot be a viewer path.
    #[error("{path}: cannot be an object path: {reason}")]
    BadPath {
        /// The file.
        path: String,
        /// Which rule it breaks.
        reason: String,
    },
}

#[derive(Debug, Serialize)]
struct BuiltManifest<'a> {
    version: u64,
    id: &'a str,
    base_url: &'a str,
    objects: &'a [BuiltObject],
}

/// The header line of an NDJSON manifest or delta.
#[derive(Debug, Serialize)]
struct BuiltHeader<'a> {
    version: u64,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base: Option<&'a str>,
    /// The lines that follow, so a body cut at a line boundary is refused.
    count: usize,
}

/// One object of a built manifest.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BuiltObject {
    path: String,
    size: u64,
    sha256: String,
    /// Requests viewers made for it, from popularity reports: fetched first.
    #[serde(skip_serializing_if = "is_zero")]
    priority: i64,
}

fn is_zero(priority: &i64) -> bool {
    *priority == 0
}

/// The parts of a `GET /v1/popularity` report a build reads: both lists are required, so
/// an error answer or another document is refused rather than read as nothing.
#[derive(Debug, serde::Deserialize)]
struct PopularityReport {
    hits: Vec<Requested>,
    misses: Vec<Requested>,
}

/// One path of a popularity report.
#[derive(Debug, serde::Deserialize)]
struct Requested {
    path: String,
    requests: u64,
    /// Of a miss: requests sent to a sibling, which counts them again as hits.
    #[serde(default)]
    redirected: u64,
}

/// Requests per path, added up over popularity reports (`GET /v1/popularity` of one or
/// several boxes; hits and misses alike: a miss is a title viewers wanted that the box did
/// not hold, less the requests it sent to a sibling, which that sibling counted).
pub fn read_popularity(reports: &[&[u8]]) -> Result<HashMap<String, u64>, String> {
    let mut requests: HashMap<String, u64> = HashMap::new();
    for (number, report) in reports.iter().enumerate() {
        let report: PopularityReport = serde_json::from_slice(report)
            .map_err(|err| format!("report {}: not a popularity report: {err}", number + 1))?;
        for requested in report.hits.into_iter().chain(report.misses) {
            let total = requests.entry(requested.path).or_default();
            *total = total.saturating_add(requested.requests.saturating_sub(requested.redirected));
        }
    }
    Ok(requests)
}

/// The form `tidecache manifest build` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One JSON document (CONTRACT section 3).
    Json,
    /// A header line, then one object per line: what tens of millions of objects need.
    Ndjson,
}

/// A tree hashed into a manifest, ready to be written whole or as a delta.
#[derive(Debug)]
pub struct Built {
    id: String,
    base_url: String,
    objects: Vec<BuiltObject>,
}

impl Built {
    /// The manifest whole, as JSON or NDJSON.
    pub fn write(&self, layout: Layout, out: &mut impl std::io::Write) -> std::io::Result<()> {
        match layout {
            Layout::Json => {
                let manifest = BuiltManifest {
                    version: MANIFEST_VERSION,
                    id: &self.id,
                    base_url: &self.base_url,
                    objects: &self.objects,
                };
                serde_json::to_writer_pretty(&mut *out, &manifest)?;
                out.write_all(b"\n")
            }
            Layout::Ndjson => {
                let header = BuiltHeader {
                    version: MANIFEST_VERSION,
                    id: &self.id,
                    base_url: Some(&self.base_url),
                    base: None,
                    count: self.objects.len(),
                };
                serde_json::to_writer(&mut *out, &header)?;
                out.write_all(b"\n")?;
                for object in &self.objects {
                    serde_json::to_writer(&mut *out, object)?;
                    out.write_all(b"\n")?;
                }
                Ok(())
            }
        }
    }

    /// The NDJSON delta that turns `base` (an earlier manifest) into this one: objects
    /// new or changed (size, sha256 or source), then `{"remove": path}` for those gone.
    /// Returns how many lines of each it wrote.
    pub fn write_delta(
        &self,
        base: &Manifest,
        out: &mut impl std::io::Write,
    ) -> std::io::Result<(usize, usize)> {
        let mut old: HashMap<&str, ObjectRef<'_>> =
            base.iter().map(|object| (object.path, object)).collect();
        let changed: Vec<&BuiltObject> = self
            .objects
            .iter()
            .filter(|object| {
                !old.remove(object.path.as_str()).is_some_and(|before| {
                    before.size == object.size
                        && before.priority == object.priority
                        && crate::store::hex(&before.sha256) == object.sha256
                        && before.source() == self.source_of(&object.path)
                })
            })
            .collect();
        let mut gone: Vec<&str> = old.into_keys().collect();
        gone.sort_unstable();
        let header = BuiltHeader {
            version: MANIFEST_VERSION,
            id: &self.id,
            base_url: Some(&self.base_url),
            base: Some(&base.id),
            count: changed.len() + gone.len(),
        };
        serde_json::to_writer(&mut *out, &header)?;
        out.write_all(b"\n")?;
        for object in &changed {
            serde_json::to_writer(&mut *out, object)?;
            out.write_all(b"\n")?;
        }
        for path in &gone {
            serde_json::to_writer(&mut *out, &serde_json::json!({ "remove": path }))?;
            out.write_all(b"\n")?;
        }
        Ok((changed.len(), gone.len()))
    }

    /// Sets each object's priority to the requests `popularity` counted for its path, so
    /// boxes fetch what viewers watch most first. Returns how many counted paths are not in
    /// the tree (wanted, but there is nothing to give them).
    pub fn set_priorities(&mut self, popularity: &HashMap<String, u64>) -> usize {
        let mut found = 0;
        for object in &mut self.objects {
            if let Some(&requests) = popularity.get(&object.path) {
                object.priority = i64::try_from(requests).unwrap_or(i64::MAX);
                found += 1;
            }
        }
        popularity.len() - found
    }

    /// Names the manifest (by default the build's time, to the second).
    pub fn set_id(&mut self, id: String) {
        self.id = id;
    }

    /// The manifest's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where a box fetches `path` from under this manifest's base URL.
    fn source_of(&self, path: &str) -> Source {
        super::manifest::source_under(&self.base_url, path)
    }
}

/// Hashes every regular file under `dir` on all cores (with a progress bar on stderr when
/// `show_progress`), objects sorted by path.
pub fn build(dir: &Path, base_url: &str, show_progress: bool) -> Result<Built, BuildError> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    let total_bytes: u64 = files.iter().map(|(_, _, size)| size).sum();
    let bar = byte_progress_bar(total_bytes, "hashing", show_progress);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<String, BuildError>>>> =
        Mutex::new((0..files.len()).map(|_| None).collect());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some((full, _, _)) = files.get(index) else {
                        break;
                    };
                    let hashed = hash_file(full, &bar);
                    if let Ok(mut results) = results.lock() {
                        results[index] = Some(hashed);
                    }
                }
            });
        }
    });
    bar.finish_and_clear();
    let results = results.into_inner().unwrap_or_default();
    let mut objects = Vec::with_capacity(files.len());
    for ((_, path, size), hashed) in files.into_iter().zip(results) {
        let sha256 = hashed.unwrap_or_else(|| {
            Err(BuildError::Io {
                path: path.clone(),
                source: std::io::Error::other("not hashed"),
            })
        })?;
        objects.push(BuiltObject {
            path,
            size,
            sha256,
            priority: 0,
        });
    }
    Ok(Built {
        id: jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
        base_url: base_url.to_owned(),
        objects,
    })
}

/// A progress bar over `total` bytes labelled `verb` on stderr, or a hidden one (not a
/// terminal, scripts, tests).
pub fn byte_progress_bar(total: u64, verb: &str, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {verb} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// Collects (full path, object path, size) of every regular file below `dir`.
fn walk(
    root: &Path,
    dir: &Path,
    files: &mut Vec<(PathBuf, String, u64)>,
) -> Result<(), BuildError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| BuildError::Io { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_dir() {
            walk(root, &path, files)?;
        } else if kind.is_file() {
            let relative = path
                .strip_prefix(root)
                .ok()
                .and_then(Path::to_str)
                .ok_or_else(|| BuildError::BadPath {
                    path: path.display().to_string(),
                    reason: "not UTF-8".to_owned(),
                })?
                .to_owned();
            crate::object_path::validate(&relative).map_err(|err| BuildError::BadPath {
                path: path.display().to_string(),
                reason: err.to_string(),
            })?;
            let size = entry.metadata().map_err(io(&path))?.len();
            files.push((path, relative, size));
        }
    }
    Ok(())
}

fn hash_file(path: &Path, bar: &ProgressBar) -> Result<String, BuildError> {
    let io = |source| BuildError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(io)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        bar.inc(read as u64);
    }
    Ok(crate::store::hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_manifest_lists_every_file_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("t/1080p")).unwrap();
        std::fs::write(dir.path().join("t/master.m3u8"), b"#EXTM3U\n").unwrap();
        std::fs::write(dir.path().join("t/1080p/seg_1.m4s"), b"test").unwrap();
        let built = build(dir.path(), "https://origin.example/content/", false).unwrap();
        let mut text = Vec::new();
        built.write(Layout::Json, &mut text).unwrap();
        let manifest = crate::fill::manifest::parse(&text).unwrap();
        let mut lines = Vec::new();
        built.write(Layout::Ndjson, &mut lines).unwrap();
        let from_lines = crate::fill::manifest::read(&lines[..], None, u64::MAX).unwrap();
        assert_eq!(from_lines, manifest);
        let paths: Vec<&str> = manifest.iter().map(|o| o.path).collect();
        assert_eq!(paths, ["t/1080p/seg_1.m4s", "t/master.m3u8"]);
        assert_eq!(
            crate::store::hex(&manifest.get(0).sha256),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn a_delta_against_an_earlier_build_applies_to_the_same_manifest() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.ts", "b.ts", "c.ts"] {
            std::fs::write(dir.path().join(name), name.as_bytes()).unwrap();
        }
        let base_url = "https://origin.example/content/";
        let mut earlier = Vec::new();
        build(dir.path(), base_url, false)
            .unwrap()
            .write(Layout::Ndjson, &mut earlier)
            .unwrap();
        let earlier = crate::fill::manifest::read(&earlier[..], None, u64::MAX).unwrap();
        std::fs::remove_file(dir.path().join("b.ts")).unwrap();
        std::fs::write(dir.path().join("c.ts"), b"changed").unwrap();
        std::fs::write(dir.path().join("d.ts"), b"new").unwrap();
        let mut built = build(dir.path(), base_url, false).unwrap();
        built.set_id("tonight".to_owned());
        let mut delta = Vec::new();
        let (changed, removed) = built.write_delta(&earlier, &mut delta).unwrap();
        assert_eq!(
            (changed, removed),
            (2, 1),
            "{}",
            String::from_utf8_lossy(&delta)
        );
        let applied = crate::fill::manifest::read(&delta[..], Some(&earlier), u64::MAX).unwrap();
        let mut whole = Vec::new();
        built.write(Layout::Json, &mut whole).unwrap();
        let whole = crate::fill::manifest::parse(&whole).unwrap();
        let listed = |manifest: &Manifest| {
            let mut objects: Vec<(String, u64, [u8; 32])> = manifest
                .iter()
                .map(|object| (object.path.to_owned(), object.size, object.sha256))
                .collect();
            objects.sort();
            objects
        };
        assert_eq!(listed(&applied), listed(&whole));
        assert_eq!(applied.id, "tonight");
    }
}
