//! What viewers ask for (`GET /v1/popularity`): the most requested objects this box served
//! from its stores, and the most requested paths it did not, since the manifest in force was
//! accepted. An origin builds tomorrow's manifest priorities from it.
//!
//! Counted on the hot path with the space-saving algorithm (Metwally, Agrawal, El Abbadi,
//! 2005): a fixed number of counters per viewer thread; a path not counted yet takes over
//! the smallest counter and inherits its count as its possible overcount. A path requested
//! more than `requests / CAPACITY` times is always counted, and no count is more than
//! `requests / CAPACITY` too high (0.025 % of a thread's requests at 4096 counters). Each
//! viewer thread counts into a sketch of its own behind a lock that only a report ever
//! contends: no lock is shared between requests.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hashbrown::HashTable;
use serde::Serialize;

/// Counters per thread and kind (hits, misses).
pub const CAPACITY: usize = 4096;
/// Most entries a report lists.
pub const MAX_LIMIT: usize = CAPACITY;

/// Gives each [`Popularity`] its slot in the threads' sketch lists (tests run several
/// daemons in one process).
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's sketches, one per [`Popularity`] it counted for.
    static LOCAL: RefCell<Vec<(usize, Arc<Mutex<ThreadSketch>>)>> = const { RefCell::new(Vec::new()) };
}

/// One counter.
#[derive(Debug, Clone)]
struct Counter {
    /// A `String`, not a `Box<str>`: a counter taken over reuses its allocation.
    path: String,
    count: u64,
    /// How much of `count` may belong to the paths it took over from.
    error: u64,
    bytes: u64,
}

/// A space-saving sketch: counters found by path through a hash table, and a min-heap of
/// (count, counter) entries that is brought up to date only when a counter must be taken
/// over. A request for a counted path costs a hash, a probe and two additions; the heap
/// work (re-pushing entries whose counts grew since they were pushed) is paid by the
/// new paths, at most once per increment.
#[derive(Debug)]
pub struct SpaceSaving {
    capacity: usize,
    counters: Vec<Counter>,
    /// One entry per counter, holding its count when pushed (it may have grown since).
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    table: HashTable<usize>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl SpaceSaving {
    /// A sketch of `capacity` counters.
    pub fn new(capacity: usize) -> SpaceSaving {
        SpaceSaving {
            capacity: capacity.max(1),
            counters: Vec::new(),
            heap: BinaryHeap::new(),
            table: HashTable::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    /// Counts one request for `path` that sent `bytes`.
    pub fn record(&mut self, path: &str, bytes: u64) {
        let hash = self.hasher.hash_one(path);
        let counters = &self.counters;
        if let Some(&index) = self.table.find(hash, |&index| counters[index].path == path) {
            let counter = &mut self.counters[index];
            counter.count += 1;
            counter.bytes += bytes;
            return;
        }
        if self.counters.len() < self.capacity {
            let index = self.counters.len();
            self.counters.push(Counter {
                path: path.to_owned(),
                count: 1,
                error: 0,
                bytes,
            });
            self.heap.push(Reverse((1, index)));
            let hasher = &self.hasher;
            let counters = &self.counters;
            self.table.insert_unique(hash, index, |&index| {
                hasher.hash_one(counters[index].path.as_str())
            });
            return;
        }
        // Full: the smallest counter is this path's now. Entries whose counter grew since
        // they were pushed go back with their count until the least one is current.
        let index = loop {
            let Some(Reverse((pushed, index))) = self.heap.pop() else {
                return;
            };
            let count = self.counters[index].count;
            if count == pushed {
                break index;
            }
            self.heap.push(Reverse((count, index)));
        };
        let old_hash = self.hasher.hash_one(self.counters[index].path.as_str());
        if let Ok(entry) = self.table.find_entry(old_hash, |&found| found == index) {
            entry.remove();
        }
        let counter = &mut self.counters[index];
        counter.path.clear();
        counter.path.push_str(path);
        counter.error = counter.count;
        counter.count += 1;
        counter.bytes = bytes;
        let count = counter.count;
        self.heap.push(Reverse((count, index)));
        let hasher = &self.hasher;
        let counters = &self.counters;
        self.table.insert_unique(hash, index, |&index| {
            hasher.hash_one(counters[index].path.as_str())
        });
    }

    /// Every counter: path, count, possible overcount, bytes.
    fn counters(&self) -> impl Iterator<Item = &Counter> {
        self.counters.iter()
    }

    fn clear(&mut self) {
        self.counters.clear();
        self.heap.clear();
        self.table.clear();
    }
}

/// One thread's sketches.
#[derive(Debug)]
struct ThreadSketch {
    /// The [`Popularity`] generation they count for; older counts are dropped.
    generation: u64,
    hits: SpaceSaving,
    misses: SpaceSaving,
}

/// A requested object in a report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Hit {
    /// Its path, as in the manifest (no leading `/`).
    pub path: String,
    /// Requests served from the stores (at least this many, and at most `requests /
    /// CAPACITY` of each viewer thread's requests fewer; see the module's bound).
    pub requests: u64,
    /// Body bytes those requests sent.
    pub bytes: u64,
}

/// A requested path this box did not serve from its stores.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Miss {
    /// Its path, as in the manifest (no leading `/`).
    pub path: String,
    /// Requests for it.
    pub requests: u64,
    /// How many of them were sent to another box of the site, which counts them again as
    /// hits when it holds the object: adding up a site's reports, count `requests -
    /// redirected` of a miss (as `manifest build --popularity` does).
    pub redirected: u64,
}

/// The body of `GET /v1/popularity`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Counted since, RFC 3339 UTC: when the manifest in force was accepted (or the daemon
    /// started, if later or none was).
    pub since: String,
    /// The most requested objects served, most first.
    pub hits: Vec<Hit>,
    /// The most requested paths not served from the stores, most first.
    pub misses: Vec<Miss>,
}

