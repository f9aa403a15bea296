//! The daemon's configuration: the TOML file of CONTRACT section 2.
//!
//! Every key is optional and has the documented default, so an empty file (or none) gives a
//! daemon that works on a laptop. Unknown keys are refused, because a typo must never silently
//! change how a box behaves. Errors name the offending key (`http.listen[0]: ...`) so that
//! `tidecache check-config` can print one line an operator can act on.

/// Implements serde for a setting the file writes as one string: `parse` reads it (its
/// error becomes the key's one-line message) and `$render` writes it back for
/// `check-config`. One place for what every such setting needs.
macro_rules! string_setting {
    ($type:ty, $render:expr) => {
        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(deserializer)?;
                <$type>::parse(&text).map_err(serde::de::Error::custom)
            }
        }

        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let render: fn(&$type) -> String = $render;
                serializer.serialize_str(&render(self))
            }
        }
    };
}

pub mod cipher_suites;
mod header_text;
pub mod key_file;
mod manifest_url;
pub mod site;
mod time_zone;
mod units;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use cipher_suites::CipherSuiteSetting;
pub use header_text::HeaderText;
pub use manifest_url::ManifestUrl;
pub use site::{PeerConfig, SiteConfig};
pub use time_zone::TimeZoneSetting;
pub use units::{ByteSize, HumanDuration, Rate, parse_duration, parse_rate, parse_size};

use crate::schedule::FillWindow;

/// Stores a box may have (`[[store]]` entries): one per drive, and what the index can
/// name (8 bits, one value kept for free entries).
pub const MAX_STORES: usize = 255;

/// Where `tidecache serve` looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tidecache/tidecache.toml";

/// A configuration problem, always tied to the key that caused it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TOML did not parse, or a key had the wrong type or an unknown name.
    #[error("{key}: {message}")]
    Parse {
        /// The dotted key path, e.g. `limits.header_timeout`.
        key: String,
        /// What was wrong with it.
        message: String,
    },
    /// The values parsed but do not make sense together.
    #[error("{key}: {message}")]
    Invalid {
        /// The dotted key path.
        key: String,
        /// What was wrong with it.
        message: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the daemon keeps its own state (the mode override, the manifest in force and the
    /// fill's progress): small files written atomically, never content. Default `./tidecache-state`; a service
    /// uses `/var/lib/tidecache`.
    pub state_dir: PathBuf,
    /// Plain-HTTP viewer listeners.
    pub http: HttpConfig,
    /// Optional TLS viewer listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https: Option<HttpsConfig>,
    /// The operator's listener: health, metrics, status, manifests, mode.
    pub admin: AdminConfig,
    /// One entry per NVMe device (`[[store]]` in the file).
    #[serde(rename = "store")]
    pub stores: Vec<StoreConfig>,
    /// When the box fills and what viewers get meanwhile.
    pub schedule: ScheduleConfig,
    /// How the nightly fill downloads.
    pub fill: FillConfig,
    /// Protection against slow or abusive clients.
    pub limits: LimitsConfig,
    /// The RAM cache of hot objects.
    pub cache: CacheConfig,
    /// The site of boxes this box belongs to (CONTRACT section 7); none: a box alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<SiteConfig>,
}

/// `[cache]`: hot objects kept in RAM as verified bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Bytes of RAM for hot objects; "0" turns the cache off.
    pub ram: ByteSize,
    /// Largest object kept in RAM.
    pub max_object: ByteSize,
    /// Object files kept open between requests (nginx's `open_file_cache max=`); 0 turns it
    /// off. Bounded at start to a quarter of the process's open-file limit.
    pub open_files: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ram: ByteSize(1 << 30),
            max_object: ByteSize(16 << 20),
            open_files: 10_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("./tidecache-state"),
            http: HttpConfig::default(),
            https: None,
            admin: AdminConfig::default(),
            stores: vec![StoreConfig {
                path: PathBuf::from("./tidecache-data"),
                capacity: None,
            }],
            schedule: ScheduleConfig::default(),
            fill: FillConfig::default(),
            limits: LimitsConfig::default(),
            cache: CacheConfig::default(),
            site: None,
        }
    }
}

