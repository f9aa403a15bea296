//! The persisted index of one store: an append-only journal of checksummed records.
//!
//! Start-up must not stat a million files, so each store keeps `index/journal`, replayed at
//! start in one sequential read. Format (all integers little-endian):
//!
//! ```text
//! header  b"TCIDX001"
//! record  u32 payload_len | u32 crc32(payload) | payload
//! payload u8 kind (1 = put, 2 = remove) | u16 path_len | path (UTF-8)
//!         put only: u64 size | [u8; 32] sha256 | i64 filled_at (Unix seconds)
//! ```
//!
//! A crash can only tear the last record: replay skips what is short or fails its checksum,
//! and the writer truncates a torn tail (bytes after the last valid record) before appending.
//! A record damaged in the middle (a flipped bit on disk) costs only that record: replay
//! finds the next valid record after it and goes on, and nothing after it is cut. The writer
//! knows where valid records end after every append, so a failed append is cut off at the
//! next one instead of being followed by records that replay would never reach. Compaction
//! writes the live entries to `journal.tmp`, fsyncs it, renames it over `journal` and fsyncs
//! the directory, so a crash leaves either the old journal or the new one.

use super::index::{Index, ObjectMeta};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// First bytes of every journal; a different value means this is not our file.
const MAGIC: &[u8; 8] = b"TCIDX001";
const KIND_PUT: u8 = 1;
const KIND_REMOVE: u8 = 2;
/// Bound on one record, far above the largest legal one (1 KiB path + 43 bytes).
const MAX_PAYLOAD: u32 = 64 * 1024;

/// One object as the journal records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalEntry {
    /// Length in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub sha256: [u8; 32],
    /// When it was filled, Unix seconds; served as `Last-Modified`.
    pub filled_at: i64,
}

/// A change to one store's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The object at this path is now stored with this entry.
    Put(String, JournalEntry),
    /// The object at this path is gone.
    Remove(String),
}

/// What replaying a journal found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Live entries by path (their `store` is 0: the caller's to set).
    pub entries: Index,
    /// Where the last valid record ends; anything after is a torn tail.
    pub valid_len: u64,
    /// Whether a torn or corrupt tail was found after `valid_len`.
    pub torn_tail: bool,
    /// Damaged stretches skipped between valid records (each lost one or more records).
    pub corrupt_regions: u64,
    /// Valid records read: more than `entries` when some were replaced or removed (the
    /// journal then has something to compact).
    pub records: u64,
}

/// Reads a whole journal. A missing file is an empty index.
pub fn replay(path: &Path) -> io::Result<Replay> {
    replay_sized(path, 0)
}

/// Like [`replay`], with the index sized for at least `room_for_bytes` of journal: the
/// store a box's other stores' indexes merge into is sized for all of them at once, so
/// the merge neither regrows nor rehashes it.
pub fn replay_sized(path: &Path, room_for_bytes: u64) -> io::Result<Replay> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Replay::default()),
        Err(err) => return Err(err),
    };
    let size = file.metadata()?.len();
    replay_from(file, size, size.max(room_for_bytes)).map_err(|err| match err {
        ReplayError::Io(err) => err,
        ReplayError::Format(message) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {message}", path.display()),
        ),
    })
}

/// Replays journal bytes; pure, so it is tested without a disk.
pub fn replay_bytes(bytes: &[u8]) -> Result<Replay, String> {
    replay_from(bytes, bytes.len() as u64, bytes.len() as u64).map_err(|err| match err {
        ReplayError::Io(err) => err.to_string(),
        ReplayError::Format(message) => message,
    })
}

/// Why a replay failed: reading, or a file that is not a journal.
enum ReplayError {
    Io(io::Error),
    Format(String),
}

/// The longest a framed record can be: a decode that fails with this much in hand failed
/// for good, not for want of bytes.
const MAX_FRAME: usize = 8 + MAX_PAYLOAD as usize;
/// Bytes read from the journal at a time: replay holds this much of it (and a frame), never
/// the whole (a few KiB in unit tests, so they cross many window boundaries).
const READ_CHUNK: usize = if cfg!(test) { 4096 } else { 8 << 20 };

/// A window on the journal being replayed: `buffer[start..end]` is read and not yet
/// replayed, and `before + start` is its offset in the file.
struct Window<R: Read> {
    input: R,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    before: u64,
    eof: bool,
}

impl<R: Read> Window<R> {
    /// Everything in the window, replayed or not (the header check reads its start).
    fn bytes(&self) -> &[u8] {
        &self.buffer[..self.end]
    }

