//! Reading an object into the page cache, in large folios, off the viewer workers.
//!
//! Fills write objects with `O_DIRECT`, so nothing of a new object is in the page cache
//! until a viewer asks for it. The kernel's ordinary read-ahead (a `read`, `sendfile`,
//! `readahead(2)` or `POSIX_FADV_WILLNEED`) then caches it in 4 KiB folios, and every
//! `sendfile` of a hot object afterwards walks sixteen folios per 64 KiB instead of one:
//! `benches/compare` measured 0.235 CPU s/GB at 64 KiB from such a cache against 0.200 from
//! the same files cached in large folios, the state a buffered writer (nginx's usual
//! `proxy_store` or rsync) leaves. Faulting a file mapping advised `MADV_HUGEPAGE` in with
//! `MADV_POPULATE_READ` makes the kernel read ahead in folios as large as the file allows
//! (up to 2 MiB), so that is what [`read_in_large_folios`] does, before the RAM cache reads
//! an object whole, and what the sendfile path has done before sending a cold object.
//!
//! Reading waits for the disk, and a viewer worker that waits for the disk stalls every
//! other connection it serves: a cold 2 MiB read took 1.6-6 ms on this machine's disk,
//! against a hot answer's p99 of well under a millisecond. So the sendfile path asks
//! [`next_window`] before each stretch of a file it sends: bytes the page cache holds
//! ready (seen by `cachestat(2)` and `RWF_NOWAIT`, and remembered for a second per worker)
//! are sent at once; others are read in on a blocking thread first ([`ReadIn::run`]), as
//! nginx does with `aio threads`.

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::mm::{Advice, MapFlags, ProtFlags};

/// The largest folio the page cache makes (a PMD, 2 MiB): the span read is aligned to it.
const LARGE_FOLIO: u64 = 2 << 20;

/// Reads the bytes `wanted` of a file of `size` bytes into the page cache, widened to the
/// 2 MiB-aligned span around them, in large folios where the kernel can (pages already
/// cached stay as they are; the kernel may read up to one more 2 MiB folio beyond the span,
/// as its read-ahead does). It waits for the disk, so it belongs where the caller would read
/// those bytes anyway. Best effort: whatever fails (no memory for the mapping, an old kernel
/// without `MADV_POPULATE_READ`, a file cut meanwhile) leaves the page cache to ordinary
/// read-ahead, which is correct, only dearer.
pub fn read_in_large_folios(file: &File, size: u64, wanted: std::ops::RangeInclusive<u64>) {
    let Some((offset, len)) = span(size, wanted) else {
        return;
    };
    let _ = populate(file, offset, len, true);
}

/// Faults `offset..offset + len` of `file` into the page cache through a mapping, in large
/// folios when `large_folios` (the mapping advised `MADV_HUGEPAGE`). Only a read error
/// (`EIO`) is an error; the rest is best effort (see [`ReadIn::run`]).
fn populate(file: &File, offset: u64, len: u64, large_folios: bool) -> std::io::Result<()> {
    let page = page_size();
    let start = offset - offset % page;
    let Ok(len) = usize::try_from(offset + len - start) else {
        return Ok(());
    };
    if len == 0 {
        return Ok(());
    }
    // SAFETY: a fresh read-only shared mapping of our own file, placed by the kernel (no
    // address given, so nothing existing is replaced). Its memory is never read or written
    // from user space: only `madvise` touches it, in the kernel, which reports a page past
    // the end of a file cut meanwhile as an error (EFAULT) instead of raising SIGBUS. It is
    // unmapped before returning and no reference to it escapes.
    unsafe {
        let Ok(mapping) = rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ,
            MapFlags::SHARED,
            file,
            start,
        ) else {
            return Ok(());
        };
        if large_folios {
            let _ = rustix::mm::madvise(mapping, len, Advice::LinuxHugepage);
        }
        let populated = rustix::mm::madvise(mapping, len, Advice::LinuxPopulateRead);
        let _ = rustix::mm::munmap(mapping, len);
        match populated {
            Err(rustix::io::Errno::IO) => Err(std::io::Error::from_raw_os_error(libc::EIO)),
            _ => Ok(()),
        }
    }
}

