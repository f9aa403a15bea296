//! `tidecache serve`: binds every listener, wires the modules together, and drains on stop.
//!
//! What lives where:
//! - this file: [`Daemon`] (start in named steps, reload, shutdown) and [`run`], the
//!   signal loop of `tidecache serve`.
//! - `settings`: each module's settings from the configuration, and the files it names.
//! - `error`: [`StartError`], why a start or a reload was refused.

mod error;
mod settings;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntGauge};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::config::Config;
use crate::fill::Fill;
use crate::fill::engine::{Engine, EngineSettings, check_content};
use crate::fill::fetch::Fetcher;
use crate::fill::file_roots::FileRoots;
use crate::fill::rate::RateLimiter;
use crate::http::listener::Listener;
use crate::http::tls::{Resumption, ViewerTls};
use crate::http::workers::{ViewerShared, ViewerSocket, ViewerWorkers};
use crate::http::{self, BindError, ConnectionLimits, ConnectionMetrics};
use crate::metrics::Metrics;
use crate::schedule::{
    Clock, ModeState, Override, OverrideControl, OverrideError, OverrideFile, Plan, Scheduler,
    SystemClock,
};
use crate::serve::access_log::AccessLog;
use crate::serve::cache::{CacheMetrics, RamCache};
use crate::serve::popularity::Popularity;
use crate::serve::{Viewer, ViewerSettings};
use crate::signal::{self, Stop, Trigger};
use crate::site::{Site, SiteToken};
use crate::store::{StoreState, Stores};
pub use error::StartError;
use settings::{FilesRead, Https};

/// Connections the admin listener holds at once; separate from viewers' `max_connections`.
const ADMIN_MAX_CONNECTIONS: usize = 256;

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
    /// Raised at shutdown: every listener stops accepting, connections drain, tasks end.
    stop: Trigger<Stop>,
    /// The daemon-runtime tasks that run until stop: the admin accept loop, the scheduler
    /// and the fill engine.
    tasks: JoinSet<()>,
    workers: ViewerWorkers,
    connections_finished: mpsc::Receiver<()>,
    shutdown_timeout: Duration,
}

/// The viewer and admin sockets, bound, and the addresses they got.
struct BoundSockets {
    viewer: Vec<ViewerSocket>,
    viewer_addrs: Vec<SocketAddr>,
    https_addrs: Vec<SocketAddr>,
    admin: TcpListener,
    admin_addr: SocketAddr,
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
        let resumption = Resumption::new();
        let files = FilesRead::read(config, Https::of(config), &resumption)?;
        let plan = settings::plan(config)?;
        let fetcher = Fetcher::new(config.fill.ca_file.as_deref())
            .map_err(|err| StartError::config("fill.ca_file", err))?;
        let override_file = open_state_dir(config)?;
        let metrics = Metrics::new()?;
        // The stores' journals and the saved manifest are read at the same time: at tens of
        // millions of objects each takes seconds, and the box is dark until both are done.
        let (stores, fill) = std::thread::scope(|scope| {
            let fill = scope.spawn(|| Fill::load(&config.state_dir));
            let stores = Stores::load(&config.stores);
            let fill = fill
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (stores, fill)
        });
        let stores = Arc::new(
            stores.with_open_file_cache(settings::open_file_cache_size(config.cache.open_files)),
        );
        let fill = Arc::new(fill);
        // Before the content check: a box of a site holds its share, not the manifest.
        let site = config.site.as_ref().map(|site_config| {
            let token = files.site_token.clone().unwrap_or_else(SiteToken::none);
            Arc::new(Site::new(site_config, token, &config.state_dir))
        });
        if let Some(site) = &site {
            fill.set_site(Arc::clone(site));
            let fill = Arc::clone(&fill);
            tokio::task::spawn_blocking(move || fill.build_listed());
        }
        fill.set_file_roots(FileRoots::resolve(&config.fill.file_roots));
        fill.stocked().set_ready_share(config.fill.ready_share);
        stores.set_direct_writes(config.fill.direct_writes);
        // Before anything answers /readyz: a box upgraded from a version without the latch
        // must not be withdrawn for lack of it.
        check_content(Arc::clone(&fill), Arc::clone(&stores)).await;
        let (scheduler, handles) = Scheduler::start(
            plan,
            Arc::clone(&clock),
            saved_override(&override_file),
            metrics.mode_transitions.clone(),
        );
        let mode = handles.mode.clone();
        let overrides = Arc::new(Scheduler::control(override_file, handles.overrides));
        let mut viewer =
            build_viewer(config, &stores, &mode, &metrics, files.signing_key)?.with_clock(clock);
        if let Some(site) = &site {
            viewer = viewer.with_site(Arc::clone(site));
        }
        let popularity = config.http.popularity.then(|| {
            let popularity = Arc::new(Popularity::new());
            if let Some(accepted) = fill.manifest() {
                popularity.reset(accepted.accepted_at.max(jiff::Timestamp::now()));
            }
            popularity
        });
        if let Some(popularity) = &popularity {
            viewer = viewer.with_popularity(Arc::clone(popularity));
        }
        let viewer = Arc::new(viewer);
        let tls = files.tls.map(|tls| Arc::new(ArcSwap::from_pointee(tls)));
        let sockets = bind_sockets(config, tls.as_ref()).await?;