/// The most viewer event-loop threads `http.workers` may ask for.
pub const MAX_VIEWER_WORKERS: u32 = 1024;

/// `[http]`: viewers over plain HTTP/1.1 and HTTP/2 (h2c prior knowledge).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Addresses to accept viewers on.
    pub listen: Vec<SocketAddr>,
    /// `Cache-Control` sent on 200, 206 and 304 answers.
    pub cache_control: HeaderText,
    /// `Access-Control-Allow-Origin` for browser players; empty turns CORS headers off.
    pub cors_allow_origin: HeaderText,
    /// Optional key for signed viewer URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_signing_key_file: Option<PathBuf>,
    /// Optional viewer access log file; written by a background task, reopened on SIGHUP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log: Option<PathBuf>,
    /// `combined` (Apache/nginx) or `json`, one line per request.
    pub access_log_format: AccessLogFormat,
    /// Answer plain GET/HEAD on HTTP/1.1 with the sendfile fast path (hyper answers the rest).
    pub sendfile: bool,
    /// Viewer event-loop threads, each accepting on every HTTP and HTTPS listener (like
    /// nginx's `worker_processes`); 0 means one per CPU.
    pub workers: u32,
    /// Count what viewers ask for, for `GET /v1/popularity`.
    pub popularity: bool,
}

/// Line format of the viewer access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// The combined log format that log tools already read.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            cache_control: HeaderText::from_static("public, max-age=86400"),
            cors_allow_origin: HeaderText::from_static("*"),
            url_signing_key_file: None,
            access_log: None,
            access_log_format: AccessLogFormat::Combined,
            sendfile: true,
            workers: 0,
            popularity: true,
        }
    }
}

/// `[https]`: viewers over TLS, ALPN `h2` and `http/1.1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpsConfig {
    /// Addresses to accept TLS viewers on.
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Cipher suites offered, by IANA name, in the server's order of preference; a client
    /// that lists ChaCha20-Poly1305 first (no AES hardware) gets ChaCha20.
    pub cipher_suites: Vec<CipherSuiteSetting>,
}

/// The default `https.cipher_suites`: AES-128-GCM and ChaCha20-Poly1305 for TLS 1.3 and 1.2.
/// AES-256-GCM is left out: every TLS 1.3 client must support AES-128-GCM (RFC 8446 section
/// 9.1), it is as safe for video, and it costs the box and the player about a third less CPU
/// per byte. OpenSSL clients (ffmpeg, wrk) list AES-256 first, so offering it means using it.
pub const DEFAULT_CIPHER_SUITES: [&str; 6] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

impl Default for HttpsConfig {
    fn default() -> Self {
        HttpsConfig {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 443))],
            cert: PathBuf::from("/etc/tidecache/tls/cert.pem"),
            key: PathBuf::from("/etc/tidecache/tls/key.pem"),
            cipher_suites: DEFAULT_CIPHER_SUITES
                .iter()
                .filter_map(|name| CipherSuiteSetting::parse(name).ok())
                .collect(),
        }
    }
}

/// `[admin]`: the operator's listener, never reachable through a viewer port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener.
    pub listen: SocketAddr,
    /// Bearer token for mutating calls; without it they are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// When set, pushed manifests must carry a valid HMAC-SHA256 signature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hmac_key_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            token_file: None,
            hmac_key_file: None,
        }
    }
}

/// `[[store]]`: one content store, normally one NVMe device's file system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory that holds the store (created on first start).
    pub path: PathBuf,
    /// Bytes the store may use; default: free space at start plus what it holds, less a reserve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<ByteSize>,
}

/// What viewers get while the box is not serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DuringFill {
    /// 503 with `Retry-After` until the window ends.
    Refuse,
    /// 302 to `schedule.fallback_url` + path.
    Redirect,
    /// Keep serving while filling.
    Serve,
}

