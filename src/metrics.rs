//! The Prometheus registry and every metric name of CONTRACT section 6.
//!
//! Request metrics are updated where requests are answered. Store and mode gauges are not
//! kept in step by their owners: they are read from the store set and the mode channel when
//! `/metrics` is scraped, so there is one source of truth for each.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::schedule::Mode;
use crate::store::{StoreState, StoreStatus};

/// Buckets for request latency (time to response head), from 100 µs to 10 s.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The `result` label values of `tidecache_fill_objects_total`: stored and verified, failed
/// (download or verification), skipped (no room).
pub const FILL_RESULTS: [&str; 3] = ["stored", "failed", "skipped"];

/// The `state` label values of `tidecache_fill_last_pass`.
const LAST_PASS_STATES: [&str; 2] = ["done", "paused"];

/// Every metric the daemon exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `tidecache_requests_total{code,method}`: viewer requests answered.
    pub requests: IntCounterVec,
    /// `tidecache_response_bytes_total`: body bytes handed to viewer connections.
    pub response_bytes: IntCounter,
    /// `tidecache_request_duration_seconds`: time from request to response head.
    pub request_duration: Histogram,
    /// `tidecache_open_connections`: viewer connections open now.
    pub open_connections: IntGauge,
    /// `tidecache_connections_refused_total`: connections closed at accept by `max_connections`.
    pub connections_refused: IntCounter,
    /// `tidecache_fill_objects_total{result}`: objects the fill finished, by result (one of
    /// [`FILL_RESULTS`]; each series exists from the start so dashboards and alerts see 0).
    pub fill_objects: IntCounterVec,
    /// `tidecache_fill_bytes_total`: bytes the fill wrote to stores.
    pub fill_bytes: IntCounter,
    /// `tidecache_mode_transitions_total{to}`: mode switches, by the mode switched to.
    pub mode_transitions: IntCounterVec,
    /// `tidecache_admin_auth_failures_total`: mutating admin calls refused for their token.
    pub admin_auth_failures: IntCounter,
    /// `tidecache_access_log_dropped_total`: access-log lines dropped because the writer fell
    /// behind.
    pub access_log_dropped: IntCounter,
    /// `tidecache_ram_cache_bytes`: object bytes the RAM cache holds.
    pub ram_cache_bytes: IntGauge,
    /// `tidecache_ram_cache_hits_total`: lookups of cacheable objects answered from RAM.
    pub ram_cache_hits: IntCounter,
    /// `tidecache_ram_cache_misses_total`: lookups of cacheable objects not in RAM (yet).
    pub ram_cache_misses: IntCounter,
    /// `tidecache_file_checks_total`: stored files hashed while serving (a RAM-cache load, or
    /// the once-per-version check of the sendfile path).
    pub file_checks: IntCounter,
    /// `tidecache_fill_source_bytes_total{source}`: bytes the fill received, by where from
    /// (`origin` or `peer`, a box of the site).
    pub fill_source_bytes: IntCounterVec,
    /// `tidecache_site_redirects_total`: viewers sent to another box of the site that
    /// holds what this box does not.
    pub site_redirects: IntCounter,
    site_peer_ready: IntGaugeVec,
    open_files_cached: IntGauge,
    mode: IntGaugeVec,
    store_bytes_used: IntGaugeVec,
    store_bytes_capacity: IntGaugeVec,
    store_errors: IntCounterVec,
    objects: IntGaugeVec,
    store_state: IntGaugeVec,
    ready: IntGauge,
    content_held: IntGauge,
    manifest_accepted: IntGauge,
    last_pass: IntGaugeVec,
    last_pass_failed: IntGauge,
    last_pass_ended: IntGauge,
}

/// What `/metrics` reads from the rest of the daemon at each scrape: the gauges that mirror
/// state owned elsewhere (the alert rules in `config/prometheus/alerts.yml` use them).
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// The mode now.
    pub mode: Mode,
    /// Each store's health.
    pub stores: &'a [StoreStatus],
    /// Object files the open-file cache keeps open.
    pub open_files: usize,
    /// Whether `/readyz` says 200.
    pub ready: bool,
    /// Whether the box has held its content once (a new box waiting for its first fill
    /// has not): readiness lost after that is an incident, before it is an installation.
    pub content_held: bool,
    /// When the manifest in force was accepted (Unix seconds), if one was.
    pub manifest_accepted_at: Option<i64>,
    /// How the last fill pass ended, if one did.
    pub last_pass: Option<LastPass>,
    /// Each site peer's name and whether its last readiness check said ready.
    pub site_peers: &'a [(String, bool)],
}