        let (stop, shutdown) = signal::channel::<Stop>();
        let (finished, connections_finished) = mpsc::channel(1);
        let limits = Arc::new(ArcSwap::from_pointee(settings::connection_limits(config)));
        let permits = Arc::new(Semaphore::new(config.limits.max_connections as usize));
        let queue_pool = Arc::new(Semaphore::new(settings::queued_bytes(config)));
        let shared = ViewerShared {
            viewer: Arc::clone(&viewer),
            permits: Arc::clone(&permits),
            queue_pool: Arc::clone(&queue_pool),
            limits: Arc::clone(&limits),
            metrics: ConnectionMetrics {
                open: metrics.open_connections.clone(),
                refused: metrics.connections_refused.clone(),
            },
        };
        let workers = ViewerWorkers::start(
            config.http.workers,
            sockets.viewer,
            shared,
            shutdown.clone(),
            finished.clone(),
        )
        .map_err(StartError::Workers)?;

        let mut admin = Admin::new(
            Arc::clone(&stores),
            mode.clone(),
            metrics.clone(),
            Arc::clone(&overrides),
            Arc::clone(&fill),
            files.admin,
        );
        if let Some(popularity) = &popularity {
            admin = admin.with_popularity(Arc::clone(popularity));
        }
        let admin = Arc::new(admin);
        let admin_listener = admin_listener(sockets.admin, &admin, &limits, finished)?;
        let rate = Arc::new(RateLimiter::new(config.fill.max_rate.bytes_per_sec));
        let (engine_settings, engine_settings_rx) =
            watch::channel(settings::engine_settings(config));
        let engine = Engine::new(
            Arc::clone(&fill),
            Arc::clone(&stores),
            mode.clone(),
            fetcher,
            Arc::clone(&rate),
            engine_settings_rx,
            metrics.clone(),
        );
        let mut tasks = JoinSet::new();
        tasks.spawn(admin_listener.run(shutdown.clone()));
        tasks.spawn(scheduler.run(shutdown.clone()));
        if let Some(site) = &site {
            tasks.spawn(Arc::clone(site).run_checks(shutdown.clone()));
        }
        if let Some(popularity) = popularity {
            tasks.spawn(count_from_each_manifest(
                popularity,
                fill.watch_manifest(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(engine.run(shutdown));

        let daemon = Daemon {
            viewer_addrs: sockets.viewer_addrs,
            https_addrs: sockets.https_addrs,
            admin_addr: sockets.admin_addr,
            stores,
            mode,
            overrides,
            fill,
            live: LiveSettings {
                config: Mutex::new(config.clone()),
                viewer,
                admin,
                limits,
                tls,
                resumption,
                permits: Resizable::new(permits, config.limits.max_connections as usize),
                queue_pool: Resizable::new(queue_pool, settings::queued_bytes(config)),
                plan: handles.plan,
                engine_settings,
                rate,
            },
            stop,
            tasks,
            workers,
            connections_finished,
            shutdown_timeout: config.limits.shutdown_timeout.0,
        };
        daemon.announce_start();
        Ok(daemon)
    }

    /// Logs what started and tells systemd the daemon is ready.
    fn announce_start(&self) {
        let status = self.stores.status();
        let failed = status
            .iter()
            .filter(|store| store.state != StoreState::Ok)
            .count();
        tracing::info!(
            viewers = ?self.viewer_addrs,
            https = ?self.https_addrs,
            admin = %self.admin_addr,
            stores = status.len(),
            failed_stores = failed,
            objects = self.stores.object_count(),
            mode = self.mode.borrow().mode.as_str(),
            viewer_workers = self.workers.count(),
            "tidecache started"
        );
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
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
        let https = match self.live.tls {
            Some(_) => Https::Served,
            None => Https::NotServed,
        };
        let files = FilesRead::read(config, https, &self.live.resumption)?;
        let plan = settings::plan(config)?;
        let mut running = self
            .live
            .config
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let needs_restart = settings::needing_restart(&running, config);
        self.live.viewer.reopen_access_log();
        self.live
            .viewer
            .reload(ViewerSettings::from_config(config).with_signing_key(files.signing_key));
        self.live.admin.reload(files.admin);
        // A box joins or leaves a site only at a restart ("site.box" below); its peers,
        // weights, copies and token change here.
        if let (Some(site), Some(site_config)) = (self.fill.site(), &config.site) {
            if site_config.box_name == site.name() {
                site.reload(
                    site_config,
                    files.site_token.unwrap_or_else(SiteToken::none),
                );
            }
        }
        self.live
            .limits
            .store(Arc::new(settings::connection_limits(config)));
        if let (Some(tls), Some(slot)) = (files.tls, &self.live.tls) {
            slot.store(Arc::new(tls));
        }
        self.live
            .permits
            .resize(config.limits.max_connections as usize);
        self.live.queue_pool.resize(settings::queued_bytes(config));
        self.live.plan.send_replace(plan);
        self.live
            .engine_settings
            .send_replace(settings::engine_settings(config));
        self.live.rate.set_rate(config.fill.max_rate.bytes_per_sec);
        self.fill
            .set_file_roots(FileRoots::resolve(&config.fill.file_roots));
        self.fill.stocked().set_ready_share(config.fill.ready_share);
        self.stores.set_direct_writes(config.fill.direct_writes);
        // A lowered share may be met already.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(check_content(
                Arc::clone(&self.fill),
                Arc::clone(&self.stores),
            ));
        }
        *running = config.clone();
        for key in &needs_restart {
            tracing::warn!(key, "changed, but only takes effect after a restart");
        }
        tracing::info!(
            restart_needed = needs_restart.len(),
            "configuration reloaded"
        );
        Ok(needs_restart)
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
        self.stop.raise();
        // Every wait of the tasks (the fill engine's downloads, pulls and pacing, the
        // scheduler, the admin listener) is raced against the stop, so they end at once; the
        // deadline is the backstop that keeps SIGTERM within `limits.shutdown_timeout` even
        // if one does not.
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        let tasks_ended = tokio::time::timeout_at(deadline, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !tasks_ended {
            tracing::warn!(timeout = ?self.shutdown_timeout, "background tasks still running at the shutdown timeout; stopping them");
            self.tasks.abort_all();
        }
        let drained = tokio::time::timeout_at(deadline, self.connections_finished.recv())
            .await
            .is_ok();
        // One grace for what follows, whatever takes it: the cut workers and the log.
        let close_by = tokio::time::Instant::now() + CLOSE_GRACE;
        if drained {
            tracing::info!("all connections finished; stopped");
        } else {
            tracing::warn!(timeout = ?self.shutdown_timeout, "connections still open after the shutdown timeout; cutting them");
            self.workers.cut();
            // The cut responses end as their workers' runtimes drop them; their access-log
            // lines (bytes sent until the cut) come then.
            if !self.workers.finished(CLOSE_GRACE).await {
                tracing::warn!("viewer workers still busy after the cut; not waiting for them");
            }
        }
        if tokio::time::timeout_at(close_by, self.live.viewer.close_access_log())
            .await
            .is_err()
        {
            tracing::warn!("the access log was not written out in time");
        }
        drained
    }
}

/// Restarts the popularity counts whenever a new manifest is accepted, until `stop`.
async fn count_from_each_manifest(
    popularity: Arc<Popularity>,
    mut manifests: watch::Receiver<Option<Arc<crate::fill::AcceptedManifest>>>,
    mut stop: crate::signal::Shutdown,
) {
    loop {
        tokio::select! {
            changed = manifests.changed() => {
                if changed.is_err() {
                    return;
                }
                if let Some(accepted) = manifests.borrow_and_update().clone() {
                    popularity.reset(accepted.accepted_at);
                }
            }
            _ = stop.raised() => return,
        }
    }
}

/// After the shutdown timeout, how long cut workers and the access log's last write get,
/// together.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The handles a reload swaps settings through.
struct LiveSettings {
    config: Mutex<Config>,
    viewer: Arc<Viewer>,
    admin: Arc<Admin>,
    limits: Arc<ArcSwap<ConnectionLimits>>,
    tls: Option<Arc<ArcSwap<ViewerTls>>>,
    /// TLS session tickets and cache, kept across reloads.
    resumption: Resumption,
    permits: Resizable,
    queue_pool: Resizable,
    plan: watch::Sender<Plan>,
    engine_settings: watch::Sender<EngineSettings>,
    rate: Arc<RateLimiter>,
}

/// A semaphore whose size a reload changes (connection permits, queue room).
struct Resizable {
    semaphore: Arc<Semaphore>,
    size: AtomicUsize,
}

impl Resizable {
    fn new(semaphore: Arc<Semaphore>, size: usize) -> Resizable {
        Resizable {
            semaphore,
            size: AtomicUsize::new(size),
        }
    }