/// `[schedule]`: the local-time fill windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// IANA time zone name, or `local`; resolved when the file is read.
    pub timezone: TimeZoneSetting,
    /// Local wall-clock windows, `"HH:MM-HH:MM"`, possibly crossing midnight.
    pub fill_windows: Vec<FillWindow>,
    /// Viewer answer while filling.
    pub during_fill: DuringFill,
    /// Where redirects and store misses send players; empty means none.
    pub fallback_url: HeaderText,
    /// How long in-flight viewer responses get when serving stops.
    pub drain: HumanDuration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            timezone: TimeZoneSetting::utc(),
            fill_windows: vec![FillWindow::new(2 * 60, 6 * 60)],
            during_fill: DuringFill::Refuse,
            fallback_url: HeaderText::default(),
            drain: HumanDuration(std::time::Duration::from_secs(30)),
        }
    }
}

/// `[fill]`: how the nightly fill downloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FillConfig {
    /// Optional URL pulled at window start; pushed manifests work regardless.
    pub manifest_url: ManifestUrl,
    /// While a fill window is open, how often `manifest_url` is pulled again (a
    /// conditional GET), so content published after the window opened arrives that night.
    pub manifest_poll: HumanDuration,
    /// Transfers in flight at once.
    pub concurrency: u32,
    /// Cap on ingest bandwidth; 0 means unlimited.
    pub max_rate: Rate,
    /// Attempts per object after the first, with exponential backoff and jitter.
    pub retries: u32,
    /// First retry delay; each retry doubles it (with jitter), up to 30 s.
    pub retry_delay: HumanDuration,
    /// When a window ends, how long in-flight transfers may go on before they are
    /// checkpointed for the next window.
    pub stop_grace: HumanDuration,
    /// Largest manifest accepted (pushed or pulled); bigger pushes get 413.
    pub max_manifest_size: ByteSize,
    /// Extra CA certificate(s), PEM, trusted for https origins besides the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Directories `file://` sources may be read from (symlinks resolved); empty: none.
    pub file_roots: Vec<PathBuf>,
    /// Share of the manifest's bytes a box must hold before `/readyz` first says ready, when
    /// no fill pass has yet completed without a failure (0 < share <= 1).
    pub ready_share: f64,
    /// Write fills with `O_DIRECT` (bypassing the page cache, so they do not evict what
    /// viewers read); file systems that refuse it are written through the page cache.
    pub direct_writes: bool,
}

impl Default for FillConfig {
    fn default() -> Self {
        FillConfig {
            manifest_url: ManifestUrl::None,
            manifest_poll: HumanDuration(std::time::Duration::from_secs(600)),
            concurrency: 8,
            max_rate: Rate { bytes_per_sec: 0 },
            retries: 5,
            retry_delay: HumanDuration(std::time::Duration::from_secs(1)),
            stop_grace: HumanDuration(std::time::Duration::from_secs(10)),
            max_manifest_size: ByteSize(256 * 1024 * 1024),
            ca_file: None,
            file_roots: Vec::new(),
            ready_share: 0.95,
            direct_writes: true,
        }
    }
}

