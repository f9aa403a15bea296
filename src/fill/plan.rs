//! What a fill must do: the manifest against the index, as plain functions.
//!
//! They read the index through [`IndexLookup`], so the daemon plans against its live index
//! under a read lock (no copy of tens of millions of entries) and tests against a map.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};

use super::manifest::Manifest;
use crate::store::ObjectMeta;

/// What planning needs of an index: a lookup by path and a walk over every path.
pub trait IndexLookup {
    /// The stored object at `path`, if any (on a usable store).
    fn meta(&self, path: &str) -> Option<ObjectMeta>;
    /// Calls `each` with every stored path (on a usable store).
    fn each_path(&self, each: &mut dyn FnMut(&str));
    /// How many paths [`IndexLookup::each_path`] walks, at most.
    fn len_hint(&self) -> usize;
}

impl<K: Borrow<str> + Hash + Eq, S: BuildHasher> IndexLookup for HashMap<K, ObjectMeta, S> {
    fn meta(&self, path: &str) -> Option<ObjectMeta> {
        self.get(path).copied()
    }

    fn each_path(&self, each: &mut dyn FnMut(&str)) {
        for path in self.keys() {
            each(path.borrow());
        }
    }

    fn len_hint(&self) -> usize {
        self.len()
    }
}

impl IndexLookup for crate::store::UsableIndex<'_> {
    fn meta(&self, path: &str) -> Option<ObjectMeta> {
        self.get(path)
    }

    fn each_path(&self, each: &mut dyn FnMut(&str)) {
        for path in self.paths() {
            each(path);
        }
    }

    fn len_hint(&self) -> usize {
        self.len()
    }
}

/// The work of one fill pass, once what left the manifest is deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FillPlan {
    /// Objects to fetch (their positions in the manifest), highest priority first (ties in
    /// manifest order).
    pub fetches: Vec<usize>,
    /// Objects of the manifest already stored with the right size and sha256.
    pub present: u64,
    /// Their bytes.
    pub present_bytes: u64,
    /// Fetches that do not fit in the room left (positions in the manifest), lowest
    /// priority first out.
    pub no_room: Vec<usize>,
}

/// Whether a stored object is the manifest's object: same size and sha256, not damaged.
fn is_present(
    meta: &ObjectMeta,
    size: u64,
    sha256: &[u8; 32],
    path: &str,
    damaged: &HashSet<String>,
) -> bool {
    meta.size == size && &meta.sha256 == sha256 && (damaged.is_empty() || !damaged.contains(path))
}

/// Whether this box owns an object (its path and manifest `copies`): in a site, whether it
/// is among the object's owners; alone, always.
pub type Owns<'a> = &'a (dyn Fn(&str, u8) -> bool + Sync);

/// Owns everything: a box alone.
pub fn owns_all(_path: &str, _copies: u8) -> bool {
    true
}

/// The bytes of this box's share of `manifest` (what it `owns`) that the stores hold with
/// the right size and sha256, undamaged, and the bytes of the whole share: what a
/// restarted box already has of the manifest in force, out of what it should.
pub fn held_bytes(
    manifest: &Manifest,
    index: &impl IndexLookup,
    damaged: &HashSet<String>,
    owns: Owns<'_>,
) -> (u64, u64) {
    let mut held = 0;
    let mut share = 0;
    for object in manifest.iter() {
        if !owns(object.path, object.copies) {
            continue;
        }
        share += object.size;
        let present = index.meta(object.path).is_some_and(|meta| {
            is_present(&meta, object.size, &object.sha256, object.path, damaged)
        });
        if present {
            held += object.size;
        }
    }
    (held, share)
}

/// Stored paths that left the manifest (damaged or not), sorted: deleted first, to free
/// space. `listed` is how many of the manifest's paths are stored (a [`Survey`] counted
/// them): when that is every stored path, no set of the manifest's paths is built.
pub fn dropped_beyond(manifest: &Manifest, index: &impl IndexLookup, listed: usize) -> Vec<String> {
    if listed >= index.len_hint() {
        return Vec::new();
    }
    let wanted: HashSet<&str> = manifest.iter().map(|object| object.path).collect();
    let mut deletes = Vec::new();
    index.each_path(&mut |path| {
        if !wanted.contains(path) {
            deletes.push(path.to_owned());
        }
    });
    deletes.sort_unstable();
    deletes
}

