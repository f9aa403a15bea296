//! The bearer token a site's boxes share: a peer presents it to fetch stored objects and
//! to ask what a box holds (`/v1/site/...` on the admin listener).

use std::path::Path;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest token accepted, as for the admin token.
pub const MIN_TOKEN_LEN: usize = 16;

/// The site token: its secret (sent to peers) and its digest (checked in constant time).
#[derive(Clone)]
pub struct SiteToken {
    secret: Option<String>,
    digest: Option<[u8; 32]>,
}

impl std::fmt::Debug for SiteToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.secret.is_some() {
            "SiteToken(set)"
        } else {
            "SiteToken(none)"
        })
    }
}

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SiteTokenError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Too short to protect anything.
    #[error("{path}: the token must be at least {MIN_TOKEN_LEN} characters")]
    TooShort {
        /// The file.
        path: String,
    },
}

impl SiteToken {
    /// No token: a site of one box; every `/v1/site/` request is refused.
    pub fn none() -> SiteToken {
        SiteToken {
            secret: None,
            digest: None,
        }
    }

    /// A token given directly.
    pub fn from_secret(secret: &str) -> SiteToken {
        SiteToken {
            secret: Some(secret.to_owned()),
            digest: Some(Sha256::digest(secret.as_bytes()).into()),
        }
    }

    /// Reads `site.token_file` (surrounding whitespace ignored).
    pub fn load(path: Option<&Path>) -> Result<SiteToken, SiteTokenError> {
        let Some(path) = path else {
            return Ok(SiteToken::none());
        };
        let text = std::fs::read_to_string(path).map_err(|source| SiteTokenError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let secret = text.trim();
        if secret.len() < MIN_TOKEN_LEN {
            return Err(SiteTokenError::TooShort {
                path: path.display().to_string(),
            });
        }
        Ok(SiteToken::from_secret(secret))
    }

    /// The `Authorization` header value a request to a peer carries.
    pub fn bearer(&self) -> Option<String> {
        self.secret
            .as_ref()
            .map(|secret| format!("Bearer {secret}"))
    }

    /// Whether `headers` carry this token (never when there is none).
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(digest) = &self.digest else {
            return false;
        };
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        presented.is_some_and(|presented| {
            let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
            bool::from(presented.ct_eq(digest))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_bearer_token_is_admitted() {
        let token = SiteToken::from_secret("0123456789abcdef-site");
        let mut headers = HeaderMap::new();
        assert!(!token.admits(&headers));
        headers.insert(http::header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert!(!token.admits(&headers));
        headers.insert(
            http::header::AUTHORIZATION,
            token.bearer().unwrap().parse().unwrap(),
        );
        assert!(token.admits(&headers));
        assert!(!SiteToken::none().admits(&headers));
    }
}
