//! The nightly fill: manifests pushed (or pulled), and the engine that makes the stores hold
//! exactly what the manifest in force says.
//!
//! What lives where:
//! - [`manifest`]: parsing and validating manifests (CONTRACT section 3).
//! - [`plan`]: the manifest against the index: deletes, fetches in priority order, no-room.
//! - [`file_roots`]: the directories `file://` sources are confined to.
//! - [`fetch`]: downloads over HTTP(S) (hyper + rustls) or from local files, with resume.
//! - [`rate`]: the global `fill.max_rate` pacing.
//! - [`progress`]: status counters and the end-of-pass report.
//! - [`stocked`]: whether the box has held its content once (readiness).
//! - [`engine`]: the task that runs passes while the mode is filling.
//! - [`build`]: the origin side, `tidecache manifest build`.
//! - this file: the [`Fill`] handle the admin API and the daemon share, and the manifest in
//!   force, persisted in `state_dir/manifest.json`.

pub mod build;
pub mod engine;
pub mod fetch;
pub mod file_roots;
mod idle;
pub mod manifest;
pub mod peers;
pub mod plan;
pub mod progress;
pub mod rate;
pub mod stocked;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use arc_swap::ArcSwap;
use bytes::Bytes;
use file_roots::FileRoots;
use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::watch;

use manifest::{Manifest, ManifestError};
use progress::{FillStatus, Progress};
use stocked::Stocked;

use crate::site::Site;

/// A manifest that was accepted, with when. Its objects are held in memory only while
/// something uses them (a fill pass, a delta, the readiness check): otherwise they are read
/// back from the saved file, so a serving box holds its index and not tens of millions of
/// manifest records beside it.
#[derive(Debug)]
pub struct AcceptedManifest {
    /// The origin's name for it.
    pub id: String,
    /// How many objects it lists.
    pub objects: usize,
    /// Their total size.
    pub total_bytes: u64,
    /// When it was accepted.
    pub accepted_at: Timestamp,
    /// Which acceptance this was in this process: 1 for the first manifest in force, then
    /// one more for each manifest accepted. It only grows, so "the pass for this manifest
    /// is done" can never be mistaken for another manifest's (an address can be reused).
    pub generation: u64,
    /// Where it is saved, and the CRC that save ends with.
    saved: Option<(PathBuf, u32)>,
    /// The objects while someone holds them; always held when the save is not there to read
    /// them back from (a legacy JSON manifest that could not be converted).
    contents: Mutex<Weak<Manifest>>,
    pinned: Option<Arc<Manifest>>,
}

/// What `GET /v1/manifest` and status say about the manifest in force.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ManifestSummary {
    /// Its id.
    pub id: String,
    /// How many objects it lists.
    pub objects: usize,
    /// Their total size.
    pub bytes: u64,
    /// When it was accepted (RFC 3339, UTC).
    pub accepted_at: String,
}

impl AcceptedManifest {
    /// `manifest` in force from `accepted_at`, saved at `saved` (file, CRC) unless `None`.
    fn new(
        manifest: Manifest,
        saved: Option<(PathBuf, u32)>,
        accepted_at: Timestamp,
        generation: u64,
    ) -> AcceptedManifest {
        let manifest = Arc::new(manifest);
        AcceptedManifest {
            id: manifest.id.clone(),
            objects: manifest.len(),
            total_bytes: manifest.total_bytes,
            accepted_at,
            generation,
            contents: Mutex::new(Arc::downgrade(&manifest)),
            pinned: saved.is_none().then(|| Arc::clone(&manifest)),
            saved,
        }
    }

    /// A manifest in force known by its save's summary; its objects are read when needed.
    fn saved(
        summary: manifest::SavedSummary,
        file: PathBuf,
        accepted_at: Timestamp,
        generation: u64,
    ) -> AcceptedManifest {
        AcceptedManifest {
            id: summary.id,
            objects: summary.objects,
            total_bytes: summary.total_bytes,
            accepted_at,
            generation,
            saved: Some((file, summary.crc)),
            contents: Mutex::new(Weak::new()),
            pinned: None,
        }
    }

