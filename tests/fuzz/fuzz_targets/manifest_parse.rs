//! The manifest parser and validator: never panics; an accepted manifest has valid,
//! unique paths and a total that is the sum of its sizes.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use tidecache::fill::manifest::parse;
use tidecache::object_path::validate;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(manifest) = parse(bytes) {
        let mut seen = HashSet::new();
        let mut total = 0u64;
        for object in &manifest.objects {
            assert_eq!(validate(&object.path), Ok(()));
            assert!(seen.insert(object.path.clone()));
            total += object.size;
        }
        assert_eq!(total, manifest.total_bytes);
    }
});
