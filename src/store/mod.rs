//! Content stores: one directory per NVMe device, plain files inside, one index over all.
//!
//! # On-disk layout of one store
//!
//! ```text
//! <store.path>/
//!   store-id          random id, written once; placement hashes it, not the mount path
//!   objects/<path>    the object's bytes, a plain file at its viewer path (inspectable, scrubbable)
//!   tmp/              fill writes in progress (same file system, so the final rename is atomic)
//!   index/journal     the persisted index of this store (see [`journal`])
//! ```
//!
//! Objects are spread across stores by weighted rendezvous hashing of the object path
//! ([`placement`]). The index maps a path to its store, size, sha256 and fill time; the file is
//! always `objects/<path>` in that store, so it is not recorded separately. At start every
//! store's journal is replayed (one sequential read each; no stat per object) and merged.
//!
//! Reads ([`Stores::lookup`], [`Stores::open`]) never write. Writes go only through
//! [`writer::ObjectWriter::begin`], whose writer cannot publish a torn or wrong object: it
//! hashes as it writes, and [`writer::ObjectWriter::finish`] checks size and sha256, fsyncs,
//! and hands the file to the store's publish, which renames,
//! fsyncs the directory and only then records the object in the journal and the index.
//! Dropped without `finish`, it removes its temp file.

pub mod buffers;
mod folios;
mod index;
pub mod journal;
pub mod placement;
pub mod scrub;
pub mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::clock::ClockMap;
use crate::config::StoreConfig;
pub use folios::read_in_large_folios;
use index::Index;
pub use index::{MAX_STORES, ObjectMeta};
use journal::{JournalEntry, JournalWriter, Record};

/// Share of a file system's size kept free when a store's capacity is not configured.
const RESERVE_FRACTION: f64 = 0.02;

/// A store failure, with the store and the operation that failed, for one log line.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system call failed.
    #[error("store {store}: {action}: {source}")]
    Io {
        /// The store's configured path.
        store: PathBuf,
        /// What was being done, e.g. "open objects/a.ts".
        action: String,
        /// What the OS said.
        source: io::Error,
    },
    /// The bytes written do not have the size the manifest promised.
    #[error("{path}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Object path.
        path: String,
        /// Size from the manifest.
        expected: u64,
        /// Bytes actually received.
        actual: u64,
    },
    /// The bytes written do not hash to the manifest's sha256.
    #[error("{path}: sha256 mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        /// Object path.
        path: String,
        /// Hex sha256 from the manifest.
        expected: String,
        /// Hex sha256 of what was received.
        actual: String,
    },
    /// The object path breaks the path rules.
    #[error("{path:?}: {source}")]
    BadPath {
        /// The refused path.
        path: String,
        /// Which rule it broke.
        source: crate::object_path::PathError,
    },
    /// No usable store has room for the object.
    #[error("{path}: no store has room for {size} bytes")]
    NoRoom {
        /// Object path.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A fill replaced or removed the object while it was being opened; look it up again.
    #[error("{path}: replaced while being opened")]
    Changed {
        /// Object path.
        path: String,
    },
    /// The stored file does not match the index (deleted or truncated behind our back).
    #[error("store {store}: {path}: file does not match the index ({detail})")]
    Damaged {
        /// The store's configured path.
        store: PathBuf,
        /// Object path.
        path: String,
        /// What differed.
        detail: String,
    },
}

impl StoreError {
    /// Whether the file system ran out of space (ENOSPC): the store is full, not broken.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull)
    }
}

impl ObjectMeta {
    fn journal_entry(&self) -> JournalEntry {
        JournalEntry {
            size: self.size,
            sha256: self.sha256,
            filled_at: self.filled_at,
        }
    }
}

/// An object opened for reading: the data plane streams from `file` (later by sendfile or from
/// RAM) without knowing which store it came from.
#[derive(Debug, Clone)]
pub struct OpenObject {
    /// The open file, shared so several ranges of one response can read it.
    pub file: Arc<File>,
    /// What the index says about it (size already checked against the file).
    pub meta: ObjectMeta,
    /// Opened just now, not found in the open-file cache: the first answer from this open
    /// may read it into the page cache ([`read_in_large_folios`]).
    pub fresh: bool,
}

/// Whether a store takes part, as `/v1/status` spells it (`ok`, `full`, `failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreState {
    /// Serving and accepting new objects.
    Ok,
    /// Serving, but the last fill found no room for more.
    Full,
    /// Out of service after an I/O error; its objects are misses.
    Failed,
}

/// Health of one store, as status and metrics show it.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    /// The configured path.
    pub path: PathBuf,
    /// Whether it takes part.
    pub state: StoreState,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Objects the index places here.
    pub objects: u64,
    /// Bytes of those objects.
    pub bytes_used: u64,
    /// Bytes this store may hold.
    pub bytes_capacity: u64,
    /// I/O errors seen since start.
    #[serde(skip)]
    pub errors: u64,
}

/// The append side of a store's journal, opened lazily by the first write.
#[derive(Debug)]
struct JournalState {
    /// Where valid records end (a torn tail after it is cut on open).
    valid_len: u64,
    writer: Option<JournalWriter>,
    /// The journal holds exactly the store's live entries, one record each: compacting it
    /// would rewrite the same records (at every fill pass, tens of millions of them).
    compact: bool,
}

/// One configured store.
#[derive(Debug)]
struct Store {
    config_path: PathBuf,
    root: PathBuf,
    id: String,
    capacity: u64,
    failed: AtomicBool,
    /// Set when the file system said ENOSPC during a fill; placement skips the store until
    /// the next fill starts ([`Stores::clear_full`]).
    full: AtomicBool,
    failure: Mutex<Option<String>>,
    objects: AtomicU64,
    bytes_used: AtomicU64,
    errors: AtomicU64,
    journal: Mutex<JournalState>,
    /// `<store>/lock`, held with an exclusive `flock` while this process has the store open,
    /// so a second daemon (or a `verify`) cannot write the same store.
    _lock: Option<File>,
}

impl Store {
    fn objects_dir(&self) -> PathBuf {
        self.root.join("objects")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn journal_path(&self) -> PathBuf {
        self.root.join("index").join("journal")
    }

    fn object_file(&self, path: &str) -> PathBuf {
        self.objects_dir().join(path)
    }

    fn io_error(&self, action: impl Into<String>, source: io::Error) -> StoreError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        StoreError::Io {
            store: self.config_path.clone(),
            action: action.into(),
            source,
        }
    }

    fn mark_failed(&self, reason: String) {
        self.failed.store(true, Ordering::Relaxed);
        if let Ok(mut failure) = self.failure.lock() {
            *failure = Some(reason);
        }
    }

