//! An object's validators, `ETag` and `Last-Modified`, as the viewer and the RAM cache send
//! them.

use std::time::SystemTime;

use http::HeaderValue;

use super::conditional;
use crate::store::hex;

/// The strong `ETag` of an object: its sha256 in hex, quoted.
pub fn etag(sha256: &[u8; 32]) -> String {
    format!("\"{}\"", hex(sha256))
}

/// An object's `ETag` and `Last-Modified`, as header values ready to clone (the RAM cache
/// keeps them with the bytes, so a hit formats nothing).
#[derive(Debug, Clone)]
pub struct Validators {
    /// The strong ETag.
    pub etag: HeaderValue,
    /// Last-Modified: when the object was filled.
    pub last_modified: HeaderValue,
}

/// Objects whose validators each viewer thread keeps formatted; past it the memo starts
/// afresh (about 250 bytes an entry).
const MEMO_ENTRIES: usize = 4096;

impl Validators {
    /// The validators of a stored object, formatted once per viewer thread while the
    /// object is asked for: objects the RAM cache does not hold (every answer of the
    /// sendfile path) would otherwise hex-encode the sha256, format an HTTP date and make
    /// five allocations per request.
    pub fn memoized(meta: &crate::store::ObjectMeta) -> Validators {
        use std::cell::RefCell;
        // hashbrown's default hasher: the key is a sha256 already, SipHash's DoS resistance
        // buys nothing here.
        thread_local! {
            static MEMO: RefCell<hashbrown::HashMap<([u8; 32], i64), Validators>> =
                RefCell::new(hashbrown::HashMap::new());
        }
        MEMO.with(|memo| {
            let mut memo = memo.borrow_mut();
            if let Some(known) = memo.get(&(meta.sha256, meta.filled_at)) {
                return known.clone();
            }
            if memo.len() >= MEMO_ENTRIES {
                memo.clear();
            }
            let computed = Validators::of(meta);
            memo.insert((meta.sha256, meta.filled_at), computed.clone());
            computed
        })
    }

    /// Computes the validators of a stored object.
    pub fn of(meta: &crate::store::ObjectMeta) -> Validators {
        let modified: SystemTime = conditional::last_modified_time(meta.filled_at);
        Validators {
            etag: HeaderValue::from_str(&etag(&meta.sha256))
                .unwrap_or_else(|_| HeaderValue::from_static("\"\"")),
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified))
                .unwrap_or_else(|_| HeaderValue::from_static("")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(seed: u8, filled_at: i64) -> crate::store::ObjectMeta {
        crate::store::ObjectMeta {
            size: 1,
            sha256: [seed; 32],
            filled_at,
            store: 0,
        }
    }

    #[test]
    fn memoized_validators_are_the_computed_ones_for_each_version() {
        for round in 0..3 {
            for seed in 0..=255u8 {
                for filled_at in [0, 1_700_000_000 + i64::from(seed)] {
                    let object = meta(seed, filled_at);
                    let (memo, fresh) = (Validators::memoized(&object), Validators::of(&object));
                    assert_eq!(memo.etag, fresh.etag, "round {round}");
                    assert_eq!(memo.last_modified, fresh.last_modified, "round {round}");
                }
            }
        }
        // Past its bound the memo starts afresh and still answers right.
        for number in 0..(MEMO_ENTRIES as i64 + 10) {
            let object = meta(7, number);
            assert_eq!(
                Validators::memoized(&object).last_modified,
                Validators::of(&object).last_modified
            );
        }
    }
}
