//! The fill manifest (CONTRACT section 3): a streaming parse with full validation before
//! anything changes, and the compact form the manifest in force is kept in.
//!
//! A manifest is the whole desired content of the box. It is refused whole, with a message
//! naming the first bad object, when any part of it is wrong; the manifest in force stays.
//! A box holding tens of millions of objects must take their manifest without holding its
//! text: JSON and NDJSON are read from a stream (gzip or not) object by object into one
//! arena of paths and fixed 64-byte records (hashes as 32 bytes, sources derived from
//! `base_url` when they follow it), and deltas (NDJSON whose header names a `base`) are
//! applied to the manifest in force. The manifest in force is saved in a binary form
//! ([`Manifest::save`]) that loads without parsing or validating again.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

use hashbrown::HashTable;
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::object_path;

/// The only manifest format version this build reads.
pub const MANIFEST_VERSION: u64 = 1;

/// Longest manifest id accepted.
const MAX_ID_LEN: usize = 256;
/// Longest source URL (`base_url` or an object's `url`): far beyond any real one, and
/// well within what the saved form reads back.
const MAX_URL_LEN: usize = 8192;
/// Longest NDJSON line: an object with a 1024-byte path and a long URL fits many times over.
const MAX_LINE: usize = 64 * 1024;
/// Marks a record removed by a delta until the manifest is finished.
const REMOVED: u32 = u32::MAX - 1;
/// A record whose source follows `base_url`.
const NO_URL: u32 = u32::MAX;
/// What starts a saved manifest file (format 1 of the binary form).
const SAVED_MAGIC: &[u8; 8] = b"TCMANIF1";

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON (or NDJSON) of the manifest's shape.
    #[error("manifest is not valid: {0}")]
    Syntax(String),
    /// Valid JSON, but a field breaks a rule; the message names where.
    #[error("{0}")]
    Invalid(String),
    /// A delta whose `base` is not the manifest in force (CONTRACT section 3: 409).
    #[error("delta against {base:?}, but the manifest in force is {}", in_force.as_deref().map_or("none".to_owned(), |id| format!("{id:?}")))]
    WrongBase {
        /// The base the delta names.
        base: String,
        /// The id in force, if any.
        in_force: Option<String>,
    },
    /// Bigger, once decompressed, than allowed (`fill.max_manifest_size`).
    #[error("manifest over {0} bytes once decompressed (fill.max_manifest_size)")]
    TooLarge(u64),
    /// The stream could not be read (a corrupt gzip member, an I/O error).
    #[error("cannot read the manifest: {0}")]
    Read(String),
}

/// One object line (JSON `objects` element or NDJSON line) as sent. In a delta a line may
/// instead be `{"remove": "<path>"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    path: Option<String>,
    size: Option<u64>,
    sha256: Option<String>,
    priority: Option<i64>,
    url: Option<String>,
    copies: Option<u32>,
    remove: Option<String>,
}

/// The NDJSON header line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    version: u64,
    id: String,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    base: Option<String>,
    /// How many lines follow the header (objects and removals), when the sender says: a
    /// body cut at a line boundary would otherwise read as a smaller, valid manifest.
    #[serde(default)]
    count: Option<u64>,
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

/// One object the box should hold, owned: what a transfer carries.
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

/// One object of a [`Manifest`], borrowed from its compact form.
#[derive(Debug, Clone, Copy)]
pub struct ObjectRef<'a> {
    /// Its position in manifest order.
    pub index: usize,
    /// The viewer path.
    pub path: &'a str,
    /// Length in bytes.
    pub size: u64,
    /// Expected SHA-256.
    pub sha256: [u8; 32],
    /// Higher fetches first.
    pub priority: i64,
    /// `copies` as sent (0: the site's default).
    pub copies: u8,
    url: Option<&'a str>,
    base_url: Option<&'a str>,
}

impl ObjectRef<'_> {
    /// Where to fetch it: its `url`, else `base_url` + its percent-encoded path. Both were
    /// checked when the manifest was accepted.
    pub fn source(&self) -> Source {
        let url = match (self.url, self.base_url) {
            (Some(url), _) => url.to_owned(),
            (None, Some(base)) => join(base, self.path),
            (None, None) => String::new(),
        };
        check_url(&url).unwrap_or(Source::Http(url))
    }

    /// Whether its source is a `file://` URL, found without building the URL.
    pub fn is_file_source(&self) -> bool {
        self.url
            .or(self.base_url)
            .is_some_and(|url| url.starts_with("file://"))
    }

    /// The owned object a transfer takes.
    pub fn to_owned(&self) -> ManifestObject {
        ManifestObject {
            path: self.path.to_owned(),
            size: self.size,
            sha256: self.sha256,
            priority: self.priority,
            source: self.source(),
        }
    }
}

/// One object's fixed-size record: 64 bytes, the path in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    path_start: u64,
    size: u64,
    priority: i64,
    sha256: [u8; 32],
    path_len: u16,
    copies: u8,
    /// Index into `urls`, [`NO_URL`] or [`REMOVED`].
    url: u32,
}

/// What [`Manifest::saved_summary`] finds in a saved manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedSummary {
    /// The manifest's id.
    pub id: String,
    /// How many objects it lists.
    pub objects: usize,
    /// Their total size.
    pub total_bytes: u64,
    /// The CRC the save ends with.
    pub crc: u32,
}

/// A validated manifest, compact: every path in one arena, a 64-byte record per object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The origin's name for this manifest.
    pub id: String,
    /// Where objects without a `url` are fetched from (+ their path).
    pub base_url: Option<String>,
    /// Sum of the objects' sizes.
    pub total_bytes: u64,
    paths: String,
    records: Vec<Record>,
    urls: Vec<Box<str>>,
}

