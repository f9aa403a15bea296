//! `fill.file_roots`: the only directories a `file://` source may be read from.
//!
//! Why: a manifest is written by whoever holds the admin token (or the HMAC key), and a
//! `file://` source makes the daemon read a local file and publish it to viewers. Without a
//! fence, `file:///etc/tidecache/admin.token` (or the TLS key, the signing key) would be one
//! push away from the open internet. A source counts as inside a root only once symlinks are
//! resolved, so a link planted in a seed directory cannot point out of it.
//!
//! The check runs twice: when a manifest is accepted (an outside source makes it invalid,
//! 400), and again when the file is opened (the saved manifest may predate a change of roots,
//! and a directory may change between the two). What stays open is a link swapped inside a
//! root between the check and the open, by someone who can already write there.

use std::io;
use std::path::{Component, Path, PathBuf};

use super::manifest::{Manifest, Source};

/// The configured roots, each resolved to its canonical form (symlinks followed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileRoots {
    roots: Vec<PathBuf>,
}

/// Why a `file://` source is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutsideRoots {
    /// No roots are configured: `file://` sources are off.
    #[error("file:// sources are not allowed (fill.file_roots is empty)")]
    NoRoots,
    /// The path, once resolved, is in none of the roots.
    #[error("{0} is outside fill.file_roots")]
    Outside(String),
}

impl FileRoots {
    /// Resolves `configured` once. A root that does not exist (yet) is kept as written, so a
    /// seed disk mounted later still works; it is resolved again at each reload.
    pub fn resolve(configured: &[PathBuf]) -> FileRoots {
        let roots = configured
            .iter()
            .map(|root| std::fs::canonicalize(root).unwrap_or_else(|_| lexical(root)))
            .collect();
        FileRoots { roots }
    }

    /// Whether any root is configured.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The canonical path of `path` if it lies in a root. The part of the path that exists
    /// is resolved (symlinks followed); a missing tail is taken as written, so a manifest
    /// may name a file that arrives before the fill.
    pub fn confine(&self, path: &Path) -> Result<PathBuf, OutsideRoots> {
        if self.roots.is_empty() {
            return Err(OutsideRoots::NoRoots);
        }
        let resolved = resolve_existing(path);
        if self.roots.iter().any(|root| resolved.starts_with(root)) {
            Ok(resolved)
        } else {
            Err(OutsideRoots::Outside(path.display().to_string()))
        }
    }

    /// Checks every `file://` source of `manifest`; the error names the first object whose
    /// source is outside.
    pub fn check_manifest(&self, manifest: &Manifest) -> Result<(), String> {
        for object in &manifest.objects {
            if let Source::File(path) = &object.source {
                self.confine(path)
                    .map_err(|err| format!("objects[{:?}]: {err}", object.path))?;
            }
        }
        Ok(())
    }

    /// Opens `path` for reading if, resolved, it lies in a root; a symlink swapped in as the
    /// last component after the check is not followed.
    pub fn open(&self, path: &Path) -> Result<std::fs::File, OpenError> {
        let resolved = std::fs::canonicalize(path).map_err(OpenError::Io)?;
        let confined = self.confine(&resolved).map_err(OpenError::Outside)?;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(confined)
            .map_err(OpenError::Io)
    }
}

/// Why [`FileRoots::open`] did not open a file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Outside the roots: never worth a retry.
    #[error(transparent)]
    Outside(OutsideRoots),
    /// What the OS said.
    #[error(transparent)]
    Io(io::Error),
}

/// `path` with its longest existing ancestor resolved and the rest appended as written.
fn resolve_existing(path: &Path) -> PathBuf {
    let path = lexical(path);
    let mut existing = path.as_path();
    let mut tail = Vec::new();
    loop {
        if let Ok(resolved) = std::fs::canonicalize(existing) {
            return tail.iter().rev().fold(resolved, |acc, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_owned());
                existing = parent;
            }
            _ => return path,
        }
    }
}

/// `path` with `.` segments dropped and `..` applied, without touching the disk.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_roots_means_no_file_sources() {
        let roots = FileRoots::resolve(&[]);
        assert_eq!(
            roots.confine(Path::new("/srv/seed/a.ts")),
            Err(OutsideRoots::NoRoots)
        );
    }

    #[test]
    fn files_inside_a_root_pass_and_outside_fail_even_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("seed");
        let outside = dir.path().join("secret");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("a.ts"), b"a").unwrap();
        std::fs::write(outside.join("key"), b"k").unwrap();
        std::os::unix::fs::symlink(outside.join("key"), root.join("link.ts")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("linked-dir")).unwrap();
        let roots = FileRoots::resolve(std::slice::from_ref(&root));

        assert!(roots.confine(&root.join("a.ts")).is_ok());
        assert!(
            roots.confine(&root.join("not-yet/b.ts")).is_ok(),
            "a file still to come"
        );
        assert!(roots.open(&root.join("a.ts")).is_ok());
        for escape in [
            outside.join("key"),
            root.join("link.ts"),
            root.join("linked-dir/key"),
            root.join("linked-dir/missing.ts"),
            root.join("../secret/key"),
            PathBuf::from(format!("{}-sibling/x", root.display())),
        ] {
            assert!(
                matches!(roots.confine(&escape), Err(OutsideRoots::Outside(_))),
                "{} passed",
                escape.display()
            );
            assert!(roots.open(&escape).is_err(), "{} opened", escape.display());
        }
    }

    #[test]
    fn a_link_inside_the_root_that_stays_inside_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("seed");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::write(root.join("real/a.ts"), b"a").unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("alias")).unwrap();
        let roots = FileRoots::resolve(std::slice::from_ref(&root));
        assert!(roots.open(&root.join("alias/a.ts")).is_ok());
    }

    #[test]
    fn a_root_given_through_a_link_is_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("disk");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join("a.ts"), b"a").unwrap();
        let link = dir.path().join("seed");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let roots = FileRoots::resolve(std::slice::from_ref(&link));
        assert!(roots.confine(&link.join("a.ts")).is_ok());
        assert!(roots.confine(&real.join("a.ts")).is_ok());
    }
}
