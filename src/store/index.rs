//! The in-memory index of stored objects, compact enough for the reference appliance's tens of
//! millions of objects.
//!
//! A `HashMap<Box<str>, ObjectMeta>` costs about 170 bytes per object (a heap allocation per
//! path, a 72-byte slot, the table's slack). Here every path lives in one arena, each object
//! has a 56-byte entry (sha256, size, fill time, and one word packing where its path is and
//! which store holds it), and the hash table holds only `u32` entry numbers: about
//! 56 + path + 5 to 10 bytes per object, and a handful of allocations in all, so a journal
//! replays into it without a malloc per object.
//!
//! Removed entries go on a free list and their path bytes become garbage; the arena is
//! rewritten once garbage is more than half of it, so a nightly churn does not grow it.

use hashbrown::HashTable;
use std::hash::BuildHasher;

/// What the index knows about one stored object. Small and `Copy`, so lookups hold no lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Which store holds it (index into the configured stores).
    pub store: usize,
    /// Length in bytes.
    pub size: u64,
    /// SHA-256 of the content; the strong ETag derives from it.
    pub sha256: [u8; 32],
    /// When it was filled, Unix seconds; served as `Last-Modified`.
    pub filled_at: i64,
}

/// Bits of an entry's packed path word for the store number.
const STORE_BITS: u32 = 8;
/// Bits for the path's length (object paths are at most 1 KiB).
const LEN_BITS: u32 = 12;
/// Stores an index can tell apart.
pub const MAX_STORES: usize = 1 << STORE_BITS;
/// The store number of a free entry (on the free list).
const FREE: u64 = (1 << STORE_BITS) - 1;
/// The arena is compacted when its garbage is over half of it and more than this (small in
/// unit tests, so they reach it).
const MIN_GARBAGE_TO_COMPACT: usize = if cfg!(test) { 4096 } else { 1 << 20 };

/// One object: 56 bytes.
#[derive(Debug, Clone, Copy)]
struct Entry {
    sha256: [u8; 32],
    size: u64,
    filled_at: i64,
    /// Arena offset (high bits), path length, store number (low 8 bits).
    packed: u64,
}

impl Entry {
    fn new(path_start: usize, path_len: usize, meta: &ObjectMeta) -> Entry {
        Entry {
            sha256: meta.sha256,
            size: meta.size,
            filled_at: meta.filled_at,
            packed: pack(path_start, path_len, meta.store as u64),
        }
    }

    fn store(&self) -> u64 {
        self.packed & ((1 << STORE_BITS) - 1)
    }

    fn path_range(&self) -> std::ops::Range<usize> {
        let len = ((self.packed >> STORE_BITS) & ((1 << LEN_BITS) - 1)) as usize;
        let start = (self.packed >> (STORE_BITS + LEN_BITS)) as usize;
        start..start + len
    }

    fn meta(&self) -> ObjectMeta {
        ObjectMeta {
            store: self.store() as usize,
            size: self.size,
            sha256: self.sha256,
            filled_at: self.filled_at,
        }
    }
}

fn pack(path_start: usize, path_len: usize, store: u64) -> u64 {
    ((path_start as u64) << (STORE_BITS + LEN_BITS)) | ((path_len as u64) << STORE_BITS) | store
}

/// Paths to object metadata, compact (see the module's documentation).
#[derive(Default)]
pub struct Index {
    paths: Vec<u8>,
    entries: Vec<Entry>,
    table: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    free: Vec<u32>,
    garbage: usize,
    /// Sum of the objects' sizes.
    total_size: u64,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Index")
            .field("objects", &self.len())
            .field("path_bytes", &self.paths.len())
            .finish()
    }
}

impl Index {
    /// An empty index sized for about `objects` objects of `path_bytes` path bytes in all,
    /// so a replay does not regrow it.
    pub fn with_capacity(objects: usize, path_bytes: usize) -> Index {
        Index {
            paths: Vec::with_capacity(path_bytes),
            entries: Vec::with_capacity(objects),
            table: HashTable::with_capacity(objects),
            ..Index::default()
        }
    }

