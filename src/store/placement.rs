//! Which store an object belongs on: weighted rendezvous (highest random weight) hashing.
//!
//! Every store scores every path; the highest score wins, and the rest of the ranking is the
//! order of fallbacks when a store is full or failed. Losing a store moves only its objects;
//! adding one moves only the objects it now wins (about its share). Weighting by capacity keeps
//! a 7 TB and a 3.5 TB device equally full.

use sha2::{Digest, Sha256};

/// A store as placement sees it: a stable identity and a weight (its capacity).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<'a> {
    /// The store's persistent id (from its `store-id` file), not its mount path.
    pub id: &'a str,
    /// Relative share of objects; capacity in bytes is the natural choice.
    pub weight: f64,
}

/// A uniform value in (0, 1] derived from the store id and the object path.
fn unit_hash(store_id: &str, path: &str) -> f64 {
    let mut hasher = Sha256::new();
    hasher.update(store_id.as_bytes());
    hasher.update([0]);
    hasher.update(path.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let bits = u64::from_le_bytes(first) >> 11;
    (bits as f64 + 1.0) / (1u64 << 53) as f64
}

/// Ranks candidates for `path`, best first, as indexes into `candidates`.
///
/// Score is `weight / -ln(u)`, which gives each store a share proportional to its weight.
/// Ties (practically impossible) fall back to the candidate order so ranking is total.
pub fn rank_stores(path: &str, candidates: &[Candidate<'_>]) -> Vec<usize> {
    let mut scored: Vec<(f64, usize)> = candidates
        .iter()
        .enumerate()
        .map(|(index, candidate)| {
            let u = unit_hash(candidate.id, path);
            let score = if candidate.weight > 0.0 {
                candidate.weight / -u.ln().min(-f64::MIN_POSITIVE)
            } else {
                0.0
            };
            (score, index)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, index)| index).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(count: usize) -> Vec<String> {
        (0..count)
            .map(|i| format!("title{}/1080p/seg_{i:05}.m4s", i % 37))
            .collect()
    }

    fn store(id: &'static str, weight: f64) -> Candidate<'static> {
        Candidate { id, weight }
    }

    #[test]
    fn ranking_is_stable_and_complete() {
        let stores = [store("a", 1.0), store("b", 1.0), store("c", 1.0)];
        let first = rank_stores("x/seg1.ts", &stores);
        assert_eq!(first, rank_stores("x/seg1.ts", &stores));
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2]);
    }

    #[test]
    fn equal_weights_spread_evenly() {
        let stores = [
            store("nvme0", 1.0),
            store("nvme1", 1.0),
            store("nvme2", 1.0),
            store("nvme3", 1.0),
        ];
        let mut counts = [0usize; 4];
        for path in paths(20_000) {
            counts[rank_stores(&path, &stores)[0]] += 1;
        }
        for count in counts {
            assert!((4_500..=5_500).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn weights_set_the_share() {
        let stores = [store("big", 2.0), store("small", 1.0)];
        let big = paths(30_000)
            .iter()
            .filter(|path| rank_stores(path, &stores)[0] == 0)
            .count();
        assert!((19_000..=21_000).contains(&big), "{big}");
    }

    #[test]
    fn adding_a_store_moves_only_what_it_wins() {
        let three = [store("a", 1.0), store("b", 1.0), store("c", 1.0)];
        let four = [three[0], three[1], three[2], store("d", 1.0)];
        let all = paths(20_000);
        let mut moved = 0;
        for path in &all {
            let before = rank_stores(path, &three)[0];
            let after = rank_stores(path, &four)[0];
            if before != after {
                assert_eq!(after, 3, "an object moved between old stores");
                moved += 1;
            }
        }
        assert!((4_500..=5_500).contains(&moved), "{moved}");
    }

    #[test]
    fn losing_a_store_moves_only_its_objects() {
        let three = [store("a", 1.0), store("b", 1.0), store("c", 1.0)];
        for path in paths(5_000) {
            let ranking = rank_stores(&path, &three);
            if ranking[0] != 1 {
                let without_b = [three[0], three[2]];
                let winner = without_b[rank_stores(&path, &without_b)[0]].id;
                assert_eq!(winner, three[ranking[0]].id);
            }
        }
    }
}