    /// Its objects: shared with whoever holds them now, or read back from the saved file
    /// (blocking: call it off the async workers). A save that no longer reads whole, or was
    /// replaced by a newer manifest's, is an error, never another manifest's objects.
    pub fn contents(&self) -> Result<Arc<Manifest>, ManifestError> {
        if let Some(pinned) = &self.pinned {
            return Ok(Arc::clone(pinned));
        }
        let mut held = self
            .contents
            .lock()
            .map_err(|_| ManifestError::Read("manifest lock poisoned".to_owned()))?;
        if let Some(manifest) = held.upgrade() {
            return Ok(manifest);
        }
        let Some((file, crc)) = &self.saved else {
            return Err(ManifestError::Read("the manifest is not saved".to_owned()));
        };
        let opened = std::fs::File::open(file).map_err(|err| {
            ManifestError::Read(format!("saved manifest {}: {err}", file.display()))
        })?;
        let mut input = std::io::BufReader::with_capacity(1 << 20, opened);
        let (manifest, found) = Manifest::load_saved_with_crc(&mut input)?;
        if found != *crc || manifest.id != self.id {
            return Err(ManifestError::Read(format!(
                "saved manifest {}: replaced by another save since this manifest was accepted",
                file.display()
            )));
        }
        let manifest = Arc::new(manifest);
        *held = Arc::downgrade(&manifest);
        Ok(manifest)
    }

    /// The summary shown by the admin API.
    pub fn summary(&self) -> ManifestSummary {
        ManifestSummary {
            id: self.id.clone(),
            objects: self.objects,
            bytes: self.total_bytes,
            accepted_at: self.accepted_at.to_string(),
        }
    }
}

/// Why a manifest was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// It is invalid; the manifest in force stays.
    #[error(transparent)]
    Invalid(#[from] ManifestError),
    /// It could not be saved; the manifest in force stays.
    #[error("cannot save the manifest: {0}")]
    Save(std::io::Error),
    /// A delta against the manifest in force, whose saved objects cannot be read back
    /// (`manifest.bin` damaged or gone): a whole manifest is needed.
    #[error(
        "the manifest in force cannot be read back to apply a delta to ({0}); push a whole manifest"
    )]
    InForceUnreadable(String),
}

/// The binary saved form of the manifest in force, in `state_dir`.
const SAVED_MANIFEST: &str = "manifest.bin";
/// Where versions before the binary form saved the manifest in force (its JSON as pushed).
const LEGACY_MANIFEST: &str = "manifest.json";
/// How spooled pushes are named in `state_dir`; leftovers of a crash go at the next start.
const SPOOL_PREFIX: &str = "manifest.incoming.";

/// A manifest as received.
#[derive(Debug)]
pub enum Received {
    /// Held in memory (a pull, the demo).
    Bytes(Bytes),
    /// Spooled to a file as it arrived (a push), so its text is never held whole.
    File(PathBuf),
}

/// The saved manifest in force and when it was accepted (the file's time), or the one an
/// earlier version saved as JSON, converted to the binary form.
fn load_saved(file: &Path, legacy: &Path) -> Option<AcceptedManifest> {
    let accepted_at = |path: &Path| {
        std::fs::metadata(path)
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|time| Timestamp::try_from(time).ok())
            .unwrap_or_else(Timestamp::now)
    };
    match std::fs::File::open(file) {
        Ok(opened) => {
            let mut input = std::io::BufReader::with_capacity(1 << 20, opened);
            // Checked whole against its CRC, not built: its objects are read when a pass,
            // a delta or the readiness check needs them.
            return match Manifest::saved_summary(&mut input) {
                Ok(summary) => Some(AcceptedManifest::saved(
                    summary,
                    file.to_path_buf(),
                    accepted_at(file),
                    1,
                )),
                Err(err) => {
                    tracing::error!(file = %file.display(), error = %err, "the saved manifest cannot be read; waiting for a new one");
                    None
                }
            };
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            tracing::error!(file = %file.display(), error = %err, "cannot read the saved manifest; waiting for a new one");
            return None;
        }
    }
    let bytes = match std::fs::read(legacy) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => {
            tracing::error!(file = %legacy.display(), error = %err, "cannot read the saved manifest; waiting for a new one");
            return None;
        }
    };
    match manifest::parse(&bytes) {
        Ok(manifest) => {
            let at = accepted_at(legacy);
            let mut crc = None;
            let saved = crate::durable::write_atomically_with(file, |out| {
                crc = Some(manifest.save(out)?);
                Ok(())
            });
            match saved {
                Ok(()) => {
                    tracing::info!(from = %legacy.display(), to = %file.display(), "the saved manifest was converted to the binary form");
                    let _ = std::fs::remove_file(legacy);
                }
                Err(err) => {
                    crc = None;
                    tracing::warn!(file = %file.display(), error = %err, "cannot save the manifest in the binary form; the JSON stays");
                }
            }
            let saved = crc.map(|crc| (file.to_path_buf(), crc));
            Some(AcceptedManifest::new(manifest, saved, at, 1))
        }
        Err(err) => {
            tracing::error!(file = %legacy.display(), error = %err, "the saved manifest is invalid; waiting for a new one");
            None
        }
    }
}