    /// Appends records to this store's journal, opening it on first use.
    fn append_journal(&self, records: &[Record]) -> Result<(), StoreError> {
        let mut state = self
            .journal
            .lock()
            .map_err(|_| self.io_error("journal", io::Error::other("journal lock poisoned")))?;
        state.compact = false;
        if state.writer.is_none() {
            let writer = JournalWriter::open(&self.journal_path(), state.valid_len)
                .map_err(|err| self.io_error("open index/journal", err))?;
            state.writer = Some(writer);
        }
        let Some(writer) = state.writer.as_mut() else {
            return Ok(());
        };
        match writer.append(records) {
            Ok(()) => {
                state.valid_len = writer.valid_len();
                Ok(())
            }
            Err(err) => {
                // The records may be in the file, whole or in part: cut them now, before
                // anything else is renamed into this store. If even that fails, the store
                // takes no more writes (restarting the daemon reopens and cuts it).
                if let Err(cut) = writer.cut_back() {
                    let reason = format!(
                        "index journal append failed ({err}) and could not be cut back ({cut}); out of service until restart"
                    );
                    tracing::error!(store = %self.config_path.display(), error = %reason, "store failed");
                    self.mark_failed(reason);
                }
                state.writer = None;
                Err(self.io_error("append index/journal", err))
            }
        }
    }
}

impl Store {
    /// Rewrites this store's journal to hold exactly `entries`, keeping the known valid
    /// length right whether or not the new journal replaced the old one.
    fn compact_journal(&self, entries: &[(&str, JournalEntry)]) -> Result<(), StoreError> {
        let mut state = self
            .journal
            .lock()
            .map_err(|_| self.io_error("journal", io::Error::other("journal lock poisoned")))?;
        if state.compact {
            return Ok(());
        }
        state.writer = None;
        match journal::compact(
            &self.journal_path(),
            entries.iter().map(|(path, entry)| (*path, entry)),
        ) {
            Ok(written) => {
                state.valid_len = written;
                state.compact = true;
                Ok(())
            }
            Err(err) => {
                if let Some(written) = err.renamed_len {
                    state.valid_len = written;
                }
                Err(self.io_error("compact index/journal", err.source))
            }
        }
    }
}

/// Outcome of opening one store directory at start.
struct Opened {
    store: Store,
    entries: Index,
}

/// The index of the usable stores, borrowed under its read lock
/// ([`Stores::with_usable_index`]).
pub struct UsableIndex<'a> {
    index: &'a Index,
    stores: &'a [Store],
}

impl UsableIndex<'_> {
    /// The object at `path`, unless its store has failed.
    pub fn get(&self, path: &str) -> Option<ObjectMeta> {
        self.index
            .get(path)
            .filter(|meta| !self.stores[meta.store].failed.load(Ordering::Relaxed))
    }

    /// Every path on a usable store.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.index
            .iter()
            .filter(|(_, meta)| !self.stores[meta.store].failed.load(Ordering::Relaxed))
            .map(|(path, _)| path)
    }

    /// Entries in the index, failed stores' included: an upper bound of [`Self::paths`].
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// All stores of the box and the merged index over them.
#[derive(Debug)]
pub struct Stores {
    stores: Vec<Store>,
    index: RwLock<Index>,
    /// Objects found missing or the wrong size while serving. Serving writes nothing, so they
    /// stay in the journal; the next fill plans them as missing and fetches them again.
    /// Keyed by path, with the sha256 of the damaged version: a newer version is not hidden
    /// by a report about the one it replaced.
    damaged: Mutex<HashMap<String, [u8; 32]>>,
    /// How many objects are in `damaged`, so lookups only take its lock when it matters.
    damaged_count: AtomicU64,
    /// Open files of recently served objects (nginx's `open_file_cache`), so a hit costs no
    /// `open`, `fstat` or `close`. Every change to an object goes through [`Stores`], which
    /// drops its entry first, so a cached file is never a replaced or deleted one (and never
    /// pins the disk space of a deleted object). Empty (capacity 0) unless enabled.
    open_files: RwLock<ClockMap<CachedFile>>,
    /// The open-file cache's capacity; 0 skips it without taking its lock.
    open_file_capacity: u64,
    /// Fill writes with `O_DIRECT` (`fill.direct_writes`).
    direct_writes: AtomicBool,
    /// Old versions still served while a fill publishes their replacement. Between the old
    /// version's retirement and the new one's journal record the index holds neither (the
    /// order crash safety needs); a viewer asking then gets the old version's bytes from a
    /// file opened before the rename, never a 404 and never the new bytes under the old ETag.
    replacing: RwLock<HashMap<String, (ObjectMeta, Arc<File>)>>,
    /// How many objects are in `replacing`, so a miss only takes its lock when it matters.
    replacing_count: AtomicU64,
}

/// An object file kept open by the open-file cache.
#[derive(Debug)]
struct CachedFile {
    file: Arc<File>,
    store: usize,
    sha256: [u8; 32],
    /// When it was opened, on [`coarse_clock`].
    opened: std::time::Duration,
}

/// The coarse monotonic clock: a memory read, where the precise clock reads a counter. Its
/// kernel-tick resolution (a few milliseconds) is plenty for the open-file cache's minute,
/// and it is read on every request.
fn coarse_clock() -> std::time::Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    std::time::Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// Lets go of an old version kept servable during its replacement, whatever way the
/// publish ends.
struct ReplacingGuard<'a> {
    stores: &'a Stores,
    path: String,
}

impl Drop for ReplacingGuard<'_> {
    fn drop(&mut self) {
        self.stores.stop_serving_old_version(&self.path);
    }
}

/// How long a cached open file is trusted before it is opened again, so a file changed
/// behind tidecache's back (by hand, or a disk swapped) is noticed (nginx's
/// `open_file_cache_valid`).
const OPEN_FILE_VALID: std::time::Duration = std::time::Duration::from_secs(60);

