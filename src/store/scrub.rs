//! `tidecache verify`: re-hash every stored object against its recorded sha256, and move the
//! damaged ones aside so they are not served and the next fill fetches them again.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use super::{ObjectMeta, StoreError, Stores, hex};

/// One object that does not match the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The object path.
    pub path: String,
    /// The store it is on.
    pub store: PathBuf,
    /// What is wrong, in one line.
    pub problem: String,
}

/// What a scrub found.
#[derive(Debug, Default)]
pub struct ScrubReport {
    /// Objects checked.
    pub objects: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Objects that did not match.
    pub damaged: Vec<Damage>,
}

/// Re-hashes every indexed object on `threads` threads, calling `progress` with the bytes
/// of each object checked. Reads only.
pub fn scrub(stores: &Stores, threads: usize, progress: &(dyn Fn(u64) + Sync)) -> ScrubReport {
    let mut objects = stores.snapshot();
    objects.sort_by(|a, b| (a.1.store, &a.0).cmp(&(b.1.store, &b.0)));
    let next = AtomicUsize::new(0);
    let report = Mutex::new(ScrubReport::default());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                while let Some((path, meta)) = objects.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let problem = check(stores, path, meta);
                    progress(meta.size);
                    if let Ok(mut report) = report.lock() {
                        report.objects += 1;
                        report.bytes += meta.size;
                        if let Some(problem) = problem {
                            report.damaged.push(Damage {
                                path: path.clone(),
                                store: stores.stores[meta.store].config_path.clone(),
                                problem,
                            });
                        }
                    }
                }
            });
        }
    });
    let mut report = report.into_inner().unwrap_or_default();
    report.damaged.sort_by(|a, b| a.path.cmp(&b.path));
    report
}

/// What is wrong with one object, if anything.
fn check(stores: &Stores, path: &str, meta: &ObjectMeta) -> Option<String> {
    let file_path = stores.stores[meta.store].object_file(path);
    let mut file = match std::fs::File::open(&file_path) {
        Ok(file) => file,
        Err(err) => return Some(format!("cannot open: {err}")),
    };
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut length: u64 = 0;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => {
                hasher.update(&buffer[..read]);
                length += read as u64;
            }
            Err(err) => return Some(format!("read error: {err}")),
        }
    }
    if length != meta.size {
        return Some(format!("{length} bytes, the index says {}", meta.size));
    }
    let actual: [u8; 32] = hasher.finalize().into();
    (actual != meta.sha256).then(|| {
        format!(
            "sha256 {} does not match the recorded {}",
            hex(&actual),
            hex(&meta.sha256)
        )
    })
}

/// Takes an object out of service: its file moves to `<store>/quarantine/<path>` for
/// inspection, and it leaves the journal and the index, so it is not served and the next
/// fill fetches it again.
pub fn quarantine(stores: &Stores, path: &str) -> Result<(), StoreError> {
    let Some(meta) = stores.forget(path)? else {
        return Ok(());
    };
    let store = &stores.stores[meta.store];
    let target = store.root.join("quarantine").join(path);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|err| store.io_error(format!("create {}", parent.display()), err))?;
    }
    match std::fs::rename(store.object_file(path), &target) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(store.io_error(format!("quarantine objects/{path}"), err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, StoreConfig};
    use crate::store::writer::ObjectWriter;
    use std::sync::Arc;

    #[test]
    fn flipped_truncated_and_missing_objects_are_found_and_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let config = [StoreConfig {
            path: dir.path().to_owned(),
            capacity: Some(ByteSize(1 << 20)),
        }];
        let stores = Arc::new(Stores::load(&config));
        for (path, data) in [
            ("good.ts", b"good"),
            ("flip.ts", b"flip"),
            ("cut.ts", b"cut!"),
            ("gone.ts", b"gone"),
        ] {
            let mut writer =
                ObjectWriter::begin(&stores, path, 4, Sha256::digest(data).into()).unwrap();
            writer.write(data).unwrap();
            writer.finish().unwrap();
        }
        let objects = dir.path().join("objects");
        std::fs::write(objects.join("flip.ts"), b"flop").unwrap();
        std::fs::write(objects.join("cut.ts"), b"cu").unwrap();
        std::fs::remove_file(objects.join("gone.ts")).unwrap();
        let report = scrub(&stores, 2, &|_| {});
        assert_eq!(report.objects, 4);
        let damaged: Vec<&str> = report.damaged.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(damaged, ["cut.ts", "flip.ts", "gone.ts"]);
        assert!(report.damaged[1].problem.contains("does not match"));
        for damage in &report.damaged {
            quarantine(&stores, &damage.path).unwrap();
        }
        assert!(stores.lookup("flip.ts").is_none());
        assert!(dir.path().join("quarantine/flip.ts").exists());
        drop(stores);
        let reopened = Stores::load(&config);
        assert!(
            reopened.lookup("flip.ts").is_none(),
            "quarantine survives a restart"
        );
        assert!(reopened.lookup("good.ts").is_some());
    }
}