/// Objects up to this size are read in whole, in large folios, when at least half of one
/// is asked for (a segment asked for whole, or resumed); a larger one is read just where it
/// is sent.
const WHOLE_OBJECT_MAX: u64 = 16 << 20;

/// Objects up to this size are read in whole for any answer of [`WHOLE_ANSWER_MIN`] or
/// more: at most as much as the kernel's read-ahead of a 2 MiB span read before.
const ALWAYS_WHOLE_MAX: u64 = 4 << 20;

/// Smaller answers read only what they send: a player's probe of a few bytes does not read
/// megabytes.
const WHOLE_ANSWER_MIN: u64 = 64 << 10;

/// How long a span found in the page cache is taken to stay there without looking again. A
/// hot object then costs one `cachestat` a second per worker instead of one per answer
/// (about 0.4 us, 3 % of a 64 KiB answer's CPU). Evicted within that second, an object's
/// next answer waits for the disk on the worker, as every answer did before.
const CACHED_MEMO_MS: u64 = 1_000;

/// Spans remembered per worker thread (direct-mapped by open file; 32 KiB).
const CACHED_MEMO_SLOTS: usize = 1024;

/// Set once `cachestat(2)` has failed as unsupported, so it is not asked again.
static NO_CACHESTAT: AtomicBool = AtomicBool::new(false);

/// Bytes to read into the page cache before sending from them, because some are not there,
/// still on their way from the disk, or the kernel cannot tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadIn {
    offset: u64,
    len: u64,
    /// The whole object, in large folios (`offset` 0, `len` its size); otherwise just the
    /// window, in the kernel's own folios.
    whole_object: bool,
}

impl ReadIn {
    /// Reads the bytes in, waiting for the disk: for a blocking thread, never a viewer
    /// worker. Best effort, as [`read_in_large_folios`] is.
    ///
    /// Either way the page cache is left without read-ahead marks past what was read, so
    /// the worker's sendfile never starts a read of its own: the kernel's read-ahead puts a
    /// mark on a folio it read ahead, and a sendfile that reaches it reads the next stretch
    /// on the sender's thread (seen here as 4 and 8 MiB read by the sender after a 2 MiB
    /// populate). A whole object's marks lead only past its end, where there is nothing to
    /// read; `POSIX_FADV_WILLNEED` reads exactly the window and marks nothing.
    ///
    /// An error is the disk's (`EIO`): sendfile would meet it again, on the worker. A file
    /// cut behind tidecache's back, or a mapping the kernel refuses, is no error here: the
    /// send finds the first itself, and the second only costs the read-ahead.
    pub fn run(&self, file: &File) -> std::io::Result<()> {
        if self.whole_object {
            populate(file, 0, self.len, true)
        } else {
            if let Some(len) = std::num::NonZeroU64::new(self.len) {
                let _ =
                    rustix::fs::fadvise(file, self.offset, Some(len), rustix::fs::Advice::WillNeed);
            }
            // Waits for those reads (the pages are in the cache, so it starts no more).
            populate(file, self.offset, self.len, false)
        }
    }

    /// Notes on this thread that the bytes are in the page cache now, so the sends that
    /// follow do not look again. Called on the worker once [`ReadIn::run`] is done.
    pub fn remember(&self, file: &Arc<File>) {
        remember_cached(file, self.offset, self.len);
    }
}

/// Before sending bytes `offset..end` of `file` (whose size is `size`): how many of them to
/// send now (up to the next 2 MiB boundary), and what to read in first when the page cache
/// does not hold all of them ready. `None` means sendfile will not wait for the disk, as
/// far as the kernel tells.
///
/// An object up to 4 MiB asked for 64 KiB or more at a time, or up to 16 MiB asked for at
/// least half, is read in whole and in large folios: one large folio per 2 MiB makes each
/// later sendfile of it cheaper (benches/compare measured 0.235 CPU s/GB at 64 KiB from
/// 4 KiB folios against 0.200 from large ones), and video segments are asked for whole.
/// Anything else reads just the window, so no answer makes the disk read more than 64
/// times its length (a 64 KiB range of a 4 MiB object), as a 2 MiB span with the kernel's
/// read-ahead did before.
pub fn next_window(file: &Arc<File>, size: u64, offset: u64, end: u64) -> (u64, Option<ReadIn>) {
    let end = end.min(size).max(offset);
    let window_end = end.min((offset | (LARGE_FOLIO - 1)).saturating_add(1));
    let window = window_end - offset;
    if window == 0 || recently_cached(file, offset, window) {
        return (window, None);
    }
    if is_ready(file, offset, window) == Some(true) {
        remember_cached(file, offset, window);
        return (window, None);
    }
    let asked = end - offset;
    let whole_object = asked >= WHOLE_ANSWER_MIN
        && (size <= ALWAYS_WHOLE_MAX || (size <= WHOLE_OBJECT_MAX && asked >= size / 2));
    let read_in = if whole_object {
        ReadIn {
            offset: 0,
            len: size,
            whole_object,
        }
    } else {
        ReadIn {
            offset,
            len: window,
            whole_object,
        }
    };
    (window, Some(read_in))
}

