//! A RAM cache of hot objects as shared [`Bytes`], so popular segments are answered without
//! a disk read or a thread hop, and ranges are zero-copy slices.
//!
//! Admission: an object no larger than `max_object` is loaded whole, once, on a blocking
//! thread after its first request (that request is streamed from the file as usual), and
//! its sha256 is checked while loading, so the cache only ever holds verified bytes.
//! Eviction: CLOCK (second chance) over entries until the total fits `capacity`. Entries
//! are keyed by path and carry the sha256 they were loaded for, so a refilled object never
//! answers with old bytes.

use std::collections::HashSet;
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
    loading: HashSet<Box<str>>,
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
        RamCache {
            max_object: max_object.min(capacity),
            metrics: None,
            inner: RwLock::new(Inner {
                entries: ClockMap::new(capacity),
                loading: HashSet::new(),
            }),
        }
    }

    /// Counts hits, misses and bytes held in `metrics`.
    pub fn with_metrics(mut self, metrics: CacheMetrics) -> RamCache {
        self.metrics = Some(metrics);
        self
    }

    /// Looks `path` up for the stored object described by `meta`.
    pub fn lookup(&self, path: &str, meta: &ObjectMeta) -> Lookup {
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
        let Ok(mut inner) = self.inner.write() else {
            return Lookup::Miss { load: false };
        };
        let load = inner.loading.insert(path.into());
        Lookup::Miss { load }
    }

    /// Stores loaded bytes if they are the object `meta` describes; evicts to make room.
    pub fn insert(&self, path: &str, meta: &ObjectMeta, bytes: Option<Bytes>) {
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        inner.loading.remove(path);
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
            cache.lookup("a", &meta(10, 1)),
            Lookup::Miss { load: true }
        ));
        assert!(
            matches!(
                cache.lookup("a", &meta(10, 1)),
                Lookup::Miss { load: false }
            ),
            "one loader"
        );
        cache.insert("a", &meta(10, 1), Some(Bytes::from(vec![7; 10])));
        assert!(
            matches!(cache.lookup("a", &meta(10, 1)), Lookup::Hit(bytes, _) if bytes.len() == 10)
        );
        assert!(
            matches!(cache.lookup("a", &meta(10, 2)), Lookup::Miss { load: true }),
            "refilled"
        );
    }

    #[test]
    fn too_big_objects_are_never_loaded_and_capacity_holds() {
        let cache = RamCache::new(1000, 400);
        assert!(matches!(
            cache.lookup("big", &meta(401, 1)),
            Lookup::Miss { load: false }
        ));
        for (index, path) in ["a", "b", "c", "d"].iter().enumerate() {
            let object = meta(300, index as u8);
            let _ = cache.lookup(path, &object);
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
            let _ = cache.lookup(path, &object);
            cache.insert(path, &object, Some(Bytes::from(vec![0; 300])));
        }
        assert!(matches!(cache.lookup("a", &meta(300, 0)), Lookup::Hit(..)));
        let _ = cache.lookup("c", &meta(300, 2));
        cache.insert("c", &meta(300, 2), Some(Bytes::from(vec![0; 300])));
        assert!(
            matches!(cache.lookup("a", &meta(300, 0)), Lookup::Hit(..)),
            "a was referenced"
        );
        assert!(
            matches!(cache.lookup("b", &meta(300, 1)), Lookup::Miss { .. }),
            "b was evicted"
        );
    }
}
