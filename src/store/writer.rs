//! The only way bytes get into a store: a writer that verifies before it publishes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::buffers::{BufferPool, PooledBuffer};
use super::{ObjectMeta, StoreError, Stores, hex, unix_now};
use crate::durable::fsync_dir;

/// What offsets, lengths and buffer addresses of `O_DIRECT` writes are multiples of: the
/// logical block of NVMe drives and of the file systems on them. A file system that wants
/// more (a drive formatted with 8 KiB sectors) refuses a write with EINVAL, and that object
/// goes on through the page cache.
pub const DIRECT_ALIGN: usize = 4096;
/// Bytes gathered before one direct write: large enough that a drive sees big sequential
/// writes, small enough per transfer in flight.
const DIRECT_CHUNK: usize = 1 << 20;

/// Where a writer's bytes go: straight to the file through the page cache, or gathered in
/// an aligned buffer and written with `O_DIRECT`, so a night's once-written objects do not
/// evict the hot segments viewers read (nor stall them in dirty-page writeback).
#[derive(Debug)]
struct Sink {
    file: File,
    /// Present while the file is written with `O_DIRECT`.
    direct: Option<DirectBuffer>,
}

/// Direct sinks' buffers, reused from one object to the next (see [`BufferPool`]): as many
/// as transfers usually run at once.
static DIRECT_BUFFERS: BufferPool = BufferPool::new(DIRECT_CHUNK + DIRECT_ALIGN, 32);

/// The aligned buffer of a direct sink.
#[derive(Debug)]
struct DirectBuffer {
    /// Over-allocated by [`DIRECT_ALIGN`]; the chunk starts at `start`, aligned.
    buffer: PooledBuffer,
    start: usize,
    /// Bytes of the chunk filled.
    filled: usize,
    /// The file offset the chunk's first byte goes to.
    position: u64,
}

impl DirectBuffer {
    fn new(position: u64) -> DirectBuffer {
        let mut buffer = DIRECT_BUFFERS.take();
        // Sized once per allocation; a reused buffer keeps its length and old bytes, of
        // which only those written since are ever read.
        if buffer.len() < DIRECT_CHUNK + DIRECT_ALIGN {
            buffer.resize(DIRECT_CHUNK + DIRECT_ALIGN, 0);
        }
        let start = buffer.as_ptr().align_offset(DIRECT_ALIGN);
        DirectBuffer {
            buffer,
            start,
            filled: 0,
            position,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buffer[self.start..self.start + self.filled]
    }
}

/// Whether an error says the file system will not take this direct write (alignment).
fn refuses_direct(err: &io::Error) -> bool {
    err.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

impl Sink {
    fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while let Some(direct) = &mut self.direct {
            if data.is_empty() {
                return Ok(());
            }
            let at = direct.start + direct.filled;
            let take = data.len().min(DIRECT_CHUNK - direct.filled);
            direct.buffer[at..at + take].copy_from_slice(&data[..take]);
            direct.filled += take;
            data = &data[take..];
            if direct.filled < DIRECT_CHUNK {
                continue;
            }
            match self.file.write_all(direct.pending()) {
                Ok(()) => {
                    direct.position += DIRECT_CHUNK as u64;
                    direct.filled = 0;
                }
                Err(err) if refuses_direct(&err) => self.fall_back()?,
                Err(err) => return Err(err),
            }
        }
        self.file.write_all(data)
    }

    /// Goes on through the page cache: `O_DIRECT` off, what is gathered written at its
    /// place (a refused write may have moved the file offset).
    fn fall_back(&mut self) -> io::Result<()> {
        let Some(direct) = self.direct.take() else {
            return Ok(());
        };
        let flags = rustix::fs::fcntl_getfl(&self.file).map_err(io::Error::from)?;
        rustix::fs::fcntl_setfl(&self.file, flags - rustix::fs::OFlags::DIRECT)
            .map_err(io::Error::from)?;
        self.file.seek(io::SeekFrom::Start(direct.position))?;
        self.file.write_all(direct.pending())
    }

    /// Writes what is gathered: its aligned part directly, the tail (under one block)
    /// through the page cache, and returns the file, done with. No write may follow.
    fn into_flushed(mut self) -> io::Result<File> {
        if let Some(direct) = &mut self.direct {
            let aligned = direct.filled / DIRECT_ALIGN * DIRECT_ALIGN;
            let whole = &direct.buffer[direct.start..direct.start + aligned];
            match self.file.write_all(whole) {
                Ok(()) => {
                    direct.start += aligned;
                    direct.filled -= aligned;
                    direct.position += aligned as u64;
                }
                Err(err) if refuses_direct(&err) => {}
                Err(err) => return Err(err),
            }
            // A tail under one block (or what was refused) goes through the page cache.
            if direct.filled > 0 {
                self.fall_back()?;
            }
        }
        Ok(self.file)
    }

    /// Puts the next write at `offset` (a resume).
    fn seek_to(&mut self, offset: u64) -> io::Result<()> {
        self.file.seek(io::SeekFrom::Start(offset))?;
        if let Some(direct) = &mut self.direct {
            direct.position = offset;
        }
        Ok(())
    }

    /// Empties the file and the buffer, back to offset 0.
    fn reset(&mut self) -> io::Result<()> {
        if let Some(direct) = &mut self.direct {
            direct.filled = 0;
        }
        self.file.set_len(0)?;
        self.seek_to(0)
    }
}

/// Opens (creating or truncating as `options` says) a temp file for writing, with
/// `O_DIRECT` when `direct` and the file system takes it; otherwise through the page cache.
fn open_sink(options: &mut OpenOptions, temp: &std::path::Path, direct: bool) -> io::Result<Sink> {
    use std::os::unix::fs::OpenOptionsExt;
    if direct {
        let flags = rustix::fs::OFlags::DIRECT.bits() as i32;
        match options.clone().custom_flags(flags).open(temp) {
            Ok(file) => {
                return Ok(Sink {
                    file,
                    direct: Some(DirectBuffer::new(0)),
                });
            }
            // tmpfs and some others refuse O_DIRECT: the page cache it is.
            Err(err) if refuses_direct(&err) => {}
            Err(err) => return Err(err),
        }
    }
    options.open(temp).map(|file| Sink { file, direct: None })
}

/// An object being written into a store's `tmp/`.
///
/// It hashes every byte as it is written. [`finish`](ObjectWriter::finish) checks the size and
/// sha256 against what the manifest promised, fsyncs the file, and hands it to the store's
/// publish, which retires a previous version, renames it to `objects/<path>`, fsyncs the
/// directory, and only then records it in the journal and the index. Dropped without `finish` (an error, a cancelled transfer), the temp file is removed:
/// a torn object can never become visible.
#[derive(Debug)]
pub struct ObjectWriter {
    stores: Arc<Stores>,
    store: usize,
    path: String,
    temp: PathBuf,
    sink: Option<Sink>,
    hasher: Sha256,
    written: u64,
    expected_size: u64,
    expected_sha256: [u8; 32],
    /// Set by [`ObjectWriter::checkpoint`]: the temp file stays for a later resume.
    keep_temp: bool,
    /// Set by [`ObjectWriter::seal`]: verified and durable, ready to publish.
    sealed: bool,
}

impl ObjectWriter {
    /// Starts writing an object to the store placement picks for it. The writer publishes
    /// the object only when [`ObjectWriter::finish`] verifies it.
    pub fn begin(
        stores: &Arc<Stores>,
        path: &str,
        size: u64,
        sha256: [u8; 32],
    ) -> Result<ObjectWriter, StoreError> {
        let store = stores.place_valid(path, size)?;
        ObjectWriter::create(Arc::clone(stores), store, path, size, sha256)
    }