/// The filter of the paths `manifest` lists.
fn listed_paths(manifest: &Manifest) -> crate::site::listed::Listed {
    crate::site::listed::Listed::build(
        &manifest.id,
        manifest.len(),
        manifest.iter().map(|object| object.path),
    )
}

/// The fill's shared state: the manifest in force and the progress of the fill.
#[derive(Debug)]
pub struct Fill {
    manifest_file: PathBuf,
    manifest: watch::Sender<Option<Arc<AcceptedManifest>>>,
    progress: Mutex<Progress>,
    accepting: tokio::sync::Mutex<()>,
    /// Where `file://` sources may be read from; swapped on reload.
    file_roots: ArcSwap<FileRoots>,
    /// Whether the box has held its content once.
    stocked: Stocked,
    /// The manifest in force was found in the JSON form versions before the binary one
    /// saved (and before the latch existed): this start is an upgrade.
    upgraded_from_json: bool,
    /// The site this box belongs to, if any (set once at start).
    site: OnceLock<Arc<Site>>,
    /// What the fill pass under way will still store, for peers that wait for this box.
    underway: Mutex<Underway>,
    /// The manifest id the last fill pass that finished worked toward.
    last_done: Mutex<Option<String>>,
    /// Held while the site's filter of listed paths is set, so a filter built from an
    /// older manifest never replaces the one of the manifest in force.
    listing: Mutex<()>,
}

/// What the fill pass under way will still store: a later owner of an object waits for
/// its first owner instead of fetching it from the origin too (CONTRACT section 7).
#[derive(Debug, Default)]
enum Underway {
    /// No pass is under way: what is not stored is not coming either.
    #[default]
    Idle,
    /// A pass is surveying: anything may be coming.
    Planning,
    /// A pass is fetching these paths.
    Fetching(HashSet<Box<str>>),
}

impl Fill {
    /// Loads the manifest in force from `state_dir`, if one was accepted before: its binary
    /// saved form, or the JSON an earlier version saved (converted once). A saved manifest
    /// that no longer reads whole is reported and set aside, not guessed at. Pushes spooled
    /// and a save cut short when the process stopped are removed.
    pub fn load(state_dir: &Path) -> Fill {
        let manifest_file = state_dir.join(SAVED_MANIFEST);
        for leftover in std::fs::read_dir(state_dir).into_iter().flatten().flatten() {
            let name = leftover.file_name();
            let name = name.to_string_lossy();
            // Pushes being spooled, and a save cut short (the saved form's temp file).
            if name.starts_with(SPOOL_PREFIX) || name == format!("{SAVED_MANIFEST}.tmp") {
                let _ = std::fs::remove_file(leftover.path());
            }
        }
        let legacy = state_dir.join(LEGACY_MANIFEST);
        let upgraded_from_json = !manifest_file.exists() && legacy.exists();
        let started = std::time::Instant::now();
        let accepted = load_saved(&manifest_file, &legacy).map(Arc::new);
        if let Some(accepted) = &accepted {
            tracing::info!(id = %accepted.id, objects = accepted.objects, elapsed_ms = started.elapsed().as_millis() as u64, "manifest in force checked");
        }
        let mut progress = Progress::default();
        progress.manifest_id = accepted.as_ref().map(|accepted| accepted.id.clone());
        Fill {
            manifest_file,
            manifest: watch::Sender::new(accepted),
            progress: Mutex::new(progress),
            accepting: tokio::sync::Mutex::new(()),
            file_roots: ArcSwap::from_pointee(FileRoots::default()),
            stocked: Stocked::load(state_dir),
            upgraded_from_json,
            site: OnceLock::new(),
            underway: Mutex::new(Underway::Idle),
            last_done: Mutex::new(None),
            listing: Mutex::new(()),
        }
    }

