//! Reading an object into the page cache in large folios before it is served.
//!
//! Fills write objects with `O_DIRECT`, so nothing of a new object is in the page cache
//! until a viewer asks for it. The kernel's ordinary read-ahead (a `read`, `sendfile`,
//! `readahead(2)` or `POSIX_FADV_WILLNEED`) then caches it in 4 KiB folios, and every
//! `sendfile` of a hot object afterwards walks sixteen folios per 64 KiB instead of one:
//! `benches/compare` measured 0.235 CPU s/GB at 64 KiB from such a cache against 0.200 from
//! the same files cached in large folios, the state a buffered writer (nginx's usual
//! `proxy_store` or rsync) leaves. Faulting a file mapping advised `MADV_HUGEPAGE` in with
//! `MADV_POPULATE_READ` makes the kernel read ahead in folios as large as the file allows
//! (up to 2 MiB), so that is what [`read_in_large_folios`] does: once, when a GET opens an
//! object for the sendfile path, and before the RAM cache reads one whole.

use std::fs::File;

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
    let Ok(len) = usize::try_from(len) else {
        return;
    };
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
            offset,
        ) else {
            return;
        };
        let _ = rustix::mm::madvise(mapping, len, Advice::LinuxHugepage);
        let _ = rustix::mm::madvise(mapping, len, Advice::LinuxPopulateRead);
        let _ = rustix::mm::munmap(mapping, len);
    }
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