/// The box's popularity counts.
#[derive(Debug)]
pub struct Popularity {
    id: usize,
    sketches: Mutex<Vec<Arc<Mutex<ThreadSketch>>>>,
    generation: AtomicU64,
    since: Mutex<jiff::Timestamp>,
}

impl Default for Popularity {
    fn default() -> Self {
        Popularity::new()
    }
}

impl Popularity {
    /// Counting from now.
    pub fn new() -> Popularity {
        Popularity {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            sketches: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            since: Mutex::new(jiff::Timestamp::now()),
        }
    }

    /// Counts a request for `path` served from the stores, `bytes` of body.
    pub fn hit(&self, path: &str, bytes: u64) {
        self.with_sketch(|sketch| sketch.hits.record(path, bytes));
    }

    /// Counts a request for `path` this box did not serve from its stores; `to_peer` when
    /// it was sent to a box of the site that owns it (which counts it again, as a hit, if
    /// it holds it).
    pub fn miss(&self, path: &str, to_peer: bool) {
        self.with_sketch(|sketch| sketch.misses.record(path, u64::from(to_peer)));
    }

    /// Starts counting again from `since` (a new manifest was accepted).
    pub fn reset(&self, since: jiff::Timestamp) {
        *self.since.lock().unwrap_or_else(PoisonError::into_inner) = since;
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    fn with_sketch(&self, count: impl FnOnce(&mut ThreadSketch)) {
        let generation = self.generation.load(Ordering::Relaxed);
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let position = match local.iter().position(|(id, _)| *id == self.id) {
                Some(position) => position,
                None => {
                    let sketch = Arc::new(Mutex::new(ThreadSketch {
                        generation,
                        hits: SpaceSaving::new(CAPACITY),
                        misses: SpaceSaving::new(CAPACITY),
                    }));
                    self.sketches
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Arc::clone(&sketch));
                    local.push((self.id, sketch));
                    local.len() - 1
                }
            };
            // The thread's own lock: only a report ever waits on it.
            let mut sketch = local[position]
                .1
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if sketch.generation != generation {
                sketch.hits.clear();
                sketch.misses.clear();
                sketch.generation = generation;
            }
            count(&mut sketch);
        });
    }

    /// The top `limit` hits and misses, every thread's counts added up.
    pub fn report(&self, limit: usize) -> Report {
        let generation = self.generation.load(Ordering::Relaxed);
        let sketches: Vec<Arc<Mutex<ThreadSketch>>> = self
            .sketches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut hits: HashMap<String, (u64, u64)> = HashMap::new();
        let mut misses: HashMap<String, (u64, u64)> = HashMap::new();
        for sketch in sketches {
            let sketch = sketch.lock().unwrap_or_else(PoisonError::into_inner);
            if sketch.generation != generation {
                continue;
            }
            // The count a counter guarantees, not the most it may be: a path that took a
            // counter over inherits its count as a possible overcount, and a scan of junk
            // paths must not list a path asked once as asked a hundred times.
            for counter in sketch.hits.counters() {
                let total = hits.entry(counter.path.clone()).or_default();
                total.0 += counter.count - counter.error;
                total.1 += counter.bytes;
            }
            for counter in sketch.misses.counters() {
                let total = misses.entry(counter.path.clone()).or_default();
                total.0 += counter.count - counter.error;
                total.1 += counter.bytes;
            }
        }
        let limit = limit.min(MAX_LIMIT);
        let mut hits: Vec<Hit> = hits
            .into_iter()
            .map(|(path, (requests, bytes))| Hit {
                path,
                requests,
                bytes,
            })
            .collect();
        hits.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| a.path.cmp(&b.path))
        });
        hits.truncate(limit);
        let mut misses: Vec<Miss> = misses
            .into_iter()
            .map(|(path, (requests, redirected))| Miss {
                path,
                requests,
                redirected: redirected.min(requests),
            })
            .collect();
        misses.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| a.path.cmp(&b.path))
        });
        misses.truncate(limit);
        Report {
            since: self
                .since
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .to_string(),
            hits,
            misses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_saving_keeps_the_heavy_paths_with_bounded_overcounts() {
        let mut sketch = SpaceSaving::new(64);
        let mut exact: HashMap<String, u64> = HashMap::new();
        let mut total = 0u64;
        // A Zipf-like stream: path i asked 5000 / (i + 1) times (at least once), shuffled.
        let mut stream: Vec<u64> = (0..2000u64)
            .flat_map(|i| std::iter::repeat_n(i, (5000 / (i + 1)).max(1) as usize))
            .collect();
        fastrand::Rng::with_seed(7).shuffle(&mut stream);
        for i in stream {
            let path = format!("t/seg_{i}.ts");
            sketch.record(&path, 10);
            *exact.entry(path).or_default() += 1;
            total += 1;
        }
        let bound = total / 64;
        for counter in sketch.counters() {
            let truth = exact[&*counter.path];
            assert!(counter.count >= truth, "{}: never under", counter.path);
            assert!(
                counter.count - truth <= bound,
                "{}: overcount within N/k",
                counter.path
            );
            assert!(counter.count - counter.error <= truth);
        }
        // Every path asked more than N/k times is counted.
        for (path, count) in &exact {
            if *count > bound {
                assert!(
                    sketch.counters().any(|counter| &*counter.path == path),
                    "{path}"
                );
            }
        }
    }

    #[test]
    fn a_scan_of_junk_paths_does_not_lift_a_path_asked_once() {
        let popularity = Popularity::new();
        for _ in 0..50 {
            popularity.miss("wanted.ts", false);
        }
        popularity.miss("asked-once.ts", false);
        for junk in 0..(CAPACITY * 20) {
            popularity.miss(&format!("junk/{junk}"), false);
        }
        let report = popularity.report(MAX_LIMIT);
        for miss in &report.misses {
            assert!(miss.requests <= 50, "{miss:?}");
            if miss.path == "asked-once.ts" {
                assert_eq!(miss.requests, 1);
            }
        }
    }

    #[test]
    fn reports_add_threads_up_and_a_reset_starts_over() {
        let popularity = Arc::new(Popularity::new());
        std::thread::scope(|scope| {
            for _ in 0..3 {
                let popularity = Arc::clone(&popularity);
                scope.spawn(move || {
                    for _ in 0..10 {
                        popularity.hit("a.ts", 100);
                    }
                    popularity.hit("b.ts", 5);
                    popularity.miss("gone.ts", true);
                });
            }
        });
        let report = popularity.report(10);
        assert_eq!(
            report.hits,
            [
                Hit {
                    path: "a.ts".into(),
                    requests: 30,
                    bytes: 3000
                },
                Hit {
                    path: "b.ts".into(),
                    requests: 3,
                    bytes: 15
                },
            ]
        );
        assert_eq!(
            report.misses,
            [Miss {
                path: "gone.ts".into(),
                requests: 3,
                redirected: 3,
            }]
        );
        assert_eq!(popularity.report(1).hits.len(), 1);
        popularity.reset(jiff::Timestamp::UNIX_EPOCH);
        popularity.hit("c.ts", 1);
        let report = popularity.report(10);
        assert_eq!(report.hits.len(), 1);
        assert_eq!(report.since, "1970-01-01T00:00:00Z");
    }
}
