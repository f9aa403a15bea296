//! `fill.file_roots`: the only directories a `file://` source may be read from.
//!
//! Why: a manifest is written by whoever holds the admin token (or the HMAC key), and a
//! `file://` source makes the daemon read a local file and publish it to viewers. Without a
//! fence, `file:///etc/tidecache/admin.token` (or the TLS key, the signing key) would be one
//! push away from the open internet. A source counts as inside a root only once symlinks are
//! resolved, so a link planted in a seed directory cannot point out of it.
//!
//! The check runs twice: when a manifest is accepted (an outside source makes it invalid,
//! 400), and again when the file is opened, where the kernel enforces it (`openat2` beneath
//! the root), so a directory swapped for a link in between cannot lead outside. What no path
//! check can see is a hard link: whoever can make one inside a root to a file elsewhere has
//! chosen to publish it.

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
    /// The path, once resolved, is in none of the roots (or, when opened, missing there:
    /// the two are not told apart, so the answer says nothing of files outside).
    #[error("{0} is outside fill.file_roots once links are followed, or missing")]
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
        for object in manifest.iter().filter(|object| object.is_file_source()) {
            if let Source::File(path) = object.source() {
                self.confine(&path)
                    .map_err(|err| format!("objects[{:?}]: {err}", object.path))?;
            }
        }
        Ok(())
    }

    /// Opens `path` for reading if it lies in a root once links are followed, and is a
    /// regular file (a FIFO or a device would hang or never end a fill).
    ///
    /// The kernel does the confining (`openat2` beneath the root's descriptor), so a
    /// directory swapped for a link between a check and the open cannot lead outside:
    /// first with links followed as long as they stay inside (`RESOLVE_BENEATH`); for an
    /// absolute link, which that refuses, the path is resolved, confined, and the resolved
    /// path opened with no links at all (`RESOLVE_NO_SYMLINKS`), so anything swapped in
    /// meanwhile makes the open fail instead of escaping. A path that leaves the roots gets
    /// the same answer whether or not its target exists.
    pub fn open(&self, path: &Path) -> Result<std::fs::File, OpenError> {
        if self.roots.is_empty() {
            return Err(OpenError::Outside(OutsideRoots::NoRoots));
        }
        let outside = || OpenError::Outside(OutsideRoots::Outside(path.display().to_string()));
        let written = lexical(path);
        for root in &self.roots {
            let Ok(rest) = written.strip_prefix(root) else {
                continue;
            };
            match open_beneath(root, rest, rustix::fs::ResolveFlags::empty()) {
                Ok(file) => return regular(file),
                // A link leaving the root, or an absolute one: decided below.
                Err(err) if leaves_root(&err) => break,
                Err(err) => return Err(OpenError::Io(err)),
            }
        }
        let resolved = std::fs::canonicalize(path).map_err(|_| outside())?;
        let root = self
            .roots
            .iter()
            .find(|root| resolved.starts_with(root))
            .ok_or_else(outside)?;
        let rest = resolved.strip_prefix(root).map_err(|_| outside())?;
        match open_beneath(root, rest, rustix::fs::ResolveFlags::NO_SYMLINKS) {
            Ok(file) => regular(file),
            Err(err) if leaves_root(&err) => Err(outside()),
            Err(err) => Err(OpenError::Io(err)),
        }
    }
}

/// `EXDEV` (`openat2` refused to leave the directory it was given) or `ELOOP` (a link where
/// none may be followed): the path leaves the root, or may.
fn leaves_root(err: &io::Error) -> bool {
    let errno = rustix::io::Errno::from_io_error(err);
    errno == Some(rustix::io::Errno::XDEV) || errno == Some(rustix::io::Errno::LOOP)
}

/// Opens `rest` beneath `root` read-only and non-blocking (a FIFO must not block the open),
/// with `RESOLVE_BENEATH` and `RESOLVE_NO_MAGICLINKS` plus `extra`.
fn open_beneath(
    root: &Path,
    rest: &Path,
    extra: rustix::fs::ResolveFlags,
) -> io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let directory = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let rest = if rest.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rest
    };
    let file = rustix::fs::openat2(
        &directory,
        rest,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | extra,
    )?;
    Ok(std::fs::File::from(file))
}

/// `file` if it is a regular file.
fn regular(file: std::fs::File) -> Result<std::fs::File, OpenError> {
    let metadata = file.metadata().map_err(OpenError::Io)?;
    if metadata.is_file() {
        Ok(file)
    } else {
        Err(OpenError::NotRegular)
    }
}

/// Why [`FileRoots::open`] did not open a file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Outside the roots once links are followed, or missing there: never worth a retry.
    #[error(transparent)]
    Outside(OutsideRoots),
    /// A FIFO, a device, a directory: nothing a fill can read to an end.
    #[error("not a regular file")]
    NotRegular,
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

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("seed");
        std::fs::create_dir_all(&root).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("pipe.ts"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("zero.ts")).unwrap();
        std::fs::create_dir_all(root.join("dir.ts")).unwrap();
        let roots = FileRoots::resolve(std::slice::from_ref(&root));
        assert!(matches!(
            roots.open(&root.join("pipe.ts")),
            Err(OpenError::NotRegular)
        ));
        assert!(matches!(
            roots.open(&root.join("dir.ts")),
            Err(OpenError::NotRegular)
        ));
        assert!(
            roots.open(&root.join("zero.ts")).is_err(),
            "a link out to a device"
        );
    }

    #[test]
    fn an_absolute_link_that_stays_inside_the_root_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("seed");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::write(root.join("real/a.ts"), b"a").unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        std::os::unix::fs::symlink(root.join("real/a.ts"), root.join("absolute.ts")).unwrap();
        let roots = FileRoots::resolve(std::slice::from_ref(&root));
        assert!(roots.open(&root.join("absolute.ts")).is_ok());
    }

    #[test]
    fn a_directory_swapped_for_a_link_mid_open_never_leads_outside() {
        use std::io::Read;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("seed");
        let outside = dir.path().join("secret");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("d/key"), b"inside").unwrap();
        std::fs::write(outside.join("key"), b"SECRET").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("swap")).unwrap();
        let roots = FileRoots::resolve(std::slice::from_ref(&root));
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let swapper = {
            let (done, root) = (std::sync::Arc::clone(&done), root.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let _ = rustix::fs::renameat_with(
                        rustix::fs::CWD,
                        root.join("d"),
                        rustix::fs::CWD,
                        root.join("swap"),
                        rustix::fs::RenameFlags::EXCHANGE,
                    );
                }
            })
        };
        let (mut escaped, mut inside) = (0, 0);
        for _ in 0..3000 {
            if let Ok(mut file) = roots.open(&root.join("d/key")) {
                let mut content = Vec::new();
                file.read_to_end(&mut content).unwrap();
                match &content[..] {
                    b"SECRET" => escaped += 1,
                    b"inside" => inside += 1,
                    _ => {}
                }
            }
        }
        done.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(escaped, 0, "opens that read the file outside the root");
        assert!(
            inside > 0,
            "the race never let an open through: it tested nothing"
        );
    }
}
