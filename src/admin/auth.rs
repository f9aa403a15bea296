//! The bearer token that guards mutating admin calls (`PUT /v1/manifest`, `POST /v1/mode`).
//!
//! The token is read once from `admin.token_file`. Requests are compared by the sha256 of
//! the presented token against the sha256 of the real one, in constant time, so neither the
//! token's bytes nor its length leak through timing. Without a token file every mutating call
//! is refused: a box is never left writable by default.

use std::path::Path;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest token accepted, so a placeholder like "x" cannot guard a box.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a request was not allowed to change anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `admin.token_file` is configured, so mutating calls are refused.
    #[error("mutating calls are refused: no admin.token_file is configured")]
    NotConfigured,
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// A token that is not the configured one.
    #[error("wrong bearer token")]
    Wrong,
}

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The token is too short to protect anything.
    #[error("{path}: the token must be at least {MIN_TOKEN_LEN} characters")]
    TooShort {
        /// The file.
        path: String,
    },
}

/// The configured token, kept only as its digest.
#[derive(Debug, Clone)]
pub struct AdminToken {
    digest: Option<[u8; 32]>,
}

impl AdminToken {
    /// No token: every mutating call is refused.
    pub const NONE: AdminToken = AdminToken { digest: None };

    /// A token given directly (tests, embedding).
    pub fn from_secret(secret: &str) -> AdminToken {
        AdminToken {
            digest: Some(Sha256::digest(secret.as_bytes()).into()),
        }
    }

    /// Reads the token file (surrounding whitespace ignored); `None` means no token.
    pub fn load(path: Option<&Path>) -> Result<AdminToken, TokenFileError> {
        let Some(path) = path else {
            return Ok(AdminToken::NONE);
        };
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let secret = text.trim();
        if secret.len() < MIN_TOKEN_LEN {
            return Err(TokenFileError::TooShort {
                path: path.display().to_string(),
            });
        }
        Ok(AdminToken::from_secret(secret))
    }

    /// Checks a request's `Authorization: Bearer <token>` header.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let Some(expected) = &self.digest else {
            return Err(AuthError::NotConfigured);
        };
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or(AuthError::Missing)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if bool::from(digest.ct_eq(expected)) {
            Ok(())
        } else {
            Err(AuthError::Wrong)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, authorization.parse().unwrap());
        headers
    }

    #[test]
    fn the_right_token_passes_in_any_scheme_case() {
        let token = AdminToken::from_secret("correct horse battery staple");
        assert_eq!(
            token.check(&headers("Bearer correct horse battery staple")),
            Ok(())
        );
        assert_eq!(
            token.check(&headers("bearer correct horse battery staple")),
            Ok(())
        );
    }

    #[test]
    fn wrong_missing_or_other_schemes_fail() {
        let token = AdminToken::from_secret("correct horse battery staple");
        assert_eq!(token.check(&headers("Bearer nope")), Err(AuthError::Wrong));
        assert_eq!(token.check(&HeaderMap::new()), Err(AuthError::Missing));
        assert_eq!(
            token.check(&headers("Basic Y29ycmVjdA==")),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn no_token_configured_refuses_everything() {
        assert_eq!(
            AdminToken::NONE.check(&headers("Bearer anything-at-all-here")),
            Err(AuthError::NotConfigured)
        );
    }

    #[test]
    fn token_files_are_trimmed_and_must_be_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "  0123456789abcdef0123\n").unwrap();
        let token = AdminToken::load(Some(&good)).unwrap();
        assert_eq!(token.check(&headers("Bearer 0123456789abcdef0123")), Ok(()));
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        assert!(matches!(
            AdminToken::load(Some(&short)),
            Err(TokenFileError::TooShort { .. })
        ));
        assert!(AdminToken::load(Some(&dir.path().join("missing"))).is_err());
    }
}
