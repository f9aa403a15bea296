//! The fill engine: while the mode is filling, it makes the stores hold exactly what the
//! manifest in force says.
//!
//! A pass deletes what left the manifest, then fetches what is missing or differs, highest
//! priority first, `fill.concurrency` at a time, paced by `fill.max_rate`. Each object streams
//! into a resumable temp file through the store's verifying writer; only a verified, durable
//! object enters the index. Connection errors, stalls and 5xx are retried with exponential
//! backoff and jitter (continuing from the bytes already written when the origin honours
//! `Range`); a 4xx or a wrong sha256 fails the object. When the mode leaves filling, no new
//! transfer starts, in-flight ones get a grace period and are then checkpointed for the next
//! window, and the index is flushed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::fetch::{FetchError, Fetcher};
use super::manifest::{Manifest, ManifestObject};
use super::peers::{Holds, PeerPlan, ask_holds, hand_off, object_url, plan_sources};
use super::plan::{FillPlan, Owns, Survey, dropped_beyond, fit, held_bytes, owns_all, survey};
use super::progress::{FillReport, FillState};
use super::rate::RateLimiter;
use super::stocked::{Measured, holds_enough};
use super::{AcceptedManifest, Fill, Received};
use crate::config::ManifestUrl;
use crate::metrics::Metrics;
use crate::schedule::{Mode, ModeState};
use crate::signal::{self, Cancel, Shutdown, Signal};
use crate::site::Peer;
use crate::store::buffers::{BufferPool, PooledBuffer};
use crate::store::writer::{ObjectWriter, partial_name};
use crate::store::{StoreError, Stores};

/// Deletes made between two looks at the mode, the manifest and the stop signal: one journal
/// fsync per store each.
const DELETE_BATCH: usize = 256;
/// Bytes gathered from the network before one write to disk.
const WRITE_BATCH: usize = 1 << 20;
/// The batches, reused from one object to the next (see [`BufferPool`]).
static BATCHES: BufferPool = BufferPool::new(WRITE_BATCH, 32);
/// Longest pause between retries of one object.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Between two asks of a first owner about the objects a later owner waits for (one holds
/// request per first owner, whatever the number of objects).
const WAIT_POLL: Duration = Duration::from_secs(2);
/// Asks of a first owner in a row that may fail (a slow answer on a busy box) before what
/// waits for it is fetched from the origin.
const WAIT_POLL_FAILURES: u32 = 3;
/// How long a later owner waits for a first owner that has another manifest in force
/// (pushed to the boxes one after the other, or pulled at another poll) to get this one.
const OTHER_MANIFEST_WAIT: Duration = Duration::from_secs(15 * 60);

/// How the engine behaves, from `[fill]`.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Transfers at once.
    pub concurrency: usize,
    /// Retries per object after the first attempt.
    pub retries: u32,
    /// First retry delay; doubles each retry (with jitter), up to 30 s.
    pub retry_base: Duration,
    /// How long in-flight transfers may go on after the window ends before they are
    /// checkpointed.
    pub stop_grace: Duration,
    /// Where the manifest is pulled from when a fill starts, if anywhere.
    pub manifest_url: ManifestUrl,
    /// How often it is pulled again while the window is open.
    pub manifest_poll: Duration,
    /// Largest manifest accepted.
    pub max_manifest_size: usize,
}

/// The engine task.
pub struct Engine {
    fill: Arc<Fill>,
    stores: Arc<Stores>,
    mode: watch::Receiver<ModeState>,
    fetcher: Fetcher,
    rate: Arc<RateLimiter>,
    settings: EngineSettings,
    reloads: watch::Receiver<EngineSettings>,
    metrics: Metrics,
    /// What was last pulled and accepted, shared with the poller.
    pulled_etag: Arc<std::sync::Mutex<Pulled>>,
}

/// The daemon is stopping: what was under way is left.
struct Stopping;

/// How a pass ended.
enum PassEnd {
    /// Every object stored or failed.
    Done,
    /// The window ended first.
    Paused,
    /// A new manifest arrived; start over with it.
    Superseded,
    /// The daemon is stopping.
    Stopped,
}

/// What a pass counted besides the transfers, for its report.
struct PassCounts {
    already_present: u64,
    skipped_no_room: u64,
    deleted: u64,
}

/// How one object's transfer ended.
enum TransferOutcome {
    Stored {
        bytes: u64,
    },
    Failed {
        reason: String,
        /// What was found instead, when that describes the source's content (a size or a
        /// hash): for the admin token's holders and the log, never the public status.
        found: Option<String>,
    },
    Skipped {
        reason: String,
    },
    Paused,
}

impl TransferOutcome {
    /// A failure whose reason says all there is to say.
    fn failed(reason: String) -> TransferOutcome {
        TransferOutcome::Failed {
            reason,
            found: None,
        }
    }
}

/// A first owner asked about the objects waiting for it: what it said of them.
type WaitPoll = (Arc<Peer>, Vec<usize>, Result<Holds, String>);

/// Everything a transfer task needs, cheap to clone.
#[derive(Clone)]
struct TransferContext {
    fill: Arc<Fill>,
    stores: Arc<Stores>,
    fetcher: Fetcher,
    rate: Arc<RateLimiter>,
    metrics: Metrics,
    retries: u32,
    retry_base: Duration,
    cancel: Signal<Cancel>,
    /// The site token's `Authorization` value, for peer fill.
    bearer: Option<String>,
    /// `tidecache_fill_source_bytes_total`, resolved once per source.
    origin_bytes: prometheus::IntCounter,
    peer_bytes: prometheus::IntCounter,
    /// The runtime the engine runs on, whose blocking threads publish finished objects.
    background: tokio::runtime::Handle,
}

/// Where one attempt reads an object from.
#[derive(Clone, Copy)]
enum ReadFrom<'a> {
    /// Its manifest source.
    Origin,
    /// A peer box of the site.
    Peer(&'a Peer),
}

impl Engine {
    /// An engine filling `stores` toward `fill`'s manifest whenever `mode` says filling,
    /// paced by `rate`, with settings from `settings` (read again at each pass, so a
    /// SIGHUP applies from the next one).
    pub fn new(
        fill: Arc<Fill>,
        stores: Arc<Stores>,
        mode: watch::Receiver<ModeState>,
        fetcher: Fetcher,
        rate: Arc<RateLimiter>,
        settings: watch::Receiver<EngineSettings>,
        metrics: Metrics,
    ) -> Engine {
        let current = settings.borrow().clone();
        Engine {
            fill,
            stores,
            mode,
            fetcher,
            rate,
            settings: current,
            reloads: settings,
            metrics,
            pulled_etag: Arc::new(std::sync::Mutex::new(Pulled::default())),
        }
    }

    /// A puller of `fill.manifest_url` sharing this engine's last pull.
    fn puller(&self, stop: &Shutdown) -> Puller {
        Puller {
            fill: Arc::clone(&self.fill),
            fetcher: self.fetcher.clone(),
            mode: self.mode.clone(),
            settings: self.reloads.clone(),
            etag: Arc::clone(&self.pulled_etag),
            stop: stop.clone(),
        }
    }

