//! What a fill must do: the manifest against the index, as a plain function.

use std::collections::{HashMap, HashSet};

use super::manifest::Manifest;
use crate::store::ObjectMeta;

/// The work of one fill pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillPlan {
    /// Stored paths that left the manifest: deleted first, to free space.
    pub deletes: Vec<String>,
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

/// The bytes of `manifest` the stores hold with the right size and sha256, undamaged: what a
/// restarted box already has of the manifest in force.
pub fn held_bytes(
    manifest: &Manifest,
    index: &HashMap<String, ObjectMeta>,
    damaged: &HashSet<String>,
) -> u64 {
    manifest
        .iter()
        .filter(|object| {
            index.get(object.path).is_some_and(|meta| {
                meta.size == object.size
                    && meta.sha256 == object.sha256
                    && !damaged.contains(object.path)
            })
        })
        .map(|object| object.size)
        .sum()
}

/// Plans a pass: delete what left the manifest (damaged or not); fetch what is missing,
/// differs from the manifest, or was found `damaged` while serving, in descending priority;
/// and, when `room` bytes cannot hold every fetch, leave out the lowest-priority ones.
///
/// `room` is the stores' free space after the deletes; replacing an object frees its old copy,
/// so that is counted as room too.
pub fn plan(
    manifest: &Manifest,
    index: &HashMap<String, ObjectMeta>,
    damaged: &HashSet<String>,
    free_after_deletes: u64,
) -> FillPlan {
    let wanted: HashSet<&str> = manifest.iter().map(|object| object.path).collect();
    let mut deletes: Vec<String> = index
        .keys()
        .filter(|path| !wanted.contains(path.as_str()))
        .cloned()
        .collect();
    deletes.sort();
    let mut present = 0;
    let mut present_bytes = 0;
    let mut fetches = Vec::new();
    let mut freed_by_replacing = 0u64;
    for object in manifest.iter() {
        match index.get(object.path) {
            Some(meta)
                if meta.size == object.size
                    && meta.sha256 == object.sha256
                    && !damaged.contains(object.path) =>
            {
                present += 1;
                present_bytes += object.size;
            }
            Some(stale) => {
                freed_by_replacing += stale.size;
                fetches.push(object.index);
            }
            None => fetches.push(object.index),
        }
    }
    // Stable sort: equal priorities keep manifest order.
    fetches.sort_by_key(|&index| std::cmp::Reverse(manifest.get(index).priority));
    let mut room = free_after_deletes.saturating_add(freed_by_replacing);
    let mut fitting = Vec::with_capacity(fetches.len());
    let mut no_room = Vec::new();
    for index in fetches {
        let size = manifest.get(index).size;
        if size <= room {
            room -= size;
            fitting.push(index);
        } else {
            no_room.push(index);
        }
    }
    FillPlan {
        deletes,
        fetches: fitting,
        present,
        present_bytes,
        no_room,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(plan.deletes, ["gone.ts"]);
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
        assert_eq!(plan.deletes, ["unwanted.ts"]);
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
        let plan = plan(&manifest, &HashMap::new(), &HashSet::new(), 1000);
        assert_eq!(paths(&manifest, &plan.fetches), ["b", "d", "a", "c"]);
    }

    #[test]
    fn what_does_not_fit_is_skipped_lowest_priority_first() {
        let manifest = manifest(vec![
            object("low", 40, 1, 1),
            object("high", 40, 1, 9),
            object("mid", 40, 1, 5),
        ]);
        let plan = plan(&manifest, &HashMap::new(), &HashSet::new(), 100);
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
