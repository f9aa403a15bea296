//! Helpers shared by the integration tests: a temporary box with seeded stores, the real
//! daemon on `127.0.0.1:0`, real HTTP clients, and raw TCP for what clients refuse to send.

#![allow(dead_code)]

pub mod h2;
pub mod origin;
pub mod process;
pub mod site;
pub mod viewer;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tidecache::config::Config;
use tidecache::daemon::Daemon;
use tidecache::schedule::ManualClock;
use tidecache::store::Stores;
use tidecache::store::writer::ObjectWriter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bounds every network wait in the tests, so a bug fails a test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A temporary appliance: a directory holding its stores and any files a test writes.
pub struct TestBox {
    pub dir: tempfile::TempDir,
}

impl TestBox {
    pub fn new() -> TestBox {
        TestBox {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// The directory of store `number`.
    pub fn store_path(&self, number: usize) -> PathBuf {
        self.dir.path().join(format!("nvme{number}"))
    }

    /// A configuration with `stores` stores, every listener on an ephemeral loopback port,
    /// and `extra` TOML appended (later tables, or keys for a table `extra` opens itself).
    pub fn config(&self, stores: usize, extra: &str) -> Config {
        let mut text =
            String::from("[http]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n");
        for number in 0..stores {
            text.push_str(&format!(
                "[[store]]\npath = {:?}\ncapacity = \"1GiB\"\n",
                self.store_path(number)
            ));
        }
        text.push_str(extra);
        let mut config =
            Config::parse(&text).unwrap_or_else(|err| panic!("test config: {err}\n{text}"));
        config.state_dir = self.dir.path().join("state");
        if !extra.contains("fill_windows") {
            // The default 02:00-06:00 UTC window must not make tests fail at night.
            config.schedule.fill_windows.clear();
        }
        config
    }

    /// Writes an admin token file and returns its path and the token.
    pub fn token_file(&self) -> (PathBuf, String) {
        let token = "test-token-0123456789abcdef".to_owned();
        (
            self.write_file("admin.token", format!("{token}\n").as_bytes()),
            token,
        )
    }

    /// Writes a configuration file for the `tidecache` binary into the box and returns its
    /// path: state and one 2 GiB store in the box, admin on a free port, no fill window
    /// (whatever the time of day), `http` as the `[http]` keys, then `more` (other tables).
    pub fn config_file(&self, name: &str, http: &str, more: &str) -> PathBuf {
        let text = format!(
            "state_dir = {:?}\n[http]\n{http}\n[admin]\nlisten = \"127.0.0.1:0\"\n[[store]]\npath = {:?}\ncapacity = \"2GiB\"\n[schedule]\nfill_windows = []\n{more}",
            self.dir.path().join("state"),
            self.store_path(0)
        );
        self.write_file(name, text.as_bytes())
    }

    /// Writes a file into the box's directory and returns its path (certificates, keys).
    pub fn write_file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }
}

/// Polls `check` every 10 ms until it holds; fails the test, naming `what`, after
/// [`IO_TIMEOUT`]. Tests wait on a condition like this instead of sleeping a guess.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {IO_TIMEOUT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of the unlabelled metric `name` in a text exposition, if present.
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits (bounded) until the daemon's mode satisfies `check`.
pub async fn wait_for_mode(
    daemon: &Daemon,
    check: impl FnMut(&tidecache::schedule::ModeState) -> bool,
) {
    let mut mode = daemon.mode();
    tokio::time::timeout(IO_TIMEOUT, mode.wait_for(check))
        .await
        .expect("mode reached within the timeout")
        .expect("mode channel open");
}

/// The sha256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The sha256 of `data` in hex, as ETags carry it.
pub fn sha256_hex(data: &[u8]) -> String {
    tidecache::store::hex(&sha256(data))
}

/// Puts objects into the configured stores through the store module's own write API (the one
/// fill uses), then closes the stores so the daemon loads them from their journals.
pub fn seed(config: &Config, objects: &[(&str, &[u8])]) {
    seed_all(config, objects);
}

/// [`seed`] for owned or mixed (path, bytes) pairs. Seeding stands for a fill that completed,
/// so the box is also marked as holding its content (the latch `/readyz` waits for).
pub fn seed_all<P: AsRef<str>, D: AsRef<[u8]>>(config: &Config, objects: &[(P, D)]) {
    std::fs::create_dir_all(&config.state_dir).expect("state directory");
    std::fs::write(config.state_dir.join("stocked"), b"seeded by a test\n").expect("latch");
    let stores = Arc::new(Stores::load(&config.stores));
    for (path, data) in objects {
        let (path, data) = (path.as_ref(), data.as_ref());
        let mut writer = ObjectWriter::begin(&stores, path, data.len() as u64, sha256(data))
            .unwrap_or_else(|err| panic!("begin_write {path}: {err}"));
        for chunk in data.chunks(64 * 1024) {
            writer.write(chunk).expect("write object");
        }
        writer.finish().expect("finish object");
    }
}

/// Whether files in `dir` can be opened with `O_DIRECT` (fills are written so where they can;
/// tmpfs refuses it).
pub fn takes_direct_writes(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join("direct-probe");
    let taken = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(probe);
    taken
}

/// Deterministic, non-repeating-looking bytes of a given length, so offsets are checkable.
pub fn pattern(length: usize) -> Vec<u8> {
    (0..length)
        .map(|index| (index.wrapping_mul(31) ^ (index >> 8)) as u8)
        .collect()
}

/// Starts the real daemon.
pub async fn start(config: &Config) -> Daemon {
    Daemon::start(config).await.expect("daemon starts")
}

/// Starts the daemon with its scheduler (and `Retry-After`) on a manual clock standing at
/// `now` (RFC 3339), so window tests never depend on the time of day they run at.
pub async fn start_at(config: &Config, now: &str) -> (Daemon, Arc<ManualClock>) {
    let now: jiff::Timestamp = now.parse().expect("an RFC 3339 instant");
    let clock = Arc::new(ManualClock::new(now));
    let daemon = Daemon::start_with_clock(config, clock.clone())
        .await
        .expect("daemon starts");
    (daemon, clock)
}

/// A plain-HTTP viewer URL for `path` (which starts with `/`).
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// An HTTP/1.1 client that does not follow redirects or use proxies.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(IO_TIMEOUT)
        .http1_only()
        .build()
        .expect("client")
}

