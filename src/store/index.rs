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
// The configuration allows no more stores than the index can name.
const _: () = assert!(crate::config::MAX_STORES < MAX_STORES);
/// The store number of a free entry (on the free list).
const FREE: u64 = (1 << STORE_BITS) - 1;
/// A shard's arena is compacted when its garbage is over half of it and more than this
/// share of a megabyte (a 64th: the index as a whole keeps at most about 1 MiB of garbage
/// beyond its live paths' size; 64 bytes in unit tests, so they reach it).
const MIN_GARBAGE_TO_COMPACT: usize = (if cfg!(test) { 4096 } else { 1 << 20 }) / SHARDS;

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

/// The hash every index of this process uses, so one path selects the same shard in the
/// index of every store (their shards then merge independently, in parallel). Seeded at
/// random once per process, so viewers cannot aim requests at one hash chain.
type Hasher = hashbrown::DefaultHashBuilder;

fn process_hasher() -> Hasher {
    static HASHER: std::sync::OnceLock<Hasher> = std::sync::OnceLock::new();
    HASHER.get_or_init(Hasher::default).clone()
}

/// Shards of an index: a power of two, so a store's index merges into the box's on as many
/// threads as there are cores.
pub const SHARDS: usize = 64;

/// Which shard a hash selects: bits the table itself does not use (its buckets take the low
/// bits, its tags the top seven).
fn shard_of(hash: u64) -> usize {
    ((hash >> 40) as usize) & (SHARDS - 1)
}

/// Paths to object metadata, compact (see the module's documentation), in [`SHARDS`]
/// shards by hash.
pub struct Index {
    shards: Vec<Shard>,
    hasher: Hasher,
}

impl Default for Index {
    fn default() -> Index {
        Index::with_capacity(0, 0)
    }
}

impl std::fmt::Debug for Index {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Index")
            .field("objects", &self.len())
            .finish()
    }
}

impl Index {
    /// An empty index sized for about `objects` objects of `path_bytes` path bytes in all,
    /// so a replay does not regrow it.
    pub fn with_capacity(objects: usize, path_bytes: usize) -> Index {
        // A little over an even share each: hashes spread unevenly by a few percent.
        let per_shard = |total: usize| total / SHARDS + total / SHARDS / 16;
        Index {
            shards: (0..SHARDS)
                .map(|_| Shard::with_capacity(per_shard(objects), per_shard(path_bytes)))
                .collect(),
            hasher: process_hasher(),
        }
    }

    fn hash(&self, path: &str) -> u64 {
        self.hasher.hash_one(path.as_bytes())
    }

