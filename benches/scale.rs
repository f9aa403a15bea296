//! The reference appliance's scale (issue: 43 million objects): a manifest of N objects
//! pushed and accepted, a restart with it in force, a restart with N objects stored, and a
//! fill plan over N objects, each against its target, printed as met / NOT met.
//!
//! Run: `cargo build --release --bin tidecache && cargo bench --bench scale -- N`
//! (default N = 2,000,000). Targets, scaled per object from those stated for 2 M and 10 M
//! objects:
//! - accepting the manifest: peak resident <= 300 B/object (600 MB at 2 M), <= 200 B/object
//!   once accepted (400 MB at 2 M), `/v1/status` answering in milliseconds throughout;
//! - a restart with that manifest in force answering `/readyz` within 3 s;
//! - a restart with N objects stored and the manifest in force: ready within 3 s and
//!   resident <= 120 B/object (1.2 GB at 10 M);
//! - the fill plan over N objects (all present) within 1 us/object (10 s at 10 M).
//!
//! Everything runs on loopback against the release binary, one store in a temp directory;
//! the manifest is NDJSON on disk (about 150 B/object) and the journal is written directly.

use std::io::{BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
use support::{
    free_port, http_get, object_path, release_binary, sha_of, status_mb, stop, write_store_range,
};

const TOKEN: &str = "scale-bench-token-0123456789abcdef";

fn main() {
    let max_wait = Duration::from_secs(
        std::env::var("SCALE_MAX_WAIT")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(600),
    );
    let objects: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.replace('_', "").parse().ok())
        .unwrap_or(2_000_000);
    let binary = release_binary("scale");
    let work = tempfile::tempdir().expect("temporary directory");
    let dir = work.path();
    // SCALE_STORES=K splits the stored objects over K stores (an appliance has 12), each
    // replayed on a thread of its own and then merged.
    let store_count: usize = std::env::var("SCALE_STORES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1)
        .max(1);
    let stores: Vec<PathBuf> = (0..store_count)
        .map(|number| dir.join(format!("store{number}")))
        .collect();
    let store = &stores[..];
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("state");
    std::fs::write(dir.join("token"), TOKEN).expect("token");
    let manifest = dir.join("manifest.ndjson");
    let manifest_bytes = write_manifest(&manifest, objects);
    println!(
        "scale: {objects} objects; manifest {:.0} MB of NDJSON",
        manifest_bytes as f64 / 1e6
    );
    let mut verdicts = Vec::new();
    let mut verdict = |what: String, met: bool| {
        println!("{what}: {}", if met { "met" } else { "NOT met" });
        verdicts.push(met);
    };
    let per_object = |bytes: f64| bytes / objects as f64;

    // 1. The push, into an empty box.
    let daemon = Daemon::start(&binary, dir, store, &state);
    let before = daemon.resident_mb();
    let started = Instant::now();
    let mut push = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        // -T streams the file (--data-binary reads it into memory first).
        .args(["-H", "Content-Type: application/x-ndjson", "-T"])
        .arg(&manifest)
        .arg(format!("http://{}/v1/manifest", daemon.admin))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let mut slowest_status = Duration::ZERO;
    while push.try_wait().ok().flatten().is_none() {
        let asked = Instant::now();
        let _ = http_get(daemon.admin, "/v1/status");
        slowest_status = slowest_status.max(asked.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut code = String::new();
    if let Some(mut out) = push.stdout.take() {
        let _ = out.read_to_string(&mut code);
    }
    let accept_seconds = started.elapsed().as_secs_f64();
    let accepted = code.trim() == "202";
    let peak = daemon.peak_mb();
    let after = daemon.resident_mb();
    println!("push: HTTP {code} in {accept_seconds:.1} s; resident {before:.0} MB before");
    verdict(format!("manifest accepted (HTTP {code})"), accepted);
    if !accepted {
        println!("scale: the push failed; the later steps need the manifest in force");
        std::process::exit(1);
    }
    verdict(
        format!(
            "accept peak {peak:.0} MB, {:.0} B/object (target <= 300)",
            per_object(peak * 1e6)
        ),
        accepted && per_object(peak * 1e6) <= 300.0,
    );
    verdict(
        format!(
            "after accept {after:.0} MB, {:.0} B/object (target <= 200)",
            per_object(after * 1e6)
        ),
        accepted && per_object(after * 1e6) <= 200.0,
    );
    verdict(
        format!(
            "/v1/status during the push, slowest {:.1} ms (target <= 100 ms)",
            slowest_status.as_secs_f64() * 1e3
        ),
        slowest_status <= Duration::from_millis(100),
    );
    drop(daemon);

    // 2. A restart with that manifest in force (no content yet).
    let started = Instant::now();
    let daemon = Daemon::start(&binary, dir, store, &state);
    let answering = started.elapsed().as_secs_f64();
    verdict(
        format!(
            "restart with the manifest in force: answering in {answering:.2} s, {:.0} MB (target <= 3 s)",
            daemon.resident_mb()
        ),
        answering <= 3.0,
    );
    drop(daemon);

    // 3. N objects stored, the manifest in force.
    let share = objects.div_ceil(store_count);
    let journal_bytes: u64 = stores
        .iter()
        .enumerate()
        .map(|(number, path)| {
            write_store_range(path, number * share..((number + 1) * share).min(objects))
        })
        .sum();
    // Written just now: flushed before the clock starts, as on a box restarted long after.
    let _ = Command::new("sync").status();
    std::fs::write(state.join("stocked"), "scale bench\n").expect("latch");
    println!(
        "stores: {store_count}, journals {:.0} MB",
        journal_bytes as f64 / 1e6
    );
    let started = Instant::now();
    let daemon = Daemon::start(&binary, dir, store, &state);
    while !http_get(daemon.admin, "/readyz").starts_with("HTTP/1.1 200") {
        assert!(started.elapsed() < Duration::from_secs(300), "never ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready = started.elapsed().as_secs_f64();
    let resident = daemon.resident_mb();
    for line in std::fs::read_to_string(dir.join("daemon.log"))
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("stores opened") || line.contains("manifest in force checked"))
    {
        println!("  daemon: {}", line.trim());
    }
    verdict(
        format!("restart with {objects} objects stored: ready in {ready:.2} s (target <= 3 s)"),
        ready <= 3.0,
    );
    verdict(
        format!(
            "resident then {resident:.0} MB, {:.0} B/object above an empty daemon's {before:.0} MB (target <= 120)",
            per_object((resident - before) * 1e6)
        ),
        per_object((resident - before) * 1e6) <= 120.0,
    );

    // 4. A fill pass with everything present: the plan is the whole pass.
    let started = Instant::now();
    let mode = Command::new(&binary)
        .args(["mode", "fill", "--admin"])
        .arg(format!("http://{}", daemon.admin))
        .args(["--token", TOKEN])
        .stdout(Stdio::null())
        .status()
        .expect("tidecache mode fill");
    assert!(mode.success(), "mode fill");
    let mut slowest_status = Duration::ZERO;
    loop {
        let asked = Instant::now();
        let status = http_get(daemon.admin, "/v1/status");
        slowest_status = slowest_status.max(asked.elapsed());
        let body = status.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let parsed: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        if parsed["fill"]["state"] == "done" {
            break;
        }
        assert!(
            started.elapsed() < max_wait,
            "the pass never ended: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pass = started.elapsed().as_secs_f64();
    for line in std::fs::read_to_string(dir.join("daemon.log"))
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("fill plan surveyed") || line.contains("fill report"))
    {
        println!("  daemon: {}", line.trim());
    }
    verdict(
        format!(
            "fill plan over {objects} objects: {pass:.2} s, {:.2} us/object (target <= 1)",
            pass * 1e6 / objects as f64
        ),
        pass * 1e6 / objects as f64 <= 1.0,
    );
    verdict(
        format!(
            "/v1/status during the pass, slowest {:.1} ms (target <= 100 ms)",
            slowest_status.as_secs_f64() * 1e3
        ),
        slowest_status <= Duration::from_millis(100),
    );
    drop(daemon);
    let met = verdicts.iter().filter(|met| **met).count();
    println!("scale: {met} of {} targets met", verdicts.len());
}

/// An NDJSON manifest of `objects` 2 MiB segments, 1,000 per title. Returns its size.
fn write_manifest(path: &Path, objects: usize) -> u64 {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).expect("manifest"));
    writeln!(
        out,
        "{{\"version\": 1, \"id\": \"scale-{objects}\", \"base_url\": \"http://127.0.0.1:9/content/\"}}"
    )
    .expect("write");
    for number in 0..objects {
        writeln!(
            out,
            "{{\"path\": \"{}\", \"size\": {}, \"sha256\": \"{}\"}}",
            object_path(number),
            2 << 20,
            hex(&sha_of(number))
        )
        .expect("write");
    }
    out.flush().expect("flush");
    std::fs::metadata(path).map_or(0, |meta| meta.len())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The release daemon on one store, stopped (SIGTERM) when dropped.
struct Daemon {
    child: Child,
    admin: SocketAddr,
}

impl Daemon {
    /// Starts it and waits until its admin listener answers.
    fn start(binary: &Path, dir: &Path, stores: &[PathBuf], state: &Path) -> Daemon {
        let admin = free_port();
        let config: PathBuf = dir.join("tidecache.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {state:?}\n[http]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"{admin}\"\ntoken_file = {:?}\n\
                 {}[schedule]\nfill_windows = []\ndrain = \"0s\"\n\
                 [fill]\nmax_manifest_size = \"64GiB\"\n",
                dir.join("token"),
                stores
                    .iter()
                    .map(|store| format!("[[store]]\npath = {store:?}\ncapacity = \"1PiB\"\n"))
                    .collect::<String>()
            ),
        )
        .expect("config");
        // Its log, for where start-up spends its time ("stores opened", "manifest in force").
        let log = std::fs::File::create(dir.join("daemon.log")).expect("log");
        let child = Command::new(binary)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tidecache");
        let daemon = Daemon { child, admin };
        let started = Instant::now();
        while http_get(admin, "/healthz").is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "tidecache did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        daemon
    }

    /// `VmRSS`, in MB.
    fn resident_mb(&self) -> f64 {
        status_mb(self.child.id(), "VmRSS:")
    }

    /// `VmHWM` (the peak resident set), in MB.
    fn peak_mb(&self) -> f64 {
        status_mb(self.child.id(), "VmHWM:")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