    /// Like [`ObjectWriter::begin`], but continues a partial temp file a checkpointed or
    /// interrupted earlier write of the same object (same path and sha256) left in the chosen
    /// store, re-hashing what it holds. [`ObjectWriter::written`] tells where to resume.
    pub fn begin_or_resume(
        stores: &Arc<Stores>,
        path: &str,
        size: u64,
        sha256: [u8; 32],
    ) -> Result<ObjectWriter, StoreError> {
        let store = stores.place_valid(path, size)?;
        ObjectWriter::resume_or_create(Arc::clone(stores), store, path, size, sha256)
    }

    fn create(
        stores: Arc<Stores>,
        store: usize,
        path: &str,
        expected_size: u64,
        expected_sha256: [u8; 32],
    ) -> Result<ObjectWriter, StoreError> {
        let target = &stores.stores[store];
        let temp = target.tmp_dir().join(temp_name(path, &expected_sha256));
        let sink = open_sink(
            OpenOptions::new().write(true).create(true).truncate(true),
            &temp,
            stores.direct_writes(),
        )
        .map_err(|err| target.io_error(format!("create {}", temp.display()), err))?;
        Ok(ObjectWriter::at(
            stores,
            store,
            path,
            (temp, sink),
            (Sha256::new(), 0),
            (expected_size, expected_sha256),
        ))
    }

    /// A writer on an open temp file whose first `written` bytes `hasher` has seen.
    fn at(
        stores: Arc<Stores>,
        store: usize,
        path: &str,
        (temp, sink): (PathBuf, Sink),
        (hasher, written): (Sha256, u64),
        (expected_size, expected_sha256): (u64, [u8; 32]),
    ) -> ObjectWriter {
        ObjectWriter {
            stores,
            store,
            path: path.to_owned(),
            temp,
            sink: Some(sink),
            hasher,
            written,
            expected_size,
            expected_sha256,
            keep_temp: false,
            sealed: false,
        }
    }

