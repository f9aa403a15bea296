//! A map with CLOCK (second-chance) eviction under a weight budget, shared by the caches
//! of the data plane: the RAM cache (weight: bytes) and the open-file cache (weight: 1).
//!
//! CLOCK instead of LRU because a hit must not need the write lock: it only sets an atomic
//! "referenced" bit, so many connections can hit at once under a read lock. The eviction
//! sweep, under the write lock, gives each referenced entry a second chance.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};

/// One entry and its bookkeeping.
#[derive(Debug)]
struct Slot<V> {
    value: V,
    weight: u64,
    referenced: AtomicBool,
}

/// The map; callers wrap it in the lock they need (hits use `&self`).
#[derive(Debug)]
pub struct ClockMap<V> {
    entries: HashMap<Box<str>, Slot<V>>,
    /// Keys in insertion order for the sweep; may hold keys removed since (skipped then).
    ring: VecDeque<Box<str>>,
    used: u64,
    capacity: u64,
}

impl<V> ClockMap<V> {
    /// An empty map holding at most `capacity` total weight.
    pub fn new(capacity: u64) -> ClockMap<V> {
        ClockMap {
            entries: HashMap::new(),
            ring: VecDeque::new(),
            used: 0,
            capacity,
        }
    }

    /// The value under `key`, marking it recently used.
    pub fn get(&self, key: &str) -> Option<&V> {
        let slot = self.entries.get(key)?;
        slot.referenced.store(true, Ordering::Relaxed);
        Some(&slot.value)
    }

    /// Puts `value` under `key` (replacing what was there), then evicts until the total
    /// weight fits the capacity again. A value heavier than the whole capacity is not kept.
    pub fn insert(&mut self, key: &str, value: V, weight: u64) {
        if weight > self.capacity {
            self.remove(key);
            return;
        }
        let slot = Slot {
            value,
            weight,
            referenced: AtomicBool::new(false),
        };
        match self.entries.insert(key.into(), slot) {
            Some(old) => self.used -= old.weight,
            None => self.ring.push_back(key.into()),
        }
        self.used += weight;
        self.evict();
        if self.ring.len() > 2 * self.entries.len() + 64 {
            self.compact_ring();
        }
    }

    /// Takes `key` out; its key stays in the ring until the sweep meets it.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let slot = self.entries.remove(key)?;
        self.used -= slot.weight;
        Some(slot.value)
    }

    /// Total weight held now.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn evict(&mut self) {
        while self.used > self.capacity {
            let Some(candidate) = self.ring.pop_front() else {
                break;
            };
            let second_chance = match self.entries.get(&candidate) {
                Some(slot) => slot.referenced.swap(false, Ordering::Relaxed),
                None => continue,
            };
            if second_chance {
                self.ring.push_back(candidate);
            } else if let Some(evicted) = self.entries.remove(&candidate) {
                self.used -= evicted.weight;
            }
        }
    }

    /// Drops ring keys of removed entries and duplicates left by remove-then-insert.
    fn compact_ring(&mut self) {
        let mut seen = std::collections::HashSet::with_capacity(self.entries.len());
        let entries = &self.entries;
        self.ring
            .retain(|key| entries.contains_key(key) && seen.insert(key.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_budget_holds_and_unreferenced_entries_go_first() {
        let mut map = ClockMap::new(3);
        map.insert("a", 1, 1);
        map.insert("b", 2, 1);
        map.insert("c", 3, 1);
        assert_eq!(map.get("a"), Some(&1));
        map.insert("d", 4, 1);
        assert_eq!(map.used(), 3);
        assert_eq!(map.get("a"), Some(&1), "a was referenced");
        assert_eq!(map.get("b"), None, "b was the oldest unreferenced");
    }

    #[test]
    fn replacing_and_removing_keep_the_weight_right() {
        let mut map = ClockMap::new(10);
        map.insert("a", 1, 4);
        map.insert("a", 2, 6);
        assert_eq!(map.used(), 6);
        assert_eq!(map.remove("a"), Some(2));
        assert_eq!(map.used(), 0);
        map.insert("huge", 3, 11);
        assert!(map.is_empty(), "heavier than the whole capacity");
    }

    #[test]
    fn churn_of_remove_and_insert_does_not_grow_the_ring() {
        let mut map = ClockMap::new(1000);
        for round in 0..10_000 {
            map.insert("a", round, 1);
            map.remove("a");
        }
        map.insert("a", 0, 1);
        assert!(map.ring.len() <= 66, "{}", map.ring.len());
        assert_eq!(map.len(), 1);
    }
}
