//! Key files the configuration and the command line name (`http.url_signing_key_file`,
//! `admin.hmac_key_file`, `sign-url --key-file`, `manifest push --hmac-key-file`): read one
//! way everywhere, so a key the box refuses is refused by the tools too.

use std::path::{Path, PathBuf};

/// The shortest signed-URL key accepted: shorter keys are guessable.
pub const MIN_SIGNING_KEY_LEN: usize = 16;
/// The shortest manifest HMAC key accepted: any, but not none.
pub const MIN_HMAC_KEY_LEN: usize = 1;

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file holds nothing but white space.
    #[error("{path}: the key is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The key is too short to be safe.
    #[error("{path}: the key must be at least {min} bytes")]
    TooShort {
        /// The file.
        path: PathBuf,
        /// The shortest key accepted.
        min: usize,
    },
}

/// A key from a file, white space around it trimmed, at least `min` bytes long.
pub fn read_key(path: &Path, min: usize) -> Result<Vec<u8>, KeyFileError> {
    let key = std::fs::read(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let key = key.trim_ascii().to_vec();
    if key.is_empty() {
        return Err(KeyFileError::Empty {
            path: path.to_owned(),
        });
    }
    if key.len() < min {
        return Err(KeyFileError::TooShort {
            path: path.to_owned(),
            min,
        });
    }
    Ok(key)
}

/// A PEM reading error in words: rustls' own message prints the marker or line it choked
/// on as an array of byte values (`[45, 45, 45, ...]`), which no operator can read.
pub fn describe_pem_error(err: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match err {
        Error::MissingSectionEnd { end_marker } => format!(
            "a PEM section is not closed: no \"-----END {}-----\" line",
            String::from_utf8_lossy(end_marker).trim()
        ),
        Error::IllegalSectionStart { line } => format!(
            "not a PEM section start: {:?}",
            String::from_utf8_lossy(line).trim()
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "  0123456789abcdef\n").unwrap();
        assert_eq!(read_key(&path, 16).unwrap(), b"0123456789abcdef");
        assert!(matches!(
            read_key(&path, 17),
            Err(KeyFileError::TooShort { min: 17, .. })
        ));
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            read_key(&path, 1),
            Err(KeyFileError::Empty { .. })
        ));
        let missing = read_key(&dir.path().join("missing"), 1).unwrap_err();
        assert!(missing.to_string().contains("missing"), "{missing}");
    }
}
