//! The request path normaliser: never panics, and what it accepts is a valid object path
//! with no dot segments, NUL, control characters or backslashes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidecache::object_path::{from_request, validate};

fuzz_target!(|path: &str| {
    if let Ok(object) = from_request(path) {
        if !object.is_empty() {
            assert_eq!(validate(&object), Ok(()), "{path:?} -> {object:?}");
        }
        assert!(!object.split('/').any(|segment| segment == "." || segment == ".."));
        assert!(!object.contains('\\') && !object.contains('\0'));
    }
});