    /// Continues the partial temp file of the same (path, sha256) in `store` if there is one
    /// no longer than the object, re-hashing its bytes; otherwise starts afresh.
    fn resume_or_create(
        stores: Arc<Stores>,
        store: usize,
        path: &str,
        expected_size: u64,
        expected_sha256: [u8; 32],
    ) -> Result<ObjectWriter, StoreError> {
        let temp = stores.stores[store]
            .tmp_dir()
            .join(temp_name(path, &expected_sha256));
        let partial = OpenOptions::new().read(true).write(true).open(&temp);
        let Ok(mut file) = partial else {
            return ObjectWriter::create(stores, store, path, expected_size, expected_sha256);
        };
        // Direct writes continue at a block boundary: what is past the last whole block is
        // cut and fetched again (under 4 KiB). A partial already whole is kept whole: nothing
        // more is written to it.
        let direct = stores.direct_writes();
        let kept = match file.metadata() {
            Ok(meta) if meta.len() > expected_size => {
                drop(file);
                return ObjectWriter::create(stores, store, path, expected_size, expected_sha256);
            }
            Ok(meta) if direct && meta.len() != expected_size => {
                meta.len() / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64
            }
            Ok(meta) => meta.len(),
            Err(_) => {
                drop(file);
                return ObjectWriter::create(stores, store, path, expected_size, expected_sha256);
            }
        };
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut written: u64 = 0;
        let rehashed = loop {
            let want = buffer
                .len()
                .min(usize::try_from(kept - written).unwrap_or(usize::MAX));
            if want == 0 {
                break Ok(());
            }
            match file.read(&mut buffer[..want]) {
                Ok(0) => break Ok(()),
                Ok(read) => {
                    hasher.update(&buffer[..read]);
                    written += read as u64;
                }
                Err(err) => break Err(err),
            }
        };
        let sink = rehashed
            .and_then(|()| file.set_len(written))
            .and_then(|()| {
                drop(file);
                let mut sink = open_sink(OpenOptions::new().write(true), &temp, direct)?;
                sink.seek_to(written)?;
                Ok(sink)
            });
        let sink = match sink {
            Ok(sink) if written <= expected_size => sink,
            _ => return ObjectWriter::create(stores, store, path, expected_size, expected_sha256),
        };
        Ok(ObjectWriter::at(
            stores,
            store,
            path,
            (temp, sink),
            (hasher, written),
            (expected_size, expected_sha256),
        ))
    }

    /// Which store (index in configuration order) the object is being written to.
    pub fn store(&self) -> usize {
        self.store
    }

    /// Throws away what was written and starts the object over (the origin would not resume).
    pub fn restart(&mut self) -> Result<(), StoreError> {
        let store = &self.stores.stores[self.store];
        let sink = self.sink.as_mut().ok_or_else(|| {
            store.io_error("restart", io::Error::other("writer already finished"))
        })?;
        sink.reset()
            .map_err(|err| store.io_error(format!("truncate {}", self.temp.display()), err))?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    /// Stops writing but keeps the temp file, flushed to disk, for a later
    /// [`ObjectWriter::begin_or_resume`] to continue (the fill window ended mid-object).
    pub fn checkpoint(mut self) -> Result<u64, StoreError> {
        let store = &self.stores.stores[self.store];
        if let Some(sink) = self.sink.take() {
            sink.into_flushed()
                .and_then(|file| file.sync_data())
                .map_err(|err| {
                    store.io_error(format!("write and fsync {}", self.temp.display()), err)
                })?;
        }
        self.keep_temp = true;
        Ok(self.written)
    }

    /// Whether this writer bypasses the page cache (`O_DIRECT`).
    pub fn is_direct(&self) -> bool {
        self.sink.as_ref().is_some_and(|sink| sink.direct.is_some())
    }

    /// The object path being written.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends bytes. Refuses to grow past the expected size, so a wrong origin cannot fill a disk.
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let after = self.written.saturating_add(data.len() as u64);
        if after > self.expected_size {
            return Err(StoreError::SizeMismatch {
                path: self.path.clone(),
                expected: self.expected_size,
                actual: after,
            });
        }
        let store = &self.stores.stores[self.store];
        let sink = self
            .sink
            .as_mut()
            .ok_or_else(|| store.io_error("write", io::Error::other("writer already finished")))?;
        sink.write_all(data)
            .map_err(|err| store.io_error(format!("write {}", self.temp.display()), err))?;
        self.hasher.update(data);
        self.written = after;
        Ok(())
    }

    /// Verifies, makes durable, renames into place and publishes. See the type's docs.
    pub fn finish(mut self) -> Result<ObjectMeta, StoreError> {
        self.seal()?;
        let meta = ObjectMeta {
            store: self.store,
            size: self.written,
            sha256: self.expected_sha256,
            filled_at: unix_now(),
        };
        self.stores.publish(&self.path, &self.temp, meta)?;
        Ok(meta)
    }

