//! Where the configuration meets the modules: each module's settings built from [`Config`],
//! and every file the configuration names read up front, so that a bad one stops a start or
//! a reload before anything has changed.

use super::error::StartError;
use crate::admin::AdminSettings;
use crate::admin::auth::AdminToken;
use crate::config::key_file::{MIN_HMAC_KEY_LEN, MIN_SIGNING_KEY_LEN, read_key};
use crate::config::{Config, DuringFill, HttpsConfig};
use crate::fill::engine::EngineSettings;
use crate::http::ConnectionLimits;
use crate::http::tls::{Resumption, ViewerTls};
use crate::schedule::Plan;
use crate::site::SiteToken;

/// What the configuration's key and certificate files hold, read and checked.
pub(super) struct FilesRead {
    /// The viewer TLS settings, when HTTPS listeners are configured.
    pub tls: Option<ViewerTls>,
    /// The admin token, manifest HMAC key, push limit and readiness settings.
    pub admin: AdminSettings,
    /// The signed-URL key, if configured.
    pub signing_key: Option<Vec<u8>>,
    /// The site token, when `[site]` is configured.
    pub site_token: Option<SiteToken>,
}

impl FilesRead {
    /// Reads every file `config` names, the certificate and key only when `https` says
    /// HTTPS is served.
    pub fn read(
        config: &Config,
        https: Https,
        resumption: &Resumption,
    ) -> Result<FilesRead, StartError> {
        let tls = match &config.https {
            Some(settings) if https == Https::Served => Some(viewer_tls(settings, resumption)?),
            _ => None,
        };
        Ok(FilesRead {
            tls,
            admin: admin_settings(config)?,
            signing_key: signing_key(config)?,
            site_token: config
                .site
                .as_ref()
                .map(|site| {
                    SiteToken::load(site.token_file.as_deref())
                        .map_err(|err| StartError::config("site.token_file", err))
                })
                .transpose()?,
        })
    }
}

/// Whether the daemon serves HTTPS, so the certificate and key must be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Https {
    /// HTTPS listeners are (at start: configured; at reload: were bound at start).
    Served,
    /// No HTTPS listener.
    NotServed,
}

impl Https {
    /// What `config` asks for at start.
    pub fn of(config: &Config) -> Https {
        let listens = config
            .https
            .as_ref()
            .is_some_and(|https| !https.listen.is_empty());
        if listens {
            Https::Served
        } else {
            Https::NotServed
        }
    }
}

/// The scheduler's plan from `[schedule]`; `local` becomes the host's zone here.
pub(super) fn plan(config: &Config) -> Result<Plan, StartError> {
    let zone = config
        .schedule
        .timezone
        .resolve()
        .map_err(|err| StartError::config("schedule.timezone", err))?;
    Ok(Plan {
        windows: config.schedule.fill_windows.clone(),
        zone,
        drain: config.schedule.drain.0,
    })
}

/// `[limits]` as the listeners use them.
pub(super) fn connection_limits(config: &Config) -> ConnectionLimits {
    ConnectionLimits {
        header_timeout: config.limits.header_timeout.0,
        idle_timeout: config.limits.idle_timeout.0,
        max_header_size: config.limits.max_header_size.0 as usize,
    }
}

/// `limits.max_queued_bytes` as a permit count (one per byte), within what a semaphore holds.
pub(super) fn queued_bytes(config: &Config) -> usize {
    usize::try_from(config.limits.max_queued_bytes.0)
        .unwrap_or(usize::MAX)
        .min(tokio::sync::Semaphore::MAX_PERMITS)
}

/// `[fill]` as the engine uses it.
pub(super) fn engine_settings(config: &Config) -> EngineSettings {
    EngineSettings {
        concurrency: config.fill.concurrency as usize,
        retries: config.fill.retries,
        retry_base: config.fill.retry_delay.0,
        stop_grace: config.fill.stop_grace.0,
        manifest_url: config.fill.manifest_url.clone(),
        manifest_poll: config.fill.manifest_poll.0,
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
        (
            "http.popularity",
            running.http.popularity != wanted.http.popularity,
        ),
        ("cache", running.cache != wanted.cache),
        ("fill.ca_file", running.fill.ca_file != wanted.fill.ca_file),
        ("http.access_log", access_log(running) != access_log(wanted)),
        (
            "site.box",
            running.site.as_ref().map(|site| &site.box_name)
                != wanted.site.as_ref().map(|site| &site.box_name),
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// The viewer TLS settings from `[https]`; a file error names `https.cert` or `https.key`.
fn viewer_tls(https: &HttpsConfig, resumption: &Resumption) -> Result<ViewerTls, StartError> {
    let suites: Vec<_> = https
        .cipher_suites
        .iter()
        .map(|suite| suite.suite())
        .collect();
    ViewerTls::load(&https.cert, &https.key, &suites, resumption)
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

/// The admin token, manifest HMAC key and push limit, read from their files, and what
/// readiness needs of the configuration.
fn admin_settings(config: &Config) -> Result<AdminSettings, StartError> {
    let token = AdminToken::load(config.admin.token_file.as_deref())
        .map_err(|err| StartError::config("admin.token_file", err))?;
    let hmac_key = config
        .admin
        .hmac_key_file
        .as_deref()
        .map(|path| read_key(path, MIN_HMAC_KEY_LEN))
        .transpose()
        .map_err(|err| StartError::config("admin.hmac_key_file", err))?;
    Ok(AdminSettings {
        token,
        hmac_key,
        max_manifest_size: config.fill.max_manifest_size.0 as usize,
        serves_while_filling: config.schedule.during_fill == DuringFill::Serve,
        body_timeout: config.limits.idle_timeout.0,
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
        wanted.http.cache_control = crate::config::HeaderText::from_static("no-store");
        assert_eq!(needing_restart(&running, &wanted), ["http.workers"]);
    }
}