    /// Runs until `stop` is raised.
    pub async fn run(mut self, mut stop: Shutdown) {
        tokio::spawn(poll_during_windows(self.puller(&stop)));
        let mut manifests = self.fill.watch_manifest();
        let mut session = 0u64;
        let mut was_filling = false;
        // The (manifest generation, fill session) whose pass finished.
        let mut done: Option<(u64, u64)> = None;
        loop {
            self.settings = self.reloads.borrow_and_update().clone();
            let filling = self.mode.borrow_and_update().mode == Mode::Filling;
            if filling && !was_filling {
                session += 1;
                was_filling = true;
                // The pull has its own overall timeout, and its download ends at the stop
                // or the window's end (see `Puller::pull`).
                if self.puller(&stop).pull(&self.settings).await.is_err() {
                    return;
                }
                // The mode may have changed while pulling: look again before a pass.
                continue;
            }
            was_filling = filling;
            let manifest = manifests.borrow_and_update().clone();
            if let (true, Some(manifest)) = (filling, manifest) {
                let key = (manifest.generation, session);
                if done != Some(key) {
                    match self.pass(&manifest, &mut manifests, &mut stop).await {
                        PassEnd::Done => done = Some(key),
                        PassEnd::Paused | PassEnd::Superseded => {}
                        PassEnd::Stopped => return,
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = self.mode.changed() => {}
                _ = manifests.changed() => {}
                _ = stop.raised() => return,
            }
        }
    }

    /// One pass toward `accepted`: delete what left the manifest, plan what to fetch,
    /// transfer it, then flush the index and report.
    async fn pass(
        &mut self,
        accepted: &Arc<AcceptedManifest>,
        manifests: &mut watch::Receiver<Option<Arc<AcceptedManifest>>>,
        stop: &mut Shutdown,
    ) -> PassEnd {
        let started = Instant::now();
        let started_at = Timestamp::now();
        tracing::info!(id = %accepted.id, objects = accepted.objects, bytes = accepted.total_bytes, "fill pass starting");
        // One look at the index, under its read lock: what the manifest has, and what the
        // stores hold that it no longer lists.
        self.stores.clear_full();
        self.stores.probe();
        self.fill.planning();
        let members = self.fill.site().map(|site| site.fingerprint());
        let surveyed = {
            let (stores, accepted) = (Arc::clone(&self.stores), Arc::clone(accepted));
            let fill_site = self.fill.site().cloned();
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                // Held for the pass, read back from the saved file if nothing holds it.
                let manifest = accepted.contents().map_err(|err| err.to_string())?;
                let read = started.elapsed();
                let damaged = stores.damaged();
                let site = fill_site.as_deref();
                let owns_share =
                    |path: &str, copies: u8| site.is_none_or(|site| site.is_mine(path, copies));
                let (survey, deletes) = stores.with_usable_index(|index| {
                    let survey = survey(&manifest, index, &damaged, &owns_share);
                    let deletes = dropped_beyond(&manifest, index, survey.listed);
                    (survey, deletes)
                });
                tracing::info!(
                    present = survey.present,
                    to_delete = deletes.len(),
                    manifest_ms = read.as_millis() as u64,
                    survey_ms = (started.elapsed() - read).as_millis() as u64,
                    "fill plan surveyed"
                );
                Ok::<_, String>((manifest, survey, deletes))
            })
            .await
            .map_err(|err| err.to_string())
            .and_then(|surveyed| surveyed)
        };
        // A survey that did not finish is no survey: an empty one would read as "nothing to
        // fetch", a pass done, and a box that holds its content.
        let (manifest, mut survey, deletes) = match surveyed {
            Ok(surveyed) => surveyed,
            Err(err) => {
                self.fill.pass_over();
                // A damaged manifest.bin is not mended by waiting: a minute between tries, not
                // a re-read of the whole file every few seconds; a new manifest ends the wait.
                tracing::error!(error = %err, "the fill plan failed; the pass is tried again in 60 s (a damaged saved manifest needs a whole manifest pushed)");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => return PassEnd::Paused,
                    _ = manifests.changed() => return PassEnd::Superseded,
                    _ = stop.raised() => return PassEnd::Stopped,
                }
            }
        };
        let handoff = std::mem::take(&mut survey.handoff);
        if let Some(site) = self.fill.site() {
            site.set_share(crate::site::Share {
                objects: survey.share_objects,
                bytes: survey.share_bytes,
            });
            site.set_manifest_copies(survey.max_copies);
        }
        let (mut deleted, interrupted) = self.delete_dropped(deletes, manifests, stop).await;
        if interrupted.is_none() {
            deleted += self.hand_off(&manifest, &handoff, stop).await;
        }
        let mut counts = PassCounts {
            already_present: 0,
            skipped_no_room: 0,
            deleted,
        };
        // Interrupted among the deletes: no plan either, since planning cleans up partial
        // files (the stores must stop changing, and a newer manifest may want them).
        let (end, stored) = match interrupted {
            Some(end) => (end, 0),
            None => {
                let work = self
                    .plan_fetches(&manifest, survey, members.as_deref())
                    .await;
                counts.already_present = work.present;
                counts.skipped_no_room = work.no_room.len() as u64;
                self.note_content(false).await;
                // Asking the peers is raced against the window's end and the stop: a peer
                // that answers slowly holds neither (the transfers then wind down at once).
                let sources = match self.fill.site() {
                    Some(site) => self
                        .unless_interrupted(
                            plan_sources(&self.fetcher, site, &manifest, &work.fetches),
                            stop,
                        )
                        .await
                        .unwrap_or_default(),
                    None => PeerPlan::default(),
                };
                self.transfer_all(&manifest, work.fetches, sources, manifests, stop)
                    .await
            }
        };
        if matches!(end, PassEnd::Done) {
            self.fill.pass_done(&manifest.id);
            // A whole pass under this member set: this box holds what it is meant to (but
            // for failures), so its peers send viewers to it and give up what moved here.
            if let (Some(site), Some(members)) = (self.fill.site(), &members) {
                site.settle(members);
            }
            // What moved away may be given up now, not a night later, when its owners
            // settled meanwhile and the site's change is over (see `Site::moves_are_over`).
            counts.deleted += self.hand_off(&manifest, &handoff, stop).await;
        }
        self.fill.pass_over();
        self.flush_index().await;
        let state = match end {
            PassEnd::Done => FillState::Done,
            _ => FillState::Paused,
        };
        let report = self.fill.with_progress(|progress| {
            progress.state = state;
            let report = FillReport {
                manifest_id: manifest.id.clone(),
                state,
                started_at: started_at.to_string(),
                duration_secs: started.elapsed().as_secs_f64(),
                stored,
                already_present: counts.already_present,
                failed: progress.objects_failed,
                skipped_no_room: counts.skipped_no_room,
                deleted: counts.deleted,
                bytes_fetched: progress.bytes_fetched,
                failures: progress.failures.clone(),
            };
            progress.last_fill = Some(report.clone());
            report
        });
        log_report(&report);
        if matches!(end, PassEnd::Done) {
            self.note_content(true).await;
        }
        end
    }

    /// Sets the [`Stocked`](super::stocked::Stocked) latch once the box holds its content:
    /// a pass toward a manifest with objects completed without a failure, or
    /// `fill.ready_share` of the manifest's bytes stored and verified (never bytes in
    /// flight). Also retries a latch save that failed.
    async fn note_content(&self, pass_complete: bool) {
        let stocked = self.fill.stocked();
        stocked.retry_save().await;
        if stocked.is_set() {
            return;
        }
        let share = stocked.ready_share();
        let (measured, why) = self.fill.with_progress(|progress| {
            let id = progress.manifest_id.clone().unwrap_or_default();
            let measured = Measured {
                manifest_id: id.clone(),
                held: progress.bytes_verified,
                total: progress.bytes_total,
            };
            let why = if pass_complete && progress.objects_failed == 0 && progress.objects_total > 0
            {
                Some(format!("a fill pass toward manifest {id} completed"))
            } else if holds_enough(measured.held, measured.total, share) {
                Some(format!(
                    "holds {} of {} bytes of manifest {id}, stored and verified (fill.ready_share = {share})",
                    measured.held, measured.total
                ))
            } else {
                None
            };
            (measured, why)
        });
        stocked.measure(measured);
        if let Some(why) = why {
            stocked.set(why).await;
        }
    }

    /// Deletes what the manifest no longer lists (and damaged objects it dropped), a batch
    /// at a time; returns how many objects went, and how the pass must end if the window
    /// ended, a new manifest arrived or the daemon is stopping between two batches (so the
    /// stores stop changing within one batch of any of them, however many deletes remain).
    async fn delete_dropped(
        &self,
        deletes: Vec<String>,
        manifests: &mut watch::Receiver<Option<Arc<AcceptedManifest>>>,
        stop: &Shutdown,
    ) -> (u64, Option<PassEnd>) {
        let mut deleted = 0u64;
        for batch in deletes.chunks(DELETE_BATCH) {
            if let Some(end) = self.interrupted(manifests, stop) {
                tracing::info!(
                    deleted,
                    left = deletes.len() as u64 - deleted,
                    "deletes interrupted; the next pass goes on"
                );
                return (deleted, Some(end));
            }
            let stores = Arc::clone(&self.stores);
            let batch = batch.to_vec();
            let (removed, error) = tokio::task::spawn_blocking(move || stores.remove_many(&batch))
                .await
                .unwrap_or((0, None));
            deleted += removed;
            if let Some(err) = error {
                tracing::warn!(error = %err, "deletes failed on a store; its objects stay");
            }
        }
        (deleted, None)
    }

    /// Why the pass must stop now, if it must: the window ended, a new manifest arrived, or
    /// the daemon is stopping.
    fn interrupted(
        &self,
        manifests: &watch::Receiver<Option<Arc<AcceptedManifest>>>,
        stop: &Shutdown,
    ) -> Option<PassEnd> {
        if stop.is_raised() {
            Some(PassEnd::Stopped)
        } else if self.mode.borrow().mode != Mode::Filling {
            Some(PassEnd::Paused)
        } else if manifests.has_changed().unwrap_or(false) {
            Some(PassEnd::Superseded)
        } else {
            None
        }
    }

    /// Plans what to fetch against what the stores hold and have room for, removes partial
    /// files nothing will resume, and starts the pass's progress (objects with no room are
    /// failed at once).
    async fn plan_fetches(
        &self,
        manifest: &Manifest,
        survey: Survey,
        members: Option<&str>,
    ) -> FillPlan {
        let (share_objects, share_bytes) = (survey.share_objects, survey.share_bytes);
        let work = fit(manifest, survey, self.stores.free_bytes());
        let keep: HashSet<String> = work
            .fetches
            .iter()
            .map(|&index| {
                let object = manifest.get(index);
                partial_name(object.path, &object.sha256)
            })
            .collect();
        let stale = self.stores.clean_partials(&keep);
        if stale > 0 {
            tracing::info!(removed = stale, "removed stale partial files");
        }
        self.fill.with_progress(|progress| {
            progress.state = FillState::Running;
            progress.manifest_id = Some(manifest.id.clone());
            progress.objects_total = share_objects;
            progress.objects_done = work.present;
            progress.objects_failed = 0;
            progress.bytes_total = share_bytes;
            progress.bytes_done = work.present_bytes;
            progress.bytes_verified = work.present_bytes;
            progress.bytes_fetched = 0;
            progress.failures.clear();
            progress.more_failures = 0;
            for &index in &work.no_room {
                let object = manifest.get(index);
                progress.fail(
                    object.path,
                    format!("no room: {} bytes do not fit in what is left", object.size),
                );
            }
        });
        self.metrics
            .fill_objects
            .with_label_values(&["skipped"])
            .inc_by(work.no_room.len() as u64);
        if let (Some(site), Some(members)) = (self.fill.site(), members) {
            site.set_short_of_room(members, &manifest.id, !work.no_room.is_empty());
        }
        if self.fill.site().is_some() {
            self.fill.fetching(
                work.fetches
                    .iter()
                    .map(|&index| Box::from(manifest.get(index).path))
                    .collect(),
            );
        }
        work
    }

    /// Gives up the stored objects of `handoff` that a box owning them now holds (a site
    /// only), while the window is open.
    async fn hand_off(
        &self,
        manifest: &Arc<Manifest>,
        handoff: &[usize],
        stop: &mut Shutdown,
    ) -> u64 {
        let Some(site) = self.fill.site() else {
            return 0;
        };
        if handoff.is_empty() {
            return 0;
        }
        let mode = self.mode.clone();
        let filling = move || mode.borrow().mode == Mode::Filling;
        self.unless_interrupted(
            hand_off(
                &self.fetcher,
                site,
                &self.stores,
                manifest,
                handoff,
                &filling,
            ),
            stop,
        )
        .await
        .unwrap_or(0)
    }

    /// `work`'s result, or `None` when the window ends or the daemon stops first.
    async fn unless_interrupted<T>(
        &self,
        work: impl std::future::Future<Output = T>,
        stop: &mut Shutdown,
    ) -> Option<T> {
        let mut mode = self.mode.clone();
        tokio::select! {
            done = work => Some(done),
            _ = mode.wait_for(|state| state.mode != Mode::Filling) => None,
            _ = stop.raised() => None,
        }
    }

    /// Transfers `fetches`, `fill.concurrency` at a time, until all are done or the window
    /// ends, a new manifest arrives or the daemon stops (in-flight transfers then get
    /// `fill.stop_grace`, or nothing on stop, before they are cancelled and checkpointed).
    /// Returns how the pass ended and how many objects were stored.
    async fn transfer_all(
        &mut self,
        manifest: &Arc<Manifest>,
        fetches: Vec<usize>,
        plan: PeerPlan,
        manifests: &mut watch::Receiver<Option<Arc<AcceptedManifest>>>,
        stop: &mut Shutdown,
    ) -> (PassEnd, u64) {
        let (cancel, cancel_signal) = signal::channel::<Cancel>();
        let context = TransferContext {
            fill: Arc::clone(&self.fill),
            stores: Arc::clone(&self.stores),
            fetcher: self.fetcher.clone(),
            rate: Arc::clone(&self.rate),
            metrics: self.metrics.clone(),
            retries: self.settings.retries,
            retry_base: self.settings.retry_base,
            cancel: cancel_signal,
            bearer: self.fill.site().and_then(|site| site.token().bearer()),
            origin_bytes: self
                .metrics
                .fill_source_bytes
                .with_label_values(&["origin"]),
            peer_bytes: self.metrics.fill_source_bytes.with_label_values(&["peer"]),
            background: tokio::runtime::Handle::current(),
        };
        // Positions in the manifest: an object is copied out of its compact form only when
        // its transfer starts. Objects that wait for their first owner in the site are set
        // aside, by first owner, and asked about together every WAIT_POLL: held, they are
        // fetched from it; still coming, they wait on; neither (it failed them, or cannot
        // be asked), they are fetched from the origin. A wait holds no transfer slot.
        let PeerPlan { mut holders, waits } = plan;
        let mut waiting: HashMap<String, (Arc<Peer>, Vec<usize>)> = HashMap::new();
        let mut queue: VecDeque<usize> = VecDeque::with_capacity(fetches.len());
        for index in fetches {
            match waits.get(&index) {
                Some(owner) => waiting
                    .entry(owner.name.clone())
                    .or_insert_with(|| (Arc::clone(owner), Vec::new()))
                    .1
                    .push(index),
                None => queue.push_back(index),
            }
        }
        drop(waits);
        let mut polls: JoinSet<WaitPoll> = JoinSet::new();
        let mut next_poll = tokio::time::Instant::now() + WAIT_POLL;
        // Per first owner: asks failed in a row, and since when it has had another manifest.
        let mut poll_failures: HashMap<String, u32> = HashMap::new();
        let mut other_manifest_since: HashMap<String, Instant> = HashMap::new();
        let mut transfers = JoinSet::new();
        let mut stored = 0u64;
        let mut winding_down: Option<(tokio::time::Instant, PassEnd)> = None;
        let mut cancelled = false;
        // Lifted out of SCHED_IDLE once the pass winds down, so the transfers see the
        // cancel and checkpoint in good time on a busy box (see `idle::hurry`).
        let mut hurried: Option<super::idle::Hurry> = None;
        loop {
            if winding_down.is_some() && hurried.is_none() {
                hurried = Some(super::idle::hurry());
            }
            // Looked at before any transfer starts, not only when the select below gets to
            // it: once the window has ended (or a manifest arrived, or a stop) no new
            // transfer starts, even if finishing ones keep the select busy.
            if winding_down.is_none() {
                if let Some(end) = self.interrupted(manifests, stop) {
                    tracing::info!(grace = ?self.settings.stop_grace, in_flight = transfers.len(), "fill pass winding down (window ended, new manifest or stop)");
                    let grace = match end {
                        PassEnd::Stopped => Duration::ZERO,
                        _ => self.settings.stop_grace,
                    };
                    winding_down = Some((tokio::time::Instant::now() + grace, end));
                }
            }
            while winding_down.is_none() && transfers.len() < self.settings.concurrency.max(1) {
                let Some(index) = queue.pop_front() else {
                    break;
                };
                let object = manifest.get(index).to_owned();
                let peers = holders.remove(&index).unwrap_or_default();
                let work = transfer(context.clone(), object, peers);
                match super::idle::transfers() {
                    Some(runtime) => transfers.spawn_on(work, runtime),
                    None => transfers.spawn(work),
                };
            }
            let waits_left = !waiting.is_empty() || !polls.is_empty();
            if transfers.is_empty() && (!waits_left || winding_down.is_some()) {
                break;
            }
            let may_poll = !waiting.is_empty() && polls.is_empty() && winding_down.is_none();
            let grace_over = async {
                match &winding_down {
                    Some((deadline, _)) => tokio::time::sleep_until(*deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                joined = transfers.join_next(), if !transfers.is_empty() => {
                    if let Some(Ok((path, outcome))) = joined {
                        if let TransferOutcome::Stored { .. } = outcome {
                            stored += 1;
                        }
                        self.record(&path, outcome);
                        self.note_content(false).await;
                    }
                }
                _ = tokio::time::sleep_until(next_poll), if may_poll => {
                    for (_, (owner, objects)) in waiting.drain() {
                        let (fetcher, manifest) = (self.fetcher.clone(), Arc::clone(manifest));
                        let site = self.fill.site().cloned();
                        polls.spawn(async move {
                            let asked = match &site {
                                Some(site) => ask_holds(&fetcher, site, &owner, &manifest, &objects, Duration::ZERO).await,
                                None => Err("not in a site".to_owned()),
                            };
                            (owner, objects, asked)
                        });
                    }
                }
                polled = polls.join_next(), if !polls.is_empty() => {
                    if let Some(Ok((owner, objects, asked))) = polled {
                        next_poll = tokio::time::Instant::now() + WAIT_POLL;
                        if asked.is_ok() {
                            poll_failures.remove(&owner.name);
                        }
                        match asked {
                            Ok(holds) if !holds.agrees => {
                                tracing::warn!(peer = %owner.name, waiting = objects.len(), "the first owner sees other members than this box; fetching what waited for it from the origin");
                                queue.extend(objects);
                            }
                            Ok(holds) => {
                                // A first owner with another manifest in force has not
                                // started on this one: all it does not hold may come.
                                let other_manifest = holds.manifest_id.as_deref() != Some(manifest.id.as_str());
                                let waited_long = other_manifest
                                    && other_manifest_since
                                        .entry(owner.name.clone())
                                        .or_insert_with(Instant::now)
                                        .elapsed()
                                        >= OTHER_MANIFEST_WAIT;
                                if !other_manifest {
                                    other_manifest_since.remove(&owner.name);
                                }
                                let coming: HashSet<usize> = if other_manifest && !waited_long {
                                    objects.iter().copied().collect()
                                } else {
                                    holds.coming.into_iter().collect()
                                };
                                let held: HashSet<usize> = holds.held.into_iter().collect();
                                let mut still = Vec::new();
                                for index in objects {
                                    if held.contains(&index) {
                                        holders.insert(index, vec![Arc::clone(&owner)]);
                                        queue.push_back(index);
                                    } else if coming.contains(&index) {
                                        still.push(index);
                                    } else {
                                        // Failed or dropped by the first owner: the origin.
                                        queue.push_back(index);
                                    }
                                }
                                if !still.is_empty() {
                                    waiting.insert(owner.name.clone(), (owner, still));
                                }
                            }
                            Err(err) => {
                                let failures = poll_failures.entry(owner.name.clone()).or_default();
                                *failures += 1;
                                if *failures < WAIT_POLL_FAILURES {
                                    tracing::info!(peer = %owner.name, error = %err, failures = *failures, "cannot ask the first owner about the objects waiting for it; asking again");
                                    waiting.insert(owner.name.clone(), (owner, objects));
                                } else {
                                    tracing::warn!(peer = %owner.name, error = %err, waiting = objects.len(), "cannot ask the first owner about the objects waiting for it; fetching them from the origin");
                                    queue.extend(objects);
                                }
                            }
                        }
                    }
                }
                _ = self.mode.changed(), if winding_down.is_none() => {
                    if self.mode.borrow().mode != Mode::Filling {
                        tracing::info!(grace = ?self.settings.stop_grace, in_flight = transfers.len(), "fill window ended; finishing in-flight transfers");
                        winding_down = Some((tokio::time::Instant::now() + self.settings.stop_grace, PassEnd::Paused));
                    }
                }
                _ = manifests.changed(), if winding_down.is_none() => {
                    tracing::info!("a new manifest arrived; this pass stops and the next starts with it");
                    winding_down = Some((tokio::time::Instant::now() + self.settings.stop_grace, PassEnd::Superseded));
                }
                _ = stop.raised(), if !matches!(winding_down, Some((_, PassEnd::Stopped))) => {
                    winding_down = Some((tokio::time::Instant::now(), PassEnd::Stopped));
                }
                _ = grace_over, if !cancelled => {
                    cancel.raise();
                    cancelled = true;
                }
            }
        }
        polls.abort_all();
        let end = match winding_down {
            Some((_, end)) => end,
            None if queue.is_empty() && waiting.is_empty() => PassEnd::Done,
            None => PassEnd::Paused,
        };
        if let (Some(hurried), PassEnd::Stopped) = (hurried, &end) {
            hurried.for_good();
        }
        (end, stored)
    }

    /// Compacts every store's journal into its snapshot; a failure is logged, not fatal (the
    /// journal still holds every change).
    async fn flush_index(&self) {
        let stores = Arc::clone(&self.stores);
        match tokio::task::spawn_blocking(move || stores.compact_journals()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "index flush failed; the journal still holds every change")
            }
            Err(err) => tracing::warn!(error = %err, "index flush did not run"),
        }
    }

    /// Counts a finished transfer.
    fn record(&self, path: &str, outcome: TransferOutcome) {
        if !matches!(outcome, TransferOutcome::Paused) {
            self.fill.fetched(path);
        }
        match outcome {
            TransferOutcome::Stored { bytes } => {
                self.metrics
                    .fill_objects
                    .with_label_values(&["stored"])
                    .inc();
                self.fill.with_progress(|progress| {
                    progress.objects_done += 1;
                    progress.bytes_verified += bytes;
                });
                tracing::debug!(path, bytes, "stored");
            }
            TransferOutcome::Failed { reason, found } => {
                self.metrics
                    .fill_objects
                    .with_label_values(&["failed"])
                    .inc();
                tracing::warn!(path, reason = %reason, found = found.as_deref().unwrap_or(""), "object failed");
                self.fill
                    .with_progress(|progress| progress.fail_with(path, reason, found));
            }
            TransferOutcome::Skipped { reason } => {
                self.metrics
                    .fill_objects
                    .with_label_values(&["skipped"])
                    .inc();
                tracing::warn!(path, reason = %reason, "object skipped");
                self.fill
                    .with_progress(|progress| progress.fail(path, reason));
            }
            TransferOutcome::Paused => {}
        }
    }
}

