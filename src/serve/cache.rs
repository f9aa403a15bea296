//! A RAM cache of hot objects as shared [`Bytes`], so popular segments are answered without
//! a disk read or a thread hop, and ranges are zero-copy slices.
//!
//! Admission: an object no larger than `max_object` is loaded whole, once, on a blocking
//! thread after its first GET (that request is streamed from the file as usual; a HEAD
//! never loads), and its sha256 is checked while loading, so the cache only ever holds
//! verified bytes. Loads in flight are capped at [`MAX_LOADS`] and at a quarter of the
//! capacity in bytes (at least one `max_object`): a burst of first requests for big cold
//! objects streams them from disk instead of reading them all into memory at once.
//! Eviction: CLOCK (second chance) over entries until the total fits `capacity`. Entries
//! are keyed by path and carry the sha256 they were loaded for, so a refilled object never
//! answers with old bytes.

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;

use super::validators::Validators;
use crate::clock::ClockMap;
use crate::store::ObjectMeta;

/// One cached object.
#[derive(Debug)]
struct Entry {
    sha256: [u8; 32],
    bytes: Bytes,
    validators: Validators,
}

#[derive(Debug)]
struct Inner {
    entries: ClockMap<Entry>,
    /// Objects being loaded, and their sizes.
    loading: HashMap<Box<str>, u64>,
    /// The sum of `loading`'s sizes: memory the loads in flight will hold.
    loading_bytes: u64,
}

/// Loads in flight at most (each holds a blocking thread and its object's bytes).
pub const MAX_LOADS: usize = 4;

/// Whether a lookup may start a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A GET: a miss may load the object.
    Load,
    /// A HEAD (no body is sent): look only.
    Peek,
}

/// The cache's Prometheus series.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    /// Bytes held.
    pub bytes: prometheus::IntGauge,
    /// Lookups answered from RAM.
    pub hits: prometheus::IntCounter,
    /// Lookups of cacheable objects not held.
    pub misses: prometheus::IntCounter,
}

/// The cache; one per daemon, shared by every viewer connection.
#[derive(Debug)]
pub struct RamCache {
    max_object: u64,
    /// Bytes of loads in flight at most.
    max_loading_bytes: u64,
    metrics: Option<CacheMetrics>,
    /// Hits take only the read lock; misses, loads and evictions the write lock.
    inner: RwLock<Inner>,
}

/// What a lookup found.
pub enum Lookup {
    /// The object's verified bytes and its validators.
    Hit(Bytes, Validators),
    /// Not cached; the caller should stream from disk and, if `load` is true, start loading
    /// it (nobody else is).
    Miss {
        /// Whether this caller should load the object into the cache.
        load: bool,
    },
}

impl RamCache {
    /// A cache holding up to `capacity` bytes of objects no larger than `max_object` each.
    /// A capacity of 0 disables it.
    pub fn new(capacity: u64, max_object: u64) -> RamCache {
        let max_object = max_object.min(capacity);
        RamCache {
            max_object,
            max_loading_bytes: (capacity / 4).max(max_object),
            metrics: None,
            inner: RwLock::new(Inner {
                entries: ClockMap::new(capacity),
                loading: HashMap::new(),
                loading_bytes: 0,
            }),
        }
    }

    /// Counts hits, misses and bytes held in `metrics`.
    pub fn with_metrics(mut self, metrics: CacheMetrics) -> RamCache {
        self.metrics = Some(metrics);
        self
    }

