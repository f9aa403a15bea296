//! The Range header parser: never panics, and whatever it accepts lies inside the object,
//! sorted, coalesced, at most 16 ranges, adding up to no more than the object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidecache::serve::range::{RangeRequest, parse};

fuzz_target!(|input: (&str, u64)| {
    let (header, length) = input;
    let length = length % (1 << 40);
    if let RangeRequest::Partial(ranges) = parse(header, length) {
        assert!(!ranges.is_empty() && ranges.len() <= 16);
        let mut total = 0u64;
        for pair in ranges.windows(2) {
            assert!(pair[0].end + 1 < pair[1].start, "sorted and coalesced: {header:?}");
        }
        for range in &ranges {
            assert!(range.start <= range.end && range.end < length, "{header:?} {length}");
            total += range.end - range.start + 1;
        }
        assert!(total <= length);
    }
});