    /// In a site, builds the filter of the paths the manifest in force lists (redirects go
    /// only to listed paths), reading the saved manifest back: at start, on a blocking
    /// thread, while the box already serves (it redirects every miss until it is built).
    pub fn build_listed(&self) {
        let (Some(site), Some(accepted)) = (self.site(), self.manifest()) else {
            return;
        };
        if site.listed_manifest().as_deref() == Some(accepted.id.as_str()) {
            return;
        }
        match accepted.contents() {
            Ok(manifest) => {
                let listed = listed_paths(&manifest);
                // A manifest accepted meanwhile has set its own filter: this one is stale.
                let _in_force = self.listing.lock().unwrap_or_else(PoisonError::into_inner);
                if self
                    .manifest()
                    .is_some_and(|now| now.id == listed.manifest_id)
                {
                    site.set_listed(listed);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the manifest in force to know which paths it lists; every miss may be redirected")
            }
        }
    }

    /// Makes this box a member of `site` (once, at start): passes fill only its share.
    pub fn set_site(&self, site: Arc<Site>) {
        let _ = self.site.set(site);
    }

    /// The site this box belongs to, if any.
    pub fn site(&self) -> Option<&Arc<Site>> {
        self.site.get()
    }

    /// Whether the pass under way may still store `path` (it is surveying, or `path` is
    /// among its fetches): a peer asking for it should come back rather than go to the
    /// origin.
    pub fn is_coming(&self, path: &str) -> bool {
        match &*self.underway.lock().unwrap_or_else(PoisonError::into_inner) {
            // No pass under way: one toward the manifest in force is still to come unless
            // one finished already (what it did not store, it failed).
            Underway::Idle => {
                let in_force = self.manifest().map(|accepted| accepted.id.clone());
                in_force.is_some()
                    && *self
                        .last_done
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        != in_force
            }
            Underway::Planning => true,
            Underway::Fetching(paths) => paths.contains(path),
        }
    }

    /// A pass starts surveying.
    pub(crate) fn planning(&self) {
        *self.underway.lock().unwrap_or_else(PoisonError::into_inner) = Underway::Planning;
    }

    /// A pass fetches `paths`.
    pub(crate) fn fetching(&self, paths: HashSet<Box<str>>) {
        *self.underway.lock().unwrap_or_else(PoisonError::into_inner) = Underway::Fetching(paths);
    }

    /// The pass is done with `path` (stored, failed or skipped).
    pub(crate) fn fetched(&self, path: &str) {
        if let Underway::Fetching(paths) =
            &mut *self.underway.lock().unwrap_or_else(PoisonError::into_inner)
        {
            paths.remove(path);
        }
    }

    /// A pass toward manifest `id` finished.
    pub(crate) fn pass_done(&self, id: &str) {
        *self
            .last_done
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(id.to_owned());
    }

    /// No pass is under way.
    pub(crate) fn pass_over(&self) {
        *self.underway.lock().unwrap_or_else(PoisonError::into_inner) = Underway::Idle;
    }

    /// Whether this start found the manifest in force saved by a version before the
    /// binary form (and the readiness latch): an upgrade of a box that may be serving.
    pub fn upgraded_from_json(&self) -> bool {
        self.upgraded_from_json
    }

    /// A new file to spool a pushed manifest into as it arrives, beside the saved one;
    /// the caller removes it once [`Fill::accept`] is done with it.
    pub fn spool_file(&self) -> PathBuf {
        let name = format!("{SPOOL_PREFIX}{:016x}", fastrand::u64(..));
        self.manifest_file.with_file_name(name)
    }

    /// Sets the directories `file://` sources may be read from (start and reload).
    pub fn set_file_roots(&self, roots: FileRoots) {
        self.file_roots.store(Arc::new(roots));
    }

    /// The directories `file://` sources may be read from now.
    pub fn file_roots(&self) -> Arc<FileRoots> {
        self.file_roots.load_full()
    }

    /// Validates, saves (atomically) and puts a manifest in force: JSON or NDJSON, gzip or
    /// not, whole or a delta against the manifest in force, at most `limit` bytes once
    /// decompressed. Nothing changes unless every step succeeds. A `file://` source outside
    /// `fill.file_roots` makes it invalid.
    pub async fn accept(
        &self,
        received: Received,
        limit: u64,
    ) -> Result<ManifestSummary, AcceptError> {
        self.accept_unless_in_force(received, limit, false).await
    }

    /// [`Fill::accept`] for a pulled manifest: one identical to the manifest in force (same
    /// id, objects, bytes and saved form) changes nothing, so a poll that finds what was
    /// pushed, or what an earlier start pulled, does not restart the pass under way.
    pub async fn accept_pulled(
        &self,
        received: Received,
        limit: u64,
    ) -> Result<ManifestSummary, AcceptError> {
        self.accept_unless_in_force(received, limit, true).await
    }

    async fn accept_unless_in_force(
        &self,
        received: Received,
        limit: u64,
        keep_identical: bool,
    ) -> Result<ManifestSummary, AcceptError> {
        let _one_at_a_time = self.accepting.lock().await;
        let file = self.manifest_file.clone();
        let roots = self.file_roots();
        let in_force = self.manifest();
        let kept = in_force.clone();
        let site = self.site().cloned();
        let saved = tokio::task::spawn_blocking(move || {
            let read = |base: Option<&Manifest>| match &received {
                Received::Bytes(bytes) => {
                    Ok::<_, AcceptError>(manifest::read(&bytes[..], base, limit)?)
                }
                Received::File(path) => {
                    let input = std::fs::File::open(path).map_err(AcceptError::Save)?;
                    Ok(manifest::read(input, base, limit)?)
                }
            };
            // A delta needs the objects of the manifest in force: read back only then.
            let manifest = match read(None) {
                Err(AcceptError::Invalid(ManifestError::WrongBase { base, .. })) => match &in_force
                {
                    Some(accepted) if accepted.id == base => {
                        let base = accepted
                            .contents()
                            .map_err(|err| AcceptError::InForceUnreadable(err.to_string()))?;
                        read(Some(&base))?
                    }
                    _ => {
                        return Err(AcceptError::Invalid(ManifestError::WrongBase {
                            base,
                            in_force: in_force.as_ref().map(|accepted| accepted.id.clone()),
                        }));
                    }
                },
                other => other?,
            };
            roots
                .check_manifest(&manifest)
                .map_err(ManifestError::Invalid)?;
            if let Some(accepted) = in_force.as_ref().filter(|_| keep_identical) {
                let same_summary = accepted.id == manifest.id
                    && accepted.objects == manifest.len()
                    && accepted.total_bytes == manifest.total_bytes;
                let same_save = || {
                    let crc = manifest.save(&mut std::io::sink()).ok();
                    accepted.saved.as_ref().map(|(_, saved)| *saved) == crc
                };
                if same_summary && same_save() {
                    return Ok(None);
                }
            }
            let mut crc = 0;
            crate::durable::write_atomically_with(&file, |out| {
                crc = manifest.save(out)?;
                Ok(())
            })
            .map_err(AcceptError::Save)?;
            if let Some(dir) = file.parent() {
                let _ = std::fs::remove_file(dir.join(LEGACY_MANIFEST));
            }
            let listed = site.as_ref().map(|_| listed_paths(&manifest));
            Ok::<_, AcceptError>(Some((manifest, (file, crc), listed)))
        })
        .await
        .map_err(|err| AcceptError::Save(std::io::Error::other(err)))??;
        let Some(saved) = saved else {
            // Identical to the manifest in force: nothing changes.
            return kept
                .map(|accepted| accepted.summary())
                .ok_or_else(|| AcceptError::Save(std::io::Error::other("no manifest in force")));
        };
        let generation = self
            .manifest
            .borrow()
            .as_ref()
            .map_or(0, |in_force| in_force.generation)
            + 1;
        let (manifest, saved, listed) = saved;
        let accepted = Arc::new(AcceptedManifest::new(
            manifest,
            Some(saved),
            Timestamp::now(),
            generation,
        ));
        let summary = accepted.summary();
        tracing::info!(id = %summary.id, objects = summary.objects, bytes = summary.bytes, "manifest accepted");
        self.stocked.retry_save().await;
        self.manifest.send_replace(Some(accepted));
        if let (Some(site), Some(listed)) = (self.site(), listed) {
            let _in_force = self.listing.lock().unwrap_or_else(PoisonError::into_inner);
            site.set_listed(listed);
        }
        Ok(summary)
    }

    /// Whether the box has held its content once (a pass completed, or `fill.ready_share`
    /// of a manifest's bytes held): until then `/readyz` says "no content".
    pub fn stocked(&self) -> &Stocked {
        &self.stocked
    }

    /// The manifest in force, if any.
    pub fn manifest(&self) -> Option<Arc<AcceptedManifest>> {
        self.manifest.borrow().clone()
    }

    /// Watches the manifest in force.
    pub fn watch_manifest(&self) -> watch::Receiver<Option<Arc<AcceptedManifest>>> {
        self.manifest.subscribe()
    }

    /// The `fill` object of `/v1/status`.
    pub fn status(&self) -> FillStatus {
        self.with_progress(|progress| progress.status())
    }

    /// Runs `update` on the progress counters.
    pub fn with_progress<T>(&self, update: impl FnOnce(&mut Progress) -> T) -> T {
        match self.progress.lock() {
            Ok(mut progress) => update(&mut progress),
            Err(poisoned) => update(&mut poisoned.into_inner()),
        }
    }
}

/// Checks `X-Tidecache-Signature: sha256=<hex>` against the HMAC-SHA256 of `body` under
/// `key`, in constant time.
pub fn signature_is_valid(key: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let mut check = SignatureCheck::new(key);
    check.update(body);
    check.verify(header)
}

/// The HMAC-SHA256 of a body that arrives in pieces (a pushed manifest is spooled, never
/// held whole), checked against its `X-Tidecache-Signature` at the end.
pub struct SignatureCheck {
    mac: Option<hmac::Hmac<sha2::Sha256>>,
}

impl SignatureCheck {
    /// Starts the HMAC under `key`.
    pub fn new(key: &[u8]) -> SignatureCheck {
        use hmac::Mac;
        SignatureCheck {
            mac: hmac::Hmac::<sha2::Sha256>::new_from_slice(key).ok(),
        }
    }