    /// The first half of [`finish`](ObjectWriter::finish), which takes no lock the store's
    /// readers take, so it may run where CPU time is scarce (the fill's idle threads):
    /// checks the size and sha256, writes what is gathered, fsyncs the file and makes the
    /// object's directory. Once sealed, nothing more may be written; sealing again does
    /// nothing.
    pub fn seal(&mut self) -> Result<(), StoreError> {
        if self.sealed {
            return Ok(());
        }
        if self.written != self.expected_size {
            return Err(StoreError::SizeMismatch {
                path: self.path.clone(),
                expected: self.expected_size,
                actual: self.written,
            });
        }
        let actual: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if actual != self.expected_sha256 {
            return Err(StoreError::HashMismatch {
                path: self.path.clone(),
                expected: hex(&self.expected_sha256),
                actual: hex(&actual),
            });
        }
        let store = &self.stores.stores[self.store];
        let final_path = store.object_file(&self.path);
        if let Some(sink) = self.sink.take() {
            sink.into_flushed()
                .and_then(|file| file.sync_all())
                .map_err(|err| {
                    store.io_error(format!("write and fsync {}", self.temp.display()), err)
                })?;
        }
        let parent = final_path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| store.objects_dir());
        create_dirs_durably(&store.objects_dir(), &parent)
            .map_err(|err| store.io_error(format!("create {}", parent.display()), err))?;
        self.sealed = true;
        Ok(())
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if self.keep_temp {
            return;
        }
        if self.sink.take().is_some() || self.temp.exists() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// The temp file name a write of (path, sha256) uses, so a fill can tell which partial files
/// in `tmp/` it will resume and which are stale.
pub fn partial_name(path: &str, sha256: &[u8; 32]) -> String {
    temp_name(path, sha256)
}

/// A deterministic temp name per (path, content), so a later resume can find its partial file.
fn temp_name(path: &str, sha256: &[u8; 32]) -> String {
    let path_hash = Sha256::digest(path.as_bytes());
    format!("{}-{}.part", hex(&path_hash[..12]), hex(&sha256[..8]))
}

/// Creates `dir` and any missing ancestors below `root`, fsyncing each parent that gained an
/// entry so the new directories survive a crash along with the file renamed into them.
fn create_dirs_durably(root: &std::path::Path, dir: &std::path::Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cursor = dir;
    while !cursor.is_dir() && cursor != root {
        missing.push(cursor.to_path_buf());
        match cursor.parent() {
            Some(parent) => cursor = parent,
            None => break,
        }
    }
    for created in missing.iter().rev() {
        match std::fs::create_dir(created) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
        if let Some(parent) = created.parent() {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, StoreConfig};

    fn stores(dir: &std::path::Path) -> Arc<Stores> {
        stores_keeping_open(dir, 0)
    }

    fn stores_keeping_open(dir: &std::path::Path, open_files: u64) -> Arc<Stores> {
        Arc::new(
            Stores::load(&[StoreConfig {
                path: dir.to_owned(),
                capacity: Some(ByteSize(1 << 20)),
            }])
            .with_open_file_cache(open_files),
        )
    }

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    /// Stores with room for the direct-write tests' objects.
    fn roomy_stores(dir: &std::path::Path) -> Arc<Stores> {
        Arc::new(Stores::load(&[StoreConfig {
            path: dir.to_owned(),
            capacity: Some(ByteSize(64 << 20)),
        }]))
    }

    /// Bytes no two offsets of which repeat in a short period (a misplaced block shows).
    fn numbered(len: usize) -> Vec<u8> {
        (0..len).map(|at| (at * 7 + at / 4093) as u8).collect()
    }

    /// Whether `dir`'s file system takes O_DIRECT (tmpfs does not).
    fn takes_direct(dir: &std::path::Path) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(dir.join("direct-probe"))
            .is_ok()
    }

    fn served(stores: &Stores, path: &str) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let meta = stores.lookup(path).unwrap();
        let object = stores.open(path, meta).unwrap();
        let mut bytes = vec![0u8; meta.size as usize];
        object.file.read_exact_at(&mut bytes, 0).unwrap();
        bytes
    }

    #[test]
    fn a_direct_write_of_any_size_in_any_pieces_stores_exactly_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let stores = roomy_stores(dir.path());
        for len in [
            0,
            1,
            DIRECT_ALIGN,
            DIRECT_CHUNK,
            DIRECT_CHUNK * 2 + DIRECT_ALIGN + 17,
        ] {
            let data = numbered(len);
            let path = format!("t/{len}.ts");
            let mut writer = ObjectWriter::begin(&stores, &path, len as u64, sha(&data)).unwrap();
            assert_eq!(writer.is_direct(), takes_direct(dir.path()));
            for piece in data.chunks(65_537) {
                writer.write(piece).unwrap();
            }
            writer.finish().unwrap();
            assert!(served(&stores, &path) == data, "{len} bytes");
        }
        stores.set_direct_writes(false);
        let data = numbered(5000);
        let mut writer = ObjectWriter::begin(&stores, "t/b.ts", 5000, sha(&data)).unwrap();
        assert!(!writer.is_direct(), "fill.direct_writes = false");
        writer.write(&data).unwrap();
        writer.finish().unwrap();
        assert!(served(&stores, "t/b.ts") == data);
    }

