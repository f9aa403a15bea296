//! Start-up with a 1,000,000-object index: time from `tidecache serve` to `/readyz` answering
//! 200, and the daemon's resident memory then (targets: <= 2 s, <= 300 MB).
//!
//! Run: `cargo build --release --bin tidecache && cargo bench --bench startup`
//! (`STARTUP_OBJECTS=N` for another count). Writes one store whose journal holds the
//! objects (the files themselves are not needed to load the index), starts the release
//! binary on loopback three times, and prints the median and the targets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tidecache::config::{ByteSize, StoreConfig};
use tidecache::store::Stores;
use tidecache::store::journal::{JournalEntry, JournalWriter, Record};

const RUNS: usize = 3;
const TARGET_SECONDS: f64 = 2.0;
const TARGET_MB: f64 = 300.0;

fn main() {
    let objects: usize = std::env::var("STARTUP_OBJECTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1_000_000);
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/tidecache");
    if !binary.exists() {
        eprintln!(
            "startup: build the daemon first: cargo build --release --bin tidecache ({} is missing)",
            binary.display()
        );
        std::process::exit(2);
    }
    let work = tempfile::tempdir().expect("temporary directory");
    let store = work.path().join("store");
    let journal_bytes = write_store(&store, objects);
    println!(
        "index: {objects} objects, journal {:.0} MB",
        journal_bytes as f64 / 1e6
    );
    let mut seconds = Vec::new();
    let mut megabytes = Vec::new();
    for run in 0..RUNS {
        let (elapsed, resident) = start_once(&binary, work.path(), &store, run);
        println!(
            "run {}: ready in {:.2} s, {:.0} MB resident",
            run + 1,
            elapsed.as_secs_f64(),
            resident
        );
        seconds.push(elapsed.as_secs_f64());
        megabytes.push(resident);
    }
    let (seconds, megabytes) = (median(seconds), median(megabytes));
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!(
        "start-up time  {seconds:.2} s   (target <= {TARGET_SECONDS} s): {}",
        verdict(seconds <= TARGET_SECONDS)
    );
    println!(
        "resident       {megabytes:.0} MB  (target <= {TARGET_MB} MB): {}",
        verdict(megabytes <= TARGET_MB)
    );
}

/// Creates the store's layout with the library, then appends one `Put` per object to its
/// journal. Returns the journal's size.
fn write_store(store: &Path, objects: usize) -> u64 {
    drop(Stores::load(&[StoreConfig {
        path: store.to_owned(),
        capacity: Some(ByteSize(1 << 50)),
    }]));
    let journal = store.join("index").join("journal");
    let mut writer = JournalWriter::open(&journal, 0).expect("journal");
    let mut batch = Vec::with_capacity(10_000);
    for number in 0..objects {
        let mut sha256 = [0u8; 32];
        sha256[..8].copy_from_slice(&(number as u64).to_le_bytes());
        let path = format!(
            "titles/t{:05}/v1080/seg_{:05}.m4s",
            number / 1000,
            number % 1000
        );
        batch.push(Record::Put(
            path,
            JournalEntry {
                size: 2 << 20,
                sha256,
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

/// Starts the daemon on `store`, waits for `/readyz` 200, reads its resident set, stops it.
fn start_once(binary: &Path, work: &Path, store: &Path, run: usize) -> (Duration, f64) {
    let admin = free_port();
    let config = work.join(format!("tidecache-{run}.toml"));
    let state = work.join(format!("state-{run}"));
    // The index stands for a box that completed its fill: without the latch a box with no
    // manifest in force is never ready.
    std::fs::create_dir_all(&state).expect("state directory");
    std::fs::write(state.join("stocked"), b"a filled box\n").expect("latch");
    std::fs::write(
        &config,
        format!(
            "state_dir = {state:?}\n[http]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"{admin}\"\n\
             [[store]]\npath = {store:?}\ncapacity = \"1PiB\"\n[schedule]\nfill_windows = []\n"
        ),
    )
    .expect("config");
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tidecache");
    let deadline = started + Duration::from_secs(60);
    while !ready(admin) {
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            stop(&mut child);
            panic!("tidecache did not become ready within 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed();
    let resident = resident_mb(child.id());
    stop(&mut child);
    (elapsed, resident)
}

fn ready(admin: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&admin, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// `VmRSS` of a process, in MB.
fn resident_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
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
fn stop(child: &mut Child) {
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

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
