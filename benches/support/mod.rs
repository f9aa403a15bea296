//! What the start-up and scale benches share: the release binary, a store whose journal
//! lists N synthetic segments, a one-shot HTTP GET, resident-set readings, and stopping the
//! daemon as systemd does.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use tidecache::config::{ByteSize, StoreConfig};
use tidecache::store::Stores;
use tidecache::store::journal::{JournalEntry, JournalWriter, Record};

/// The release daemon; exits with a hint when it has not been built.
pub fn release_binary(bench: &str) -> PathBuf {
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/tidecache");
    if !binary.exists() {
        eprintln!(
            "{bench}: build the daemon first: cargo build --release --bin tidecache ({} is missing)",
            binary.display()
        );
        std::process::exit(2);
    }
    binary
}

/// The path of synthetic segment `number`: 1,000 per title.
pub fn object_path(number: usize) -> String {
    format!(
        "titles/t{:05}/v1080/seg_{:05}.m4s",
        number / 1000,
        number % 1000
    )
}

/// A sha256 unique to segment `number`.
pub fn sha_of(number: usize) -> [u8; 32] {
    let mut sha256 = [0u8; 32];
    sha256[..8].copy_from_slice(&(number as u64).to_le_bytes());
    sha256
}

/// Creates the store's layout with the library, then appends one `Put` per segment (2 MiB
/// each; the files themselves are not needed to load the index). Returns the journal's size.
#[allow(dead_code)] // benches/startup's; benches/scale writes shares of several stores
pub fn write_store(store: &Path, objects: usize) -> u64 {
    write_store_range(store, 0..objects)
}

/// [`write_store`] for objects numbered `numbers` (one share of a box of several stores).
pub fn write_store_range(store: &Path, numbers: std::ops::Range<usize>) -> u64 {
    drop(Stores::load(&[StoreConfig {
        path: store.to_owned(),
        capacity: Some(ByteSize(1 << 50)),
    }]));
    let journal = store.join("index").join("journal");
    let mut writer = JournalWriter::open(&journal, 0).expect("journal");
    let mut batch = Vec::with_capacity(10_000);
    for number in numbers {
        batch.push(Record::Put(
            object_path(number),
            JournalEntry {
                size: 2 << 20,
                sha256: sha_of(number),
                filled_at: 1_764_000_000,
            },
        ));
        if batch.len() == batch.capacity() {
            writer.append(&batch).expect("append");
            batch.clear();
        }
    }
    writer.append(&batch).expect("append");
    std::fs::metadata(&journal).map_or(0, |meta| meta.len())
}

/// One HTTP/1.1 GET; the whole answer, or empty when the listener does not answer.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    if stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .is_err()
    {
        return String::new();
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in MB.
pub fn status_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib * 1024.0 / 1e6)
}

/// SIGTERM, as systemd stops it, then waits.
pub fn stop(child: &mut Child) {
    use rustix::process::{Pid, Signal, kill_process};
    match i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
        Some(pid) => {
            let _ = kill_process(pid, Signal::TERM);
        }
        None => {
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

/// A loopback port free now.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
}
