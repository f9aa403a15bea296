//! `tidecache serve`: binds every listener, wires the modules together, and drains on stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::admin::auth::AdminToken;
use crate::admin::{Admin, AdminAuth};
use crate::config::Config;
use crate::fill::Fill;
use crate::fill::engine::{Engine, EngineSettings};
use crate::fill::fetch::Fetcher;
use crate::fill::rate::RateLimiter;
use crate::http::listener::Listener;
use crate::http::tls::ViewerTls;
use crate::http::workers::{ViewerShared, ViewerSocket, ViewerWorkers};
use crate::http::{self, ConnectionLimits, ConnectionMetrics, ListenerError};
use crate::metrics::Metrics;
use crate::schedule::{
    Clock, ModeState, Override, OverrideControl, OverrideError, OverrideFile, Plan, Scheduler,
    SystemClock,
};
use crate::serve::access_log::AccessLog;
use crate::serve::{Viewer, ViewerSettings};
use crate::store::Stores;

/// Connections the admin listener holds at once; separate from viewers' `max_connections`.
const ADMIN_MAX_CONNECTIONS: usize = 256;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be set up.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// The configuration asks for something this build cannot do, or names a file or zone
    /// that cannot be used: the operator must change it (exit 2).
    #[error("{0}")]
    Config(String),
    /// The state directory cannot be created.
    #[error("state_dir {path}: {source}")]
    StateDir {
        /// The configured directory.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The viewer worker threads could not be started (out of threads or memory).
    #[error("cannot start the viewer workers: {0}")]
    Workers(std::io::Error),
    /// The metrics registry refused a metric (a programming error, reported not panicked).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A running daemon: its bound addresses and the handles to stop it.
pub struct Daemon {
    /// Where plain-HTTP viewers connect (the real ports when `:0` was asked).
    pub viewer_addrs: Vec<SocketAddr>,
    /// Where HTTPS viewers connect.
    pub https_addrs: Vec<SocketAddr>,
    /// Where the admin listener is.
    pub admin_addr: SocketAddr,
    /// The stores and their index.
    pub stores: Arc<Stores>,
    mode: watch::Receiver<ModeState>,
    overrides: Arc<OverrideControl>,
    fill: Arc<Fill>,
    live: LiveSettings,
    stop_accepting: watch::Sender<bool>,
    accept_loops: JoinSet<()>,
    workers: ViewerWorkers,
    connections_finished: mpsc::Receiver<()>,
    shutdown_timeout: Duration,
}

impl Daemon {
    /// Opens the stores, binds every listener, starts the scheduler and starts accepting.
    pub async fn start(config: &Config) -> Result<Daemon, StartError> {
        Daemon::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Daemon::start`] with the scheduler reading `clock`, so a test can drive the daemon
    /// through a night without waiting.
    pub async fn start_with_clock(
        config: &Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Daemon, StartError> {
        let plan = plan_from_config(config)
            .map_err(|err| StartError::Config(format!("schedule.timezone: {err}")))?;
        let tls = match &config.https {
            Some(https) if !https.listen.is_empty() => Some(Arc::new(ArcSwap::from_pointee(
                ViewerTls::load(&https.cert, &https.key, &https.cipher_suites)?,
            ))),
            _ => None,
        };
        std::fs::create_dir_all(&config.state_dir).map_err(|source| StartError::StateDir {
            path: config.state_dir.display().to_string(),
            source,
        })?;
        let override_file = OverrideFile::in_dir(&config.state_dir);
        let initial_override = override_file.load().unwrap_or_else(|err: OverrideError| {
            tracing::error!(error = %err, "cannot read the saved mode override; following the windows (auto)");
            Override::Auto
        });
        let auth = admin_auth(config)?;
        let fetcher = Fetcher::new(config.fill.ca_file.as_deref())
            .map_err(|err| StartError::Config(err.to_string()))?;
        let metrics = Metrics::new()?;
        let stores = Arc::new(
            Stores::load(&config.stores)
                .with_open_file_cache(open_file_cache_size(config.cache.open_files)),
        );
        let fill = Arc::new(Fill::load(&config.state_dir));
        let (scheduler, handles) = Scheduler::start(
            plan,
            clock,
            initial_override,
            metrics.mode_transitions.clone(),
        );
        let mode_rx = handles.mode.clone();
        let overrides = Arc::new(Scheduler::control(override_file, handles.overrides));
        let (stop_accepting, stop_rx) = watch::channel(false);
        let (finished, connections_finished) = mpsc::channel(1);
        let limits = Arc::new(ArcSwap::from_pointee(connection_limits(config)));
        let mut viewer = Viewer::new(
            Arc::clone(&stores),
            mode_rx.clone(),
            ViewerSettings::from_config(config).with_signing_key(signing_key(config)?),
            metrics.clone(),
        );
        if config.cache.ram.0 > 0 {
            viewer = viewer.with_ram_cache(
                crate::serve::cache::RamCache::new(config.cache.ram.0, config.cache.max_object.0)
                    .with_metrics(crate::serve::cache::CacheMetrics {
                        bytes: metrics.ram_cache_bytes.clone(),
                        hits: metrics.ram_cache_hits.clone(),
                        misses: metrics.ram_cache_misses.clone(),
                    }),
            );
        }
        if let Some(path) = &config.http.access_log {
            let log = AccessLog::start(
                path.clone(),
                config.http.access_log_format,
                metrics.access_log_dropped.clone(),
            )
            .map_err(|err| {
                StartError::Config(format!("http.access_log {}: {err}", path.display()))
            })?;
            viewer = viewer.with_access_log(log);
        }
        let viewer = Arc::new(viewer);
        let viewer_metrics = ConnectionMetrics {
            open: metrics.open_connections.clone(),
            refused: metrics.connections_refused.clone(),
        };
        let permits = Arc::new(Semaphore::new(config.limits.max_connections as usize));
        let mut accept_loops = JoinSet::new();

        let https_listen = config
            .https
            .as_ref()
            .map(|https| https.listen.clone())
            .unwrap_or_default();
        let mut viewer_addrs = Vec::new();
        let mut https_addrs = Vec::new();
        let plain = config.http.listen.iter().map(|addr| (*addr, None));
        let secure = https_listen.iter().map(|addr| (*addr, tls.clone()));
        let mut sockets = Vec::new();
        for (addr, tls) in plain.chain(secure) {
            let tcp = http::bind(addr).await?;
            let local = tcp
                .local_addr()
                .map_err(|source| ListenerError::Bind { addr, source })?;
            if tls.is_some() {
                https_addrs.push(local);
            } else {
                viewer_addrs.push(local);
            }
            let tcp = tcp
                .into_std()
                .map_err(|source| ListenerError::Bind { addr, source })?;
            sockets.push(ViewerSocket {
                tcp,
                fast_path: tls.is_none() && config.http.sendfile,
                tls,
            });
        }
        let admin_tcp = http::bind(config.admin.listen).await?;
        let admin_addr = admin_tcp
            .local_addr()
            .map_err(|source| ListenerError::Bind {
                addr: config.admin.listen,
                source,
            })?;
        let workers = ViewerWorkers::start(
            config.http.workers,
            sockets,
            ViewerShared {
                viewer: Arc::clone(&viewer),
                permits: Arc::clone(&permits),
                limits: Arc::clone(&limits),
                metrics: viewer_metrics,
            },
            stop_rx.clone(),
            finished.clone(),
        )
        .map_err(StartError::Workers)?;
        let admin_handler = Arc::new(Admin::new(
            Arc::clone(&stores),
            mode_rx.clone(),
            metrics.clone(),
            Arc::clone(&overrides),
            Arc::clone(&fill),
            auth,
        ));
        let admin = Listener {
            tcp: admin_tcp,
            fast_path: None,
            tls: None,
            handler: Arc::clone(&admin_handler),
            permits: Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS)),
            limits: Arc::clone(&limits),
            metrics: ConnectionMetrics {
                open: IntGauge::new("admin_open_connections", "unregistered")?,
                refused: IntCounter::new("admin_connections_refused", "unregistered")?,
            },
            finished,
        };
        accept_loops.spawn(admin.run(stop_rx.clone()));
        let rate = Arc::new(RateLimiter::new(config.fill.max_rate.bytes_per_sec));
        let (engine_settings, engine_settings_rx) = watch::channel(engine_settings(config));
        let engine = Engine::new(
            Arc::clone(&fill),
            Arc::clone(&stores),
            mode_rx.clone(),
            fetcher,
            Arc::clone(&rate),
            engine_settings_rx,
            metrics.clone(),
        );
        accept_loops.spawn(scheduler.run(stop_rx.clone()));
        accept_loops.spawn(engine.run(stop_rx));
        let status = stores.status();
        let failed = status.iter().filter(|store| store.state != "ok").count();
        tracing::info!(
            viewers = ?viewer_addrs,
            https = ?https_addrs,
            admin = %admin_addr,
            stores = status.len(),
            failed_stores = failed,
            objects = stores.object_count(),
            mode = mode_rx.borrow().mode.as_str(),
            viewer_workers = workers.count(),
            "tidecache started"
        );
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        Ok(Daemon {
            viewer_addrs,
            https_addrs,
            admin_addr,
            stores,
            mode: mode_rx,
            overrides,
            fill,
            live: LiveSettings {
                config: std::sync::Mutex::new(config.clone()),
                viewer,
                admin: admin_handler,
                limits,
                tls,
                permits,
                max_connections: std::sync::atomic::AtomicUsize::new(
                    config.limits.max_connections as usize,
                ),
                plan: handles.plan,
                engine_settings,
                rate,
            },
            stop_accepting,
            accept_loops,
            workers,
            connections_finished,
            shutdown_timeout: config.limits.shutdown_timeout.0,
        })
    }

    /// The mode channel, as every part of the daemon observes it.
    pub fn mode(&self) -> watch::Receiver<ModeState> {
        self.mode.clone()
    }

    /// Applies a new configuration without dropping connections (SIGHUP): schedule,
    /// `during_fill`, Cache-Control and CORS, limits, tokens and signing key, fill settings,
    /// and the TLS certificate (re-read even when its path is unchanged). Listen addresses,
    /// stores and `state_dir` need a restart: they are returned, and logged, as such. When
    /// anything in the new configuration cannot be used, nothing is applied.
    pub fn reload(&self, config: &Config) -> Result<Vec<&'static str>, StartError> {
        let plan: Plan = plan_from_config(config)
            .map_err(|err| StartError::Config(format!("schedule.timezone: {err}")))?;
        let auth = admin_auth(config)?;
        let url_key = signing_key(config)?;
        let tls = match (&config.https, &self.live.tls) {
            (Some(https), Some(_)) => Some(ViewerTls::load(
                &https.cert,
                &https.key,
                &https.cipher_suites,
            )?),
            _ => None,
        };
        let mut current = self
            .live
            .config
            .lock()
            .map_err(|_| StartError::Config("configuration lock poisoned".to_owned()))?;
        let mut needs_restart = Vec::new();
        if config.http.listen != current.http.listen {
            needs_restart.push("http.listen");
        }
        if config.https.as_ref().map(|https| &https.listen)
            != current.https.as_ref().map(|https| &https.listen)
        {
            needs_restart.push("https.listen");
        }
        if config.admin.listen != current.admin.listen {
            needs_restart.push("admin.listen");
        }
        if config.stores != current.stores {
            needs_restart.push("store");
        }
        if config.state_dir != current.state_dir {
            needs_restart.push("state_dir");
        }
        if config.http.sendfile != current.http.sendfile {
            needs_restart.push("http.sendfile");
        }
        if config.http.workers != current.http.workers {
            needs_restart.push("http.workers");
        }
        if config.cache != current.cache {
            needs_restart.push("cache");
        }
        if config.fill.ca_file != current.fill.ca_file {
            needs_restart.push("fill.ca_file");
        }
        if config.http.access_log != current.http.access_log
            || config.http.access_log_format != current.http.access_log_format
        {
            needs_restart.push("http.access_log");
        }
        self.live.viewer.reopen_access_log();
        self.live
            .viewer
            .reload(ViewerSettings::from_config(config).with_signing_key(url_key));
        self.live.admin.reload(auth);
        self.live.limits.store(Arc::new(connection_limits(config)));
        if let (Some(acceptor), Some(slot)) = (tls, &self.live.tls) {
            slot.store(Arc::new(acceptor));
        }
        self.resize_connection_permits(config.limits.max_connections as usize);
        self.live.plan.send_replace(plan);
        self.live
            .engine_settings
            .send_replace(engine_settings(config));
        self.live.rate.set_rate(config.fill.max_rate.bytes_per_sec);
        *current = config.clone();
        for key in &needs_restart {
            tracing::warn!(key, "changed, but only takes effect after a restart");
        }
        tracing::info!(
            restart_needed = needs_restart.len(),
            "configuration reloaded"
        );
        Ok(needs_restart)
    }

    /// Grows or shrinks the viewer connection limit; a shrink takes effect as connections end.
    fn resize_connection_permits(&self, wanted: usize) {
        let previous = self
            .live
            .max_connections
            .swap(wanted, std::sync::atomic::Ordering::Relaxed);
        if wanted > previous {
            self.live.permits.add_permits(wanted - previous);
        } else if wanted < previous {
            let permits = Arc::clone(&self.live.permits);
            let surplus = (previous - wanted) as u32;
            tokio::spawn(async move {
                if let Ok(taken) = permits.acquire_many_owned(surplus).await {
                    taken.forget();
                }
            });
        }
    }

    /// The fill's shared state: the manifest in force, progress, accepting manifests.
    pub fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }

    /// Sets the operator's override, as `POST /v1/mode` does (saved, then applied).
    pub async fn set_override(&self, mode_override: Override) -> Result<(), OverrideError> {
        self.overrides.set(mode_override).await
    }

    /// Stops accepting, lets in-flight responses finish within `limits.shutdown_timeout`, then
    /// returns. Returns whether every connection finished in time.
    pub async fn shutdown(mut self) -> bool {
        let _ = self.stop_accepting.send(true);
        while self.accept_loops.join_next().await.is_some() {}
        let drained = tokio::time::timeout(self.shutdown_timeout, self.connections_finished.recv())
            .await
            .is_ok();
        if drained {
            tracing::info!("all connections finished; stopped");
        } else {
            tracing::warn!(timeout = ?self.shutdown_timeout, "connections still open after the shutdown timeout; cutting them");
            self.workers.cut();
        }
        drained
    }
}

/// The handles a reload swaps settings through.
struct LiveSettings {
    config: std::sync::Mutex<Config>,
    viewer: Arc<Viewer>,
    admin: Arc<Admin>,
    limits: Arc<ArcSwap<ConnectionLimits>>,
    tls: Option<Arc<ArcSwap<ViewerTls>>>,
    permits: Arc<Semaphore>,
    max_connections: std::sync::atomic::AtomicUsize,
    plan: watch::Sender<Plan>,
    engine_settings: watch::Sender<EngineSettings>,
    rate: Arc<RateLimiter>,
}

/// The open-file cache's size: as configured, but at most a quarter of the soft open-file
/// limit, so cached files can never starve accepts (a shell's default is 1024).
fn open_file_cache_size(configured: u64) -> u64 {
    use rustix::process::{Resource, getrlimit};
    let limit = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    configured.min(limit / 4)
}

/// The scheduler's plan from the configuration.
pub fn plan_from_config(config: &Config) -> Result<Plan, String> {
    let zone = if config.schedule.timezone == "local" {
        jiff::tz::TimeZone::try_system().map_err(|err| format!("the host's time zone: {err}"))?
    } else {
        jiff::tz::TimeZone::get(&config.schedule.timezone)
            .map_err(|err| format!("time zone {:?}: {err}", config.schedule.timezone))?
    };
    Ok(Plan {
        windows: config.schedule.fill_windows.clone(),
        zone,
        drain: config.schedule.drain.0,
    })
}

/// `[limits]` as the listener uses them.
fn connection_limits(config: &Config) -> ConnectionLimits {
    ConnectionLimits {
        header_timeout: config.limits.header_timeout.0,
        idle_timeout: config.limits.idle_timeout.0,
        max_header_size: config.limits.max_header_size.0 as usize,
    }
}

/// `[fill]` as the engine uses it.
fn engine_settings(config: &Config) -> EngineSettings {
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

/// The signed-URL key from `http.url_signing_key_file`, if configured.
fn signing_key(config: &Config) -> Result<Option<Vec<u8>>, StartError> {
    let Some(path) = &config.http.url_signing_key_file else {
        return Ok(None);
    };
    let key = std::fs::read(path).map_err(|err| {
        StartError::Config(format!(
            "http.url_signing_key_file {}: {err}",
            path.display()
        ))
    })?;
    let key = key.trim_ascii().to_vec();
    if key.len() < 16 {
        return Err(StartError::Config(format!(
            "http.url_signing_key_file {}: the key must be at least 16 bytes",
            path.display()
        )));
    }
    Ok(Some(key))
}

/// The admin token, signing key and push limit, read from their files.
fn admin_auth(config: &Config) -> Result<AdminAuth, StartError> {
    let token = AdminToken::load(config.admin.token_file.as_deref())
        .map_err(|err| StartError::Config(err.to_string()))?;
    let hmac_key = match &config.admin.hmac_key_file {
        Some(path) => {
            let key = std::fs::read(path).map_err(|err| {
                StartError::Config(format!("admin.hmac_key_file {}: {err}", path.display()))
            })?;
            let key = key.trim_ascii().to_vec();
            if key.is_empty() {
                return Err(StartError::Config(format!(
                    "admin.hmac_key_file {}: the key is empty",
                    path.display()
                )));
            }
            Some(key)
        }
        None => None,
    };
    Ok(AdminAuth {
        token,
        hmac_key,
        max_manifest_size: config.fill.max_manifest_size.0 as usize,
    })
}

/// Runs the daemon until SIGTERM or SIGINT, then drains and returns. SIGHUP re-reads
/// `config_file` (when there is one) and applies it; a bad file is logged and ignored.
pub async fn run(config: &Config, config_file: Option<&std::path::Path>) -> Result<(), StartError> {
    let daemon = Daemon::start(config).await?;
    let watchdog = tokio::spawn(watchdog_pings());
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let stop = wait_for_stop_signal();
    tokio::pin!(stop);
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(hangups) => {
                    hangups.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => break,
            _ = hangup => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
                reload_from(&daemon, config_file);
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
            }
        }
    }
    tracing::info!("stop signal received; draining");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    watchdog.abort();
    daemon.shutdown().await;
    Ok(())
}

/// Under systemd with `WatchdogSec=`, pings at half the interval from the runtime that
/// serves viewers: if that runtime wedges, the pings stop and systemd restarts the daemon.
async fn watchdog_pings() {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec / 2);
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
    }
}

/// SIGHUP: re-read the configuration file and apply it, or keep the old one and say why.
fn reload_from(daemon: &Daemon, config_file: Option<&std::path::Path>) {
    let loaded = match config_file {
        Some(file) => Config::load(file).map_err(|err| format!("{}: {err}", file.display())),
        None => Config::load_default().map_err(|err| err.to_string()),
    };
    match loaded {
        Ok(config) => {
            if let Err(err) = daemon.reload(&config) {
                tracing::error!(error = %err, "reload refused; the running configuration stays");
            }
        }
        Err(err) => {
            tracing::error!(error = %err, "reload refused; the running configuration stays")
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch SIGTERM; only Ctrl-C stops the daemon");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