/// The end of the last fill pass, for the alert rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastPass {
    /// Every object stored or failed (`done`), rather than stopped by the window's end or a
    /// new manifest (`paused`).
    pub complete: bool,
    /// Objects that failed.
    pub failed: u64,
    /// When it ended (Unix seconds).
    pub ended_at: i64,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let metrics = Metrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "tidecache_requests_total",
                    "Viewer requests answered, by status code and method.",
                ),
                &["code", "method"],
            )?,
            response_bytes: IntCounter::new(
                "tidecache_response_bytes_total",
                "Response body bytes handed to viewer connections.",
            )?,
            request_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "tidecache_request_duration_seconds",
                    "Time from receiving a viewer request to sending its response head.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
            )?,
            open_connections: IntGauge::new(
                "tidecache_open_connections",
                "Viewer connections open now.",
            )?,
            connections_refused: IntCounter::new(
                "tidecache_connections_refused_total",
                "Viewer connections closed at accept because limits.max_connections was reached.",
            )?,
            fill_objects: IntCounterVec::new(
                Opts::new(
                    "tidecache_fill_objects_total",
                    "Objects the fill finished, by result.",
                ),
                &["result"],
            )?,
            fill_bytes: IntCounter::new(
                "tidecache_fill_bytes_total",
                "Bytes the fill wrote to stores.",
            )?,
            mode: IntGaugeVec::new(
                Opts::new(
                    "tidecache_mode",
                    "1 for the current mode, 0 for the others.",
                ),
                &["mode"],
            )?,
            store_bytes_used: IntGaugeVec::new(
                Opts::new(
                    "tidecache_store_bytes_used",
                    "Bytes of objects held by each store.",
                ),
                &["store"],
            )?,
            store_bytes_capacity: IntGaugeVec::new(
                Opts::new(
                    "tidecache_store_bytes_capacity",
                    "Bytes each store may hold.",
                ),
                &["store"],
            )?,
            store_errors: IntCounterVec::new(
                Opts::new(
                    "tidecache_store_errors_total",
                    "I/O errors seen on each store.",
                ),
                &["store"],
            )?,
            objects: IntGaugeVec::new(
                Opts::new("tidecache_objects", "Objects held by each store."),
                &["store"],
            )?,
            mode_transitions: IntCounterVec::new(
                Opts::new(
                    "tidecache_mode_transitions_total",
                    "Mode switches, by the mode switched to (the start-up mode counts once).",
                ),
                &["to"],
            )?,
            admin_auth_failures: IntCounter::new(
                "tidecache_admin_auth_failures_total",
                "Mutating admin calls refused for a missing or wrong token.",
            )?,
            access_log_dropped: IntCounter::new(
                "tidecache_access_log_dropped_total",
                "Access-log lines dropped because the writer fell behind.",
            )?,
            ram_cache_bytes: IntGauge::new(
                "tidecache_ram_cache_bytes",
                "Object bytes held by the RAM cache.",
            )?,
            ram_cache_hits: IntCounter::new(
                "tidecache_ram_cache_hits_total",
                "Lookups of objects small enough for the RAM cache that it answered.",
            )?,
            ram_cache_misses: IntCounter::new(
                "tidecache_ram_cache_misses_total",
                "Lookups of objects small enough for the RAM cache that it did not hold (yet).",
            )?,
            file_checks: IntCounter::new(
                "tidecache_file_checks_total",
                "Stored files read and hashed against their sha256 while serving.",
            )?,
            fill_source_bytes: IntCounterVec::new(
                Opts::new(
                    "tidecache_fill_source_bytes_total",
                    "Bytes the fill received, by source: the origin, or a peer box of the site.",
                ),
                &["source"],
            )?,
            site_redirects: IntCounter::new(
                "tidecache_site_redirects_total",
                "Viewer requests redirected to another box of the site that holds the object.",
            )?,
            site_peer_ready: IntGaugeVec::new(
                Opts::new(
                    "tidecache_site_peer_ready",
                    "1 while a site peer's last /readyz check said ready, else 0.",
                ),
                &["peer"],
            )?,
            open_files_cached: IntGauge::new(
                "tidecache_open_files_cached",
                "Object files the open-file cache keeps open.",
            )?,
            store_state: IntGaugeVec::new(
                Opts::new(
                    "tidecache_store_state",
                    "1 for each store's state (ok, full, failed), 0 for the others.",
                ),
                &["store", "state"],
            )?,
            ready: IntGauge::new(
                "tidecache_ready",
                "1 when /readyz answers 200 (serving, a store usable, content held), else 0.",
            )?,
            content_held: IntGauge::new(
                "tidecache_content_held",
                "1 once the box has held its content (a fill pass without failures, or fill.ready_share of the manifest's bytes); a new box is 0 until then.",
            )?,
            manifest_accepted: IntGauge::new(
                "tidecache_manifest_accepted_timestamp_seconds",
                "When the manifest in force was accepted (Unix seconds); 0 before any.",
            )?,
            last_pass: IntGaugeVec::new(
                Opts::new(
                    "tidecache_fill_last_pass",
                    "1 for how the last fill pass ended (done, paused), 0 for the other; both 0 before any pass.",
                ),
                &["state"],
            )?,
            last_pass_failed: IntGauge::new(
                "tidecache_fill_last_pass_failed_objects",
                "Objects that failed in the last fill pass.",
            )?,
            last_pass_ended: IntGauge::new(
                "tidecache_fill_last_pass_end_timestamp_seconds",
                "When the last fill pass ended (Unix seconds); 0 before any.",
            )?,
            registry,
        };
        for mode in Mode::ALL {
            metrics.mode_transitions.with_label_values(&[mode.as_str()]);
        }
        for result in FILL_RESULTS {
            metrics.fill_objects.with_label_values(&[result]);
        }
        for source in ["origin", "peer"] {
            metrics.fill_source_bytes.with_label_values(&[source]);
        }
        for state in LAST_PASS_STATES {
            metrics.last_pass.with_label_values(&[state]);
        }
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(metrics.requests.clone()),
            Box::new(metrics.response_bytes.clone()),
            Box::new(metrics.request_duration.clone()),
            Box::new(metrics.open_connections.clone()),
            Box::new(metrics.connections_refused.clone()),
            Box::new(metrics.fill_objects.clone()),
            Box::new(metrics.fill_bytes.clone()),
            Box::new(metrics.mode.clone()),
            Box::new(metrics.store_bytes_used.clone()),
            Box::new(metrics.store_bytes_capacity.clone()),
            Box::new(metrics.store_errors.clone()),
            Box::new(metrics.objects.clone()),
            Box::new(metrics.mode_transitions.clone()),
            Box::new(metrics.admin_auth_failures.clone()),
            Box::new(metrics.access_log_dropped.clone()),
            Box::new(metrics.ram_cache_bytes.clone()),
            Box::new(metrics.ram_cache_hits.clone()),
            Box::new(metrics.ram_cache_misses.clone()),
            Box::new(metrics.file_checks.clone()),
            Box::new(metrics.fill_source_bytes.clone()),
            Box::new(metrics.site_redirects.clone()),
            Box::new(metrics.site_peer_ready.clone()),
            Box::new(metrics.open_files_cached.clone()),
            Box::new(metrics.store_state.clone()),
            Box::new(metrics.ready.clone()),
            Box::new(metrics.content_held.clone()),
            Box::new(metrics.manifest_accepted.clone()),
            Box::new(metrics.last_pass.clone()),
            Box::new(metrics.last_pass_failed.clone()),
            Box::new(metrics.last_pass_ended.clone()),
        ];
        for collector in collectors {
            metrics.registry.register(collector)?;
        }
        Ok(metrics)
    }

    /// Renders the text exposition, first setting the gauges that mirror `snapshot`.
    pub fn render(&self, snapshot: &Snapshot<'_>) -> String {
        self.open_files_cached
            .set(i64::try_from(snapshot.open_files).unwrap_or(i64::MAX));
        for each in Mode::ALL {
            self.mode
                .with_label_values(&[each.as_str()])
                .set(i64::from(each == snapshot.mode));
        }
        self.ready.set(i64::from(snapshot.ready));
        self.content_held.set(i64::from(snapshot.content_held));
        self.manifest_accepted
            .set(snapshot.manifest_accepted_at.unwrap_or(0));
        if let Some(pass) = snapshot.last_pass {
            self.last_pass
                .with_label_values(&["done"])
                .set(i64::from(pass.complete));
            self.last_pass
                .with_label_values(&["paused"])
                .set(i64::from(!pass.complete));
            self.last_pass_failed.set(clamp(pass.failed));
            self.last_pass_ended.set(pass.ended_at);
        }
        // Peers that left the site leave the exposition with them.
        self.site_peer_ready.reset();
        for (peer, ready) in snapshot.site_peers {
            self.site_peer_ready
                .with_label_values(&[peer.as_str()])
                .set(i64::from(*ready));
        }
        for store in snapshot.stores {
            let label = store.path.display().to_string();
            for (state, name) in [
                (StoreState::Ok, "ok"),
                (StoreState::Full, "full"),
                (StoreState::Failed, "failed"),
            ] {
                self.store_state
                    .with_label_values(&[label.as_str(), name])
                    .set(i64::from(store.state == state));
            }
            let labels = [label.as_str()];
            self.store_bytes_used
                .with_label_values(&labels)
                .set(clamp(store.bytes_used));
            self.store_bytes_capacity
                .with_label_values(&labels)
                .set(clamp(store.bytes_capacity));
            self.objects
                .with_label_values(&labels)
                .set(clamp(store.objects));
            let errors = self.store_errors.with_label_values(&labels);
            errors.inc_by(store.errors.saturating_sub(errors.get()));
        }
        let mut out = Vec::with_capacity(8192);
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %err, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
