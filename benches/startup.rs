//! Start-up with a 1,000,000-object index: time from `tidecache serve` to `/readyz` answering
//! 200, and the daemon's resident memory then (targets: <= 2 s, <= 300 MB).
//!
//! Run: `cargo build --release --bin tidecache && cargo bench --bench startup`
//! (`STARTUP_OBJECTS=N` for another count). Writes one store whose journal holds the
//! objects (the files themselves are not needed to load the index), starts the release
//! binary on loopback three times, and prints the median and the targets.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
use support::{free_port, http_get, release_binary, status_mb, stop, write_store};

const RUNS: usize = 3;
const TARGET_SECONDS: f64 = 2.0;
const TARGET_MB: f64 = 300.0;

fn main() {
    let objects: usize = std::env::var("STARTUP_OBJECTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1_000_000);
    let binary = release_binary("startup");
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
    let resident = status_mb(child.id(), "VmRSS:");
    stop(&mut child);
    (elapsed, resident)
}

fn ready(admin: SocketAddr) -> bool {
    http_get(admin, "/readyz").starts_with("HTTP/1.1 200")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