    /// Grows or shrinks the semaphore to `wanted`; a shrink takes effect as holders give
    /// their permits back.
    fn resize(&self, wanted: usize) {
        let previous = self.size.swap(wanted, Ordering::Relaxed);
        if wanted > previous {
            self.semaphore.add_permits(wanted - previous);
        } else if wanted < previous {
            let semaphore = Arc::clone(&self.semaphore);
            let mut surplus = previous - wanted;
            tokio::spawn(async move {
                while surplus > 0 {
                    let step = surplus.min(u32::MAX as usize);
                    match Arc::clone(&semaphore).acquire_many_owned(step as u32).await {
                        Ok(taken) => taken.forget(),
                        Err(_) => return,
                    }
                    surplus -= step;
                }
            });
        }
    }
}

/// Creates `state_dir` if needed; returns the override file in it.
fn open_state_dir(config: &Config) -> Result<OverrideFile, StartError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|source| StartError::StateDir {
        path: config.state_dir.display().to_string(),
        source,
    })?;
    Ok(OverrideFile::in_dir(&config.state_dir))
}

/// The operator's saved override, or `auto` (logged) when it cannot be read.
fn saved_override(file: &OverrideFile) -> Override {
    file.load().unwrap_or_else(|err: OverrideError| {
        tracing::error!(error = %err, "cannot read the saved mode override; following the windows (auto)");
        Override::Auto
    })
}