    /// Drops what is replayed and tops the window up to a chunk plus a whole frame.
    fn refill(&mut self) -> io::Result<()> {
        self.buffer.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.before += self.start as u64;
        self.start = 0;
        while !self.eof && self.end < self.buffer.len() {
            match self.input.read(&mut self.buffer[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(read) => self.end += read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Whether fewer than a whole frame's bytes are left from `at` though more may come.
    fn short_at(&self, at: usize) -> bool {
        !self.eof && self.end - at < MAX_FRAME
    }
}

/// Records handed from the decoding thread to the inserting one at a time.
const BATCH: usize = 16 * 1024;

/// Decoded records, their paths copied out of the window (which is reused).
struct Batch {
    paths: String,
    /// Path end in `paths`, and the entry (`None`: a removal).
    records: Vec<(usize, Option<JournalEntry>)>,
}

/// What the decoding thread found besides the records.
#[derive(Default)]
struct Scan {
    valid_len: u64,
    torn_tail: bool,
    corrupt_regions: u64,
    records: u64,
}

/// Replays a journal of `size` bytes read a chunk at a time, into an index sized for
/// `room_for` bytes of journal: one thread reads, checks and decodes records while this
/// one puts them in the index, in journal order.
fn replay_from(input: impl Read + Send, size: u64, room_for: u64) -> Result<Replay, ReplayError> {
    let (batches, received) = std::sync::mpsc::sync_channel::<Batch>(4);
    std::thread::scope(|scope| {
        let decoding = scope.spawn(move || decode_all(input, size, &batches));
        // A put record is 59 bytes and its path (about 30 to 60 bytes here): size the index
        // once, generously (capacity never written to costs address space, not memory).
        let estimate = usize::try_from(room_for).unwrap_or(usize::MAX);
        let mut entries = None;
        for batch in received {
            let index =
                entries.get_or_insert_with(|| Index::with_capacity(estimate / 80, estimate / 2));
            let mut path_start = 0;
            for (path_end, entry) in batch.records {
                let path = &batch.paths[path_start..path_end];
                path_start = path_end;
                match entry {
                    Some(entry) => {
                        index.insert(
                            path,
                            ObjectMeta {
                                store: 0,
                                size: entry.size,
                                sha256: entry.sha256,
                                filled_at: entry.filled_at,
                            },
                        );
                    }
                    None => {
                        index.remove(path);
                    }
                }
            }
        }
        let scan = decoding
            .join()
            .map_err(|_| ReplayError::Io(io::Error::other("journal decoding panicked")))??;
        Ok(Replay {
            entries: entries.unwrap_or_default(),
            valid_len: scan.valid_len,
            torn_tail: scan.torn_tail,
            corrupt_regions: scan.corrupt_regions,
            records: scan.records,
        })
    })
}

/// Reads and decodes a whole journal, sending its valid records in batches.
fn decode_all(
    input: impl Read,
    size: u64,
    batches: &std::sync::mpsc::SyncSender<Batch>,
) -> Result<Scan, ReplayError> {
    let mut scan = Scan::default();
    // A small journal needs no more than its size (plus a frame, so a decode never runs out).
    let window_size = usize::try_from(size)
        .unwrap_or(usize::MAX)
        .min(READ_CHUNK)
        .saturating_add(MAX_FRAME);
    let mut window = Window {
        input,
        buffer: vec![0; window_size],
        start: 0,
        end: 0,
        before: 0,
        eof: false,
    };
    window.refill().map_err(ReplayError::Io)?;
    if window.end == 0 {
        return Ok(scan);
    }
    if window.end < MAGIC.len() || &window.bytes()[..MAGIC.len()] != MAGIC {
        return Err(ReplayError::Format(
            "not a tidecache index journal (bad header)".to_owned(),
        ));
    }
    window.start = MAGIC.len();
    scan.valid_len = MAGIC.len() as u64;
    let fresh = || Batch {
        paths: String::with_capacity(BATCH * 48),
        records: Vec::with_capacity(BATCH),
    };
    let mut batch = fresh();
    let send = |batch: &mut Batch| {
        // The inserting side only stops early if it panicked; the join reports that.
        let _ = batches.send(std::mem::replace(batch, fresh()));
    };
    loop {
        if window.short_at(window.start) {
            window.refill().map_err(ReplayError::Io)?;
        }
        if window.start >= window.end {
            break;
        }
        let mut at = window.start;
        let mut skipped = false;
        let found = loop {
            if let Some((record, used)) = decode_record(&window.buffer[at..window.end]) {
                break Some((record, at, used));
            }
            // Not a valid record here: a torn tail, or damage in the middle. Look for the
            // next valid record; finding none means the rest is a tail.
            at += 1;
            skipped = true;
            if window.short_at(at) {
                window.start = at;
                window.refill().map_err(ReplayError::Io)?;
                at = window.start;
            }
            if at >= window.end {
                break None;
            }
        };
        let Some((record, at, used)) = found else {
            scan.torn_tail = true;
            break;
        };
        if skipped {
            scan.corrupt_regions += 1;
        }
        let (path, entry) = match record {
            RecordRef::Put(path, entry) => (path, Some(entry)),
            RecordRef::Remove(path) => (path, None),
        };
        batch.paths.push_str(path);
        batch.records.push((batch.paths.len(), entry));
        if batch.records.len() == BATCH {
            send(&mut batch);
        }
        scan.records += 1;
        window.start = at + used;
        scan.valid_len = window.before + window.start as u64;
    }
    if !batch.records.is_empty() {
        send(&mut batch);
    }
    Ok(scan)
}

/// Every valid record of a whole journal, in order (for tests that check what was written
/// when, not only what replay ends with).
#[cfg(test)]
pub(crate) fn records(bytes: &[u8]) -> Vec<Record> {
    let mut records = Vec::new();
    let mut offset = MAGIC.len().min(bytes.len());
    while let Some((record, used)) = decode_record(&bytes[offset..]) {
        records.push(match record {
            RecordRef::Put(path, entry) => Record::Put(path.to_owned(), entry),
            RecordRef::Remove(path) => Record::Remove(path.to_owned()),
        });
        offset += used;
    }
    records
}

/// A decoded record borrowing its path from the journal's bytes: replay allocates nothing
/// per record.
enum RecordRef<'a> {
    Put(&'a str, JournalEntry),
    Remove(&'a str),
}

/// Decodes one framed record, or `None` if it is short, oversized, malformed or fails its
/// checksum. The frame's shape is checked before the checksum is computed, so scanning
/// damaged bytes for the next record costs a few comparisons per byte.
fn decode_record(bytes: &[u8]) -> Option<(RecordRef<'_>, usize)> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if len > MAX_PAYLOAD {
        return None;
    }
    let kind = *bytes.get(8)?;
    let path_len = u16::from_le_bytes(bytes.get(9..11)?.try_into().ok()?) as u32;
    // No object path is longer (the index could not hold one that is): such a record is
    // damage, whatever its checksum says.
    if path_len as usize > crate::object_path::MAX_PATH_BYTES {
        return None;
    }
    let shaped = match kind {
        KIND_PUT => len == 3 + path_len + 48,
        KIND_REMOVE => len == 3 + path_len,
        _ => false,
    };
    if !shaped {
        return None;
    }
    let payload = bytes.get(8..8 + len as usize)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let kind = *payload.first()?;
    let path_len = u16::from_le_bytes(payload.get(1..3)?.try_into().ok()?) as usize;
    let path = std::str::from_utf8(payload.get(3..3 + path_len)?).ok()?;
    let rest = &payload[3 + path_len..];
    let record = match kind {
        KIND_PUT if rest.len() == 48 => RecordRef::Put(
            path,
            JournalEntry {
                size: u64::from_le_bytes(rest[0..8].try_into().ok()?),
                sha256: rest[8..40].try_into().ok()?,
                filled_at: i64::from_le_bytes(rest[40..48].try_into().ok()?),
            },
        ),
        KIND_REMOVE if rest.is_empty() => RecordRef::Remove(path),
        _ => return None,
    };
    Some((record, 8 + len as usize))
}

/// Appends the framed encoding of `record` to `out`.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(64);
    let (kind, path) = match record {
        Record::Put(path, _) => (KIND_PUT, path),
        Record::Remove(path) => (KIND_REMOVE, path),
    };
    payload.push(kind);
    payload.extend_from_slice(&(path.len() as u16).to_le_bytes());
    payload.extend_from_slice(path.as_bytes());
    if let Record::Put(_, entry) = record {
        payload.extend_from_slice(&entry.size.to_le_bytes());
        payload.extend_from_slice(&entry.sha256);
        payload.extend_from_slice(&entry.filled_at.to_le_bytes());
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// The append side of one store's journal, opened on the first write (never while only serving).
#[derive(Debug)]
pub struct JournalWriter {
    file: File,
    /// Where the last durable, valid record ends.
    valid_len: u64,
}

impl JournalWriter {
    /// Opens `path` for appending after its first `valid_len` bytes of valid records,
    /// cutting whatever follows (a torn tail, or what a failed append left). A journal with
    /// no valid header yet (`valid_len` short of it: a new store, or one whose first write
    /// failed) is started afresh with the header, made durable with its directory entry.
    pub fn open(path: &Path, valid_len: u64) -> io::Result<JournalWriter> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let len = file.metadata()?.len();
        if valid_len < MAGIC.len() as u64 {
            file.set_len(0)?;
            file.write_all(MAGIC)?;
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                crate::durable::fsync_dir(dir)?;
            }
            return Ok(JournalWriter {
                file,
                valid_len: MAGIC.len() as u64,
            });
        }
        if len < valid_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is {len} bytes, shorter than the {valid_len} bytes of records it held (changed behind tidecache's back)",
                    path.display()
                ),
            ));
        }
        if len > valid_len {
            file.set_len(valid_len)?;
            file.sync_data()?;
        }
        Ok(JournalWriter { file, valid_len })
    }

