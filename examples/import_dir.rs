//! Imports a directory tree into the stores of a configuration, through the store module's own
//! verified write path (the one the fill uses), so benchmarks and parity checks can serve the
//! same files as nginx before the fill exists.
//!
//! ```sh
//! cargo run --example import_dir -- CONFIG DIR
//! ```
//!
//! Each file under DIR becomes the object at its relative path. Run it while no daemon uses
//! the stores.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tidecache::config::Config;
use tidecache::store::Stores;
use tidecache::store::writer::ObjectWriter;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, dir] = args.as_slice() else {
        eprintln!("usage: import_dir CONFIG DIR");
        return ExitCode::from(2);
    };
    match import(Path::new(config), Path::new(dir)) {
        Ok(count) => {
            println!("imported {count} objects");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("import_dir: error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn import(config: &Path, dir: &Path) -> Result<usize, Box<dyn std::error::Error>> {
    let config = Config::load(config)?;
    let stores = Arc::new(Stores::load(&config.stores));
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    for file in &files {
        let relative = file
            .strip_prefix(dir)?
            .to_str()
            .ok_or_else(|| format!("{}: not UTF-8", file.display()))?;
        let data = std::fs::read(file)?;
        let sha256: [u8; 32] = Sha256::digest(&data).into();
        let mut writer = ObjectWriter::begin(&stores, relative, data.len() as u64, sha256)?;
        for chunk in data.chunks(1 << 20) {
            writer.write(chunk)?;
        }
        writer.finish()?;
    }
    Ok(files.len())
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}