    /// Adds the next piece of the body.
    pub fn update(&mut self, piece: &[u8]) {
        use hmac::Mac;
        if let Some(mac) = &mut self.mac {
            mac.update(piece);
        }
    }

    /// Whether `header` (`sha256=<hex>`) is the HMAC of everything added, in constant time.
    pub fn verify(self, header: Option<&str>) -> bool {
        use hmac::Mac;
        let Some(hex) = header.and_then(|value| value.trim().strip_prefix("sha256=")) else {
            return false;
        };
        let (Some(signature), Some(mac)) = (crate::store::unhex(hex), self.mac) else {
            return false;
        };
        mac.verify_slice(&signature).is_ok()
    }
}

/// The `X-Tidecache-Signature` value for `body` under `key` (for `manifest push`).
pub fn sign(key: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", crate::store::hex(&mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_right_key_and_body() {
        let header = sign(b"key", b"body");
        assert!(signature_is_valid(b"key", b"body", Some(&header)));
        assert!(!signature_is_valid(b"other", b"body", Some(&header)));
        assert!(!signature_is_valid(b"key", b"body!", Some(&header)));
        assert!(!signature_is_valid(b"key", b"body", None));
        assert!(!signature_is_valid(b"key", b"body", Some("sha256=zz")));
        assert!(!signature_is_valid(
            b"key",
            b"body",
            Some(&header.replace("sha256=", "md5="))
        ));
    }