    /// Appends records and makes them durable before returning. On failure the file may
    /// hold part of them after [`JournalWriter::valid_len`]; the caller cuts them at once
    /// with [`JournalWriter::cut_back`].
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(records.len() * 96);
        for record in records {
            encode_record(record, &mut bytes);
        }
        self.file.write_all(&bytes)?;
        self.file.sync_data()?;
        self.valid_len += bytes.len() as u64;
        Ok(())
    }

    /// Where the last durable, valid record ends.
    pub fn valid_len(&self) -> u64 {
        self.valid_len
    }

    /// After a failed append: cuts whatever it left after the last valid record and makes
    /// the cut durable, so a record that reached the file whole (its `fsync` failed, not its
    /// `write`) can never be replayed later over a file renamed in since.
    pub fn cut_back(&mut self) -> io::Result<()> {
        self.file.set_len(self.valid_len)?;
        self.file.sync_data()
    }
}

/// A compaction that failed, and whether the new journal had already replaced the old one.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct CompactError {
    /// When the rename happened (only the directory fsync failed): the new journal's valid
    /// length, which is now the file's. `None`: the old journal is still in place.
    pub renamed_len: Option<u64>,
    /// What failed.
    pub source: io::Error,
}

/// Rewrites a journal to hold exactly `entries`, atomically (temp file, fsync, rename, fsync
/// dir). Returns the new journal's length.
pub fn compact<'a>(
    path: &Path,
    entries: impl IntoIterator<Item = (&'a str, &'a JournalEntry)>,
) -> Result<u64, CompactError> {
    let temp: PathBuf = path.with_extension("tmp");
    let written = write_compacted(&temp, entries).map_err(|source| {
        let _ = std::fs::remove_file(&temp);
        CompactError {
            renamed_len: None,
            source,
        }
    })?;
    std::fs::rename(&temp, path).map_err(|source| {
        let _ = std::fs::remove_file(&temp);
        CompactError {
            renamed_len: None,
            source,
        }
    })?;
    if let Some(dir) = path.parent() {
        crate::durable::fsync_dir(dir).map_err(|source| CompactError {
            renamed_len: Some(written),
            source,
        })?;
    }
    Ok(written)
}