/// The viewer data plane, with its RAM cache and access log when configured.
fn build_viewer(
    config: &Config,
    stores: &Arc<Stores>,
    mode: &watch::Receiver<ModeState>,
    metrics: &Metrics,
    signing_key: Option<Vec<u8>>,
) -> Result<Viewer, StartError> {
    let mut viewer = Viewer::new(
        Arc::clone(stores),
        mode.clone(),
        ViewerSettings::from_config(config).with_signing_key(signing_key),
        metrics.clone(),
    );
    if config.cache.ram.0 > 0 {
        let cache = RamCache::new(config.cache.ram.0, config.cache.max_object.0).with_metrics(
            CacheMetrics {
                bytes: metrics.ram_cache_bytes.clone(),
                hits: metrics.ram_cache_hits.clone(),
                misses: metrics.ram_cache_misses.clone(),
                file_checks: metrics.file_checks.clone(),
            },
        );
        viewer = viewer.with_ram_cache(cache);
    }
    if let Some(path) = &config.http.access_log {
        let log = AccessLog::start(
            path.clone(),
            config.http.access_log_format,
            metrics.access_log_dropped.clone(),
        )
        .map_err(|err| {
            StartError::config("http.access_log", format!("{}: {err}", path.display()))
        })?;
        viewer = viewer.with_access_log(log);
    }
    Ok(viewer)
}