    /// Objects indexed.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.table.len()).sum()
    }

    /// The indexed objects' total size in bytes.
    pub fn total_size(&self) -> u64 {
        self.shards.iter().map(|shard| shard.total_size).sum()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|shard| shard.table.is_empty())
    }

    /// The object at `path`.
    pub fn get(&self, path: &str) -> Option<ObjectMeta> {
        let hash = self.hash(path);
        self.shards[shard_of(hash)].get(hash, path)
    }

    /// Records `meta` for `path` and returns what it replaces. `meta.store` must be below
    /// [`MAX_STORES`] - 1 and `path` at most 4 KiB (object paths are at most 1 KiB).
    pub fn insert(&mut self, path: &str, meta: ObjectMeta) -> Option<ObjectMeta> {
        debug_assert!((meta.store as u64) < FREE && path.len() < (1 << LEN_BITS));
        let hash = self.hash(path);
        self.shards[shard_of(hash)].insert(&self.hasher, hash, path, meta)
    }

    /// Forgets `path`; returns what it held.
    pub fn remove(&mut self, path: &str) -> Option<ObjectMeta> {
        let hash = self.hash(path);
        self.shards[shard_of(hash)].remove(hash, path)
    }

    /// Says every object is on store `store` (an index replayed from one store's journal
    /// becomes the box's).
    pub fn set_store(&mut self, store: usize) {
        debug_assert!((store as u64) < FREE);
        for shard in &mut self.shards {
            shard.set_store(store);
        }
    }

    /// Every indexed object, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, ObjectMeta)> {
        self.shards.iter().flat_map(Shard::iter)
    }

    /// Merges `others` (each with its store number; their entries' store still says 0)
    /// into this index, whose entries already name their store, shard by shard on up to
    /// `threads` threads. A path in two: the newer copy wins, the lower store number
    /// on a tie. Returns each (store, size) whose copy lost, to uncount and compact.
    pub fn merge(&mut self, others: Vec<(usize, Index)>, threads: usize) -> Vec<(usize, u64)> {
        let mut others: Vec<(usize, Vec<Shard>)> = others
            .into_iter()
            .map(|(store, index)| (store, index.shards))
            .collect();
        // Shard p of every other index goes to shard p of this one.
        let mut work: Vec<(&mut Shard, Vec<(usize, Shard)>)> = self
            .shards
            .iter_mut()
            .enumerate()
            .map(|(number, shard)| {
                let incoming = others
                    .iter_mut()
                    .map(|(store, shards)| (*store, std::mem::take(&mut shards[number])))
                    .collect();
                (shard, incoming)
            })
            .collect();
        let hasher = &self.hasher;
        let threads = threads.clamp(1, SHARDS);
        let per_thread = work.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = work
                .chunks_mut(per_thread)
                .map(|chunk| {
                    scope.spawn(move || {
                        let mut losers = Vec::new();
                        for (shard, incoming) in chunk.iter_mut() {
                            // Grown once for all that comes in, not once per other index.
                            let more = incoming.iter().map(|(_, other)| other.table.len()).sum();
                            shard.reserve(hasher, more);
                            for (store, other) in incoming.iter() {
                                merge_shard(shard, hasher, *store, other, &mut losers);
                            }
                        }
                        losers
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| {
                    // A merge cut short would lose objects without a word: never swallowed.
                    handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    }
}

/// Merges `other` (entries of store `store`) into `shard`, which has room for them; see
/// [`Index::merge`].
fn merge_shard(
    shard: &mut Shard,
    hasher: &Hasher,
    store: usize,
    other: &Shard,
    losers: &mut Vec<(usize, u64)>,
) {
    for (path, meta) in other.iter_bytes() {
        let meta = ObjectMeta { store, ..meta };
        let hash = hasher.hash_one(path);
        let mut lost = None;
        shard.insert_with(hasher, hash, path, |existing| match existing {
            Some(existing)
                if (existing.filled_at, std::cmp::Reverse(existing.store))
                    >= (meta.filled_at, std::cmp::Reverse(store)) =>
            {
                lost = Some((store, meta.size));
                None
            }
            Some(existing) => {
                lost = Some((existing.store, existing.size));
                Some(meta)
            }
            None => Some(meta),
        });
        losers.extend(lost);
    }
}

/// One shard of an [`Index`]: the paths whose hash selects it.
#[derive(Default)]
struct Shard {
    paths: Vec<u8>,
    entries: Vec<Entry>,
    table: HashTable<u32>,
    free: Vec<u32>,
    garbage: usize,
    /// Sum of the objects' sizes.
    total_size: u64,
}

impl Shard {
    fn with_capacity(objects: usize, path_bytes: usize) -> Shard {
        Shard {
            paths: Vec::with_capacity(path_bytes),
            entries: Vec::with_capacity(objects),
            table: HashTable::with_capacity(objects),
            ..Shard::default()
        }
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

    fn get(&self, hash: u64, path: &str) -> Option<ObjectMeta> {
        self.find(hash, path.as_bytes())
            .map(|slot| self.entries[slot as usize].meta())
    }

    /// Records `meta` for `path` (one probe of the table, found or not) and returns what it
    /// replaces.
    fn insert(
        &mut self,
        hasher: &Hasher,
        hash: u64,
        path: &str,
        meta: ObjectMeta,
    ) -> Option<ObjectMeta> {
        self.insert_with(hasher, hash, path.as_bytes(), |_| Some(meta))
    }

    /// Looks `path` up once and, with what it holds (if anything), asks `choose` what to
    /// record: `Some` is stored (replacing), `None` leaves the shard as it was. Returns what
    /// was there. The probe that finds nothing is the one the insert uses, so a replay or a
    /// merge touches the table once per object.
    fn insert_with(
        &mut self,
        hasher: &Hasher,
        hash: u64,
        path: &[u8],
        choose: impl FnOnce(Option<ObjectMeta>) -> Option<ObjectMeta>,
    ) -> Option<ObjectMeta> {
        let Shard {
            paths,
            entries,
            table,
            free,
            total_size,
            ..
        } = self;
        let found = table.entry(
            hash,
            |&slot| &paths[entries[slot as usize].path_range()] == path,
            |&slot| hasher.hash_one(&paths[entries[slot as usize].path_range()]),
        );
        match found {
            hashbrown::hash_table::Entry::Occupied(occupied) => {
                let entry = &mut entries[*occupied.get() as usize];
                let previous = entry.meta();
                if let Some(meta) = choose(Some(previous)) {
                    let range = entry.path_range();
                    *entry = Entry::new(range.start, range.len(), &meta);
                    *total_size = *total_size - previous.size + meta.size;
                }
                Some(previous)
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                let meta = choose(None)?;
                *total_size += meta.size;
                let start = paths.len();
                paths.extend_from_slice(path);
                let entry = Entry::new(start, path.len(), &meta);
                let slot = match free.pop() {
                    Some(slot) => {
                        entries[slot as usize] = entry;
                        slot
                    }
                    None => {
                        entries.push(entry);
                        (entries.len() - 1) as u32
                    }
                };
                vacant.insert(slot);
                None
            }
        }
    }

    fn remove(&mut self, hash: u64, path: &str) -> Option<ObjectMeta> {
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
    fn reserve(&mut self, hasher: &Hasher, more: usize) {
        let average_path = self
            .paths
            .len()
            .checked_div(self.entries.len())
            .unwrap_or(40);
        self.paths.reserve(more * average_path);
        self.entries.reserve(more);
        let (paths, entries) = (&self.paths, &self.entries);
        self.table.reserve(more, |&slot| {
            hasher.hash_one(&paths[entries[slot as usize].path_range()])
        });
    }

    fn set_store(&mut self, store: usize) {
        for entry in self
            .entries
            .iter_mut()
            .filter(|entry| entry.store() != FREE)
        {
            entry.packed = (entry.packed & !FREE) | store as u64;
        }
    }

    /// Every entry's path bytes and metadata, without checking the paths are UTF-8 (they
    /// went in as `&str`).
    fn iter_bytes(&self) -> impl Iterator<Item = (&[u8], ObjectMeta)> {
        self.entries
            .iter()
            .filter(|entry| entry.store() != FREE)
            .map(|entry| (self.path_of(entry), entry.meta()))
    }

    fn iter(&self) -> impl Iterator<Item = (&str, ObjectMeta)> {
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
        let arena: usize = index.shards.iter().map(|shard| shard.paths.len()).sum();
        let live: usize = listed.iter().map(|(path, _)| path.len()).sum();
        // Per shard: garbage at most its live bytes or its share of the threshold, plus
        // the one path whose removal went over.
        assert!(
            arena <= 2 * live + SHARDS * (MIN_GARBAGE_TO_COMPACT + 64),
            "garbage was reclaimed: {arena} bytes of arena for {live} live"
        );
    }

    #[test]
    fn a_merge_on_several_threads_keeps_the_newer_copy_of_each_path() {
        // Three stores' indexes (entries replayed as store 0) overlapping on some paths.
        let mut indexes: Vec<Index> = (0..3).map(|_| Index::default()).collect();
        let mut model: HashMap<String, ObjectMeta> = HashMap::new();
        for number in 0..6000u64 {
            let path = format!("titles/t{}/seg_{number:05}.m4s", number % 37);
            let copies: &[usize] = match number % 5 {
                0 => &[0, 1],
                1 => &[1, 2],
                2 => &[0, 1, 2],
                _ => &[(number % 3) as usize],
            };
            for &store in copies {
                // Newer on the later store, except every seventh path: a tie.
                let filled_at = if number % 7 == 0 { 5 } else { store as i64 };
                let stored = ObjectMeta {
                    store,
                    size: number + store as u64,
                    sha256: [store as u8; 32],
                    filled_at,
                };
                indexes[store].insert(&path, ObjectMeta { store: 0, ..stored });
                let keep = model.get(&path).is_some_and(|kept| {
                    (kept.filled_at, std::cmp::Reverse(kept.store))
                        >= (stored.filled_at, std::cmp::Reverse(store))
                });
                if !keep {
                    model.insert(path.clone(), stored);
                }
            }
        }
        let copies: usize = indexes.iter().map(Index::len).sum();
        let mut merged = indexes.remove(1);
        merged.set_store(1);
        let others = vec![(0, indexes.remove(0)), (2, indexes.remove(0))];
        let losers = merged.merge(others, 3);
        assert_eq!(merged.len(), model.len());
        assert_eq!(losers.len(), copies - model.len());
        for (path, kept) in &model {
            assert_eq!(merged.get(path), Some(*kept), "{path}");
        }
    }

    #[test]
    fn an_entry_is_56_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 56);
    }
}