    /// Looks `path` up for the stored object described by `meta`; a miss starts a load only
    /// when `admission` allows it and the loads in flight leave room.
    pub fn lookup(&self, path: &str, meta: &ObjectMeta, admission: Admission) -> Lookup {
        if meta.size > self.max_object || meta.size == 0 {
            return Lookup::Miss { load: false };
        }
        if let Ok(inner) = self.inner.read() {
            if let Some(entry) = inner.entries.get(path) {
                if entry.sha256 == meta.sha256 {
                    if let Some(metrics) = &self.metrics {
                        metrics.hits.inc();
                    }
                    return Lookup::Hit(entry.bytes.clone(), entry.validators.clone());
                }
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.misses.inc();
        }
        if admission == Admission::Peek {
            return Lookup::Miss { load: false };
        }
        let Ok(mut inner) = self.inner.write() else {
            return Lookup::Miss { load: false };
        };
        let room = inner.loading.len() < MAX_LOADS
            && inner.loading_bytes + meta.size <= self.max_loading_bytes;
        if !room || inner.loading.contains_key(path) {
            return Lookup::Miss { load: false };
        }
        inner.loading.insert(path.into(), meta.size);
        inner.loading_bytes += meta.size;
        Lookup::Miss { load: true }
    }

    /// Stores loaded bytes if they are the object `meta` describes; evicts to make room.
    pub fn insert(&self, path: &str, meta: &ObjectMeta, bytes: Option<Bytes>) {
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        if let Some(size) = inner.loading.remove(path) {
            inner.loading_bytes = inner.loading_bytes.saturating_sub(size);
        }
        let Some(bytes) = bytes else {
            return;
        };
        if bytes.len() as u64 != meta.size {
            return;
        }
        let entry = Entry {
            sha256: meta.sha256,
            bytes,
            validators: Validators::of(meta),
        };
        inner.entries.insert(path, entry, meta.size);
        if let Some(metrics) = &self.metrics {
            metrics
                .bytes
                .set(i64::try_from(inner.entries.used()).unwrap_or(i64::MAX));
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.inner.read().map_or(0, |inner| inner.entries.used())
    }
}

/// Why a stored object could not be loaded into the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadError {
    /// The read failed (the caller already serves or reports the error elsewhere).
    Read,
    /// The bytes on disk are not the object: a flipped bit, a replaced file.
    Mismatch,
}

/// Reads a whole stored file and checks its sha256: the bytes the cache may hold.
pub fn load_verified(file: &std::fs::File, meta: &ObjectMeta) -> Result<Bytes, LoadError> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::FileExt;
    let length = usize::try_from(meta.size).map_err(|_| LoadError::Read)?;
    // The pages this read brings in also serve sendfile answers: large folios, as a
    // viewer's own first GET would read them.
    crate::store::read_in_large_folios(file, meta.size, 0..=meta.size.saturating_sub(1));
    let mut buffer = vec![0u8; length];
    file.read_exact_at(&mut buffer, 0)
        .map_err(|_| LoadError::Read)?;
    let digest: [u8; 32] = Sha256::digest(&buffer).into();
    if digest == meta.sha256 {
        Ok(Bytes::from(buffer))
    } else {
        Err(LoadError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64, fill: u8) -> ObjectMeta {
        ObjectMeta {
            store: 0,
            size,
            sha256: [fill; 32],
            filled_at: 0,
        }
    }

    #[test]
    fn a_loaded_object_hits_until_its_content_changes() {
        let cache = RamCache::new(1000, 500);
        assert!(matches!(
            cache.lookup("a", &meta(10, 1), Admission::Load),
            Lookup::Miss { load: true }
        ));
        assert!(
            matches!(
                cache.lookup("a", &meta(10, 1), Admission::Load),
                Lookup::Miss { load: false }
            ),
            "one loader"
        );
        cache.insert("a", &meta(10, 1), Some(Bytes::from(vec![7; 10])));
        assert!(
            matches!(cache.lookup("a", &meta(10, 1), Admission::Load), Lookup::Hit(bytes, _) if bytes.len() == 10)
        );
        assert!(
            matches!(
                cache.lookup("a", &meta(10, 2), Admission::Load),
                Lookup::Miss { load: true }
            ),
            "refilled"
        );
    }

    #[test]
    fn too_big_objects_are_never_loaded_and_capacity_holds() {
        let cache = RamCache::new(1000, 400);
        assert!(matches!(
            cache.lookup("big", &meta(401, 1), Admission::Load),
            Lookup::Miss { load: false }
        ));
        for (index, path) in ["a", "b", "c", "d"].iter().enumerate() {
            let object = meta(300, index as u8);
            let _ = cache.lookup(path, &object, Admission::Load);
            cache.insert(path, &object, Some(Bytes::from(vec![0; 300])));
            assert!(cache.used() <= 1000);
        }
        assert_eq!(cache.used(), 900);
    }

    #[test]
    fn recently_used_entries_get_a_second_chance() {
        let cache = RamCache::new(600, 300);
        for (index, path) in ["a", "b"].iter().enumerate() {
            let object = meta(300, index as u8);
            let _ = cache.lookup(path, &object, Admission::Load);
            cache.insert(path, &object, Some(Bytes::from(vec![0; 300])));
        }
        assert!(matches!(
            cache.lookup("a", &meta(300, 0), Admission::Load),
            Lookup::Hit(..)
        ));
        let _ = cache.lookup("c", &meta(300, 2), Admission::Load);
        cache.insert("c", &meta(300, 2), Some(Bytes::from(vec![0; 300])));
        assert!(
            matches!(
                cache.lookup("a", &meta(300, 0), Admission::Load),
                Lookup::Hit(..)
            ),
            "a was referenced"
        );
        assert!(
            matches!(
                cache.lookup("b", &meta(300, 1), Admission::Load),
                Lookup::Miss { .. }
            ),
            "b was evicted"
        );
    }

    #[test]
    fn loads_in_flight_are_capped_in_count_and_bytes_and_heads_never_load() {
        let cache = RamCache::new(4000, 1000);
        assert!(matches!(
            cache.lookup("head", &meta(10, 1), Admission::Peek),
            Lookup::Miss { load: false }
        ));
        // A quarter of the capacity (1000 bytes) may be loading at once.
        assert!(matches!(
            cache.lookup("a", &meta(600, 1), Admission::Load),
            Lookup::Miss { load: true }
        ));
        assert!(matches!(
            cache.lookup("b", &meta(600, 2), Admission::Load),
            Lookup::Miss { load: false }
        ));
        assert!(matches!(
            cache.lookup("c", &meta(400, 3), Admission::Load),
            Lookup::Miss { load: true }
        ));
        cache.insert("a", &meta(600, 1), None);
        assert!(matches!(
            cache.lookup("b", &meta(600, 2), Admission::Load),
            Lookup::Miss { load: true }
        ));
        for path in ["d", "e", "f", "g"] {
            let _ = cache.lookup(path, &meta(1, 4), Admission::Load);
        }
        assert!(
            matches!(
                cache.lookup("h", &meta(1, 5), Admission::Load),
                Lookup::Miss { load: false }
            ),
            "at most {MAX_LOADS} loads at once"
        );
    }
}