/// The admin accept loop: its own connection permits and unregistered counters, the viewers'
/// limits.
fn admin_listener(
    tcp: TcpListener,
    admin: &Arc<Admin>,
    limits: &Arc<ArcSwap<ConnectionLimits>>,
    finished: mpsc::Sender<()>,
) -> Result<Listener<Admin>, StartError> {
    Ok(Listener {
        tcp,
        fast_path: None,
        tls: None,
        handler: Arc::clone(admin),
        permits: Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS)),
        limits: Arc::clone(limits),
        metrics: ConnectionMetrics {
            open: IntGauge::new("admin_open_connections", "unregistered")?,
            refused: IntCounter::new("admin_connections_refused", "unregistered")?,
        },
        queue_pool: None,
        finished,
    })
}

/// Binds every viewer address (plain, then HTTPS) and the admin address.
async fn bind_sockets(
    config: &Config,
    tls: Option<&Arc<ArcSwap<ViewerTls>>>,
) -> Result<BoundSockets, StartError> {
    let https_listen = config
        .https
        .as_ref()
        .map(|https| https.listen.clone())
        .unwrap_or_default();
    let plain = config.http.listen.iter().map(|addr| (*addr, None));
    let secure = https_listen.iter().map(|addr| (*addr, tls.cloned()));
    let mut viewer = Vec::new();
    let mut viewer_addrs = Vec::new();
    let mut https_addrs = Vec::new();
    for (addr, tls) in plain.chain(secure) {
        let (tcp, local) = http::bind(addr).await?;
        if tls.is_some() {
            https_addrs.push(local);
        } else {
            viewer_addrs.push(local);
        }
        let tcp = tcp
            .into_std()
            .map_err(|source| BindError { addr, source })?;
        viewer.push(ViewerSocket {
            tcp,
            fast_path: tls.is_none() && config.http.sendfile,
            tls,
        });
    }
    let (admin, admin_addr) = http::bind(config.admin.listen).await?;
    Ok(BoundSockets {
        viewer,
        viewer_addrs,
        https_addrs,
        admin,
        admin_addr,
    })
}

/// Runs the daemon until SIGTERM or SIGINT, then drains and returns. SIGHUP re-reads
/// `config_file` (when there is one) and applies it; a bad file is logged and ignored.
pub async fn run(config: &Config, config_file: Option<&std::path::Path>) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    // The handlers are in place before the daemon says READY: a SIGHUP sent the moment
    // systemd (or a script) sees it ready must reload, not kill with the default action.
    let mut hangups = signal(SignalKind::hangup()).ok();
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    let daemon = Daemon::start(config).await?;
    let watchdog = tokio::spawn(watchdog_pings());
    let stop = wait_for_stop_signal(terminate, interrupt);
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

/// Under systemd with `WatchdogSec=`, pings at half the interval from the daemon's main
/// runtime (fill, admin, scheduler): if that runtime wedges, the pings stop and systemd
/// restarts the daemon.
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

/// Resolves on SIGTERM or SIGINT, whose handlers were installed before the start.
async fn wait_for_stop_signal(
    terminate: std::io::Result<tokio::signal::unix::Signal>,
    interrupt: std::io::Result<tokio::signal::unix::Signal>,
) {
    async fn first(name: &str, stream: std::io::Result<tokio::signal::unix::Signal>) {
        match stream {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, signal = name, "cannot watch this stop signal");
                std::future::pending::<()>().await;
            }
        }
    }
    tokio::select! {
        _ = first("SIGTERM", terminate) => {}
        _ = first("SIGINT", interrupt) => {}
    }
}