/// What pulling `fill.manifest_url` needs: at each window's start (the engine) and every
/// `fill.manifest_poll` during the window (the poller), sharing the last ETag.
struct Puller {
    fill: Arc<Fill>,
    fetcher: Fetcher,
    mode: watch::Receiver<ModeState>,
    settings: watch::Receiver<EngineSettings>,
    etag: Arc<std::sync::Mutex<Pulled>>,
    stop: Shutdown,
}

/// The manifest last pulled and accepted: its ETag for the conditional GET, and its
/// body's sha256 for origins that send no ETag (polled every few minutes, the same
/// manifest is not accepted again, which would restart the pass).
#[derive(Debug, Default)]
struct Pulled {
    etag: Option<String>,
    body_sha256: Option<[u8; 32]>,
}

impl Puller {
    /// Pulls `fill.manifest_url` with a conditional GET; an unchanged manifest costs
    /// nothing.
    ///
    /// Only the download is raced against the stop and the window's end: accepting what
    /// arrived is local and short, and cut midway it could leave the saved manifest and the
    /// one in force apart. `Err` when the daemon is stopping.
    async fn pull(&self, settings: &EngineSettings) -> Result<(), Stopping> {
        let (etag, last_body) = {
            let pulled = self
                .etag
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (pulled.etag.clone(), pulled.body_sha256)
        };
        let etag = etag.as_deref();
        let limit = settings.max_manifest_size;
        let download = async {
            match &settings.manifest_url {
                ManifestUrl::None => Ok(None),
                ManifestUrl::File(path) => read_if_changed(path, etag, limit).await,
                ManifestUrl::Http(url) => self.fetcher.get_if_changed(url, etag, limit).await,
            }
        };
        let mut mode = self.mode.clone();
        let mut stop = self.stop.clone();
        let fetched = tokio::select! {
            fetched = download => fetched,
            _ = mode.wait_for(|state| state.mode != Mode::Filling) => {
                tracing::info!("the fill window ended during the manifest pull; the manifest in force stays");
                return Ok(());
            }
            _ = stop.raised() => return Err(Stopping),
        };
        if settings.manifest_url == ManifestUrl::None {
            return Ok(());
        }
        let url = settings.manifest_url.to_url();
        match fetched {
            Ok(None) => tracing::info!(url, "pulled manifest unchanged"),
            Ok(Some((body, _)))
                if last_body == Some(<sha2::Sha256 as sha2::Digest>::digest(&body).into()) =>
            {
                tracing::info!(url, "pulled manifest unchanged (same body)")
            }
            Ok(Some((body, etag))) => {
                let body_sha256: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&body).into();
                match self
                    .fill
                    .accept_pulled(Received::Bytes(body), limit as u64)
                    .await
                {
                    Ok(summary) => {
                        tracing::info!(url, id = %summary.id, "pulled a new manifest");
                        *self
                            .etag
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Pulled {
                            etag,
                            body_sha256: Some(body_sha256),
                        };
                    }
                    Err(err) => {
                        tracing::error!(url, error = %err, "pulled manifest refused; the one in force stays")
                    }
                }
            }
            Err(err) => {
                tracing::warn!(url, error = %err, "cannot pull the manifest; using the one in force")
            }
        }
        Ok(())
    }
}