/// The manifest against the index, one lookup per object: what is present, and what must
/// be fetched (missing, different, or found `damaged` while serving) in descending
/// priority. Deletes do not change it (they only take paths the manifest does not list),
/// so a pass surveys once, deletes ([`dropped_beyond`]), then [`fit`]s the fetches into
/// the room left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    /// Positions in the manifest to fetch, highest priority first (ties in manifest order).
    pub candidates: Vec<usize>,
    /// Objects of the manifest already stored with the right size and sha256.
    pub present: u64,
    /// Their bytes.
    pub present_bytes: u64,
    /// Manifest paths stored, present or not (for [`dropped_beyond`]).
    pub listed: usize,
    /// Bytes of stored objects the fetches will replace: room once they are.
    pub freed_by_replacing: u64,
    /// Objects of this box's share (all of them for a box alone), and their bytes.
    pub share_objects: u64,
    /// The bytes of [`Survey::share_objects`].
    pub share_bytes: u64,
    /// The most copies any object asks for (0: the site's default for all).
    pub max_copies: u8,
    /// Positions in the manifest of stored objects that are no longer this box's share (a
    /// box joined the site, a weight changed): deleted once a box that owns them holds
    /// them, so no object is ever out of the site meanwhile.
    pub handoff: Vec<usize>,
}

/// Fewest objects worth a thread of their own in a survey (a handful in unit tests, so
/// their small manifests are surveyed in several slices too).
const MIN_SURVEY_SLICE: usize = if cfg!(test) { 2 } else { 1 << 16 };