/// A plain HTTP/1.1 `GET` of `path` (which starts with `/`) from a viewer listener.
pub async fn get(addr: SocketAddr, path: &str) -> reqwest::Response {
    client()
        .get(url(addr, path))
        .send()
        .await
        .unwrap_or_else(|err| panic!("GET {path}: {err}"))
}

/// The body of a plain GET of `path`, whatever its status (compare it to the bytes
/// expected).
pub async fn served(addr: SocketAddr, path: &str) -> Vec<u8> {
    get(addr, path)
        .await
        .bytes()
        .await
        .expect("a whole body")
        .to_vec()
}

/// An HTTP/2 client speaking h2c with prior knowledge.
pub fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(IO_TIMEOUT)
        .http2_prior_knowledge()
        .build()
        .expect("client")
}

/// Sends raw bytes on a fresh connection, half-closes, and returns everything the server
/// sends until it closes (bounded by [`IO_TIMEOUT`]).
/// Sends raw bytes on a fresh connection, half-closes it, and returns every byte the server
/// sends until it closes (bounded by [`IO_TIMEOUT`]).
pub async fn raw_bytes(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may close before reading everything (an oversized head): that is an answer.
    let _ = stream.write_all(request).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut answer)).await;
    answer
}

pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    String::from_utf8_lossy(&raw_bytes(addr, request).await).into_owned()
}

/// Sends raw bytes on a fresh connection without half-closing (as a pipelining client
/// does), and returns everything the server sends until it closes.
pub async fn raw_open(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    read_to_close(&mut stream).await
}

/// Sends one request on an open connection and reads exactly one response (head and a
/// `Content-Length` body), returning it as text.
pub async fn exchange(stream: &mut TcpStream, request: &[u8]) -> String {
    stream.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        if let Some(head_end) = answer.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if answer.len() >= head_end + 4 + length {
                break;
            }
        }
        let read = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buffer))
            .await
            .expect("response within the timeout")
            .expect("read");
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Reads until the peer closes, bounded by [`IO_TIMEOUT`].
pub async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of the first response in a raw answer.
pub fn status_of(raw_answer: &str) -> u16 {
    raw_answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw_answer:?}"))
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
}

pub fn make_cert(dir: &Path) -> TestCert {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let certified = rcgen::generate_simple_self_signed(names).expect("rcgen");
    let cert_pem = certified.cert.pem();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, &cert_pem).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    TestCert {
        cert,
        key,
        cert_pem,
    }
}

/// `GET /v1/status` of the admin listener at `admin`.
pub async fn admin_status(admin: SocketAddr) -> serde_json::Value {
    client()
        .get(format!("http://{admin}/v1/status"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("status JSON")
}

/// Fills now (operator override), waits until the fill is done for manifest `id`, then
/// returns to the windows and waits for serving; the status at "done".
pub async fn fill_until_done(daemon: &Daemon, id: &str) -> serde_json::Value {
    use tidecache::schedule::{Mode, Override};
    daemon
        .set_override(Override::Fill)
        .await
        .expect("override fill");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let done = loop {
        let status = admin_status(daemon.admin_addr).await;
        if status["fill"]["state"] == "done" && status["fill"]["manifest_id"] == id {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fill not done in time: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    daemon
        .set_override(Override::Auto)
        .await
        .expect("override auto");
    wait_for_mode(daemon, |state| state.mode == Mode::Serving).await;
    done
}

/// A manifest (CONTRACT section 3) listing `objects` under `base_url`.
pub fn manifest_json<P: AsRef<str>, D: AsRef<[u8]>>(
    id: &str,
    base_url: &str,
    objects: &[(P, D)],
) -> String {
    let objects: Vec<serde_json::Value> = objects
        .iter()
        .map(|(path, data)| {
            serde_json::json!({
                "path": path.as_ref(),
                "size": data.as_ref().len(),
                "sha256": sha256_hex(data.as_ref()),
            })
        })
        .collect();
    serde_json::json!({"version": 1, "id": id, "base_url": base_url, "objects": objects})
        .to_string()
}

/// Fetches the admin `/metrics` text.
pub async fn metrics_text(daemon: &Daemon) -> String {
    client()
        .get(format!("http://{}/metrics", daemon.admin_addr))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}