impl Manifest {
    /// How many objects it lists.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it lists none (a manifest that empties the box).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The object at `index` in manifest order.
    ///
    /// # Panics
    /// When `index` is out of range, like a slice.
    pub fn get(&self, index: usize) -> ObjectRef<'_> {
        let record = &self.records[index];
        let start = record.path_start as usize;
        ObjectRef {
            index,
            path: &self.paths[start..start + record.path_len as usize],
            size: record.size,
            sha256: record.sha256,
            priority: record.priority,
            copies: record.copies,
            url: (record.url != NO_URL).then(|| &*self.urls[record.url as usize]),
            base_url: self.base_url.as_deref(),
        }
    }

    /// Every object in manifest order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = ObjectRef<'_>> {
        (0..self.records.len()).map(|index| self.get(index))
    }

    /// A manifest of these owned objects (each keeps its own source); for tests and tools.
    pub fn from_objects(id: &str, objects: Vec<ManifestObject>) -> Result<Manifest, ManifestError> {
        let mut builder = Builder::new(Label::Objects);
        for object in objects {
            let url = object.source.to_string();
            builder.add(
                Checked {
                    path: object.path,
                    size: object.size,
                    sha256: object.sha256,
                    priority: object.priority,
                    copies: 0,
                    url: Some(url),
                },
                false,
            )?;
        }
        builder.finish(id.to_owned(), None)
    }

    /// Writes the binary saved form: magic, id, base URL, counts, the path arena, the
    /// records, the URLs, and a CRC-32 of everything before it, which it returns (what
    /// [`Manifest::load_saved_with_crc`] must find to be reading this very save).
    pub fn save(&self, out: &mut impl Write) -> std::io::Result<u32> {
        let mut out = CrcWriter {
            inner: out,
            crc: crc32fast::Hasher::new(),
        };
        out.write_all(SAVED_MAGIC)?;
        write_bytes(&mut out, self.id.as_bytes())?;
        write_bytes(&mut out, self.base_url.as_deref().unwrap_or("").as_bytes())?;
        out.write_all(&[u8::from(self.base_url.is_some())])?;
        out.write_all(&self.total_bytes.to_le_bytes())?;
        write_bytes(&mut out, self.paths.as_bytes())?;
        out.write_all(&(self.records.len() as u64).to_le_bytes())?;
        let mut buffer = Vec::with_capacity(64 * 1024);
        for record in &self.records {
            buffer.extend_from_slice(&record.path_start.to_le_bytes());
            buffer.extend_from_slice(&record.size.to_le_bytes());
            buffer.extend_from_slice(&record.priority.to_le_bytes());
            buffer.extend_from_slice(&record.sha256);
            buffer.extend_from_slice(&record.path_len.to_le_bytes());
            buffer.push(record.copies);
            buffer.extend_from_slice(&record.url.to_le_bytes());
            if buffer.len() >= 60 * 1024 {
                out.write_all(&buffer)?;
                buffer.clear();
            }
        }
        out.write_all(&buffer)?;
        out.write_all(&(self.urls.len() as u64).to_le_bytes())?;
        for url in &self.urls {
            write_bytes(&mut out, url.as_bytes())?;
        }
        let crc = out.crc.clone().finalize();
        out.inner.write_all(&crc.to_le_bytes())?;
        Ok(crc)
    }

    /// What a saved manifest is (id, counts, the CRC its save ended with), checked whole
    /// against that CRC but without building it: a start needs only this, and reads tens of
    /// millions of records in a fraction of the time and memory a load takes.
    pub fn saved_summary(input: &mut impl Read) -> Result<SavedSummary, ManifestError> {
        let corrupt = saved_corrupt;
        let mut input = CrcReader {
            inner: input,
            crc: crc32fast::Hasher::new(),
        };
        let SavedHead {
            id, total_bytes, ..
        } = read_saved_head(&mut input)?;
        let paths_len = u64::from_le_bytes(read_array(&mut input)?);
        skip(&mut input, paths_len)?;
        let objects = u64::from_le_bytes(read_array(&mut input)?);
        skip(
            &mut input,
            objects
                .checked_mul(63)
                .ok_or_else(|| corrupt("a count is out of range"))?,
        )?;
        let url_count = u64::from_le_bytes(read_array(&mut input)?);
        for _ in 0..url_count {
            let len = u64::from_le_bytes(read_array(&mut input)?);
            skip(&mut input, len)?;
        }
        let computed = check_saved_crc(&mut input)?;
        Ok(SavedSummary {
            id,
            objects: usize::try_from(objects).map_err(|_| corrupt("a count is out of range"))?,
            total_bytes,
            crc: computed,
        })
    }

    /// Reads what [`Manifest::save`] wrote, checking its CRC and that every record points
    /// inside the arena (anything else is an error, never a guess); returns it with the CRC
    /// the file ends with.
    pub fn load_saved_with_crc(input: &mut impl Read) -> Result<(Manifest, u32), ManifestError> {
        let corrupt = saved_corrupt;
        let mut input = CrcReader {
            inner: input,
            crc: crc32fast::Hasher::new(),
        };
        let SavedHead {
            id,
            base_url,
            total_bytes,
        } = read_saved_head(&mut input)?;
        let paths = String::from_utf8(read_bytes(&mut input, u64::MAX)?)
            .map_err(|_| corrupt("paths are not UTF-8"))?;
        let count = u64::from_le_bytes(read_array(&mut input)?);
        // Grown as records are read: a damaged count must not size an allocation.
        let mut records = Vec::with_capacity(usize::try_from(count.min(1 << 16)).unwrap_or(0));
        // Read (and checksummed) many records at a time, not 63 bytes per call.
        const RECORDS_AT_ONCE: u64 = 16 * 1024;
        let mut block = vec![0u8; 63 * RECORDS_AT_ONCE as usize];
        let mut left = count;
        while left > 0 {
            let now = left.min(RECORDS_AT_ONCE) as usize;
            left -= now as u64;
            input
                .read_exact(&mut block[..63 * now])
                .map_err(read_error)?;
            for raw in block[..63 * now].chunks_exact(63) {
                let record = Record {
                    path_start: u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default()),
                    size: u64::from_le_bytes(raw[8..16].try_into().unwrap_or_default()),
                    priority: i64::from_le_bytes(raw[16..24].try_into().unwrap_or_default()),
                    sha256: raw[24..56].try_into().unwrap_or_default(),
                    path_len: u16::from_le_bytes(raw[56..58].try_into().unwrap_or_default()),
                    copies: raw[58],
                    url: u32::from_le_bytes(raw[59..63].try_into().unwrap_or_default()),
                };
                let end = record.path_start.checked_add(u64::from(record.path_len));
                let fits = end.is_some_and(|end| end <= paths.len() as u64)
                    && paths.is_char_boundary(record.path_start as usize)
                    && end.is_some_and(|end| paths.is_char_boundary(end as usize));
                if !fits {
                    return Err(corrupt("a record points outside the paths"));
                }
                records.push(record);
            }
        }
        let url_count = u64::from_le_bytes(read_array(&mut input)?);
        let mut urls = Vec::new();
        for _ in 0..url_count {
            let url = String::from_utf8(read_bytes(&mut input, 1 << 20)?)
                .map_err(|_| corrupt("a URL is not UTF-8"))?;
            urls.push(url.into_boxed_str());
        }
        if records
            .iter()
            .any(|record| record.url != NO_URL && record.url as usize >= urls.len())
        {
            return Err(corrupt("a record names a URL that is not there"));
        }
        let computed = check_saved_crc(&mut input)?;
        let manifest = Manifest {
            id,
            base_url,
            total_bytes,
            paths,
            records,
            urls,
        };
        Ok((manifest, computed))
    }
}

