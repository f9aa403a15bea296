//! Signed viewer URLs (CONTRACT section 4): `?exp=<unix seconds>&sig=<hex HMAC-SHA256 of
//! "<path>:<exp>">`, where `<path>` is the URL path starting with `/`. A signature is checked
//! against the path exactly as requested, and, failing that, against its canonical encoding
//! ([`crate::object_path::to_url_path`], what `tidecache sign-url` signs): players and
//! proxies spell the same path differently (`%7E` or `~`, which characters they escape), and
//! each spelling names the same object, so none grants more than the signature meant.
//! Checked before any disk access; the HMAC is compared in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a request's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `exp` or no `sig` parameter, or not numbers/hex.
    #[error("missing or malformed exp/sig")]
    Malformed,
    /// `exp` is in the past.
    #[error("expired")]
    Expired,
    /// The HMAC does not match.
    #[error("wrong signature")]
    Wrong,
}

/// Checks `exp` and `sig` of `query` for `path` at `now` (Unix seconds).
pub fn check(key: &[u8], path: &str, query: Option<&str>, now: i64) -> Result<(), SignatureError> {
    let mut exp = None;
    let mut sig = None;
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("exp", value)) => exp = Some(value),
            Some(("sig", value)) => sig = Some(value),
            _ => {}
        }
    }
    let exp_text = exp.ok_or(SignatureError::Malformed)?;
    let expires: i64 = exp_text.parse().map_err(|_| SignatureError::Malformed)?;
    let signature = sig
        .filter(|sig| sig.len() == 64)
        .and_then(crate::store::unhex)
        .ok_or(SignatureError::Malformed)?;
    let signs = |path: &str| {
        Hmac::<Sha256>::new_from_slice(key).is_ok_and(|mut mac| {
            mac.update(path.as_bytes());
            mac.update(b":");
            mac.update(exp_text.as_bytes());
            mac.verify_slice(&signature).is_ok()
        })
    };
    let valid = signs(path)
        || crate::object_path::canonical_url_path(path)
            .is_some_and(|canonical| canonical != path && signs(&canonical));
    if !valid {
        return Err(SignatureError::Wrong);
    }
    if expires < now {
        return Err(SignatureError::Expired);
    }
    Ok(())
}

/// Signs `path` until `expires` (Unix seconds): the query to append, `exp=...&sig=...`.
pub fn sign(key: &[u8], path: &str, expires: i64) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(format!("{path}:{expires}").as_bytes());
    format!(
        "exp={expires}&sig={}",
        crate::store::hex(&mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"url-signing-key";

    #[test]
    fn any_spelling_of_the_signed_path_passes_and_no_other_path_does() {
        let query = sign(KEY, "/t/seg%20one~.ts", 2000);
        for spelling in [
            "/t/seg%20one~.ts",
            "/t/seg%20one%7E.ts",
            "/t/%73eg%20one~.ts",
            "//t/seg%20one~.ts",
            "/t//seg%20one~.ts",
        ] {
            assert_eq!(check(KEY, spelling, Some(&query), 0), Ok(()), "{spelling}");
        }
        for other in ["/t/seg%20two~.ts", "/t/seg one~.ts/", "/t/seg%2520one~.ts"] {
            assert_eq!(
                check(KEY, other, Some(&query), 0),
                Err(SignatureError::Wrong),
                "{other}"
            );
        }
    }

    #[test]
    fn a_signed_path_passes_until_it_expires() {
        let query = sign(KEY, "/t/seg_1.ts", 2000);
        assert_eq!(check(KEY, "/t/seg_1.ts", Some(&query), 1999), Ok(()));
        assert_eq!(check(KEY, "/t/seg_1.ts", Some(&query), 2000), Ok(()));
        assert_eq!(
            check(KEY, "/t/seg_1.ts", Some(&query), 2001),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn other_paths_keys_expiries_and_shapes_fail() {
        let query = sign(KEY, "/t/seg_1.ts", 2000);
        assert_eq!(
            check(KEY, "/t/seg_2.ts", Some(&query), 0),
            Err(SignatureError::Wrong)
        );
        assert_eq!(
            check(b"other", "/t/seg_1.ts", Some(&query), 0),
            Err(SignatureError::Wrong)
        );
        let extended = query.replace("exp=2000", "exp=9999");
        assert_eq!(
            check(KEY, "/t/seg_1.ts", Some(&extended), 0),
            Err(SignatureError::Wrong)
        );
        assert_eq!(
            check(KEY, "/t/seg_1.ts", None, 0),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            check(KEY, "/t/seg_1.ts", Some("exp=1&sig=zz"), 0),
            Err(SignatureError::Malformed)
        );
        let with_more = format!("cb=7&{query}&token=x");
        assert_eq!(
            check(KEY, "/t/seg_1.ts", Some(&with_more), 0),
            Ok(()),
            "other parameters are ignored"
        );
    }
}
