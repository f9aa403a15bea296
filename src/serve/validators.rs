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

impl Validators {
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