/// `[limits]`: protection against slow, idle or abusive clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections held open at once across all viewer listeners; more are closed at accept.
    pub max_connections: u32,
    /// Time a client has to send a complete request head (HTTP/1) or TLS handshake.
    pub header_timeout: HumanDuration,
    /// A connection on which no byte moved for this long is closed.
    pub idle_timeout: HumanDuration,
    /// Largest request head accepted; beyond it the answer is 431.
    pub max_header_size: ByteSize,
    /// On SIGTERM, how long in-flight responses get before connections are cut.
    pub shutdown_timeout: HumanDuration,
    /// Bytes read from disk for viewers and not yet taken by their sockets, across all
    /// connections, beyond the 256 KiB each connection may always queue: what viewers who
    /// stop reading can pin.
    pub max_queued_bytes: ByteSize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 100_000,
            header_timeout: HumanDuration(std::time::Duration::from_secs(10)),
            idle_timeout: HumanDuration(std::time::Duration::from_secs(60)),
            max_header_size: ByteSize(16 * 1024),
            shutdown_timeout: HumanDuration(std::time::Duration::from_secs(10)),
            max_queued_bytes: ByteSize(256 * 1024 * 1024),
        }
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text)
    }

    /// The configuration `tidecache serve` uses without `--config`: the system file if it
    /// exists, otherwise the built-in defaults.
    pub fn load_default() -> Result<Config, ConfigError> {
        let system = Path::new(DEFAULT_CONFIG_PATH);
        if system.exists() {
            Config::load(system)
        } else {
            Ok(Config::default())
        }
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::parse(text).map_err(|err| ConfigError::Parse {
            key: "(file)".to_owned(),
            message: one_line(err.message()),
        })?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            ConfigError::Parse {
                key: if key == "." {
                    "(top level)".to_owned()
                } else {
                    key
                },
                message: one_line(err.inner().message()),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The effective configuration as TOML, defaults filled in, for `check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
    }

    /// Checks what types alone cannot: values that parse but cannot work.
    fn validate(&self) -> Result<(), ConfigError> {
        let https_listeners = self.https.as_ref().map_or(0, |https| https.listen.len());
        if self.http.listen.is_empty() && https_listeners == 0 {
            return Err(ConfigError::invalid(
                "http.listen",
                "no viewer listener: give at least one address here or in [https]",
            ));
        }
        if self.http.workers > MAX_VIEWER_WORKERS {
            return Err(ConfigError::invalid(
                "http.workers",
                format!(
                    "{} threads is more than {MAX_VIEWER_WORKERS}; 0 means one per CPU",
                    self.http.workers
                ),
            ));
        }
        if let Some(https) = &self.https {
            if https.cipher_suites.is_empty() {
                return Err(ConfigError::invalid(
                    "https.cipher_suites",
                    "is empty: name at least one suite",
                ));
            }
        }
        if self.stores.is_empty() {
            return Err(ConfigError::invalid(
                "store",
                "at least one [[store]] is needed",
            ));
        }
        if self.stores.len() > MAX_STORES {
            return Err(ConfigError::invalid(
                "store",
                format!(
                    "{} stores configured; at most {} (one per drive)",
                    self.stores.len(),
                    MAX_STORES
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (index, store) in self.stores.iter().enumerate() {
            if store.path.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    format!("store[{index}].path"),
                    "is empty",
                ));
            }
            if !seen.insert(&store.path) {
                return Err(ConfigError::invalid(
                    format!("store[{index}].path"),
                    format!("{} is listed twice", store.path.display()),
                ));
            }
        }
        let fallback = self.schedule.fallback_url.as_str();
        let has_http_scheme = fallback.starts_with("http://") || fallback.starts_with("https://");
        if !fallback.is_empty() && !has_http_scheme {
            return Err(ConfigError::invalid(
                "schedule.fallback_url",
                format!("{fallback:?} must start with http:// or https://"),
            ));
        }
        if self.schedule.during_fill == DuringFill::Redirect && fallback.is_empty() {
            return Err(ConfigError::invalid(
                "schedule.during_fill",
                "\"redirect\" needs schedule.fallback_url",
            ));
        }
        if self.fill.manifest_poll.0 < std::time::Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "fill.manifest_poll",
                "must be at least 1s (a conditional GET per poll)",
            ));
        }
        if !(1..=1024).contains(&self.fill.concurrency) {
            return Err(ConfigError::invalid(
                "fill.concurrency",
                "must be between 1 and 1024",
            ));
        }
        if !(self.fill.ready_share > 0.0 && self.fill.ready_share <= 1.0) {
            return Err(ConfigError::invalid(
                "fill.ready_share",
                "must be a share of the manifest's bytes, above 0 and at most 1 (0.95 = 95 %)",
            ));
        }
        if let Some(root) = self.fill.file_roots.iter().find(|root| !root.is_absolute()) {
            // A relative root would be taken from the daemon's working directory (`/` under
            // systemd), and an empty one fences nothing.
            return Err(ConfigError::invalid(
                "fill.file_roots",
                format!("{root:?} must be an absolute directory path"),
            ));
        }
        if let Some(site) = &self.site {
            site.validate()
                .map_err(|err| ConfigError::invalid(err.key, err.message))?;
        }
        if self.limits.max_connections == 0 {
            return Err(ConfigError::invalid(
                "limits.max_connections",
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("limits.header_timeout", self.limits.header_timeout),
            ("limits.idle_timeout", self.limits.idle_timeout),
        ] {
            if value.0.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than zero"));
            }
        }
        if !(8 * 1024..=1024 * 1024).contains(&self.limits.max_header_size.0) {
            return Err(ConfigError::invalid(
                "limits.max_header_size",
                "must be between 8KiB and 1MiB",
            ));
        }
        Ok(())
    }
}

/// toml's messages can span lines; an operator gets one.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_stores_than_the_index_can_name_is_an_error_naming_the_key() {
        let stores: String = (0..=MAX_STORES)
            .map(|number| format!("[[store]]\npath = \"/s/{number}\"\n"))
            .collect();
        let err = Config::parse(&stores).unwrap_err();
        assert!(err.to_string().starts_with("store:"), "{err}");
        let fewer: String = (0..MAX_STORES)
            .map(|number| format!("[[store]]\npath = \"/s/{number}\"\n"))
            .collect();
        assert_eq!(Config::parse(&fewer).unwrap().stores.len(), MAX_STORES);
    }

    #[test]
    fn ready_share_is_a_share_above_zero() {
        for bad in ["0", "0.0", "-0.5", "1.5", "nan", "inf"] {
            let err = Config::parse(&format!("[fill]\nready_share = {bad}\n")).unwrap_err();
            assert!(
                err.to_string().starts_with("fill.ready_share:"),
                "{bad}: {err}"
            );
        }
        let config = Config::parse("[fill]\nready_share = 0.5\n").unwrap();
        assert_eq!(config.fill.ready_share, 0.5);
        assert_eq!(Config::default().fill.ready_share, 0.95);
    }

    #[test]
    fn file_roots_must_be_absolute() {
        for bad in ["\"\"", "\".\"", "\"seed\""] {
            let err = Config::parse(&format!("[fill]\nfile_roots = [{bad}]\n")).unwrap_err();
            assert!(
                err.to_string().starts_with("fill.file_roots:"),
                "{bad}: {err}"
            );
        }
        assert!(Config::parse("[fill]\nfile_roots = [\"/srv/seed\"]\n").is_ok());
    }

    #[test]
    fn the_worked_site_examples_parse_and_agree_on_names_and_weights() {
        let boxes: Vec<SiteConfig> = [
            include_str!("../../config/site/box-a.toml"),
            include_str!("../../config/site/box-b.toml"),
            include_str!("../../config/site/box-c.toml"),
        ]
        .iter()
        .map(|text| {
            Config::parse(text)
                .unwrap_or_else(|err| panic!("config/site: {err}"))
                .site
                .expect("[site]")
        })
        .collect();
        for site in &boxes {
            assert_eq!(site.peers.len(), boxes.len() - 1);
            for peer in &site.peers {
                let other = boxes
                    .iter()
                    .find(|other| other.box_name == peer.name)
                    .unwrap_or_else(|| panic!("{} is no box of the example", peer.name));
                assert_eq!(other.weight, peer.weight, "{}", peer.name);
                assert_eq!(other.copies, site.copies);
            }
        }
    }

    #[test]
    fn shipped_example_parses_and_documents_the_defaults() {
        let example = Config::parse(include_str!("../../config/tidecache.toml"))
            .unwrap_or_else(|err| panic!("config/tidecache.toml: {err}"));
        let defaults = Config::default();
        assert_eq!(render(&example.schedule), render(&defaults.schedule));
        assert_eq!(render(&example.fill), render(&defaults.fill));
        assert_eq!(render(&example.limits), render(&defaults.limits));
        assert_eq!(render(&example.cache), render(&defaults.cache));
        assert_eq!(example.http.cache_control, defaults.http.cache_control);
        assert_eq!(
            example.http.cors_allow_origin,
            defaults.http.cors_allow_origin
        );
        assert_eq!(example.admin.listen, defaults.admin.listen);
        assert_eq!(example.stores.len(), 2);
        assert_eq!(example.state_dir, PathBuf::from("/var/lib/tidecache"));
    }

    /// Renders a config section as TOML so sections compare without `PartialEq`.
    fn render<T: Serialize>(section: &T) -> String {
        toml::to_string(section).unwrap_or_default()
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let config = Config::parse("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.http.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(config.admin.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(config.stores[0].path, PathBuf::from("./tidecache-data"));
        assert_eq!(config.fill.concurrency, 8);
        assert_eq!(config.limits.max_connections, 100_000);
    }

    #[test]
    fn unknown_key_is_refused_and_named() {
        let err = Config::parse("[http]\nlisten = []\ncache_contrl = \"x\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cache_contrl"), "{text}");
    }

    #[test]
    fn bad_value_names_its_key_path() {
        let err = Config::parse("[limits]\nheader_timeout = \"soon\"\n").unwrap_err();
        assert!(
            err.to_string().starts_with("limits.header_timeout:"),
            "{err}"
        );
        let err = Config::parse("[http]\nlisten = [\"nowhere\"]\n").unwrap_err();
        assert!(err.to_string().starts_with("http.listen"), "{err}");
        let err =
            Config::parse("[[store]]\npath = \"/a\"\ncapacity = \"9 bananas\"\n").unwrap_err();
        assert!(err.to_string().starts_with("store[0].capacity:"), "{err}");
    }

    #[test]
    fn stores_replace_the_default_store() {
        let config = Config::parse(
            "[[store]]\npath = \"/srv/nvme0\"\ncapacity = \"7TB\"\n[[store]]\npath = \"/srv/nvme1\"\n",
        )
        .unwrap();
        assert_eq!(config.stores.len(), 2);
        assert_eq!(config.stores[0].capacity, Some(ByteSize(7_000_000_000_000)));
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let cases = [
            (
                "[schedule]\ntimezone = \"Mars/Olympus\"\n",
                "schedule.timezone",
            ),
            (
                "[schedule]\nduring_fill = \"redirect\"\n",
                "schedule.during_fill",
            ),
            (
                "[schedule]\nfill_windows = [\"25:00-06:00\"]\n",
                "schedule.fill_windows[0]",
            ),
            ("[fill]\nconcurrency = 0\n", "fill.concurrency"),
            (
                "[[store]]\npath = \"/a\"\n[[store]]\npath = \"/a\"\n",
                "store[1].path",
            ),
            ("[http]\ncache_control = \"a\\nb\"\n", "http.cache_control"),
            ("[http]\nworkers = 5000\n", "http.workers"),
            (
                "[https]\ncipher_suites = [\"TLS_AES_128_GCM_SHA256\", \"TLS_RSA_WITH_RC4_128_MD5\"]\n",
                "https.cipher_suites[1]",
            ),
            ("[https]\ncipher_suites = []\n", "https.cipher_suites"),
            (
                "[limits]\nmax_header_size = \"1KiB\"\n",
                "limits.max_header_size",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.starts_with(key), "expected {key} in {err}");
        }
    }

    #[test]
    fn effective_config_renders_and_parses_back() {
        let config = Config::parse("[https]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n").unwrap();
        let again = Config::parse(&config.to_toml()).unwrap();
        assert_eq!(config, again);
    }
}
