//! Where the configuration meets the modules: each module's settings built from [`Config`],
//! and every file the configuration names read up front, so that a bad one stops a start or
//! a reload before anything has changed.

use std::path::{Path, PathBuf};

use super::StartError;
use crate::admin::AdminAuth;
use crate::admin::auth::AdminToken;
use crate::config::{Config, HttpsConfig};
use crate::fill::engine::EngineSettings;
use crate::http::ConnectionLimits;
use crate::http::tls::ViewerTls;
use crate::schedule::Plan;

/// The shortest `http.url_signing_key_file` accepted: shorter keys are guessable.
const MIN_SIGNING_KEY_LEN: usize = 16;

/// What the configuration's key and certificate files hold, read and checked.
pub(super) struct FilesRead {
    /// The viewer TLS settings, when HTTPS listeners are configured.
    pub tls: Option<ViewerTls>,
    /// The admin token, manifest HMAC key and push limit.
    pub auth: AdminAuth,
    /// The signed-URL key, if configured.
    pub signing_key: Option<Vec<u8>>,
}

impl FilesRead {
    /// Reads every file `config` names; `with_tls` says whether HTTPS is served (at start:
    /// whether any HTTPS address is configured; at reload: whether it was at start).
    pub fn read(config: &Config, with_tls: bool) -> Result<FilesRead, StartError> {
        let tls = match &config.https {
            Some(https) if with_tls => Some(viewer_tls(https)?),
            _ => None,
        };
        Ok(FilesRead {
            tls,
            auth: admin_auth(config)?,
            signing_key: signing_key(config)?,
        })
    }
}

/// Whether `config` asks for HTTPS listeners.
pub(super) fn serves_https(config: &Config) -> bool {
    config
        .https
        .as_ref()
        .is_some_and(|https| !https.listen.is_empty())
}

/// The scheduler's plan: `[schedule]`, whose zone was resolved when the file was read.
pub(super) fn plan(config: &Config) -> Plan {
    Plan {
        windows: config.schedule.fill_windows.clone(),
        zone: config.schedule.timezone.zone().clone(),
        drain: config.schedule.drain.0,
    }
}

/// `[limits]` as the listeners use them.
pub(super) fn connection_limits(config: &Config) -> ConnectionLimits {
    ConnectionLimits {
        header_timeout: config.limits.header_timeout.0,
        idle_timeout: config.limits.idle_timeout.0,
        max_header_size: config.limits.max_header_size.0 as usize,
    }
}

/// `[fill]` as the engine uses it.
pub(super) fn engine_settings(config: &Config) -> EngineSettings {
    EngineSettings {
        concurrency: config.fill.concurrency as usize,
        retries: config.fill.retries,
        retry_base: config.fill.retry_delay.0,
        stop_grace: config.fill.stop_grace.0,
        manifest_url: (!config.fill.manifest_url.is_empty())
            .then(|| config.fill.manifest_url.clone()),
        max_manifest_size: config.fill.max_manifest_size.0 as usize,
    }
}

/// The open-file cache's size: as configured, but at most a quarter of the soft open-file
/// limit, so cached files can never starve accepts (a shell's default is 1024).
pub(super) fn open_file_cache_size(configured: u64) -> u64 {
    use rustix::process::{Resource, getrlimit};
    let limit = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    configured.min(limit / 4)
}

/// The keys that changed between `running` and `wanted` but only take effect at a restart.
pub(super) fn needing_restart(running: &Config, wanted: &Config) -> Vec<&'static str> {
    let https_listen = |config: &Config| config.https.as_ref().map(|https| https.listen.clone());
    let access_log = |config: &Config| {
        (
            config.http.access_log.clone(),
            config.http.access_log_format,
        )
    };
    [
        ("http.listen", running.http.listen != wanted.http.listen),
        (
            "https.listen",
            https_listen(running) != https_listen(wanted),
        ),
        ("admin.listen", running.admin.listen != wanted.admin.listen),
        ("store", running.stores != wanted.stores),
        ("state_dir", running.state_dir != wanted.state_dir),
        (
            "http.sendfile",
            running.http.sendfile != wanted.http.sendfile,
        ),
        ("http.workers", running.http.workers != wanted.http.workers),
        ("cache", running.cache != wanted.cache),
        ("fill.ca_file", running.fill.ca_file != wanted.fill.ca_file),
        ("http.access_log", access_log(running) != access_log(wanted)),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

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
fn read_key(path: &Path, min: usize) -> Result<Vec<u8>, KeyFileError> {
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

/// The viewer TLS settings from `[https]`; a file error names `https.cert` or `https.key`.
fn viewer_tls(https: &HttpsConfig) -> Result<ViewerTls, StartError> {
    let suites: Vec<_> = https
        .cipher_suites
        .iter()
        .map(|suite| suite.suite())
        .collect();
    ViewerTls::load(&https.cert, &https.key, &suites)
        .map_err(|err| StartError::config(err.setting(), err))
}

/// The signed-URL key from `http.url_signing_key_file`, if configured.
fn signing_key(config: &Config) -> Result<Option<Vec<u8>>, StartError> {
    config
        .http
        .url_signing_key_file
        .as_deref()
        .map(|path| read_key(path, MIN_SIGNING_KEY_LEN))
        .transpose()
        .map_err(|err| StartError::config("http.url_signing_key_file", err))
}

/// The admin token, manifest HMAC key and push limit, read from their files.
fn admin_auth(config: &Config) -> Result<AdminAuth, StartError> {
    let token = AdminToken::load(config.admin.token_file.as_deref())
        .map_err(|err| StartError::config("admin.token_file", err))?;
    let hmac_key = config
        .admin
        .hmac_key_file
        .as_deref()
        .map(|path| read_key(path, 1))
        .transpose()
        .map_err(|err| StartError::config("admin.hmac_key_file", err))?;
    Ok(AdminAuth {
        token,
        hmac_key,
        max_manifest_size: config.fill.max_manifest_size.0 as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_keys_are_listed_only_when_changed() {
        let running = Config::default();
        assert!(needing_restart(&running, &running).is_empty());
        let mut wanted = running.clone();
        wanted.http.workers = 3;
        wanted.http.cache_control = "no-store".to_owned();
        assert_eq!(needing_restart(&running, &wanted), ["http.workers"]);
    }

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