/// Parses and validates a JSON manifest held in memory (tests, tools, fuzzing).
pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    read(bytes, None, u64::MAX)
}

/// Reads a manifest from a stream, gzip-compressed or not (by its magic bytes), JSON or
/// NDJSON (by its first line), applying a delta to `in_force`. At most `limit` bytes are
/// read once decompressed.
pub fn read(
    input: impl Read,
    in_force: Option<&Manifest>,
    limit: u64,
) -> Result<Manifest, ManifestError> {
    let mut buffered = std::io::BufReader::with_capacity(MAX_LINE, input);
    let head = buffered.fill_buf().map_err(read_error)?;
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let decoded: Box<dyn Read + '_> = if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut text = std::io::BufReader::with_capacity(
        MAX_LINE,
        Limited {
            inner: decoded,
            left: limit,
            limit,
        },
    );
    // The first line that is not blank (at most MAX_LINE bytes of it) tells NDJSON from
    // JSON; for JSON it is put back in front of the rest.
    let mut first = Vec::with_capacity(1024);
    let mut first_number = 0;
    loop {
        first.clear();
        first_number += 1;
        let read = (&mut text)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut first)
            .map_err(|err| over_limit(err, limit))?;
        if read == 0 || !first.iter().all(u8::is_ascii_whitespace) {
            break;
        }
    }
    let parsed = if is_ndjson(&first) {
        read_ndjson(first, first_number, &mut text, in_force)
    } else {
        read_json(&mut std::io::Cursor::new(first).chain(text))
    };
    parsed.map_err(|err| match err {
        ManifestError::Read(message) | ManifestError::Syntax(message)
            if message.contains(OVER_LIMIT) =>
        {
            ManifestError::TooLarge(limit)
        }
        other => other,
    })
}

/// Whether `first_line` is an NDJSON header: a whole JSON object of the header's shape (a
/// JSON manifest's first line is `{` alone, or the whole manifest with its `objects`).
fn is_ndjson(first_line: &[u8]) -> bool {
    // A header line ends with its newline: without one, `{"version": 1, "id": "x"}` is a
    // JSON manifest missing its objects, not an empty NDJSON one.
    first_line.ends_with(b"\n") && serde_json::from_slice::<RawHeader>(first_line).is_ok()
}

fn over_limit(err: std::io::Error, limit: u64) -> ManifestError {
    if err.to_string().contains(OVER_LIMIT) {
        ManifestError::TooLarge(limit)
    } else {
        read_error(err)
    }
}

/// What the limiter says when a stream goes over its limit.
const OVER_LIMIT: &str = "over the manifest size limit";

/// Stops a stream after `limit` bytes (decompression bombs, endless bodies).
struct Limited<'a> {
    inner: Box<dyn Read + 'a>,
    left: u64,
    limit: u64,
}

impl Read for Limited<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        if read as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "{OVER_LIMIT} ({} bytes)",
                self.limit
            )));
        }
        self.left -= read as u64;
        Ok(read)
    }
}

fn read_error(err: std::io::Error) -> ManifestError {
    ManifestError::Read(err.to_string())
}

/// How errors name an object.
#[derive(Debug, Clone, Copy)]
enum Label {
    /// `objects[N]` of a JSON manifest.
    Objects,
    /// `line N` of an NDJSON manifest.
    Lines,
}

/// An object line whose fields are checked on their own (path rules, hash, URL scheme).
struct Checked {
    path: String,
    size: u64,
    sha256: [u8; 32],
    priority: i64,
    copies: u8,
    url: Option<String>,
}

/// Builds the compact form object by object: duplicates are found as they arrive; sources
/// and directory prefixes are checked at [`Builder::finish`], once `base_url` is known.
struct Builder {
    paths: String,
    records: Vec<Record>,
    urls: Vec<Box<str>>,
    /// Record indexes by path, for duplicates, delta lookups and the directory check.
    table: HashTable<u32>,
    hasher: RandomState,
    removed: usize,
    /// URLs no record points to any more (replaced by a delta): dropped at finish.
    stale_urls: usize,
    label: Label,
    /// The position of the next line, for messages.
    position: usize,
    /// The first error met inside serde's callbacks, which can only carry text.
    error: Option<ManifestError>,
}