impl Stores {
    /// Opens every configured store, creating the layout of new ones and replaying journals.
    ///
    /// A store that cannot be opened is kept, marked failed with the reason, so the box still
    /// serves from the others and status shows what is wrong.
    pub fn load(configs: &[StoreConfig]) -> Stores {
        let started = std::time::Instant::now();
        let mut stores = Vec::with_capacity(configs.len());
        // Each store's journal is read and replayed on a thread of its own (an appliance
        // has a dozen drives); the merge below stays in configuration order.
        // Two entries naming one directory (a symlink, `..`) would race for its lock: the
        // later entry fails, every time.
        let directories: Vec<PathBuf> = configs
            .iter()
            .map(|config| {
                std::fs::canonicalize(&config.path).unwrap_or_else(|_| config.path.clone())
            })
            .collect();
        // Why a store cannot be opened at all, decided once: numbered past what the index
        // can name, or a directory an earlier entry names.
        let refused: Vec<Option<String>> = (0..configs.len())
            .map(|number| {
                if number >= MAX_STORES - 1 {
                    return Some(format!(
                        "more than {} stores are configured",
                        MAX_STORES - 1
                    ));
                }
                directories[..number]
                    .iter()
                    .position(|directory| directory == &directories[number])
                    .map(|first| {
                        format!(
                            "the same directory as store {} ({})",
                            first,
                            configs[first].path.display()
                        )
                    })
            })
            .collect();
        // The store with the largest journal is sized for every store's objects, and the
        // others merge into its index, which then neither regrows nor rehashes. A refused
        // store counts for nothing.
        let journal_sizes: Vec<u64> = configs
            .iter()
            .zip(&refused)
            .map(|(config, refused)| match refused {
                Some(_) => 0,
                None => std::fs::metadata(blank_store(config).journal_path())
                    .map_or(0, |meta| meta.len()),
            })
            .collect();
        let sized_for_all = (0..journal_sizes.len())
            .rev()
            .max_by_key(|&number| journal_sizes[number]);
        let opened: Vec<Opened> = std::thread::scope(|scope| {
            let replays: Vec<_> = configs
                .iter()
                .zip(&refused)
                .enumerate()
                .map(|(number, (config, refused))| match refused {
                    Some(reason) => Err(reason.clone()),
                    None => {
                        let room = if Some(number) == sized_for_all {
                            journal_sizes.iter().sum()
                        } else {
                            0
                        };
                        Ok(scope.spawn(move || open_store(config, room)))
                    }
                })
                .collect();
            replays
                .into_iter()
                .zip(configs)
                .map(|(replay, config)| match replay {
                    Ok(replay) => replay
                        .join()
                        .unwrap_or_else(|_| failed_store(config, "replaying its journal panicked")),
                    Err(reason) => failed_store(config, &reason),
                })
                .collect()
        });
        let replayed = started.elapsed();
        let indexes = opened
            .into_iter()
            .map(|Opened { store, entries }| {
                // Counted from its own journal; a copy another store's newer one shadows is
                // taken off in the merge.
                store.objects.store(entries.len() as u64, Ordering::Relaxed);
                store
                    .bytes_used
                    .store(entries.total_size(), Ordering::Relaxed);
                stores.push(store);
                entries
            })
            .collect();
        let (index, not_compact) = merge_indexes(indexes, &stores, sized_for_all);
        tracing::info!(
            stores = stores.len(),
            objects = index.len(),
            replay_ms = replayed.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "stores opened"
        );
        for number in not_compact {
            if let Ok(mut journal) = stores[number].journal.lock() {
                journal.compact = false;
            }
        }
        Stores {
            stores,
            index: RwLock::new(index),
            damaged: Mutex::new(HashMap::new()),
            damaged_count: AtomicU64::new(0),
            open_files: RwLock::new(ClockMap::new(0)),
            open_file_capacity: 0,
            direct_writes: AtomicBool::new(true),
            replacing: RwLock::new(HashMap::new()),
            replacing_count: AtomicU64::new(0),
        }
    }

    /// Keeps up to `capacity` object files open between requests (0: none). The daemon sizes
    /// it within its open-file limit.
    pub fn with_open_file_cache(self, capacity: u64) -> Stores {
        Stores {
            open_files: RwLock::new(ClockMap::new(capacity)),
            open_file_capacity: capacity,
            ..self
        }
    }

    /// How many object files the open-file cache holds now.
    pub fn open_files_cached(&self) -> usize {
        self.open_files.read().map_or(0, |files| files.len())
    }

    /// The cached open file of the object `meta` describes, if still trusted.
    fn cached_file(&self, path: &str, meta: &ObjectMeta) -> Option<Arc<File>> {
        if self.open_file_capacity == 0 {
            return None;
        }
        let files = self.open_files.read().ok()?;
        let cached = files.get(path)?;
        (cached.store == meta.store
            && cached.sha256 == meta.sha256
            && coarse_clock().saturating_sub(cached.opened) < OPEN_FILE_VALID)
            .then(|| Arc::clone(&cached.file))
    }

    /// Keeps `file` open for the next requests of `path`. The caller holds the index's read
    /// lock and has just seen it still say `meta`: a change (publish, forget) updates the
    /// index under its write lock before it closes the cached file, so what is cached is
    /// `meta`'s file and never outlives a change.
    fn cache_file(&self, path: &str, meta: &ObjectMeta, file: &Arc<File>) {
        if let Ok(mut files) = self.open_files.write() {
            let cached = CachedFile {
                file: Arc::clone(file),
                store: meta.store,
                sha256: meta.sha256,
                opened: coarse_clock(),
            };
            files.insert(path, cached, 1);
        }
    }

    /// Closes the cached file of `path` (it is about to be replaced, moved or deleted).
    fn uncache_file(&self, path: &str) {
        if let Ok(mut files) = self.open_files.write() {
            files.remove(path);
        }
    }

    /// The index entry for an object path, if stored on a store that has not failed and not
    /// found damaged.
    pub fn lookup(&self, path: &str) -> Option<ObjectMeta> {
        let index = self.index.read().ok()?;
        self.lookup_in(&index, path)
    }

    /// [`Stores::lookup`] with the index's read lock held. A publish puts the new entry in
    /// and lets the old version go under its write lock, so a lookup sees one or the other.
    fn lookup_in(&self, index: &Index, path: &str) -> Option<ObjectMeta> {
        let meta = match index.get(path) {
            Some(meta) => meta,
            None => self.being_replaced(path).map(|(meta, _)| meta)?,
        };
        if self.stores[meta.store].failed.load(Ordering::Relaxed) {
            return None;
        }
        if self.damaged_count.load(Ordering::Relaxed) > 0
            && self
                .damaged
                .lock()
                .is_ok_and(|damaged| damaged.get(path) == Some(&meta.sha256))
        {
            return None;
        }
        Some(meta)
    }

    /// Takes the version of an object whose sha256 is `sha256` out of service because its
    /// bytes on disk are not what the index says (found loading it into the RAM cache, or
    /// ending early while sent): it is a miss from now on, and the next fill fetches it
    /// again. A newer version published meanwhile is left alone. Nothing is written.
    pub fn report_damaged(&self, path: &str, sha256: &[u8; 32]) {
        self.report_damaged_if(path, |meta| &meta.sha256 == sha256);
    }

    /// [`Stores::report_damaged`] for exactly the version `version` (store, size, fill time
    /// and sha256): a late report about a file since filled again with the same bytes (after
    /// a delete, or to replace a damaged copy) leaves the new file alone.
    pub fn report_damaged_version(&self, path: &str, version: &ObjectMeta) {
        self.report_damaged_if(path, |meta| meta == version);
    }

    fn report_damaged_if(&self, path: &str, is_the_version: impl Fn(&ObjectMeta) -> bool) {
        // Looked up and marked under one read of the index's lock: a publish that replaces
        // this version either comes after the mark (and clears it once done) or before the
        // lookup (which then finds the new version and leaves it alone).
        let Ok(index) = self.index.read() else {
            return;
        };
        let Some(meta) = self.lookup_in(&index, path).filter(is_the_version) else {
            return;
        };
        self.stores[meta.store]
            .errors
            .fetch_add(1, Ordering::Relaxed);
        self.note_damaged(path, &meta);
    }