/// Surveys `manifest` against `index`, a slice of the manifest per core (tens of millions
/// of lookups, each mostly a cache miss).
pub fn survey(
    manifest: &Manifest,
    index: &(impl IndexLookup + Sync),
    damaged: &HashSet<String>,
    owns: Owns<'_>,
) -> Survey {
    let threads = std::thread::available_parallelism()
        .map_or(1, |cpus| cpus.get())
        .min(8);
    let slice = manifest.len().div_ceil(threads).max(MIN_SURVEY_SLICE);
    let parts: Vec<Survey> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..manifest.len())
            .step_by(slice)
            .map(|start| {
                let range = start..(start + slice).min(manifest.len());
                scope.spawn(move || survey_range(manifest, range, index, damaged, owns))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    // In manifest order, slice after slice.
    let mut survey = Survey::default();
    for part in parts {
        survey.candidates.extend(part.candidates);
        survey.present += part.present;
        survey.present_bytes += part.present_bytes;
        survey.listed += part.listed;
        survey.freed_by_replacing += part.freed_by_replacing;
        survey.share_objects += part.share_objects;
        survey.share_bytes += part.share_bytes;
        survey.max_copies = survey.max_copies.max(part.max_copies);
        survey.handoff.extend(part.handoff);
    }
    // Stable sort: equal priorities keep manifest order.
    survey
        .candidates
        .sort_by_key(|&index| std::cmp::Reverse(manifest.get(index).priority));
    survey
}

/// The survey of the manifest's objects at positions `range`, candidates in manifest order.
fn survey_range(
    manifest: &Manifest,
    range: std::ops::Range<usize>,
    index: &impl IndexLookup,
    damaged: &HashSet<String>,
    owns: Owns<'_>,
) -> Survey {
    let mut survey = Survey::default();
    for position in range {
        let object = manifest.get(position);
        let mine = owns(object.path, object.copies);
        survey.max_copies = survey.max_copies.max(object.copies);
        if mine {
            survey.share_objects += 1;
            survey.share_bytes += object.size;
        }
        match index.meta(object.path) {
            // Stored but another box's share now: kept (and counted listed, so it is not
            // deleted as dropped) until a box that owns it holds it.
            Some(_) if !mine => {
                survey.listed += 1;
                survey.handoff.push(object.index);
            }
            Some(meta) if is_present(&meta, object.size, &object.sha256, object.path, damaged) => {
                survey.present += 1;
                survey.present_bytes += object.size;
                survey.listed += 1;
            }
            Some(stale) => {
                survey.freed_by_replacing += stale.size;
                survey.candidates.push(object.index);
                survey.listed += 1;
            }
            None if mine => survey.candidates.push(object.index),
            None => {}
        }
    }
    survey
}

/// The fetches that fit in `free_after_deletes` (plus the room replaced objects free),
/// lowest priority left out first.
pub fn fit(manifest: &Manifest, survey: Survey, free_after_deletes: u64) -> FillPlan {
    let mut room = free_after_deletes.saturating_add(survey.freed_by_replacing);
    let mut fitting = Vec::with_capacity(survey.candidates.len());
    let mut no_room = Vec::new();
    for index in survey.candidates {
        let size = manifest.get(index).size;
        if size <= room {
            room -= size;
            fitting.push(index);
        } else {
            no_room.push(index);
        }
    }
    FillPlan {
        fetches: fitting,
        present: survey.present,
        present_bytes: survey.present_bytes,
        no_room,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deletes of a pass, counting the listed paths itself.
    fn dropped(manifest: &Manifest, index: &impl IndexLookup) -> Vec<String> {
        let listed = manifest
            .iter()
            .filter(|object| index.meta(object.path).is_some())
            .count();
        dropped_beyond(manifest, index, listed)
    }

    /// A whole plan in one call: survey, then fit.
    fn plan(
        manifest: &Manifest,
        index: &(impl IndexLookup + Sync),
        damaged: &HashSet<String>,
        free_after_deletes: u64,
    ) -> FillPlan {
        fit(
            manifest,
            survey(manifest, index, damaged, &owns_all),
            free_after_deletes,
        )
    }
    use crate::fill::manifest::{ManifestObject, Source};

    fn object(path: &str, size: u64, fill: u8, priority: i64) -> ManifestObject {
        ManifestObject {
            path: path.to_owned(),
            size,
            sha256: [fill; 32],
            priority,
            source: Source::Http(format!("http://origin/{path}")),
        }
    }

    fn stored(size: u64, fill: u8) -> ObjectMeta {
        ObjectMeta {
            store: 0,
            size,
            sha256: [fill; 32],
            filled_at: 0,
        }
    }

    fn manifest(objects: Vec<ManifestObject>) -> Manifest {
        Manifest::from_objects("m", objects).unwrap()
    }

    fn paths<'m>(manifest: &'m Manifest, indexes: &[usize]) -> Vec<&'m str> {
        indexes
            .iter()
            .map(|&index| manifest.get(index).path)
            .collect()
    }

    #[test]
    fn deletes_what_left_fetches_what_is_missing_or_changed() {
        let manifest = manifest(vec![
            object("keep.ts", 10, 1, 0),
            object("changed.ts", 10, 2, 0),
            object("new.ts", 10, 3, 0),
        ]);
        let index = HashMap::from([
            ("keep.ts".to_owned(), stored(10, 1)),
            ("changed.ts".to_owned(), stored(10, 9)),
            ("gone.ts".to_owned(), stored(10, 4)),
        ]);
        let plan = plan(&manifest, &index, &HashSet::new(), 1000);
        assert_eq!(dropped(&manifest, &index), ["gone.ts"]);
        assert_eq!(paths(&manifest, &plan.fetches), ["changed.ts", "new.ts"]);
        assert_eq!((plan.present, plan.present_bytes), (1, 10));
        assert!(plan.no_room.is_empty());
    }

    #[test]
    fn damaged_objects_are_refetched_when_wanted_and_deleted_when_not() {
        let manifest = manifest(vec![object("wanted.ts", 10, 1, 0)]);
        let index = HashMap::from([
            ("wanted.ts".to_owned(), stored(10, 1)),
            ("unwanted.ts".to_owned(), stored(10, 2)),
        ]);
        let damaged = HashSet::from(["wanted.ts".to_owned(), "unwanted.ts".to_owned()]);
        let plan = plan(&manifest, &index, &damaged, 1000);
        assert_eq!(dropped(&manifest, &index), ["unwanted.ts"]);
        assert_eq!(plan.fetches.len(), 1);
        assert_eq!(plan.present, 0);
    }

    #[test]
    fn fetches_go_by_descending_priority_then_manifest_order() {
        let manifest = manifest(vec![
            object("a", 1, 1, 0),
            object("b", 1, 1, 100),
            object("c", 1, 1, 0),
            object("d", 1, 1, 100),
        ]);
        let plan = plan(
            &manifest,
            &HashMap::<String, ObjectMeta>::new(),
            &HashSet::new(),
            1000,
        );
        assert_eq!(paths(&manifest, &plan.fetches), ["b", "d", "a", "c"]);
    }

    #[test]
    fn what_does_not_fit_is_skipped_lowest_priority_first() {
        let manifest = manifest(vec![
            object("low", 40, 1, 1),
            object("high", 40, 1, 9),
            object("mid", 40, 1, 5),
        ]);
        let plan = plan(
            &manifest,
            &HashMap::<String, ObjectMeta>::new(),
            &HashSet::new(),
            100,
        );
        assert_eq!(paths(&manifest, &plan.fetches), ["high", "mid"]);
        assert_eq!(paths(&manifest, &plan.no_room), ["low"]);
    }

    #[test]
    fn replacing_an_object_counts_its_old_copy_as_room() {
        let manifest = manifest(vec![object("a", 50, 2, 0)]);
        let index = HashMap::from([("a".to_owned(), stored(50, 1))]);
        let plan = plan(&manifest, &index, &HashSet::new(), 0);
        assert_eq!(plan.fetches.len(), 1);
    }
}