impl Builder {
    fn new(label: Label) -> Builder {
        Builder {
            paths: String::new(),
            records: Vec::new(),
            urls: Vec::new(),
            table: HashTable::new(),
            hasher: RandomState::new(),
            removed: 0,
            stale_urls: 0,
            label,
            position: 0,
            error: None,
        }
    }

    /// A builder holding `base`'s objects, for a delta.
    fn from_manifest(base: &Manifest, label: Label) -> Builder {
        let mut builder = Builder::new(label);
        builder.paths = base.paths.clone();
        builder.records = base.records.clone();
        builder.urls = base.urls.clone();
        builder.table.reserve(base.records.len(), |_| 0);
        for index in 0..builder.records.len() {
            let hash = builder.hash(builder.path_of(index));
            builder
                .table
                .insert_unique(hash, index as u32, |_| unreachable_hash());
        }
        // Rehashing never happens: the table was reserved for every record above.
        builder
    }

    fn hash(&self, path: &str) -> u64 {
        self.hasher.hash_one(path)
    }

    fn path_of(&self, index: usize) -> &str {
        let record = &self.records[index];
        let start = record.path_start as usize;
        &self.paths[start..start + record.path_len as usize]
    }

    fn find(&self, path: &str) -> Option<usize> {
        let hash = self.hash(path);
        self.table
            .find(hash, |&index| self.path_of(index as usize) == path)
            .map(|&index| index as usize)
    }

    /// Names the current line in an error.
    fn at(&self, path: &str, reason: impl std::fmt::Display) -> ManifestError {
        ManifestError::Invalid(match self.label {
            Label::Objects => format!("objects[{}] ({path:?}): {reason}", self.position),
            Label::Lines => format!("line {} ({path:?}): {reason}", self.position),
        })
    }

    /// Takes one line: an object to add (or, in a delta, to replace) or a removal.
    fn take(&mut self, line: RawLine, delta: bool) -> Result<(), ManifestError> {
        if let Some(path) = line.remove {
            let extra = line.path.is_some()
                || line.size.is_some()
                || line.sha256.is_some()
                || line.priority.is_some()
                || line.url.is_some()
                || line.copies.is_some();
            if !delta {
                return Err(self.at(
                    &path,
                    "remove: only a delta (a header with \"base\") removes objects",
                ));
            }
            if extra {
                return Err(self.at(&path, "remove: a removal has no other field"));
            }
            return self.remove(&path);
        }
        let path = line.path.unwrap_or_default();
        let Some(size) = line.size else {
            return Err(self.at(&path, "size: missing"));
        };
        let Some(sha256) = line.sha256 else {
            return Err(self.at(&path, "sha256: missing"));
        };
        object_path::validate(&path).map_err(|err| self.at(&path, format!("path: {err}")))?;
        let sha256 =
            parse_sha256(&sha256).ok_or_else(|| self.at(&path, "sha256: must be 64 hex digits"))?;
        let copies = match line.copies {
            None => 0,
            Some(copies @ 1..=255) => copies as u8,
            Some(_) => return Err(self.at(&path, "copies: must be between 1 and 255")),
        };
        if let Some(url) = &line.url {
            check_url(url).map_err(|reason| self.at(&path, format!("url: {reason}")))?;
        }
        self.add(
            Checked {
                path,
                size,
                sha256,
                priority: line.priority.unwrap_or(0),
                copies,
                url: line.url,
            },
            delta,
        )
    }

    /// Adds an object; in a delta an existing path is replaced in place (keeping its
    /// position), otherwise a second one is refused.
    fn add(&mut self, object: Checked, replace: bool) -> Result<(), ManifestError> {
        if object.path.len() > usize::from(u16::MAX) {
            return Err(self.at(&object.path, "path: too long"));
        }
        let url = match object.url {
            Some(url) => {
                let index = u32::try_from(self.urls.len())
                    .ok()
                    .filter(|&index| index < REMOVED)
                    .ok_or_else(|| {
                        self.at(&object.path, "url: too many objects with their own url")
                    })?;
                self.urls.push(url.into_boxed_str());
                index
            }
            None => NO_URL,
        };
        if let Some(existing) = self.find(&object.path) {
            if !replace {
                return Err(self.at(&object.path, "path: duplicate; each path may appear once"));
            }
            let record = &mut self.records[existing];
            if record.url != NO_URL {
                self.stale_urls += 1;
            }
            record.size = object.size;
            record.sha256 = object.sha256;
            record.priority = object.priority;
            record.copies = object.copies;
            record.url = url;
            return Ok(());
        }
        let index = u32::try_from(self.records.len())
            .ok()
            .filter(|&index| index < u32::MAX)
            .ok_or_else(|| self.at(&object.path, "too many objects"))?;
        let record = Record {
            path_start: self.paths.len() as u64,
            size: object.size,
            priority: object.priority,
            sha256: object.sha256,
            path_len: object.path.len() as u16,
            copies: object.copies,
            url,
        };
        self.paths.push_str(&object.path);
        self.records.push(record);
        let hash = self.hash(&object.path);
        let (paths, records, hasher) = (&self.paths, &self.records, &self.hasher);
        self.table.insert_unique(hash, index, |&index| {
            let record = &records[index as usize];
            let start = record.path_start as usize;
            hasher.hash_one(&paths[start..start + record.path_len as usize])
        });
        Ok(())
    }

    /// A delta's `{"remove": path}`: the path must be in the manifest it applies to.
    fn remove(&mut self, path: &str) -> Result<(), ManifestError> {
        let Some(index) = self.find(path) else {
            return Err(self.at(path, "remove: not in the manifest in force"));
        };
        let hash = self.hash(path);
        if let Ok(entry) = self
            .table
            .find_entry(hash, |&candidate| candidate as usize == index)
        {
            entry.remove();
        }
        self.records[index].url = REMOVED;
        self.removed += 1;
        Ok(())
    }