/// While a fill window is open, pulls `fill.manifest_url` again every `fill.manifest_poll`
/// (the engine pulls at the window's start), so what the origin publishes after the window
/// opened still arrives that night: a pulled manifest that changed supersedes the pass under
/// way, whose next pass keeps what is already stored.
async fn poll_during_windows(puller: Puller) {
    let mut mode = puller.mode.clone();
    let mut stop = puller.stop.clone();
    loop {
        tokio::select! {
            _ = mode.wait_for(|state| state.mode == Mode::Filling) => {}
            _ = stop.raised() => return,
        }
        let settings = puller.settings.borrow().clone();
        tokio::select! {
            _ = tokio::time::sleep(settings.manifest_poll) => {}
            _ = mode.wait_for(|state| state.mode != Mode::Filling) => continue,
            _ = stop.raised() => return,
        }
        if mode.borrow().mode == Mode::Filling && settings.manifest_url != ManifestUrl::None {
            let settings = puller.settings.borrow().clone();
            if puller.pull(&settings).await.is_err() {
                return;
            }
        }
    }
}

/// At start (before anything answers `/readyz`) and after a reload, squares the
/// [`Stocked`](super::stocked::Stocked) latch with the stores:
/// - a saved latch is not honoured while the stores hold no object at all (disks replaced
///   or wiped) and the manifest in force lists some;
/// - without a latch, it is set when the stores hold `fill.ready_share` of the manifest in
///   force's bytes, or when this state directory was used by a version without the latch
///   (its manifest was saved as JSON) and the stores hold objects: an upgrade must not
///   withdraw a box that was serving, even with tonight's manifest already pushed.
pub async fn check_content(fill: Arc<Fill>, stores: Arc<Stores>) {
    let stocked = fill.stocked();
    stocked.retry_save().await;
    let manifest = fill.manifest();
    let objects = stores.object_count();
    if stocked.is_set() {
        if objects == 0 && manifest.is_some_and(|accepted| accepted.objects > 0) {
            stocked.suspend("the stores hold no object");
        }
        return;
    }
    if let Some(accepted) = manifest {
        let share = stocked.ready_share();
        let in_force = Arc::clone(&accepted);
        let measuring = Arc::clone(&stores);
        let fill_site = fill.site().cloned();
        let held = tokio::task::spawn_blocking(move || {
            let manifest = in_force.contents().map_err(|err| {
                tracing::error!(error = %err, "cannot read the manifest in force to measure what the stores hold");
            })?;
            let damaged = measuring.damaged();
            let site = fill_site.as_deref();
            let owns_share = |path: &str, copies: u8| site.is_none_or(|site| site.is_mine(path, copies));
            let owns: Owns<'_> = if site.is_some() { &owns_share } else { &owns_all };
            Ok::<_, ()>(measuring.with_usable_index(|index| held_bytes(&manifest, index, &damaged, owns)))
        })
        .await
        .ok()
        .and_then(Result::ok);
        // Not measured is not "holds nothing": the reason stays what it was.
        let Some((held, total)) = held else {
            return;
        };

        let id = &accepted.id;
        stocked.measure(Measured {
            manifest_id: id.clone(),
            held,
            total,
        });
        if holds_enough(held, total, share) {
            stocked
                .set(format!(
                    "the stores hold {held} of {total} bytes of manifest {id} (fill.ready_share = {share})"
                ))
                .await;
            return;
        }
    }
    if fill.upgraded_from_json() && objects > 0 {
        stocked
            .set(format!(
                "upgraded from a version without this latch; the stores hold {objects} objects"
            ))
            .await;
    }
}

