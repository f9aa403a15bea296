//! Small files that must survive a crash whole: written to a temp file, fsynced, renamed over
//! the old one, and the directory fsynced, so a reader sees the old content or the new.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `contents` atomically and durably.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomically_with(path, |file| file.write_all(contents))
}

/// Replaces `path` with what `write` writes (buffered, so it may write in small pieces)
/// atomically and durably: a temp file beside it, fsynced, renamed over it, the directory
/// fsynced. On any error the temp file is removed and `path` is as it was.
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut io::BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut temp_name = file_name.to_owned();
    temp_name.push(".tmp");
    let temp = dir.join(temp_name);
    let mut writer = io::BufWriter::with_capacity(256 * 1024, File::create(&temp)?);
    let written = write(&mut writer)
        .and_then(|()| writer.into_inner().map_err(io::IntoInnerError::into_error))
        .and_then(|file| file.sync_all());
    if let Err(err) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(err);
    }
    if let Err(err) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(err);
    }
    fsync_dir(dir)
}

/// Removes `path` durably: once this returns, a crash does not bring the file back. A file
/// already gone is not an error (its directory is still fsynced: an earlier removal may not
/// have been).
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fsync_dir(dir)
}

/// Makes a directory's entries (a rename, a new file) durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn a_removed_file_is_gone_and_one_already_gone_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomically(&path, b"kept").unwrap();
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
        assert!(remove(Path::new("/nonexistent/dir/state.json")).is_err());
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let err = write_atomically(Path::new("/nonexistent/dir/state.json"), b"x");
        assert!(err.is_err());
    }
}