    #[tokio::test]
    async fn a_start_removes_spooled_pushes_and_a_save_cut_short_but_keeps_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let fill = Fill::load(dir.path());
        let good = br#"{"version": 1, "id": "one", "base_url": "http://o/", "objects": []}"#;
        fill.accept(Received::Bytes(Bytes::from_static(good)), u64::MAX)
            .await
            .unwrap();
        let spool = fill.spool_file();
        std::fs::write(&spool, b"half a push").unwrap();
        let cut = dir.path().join(format!("{SAVED_MANIFEST}.tmp"));
        std::fs::write(&cut, b"half a save").unwrap();
        let other = dir.path().join("override");
        std::fs::write(&other, b"auto").unwrap();
        let reloaded = Fill::load(dir.path());
        assert_eq!(reloaded.manifest().unwrap().id, "one");
        assert!(!spool.exists() && !cut.exists());
        assert!(
            other.exists(),
            "only what the fill leaves behind is removed"
        );
    }

    #[tokio::test]
    async fn an_invalid_manifest_leaves_the_one_in_force_and_an_accepted_one_persists() {
        let dir = tempfile::tempdir().unwrap();
        let fill = Fill::load(dir.path());
        assert!(fill.manifest().is_none());
        let good = br#"{"version": 1, "id": "one", "base_url": "http://o/", "objects": []}"#;
        fill.accept(Received::Bytes(Bytes::from_static(good)), u64::MAX)
            .await
            .unwrap();
        let bad = br#"{"version": 1, "id": "two", "objects": [{"path": "../x", "size": 1, "sha256": "00"}]}"#;
        assert!(
            fill.accept(Received::Bytes(Bytes::from_static(bad)), u64::MAX)
                .await
                .is_err()
        );
        assert_eq!(fill.manifest().unwrap().id, "one");
        let reloaded = Fill::load(dir.path());
        assert_eq!(reloaded.manifest().unwrap().id, "one");
    }

    /// Manifest "one" of one object: JSON.
    const ONE: &[u8] = br#"{"version": 1, "id": "one", "base_url": "http://o/", "objects": [{"path": "a.ts", "size": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}]}"#;

    /// A fill in a fresh state directory with [`ONE`] accepted.
    async fn with_manifest_one() -> (tempfile::TempDir, Fill) {
        let dir = tempfile::tempdir().unwrap();
        let fill = Fill::load(dir.path());
        fill.accept(Received::Bytes(Bytes::from_static(ONE)), u64::MAX)
            .await
            .unwrap();
        (dir, fill)
    }

    #[tokio::test]
    async fn the_objects_in_force_are_read_back_when_needed_and_never_from_a_newer_save() {
        let (dir, fill) = with_manifest_one().await;
        let in_force = fill.manifest().unwrap();
        assert_eq!((in_force.objects, in_force.total_bytes), (1, 3));
        let held = in_force.contents().unwrap();
        assert_eq!(held.get(0).path, "a.ts");
        assert!(
            Arc::ptr_eq(&held, &in_force.contents().unwrap()),
            "shared while held"
        );
        drop(held);
        assert_eq!(in_force.contents().unwrap().get(0).path, "a.ts");

        // Another process (or a later accept) saved a different manifest: the objects of the
        // old one are not there any more, and nothing else stands in for them.
        let other = Fill::load(dir.path());
        let two = String::from_utf8_lossy(ONE).replace(r#""one""#, r#""two""#);
        other
            .accept(Received::Bytes(Bytes::from(two)), u64::MAX)
            .await
            .unwrap();
        let err = in_force.contents().unwrap_err();
        assert!(err.to_string().contains("replaced"), "{err}");
        std::fs::write(dir.path().join(SAVED_MANIFEST), b"TCMANIF1 damaged").unwrap();
        assert!(other.manifest().unwrap().contents().is_err());
    }

    #[tokio::test]
    async fn a_delta_on_a_manifest_in_force_that_cannot_be_read_back_asks_for_a_whole_one() {
        let (dir, fill) = with_manifest_one().await;
        let saved = dir.path().join(SAVED_MANIFEST);
        let mut bytes = std::fs::read(&saved).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&saved, bytes).unwrap();
        let delta =
            "{\"version\": 1, \"id\": \"two\", \"base\": \"one\"}\n{\"remove\": \"a.ts\"}\n";
        let err = fill
            .accept(Received::Bytes(Bytes::from(delta)), u64::MAX)
            .await
            .unwrap_err();
        assert!(matches!(err, AcceptError::InForceUnreadable(_)), "{err}");
        assert!(err.to_string().contains("push a whole manifest"), "{err}");
        assert_eq!(
            fill.manifest().unwrap().id,
            "one",
            "the manifest in force stays"
        );
        // A whole manifest is accepted, and with it the saved form is whole again.
        let two = String::from_utf8_lossy(ONE).replace(r#""one""#, r#""two""#);
        fill.accept(Received::Bytes(Bytes::from(two)), u64::MAX)
            .await
            .unwrap();
        assert_eq!(fill.manifest().unwrap().contents().unwrap().id, "two");
    }
}