    /// Whether the index still holds exactly `meta` for `path`: checked after opening a
    /// file, because a replacement takes the old version out of the index before it renames
    /// the new file over the old name. A file opened while the index still says `meta` is
    /// that version's.
    fn still_indexed(&self, path: &str, meta: &ObjectMeta) -> bool {
        self.index
            .read()
            .is_ok_and(|index| index.get(path).as_ref() == Some(meta))
    }

    /// Opens a looked-up object and checks its size against the index, so a file truncated
    /// or replaced behind the daemon's back is never served as if it were whole.
    pub fn open(&self, path: &str, meta: ObjectMeta) -> Result<OpenObject, StoreError> {
        if let Some((_, file)) = self
            .being_replaced(path)
            .filter(|(replaced, _)| *replaced == meta)
        {
            return Ok(OpenObject {
                file,
                meta,
                fresh: false,
            });
        }
        if let Some(file) = self.cached_file(path, &meta) {
            return Ok(OpenObject {
                file,
                meta,
                fresh: false,
            });
        }
        let store = &self.stores[meta.store];
        let changed = || StoreError::Changed {
            path: path.to_owned(),
        };
        let file_path = store.object_file(path);
        let file = match File::open(&file_path) {
            Ok(file) => file,
            Err(_) if !self.still_indexed(path, &meta) => return Err(changed()),
            Err(err) => {
                self.judge_open_failure(&meta, path, &err);
                return Err(store.io_error(format!("open objects/{path}"), err));
            }
        };
        let len = match file.metadata() {
            Ok(metadata) => metadata.len(),
            Err(err) => {
                self.judge_open_failure(&meta, path, &err);
                return Err(store.io_error(format!("stat objects/{path}"), err));
            }
        };
        let file = Arc::new(file);
        {
            // One look at the index after the open, and the file cached under that same
            // read of its lock: a replacement that began before has taken `meta` out (the
            // file may be its successor's), and one that begins after drops the cached file
            // once it has changed the index. Cached before the look, a successor's file
            // would sit in the cache under `meta` for another request to take meanwhile.
            let Ok(index) = self.index.read() else {
                return Err(changed());
            };
            if index.get(path).as_ref() != Some(&meta) {
                return Err(changed());
            }
            if self.open_file_capacity > 0 && len == meta.size {
                self.cache_file(path, &meta, &file);
            }
        }
        if len != meta.size {
            store.errors.fetch_add(1, Ordering::Relaxed);
            self.note_damaged(path, &meta);
            return Err(StoreError::Damaged {
                store: store.config_path.clone(),
                path: path.to_owned(),
                detail: format!("index says {} bytes, file has {len}", meta.size),
            });
        }
        Ok(OpenObject {
            file,
            meta,
            fresh: true,
        })
    }

    /// After an object could not be opened: a store whose directory vanished or that
    /// answers EIO is failed as a whole (its objects become misses, the others keep
    /// serving); otherwise just this object is damaged.
    fn judge_open_failure(&self, meta: &ObjectMeta, path: &str, err: &io::Error) {
        let store = &self.stores[meta.store];
        let whole_store = err.raw_os_error() == Some(5) || !store.objects_dir().is_dir();
        if whole_store {
            if !store.failed.swap(true, Ordering::Relaxed) {
                let reason = format!("unreadable while serving: {err}");
                tracing::error!(store = %store.config_path.display(), error = %reason, "store failed; its objects are misses until it is repaired and the daemon restarted");
                store.mark_failed(reason);
            }
        } else {
            self.note_damaged(path, meta);
        }
    }