/// Logs the end-of-pass report: one summary line, then one line per listed failure.
fn log_report(report: &FillReport) {
    tracing::info!(
        id = %report.manifest_id,
        state = ?report.state,
        stored = report.stored,
        already_present = report.already_present,
        failed = report.failed,
        skipped_no_room = report.skipped_no_room,
        deleted = report.deleted,
        bytes_fetched = report.bytes_fetched,
        duration_secs = format!("{:.1}", report.duration_secs),
        "fill report"
    );
    for failure in &report.failures {
        tracing::warn!(path = %failure.path, reason = %failure.reason, "fill report: failed object");
    }
}

/// Why one attempt at an object stopped.
enum AttemptEnd {
    /// Worth another attempt, after the backoff or the origin's `Retry-After` if longer.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    Fail(String),
    Verify {
        mismatch: Mismatch,
        resumed: bool,
    },
    StoreFull(usize),
    Cancelled,
    /// A peer did not give the object (not there, not answering, or a wrong answer): the
    /// next source is tried.
    PeerSaid,
}

/// Fetches one object: from the `peers` that hold it first, then from its source with
/// retries. Returns its path and how it ended.
async fn transfer(
    context: TransferContext,
    object: ManifestObject,
    peers: Vec<Arc<Peer>>,
) -> (String, TransferOutcome) {
    let outcome = transfer_object(&context, &object, &peers).await;
    (object.path, outcome)
}