    /// Checks what needs the whole manifest (every object has a source; no path is a
    /// directory of another) and returns the compact form, removed objects dropped.
    fn finish(mut self, id: String, base_url: Option<String>) -> Result<Manifest, ManifestError> {
        if id.trim().is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
            return Err(ManifestError::Invalid(format!(
                "id: must be 1 to {MAX_ID_LEN} characters without control characters"
            )));
        }
        if let Some(base) = &base_url {
            check_url(base)
                .map_err(|reason| ManifestError::Invalid(format!("base_url: {reason}")))?;
        }
        if self.removed > 0 || self.stale_urls > 0 {
            self.compact();
        }
        let mut total_bytes: u64 = 0;
        for index in 0..self.records.len() {
            let record = self.records[index];
            let path = self.path_of(index);
            let name = |reason: String| {
                ManifestError::Invalid(format!("object {index} ({path:?}): {reason}"))
            };
            if record.url == NO_URL && base_url.is_none() {
                return Err(name("no url and no base_url to fetch it from".to_owned()));
            }
            total_bytes = total_bytes
                .checked_add(record.size)
                .ok_or_else(|| name("size: the manifest's total overflows".to_owned()))?;
            for (slash, _) in path.match_indices('/') {
                let directory = &path[..slash];
                if self.find(directory).is_some() {
                    return Err(name(format!(
                        "path: {directory:?} is also an object; a path cannot be both an object and a directory of others"
                    )));
                }
            }
        }
        Ok(Manifest {
            id,
            base_url,
            total_bytes,
            paths: self.paths,
            records: self.records,
            urls: self.urls,
        })
    }

    /// Drops removed records, their paths and URLs (a new arena), and rebuilds the table.
    fn compact(&mut self) {
        let mut paths = String::with_capacity(self.paths.len());
        let mut records = Vec::with_capacity(self.records.len() - self.removed);
        let mut urls = Vec::new();
        for index in 0..self.records.len() {
            let mut record = self.records[index];
            if record.url == REMOVED {
                continue;
            }
            let start = paths.len() as u64;
            paths.push_str(self.path_of(index));
            record.path_start = start;
            if record.url != NO_URL {
                urls.push(std::mem::take(&mut self.urls[record.url as usize]));
                record.url = (urls.len() - 1) as u32;
            }
            records.push(record);
        }
        self.paths = paths;
        self.records = records;
        self.urls = urls;
        self.removed = 0;
        self.stale_urls = 0;
        self.table = HashTable::with_capacity(self.records.len());
        for index in 0..self.records.len() {
            let hash = self.hash(self.path_of(index));
            self.table
                .insert_unique(hash, index as u32, |_| unreachable_hash());
        }
    }
}

/// The rehash callback of a table reserved for every record it will hold: never called.
fn unreachable_hash() -> u64 {
    0
}

/// NDJSON: a header line, then one object (or removal) per line; blank lines are skipped.
fn read_ndjson(
    header_line: Vec<u8>,
    header_number: usize,
    input: &mut impl BufRead,
    in_force: Option<&Manifest>,
) -> Result<Manifest, ManifestError> {
    let mut number = header_number;
    let header: RawHeader = serde_json::from_slice(&header_line)
        .map_err(|err| ManifestError::Syntax(format!("line {header_number} (header): {err}")))?;
    let mut line = header_line;
    check_version(header.version)?;
    let delta = header.base.is_some();
    if header.base.as_deref() == Some(header.id.as_str()) {
        return Err(ManifestError::Invalid(format!(
            "id: a delta needs an id of its own, not its base's ({:?})",
            header.id
        )));
    }
    let mut builder = match &header.base {
        Some(base) => match in_force {
            Some(in_force) if &in_force.id == base => {
                Builder::from_manifest(in_force, Label::Lines)
            }
            _ => {
                return Err(ManifestError::WrongBase {
                    base: base.clone(),
                    in_force: in_force.map(|manifest| manifest.id.clone()),
                });
            }
        },
        None => Builder::new(Label::Lines),
    };
    // A delta keeps the base's base_url unless it names another.
    let base_url = header.base_url.or_else(|| {
        delta
            .then(|| in_force.and_then(|manifest| manifest.base_url.clone()))
            .flatten()
    });
    let mut lines = 0u64;
    while read_line(input, &mut line)? {
        number += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        builder.position = number;
        let raw: RawLine = serde_json::from_slice(&line)
            .map_err(|err| ManifestError::Syntax(format!("line {number}: {err}")))?;
        builder.take(raw, delta)?;
        lines += 1;
    }
    if let Some(count) = header.count.filter(|&count| count != lines) {
        return Err(ManifestError::Invalid(format!(
            "count: the header announces {count} lines, {lines} arrived (a cut body?)"
        )));
    }
    builder.finish(header.id, base_url)
}

/// Reads one line (without its `\n`) into `line`; false at the end. Lines over
/// [`MAX_LINE`] are refused.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> Result<bool, ManifestError> {
    line.clear();
    let read = input
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', line)
        .map_err(read_error)?;
    if read == 0 {
        return Ok(false);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_LINE {
        return Err(ManifestError::Syntax(format!(
            "a line is longer than {MAX_LINE} bytes"
        )));
    }
    Ok(true)
}

fn check_version(version: u64) -> Result<(), ManifestError> {
    if version == MANIFEST_VERSION {
        Ok(())
    } else {
        Err(ManifestError::Invalid(format!(
            "version: {version} is not supported (this build reads version {MANIFEST_VERSION})"
        )))
    }
}

/// A JSON manifest, read as a stream: objects go into the builder as they are parsed.
fn read_json(input: &mut impl BufRead) -> Result<Manifest, ManifestError> {
    let mut builder = Builder::new(Label::Objects);
    let mut deserializer = serde_json::Deserializer::from_reader(input);
    let parsed = TopLevel {
        builder: &mut builder,
    }
    .deserialize(&mut deserializer)
    .and_then(|header| deserializer.end().map(|()| header));
    if let Some(error) = builder.error.take() {
        return Err(error);
    }
    let header = parsed.map_err(|err| ManifestError::Syntax(err.to_string()))?;
    let (Some(version), Some(id), true) = (header.version, header.id, header.objects) else {
        return Err(ManifestError::Syntax(
            "missing field: a manifest has `version`, `id` and `objects`".to_owned(),
        ));
    };
    check_version(version)?;
    builder.finish(id, header.base_url)
}