/// Writes `entries` as a whole journal to `temp` and makes it durable; returns its length.
fn write_compacted<'a>(
    temp: &Path,
    entries: impl IntoIterator<Item = (&'a str, &'a JournalEntry)>,
) -> io::Result<u64> {
    let file = File::create(temp)?;
    let mut out = BufWriter::new(file);
    out.write_all(MAGIC)?;
    let mut buffer = Vec::with_capacity(128);
    let mut written = MAGIC.len() as u64;
    for (object_path, entry) in entries {
        buffer.clear();
        encode_record(&Record::Put(object_path.to_owned(), *entry), &mut buffer);
        out.write_all(&buffer)?;
        written += buffer.len() as u64;
    }
    let file = out.into_inner().map_err(|err| err.into_error())?;
    file.sync_all()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(size: u64) -> JournalEntry {
        JournalEntry {
            size,
            sha256: [size as u8; 32],
            filled_at: 1_700_000_000 + size as i64,
        }
    }

    /// What an index built from a journal holds for `entry` (store 0).
    fn meta(entry: JournalEntry) -> ObjectMeta {
        ObjectMeta {
            store: 0,
            size: entry.size,
            sha256: entry.sha256,
            filled_at: entry.filled_at,
        }
    }

    /// An index's objects, sorted by path.
    fn listed(index: &Index) -> Vec<(String, ObjectMeta)> {
        let mut all: Vec<_> = index
            .iter()
            .map(|(path, meta)| (path.to_owned(), meta))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn paths(index: &Index) -> Vec<String> {
        listed(index).into_iter().map(|(path, _)| path).collect()
    }

    fn journal(records: &[Record]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for record in records {
            encode_record(record, &mut bytes);
        }
        bytes
    }

    #[test]
    fn replay_applies_puts_and_removes_in_order() {
        let bytes = journal(&[
            Record::Put("a/1.ts".into(), entry(1)),
            Record::Put("a/2.ts".into(), entry(2)),
            Record::Remove("a/1.ts".into()),
            Record::Put("a/2.ts".into(), entry(3)),
        ]);
        let replay = replay_bytes(&bytes).unwrap();
        assert_eq!(replay.entries.len(), 1);
        assert_eq!(replay.entries.get("a/2.ts"), Some(meta(entry(3))));
        assert_eq!(replay.valid_len, bytes.len() as u64);
        assert!(!replay.torn_tail);
    }

    #[test]
    fn torn_tail_is_dropped_and_earlier_records_kept() {
        let whole = journal(&[
            Record::Put("a".into(), entry(1)),
            Record::Put("b".into(), entry(2)),
        ]);
        let first_len = journal(&[Record::Put("a".into(), entry(1))]).len();
        for cut in first_len..whole.len() {
            let replay = replay_bytes(&whole[..cut]).unwrap();
            assert_eq!(replay.entries.len(), 1, "cut at {cut}");
            assert_eq!(replay.valid_len, first_len as u64);
            assert_eq!(replay.torn_tail, cut > first_len);
        }
    }

    #[test]
    fn flipped_bit_fails_the_checksum() {
        let mut bytes = journal(&[Record::Put("a".into(), entry(1))]);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let replay = replay_bytes(&bytes).unwrap();
        assert!(replay.entries.is_empty());
        assert!(replay.torn_tail);
    }

    #[test]
    fn foreign_file_is_an_error() {
        assert!(replay_bytes(b"hello world, not a journal").is_err());
    }

    #[test]
    fn writer_truncates_torn_tail_then_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut bytes = journal(&[Record::Put("a".into(), entry(1))]);
        let valid = bytes.len() as u64;
        bytes.extend_from_slice(&[7, 0, 0]);
        std::fs::write(&path, &bytes).unwrap();
        let replay = replay(&path).unwrap();
        assert!(replay.torn_tail);
        let mut writer = JournalWriter::open(&path, replay.valid_len).unwrap();
        assert_eq!(replay.valid_len, valid);
        writer.append(&[Record::Put("b".into(), entry(2))]).unwrap();
        let again = super::replay(&path).unwrap();
        assert_eq!(again.entries.len(), 2);
        assert!(!again.torn_tail);
    }

    #[test]
    fn a_half_written_append_is_cut_at_the_next_open_and_nothing_before_it_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut writer = JournalWriter::open(&path, 0).unwrap();
        writer.append(&[Record::Put("a".into(), entry(1))]).unwrap();
        writer.append(&[Record::Put("b".into(), entry(2))]).unwrap();
        let valid = writer.valid_len();
        drop(writer);
        // What a failed append may leave: part of a record after the valid ones.
        let mut bytes = std::fs::read(&path).unwrap();
        let mut half = Vec::new();
        encode_record(&Record::Put("c".into(), entry(3)), &mut half);
        bytes.extend_from_slice(&half[..half.len() / 2]);
        std::fs::write(&path, &bytes).unwrap();
        let mut writer = JournalWriter::open(&path, valid).unwrap();
        writer.append(&[Record::Put("d".into(), entry(4))]).unwrap();
        let replay = replay(&path).unwrap();
        assert_eq!(paths(&replay.entries), ["a", "b", "d"]);
        assert!(!replay.torn_tail);
    }

    #[test]
    fn a_journal_whose_header_never_became_valid_is_started_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        // A new store's first write failed after part of the header.
        std::fs::write(&path, &MAGIC[..3]).unwrap();
        let mut writer = JournalWriter::open(&path, 0).unwrap();
        writer.append(&[Record::Put("a".into(), entry(1))]).unwrap();
        let replay = replay(&path).expect("a journal with its header");
        assert_eq!(replay.entries.len(), 1);
    }

    #[test]
    fn a_damaged_record_mid_journal_costs_only_itself() {
        let records = [
            Record::Put("a".into(), entry(1)),
            Record::Put("b".into(), entry(2)),
            Record::Put("c".into(), entry(3)),
        ];
        let mut bytes = journal(&records);
        let first_len = journal(&records[..1]).len();
        bytes[first_len + 12] ^= 0x40;
        let replay = replay_bytes(&bytes).unwrap();
        assert_eq!(
            paths(&replay.entries),
            ["a", "c"],
            "only the damaged record is lost"
        );
        assert_eq!(replay.corrupt_regions, 1);
        assert_eq!(
            replay.valid_len,
            bytes.len() as u64,
            "nothing after it is cut"
        );
        assert!(!replay.torn_tail);
    }

    #[test]
    fn replay_read_a_window_at_a_time_finds_every_record_across_damage_and_a_torn_tail() {
        let records: Vec<Record> = (0..3000u64)
            .map(|number| match number % 7 {
                6 => Record::Remove(format!("t/{}.ts", number - 3)),
                _ => Record::Put(format!("t/{number}.ts"), entry(number)),
            })
            .collect();
        let mut bytes = MAGIC.to_vec();
        let mut starts = Vec::new();
        for record in &records {
            starts.push(bytes.len());
            encode_record(record, &mut bytes);
        }
        let whole = bytes.len();
        // Damage two records, one of them the record where a window boundary falls.
        let boundary = starts
            .iter()
            .position(|&start| start > READ_CHUNK * 3)
            .unwrap()
            - 1;
        for damaged in [1000, boundary] {
            bytes[starts[damaged] + 12] ^= 0x01;
        }
        let mut tail = Vec::new();
        encode_record(&Record::Put("t/late.ts".into(), entry(1)), &mut tail);
        bytes.extend_from_slice(&tail[..tail.len() - 5]);

        let mut model: std::collections::BTreeMap<String, ObjectMeta> = Default::default();
        for (number, record) in records.iter().enumerate() {
            if number == 1000 || number == boundary {
                continue;
            }
            match record {
                Record::Put(path, entry) => {
                    model.insert(path.clone(), meta(*entry));
                }
                Record::Remove(path) => {
                    model.remove(path);
                }
            }
        }
        let replay = replay_bytes(&bytes).unwrap();
        assert_eq!(
            listed(&replay.entries),
            model.into_iter().collect::<Vec<_>>()
        );
        assert_eq!(replay.corrupt_regions, 2);
        assert!(replay.torn_tail);
        assert_eq!(
            replay.valid_len, whole as u64,
            "the torn tail is cut, nothing else"
        );
        assert_eq!(replay.records, records.len() as u64 - 2);
    }

    #[test]
    fn a_record_with_a_path_longer_than_any_object_path_is_damage() {
        let long = "a/".repeat(crate::object_path::MAX_PATH_BYTES);
        let bytes = journal(&[
            Record::Put("ok.ts".into(), entry(1)),
            Record::Put(long, entry(2)),
            Record::Put("after.ts".into(), entry(3)),
        ]);
        let replay = replay_bytes(&bytes).unwrap();
        assert_eq!(paths(&replay.entries), ["after.ts", "ok.ts"]);
        assert_eq!(replay.corrupt_regions, 1);
    }

    #[test]
    fn a_journal_shorter_than_its_known_records_is_not_written_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        std::fs::write(&path, journal(&[Record::Put("a".into(), entry(1))])).unwrap();
        assert!(JournalWriter::open(&path, 10_000).is_err());
    }

    #[test]
    fn compaction_keeps_exactly_the_live_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut writer = JournalWriter::open(&path, 0).unwrap();
        writer
            .append(&[
                Record::Put("a".into(), entry(1)),
                Record::Remove("a".into()),
                Record::Put("b".into(), entry(2)),
            ])
            .unwrap();
        let live = listed(&replay(&path).unwrap().entries);
        let entries: Vec<(&str, JournalEntry)> = live
            .iter()
            .map(|(path, meta)| (path.as_str(), meta.journal_entry()))
            .collect();
        compact(&path, entries.iter().map(|(path, entry)| (*path, entry))).unwrap();
        let after = replay(&path).unwrap();
        assert_eq!(listed(&after.entries), live);
        assert!(!path.with_extension("tmp").exists());
    }
}