/// Opens the object's writer: resuming what an earlier attempt left unless
/// `from_scratch`. `Err` is how the transfer ends when no store can take it.
async fn open_writer(
    context: &TransferContext,
    object: &ManifestObject,
    from_scratch: bool,
) -> Result<ObjectWriter, TransferOutcome> {
    let stores = Arc::clone(&context.stores);
    let (path, size, sha256) = (object.path.clone(), object.size, object.sha256);
    // On the idle threads: creating the file allocates an inode, and resuming re-hashes what
    // an earlier attempt wrote; neither takes a lock viewers take.
    let opened = super::idle::run(move || {
        if from_scratch {
            ObjectWriter::begin(&stores, &path, size, sha256)
        } else {
            ObjectWriter::begin_or_resume(&stores, &path, size, sha256)
        }
    })
    .await;
    let writer = match opened {
        Ok(Ok(writer)) => writer,
        Ok(Err(StoreError::NoRoom { .. })) => {
            return Err(TransferOutcome::Skipped {
                reason: format!("no room: no store can take {} more bytes", object.size),
            });
        }
        Ok(Err(err)) => return Err(TransferOutcome::failed(err.to_string())),
        Err(err) => return Err(TransferOutcome::failed(err.to_string())),
    };
    let already = writer.written();
    context
        .fill
        .with_progress(|progress| progress.bytes_done += already);
    Ok(writer)
}

/// How asking one peer for an object went.
enum PeerTry {
    Stored(u64),
    /// Not there (or not usable): the next source.
    NotThere,
    Cancelled,
}

/// One attempt at `object` from `peer`, verified like any fill. A wrong answer (bytes
/// that fail verification) makes the next attempt start from scratch.
async fn from_peer(
    context: &TransferContext,
    object: &ManifestObject,
    peer: &Peer,
    from_scratch: &mut bool,
) -> PeerTry {
    if context.cancel.is_raised() {
        return PeerTry::Cancelled;
    }
    let writer = match open_writer(context, object, *from_scratch).await {
        Ok(writer) => writer,
        Err(_) => return PeerTry::NotThere,
    };
    match attempt_object(context, object, writer, ReadFrom::Peer(peer)).await {
        Ok(bytes) => PeerTry::Stored(bytes),
        Err((end, counted)) => {
            context
                .fill
                .with_progress(|progress| progress.take_back(counted));
            match end {
                AttemptEnd::Cancelled => PeerTry::Cancelled,
                AttemptEnd::Verify { mismatch, .. } => {
                    tracing::warn!(path = %object.path, peer = %peer.name, reason = %mismatch.reason, "a site peer's copy failed verification; trying the next source");
                    *from_scratch = true;
                    PeerTry::NotThere
                }
                AttemptEnd::StoreFull(store) => {
                    context.stores.mark_full(store);
                    PeerTry::NotThere
                }
                _ => PeerTry::NotThere,
            }
        }
    }
}

async fn transfer_object(
    context: &TransferContext,
    object: &ManifestObject,
    peers: &[Arc<Peer>],
) -> TransferOutcome {
    let mut attempt = 0u32;
    let mut from_scratch = false;
    for peer in peers {
        match from_peer(context, object, peer, &mut from_scratch).await {
            PeerTry::Stored(bytes) => return TransferOutcome::Stored { bytes },
            PeerTry::Cancelled => return TransferOutcome::Paused,
            PeerTry::NotThere => {}
        }
    }
    loop {
        if context.cancel.is_raised() {
            return TransferOutcome::Paused;
        }
        let writer = match open_writer(context, object, from_scratch).await {
            Ok(writer) => writer,
            Err(outcome) => return outcome,
        };
        match attempt_object(context, object, writer, ReadFrom::Origin).await {
            Ok(bytes) => return TransferOutcome::Stored { bytes },
            Err((end, counted)) => {
                context
                    .fill
                    .with_progress(|progress| progress.take_back(counted));
                match end {
                    AttemptEnd::Cancelled => return TransferOutcome::Paused,
                    AttemptEnd::PeerSaid => {
                        return TransferOutcome::failed(
                            "a peer's answer ended an origin fetch".to_owned(),
                        );
                    }
                    AttemptEnd::Fail(reason) => {
                        return TransferOutcome::Failed {
                            reason,
                            found: None,
                        };
                    }
                    AttemptEnd::Verify {
                        resumed: true,
                        mismatch,
                    } if !from_scratch => {
                        tracing::warn!(path = %object.path, reason = %mismatch.reason, found = %mismatch.found, "resumed object failed verification; fetching it whole");
                        from_scratch = true;
                    }
                    AttemptEnd::Verify { mismatch, .. } => {
                        return TransferOutcome::Failed {
                            reason: mismatch.reason,
                            found: Some(mismatch.found),
                        };
                    }
                    AttemptEnd::StoreFull(store) => {
                        tracing::warn!(path = %object.path, store, "store full (ENOSPC); placing elsewhere");
                        context.stores.mark_full(store);
                        attempt += 1;
                    }
                    AttemptEnd::Retry { reason, after } => {
                        attempt += 1;
                        if attempt > context.retries {
                            return TransferOutcome::failed(format!(
                                "{reason} (gave up after {attempt} attempts)"
                            ));
                        }
                        // The origin's Retry-After, when longer than our own backoff; the
                        // wait still ends at once when the window ends or the box stops.
                        let delay =
                            backoff(context.retry_base, attempt).max(after.unwrap_or_default());
                        tracing::info!(path = %object.path, attempt, delay = ?delay, reason = %reason, "retrying");
                        let mut cancel = context.cancel.clone();
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = cancel.raised() => return TransferOutcome::Paused,
                        }
                    }
                }
                if attempt > context.retries {
                    return TransferOutcome::failed(format!("gave up after {attempt} attempts"));
                }
            }
        }
    }
}

/// Exponential backoff with ±50% jitter, capped.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exponential = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exponential.min(MAX_BACKOFF);
    capped.mul_f64(0.5 + fastrand::f64())
}