    /// Marks the version `meta` of `path` damaged (see `damaged`).
    fn note_damaged(&self, path: &str, meta: &ObjectMeta) {
        self.uncache_file(path);
        if let Ok(mut damaged) = self.damaged.lock() {
            if damaged.insert(path.to_owned(), meta.sha256).is_none() {
                self.damaged_count.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    path,
                    "stored object missing or the wrong size; the next fill fetches it again"
                );
            }
        }
    }

    /// Checks every store's directories are still there, failing those that vanished (a
    /// fill calls it before planning, so their objects are re-placed).
    pub fn probe(&self) {
        for store in &self.stores {
            if !store.failed.load(Ordering::Relaxed) && !store.objects_dir().is_dir() {
                let reason = format!("{} vanished", store.objects_dir().display());
                tracing::error!(store = %store.config_path.display(), error = %reason, "store failed");
                store.mark_failed(reason);
            }
        }
    }

    /// Checks the path, then picks its store.
    fn place_valid(&self, path: &str, size: u64) -> Result<usize, StoreError> {
        crate::object_path::validate(path).map_err(|source| StoreError::BadPath {
            path: path.to_owned(),
            source,
        })?;
        self.place(path, size)
    }

    /// Removes partial temp files that no planned write will resume (their object left the
    /// manifest or changed). `keep` holds [`writer::partial_name`]s. Returns how many were removed.
    pub fn clean_partials(&self, keep: &std::collections::HashSet<String>) -> usize {
        let mut removed = 0;
        for store in self
            .stores
            .iter()
            .filter(|store| !store.failed.load(Ordering::Relaxed))
        {
            let Ok(entries) = std::fs::read_dir(store.tmp_dir()) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let keep_it = name.to_str().is_some_and(|name| keep.contains(name));
                if !keep_it && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Marks a store full after the file system refused a write (ENOSPC), so placement passes
    /// its objects to the next store for the rest of the fill.
    pub fn mark_full(&self, store: usize) {
        if let Some(store) = self.stores.get(store) {
            store.full.store(true, Ordering::Relaxed);
        }
    }

    /// Forgets every "full" mark; a new fill starts after deletes freed space.
    pub fn clear_full(&self) {
        for store in &self.stores {
            store.full.store(false, Ordering::Relaxed);
        }
    }

    /// Bytes the usable stores can still take, together.
    pub fn free_bytes(&self) -> u64 {
        self.stores
            .iter()
            .filter(|store| !store.failed.load(Ordering::Relaxed))
            .map(|store| {
                store
                    .capacity
                    .saturating_sub(store.bytes_used.load(Ordering::Relaxed))
            })
            .sum()
    }

    /// Runs `read` on the live index of the usable stores under its read lock, for planning
    /// a fill against tens of millions of objects without copying them (publishing waits
    /// meanwhile; serving does not). Objects on failed stores are left out, so a plan
    /// fetches them again.
    pub fn with_usable_index<T>(&self, read: impl FnOnce(&UsableIndex<'_>) -> T) -> T {
        let empty = Index::default();
        let guard = self.index.read();
        let index = match &guard {
            Ok(index) => &**index,
            Err(_) => &empty,
        };
        read(&UsableIndex {
            index,
            stores: &self.stores,
        })
    }

    /// A list of the objects on usable stores, for scrubs (a fill plan reads the live index
    /// instead: [`Stores::with_usable_index`]).
    pub fn snapshot(&self) -> Vec<(String, ObjectMeta)> {
        self.index.read().map_or_else(
            |_| Vec::new(),
            |index| {
                index
                    .iter()
                    .filter(|(_, meta)| !self.stores[meta.store].failed.load(Ordering::Relaxed))
                    .map(|(path, meta)| (path.to_string(), meta))
                    .collect()
            },
        )
    }

    /// Objects found missing, truncated or wrong while serving: still indexed (serving writes
    /// nothing), answered as misses, and for the next fill to fetch again or delete.
    pub fn damaged(&self) -> std::collections::HashSet<String> {
        self.damaged
            .lock()
            .map(|damaged| damaged.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Picks the best-ranked usable store with room for `size` more bytes.
    fn place(&self, path: &str, size: u64) -> Result<usize, StoreError> {
        let candidates: Vec<placement::Candidate<'_>> = self
            .stores
            .iter()
            .map(|store| placement::Candidate {
                id: &store.id,
                weight: store.capacity as f64,
            })
            .collect();
        let replaced = self.index.read().ok().and_then(|index| index.get(path));
        placement::rank(path, &candidates)
            .into_iter()
            .find(|&number| {
                let store = &self.stores[number];
                let freed = replaced
                    .filter(|meta| meta.store == number)
                    .map_or(0, |meta| meta.size);
                let used = store
                    .bytes_used
                    .load(Ordering::Relaxed)
                    .saturating_sub(freed);
                !store.failed.load(Ordering::Relaxed)
                    && !store.full.load(Ordering::Relaxed)
                    && used.saturating_add(size) <= store.capacity
            })
            .ok_or_else(|| StoreError::NoRoom {
                path: path.to_owned(),
                size,
            })
    }

    /// Puts a verified, fsynced temp file in place as the object `meta` describes: the only
    /// way a file reaches `objects/`. The order is what keeps a response's bytes matching its
    /// ETag across crashes and concurrent reads:
    ///
    /// 1. A previous version is retired first (journal `Remove` in its store, made durable,
    ///    then out of the index): in the same store the rename is about to put other bytes
    ///    under its name; in another store (a move) no journal may keep two live versions.
    ///    A crash from here on leaves the object a miss, never the new bytes under the old
    ///    entry; a request that looked it up earlier notices the change after its open
    ///    ([`Stores::open`]) and looks again. Until step 3, viewers get the old version
    ///    from its file, opened before this step (`replacing`): after a crash it is a
    ///    miss, but while the daemon runs a replaced object never answers 404.
    /// 2. The temp file is renamed to `objects/<path>` and the directory fsynced.
    /// 3. The journal records the new version (durable), then the index serves it.
    /// 4. A moved version's old file is deleted.
    ///
    /// A journal append that fails is cut back at once (or its store taken out of service),
    /// so a record that reached the file can never be replayed over a file renamed later.
    ///
    /// A crash between 2 and 3 leaves an unindexed file at the object's name, which the next
    /// fill replaces with the same rename.
    fn publish(&self, path: &str, temp: &Path, meta: ObjectMeta) -> Result<(), StoreError> {
        let store = &self.stores[meta.store];
        let _old_served_meanwhile = self.serve_old_version_while_replaced(path);
        let previous = self.forget(path)?;
        let final_path = store.object_file(path);
        std::fs::rename(temp, &final_path)
            .map_err(|err| store.io_error(format!("rename to {}", final_path.display()), err))?;
        let parent = final_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| store.objects_dir());
        fsync_dir(&parent)
            .map_err(|err| store.io_error(format!("fsync {}", parent.display()), err))?;
        store.append_journal(&[Record::Put(path.to_owned(), meta.journal_entry())])?;
        if let Ok(mut index) = self.index.write() {
            index.insert(path, meta);
            self.stop_serving_old_version(path);
        }
        // After the index changed: a request that opened the path under the old entry either
        // cached its file before this (dropped here) or sees the new entry when it checks
        // the index after opening (and looks up again); see `open` and `still_indexed`.
        self.uncache_file(path);
        store.objects.fetch_add(1, Ordering::Relaxed);
        store.bytes_used.fetch_add(meta.size, Ordering::Relaxed);
        if let Some(previous) = previous.filter(|previous| previous.store != meta.store) {
            self.remove_moved_copy(path, previous);
        }
        self.clear_damaged(path);
        Ok(())
    }

    /// Keeps the indexed version of `path` open and servable (see `replacing`) until the
    /// returned guard drops or the new version enters the index. `None` when there is no
    /// version to keep or its file will not open (the replacement then has the gap it always
    /// had: a miss until it is published). Best effort, with no side effect: a file that
    /// will not open here is judged by the viewer who asks for it, not by the fill.
    fn serve_old_version_while_replaced(&self, path: &str) -> Option<ReplacingGuard<'_>> {
        let meta = self.lookup(path)?;
        let file = File::open(self.stores[meta.store].object_file(path)).ok()?;
        let whole = file
            .metadata()
            .is_ok_and(|metadata| metadata.len() == meta.size);
        // Opened while the index still says `meta`: that version's file (see `open`).
        if !whole || !self.still_indexed(path, &meta) {
            return None;
        }
        let mut replacing = self.replacing.write().ok()?;
        replacing.insert(path.to_owned(), (meta, Arc::new(file)));
        self.replacing_count
            .store(replacing.len() as u64, Ordering::Relaxed);
        Some(ReplacingGuard {
            stores: self,
            path: path.to_owned(),
        })
    }

    /// Lets go of the old version `serve_old_version_while_replaced` kept (published, or
    /// the replacement failed and the object is a miss).
    fn stop_serving_old_version(&self, path: &str) {
        if self.replacing_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Ok(mut replacing) = self.replacing.write() {
            replacing.remove(path);
            self.replacing_count
                .store(replacing.len() as u64, Ordering::Relaxed);
        }
    }

    /// The old version of `path` being replaced right now, and its open file.
    fn being_replaced(&self, path: &str) -> Option<(ObjectMeta, Arc<File>)> {
        if self.replacing_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let replacing = self.replacing.read().ok()?;
        let (meta, file) = replacing.get(path)?;
        Some((*meta, Arc::clone(file)))
    }

    /// Deletes the file of a version that lived on another store once the new one is
    /// published (its journal already recorded the removal in [`Stores::forget`]).
    fn remove_moved_copy(&self, path: &str, previous: ObjectMeta) {
        let old = &self.stores[previous.store];
        if old.failed.load(Ordering::Relaxed) {
            return;
        }
        if let Err(err) = std::fs::remove_file(old.object_file(path)) {
            tracing::warn!(store = %old.config_path.display(), path, error = %err, "could not remove the moved object's old copy");
        }
    }

    /// Removes several objects (a fill's deletes): for each store, one journal append (one
    /// fsync) records the lot, then they leave the index and their files are unlinked. The
    /// same order as [`Stores::remove`], so a crash at any point leaves each object either
    /// listed with its file or gone. A store whose journal refuses keeps its objects; the
    /// first such error is returned beside the count removed.
    pub fn remove_many(&self, paths: &[String]) -> (u64, Option<StoreError>) {
        let mut by_store: HashMap<usize, Vec<(&str, ObjectMeta)>> = HashMap::new();
        if let Ok(index) = self.index.read() {
            for path in paths {
                if let Some(meta) = index.get(path.as_str()) {
                    by_store.entry(meta.store).or_default().push((path, meta));
                }
            }
        }
        let mut removed = 0;
        let mut first_error = None;
        for (number, objects) in by_store {
            if let Err(err) = self.retire(number, &objects) {
                first_error.get_or_insert(err);
                continue;
            }
            let store = &self.stores[number];
            for (path, _) in objects {
                match std::fs::remove_file(store.object_file(path)) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => {
                        tracing::warn!(store = %store.config_path.display(), path, error = %err, "could not unlink a removed object's file");
                    }
                }
                removed += 1;
            }
        }
        (removed, first_error)
    }

    /// Removes an object from the index, its journal and its disk (a fill delete).
    pub fn remove(&self, path: &str) -> Result<bool, StoreError> {
        let Some(meta) = self.forget(path)? else {
            return Ok(false);
        };
        let store = &self.stores[meta.store];
        match std::fs::remove_file(store.object_file(path)) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(err) => Err(store.io_error(format!("remove objects/{path}"), err)),
        }
    }

    /// Takes an object out of its store's journal (durably) and the index (its file is the
    /// caller's to remove, move or rename over); `None` when it was not stored.
    fn forget(&self, path: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let Some(meta) = self.index.read().ok().and_then(|index| index.get(path)) else {
            return Ok(None);
        };
        self.retire(meta.store, &[(path, meta)])?;
        Ok(Some(meta))
    }

    /// Takes `objects` of store `number` out: one durable journal append of their removals
    /// (a failed store's journal takes nothing; its entries still leave the index, and at
    /// start a newer version elsewhere wins over what it keeps), then out of the index, the
    /// open-file cache, the store's counters and the damaged set. Nothing changes if the
    /// journal refuses.
    fn retire(&self, number: usize, objects: &[(&str, ObjectMeta)]) -> Result<(), StoreError> {
        let store = &self.stores[number];
        if !store.failed.load(Ordering::Relaxed) {
            let records: Vec<Record> = objects
                .iter()
                .map(|(path, _)| Record::Remove((*path).to_owned()))
                .collect();
            store.append_journal(&records)?;
        }
        if let Ok(mut index) = self.index.write() {
            for (path, _) in objects {
                index.remove(path);
            }
        }
        for (path, meta) in objects {
            self.uncache_file(path);
            store.objects.fetch_sub(1, Ordering::Relaxed);
            store.bytes_used.fetch_sub(meta.size, Ordering::Relaxed);
            self.clear_damaged(path);
        }
        Ok(())
    }

    /// Forgets a damaged mark once the object is replaced or gone, so lookups stop taking
    /// the damaged set's lock when none is left.
    fn clear_damaged(&self, path: &str) {
        if self.damaged_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Ok(mut damaged) = self.damaged.lock() {
            if damaged.remove(path).is_some() {
                self.damaged_count.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Rewrites every healthy store's journal to hold only its live entries. A store whose
    /// compaction fails keeps its journal (still complete) and the others are compacted all
    /// the same; the first failure is returned.
    pub fn compact_journals(&self) -> Result<(), StoreError> {
        let index = self.index.read().map_err(|_| StoreError::Io {
            store: PathBuf::new(),
            action: "compact".to_owned(),
            source: io::Error::other("index lock poisoned"),
        })?;
        let mut first_failure = None;
        for (number, store) in self.stores.iter().enumerate() {
            if store.failed.load(Ordering::Relaxed) {
                continue;
            }
            let entries: Vec<(&str, JournalEntry)> = index
                .iter()
                .filter(|(_, meta)| meta.store == number)
                .map(|(path, meta)| (path, meta.journal_entry()))
                .collect();
            if let Err(err) = store.compact_journal(&entries) {
                tracing::warn!(store = %store.config_path.display(), error = %err, "index compaction failed; the journal still holds every change");
                first_failure.get_or_insert(err);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Whether fill writes bypass the page cache (`fill.direct_writes`; set at start and on
    /// reload).
    pub fn set_direct_writes(&self, direct: bool) {
        self.direct_writes.store(direct, Ordering::Relaxed);
    }

    /// Whether fill writes bypass the page cache with `O_DIRECT`.
    pub fn direct_writes(&self) -> bool {
        self.direct_writes.load(Ordering::Relaxed)
    }

    /// Number of objects in the index.
    pub fn object_count(&self) -> usize {
        self.index.read().map_or(0, |index| index.len())
    }

    /// Whether at least one store can serve.
    pub fn any_usable(&self) -> bool {
        self.stores
            .iter()
            .any(|store| !store.failed.load(Ordering::Relaxed))
    }

    /// Each store's health and use, in configuration order.
    pub fn status(&self) -> Vec<StoreStatus> {
        self.stores
            .iter()
            .map(|store| {
                let failed = store.failed.load(Ordering::Relaxed);
                StoreStatus {
                    path: store.config_path.clone(),
                    state: if failed {
                        StoreState::Failed
                    } else if store.full.load(Ordering::Relaxed) {
                        StoreState::Full
                    } else {
                        StoreState::Ok
                    },
                    error: store
                        .failure
                        .lock()
                        .ok()
                        .and_then(|failure| failure.clone()),
                    objects: store.objects.load(Ordering::Relaxed),
                    bytes_used: store.bytes_used.load(Ordering::Relaxed),
                    bytes_capacity: store.capacity,
                    errors: store.errors.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

/// Opens (or initialises) one store directory and replays its journal into an index sized
/// for `room_for_bytes` of journal (at least its own); failures become a failed store, not
/// an error.
fn open_store(config: &StoreConfig, room_for_bytes: u64) -> Opened {
    let mut store = blank_store(config);
    match initialise(&store, room_for_bytes) {
        Ok((id, replay, lock)) => {
            store._lock = Some(lock);
            if replay.torn_tail {
                tracing::warn!(store = %config.path.display(), valid_bytes = replay.valid_len, "index journal had a torn tail; it is cut at the next write");
            }
            store.id = id;
            if let Ok(mut journal) = store.journal.lock() {
                journal.valid_len = replay.valid_len;
                journal.compact = !replay.torn_tail
                    && replay.corrupt_regions == 0
                    && replay.records == replay.entries.len() as u64;
            }
            let used = replay.entries.total_size();
            store.capacity = match config.capacity {
                Some(capacity) => capacity.0,
                None => default_capacity(&store.root, used).unwrap_or(0),
            };
            Opened {
                store,
                entries: replay.entries,
            }
        }
        Err(err) => failed_store(config, &err.to_string()),
    }
}

/// Merges the stores' indexes (in configuration order, their entries' store still 0) into
/// one with the store numbers set. The one sized for all of them (else the largest) is
/// taken whole, so a box with one store merges nothing; the others' are merged into it
/// shard by shard, on a thread per core. A path on two stores (a move cut short): the newer
/// copy wins, the earlier store on a tie, the other is taken off its store's counters, and
/// that store's journal is returned as having something to compact.
fn merge_indexes(
    mut indexes: Vec<Index>,
    stores: &[Store],
    sized_for_all: Option<usize>,
) -> (Index, Vec<usize>) {
    // The one sized for all (the largest journal), unless it holds nothing; otherwise the
    // first of the largest: with every store empty, store 0 (a store numbered past what the
    // index can name has failed and holds nothing).
    let sized = sized_for_all.filter(|&number| !indexes[number].is_empty());
    let Some(largest) = sized.or_else(|| {
        (0..indexes.len())
            .rev()
            .max_by_key(|&number| indexes[number].len())
    }) else {
        return (Index::default(), Vec::new());
    };
    let mut merged = std::mem::take(&mut indexes[largest]);
    // Replayed entries say store 0.
    if largest != 0 {
        merged.set_store(largest);
    }
    let others: Vec<(usize, Index)> = indexes
        .into_iter()
        .enumerate()
        .filter(|(number, index)| *number != largest && !index.is_empty())
        .collect();
    if others.is_empty() {
        return (merged, Vec::new());
    }
    let threads = std::thread::available_parallelism().map_or(1, |cpus| cpus.get());
    let losers = merged.merge(others, threads);
    let mut not_compact = Vec::new();
    for (store, size) in losers {
        uncount(&stores[store], size);
        not_compact.push(store);
    }
    (merged, not_compact)
}

/// Takes one object of `size` bytes off a store's counters.
fn uncount(store: &Store, size: u64) {
    store.objects.fetch_sub(1, Ordering::Relaxed);
    store.bytes_used.fetch_sub(size, Ordering::Relaxed);
}

/// A store that cannot be used: reported, failed, holding nothing.
fn failed_store(config: &StoreConfig, reason: &str) -> Opened {
    tracing::error!(store = %config.path.display(), error = %reason, "store unusable");
    let mut store = blank_store(config);
    store.id = config.path.display().to_string();
    store.mark_failed(reason.to_owned());
    Opened {
        store,
        entries: Index::default(),
    }
}

/// A store's state before its directory is opened.
fn blank_store(config: &StoreConfig) -> Store {
    Store {
        config_path: config.path.clone(),
        root: config.path.clone(),
        id: String::new(),
        capacity: 0,
        failed: AtomicBool::new(false),
        full: AtomicBool::new(false),
        failure: Mutex::new(None),
        objects: AtomicU64::new(0),
        bytes_used: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        journal: Mutex::new(JournalState {
            valid_len: 0,
            writer: None,
            compact: false,
        }),
        _lock: None,
    }
}

/// Creates the layout if missing, reads the store id and replays the journal.
fn initialise(store: &Store, room_for_bytes: u64) -> io::Result<(String, journal::Replay, File)> {
    std::fs::create_dir_all(&store.root).map_err(|err| annotate(err, "create", &store.root))?;
    let mut created = false;
    for dir in [
        store.objects_dir(),
        store.tmp_dir(),
        store.root.join("index"),
    ] {
        match std::fs::create_dir(&dir) {
            Ok(()) => created = true,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(annotate(err, "create", &dir)),
        }
    }
    if created {
        // The new directories' entries must survive a crash with what is put in them.
        fsync_dir(&store.root).map_err(|err| annotate(err, "fsync", &store.root))?;
    }
    let lock = lock_store(&store.root)?;
    let id_path = store.root.join("store-id");
    let id = match std::fs::read_to_string(&id_path) {
        Ok(id) => id.trim().to_owned(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let id = new_store_id(&store.root);
            write_durably(&id_path, format!("{id}\n").as_bytes())?;
            id
        }
        Err(err) => return Err(annotate(err, "read", &id_path)),
    };
    let replay = journal::replay_sized(&store.journal_path(), room_for_bytes)?;
    if replay.corrupt_regions > 0 {
        tracing::warn!(store = %store.config_path.display(), regions = replay.corrupt_regions, "index journal has damaged records; they were skipped (their objects are fetched again by the next fill) and the next compaction rewrites it");
    }
    Ok((id, replay, lock))
}

/// Takes the store's exclusive lock, or says who holds it.
fn lock_store(root: &Path) -> io::Result<File> {
    let path = root.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| annotate(err, "open", &path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            "in use by another tidecache process (a running daemon, or a verify)",
        )),
        Err(err) => Err(annotate(io::Error::from(err), "lock", &path)),
    }
}

/// An id unique enough to tell stores apart: a hash of the path, the time and the process.
fn new_store_id(root: &Path) -> String {
    let mut hasher = Sha256::new();
    hasher.update(root.as_os_str().as_encoded_bytes());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    hasher.update(nanos.to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    hex(&hasher.finalize()[..16])
}

/// Free space plus what the store already holds, less a reserve of the file system's size.
fn default_capacity(root: &Path, used: u64) -> io::Result<u64> {
    let stats = rustix::fs::statvfs(root).map_err(io::Error::from)?;
    let free = stats.f_bavail.saturating_mul(stats.f_frsize);
    let total = stats.f_blocks.saturating_mul(stats.f_frsize);
    let reserve = (total as f64 * RESERVE_FRACTION) as u64;
    Ok(free.saturating_add(used).saturating_sub(reserve))
}

use crate::durable::write_atomically as write_durably;

/// Makes a directory's entries (a rename, a new file) durable.
pub(crate) use crate::durable::fsync_dir;

fn annotate(err: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{action} {}: {err}", path.display()))
}

/// Bytes from hex text (either case), or `None` when it is not whole hex pairs.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let high = (pair[0] as char).to_digit(16)?;
            let low = (pair[1] as char).to_digit(16)?;
            Some((high * 16 + low) as u8)
        })
        .collect()
}

/// Lower-case hex of bytes (sha256 digests, ids).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 15) as usize] as char);
    }
    out
}

/// Current time as Unix seconds.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, StoreConfig};

    fn meta(size: u64, filled_at: i64) -> JournalEntry {
        JournalEntry {
            size,
            sha256: [size as u8; 32],
            filled_at,
        }
    }

    /// A store directory whose journal lists `objects` (path, size, fill time).
    fn store_with(dir: &Path, objects: &[(&str, u64, i64)]) -> StoreConfig {
        std::fs::create_dir_all(dir.join("index")).unwrap();
        let mut journal = JournalWriter::open(&dir.join("index/journal"), 0).unwrap();
        let records: Vec<Record> = objects
            .iter()
            .map(|(path, size, at)| Record::Put((*path).to_owned(), meta(*size, *at)))
            .collect();
        journal.append(&records).unwrap();
        StoreConfig {
            path: dir.to_owned(),
            capacity: Some(ByteSize(1 << 30)),
        }
    }

    #[test]
    fn a_path_on_two_stores_is_the_newer_copy_and_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let configs = [
            store_with(
                &dir.path().join("a"),
                &[("x.ts", 10, 100), ("y.ts", 1, 100), ("tie.ts", 3, 50)],
            ),
            store_with(
                &dir.path().join("b"),
                &[("x.ts", 20, 200), ("z.ts", 2, 100), ("tie.ts", 4, 50)],
            ),
        ];
        let stores = Stores::load(&configs);
        let x = stores.lookup("x.ts").unwrap();
        assert_eq!((x.store, x.size), (1, 20), "the newer copy");
        let tie = stores.lookup("tie.ts").unwrap();
        assert_eq!((tie.store, tie.size), (0, 3), "the earlier store on a tie");
        assert_eq!(stores.object_count(), 4);
        let status = stores.status();
        assert_eq!(
            (status[0].objects, status[0].bytes_used),
            (2, 4),
            "y and tie"
        );
        assert_eq!(
            (status[1].objects, status[1].bytes_used),
            (2, 22),
            "x and z"
        );
        assert!(stores.lookup("y.ts").is_some() && stores.lookup("z.ts").is_some());
    }

    /// Written by a review of the merge into the store sized for all: five stores with
    /// duplicates across them (many ties), the largest journal on a store with few entries,
    /// a store without a journal and one naming another's directory (failed); every lookup
    /// and every store's counters agree with a model.
    #[test]
    fn a_box_of_stores_with_duplicates_churn_and_a_failed_store_loads_as_the_model_says() {
        use std::collections::HashMap;
        let dir = tempfile::tempdir().unwrap();
        // store 0: small, store 1: huge journal of removes (sized store, few entries),
        // store 2: most entries, store 3: missing journal, store 4: same dir as 2 (failed).
        let mut lists: Vec<Vec<Record>> = vec![Vec::new(), Vec::new(), Vec::new()];
        let mut model: HashMap<String, (usize, u64, i64)> = HashMap::new();
        let mut state: u64 = 99;
        for n in 0..3000u64 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let path = format!("t{}/seg_{n:05}.m4s", n % 17);
            for (s, list) in lists.iter_mut().enumerate() {
                if (state >> (20 + s)) & 1 == 0 {
                    continue;
                }
                // Four fill times: many ties.
                let at = ((state >> (30 + 3 * s)) % 4) as i64;
                let size = n * 10 + s as u64 + 1;
                list.push(Record::Put(path.clone(), meta(size, at)));
                let keep = model.get(&path).is_some_and(|&(ks, _, kat)| {
                    (kat, std::cmp::Reverse(ks)) >= (at, std::cmp::Reverse(s))
                });
                if !keep {
                    model.insert(path.clone(), (s, size, at));
                }
            }
        }
        // Churn on store 1: many other paths put and removed, the largest journal.
        for n in 0..20000u64 {
            let p = format!("churn/long/path/to/make/the/journal/large/{n:06}.m4s");
            lists[1].push(Record::Put(p.clone(), meta(7, 1)));
            lists[1].push(Record::Remove(p));
        }
        let mut configs = Vec::new();
        for (s, records) in lists.iter().enumerate() {
            let d = dir.path().join(format!("s{s}"));
            std::fs::create_dir_all(d.join("index")).unwrap();
            let mut journal = JournalWriter::open(&d.join("index/journal"), 0).unwrap();
            journal.append(records).unwrap();
            configs.push(StoreConfig {
                path: d,
                capacity: Some(ByteSize(1 << 40)),
            });
        }
        configs.push(StoreConfig {
            path: dir.path().join("s3"),
            capacity: Some(ByteSize(1 << 40)),
        });
        configs.push(StoreConfig {
            path: dir.path().join("s2"),
            capacity: Some(ByteSize(1 << 40)),
        });
        let stores = Stores::load(&configs);
        assert_eq!(stores.object_count(), model.len());
        let mut objects = [0u64; 5];
        let mut bytes = [0u64; 5];
        for (path, &(s, size, at)) in &model {
            let got = stores.lookup(path).unwrap();
            assert_eq!(
                (got.store, got.size, got.filled_at),
                (s, size, at),
                "{path}"
            );
            objects[s] += 1;
            bytes[s] += size;
        }
        let status = stores.status();
        for s in 0..5 {
            assert_eq!(
                (status[s].objects, status[s].bytes_used),
                (objects[s], bytes[s]),
                "store {s}"
            );
        }
        let total: u64 = bytes.iter().sum();
        assert_eq!(stores.index.read().unwrap().total_size(), total);
    }

    /// The store sized for all is the last one and holds duplicates (a tie, an older copy),
    /// or holds nothing live (the merge then goes into the largest index).
    #[test]
    fn the_store_sized_for_all_may_be_the_last_or_hold_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |name: &str, records: Vec<Record>| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(d.join("index")).unwrap();
            let mut journal = JournalWriter::open(&d.join("index/journal"), 0).unwrap();
            journal.append(&records).unwrap();
            StoreConfig {
                path: d,
                capacity: Some(ByteSize(1 << 40)),
            }
        };
        let churn = |keep: bool| {
            let mut r = Vec::new();
            for n in 0..5000 {
                let p = format!("churn/{n:06}/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.m4s");
                r.push(Record::Put(p.clone(), meta(1, 1)));
                r.push(Record::Remove(p));
            }
            if keep {
                r.push(Record::Put("tie.ts".into(), meta(30, 5)));
                r.push(Record::Put("old.ts".into(), meta(31, 1)));
            }
            r
        };
        for keep in [true, false] {
            let configs = vec![
                mk(
                    &format!("a{keep}"),
                    vec![
                        Record::Put("tie.ts".into(), meta(10, 5)),
                        Record::Put("old.ts".into(), meta(11, 2)),
                    ],
                ),
                mk(
                    &format!("b{keep}"),
                    vec![
                        Record::Put("tie.ts".into(), meta(20, 5)),
                        Record::Put("old.ts".into(), meta(21, 3)),
                        Record::Put("b.ts".into(), meta(22, 3)),
                    ],
                ),
                mk(&format!("c{keep}"), churn(keep)),
            ];
            let stores = Stores::load(&configs);
            let tie = stores.lookup("tie.ts").unwrap();
            assert_eq!((tie.store, tie.size), (0, 10));
            let old = stores.lookup("old.ts").unwrap();
            assert_eq!((old.store, old.size), (1, 21));
            let st = stores.status();
            assert_eq!((st[0].objects, st[0].bytes_used), (1, 10), "{keep}");
            assert_eq!((st[1].objects, st[1].bytes_used), (2, 43), "{keep}");
            assert_eq!((st[2].objects, st[2].bytes_used), (0, 0), "{keep}");
            assert_eq!(stores.object_count(), 3);
            for n in [0, 1] {
                assert!(
                    !stores.stores[n].journal.lock().unwrap().compact,
                    "compact {n} {keep}"
                );
            }
            assert!(!stores.stores[2].journal.lock().unwrap().compact);
        }
    }
}
