//! The manifest parser and validator: never panics; an accepted manifest has valid,
//! unique paths and a total that is the sum of its sizes.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use tidecache::fill::manifest::read;
use tidecache::object_path::validate;

fuzz_target!(|bytes: &[u8]| {
    // JSON, NDJSON or gzip of either, whatever the bytes look like.
    if let Ok(manifest) = read(bytes, None, 1 << 24) {
        let mut seen = HashSet::new();
        let mut total = 0u64;
        for object in manifest.iter() {
            assert_eq!(validate(object.path), Ok(()));
            assert!(seen.insert(object.path.to_owned()));
            total += object.size;
        }
        assert_eq!(total, manifest.total_bytes);
    }
});