    #[test]
    fn a_direct_write_the_file_system_refuses_goes_on_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        if !takes_direct(dir.path()) {
            return;
        }
        // A misaligned buffer gets EINVAL from the kernel, as a file system whose blocks are
        // larger than DIRECT_ALIGN answers an aligned one: in a whole chunk, and in the last
        // (partial) chunk a finish writes.
        for len in [DIRECT_CHUNK * 2 + 5000, 3 * DIRECT_ALIGN + 100] {
            let temp = dir.path().join(format!("refused-{len}"));
            let mut sink = open_sink(
                OpenOptions::new().write(true).create(true).truncate(true),
                &temp,
                true,
            )
            .unwrap();
            let direct = sink.direct.as_mut().unwrap();
            direct.start += 1;
            let data = numbered(len);
            for piece in data.chunks(70_001) {
                sink.write_all(piece).unwrap();
            }
            assert_eq!(sink.direct.is_some(), len < DIRECT_CHUNK, "{len}");
            sink.into_flushed().unwrap().sync_all().unwrap();
            assert!(std::fs::read(&temp).unwrap() == data, "{len} bytes");
        }
    }

    #[test]
    fn a_direct_write_checkpointed_mid_block_resumes_at_a_block_boundary_and_restarts_clean() {
        let dir = tempfile::tempdir().unwrap();
        let stores = roomy_stores(dir.path());
        let data = numbered(DIRECT_CHUNK * 3 + 999);
        let sha256 = sha(&data);
        let size = data.len() as u64;
        let cut = DIRECT_CHUNK + 3 * DIRECT_ALIGN + 123;
        let mut writer = ObjectWriter::begin_or_resume(&stores, "t/a.ts", size, sha256).unwrap();
        writer.write(&data[..cut]).unwrap();
        assert_eq!(writer.checkpoint().unwrap(), cut as u64);

        let mut writer = ObjectWriter::begin_or_resume(&stores, "t/a.ts", size, sha256).unwrap();
        let resumed = writer.written() as usize;
        if takes_direct(dir.path()) {
            assert_eq!(
                resumed,
                cut / DIRECT_ALIGN * DIRECT_ALIGN,
                "back to a block boundary"
            );
        } else {
            assert_eq!(resumed, cut);
        }
        writer.write(&data[resumed..resumed + 10_000]).unwrap();
        writer.restart().unwrap();
        assert_eq!(writer.written(), 0);
        writer.write(&data).unwrap();
        writer.finish().unwrap();
        assert!(served(&stores, "t/a.ts") == data);
    }

    #[test]
    fn a_checkpointed_write_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let set = stores(dir.path());
        // To the byte through the page cache; direct writes resume at a block boundary
        // (a_direct_write_checkpointed_mid_block_resumes_at_a_block_boundary_and_restarts_clean).
        set.set_direct_writes(false);
        let data = b"0123456789abcdef";
        let mut writer = ObjectWriter::begin(&set, "t/r.ts", 16, sha(data)).unwrap();
        writer.write(&data[..6]).unwrap();
        assert_eq!(writer.checkpoint().unwrap(), 6);
        assert!(
            set.lookup("t/r.ts").is_none(),
            "a partial object is never visible"
        );
        let mut resumed = ObjectWriter::begin_or_resume(&set, "t/r.ts", 16, sha(data)).unwrap();
        assert_eq!(resumed.written(), 6);
        resumed.write(&data[6..]).unwrap();
        resumed.finish().unwrap();
        assert_eq!(set.lookup("t/r.ts").unwrap().size, 16);
    }

    fn put(set: &Arc<Stores>, path: &str, data: &[u8]) -> ObjectMeta {
        let mut writer = ObjectWriter::begin(set, path, data.len() as u64, sha(data)).unwrap();
        writer.write(data).unwrap();
        writer.finish().unwrap()
    }

    fn read_all(set: &Stores, path: &str) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let meta = set.lookup(path).unwrap();
        let object = set.open(path, meta).unwrap();
        let mut bytes = vec![0; meta.size as usize];
        object.file.read_exact_at(&mut bytes, 0).unwrap();
        bytes
    }

    #[test]
    fn the_open_file_cache_reuses_files_and_never_outlives_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let set = stores_keeping_open(dir.path(), 2);
        put(&set, "a.ts", b"first");
        let meta = set.lookup("a.ts").unwrap();
        let once = set.open("a.ts", meta).unwrap().file;
        let twice = set.open("a.ts", meta).unwrap().file;
        assert!(Arc::ptr_eq(&once, &twice), "the second open is a cache hit");

        put(&set, "a.ts", b"second, longer");
        assert_eq!(
            set.open_files_cached(),
            0,
            "a refill closes the old file at once"
        );
        assert_eq!(
            read_all(&set, "a.ts"),
            b"second, longer",
            "a refill is never served old"
        );

        assert!(set.remove("a.ts").unwrap());
        assert_eq!(
            set.open_files_cached(),
            0,
            "a deleted object's file is closed at once"
        );

        for name in ["b.ts", "c.ts", "d.ts"] {
            put(&set, name, name.as_bytes());
            assert_eq!(read_all(&set, name), name.as_bytes());
        }
        assert_eq!(set.open_files_cached(), 2, "capacity holds");
    }

    #[test]
    fn without_an_open_file_cache_nothing_is_kept_open() {
        let dir = tempfile::tempdir().unwrap();
        let set = stores(dir.path());
        put(&set, "a.ts", b"data");
        assert_eq!(read_all(&set, "a.ts"), b"data");
        assert_eq!(set.open_files_cached(), 0);
    }

    #[test]
    fn a_restarted_write_forgets_what_it_had() {
        let dir = tempfile::tempdir().unwrap();
        let set = stores(dir.path());
        let mut writer = ObjectWriter::begin(&set, "t/x.ts", 5, sha(b"hello")).unwrap();
        writer.write(b"junk").unwrap();
        writer.restart().unwrap();
        writer.write(b"hello").unwrap();
        writer.finish().unwrap();
    }

    #[test]
    fn stale_partials_are_cleaned_and_wanted_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let set = stores(dir.path());
        set.set_direct_writes(false);
        for (path, data) in [("a.ts", b"aaaa"), ("b.ts", b"bbbb")] {
            let mut writer = ObjectWriter::begin(&set, path, 4, sha(data)).unwrap();
            writer.write(&data[..2]).unwrap();
            writer.checkpoint().unwrap();
        }
        let keep = std::collections::HashSet::from([partial_name("a.ts", &sha(b"aaaa"))]);
        assert_eq!(set.clean_partials(&keep), 1);
        let resumed = ObjectWriter::begin_or_resume(&set, "a.ts", 4, sha(b"aaaa")).unwrap();
        assert_eq!(resumed.written(), 2);
        let fresh = ObjectWriter::begin_or_resume(&set, "b.ts", 4, sha(b"bbbb")).unwrap();
        assert_eq!(fresh.written(), 0);
    }

    #[test]
    fn finished_object_is_indexed_readable_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let set = stores(dir.path());
        let mut writer = ObjectWriter::begin(&set, "t/a.ts", 5, sha(b"hello")).unwrap();
        writer.write(b"hel").unwrap();
        writer.write(b"lo").unwrap();
        let meta = writer.finish().unwrap();
        assert_eq!(set.lookup("t/a.ts"), Some(meta));
        assert_eq!(
            std::fs::read(dir.path().join("objects/t/a.ts")).unwrap(),
            b"hello"
        );
        drop(set);
        let again = stores(dir.path());
        assert_eq!(again.lookup("t/a.ts"), Some(meta));
        assert_eq!(again.status()[0].objects, 1);
        assert_eq!(again.status()[0].bytes_used, 5);
    }

    #[test]
    fn wrong_hash_is_never_published_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let set = stores(dir.path());
        let mut writer = ObjectWriter::begin(&set, "t/a.ts", 5, sha(b"HELLO")).unwrap();
        writer.write(b"hello").unwrap();
        assert!(matches!(
            writer.finish(),
            Err(StoreError::HashMismatch { .. })
        ));
        assert_eq!(set.lookup("t/a.ts"), None);
        assert!(!dir.path().join("objects/t/a.ts").exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn short_or_long_body_is_a_size_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let set = stores(dir.path());
        let mut writer = ObjectWriter::begin(&set, "a.ts", 5, sha(b"hello")).unwrap();
        assert!(matches!(
            writer.write(b"hello!"),
            Err(StoreError::SizeMismatch { .. })
        ));
        writer.write(b"hell").unwrap();
        assert!(matches!(
            writer.finish(),
            Err(StoreError::SizeMismatch { .. })
        ));
        assert_eq!(set.lookup("a.ts"), None);
    }

    #[test]
    fn dropped_writer_removes_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let set = stores(dir.path());
        let mut writer = ObjectWriter::begin(&set, "a.ts", 5, sha(b"hello")).unwrap();
        writer.write(b"he").unwrap();
        drop(writer);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert_eq!(set.lookup("a.ts"), None);
    }

    #[test]
    fn replacing_an_object_keeps_counts_right() {
        let dir = tempfile::tempdir().unwrap();
        let set = stores(dir.path());
        for body in [&b"first"[..], b"second!"] {
            let mut writer =
                ObjectWriter::begin(&set, "a.ts", body.len() as u64, sha(body)).unwrap();
            writer.write(body).unwrap();
            writer.finish().unwrap();
        }
        let status = &set.status()[0];
        assert_eq!((status.objects, status.bytes_used), (1, 7));
        assert!(set.remove("a.ts").unwrap());
        assert_eq!(set.lookup("a.ts"), None);
        assert_eq!(set.status()[0].objects, 0);
        set.compact_journals().unwrap();
        assert_eq!(stores(dir.path()).object_count(), 0);
    }

    #[test]
    fn bad_paths_and_oversized_objects_are_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let set = stores(dir.path());
        assert!(matches!(
            ObjectWriter::begin(&set, "../x", 1, [0; 32]),
            Err(StoreError::BadPath { .. })
        ));
        assert!(matches!(
            ObjectWriter::begin(&set, "big", 2 << 20, [0; 32]),
            Err(StoreError::NoRoom { .. })
        ));
    }

    #[test]
    fn a_request_that_looked_up_the_old_version_never_gets_the_new_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let set = stores(dir.path());
        let old = put(&set, "t/x.ts", b"version 1");
        put(&set, "t/x.ts", b"version 2");
        assert!(
            matches!(set.open("t/x.ts", old), Err(StoreError::Changed { .. })),
            "same size, new bytes: the old entry must not open them"
        );
        assert!(
            set.lookup("t/x.ts").is_some_and(|now| now != old),
            "and the change is not mistaken for damage"
        );
        assert_eq!(read_all(&set, "t/x.ts"), b"version 2");
    }

    #[test]
    fn a_replaced_object_is_served_throughout_its_replacement_old_bytes_or_new() {
        use std::os::unix::fs::FileExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let set = stores(dir.path());
        let versions: Vec<Vec<u8>> = (0..150)
            .map(|version| {
                format!("version {version} ")
                    .repeat(version % 7 + 1)
                    .into_bytes()
            })
            .collect();
        put(&set, "t/x.ts", &versions[0]);
        let replaced = AtomicBool::new(false);
        let (reads, most_changes_in_a_row) = std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let (mut reads, mut changes_in_a_row, mut most) = (0u64, 0, 0);
                while !replaced.load(Ordering::Relaxed) {
                    let meta = set
                        .lookup("t/x.ts")
                        .expect("a replaced object is never a miss while it is replaced");
                    match set.open("t/x.ts", meta) {
                        Ok(object) => {
                            let mut bytes = vec![0; meta.size as usize];
                            object.file.read_exact_at(&mut bytes, 0).unwrap();
                            assert_eq!(sha(&bytes), meta.sha256, "bytes match their entry");
                            reads += 1;
                            changes_in_a_row = 0;
                        }
                        Err(StoreError::Changed { .. }) => {
                            changes_in_a_row += 1;
                            most = most.max(changes_in_a_row);
                        }
                        Err(err) => panic!("{err}"),
                    }
                }
                (reads, most)
            });
            for version in &versions[1..] {
                put(&set, "t/x.ts", version);
            }
            replaced.store(true, Ordering::Relaxed);
            reader.join().unwrap()
        });
        assert!(reads > 0);
        assert!(
            most_changes_in_a_row < 3,
            "the handler looks again three times at most: {most_changes_in_a_row} in a row"
        );
        assert_eq!(read_all(&set, "t/x.ts"), *versions.last().unwrap());
        assert_eq!(set.object_count(), 1);
    }

    /// Readers on several threads look up, open and read one object while it is replaced
    /// by same-size versions (a successor's file passes the size check), with the
    /// open-file cache on as by default. Returns (misses, reads whose bytes did not match
    /// their entry).
    fn read_through_replacements(open_files: u64, readers: usize, versions: usize) -> (u64, u64) {
        use std::os::unix::fs::FileExt;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let set = stores_keeping_open(dir.path(), open_files);
        let versions: Vec<Vec<u8>> = (0..versions)
            .map(|version| format!("version {version:08} ").repeat(64).into_bytes())
            .collect();
        put(&set, "t/x.ts", &versions[0]);
        let replaced = AtomicBool::new(false);
        let (misses, wrong) = (AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|scope| {
            for _ in 0..readers {
                scope.spawn(|| {
                    let mut bytes = Vec::new();
                    while !replaced.load(Ordering::Relaxed) {
                        let Some(meta) = set.lookup("t/x.ts") else {
                            misses.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        match set.open("t/x.ts", meta) {
                            Ok(object) => {
                                bytes.resize(meta.size as usize, 0);
                                object.file.read_exact_at(&mut bytes, 0).unwrap();
                                if sha(&bytes) != meta.sha256 {
                                    wrong.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(StoreError::Changed { .. }) => {}
                            Err(err) => panic!("{err}"),
                        }
                    }
                });
            }
            for version in &versions[1..] {
                put(&set, "t/x.ts", version);
            }
            replaced.store(true, Ordering::Relaxed);
        });
        (misses.into_inner(), wrong.into_inner())
    }

    #[test]
    fn the_open_file_cache_never_hands_out_a_successors_file_under_the_old_entry() {
        // Found by review: a request caching the file it opened before checking the index
        // could cache the next version's file under the old entry, for another request to
        // take from the cache in between (3-8 wrong reads in 400 replacements).
        assert_eq!(read_through_replacements(16, 6, 300), (0, 0));
        assert_eq!(read_through_replacements(0, 6, 100), (0, 0));
    }

    #[test]
    fn a_damage_report_during_a_replacement_does_not_hide_the_new_version() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let configs = dirs.each_ref().map(|dir| StoreConfig {
            path: dir.path().to_owned(),
            capacity: Some(ByteSize(1 << 20)),
        });
        let set = Arc::new(Stores::load(&configs));
        let old = put(&set, "t/x.ts", b"version 1");
        // The new version goes to the other store: its publish deletes the old copy after
        // the index switch, which keeps the old version's end slow enough to watch.
        set.mark_full(old.store);
        let replaced = AtomicBool::new(false);
        let (reported, hidden) = std::thread::scope(|scope| {
            let watcher = scope.spawn(|| {
                let (mut reported, mut hidden) = (false, 0u64);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                while !replaced.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    if !reported && set.replacing_count.load(Ordering::Relaxed) > 0 {
                        set.report_damaged("t/x.ts", &old.sha256);
                        reported = true;
                    }
                    let indexed = set.index.read().unwrap().get("t/x.ts");
                    if indexed.is_some_and(|meta| meta != old) && set.lookup("t/x.ts").is_none() {
                        hidden += 1;
                    }
                }
                (reported, hidden)
            });
            let new = put(&set, "t/x.ts", b"version 2, on the other store");
            assert_ne!(new.store, old.store);
            replaced.store(true, Ordering::Relaxed);
            watcher.join().unwrap()
        });
        assert!(
            reported,
            "the report came while the old version was still served"
        );
        assert_eq!(hidden, 0, "the new, indexed version answered as a miss");
        assert!(set.lookup("t/x.ts").is_some());
    }

    #[test]
    fn a_replace_records_the_old_versions_removal_between_the_two_puts() {
        use super::super::journal::{Record, records};
        let dir = tempfile::tempdir().unwrap();
        let set = stores(dir.path());
        put(&set, "t/x.ts", b"version 1");
        put(&set, "t/x.ts", b"version 2");
        drop(set);
        let written = records(&std::fs::read(dir.path().join("index/journal")).unwrap());
        let shas: Vec<Option<[u8; 32]>> = written
            .iter()
            .map(|record| match record {
                Record::Put(path, entry) if path == "t/x.ts" => Some(entry.sha256),
                Record::Remove(path) if path == "t/x.ts" => None,
                other => panic!("unexpected record {other:?}"),
            })
            .collect();
        assert_eq!(
            shas,
            [Some(sha(b"version 1")), None, Some(sha(b"version 2"))],
            "put v1, then remove v1 (made durable before v2's rename), then put v2"
        );
    }

    #[test]
    fn a_move_between_stores_retires_the_old_copy_in_its_own_journal() {
        use super::super::journal::{Record, records};
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let configs: Vec<StoreConfig> = dirs
            .iter()
            .map(|dir| StoreConfig {
                path: dir.path().to_owned(),
                capacity: Some(ByteSize(1 << 20)),
            })
            .collect();
        let set = Arc::new(Stores::load(&configs));
        let first = put(&set, "t/x.ts", b"version 1");
        set.mark_full(first.store);
        let second = put(&set, "t/x.ts", b"version 2");
        assert_ne!(second.store, first.store, "the full store passes it on");
        drop(set);
        let old = dirs[first.store].path();
        let written = records(&std::fs::read(old.join("index/journal")).unwrap());
        assert!(
            matches!(written.last(), Some(Record::Remove(path)) if path == "t/x.ts"),
            "the old store's journal ends by removing it: {written:?}"
        );
        assert!(
            !old.join("objects/t/x.ts").exists(),
            "the old copy is deleted"
        );
        let reopened = Stores::load(&configs);
        assert_eq!(reopened.lookup("t/x.ts"), Some(second));
    }

    #[test]
    fn a_damage_report_for_an_old_version_leaves_the_new_one_alone() {
        let dir = tempfile::tempdir().unwrap();
        let set = stores(dir.path());
        let old = put(&set, "t/x.ts", b"version 1");
        let new = put(&set, "t/x.ts", b"version 2");
        set.report_damaged("t/x.ts", &old.sha256);
        assert_eq!(set.lookup("t/x.ts"), Some(new));
        // A mark that looked the old version up before the replacement and lands after it
        // (the review's interleaving, played out in order) names that version too.
        set.note_damaged("t/x.ts", &old);
        assert_eq!(set.lookup("t/x.ts"), Some(new));
        set.report_damaged("t/x.ts", &new.sha256);
        assert_eq!(set.lookup("t/x.ts"), None);
    }

    #[test]
    fn truncated_file_behind_our_back_is_damaged_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let set = stores(dir.path());
        let mut writer = ObjectWriter::begin(&set, "a.ts", 5, sha(b"hello")).unwrap();
        writer.write(b"hello").unwrap();
        let meta = writer.finish().unwrap();
        std::fs::write(dir.path().join("objects/a.ts"), b"hel").unwrap();
        assert!(matches!(
            set.open("a.ts", meta),
            Err(StoreError::Damaged { .. })
        ));
    }

    #[test]
    fn removing_many_at_once_journals_them_and_survives_a_restart() {
        use super::super::journal::{Record, records};
        let dir = tempfile::tempdir().unwrap();
        let config = [StoreConfig {
            path: dir.path().to_owned(),
            capacity: Some(ByteSize(1 << 20)),
        }];
        let set = Arc::new(Stores::load(&config));
        for number in 0..10 {
            put(
                &set,
                &format!("t/{number}.ts"),
                format!("object {number}").as_bytes(),
            );
        }
        let gone: Vec<String> = (0..7).map(|number| format!("t/{number}.ts")).collect();
        let with_missing: Vec<String> = gone
            .iter()
            .cloned()
            .chain(["t/never.ts".to_owned()])
            .collect();
        let (removed, error) = set.remove_many(&with_missing);
        assert_eq!((removed, error.is_none()), (7, true));
        assert_eq!(set.object_count(), 3);
        for path in &gone {
            assert_eq!(set.lookup(path), None);
            assert!(!dir.path().join("objects").join(path).exists());
        }
        let written = records(&std::fs::read(dir.path().join("index/journal")).unwrap());
        let removes = written
            .iter()
            .filter(|record| matches!(record, Record::Remove(_)))
            .count();
        assert_eq!(removes, 7);
        drop(set);
        let reopened = Stores::load(&config);
        assert_eq!(reopened.object_count(), 3);
        assert_eq!(read_all(&reopened, "t/9.ts"), b"object 9");
    }

    #[test]
    fn one_directory_named_twice_is_the_first_entry_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("nvme0");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("alias");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        for _ in 0..5 {
            let configs = [real.clone(), link.clone()].map(|path| StoreConfig {
                path,
                capacity: Some(ByteSize(1 << 20)),
            });
            let set = Stores::load(&configs);
            let status = set.status();
            assert_eq!(status[0].state, super::super::StoreState::Ok, "{status:?}");
            assert_eq!(
                status[1].state,
                super::super::StoreState::Failed,
                "{status:?}"
            );
            assert!(
                status[1]
                    .error
                    .as_deref()
                    .is_some_and(|error| error.contains("the same directory as store 0")),
                "{status:?}"
            );
        }
    }
}