/// The top-level fields of a JSON manifest, `objects` streamed into a builder.
#[derive(Default)]
struct JsonHeader {
    version: Option<u64>,
    id: Option<String>,
    base_url: Option<String>,
    objects: bool,
}

struct TopLevel<'b> {
    builder: &'b mut Builder,
}

const TOP_LEVEL_FIELDS: &[&str] = &["version", "id", "base_url", "objects"];

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = JsonHeader;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<JsonHeader, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = JsonHeader;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a manifest object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonHeader, A::Error> {
        let mut header = JsonHeader::default();
        let mut seen = [false; TOP_LEVEL_FIELDS.len()];
        while let Some(key) = map.next_key::<String>()? {
            if let Some(field) = TOP_LEVEL_FIELDS.iter().position(|field| *field == key) {
                if std::mem::replace(&mut seen[field], true) {
                    return Err(de::Error::duplicate_field(TOP_LEVEL_FIELDS[field]));
                }
            }
            match key.as_str() {
                "version" => header.version = Some(map.next_value()?),
                "id" => header.id = Some(map.next_value()?),
                "base_url" => header.base_url = map.next_value()?,
                "objects" => {
                    map.next_value_seed(Objects {
                        builder: &mut *self.builder,
                    })?;
                    header.objects = true;
                }
                "base" => {
                    return Err(de::Error::custom(
                        "a delta (\"base\") is sent as NDJSON (CONTRACT section 3)",
                    ));
                }
                other => return Err(de::Error::unknown_field(other, TOP_LEVEL_FIELDS)),
            }
        }
        Ok(header)
    }
}

struct Objects<'b> {
    builder: &'b mut Builder,
}

impl<'de> DeserializeSeed<'de> for Objects<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Objects<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a list of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(line) = seq.next_element::<RawLine>()? {
            if let Err(err) = self.builder.take(line, false) {
                let message = err.to_string();
                self.builder.error = Some(err);
                return Err(de::Error::custom(message));
            }
            self.builder.position += 1;
        }
        Ok(())
    }
}

/// Where an object at `path` without a `url` of its own is fetched from under `base_url`.
pub fn source_under(base_url: &str, path: &str) -> Source {
    let url = join(base_url, path);
    check_url(&url).unwrap_or(Source::Http(url))
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
    if url.len() > MAX_URL_LEN {
        return Err(format!("longer than {MAX_URL_LEN} bytes"));
    }
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

/// Counts a CRC over what passes through.
struct CrcWriter<'w, W: Write> {
    inner: &'w mut W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.crc.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<'r, R: Read> {
    inner: &'r mut R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.crc.update(&buf[..read]);
        Ok(read)
    }
}

fn write_bytes(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(&(bytes.len() as u64).to_le_bytes())?;
    out.write_all(bytes)
}

/// A saved manifest found damaged or not ours.
fn saved_corrupt(what: &str) -> ManifestError {
    ManifestError::Read(format!("saved manifest: {what}"))
}

/// The start of a saved manifest, before its paths.
struct SavedHead {
    id: String,
    base_url: Option<String>,
    total_bytes: u64,
}

/// Reads the magic, id, base URL and total size of a saved manifest.
fn read_saved_head<R: Read>(input: &mut CrcReader<'_, R>) -> Result<SavedHead, ManifestError> {
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(read_error)?;
    if &magic != SAVED_MAGIC {
        return Err(saved_corrupt("not a tidecache manifest file"));
    }
    let id = String::from_utf8(read_bytes(input, 1 << 16)?)
        .map_err(|_| saved_corrupt("id is not UTF-8"))?;
    let base_url = String::from_utf8(read_bytes(input, 1 << 20)?)
        .map_err(|_| saved_corrupt("base URL is not UTF-8"))?;
    let has_base = read_array::<1>(input)?[0] == 1;
    let total_bytes = u64::from_le_bytes(read_array(input)?);
    Ok(SavedHead {
        id,
        base_url: has_base.then_some(base_url),
        total_bytes,
    })
}

/// Compares the CRC of everything read with the one the file ends with; returns it.
fn check_saved_crc<R: Read>(input: &mut CrcReader<'_, R>) -> Result<u32, ManifestError> {
    let computed = input.crc.clone().finalize();
    let mut stored = [0u8; 4];
    input.inner.read_exact(&mut stored).map_err(read_error)?;
    if u32::from_le_bytes(stored) != computed {
        return Err(saved_corrupt("checksum mismatch (torn or damaged file)"));
    }
    Ok(computed)
}

/// Reads and drops `len` bytes (through the CRC), or says the file is truncated.
fn skip(input: &mut impl Read, len: u64) -> Result<(), ManifestError> {
    let skipped = std::io::copy(&mut input.take(len), &mut std::io::sink()).map_err(read_error)?;
    if skipped != len {
        return Err(ManifestError::Read("saved manifest: truncated".to_owned()));
    }
    Ok(())
}

fn read_array<const N: usize>(input: &mut impl Read) -> Result<[u8; N], ManifestError> {
    let mut bytes = [0u8; N];
    input.read_exact(&mut bytes).map_err(read_error)?;
    Ok(bytes)
}