    /// Objects indexed.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// The indexed objects' total size in bytes.
    pub fn total_size(&self) -> u64 {
        self.total_size
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Heap bytes held (the arena, entries and table), for sizing notes and tests.
    pub fn heap_bytes(&self) -> usize {
        self.paths.capacity()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.table.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.free.capacity() * std::mem::size_of::<u32>()
    }

    fn path_of(&self, entry: &Entry) -> &[u8] {
        &self.paths[entry.path_range()]
    }

    fn find(&self, hash: u64, path: &[u8]) -> Option<u32> {
        self.table
            .find(hash, |&slot| {
                self.path_of(&self.entries[slot as usize]) == path
            })
            .copied()
    }

    /// The object at `path`.
    pub fn get(&self, path: &str) -> Option<ObjectMeta> {
        let hash = self.hasher.hash_one(path.as_bytes());
        self.find(hash, path.as_bytes())
            .map(|slot| self.entries[slot as usize].meta())
    }

    /// Records `meta` for `path` and returns what it replaces. `meta.store` must be below
    /// [`MAX_STORES`] - 1 and `path` at most 4 KiB (object paths are at most 1 KiB).
    pub fn insert(&mut self, path: &str, meta: ObjectMeta) -> Option<ObjectMeta> {
        debug_assert!((meta.store as u64) < FREE && path.len() < (1 << LEN_BITS));
        let hash = self.hasher.hash_one(path.as_bytes());
        if let Some(slot) = self.find(hash, path.as_bytes()) {
            let entry = &mut self.entries[slot as usize];
            let previous = entry.meta();
            let range = entry.path_range();
            *entry = Entry::new(range.start, range.len(), &meta);
            self.total_size = self.total_size - previous.size + meta.size;
            return Some(previous);
        }
        self.total_size += meta.size;
        let start = self.paths.len();
        self.paths.extend_from_slice(path.as_bytes());
        let entry = Entry::new(start, path.len(), &meta);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.entries[slot as usize] = entry;
                slot
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        let (paths, entries, hasher) = (&self.paths, &self.entries, &self.hasher);
        self.table.insert_unique(hash, slot, |&other| {
            hasher.hash_one(&paths[entries[other as usize].path_range()])
        });
        None
    }

    /// Forgets `path`; returns what it held.
    pub fn remove(&mut self, path: &str) -> Option<ObjectMeta> {
        let hash = self.hasher.hash_one(path.as_bytes());
        let (paths, entries) = (&self.paths, &self.entries);
        let found = self
            .table
            .find_entry(hash, |&slot| {
                &paths[entries[slot as usize].path_range()] == path.as_bytes()
            })
            .ok()?;
        let (slot, _) = found.remove();
        let entry = &mut self.entries[slot as usize];
        let previous = entry.meta();
        self.total_size -= previous.size;
        self.garbage += path.len();
        entry.packed = FREE;
        self.free.push(slot);
        if self.garbage > MIN_GARBAGE_TO_COMPACT && self.garbage * 2 > self.paths.len() {
            self.compact_paths();
        }
        Some(previous)
    }

    /// Room for `more` objects without regrowing (their paths at the current average).
    pub fn reserve(&mut self, more: usize) {
        let average_path = self
            .paths
            .len()
            .checked_div(self.entries.len())
            .unwrap_or(40);
        self.paths.reserve(more * average_path);
        self.entries.reserve(more);
        let (paths, entries, hasher) = (&self.paths, &self.entries, &self.hasher);
        self.table.reserve(more, |&slot| {
            hasher.hash_one(&paths[entries[slot as usize].path_range()])
        });
    }

    /// Says every object is on store `store` (an index replayed from one store's journal
    /// becomes the box's).
    pub fn set_store(&mut self, store: usize) {
        debug_assert!((store as u64) < FREE);
        for entry in self
            .entries
            .iter_mut()
            .filter(|entry| entry.store() != FREE)
        {
            entry.packed = (entry.packed & !FREE) | store as u64;
        }
    }

    /// Every indexed object, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, ObjectMeta)> {
        self.entries
            .iter()
            .filter(|entry| entry.store() != FREE)
            .map(|entry| {
                let path = std::str::from_utf8(self.path_of(entry)).unwrap_or_default();
                (path, entry.meta())
            })
    }

    /// Rewrites the arena without the paths of removed entries.
    fn compact_paths(&mut self) {
        let mut paths = Vec::with_capacity(self.paths.len() - self.garbage);
        for entry in self
            .entries
            .iter_mut()
            .filter(|entry| entry.store() != FREE)
        {
            let range = entry.path_range();
            let start = paths.len();
            paths.extend_from_slice(&self.paths[range.clone()]);
            entry.packed = pack(start, range.len(), entry.store());
        }
        self.paths = paths;
        self.garbage = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn meta(store: usize, size: u64) -> ObjectMeta {
        ObjectMeta {
            store,
            size,
            sha256: [size as u8; 32],
            filled_at: size as i64 * 10,
        }
    }

    #[test]
    fn insert_get_replace_remove() {
        let mut index = Index::default();
        assert_eq!(index.insert("a/b.ts", meta(1, 5)), None);
        assert_eq!(index.insert("a/c.ts", meta(0, 6)), None);
        assert_eq!(index.get("a/b.ts"), Some(meta(1, 5)));
        assert_eq!(index.get("a/b"), None);
        assert_eq!(index.insert("a/b.ts", meta(2, 7)), Some(meta(1, 5)));
        assert_eq!(index.get("a/b.ts"), Some(meta(2, 7)));
        assert_eq!(index.len(), 2);
        assert_eq!(index.remove("a/b.ts"), Some(meta(2, 7)));
        assert_eq!(index.remove("a/b.ts"), None);
        assert_eq!(index.get("a/b.ts"), None);
        assert_eq!(index.len(), 1);
        let all: Vec<_> = index.iter().collect();
        assert_eq!(all, vec![("a/c.ts", meta(0, 6))]);
    }

    #[test]
    fn agrees_with_a_hash_map_through_churn_and_arena_compaction() {
        let mut index = Index::default();
        let mut model: HashMap<String, ObjectMeta> = HashMap::new();
        let mut state: u64 = 7;
        for round in 0..200_000u64 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let path = format!(
                "titles/t{:04}/seg_{:05}.m4s",
                (state >> 40) % 300,
                (state >> 20) % 90
            );
            if (state >> 8) % 3 == 0 {
                assert_eq!(index.remove(&path), model.remove(&path));
            } else {
                let value = meta((round % 12) as usize, round);
                assert_eq!(index.insert(&path, value), model.insert(path, value));
            }
        }
        assert_eq!(index.len(), model.len());
        assert_eq!(
            index.total_size(),
            model.values().map(|meta| meta.size).sum::<u64>()
        );
        for (path, value) in &model {
            assert_eq!(index.get(path), Some(*value), "{path}");
        }
        let mut listed: Vec<_> = index
            .iter()
            .map(|(path, meta)| (path.to_owned(), meta))
            .collect();
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut expected: Vec<_> = model.into_iter().collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(listed, expected);
        assert!(index.paths.len() < 300 * 90 * 40, "garbage was reclaimed");
    }

    #[test]
    fn an_entry_is_56_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 56);
    }
}