/// Whether `offset..offset + len` of `file` can be sent without waiting for the disk: every
/// page in the page cache (`cachestat(2)`), and the first and last byte readable without
/// waiting (`preadv2(RWF_NOWAIT)`), since a page another thread is still reading counts as
/// cached. `None` when the kernel cannot tell (before Linux 6.5, refused by a seccomp
/// filter, or an architecture this code has no system call number for).
fn is_ready(file: &File, offset: u64, len: u64) -> Option<bool> {
    if len == 0 {
        return Some(true);
    }
    if NO_CACHESTAT.load(Ordering::Relaxed) {
        return None;
    }
    let page = page_size();
    let pages = (offset + len - 1) / page - offset / page + 1;
    match cachestat_pages(file, offset, len) {
        Ok(cached) if cached < pages => Some(false),
        Ok(_) => Some(readable_now(file, offset) && readable_now(file, offset + len - 1)),
        Err(err) => {
            if matches!(
                err.raw_os_error(),
                Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EOPNOTSUPP)
            ) {
                NO_CACHESTAT.store(true, Ordering::Relaxed);
            }
            None
        }
    }
}

/// Whether the byte at `offset` can be read without waiting for the disk.
fn readable_now(file: &File, offset: u64) -> bool {
    let mut byte = [0u8; 1];
    rustix::io::preadv2(
        file,
        &mut [std::io::IoSliceMut::new(&mut byte)],
        offset,
        rustix::io::ReadWriteFlags::NOWAIT,
    )
    .is_ok()
}

/// `cachestat(2)`'s count of the pages of the range that are in the page cache.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn cachestat_pages(file: &File, offset: u64, len: u64) -> std::io::Result<u64> {
    /// The system call's number on x86_64 and aarch64 (glibc's `libc` crate lacks it).
    const SYS_CACHESTAT: libc::c_long = 451;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    let range = Range { off: offset, len };
    let mut stat = Stat::default();
    // SAFETY: cachestat(2) reads `range` and writes `stat`, both live, properly laid-out
    // structs of this frame, and touches nothing else; the descriptor is an open file.
    let result = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0 as libc::c_uint,
        )
    };
    if result == 0 {
        Ok(stat.nr_cache)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn cachestat_pages(_file: &File, _offset: u64, _len: u64) -> std::io::Result<u64> {
    Err(std::io::Error::from_raw_os_error(libc::ENOSYS))
}

/// The page size, asked once.
fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf only reads a constant of the process.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(page)
            .ok()
            .filter(|&page| page > 0)
            .unwrap_or(4096)
    })
}

/// One remembered span: the open file (its `Arc`'s address and descriptor: both reused
/// only after it is closed, and a stale entry costs one answer a wait on the disk, nothing
/// worse), the bytes, and when they were found cached (coarse milliseconds).
#[derive(Debug, Clone, Copy, Default)]
struct SeenCached {
    file: usize,
    fd: i32,
    offset: u64,
    end: u64,
    at_ms: u64,
}

thread_local! {
    static SEEN_CACHED: RefCell<Box<[SeenCached]>> =
        RefCell::new(vec![SeenCached::default(); CACHED_MEMO_SLOTS].into_boxed_slice());
}

