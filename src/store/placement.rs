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
    /// The store's persistent id (from its `store-id` file), not its mount path; or a box's
    /// name in a site.
    pub id: &'a str,
    /// Relative share of objects; capacity in bytes is the natural choice.
    pub weight: f64,
}

/// 64 bits of SHA-256 of `text`: a store id, a box name or an object path as placement
/// hashes it. SHA-256, not the process's hasher, so every box and every version computes
/// the same placement from the same names.
pub fn key_of(text: &str) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// The splitmix64 finaliser: a bijection that spreads every input bit over the output.
fn mix(mut value: u64) -> u64 {
    value ^= value >> 30;
    value = value.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value ^= value >> 27;
    value = value.wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// The weighted rendezvous score of a member (its [`key_of`] and weight) for an object
/// (its path's [`key_of`]): `weight / -ln(u)` for a uniform `u` in (0, 1] drawn from both
/// keys, which gives each member a share proportional to its weight. One SHA-256 per path,
/// then a multiply-xor mix per member: a site scores tens of millions of paths per pass.
pub fn score(member_key: u64, weight: f64, path_key: u64) -> f64 {
    if weight <= 0.0 || weight.is_nan() {
        return 0.0;
    }
    let bits = mix(member_key ^ mix(path_key)) >> 11;
    let unit = (bits as f64 + 1.0) / (1u64 << 53) as f64;
    weight / -unit.ln().min(-f64::MIN_POSITIVE)
}

/// Ranks candidates for `path`, best first, as indexes into `candidates`.
///
/// Ties (practically impossible) go to the smaller id, so the ranking does not depend on
/// the order the candidates are listed in: each box of a site lists itself first.
pub fn rank(path: &str, candidates: &[Candidate<'_>]) -> Vec<usize> {
    let path_key = key_of(path);
    let mut scored: Vec<(f64, usize)> = candidates
        .iter()
        .enumerate()
        .map(|(index, candidate)| {
            (
                score(key_of(candidate.id), candidate.weight, path_key),
                index,
            )
        })
        .collect();
    scored.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| candidates[a.1].id.cmp(candidates[b.1].id))
    });
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
        let first = rank("x/seg1.ts", &stores);
        assert_eq!(first, rank("x/seg1.ts", &stores));
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
            counts[rank(&path, &stores)[0]] += 1;
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
            .filter(|path| rank(path, &stores)[0] == 0)
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
            let before = rank(path, &three)[0];
            let after = rank(path, &four)[0];
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
            let ranking = rank(&path, &three);
            if ranking[0] != 1 {
                let without_b = [three[0], three[2]];
                let winner = without_b[rank(&path, &without_b)[0]].id;
                assert_eq!(winner, three[ranking[0]].id);
            }
        }
    }
}
