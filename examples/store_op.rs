//! Runs store operations on one store directory, single-threaded, through the store module's
//! own write path: the unit the fault matrix (`tests/fault_matrix.rs`) runs under
//! `strace -e inject=...`, so that "the Nth fsync" means the same call in every run.
//!
//! ```sh
//! cargo run --example store_op -- STORE_DIR OP [OP...]
//! ```
//!
//! Each OP is one of:
//! - `put:PATH:FILE`: write FILE's bytes as the object PATH (resuming a partial if one is
//!   there), verify, publish.
//! - `checkpoint:PATH:FILE:BYTES`: write the first BYTES of FILE and keep the partial for a
//!   later `put` to resume, as a fill window's end does.
//! - `remove:PATH`: delete the object.
//! - `remove_many:PATH,PATH,...`: delete several at once, as a fill's delete phase does.
//! - `compact`: rewrite the journal to its live entries.
//! - `state:NAME:FILE`: replace the small state file NAME in the store's directory with
//!   FILE's bytes through `durable::write_atomically`, the path every state file takes (the
//!   manifest in force, the site's settled and previous members, the mode override).
//!
//! Every operation runs even when an earlier one failed (so a fault's aftermath is exercised
//! too); each prints `ok OP` or `error OP: ...` on stdout. The exit code is 0 either way.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tidecache::config::{ByteSize, StoreConfig};
use tidecache::store::Stores;
use tidecache::store::writer::ObjectWriter;

/// Bytes handed to the writer at once, so an object of a few hundred kilobytes takes several
/// `write` calls, as a fill's batches do.
const CHUNK: usize = 64 * 1024;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: store_op STORE_DIR OP [OP...]");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    let stores = Arc::new(Stores::load(&[StoreConfig {
        path: dir.clone(),
        capacity: Some(ByteSize(1 << 30)),
    }]));
    let mut stdout = std::io::stdout();
    for op in args {
        // A fault injected into this very write must not abort the run: ignore its error.
        let _ = match run(&stores, &dir, &op) {
            Ok(()) => writeln!(stdout, "ok {op}"),
            Err(err) => writeln!(stdout, "error {op}: {err}"),
        };
    }
    ExitCode::SUCCESS
}

fn run(stores: &Arc<Stores>, dir: &Path, op: &str) -> Result<(), String> {
    let parts: Vec<&str> = op.split(':').collect();
    match parts.as_slice() {
        ["put", path, file] => {
            let data = std::fs::read(file).map_err(|err| format!("{file}: {err}"))?;
            write(stores, path, &data, data.len())?
                .finish()
                .map(|_| ())
                .map_err(|err| err.to_string())
        }
        ["checkpoint", path, file, bytes] => {
            let data = std::fs::read(file).map_err(|err| format!("{file}: {err}"))?;
            let bytes: usize = bytes
                .parse()
                .map_err(|_| format!("{bytes}: not a number"))?;
            write(stores, path, &data, bytes.min(data.len()))?
                .checkpoint()
                .map(|_| ())
                .map_err(|err| err.to_string())
        }
        ["remove", path] => stores
            .remove(path)
            .map(|_| ())
            .map_err(|err| err.to_string()),
        ["remove_many", paths] => {
            let paths: Vec<String> = paths.split(',').map(str::to_owned).collect();
            match stores.remove_many(&paths) {
                (_, None) => Ok(()),
                (_, Some(err)) => Err(err.to_string()),
            }
        }
        ["compact"] => stores.compact_journals().map_err(|err| err.to_string()),
        ["state", name, file] => {
            let data = std::fs::read(file).map_err(|err| format!("{file}: {err}"))?;
            tidecache::durable::write_atomically(&dir.join(name), &data)
                .map_err(|err| err.to_string())
        }
        _ => Err("unknown operation".to_owned()),
    }
}

/// Opens a writer for `data` as `path` (resuming a partial) and writes up to `upto` bytes.
fn write(
    stores: &Arc<Stores>,
    path: &str,
    data: &[u8],
    upto: usize,
) -> Result<ObjectWriter, String> {
    let sha256: [u8; 32] = Sha256::digest(data).into();
    let mut writer = ObjectWriter::begin_or_resume(stores, path, data.len() as u64, sha256)
        .map_err(|err| err.to_string())?;
    let from = usize::try_from(writer.written()).map_err(|err| err.to_string())?;
    for chunk in data[from.min(upto)..upto].chunks(CHUNK) {
        writer.write(chunk).map_err(|err| err.to_string())?;
    }
    Ok(writer)
}