/// One attempt: download into `writer` and finish it. On error, returns how it ended and the
/// bytes it had counted as done (so progress can take them back).
async fn attempt_object(
    context: &TransferContext,
    object: &ManifestObject,
    mut writer: ObjectWriter,
    from: ReadFrom<'_>,
) -> Result<u64, (AttemptEnd, u64)> {
    let offset = writer.written();
    let mut counted = offset;
    let resumed_from_partial = offset > 0;
    if resumed_from_partial && offset == object.size {
        // A crash or a window's end came after the last byte was written but before the
        // rename: the partial is whole, and asking the origin for `bytes=SIZE-` would only
        // get a 416. Verify and publish it as it is.
        return finish(writer, true, counted, &context.background).await;
    }
    let roots = context.fill.file_roots();
    let mut cancel = context.cancel.clone();
    // An origin that never answers (or answers slowly) must not hold the window's end or a
    // shutdown: the wait for the response head is raced against cancellation.
    let open = async {
        match (from, &context.bearer) {
            (ReadFrom::Origin, _) => context.fetcher.open(&object.source, offset, &roots).await,
            (ReadFrom::Peer(peer), Some(bearer)) => {
                let url = object_url(peer, &object.path);
                context.fetcher.open_peer(&url, bearer, offset).await
            }
            (ReadFrom::Peer(_), None) => {
                Err(FetchError::permanent("no site token to ask a peer with"))
            }
        }
    };
    // `fill.max_rate` caps what crosses the transit: peers are on the site's LAN.
    let (source_bytes, mut prepaid) = match from {
        ReadFrom::Origin => (&context.origin_bytes, Prepaid::paced(&context.rate)),
        ReadFrom::Peer(_) => (&context.peer_bytes, Prepaid::unpaced()),
    };
    // The first batch is paid for before the request goes out: what the origin sends
    // before it is read is the kernel's receive buffer, not a batch per transfer.
    let first_batch = object.size.saturating_sub(counted);
    let opened = tokio::select! {
        opened = async {
            prepaid.pay_next(first_batch).await;
            open.await
        } => opened,
        _ = cancel.raised() => {
            checkpoint(writer).await;
            return Err((AttemptEnd::Cancelled, counted));
        }
    };
    let mut download = match opened {
        Ok(download) => download,
        Err(err) if matches!(from, ReadFrom::Peer(_)) => {
            // What was written stays for the next source to resume.
            checkpoint(writer).await;
            tracing::debug!(path = %object.path, error = %err, "a site peer did not give the object");
            return Err((AttemptEnd::PeerSaid, counted));
        }
        Err(err) => {
            let retryable = err.retryable;
            let end = fetch_end(err);
            if retryable {
                checkpoint(writer).await;
            } else {
                discard(writer).await;
            }
            return Err((end, counted));
        }
    };
    if offset > 0 && !download.resumed {
        let restarted =
            tokio::task::spawn_blocking(move || writer.restart().map(|()| writer)).await;
        writer = match restarted {
            Ok(Ok(writer)) => writer,
            Ok(Err(err)) => return Err((AttemptEnd::Fail(err.to_string()), counted)),
            Err(err) => return Err((AttemptEnd::Fail(err.to_string()), counted)),
        };
        context
            .fill
            .with_progress(|progress| progress.take_back(offset));
        counted = 0;
    }
    let resumed = resumed_from_partial && download.resumed;
    let mut batch = BATCHES.take();
    batch.clear();
    let mut received = ReceivedTally::new(&context.fill);
    loop {
        let remaining = object.size.saturating_sub(counted);
        let chunk = tokio::select! {
            chunk = async {
                prepaid.pay_next(remaining).await;
                download.next_chunk().await
            } => chunk,
            _ = cancel.raised() => {
                return match flush(writer, &mut batch).await {
                    Ok(writer) => {
                        checkpoint(writer).await;
                        Err((AttemptEnd::Cancelled, counted))
                    }
                    Err(end) => Err((end, counted)),
                };
            }
        };
        match chunk {
            Ok(Some(data)) => {
                // A chunk that would take the batch past its capacity fills it to exactly
                // WRITE_BATCH, which is written, and the rest starts the next: a batch that
                // outgrew its capacity would be reallocated (a copy, fresh pages) and kept
                // at twice it, and written in whole megabytes the direct writer sends each
                // to disk as it comes (so a kill loses at most the last one).
                let mut rest: &[u8] = &data;
                while batch.len() + rest.len() > WRITE_BATCH {
                    let (filling, after) = rest.split_at(WRITE_BATCH - batch.len());
                    batch.extend_from_slice(filling);
                    rest = after;
                    writer = flush(writer, &mut batch)
                        .await
                        .map_err(|end| (end, counted))?;
                }
                batch.extend_from_slice(rest);
                prepaid.spend(data.len());
                counted += data.len() as u64;
                context.metrics.fill_bytes.inc_by(data.len() as u64);
                source_bytes.inc_by(data.len() as u64);
                received.add(data.len() as u64);
                if batch.len() >= WRITE_BATCH {
                    writer = flush(writer, &mut batch)
                        .await
                        .map_err(|end| (end, counted))?;
                }
            }
            Ok(None) => break,
            Err(err) => {
                let retryable = err.retryable || matches!(from, ReadFrom::Peer(_));
                let end = match from {
                    ReadFrom::Peer(_) => AttemptEnd::PeerSaid,
                    ReadFrom::Origin => fetch_end(err),
                };
                return match flush(writer, &mut batch).await {
                    Ok(writer) if retryable => {
                        checkpoint(writer).await;
                        Err((end, counted))
                    }
                    Ok(writer) => {
                        discard(writer).await;
                        Err((end, counted))
                    }
                    Err(write_end) => Err((write_end, counted)),
                };
            }
        }
    }
    let writer = flush(writer, &mut batch)
        .await
        .map_err(|end| (end, counted))?;
    finish(writer, resumed, counted, &context.background).await
}

/// `fill.max_rate` paid ahead: a transfer from the origin pays for its next write batch
/// (1 MiB, or what is left of the object) before it reads it. Paid a batch at a time, not
/// per read (a read is at most 64 KiB): one sleep and wake-up per MiB instead of sixteen,
/// each a turn of an idle fill thread on a CPU viewers share. An object or an attempt
/// smaller than a batch pays before it starts. The waits are raced with cancellation by
/// the caller; one dropped mid-wait has paid for bytes it never reads (the cap errs low).
struct Prepaid<'a> {
    /// None for a source that is not paced (a peer of the site).
    rate: Option<&'a RateLimiter>,
    /// Bytes paid for and not yet read.
    credit: usize,
}

impl<'a> Prepaid<'a> {
    fn paced(rate: &'a RateLimiter) -> Prepaid<'a> {
        Prepaid {
            rate: Some(rate),
            credit: 0,
        }
    }

    fn unpaced() -> Prepaid<'a> {
        Prepaid {
            rate: None,
            credit: 0,
        }
    }

    /// Pays for the next batch when what was paid is used up, and waits for its turn (long
    /// at a low cap). `remaining`: bytes of the object not yet received.
    async fn pay_next(&mut self, remaining: u64) {
        let Some(rate) = self.rate.filter(|_| self.credit == 0) else {
            return;
        };
        let ahead = usize::try_from(remaining).map_or(WRITE_BATCH, |left| left.min(WRITE_BATCH));
        self.credit = ahead;
        if let Some(turn) = rate.reserve(ahead) {
            rate.wait_for(turn).await;
        }
    }

    /// Takes `bytes` read off what was paid; bytes beyond it (an origin sending more than
    /// the object's size, or a whole object for a resume) are charged for the next payer.
    fn spend(&mut self, bytes: usize) {
        if let Some(rate) = self.rate {
            let covered = bytes.min(self.credit);
            self.credit -= covered;
            rate.charge(bytes - covered);
        }
    }
}