fn read_bytes(input: &mut impl Read, max: u64) -> Result<Vec<u8>, ManifestError> {
    let len = u64::from_le_bytes(read_array(input)?);
    if len > max {
        return Err(ManifestError::Read(
            "saved manifest: a length is out of range".to_owned(),
        ));
    }
    let mut bytes = Vec::new();
    input
        .take(len)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 != len {
        return Err(ManifestError::Read("saved manifest: truncated".to_owned()));
    }
    Ok(bytes)
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

    fn ndjson(header: &str, lines: &[String]) -> String {
        let mut text = format!("{header}\n");
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn read_text(text: &str, in_force: Option<&Manifest>) -> Result<Manifest, ManifestError> {
        read(text.as_bytes(), in_force, u64::MAX)
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
            parsed.get(0).source(),
            Source::Http("https://origin.example/content/t/1080p/seg%201.m4s".to_owned())
        );
        assert_eq!(parsed.get(1).priority, 100);
        assert_eq!(
            parsed.get(1).source(),
            Source::Http("http://other.example/m.m3u8".to_owned())
        );
        assert_eq!(
            parsed.get(2).source(),
            Source::File(PathBuf::from("/srv/seed/local.ts"))
        );
        assert_eq!(parsed.get(0).sha256[0], 0x9f);
        assert_eq!(std::mem::size_of::<Record>(), 64);
    }

    #[test]
    fn an_empty_manifest_is_valid_and_empties_the_box() {
        assert!(parse(manifest("").as_bytes()).unwrap().is_empty());
    }

    #[test]
    fn fields_may_come_in_any_order() {
        let text = format!(
            r#"{{"objects": [{}], "base_url": "http://o/", "id": "x", "version": 1}}"#,
            object("a.ts")
        );
        let parsed = parse(text.as_bytes()).unwrap();
        assert_eq!(
            parsed.get(0).source(),
            Source::Http("http://o/a.ts".to_owned())
        );
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
                "(\"t/a.ts/c.ts\"): path: \"t/a.ts\" is also an object",
            ),
            (
                format!("{}, {}", object("t/a.ts/c.ts"), object("t/a.ts")),
                "(\"t/a.ts/c.ts\"): path: \"t/a.ts\" is also an object",
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
            (
                object("a.ts").replace(r#""size""#, r#""copies": 0, "size""#),
                "copies",
            ),
            (r#"{"remove": "a.ts"}"#.to_owned(), "only a delta"),
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
        assert!(refused(r#"{"version": 1, "id": "x"}"#).contains("missing field"));
        assert!(
            refused(r#"{"version": 1, "id": "x", "objects": []} trailing"#).contains("not valid")
        );
        let no_source = format!(
            r#"{{"version": 1, "id": "x", "objects": [{}]}}"#,
            object("a.ts")
        );
        assert!(refused(&no_source).contains("no url and no base_url"));
    }

    #[test]
    fn ndjson_and_gzip_read_the_same_manifest_as_json() {
        let lines: Vec<String> = ["a.ts", "t/b.ts", "t/c d.ts"]
            .iter()
            .map(|path| object(path))
            .collect();
        let json = manifest(&lines.join(", "));
        let text = ndjson(
            r#"{"version": 1, "id": "2026-11-25T00:00Z", "base_url": "https://origin.example/content/"}"#,
            &lines,
        );
        let from_json = parse(json.as_bytes()).unwrap();
        let from_ndjson = read_text(&text, None).unwrap();
        assert_eq!(from_json, from_ndjson);
        let gzipped = gzip(text.as_bytes());
        assert_eq!(read(&gzipped[..], None, u64::MAX).unwrap(), from_json);
        let pretty: serde_json::Value = serde_json::from_str(&json).unwrap();
        let pretty = serde_json::to_string_pretty(&pretty).unwrap();
        assert_eq!(
            parse(pretty.as_bytes()).unwrap(),
            from_json,
            "a pretty JSON manifest is not NDJSON"
        );
    }

    #[test]
    fn a_delta_adds_replaces_and_removes_against_its_base_only() {
        let base = read_text(
            &ndjson(
                r#"{"version": 1, "id": "n1", "base_url": "http://o/"}"#,
                &[object("a.ts"), object("b.ts"), object("c.ts")],
            ),
            None,
        )
        .unwrap();
        let other_sha = "00".repeat(32);
        let delta = ndjson(
            r#"{"version": 1, "id": "n2", "base": "n1"}"#,
            &[
                r#"{"remove": "b.ts"}"#.to_owned(),
                object("c.ts").replace(SHA, &other_sha),
                object("d.ts"),
            ],
        );
        let applied = read_text(&delta, Some(&base)).unwrap();
        assert_eq!(applied.id, "n2");
        let paths: Vec<&str> = applied.iter().map(|object| object.path).collect();
        assert_eq!(paths, ["a.ts", "c.ts", "d.ts"]);
        assert_eq!(applied.get(1).sha256, [0u8; 32]);
        assert_eq!(
            applied.get(2).source(),
            Source::Http("http://o/d.ts".to_owned())
        );
        assert_eq!(applied.total_bytes, 12);

        let wrong = read_text(&delta.replace("\"n1\"", "\"n0\""), Some(&base)).unwrap_err();
        assert!(matches!(wrong, ManifestError::WrongBase { .. }), "{wrong}");
        assert!(matches!(
            read_text(&delta, None).unwrap_err(),
            ManifestError::WrongBase { .. }
        ));
        let unknown = ndjson(
            r#"{"version": 1, "id": "n2", "base": "n1"}"#,
            &[r#"{"remove": "zz.ts"}"#.to_owned()],
        );
        assert!(
            read_text(&unknown, Some(&base))
                .unwrap_err()
                .to_string()
                .contains("line 2 (\"zz.ts\")")
        );
        let dir_clash = ndjson(
            r#"{"version": 1, "id": "n2", "base": "n1"}"#,
            &[object("a.ts/x.ts")],
        );
        assert!(
            read_text(&dir_clash, Some(&base))
                .unwrap_err()
                .to_string()
                .contains("also an object")
        );
    }

    #[test]
    fn a_stream_over_the_limit_is_too_large_even_compressed() {
        let lines: Vec<String> = (0..200).map(|n| object(&format!("s/{n}.ts"))).collect();
        let text = ndjson(
            r#"{"version": 1, "id": "n", "base_url": "http://o/"}"#,
            &lines,
        );
        let gzipped = gzip(text.as_bytes());
        assert!(gzipped.len() < 2000);
        let err = read(&gzipped[..], None, 2000).unwrap_err();
        assert_eq!(err, ManifestError::TooLarge(2000));
        assert!(read(&gzipped[..], None, text.len() as u64).is_ok());
    }

    #[test]
    fn the_saved_form_round_trips_and_refuses_damage() {
        let text = manifest(&format!(
            "{}, {}",
            object("t/a.ts"),
            object("t/b.ts").replace(
                r#""sha256""#,
                r#""url": "http://x/b", "copies": 2, "sha256""#
            )
        ));
        let manifest = parse(text.as_bytes()).unwrap();
        let mut saved = Vec::new();
        let crc = manifest.save(&mut saved).unwrap();
        assert_eq!(
            Manifest::load_saved_with_crc(&mut &saved[..]).unwrap().0,
            manifest
        );
        assert_eq!(
            Manifest::saved_summary(&mut &saved[..]).unwrap(),
            SavedSummary {
                id: manifest.id.clone(),
                objects: manifest.len(),
                total_bytes: manifest.total_bytes,
                crc,
            }
        );
        assert_eq!(manifest.get(1).copies, 2);
        for cut in [0, 5, saved.len() / 2, saved.len() - 1] {
            assert!(
                Manifest::load_saved_with_crc(&mut &saved[..cut]).is_err(),
                "cut at {cut}"
            );
            assert!(
                Manifest::saved_summary(&mut &saved[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        for flip in [20, saved.len() / 2, saved.len() - 10] {
            let mut damaged = saved.clone();
            damaged[flip] ^= 0x40;
            assert!(
                Manifest::load_saved_with_crc(&mut &damaged[..]).is_err(),
                "flip at {flip}"
            );
            assert!(
                Manifest::saved_summary(&mut &damaged[..]).is_err(),
                "flip at {flip}"
            );
        }
    }

    #[test]
    fn ndjson_lines_are_bounded_and_named() {
        let long = format!(
            "{}\n{}\n",
            r#"{"version": 1, "id": "n", "base_url": "http://o/"}"#,
            "x".repeat(MAX_LINE + 10)
        );
        assert!(
            read_text(&long, None)
                .unwrap_err()
                .to_string()
                .contains("longer than")
        );
        let bad = ndjson(
            r#"{"version": 1, "id": "n", "base_url": "http://o/"}"#,
            &[object("a.ts"), object("../b.ts")],
        );
        assert!(
            read_text(&bad, None)
                .unwrap_err()
                .to_string()
                .contains("line 3 (\"../b.ts\")")
        );
    }

    #[test]
    fn a_damaged_record_count_is_an_error_not_an_allocation() {
        let manifest = parse(manifest(&object("a.ts")).as_bytes()).unwrap();
        let mut saved = Vec::new();
        manifest.save(&mut saved).unwrap();
        // magic, id, base URL, flag, total, paths: then the record count.
        let at = 8
            + 8
            + manifest.id.len()
            + 8
            + manifest.base_url.as_ref().unwrap().len()
            + 1
            + 8
            + 8
            + manifest.paths.len();
        assert_eq!(saved[at..at + 8], 1u64.to_le_bytes());
        saved[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(Manifest::load_saved_with_crc(&mut &saved[..]).is_err());
    }

    #[test]
    fn ndjson_edges_cut_bodies_and_delta_ids() {
        let header = r#"{"version": 1, "id": "n", "base_url": "http://o/", "count": 2}"#;
        let whole = ndjson(header, &[object("a.ts"), object("b.ts")]);
        assert_eq!(read_text(&whole, None).unwrap().len(), 2);
        let cut = ndjson(header, &[object("a.ts")]);
        assert!(
            read_text(&cut, None)
                .unwrap_err()
                .to_string()
                .contains("announces 2 lines, 1 arrived")
        );
        let blank_first = format!("\n\r\n{whole}");
        assert_eq!(read_text(&blank_first, None).unwrap().len(), 2);
        let header_only = r#"{"version": 1, "id": "empty", "base_url": "http://o/"}"#;
        assert!(
            read_text(&format!("{header_only}\n"), None)
                .unwrap()
                .is_empty()
        );
        assert!(
            read_text(header_only, None)
                .unwrap_err()
                .to_string()
                .contains("missing field")
        );
        let base = read_text(&whole, None).unwrap();
        let same_id = ndjson(
            r#"{"version": 1, "id": "n", "base": "n"}"#,
            &[object("c.ts")],
        );
        assert!(
            read_text(&same_id, Some(&base))
                .unwrap_err()
                .to_string()
                .contains("id of its own")
        );
        let duplicate_key =
            r#"{"version": 1, "id": "x", "id": "y", "base_url": "http://o/", "objects": []}"#;
        assert!(refused(duplicate_key).contains("duplicate field"));
        let long_url = object("a.ts").replace(
            r#""sha256""#,
            &format!(r#""url": "http://o/{}", "sha256""#, "x".repeat(9000)),
        );
        assert!(refused(&manifest(&long_url)).contains("longer than 8192"));
    }

    #[test]
    fn urls_replaced_by_deltas_do_not_pile_up() {
        let with_url = |n: usize| {
            object("a.ts").replace(
                r#""sha256""#,
                &format!(r#""url": "http://o/v{n}", "sha256""#),
            )
        };
        let mut manifest = read_text(
            &ndjson(r#"{"version": 1, "id": "n0"}"#, &[with_url(0)]),
            None,
        )
        .unwrap();
        for n in 1..50 {
            let delta = ndjson(
                &format!(r#"{{"version": 1, "id": "n{n}", "base": "n{}"}}"#, n - 1),
                &[with_url(n)],
            );
            manifest = read_text(&delta, Some(&manifest)).unwrap();
        }
        assert_eq!(manifest.urls.len(), 1);
        assert_eq!(
            manifest.get(0).source(),
            Source::Http("http://o/v49".to_owned())
        );
    }
}