fn memo_slot(file: &Arc<File>) -> (usize, usize, i32) {
    let address = Arc::as_ptr(file) as usize;
    let slot =
        ((address as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize % CACHED_MEMO_SLOTS;
    (slot, address, file.as_raw_fd())
}

fn now_ms() -> u64 {
    u64::try_from(coarse_clock().as_millis()).unwrap_or(u64::MAX)
}

/// Whether this thread found `offset..offset + len` of `file` cached less than
/// [`CACHED_MEMO_MS`] ago.
fn recently_cached(file: &Arc<File>, offset: u64, len: u64) -> bool {
    let (slot, address, fd) = memo_slot(file);
    SEEN_CACHED.with(|seen| {
        let seen = seen.borrow()[slot];
        seen.file == address
            && seen.fd == fd
            && seen.offset <= offset
            && offset + len <= seen.end
            && now_ms().saturating_sub(seen.at_ms) < CACHED_MEMO_MS
    })
}

fn remember_cached(file: &Arc<File>, offset: u64, len: u64) {
    let (slot, address, fd) = memo_slot(file);
    let entry = SeenCached {
        file: address,
        fd,
        offset,
        end: offset + len,
        at_ms: now_ms(),
    };
    SEEN_CACHED.with(|seen| seen.borrow_mut()[slot] = entry);
}

/// The coarse monotonic clock: a memory read, where the precise clock reads a counter. Its
/// kernel-tick resolution (a few milliseconds) is plenty for the open-file cache's minute
/// and the sendfile path's one-second memo of cached spans,
/// and it is read on every request.
pub(super) fn coarse_clock() -> std::time::Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    std::time::Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// The 2 MiB-aligned span (offset, length) around `wanted` within a file of `size` bytes;
/// `None` when it holds no byte of the file.
fn span(size: u64, wanted: std::ops::RangeInclusive<u64>) -> Option<(u64, u64)> {
    let (first, last) = (*wanted.start(), (*wanted.end()).min(size.checked_sub(1)?));
    if first > last {
        return None;
    }
    let offset = first & !(LARGE_FOLIO - 1);
    let end = (last.saturating_add(LARGE_FOLIO) & !(LARGE_FOLIO - 1)).min(size);
    Some((offset, end - offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn the_span_is_the_2_mib_around_what_is_wanted_within_the_file() {
        const MIB: u64 = 1 << 20;
        assert_eq!(span(64 << 10, 0..=(64 << 10) - 1), Some((0, 64 << 10)));
        assert_eq!(span(MIB, 65_536..=131_071), Some((0, MIB)));
        assert_eq!(span(16 * MIB, 0..=0), Some((0, 2 * MIB)));
        assert_eq!(
            span(16 * MIB, 3 * MIB..=3 * MIB + 10),
            Some((2 * MIB, 2 * MIB))
        );
        assert_eq!(span(16 * MIB, 2 * MIB - 1..=2 * MIB), Some((0, 4 * MIB)));
        assert_eq!(span(5 * MIB, 4 * MIB..=u64::MAX), Some((4 * MIB, MIB)));
        assert_eq!(span(0, 0..=0), None);
        let (late, early) = (17, 5);
        assert_eq!(span(MIB, late..=early), None);
        assert_eq!(span(MIB, MIB..=2 * MIB), None);
    }

    #[test]
    fn a_file_read_in_stays_whole_and_odd_sizes_and_empty_files_are_fine() {
        for size in [0usize, 1, 4095, 4096, 65_536 + 17, 3 << 20] {
            let mut file = tempfile::tempfile().expect("temp file");
            let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            file.write_all(&bytes).expect("write");
            read_in_large_folios(&file, size as u64, 0..=size as u64);
            read_in_large_folios(&file, size as u64, 4096..=(3 << 20));
            let mut back = Vec::new();
            file.rewind().expect("rewind");
            file.read_to_end(&mut back).expect("read");
            assert_eq!(back, bytes, "size {size}");
        }
    }

    /// A file of `size` pattern bytes, written and synced; dropped from the page cache when
    /// `evicted`. `None` when its pages stay (tmpfs keeps them), so there is nothing to test.
    fn file_of(size: usize, evicted: bool) -> Option<Arc<File>> {
        let mut file = tempfile::tempfile().expect("temp file");
        let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        file.write_all(&bytes).expect("write");
        file.sync_all().expect("sync");
        if evicted {
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
            if is_ready(&file, 0, size as u64) == Some(true) {
                eprintln!("skipped: this file system keeps its pages (tmpfs?)");
                return None;
            }
        }
        Some(Arc::new(file))
    }

    #[test]
    fn windows_end_at_2_mib_boundaries_and_at_the_end_of_the_answer() {
        const MIB: u64 = 1 << 20;
        let size = 5 * MIB + 333;
        let file = file_of(size as usize, false).expect("a cached file");
        assert_eq!(next_window(&file, size, 0, size), (2 * MIB, None));
        assert_eq!(next_window(&file, size, 100, 201), (101, None));
        assert_eq!(next_window(&file, size, 2 * MIB - 10, size), (10, None));
        assert_eq!(next_window(&file, size, 4 * MIB, size), (MIB + 333, None));
        assert_eq!(
            next_window(&file, size, 4 * MIB, u64::MAX),
            (MIB + 333, None),
            "never past the object's end"
        );
        assert_eq!(next_window(&file, size, size, size), (0, None));
    }

    #[test]
    fn a_cold_object_is_read_in_whole_and_a_cold_large_one_by_the_window() {
        const MIB: u64 = 1 << 20;
        let small_size = 5 * MIB + 333;
        let Some(small) = file_of(small_size as usize, true) else {
            return;
        };
        let (window, read_in) = next_window(&small, small_size, 2 * MIB + 5, small_size);
        assert_eq!(window, 2 * MIB - 5);
        let read_in = read_in.expect("cold bytes are read in first");
        assert_eq!(
            read_in,
            ReadIn {
                offset: 0,
                len: small_size,
                whole_object: true
            }
        );
        let (_, small_range) = next_window(&small, small_size, 100, 200);
        assert_eq!(
            small_range,
            Some(ReadIn {
                offset: 100,
                len: 100,
                whole_object: false
            }),
            "a small answer reads just its bytes"
        );
        let (_, quarter) = next_window(&small, small_size, MIB, 2 * MIB);
        assert_eq!(
            quarter,
            Some(ReadIn {
                offset: MIB,
                len: MIB,
                whole_object: false
            }),
            "a fifth of an object over 4 MiB reads just its window"
        );
        read_in.run(&small).expect("read in");
        assert_eq!(is_ready(&small, 0, small_size), Some(true));
        read_in.remember(&small);
        assert_eq!(
            next_window(&small, small_size, 0, small_size),
            (2 * MIB, None)
        );

        let large_size = 17 * MIB + 1;
        let large = file_of(large_size as usize, true).expect("evicted like the first");
        let (window, read_in) = next_window(&large, large_size, 3 * MIB, large_size);
        assert_eq!(window, MIB);
        let read_in = read_in.expect("cold");
        assert_eq!(
            read_in,
            ReadIn {
                offset: 3 * MIB,
                len: MIB,
                whole_object: false
            }
        );
        read_in.run(&large).expect("read in");
        assert_eq!(is_ready(&large, 3 * MIB, MIB), Some(true));
        let mut back = vec![0u8; 10];
        use std::os::unix::fs::FileExt;
        large.read_exact_at(&mut back, 4 * MIB - 5).expect("read");
        let expected: Vec<u8> = (4 * MIB - 5..4 * MIB + 5)
            .map(|i| (i % 251) as u8)
            .collect();
        assert_eq!(back, expected, "reading in changes no byte");
    }

    #[test]
    fn a_span_is_remembered_for_its_own_open_file_only() {
        let (Some(one), Some(other)) = (file_of(8192, false), file_of(8192, false)) else {
            return;
        };
        remember_cached(&one, 0, 8192);
        assert!(recently_cached(&one, 0, 8192));
        assert!(recently_cached(&one, 4096, 100));
        assert!(!recently_cached(&one, 4096, 8192), "past what was seen");
        assert!(!recently_cached(&other, 0, 8192));
    }

    #[test]
    fn a_length_past_the_end_of_a_cut_file_is_no_crash() {
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(&[7u8; 8192]).expect("write");
        file.set_len(100).expect("cut");
        read_in_large_folios(&file, 1 << 20, 0..=(1 << 20) - 1);
        let (late, early) = (17, 5);
        read_in_large_folios(&file, 1 << 20, late..=early);
        assert_eq!(file.metadata().expect("stat").len(), 100);
    }
}