/// Bytes received, told to the fill's progress once a write batch's worth or
/// [`PROGRESS_EVERY`] has gone by (and the rest when dropped, before the caller takes back
/// what an attempt that failed had counted) rather than per chunk: transfers run under
/// `SCHED_IDLE`, and the progress lock is shared with the admin API, which should seldom
/// wait for an idle thread preempted while holding it.
struct ReceivedTally<'a> {
    fill: &'a Fill,
    unreported: u64,
    reported_at: Instant,
}

/// How stale a transfer's bytes in the fill's progress may get (a slow origin's trickle).
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

impl<'a> ReceivedTally<'a> {
    fn new(fill: &'a Fill) -> ReceivedTally<'a> {
        ReceivedTally {
            fill,
            unreported: 0,
            reported_at: Instant::now(),
        }
    }

    fn add(&mut self, bytes: u64) {
        self.unreported += bytes;
        if self.unreported >= WRITE_BATCH as u64 || self.reported_at.elapsed() >= PROGRESS_EVERY {
            self.report();
        }
    }

    fn report(&mut self) {
        self.reported_at = Instant::now();
        let bytes = std::mem::take(&mut self.unreported);
        if bytes > 0 {
            self.fill
                .with_progress(|progress| progress.add_bytes(bytes));
        }
    }
}

impl Drop for ReceivedTally<'_> {
    fn drop(&mut self) {
        self.report();
    }
}

/// Verifies and publishes a written object; returns its size, or how the attempt ended and
/// the bytes it had counted. The check, the last write and the fsync run on the idle
/// threads; the publish (which takes the index's lock viewers read under) on a blocking
/// thread of the background runtime, so a viewer never waits for an idle thread.
async fn finish(
    mut writer: ObjectWriter,
    resumed: bool,
    counted: u64,
    background: &tokio::runtime::Handle,
) -> Result<u64, (AttemptEnd, u64)> {
    let store = writer.store();
    let sealed = super::idle::run(move || writer.seal().map(|()| writer)).await;
    let published = match sealed {
        // Asked for from a background worker, not from this idle thread: a blocking thread
        // the pool starts inherits the policy of the thread that starts it, and would
        // serve every later background job (publishes, deletes, the plan) under SCHED_IDLE.
        Ok(Ok(writer)) => match background
            .spawn(async move { tokio::task::spawn_blocking(move || writer.finish()).await })
            .await
        {
            Ok(published) => published,
            Err(err) => Err(err),
        },
        Ok(Err(err)) => Ok(Err(err)),
        Err(err) => Err(err),
    };
    match published {
        Ok(Ok(meta)) => Ok(meta.size),
        Ok(Err(err @ (StoreError::HashMismatch { .. } | StoreError::SizeMismatch { .. }))) => {
            Err((
                AttemptEnd::Verify {
                    mismatch: Mismatch::from(&err),
                    resumed,
                },
                counted,
            ))
        }
        Ok(Err(err)) if err.is_storage_full() => Err((AttemptEnd::StoreFull(store), counted)),
        Ok(Err(err)) => Err((AttemptEnd::Fail(err.to_string()), counted)),
        Err(err) => Err((AttemptEnd::Fail(err.to_string()), counted)),
    }
}

/// A verification failure, in two parts: what did not match, which anyone reading the
/// status may see, and what was found instead, which describes the source's content (for a
/// `file://` source, a local file's size or hash) and so goes only to the log and to holders
/// of the admin token.
#[derive(Debug)]
struct Mismatch {
    reason: String,
    found: String,
}

impl From<&StoreError> for Mismatch {
    fn from(err: &StoreError) -> Mismatch {
        match err {
            StoreError::SizeMismatch {
                expected, actual, ..
            } if actual > expected => Mismatch {
                reason: format!("size does not match the manifest's {expected} bytes"),
                found: format!("the source sent more ({actual} bytes so far)"),
            },
            StoreError::SizeMismatch {
                expected, actual, ..
            } => Mismatch {
                reason: format!("size does not match the manifest's {expected} bytes"),
                found: format!("got {actual} bytes"),
            },
            StoreError::HashMismatch {
                expected, actual, ..
            } => Mismatch {
                reason: format!("sha256 does not match the manifest's {expected}"),
                found: format!("got sha256 {actual}"),
            },
            other => Mismatch {
                reason: other.to_string(),
                found: String::new(),
            },
        }
    }
}

/// Writes (and hashes) a batch on one of the fill's idle threads and hands the writer
/// back, with the batch emptied for the next bytes.
async fn flush(writer: ObjectWriter, batch: &mut PooledBuffer) -> Result<ObjectWriter, AttemptEnd> {
    if batch.is_empty() {
        return Ok(writer);
    }
    let mut writer = writer;
    let mut full = std::mem::replace(batch, BATCHES.placeholder());
    let written = super::idle::run(move || {
        let result = writer.write(&full);
        full.clear();
        (writer, result, full)
    })
    .await;
    let written = written.map(|(writer, result, emptied)| {
        *batch = emptied;
        (writer, result)
    });
    match written {
        Ok((writer, Ok(()))) => Ok(writer),
        Ok((writer, Err(err))) => {
            let store = writer.store();
            drop(writer);
            Err(match err {
                StoreError::SizeMismatch { .. } => AttemptEnd::Verify {
                    mismatch: Mismatch::from(&err),
                    resumed: false,
                },
                err if err.is_storage_full() => AttemptEnd::StoreFull(store),
                err => AttemptEnd::Fail(err.to_string()),
            })
        }
        Err(err) => Err(AttemptEnd::Fail(err.to_string())),
    }
}

/// Throws away what was written (the object failed for good): the writer's drop removes
/// its temp file, on a blocking thread since that is disk I/O.
async fn discard(writer: ObjectWriter) {
    let _ = tokio::task::spawn_blocking(move || drop(writer)).await;
}

/// Keeps what was written for a later resume.
async fn checkpoint(writer: ObjectWriter) {
    let path = writer.path().to_owned();
    if let Ok(Err(err)) = tokio::task::spawn_blocking(move || writer.checkpoint()).await {
        tracing::warn!(path, error = %err, "checkpoint failed; the object starts over next time");
    }
}

/// The file-URL counterpart of a conditional GET: the "ETag" is the content's sha256.
async fn read_if_changed(
    path: &std::path::Path,
    etag: Option<&str>,
    limit: usize,
) -> Result<Option<(bytes::Bytes, Option<String>)>, FetchError> {
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || read_regular_file(&owned))
        .await
        .map_err(|err| FetchError::retry(format!("{}: {err}", path.display())))?;
    let bytes = read.map_err(|err| FetchError::retry(format!("{}: {err}", path.display())))?;
    if bytes.len() > limit {
        return Err(FetchError::permanent(format!(
            "{}: larger than fill.max_manifest_size",
            path.display()
        )));
    }
    let digest = crate::store::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if etag == Some(digest.as_str()) {
        return Ok(None);
    }
    Ok(Some((bytes.into(), Some(digest))))
}

/// Reads a whole regular file; anything else (a FIFO that would block the read forever, a
/// device that never ends) is an error. Opened non-blocking, so a FIFO does not hang the open.
fn read_regular_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn fetch_end(err: FetchError) -> AttemptEnd {
    if err.retryable {
        AttemptEnd::Retry {
            reason: err.message,
            after: err.retry_after,
        }
    } else {
        AttemptEnd::Fail(err.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        for _ in 0..100 {
            let first = backoff(base, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(150));
            let fourth = backoff(base, 4);
            assert!(fourth >= Duration::from_millis(400) && fourth <= Duration::from_millis(1200));
            assert!(backoff(base, 30) <= MAX_BACKOFF.mul_f64(1.5));
        }
    }
}
