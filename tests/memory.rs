//! Memory bounds against hostile viewers, measured on the real binary's resident set
//! (`/proc/PID/status`): the budgets the README states for the defaults.

mod common;

use std::time::Duration;

use common::process::{Running, signal, spawn_serve, wait_with_timeout};
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Connections a hostile HTTP/2 client opens, and streams it asks for on each.
const H2_CONNECTIONS: usize = 8;
const H2_STREAMS: usize = 256;
/// What they may cost together, above the daemon's resident set before them: 128 streams
/// per connection (the rest are refused), whose queued file pieces the connection's queue
/// budget holds to 2 MiB, plus stream state (measured: +29 to +37 MB; +88 MB with only the h2
/// settings; with hyper's default 400 KiB buffers, 256 streams and 128 KiB pieces +876 MB).
const H2_BUDGET_MB: u64 = 60;

/// Many hostile connections against a small pool: queued bytes stay within the pool plus,
/// per connection, its 256 KiB share and one 4 KiB extra piece per stream, taken while its
/// socket still drained (16 + 48 x (0.25 + 0.5) = 52 MiB here), plus about 0.8 MB of stream
/// state a connection; about 10 MiB a connection, 480 MiB, before the pool.
const MANY_CONNECTIONS: usize = 48;
const MANY_POOL_MIB: u64 = 16;
const MANY_BUDGET_MB: u64 = 120;

/// A burst of first GETs and HEADs for cold objects as large as the RAM cache's quarter.
const COLD_OBJECTS: usize = 24;
const COLD_OBJECT_BYTES: usize = 4 << 20;
/// With `[cache] ram = "16MiB"`, the cache holds at most 16 MiB and loads in flight at most
/// 4 MiB; the rest of the burst streams from disk. Before the cap, every first request read
/// its object whole (96 MiB here, HEADs included).
const COLD_BUDGET_MB: u64 = 50;

/// The largest HTTP/2 flow-control window (2^31 - 1).
const WINDOW: u32 = (1 << 31) - 1;

/// What a hostile h2c client sends before it stops reading: the preface, settings that open
/// every window as wide as the protocol allows, and `streams` GETs of `path`.
fn hostile_h2_requests(path: &str, streams: usize) -> Vec<u8> {
    let mut out = h2::PREFACE.to_vec();
    // SETTINGS: ENABLE_PUSH = 0, INITIAL_WINDOW_SIZE = 2^31 - 1.
    let mut settings = vec![0, 2, 0, 0, 0, 0, 0, 4];
    settings.extend_from_slice(&WINDOW.to_be_bytes());
    out.extend(h2::frame(4, 0, 0, &settings));
    // The connection window too (it starts at 65535 whatever the settings say).
    out.extend(h2::frame(8, 0, 0, &(WINDOW - 65_535).to_be_bytes()));
    for number in 0..streams {
        out.extend(h2::get(1 + 2 * number as u32, path));
    }
    out
}

/// Resident and peak resident (high-water mark) memory of a process, in MB. A process
/// whose figures cannot be read fails the test: a bound checked against 0 proves nothing.
fn memory_mb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|err| panic!("/proc/{pid}/status: {err}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb / 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    let (resident, peak) = (field("VmRSS:"), field("VmHWM:"));
    assert!(resident > 0 && peak >= resident, "{status}");
    (resident, peak)
}

/// Starts the binary on a box holding `objects`, with `extra` configuration.
fn serve(test_box: &TestBox, extra: &str, objects: &[(String, Vec<u8>)]) -> Running {
    let config = test_box.config(1, extra);
    seed_all(&config, objects);
    let file = test_box.config_file("tidecache.toml", "listen = [\"127.0.0.1:0\"]", extra);
    spawn_serve(&file)
}

fn stop(mut running: Running) {
    signal(&running.child, "TERM");
    assert_eq!(wait_with_timeout(&mut running.child), Some(0));
}

/// Opens `connections` hostile HTTP/2 connections asking for `streams` GETs of `path` each;
/// returns them (unread) and the daemon's peak resident set while they fill what they can.
async fn stall_h2_connections(
    running: &Running,
    path: &str,
    connections: usize,
    streams: usize,
) -> (Vec<TcpStream>, u64) {
    let pid = running.child.id();
    let mut held = Vec::new();
    for _ in 0..connections {
        let mut tcp = TcpStream::connect(running.viewer).await.unwrap();
        tcp.write_all(&hostile_h2_requests(path, streams))
            .await
            .unwrap();
        // Never read: the connection's windows say "send everything", its socket takes
        // nothing once the kernel's buffers are full.
        held.push(tcp);
    }
    // Let the server fill every send buffer it will; the peak is the high-water mark.
    let mut peak = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        peak = peak.max(memory_mb(pid).1);
    }
    (held, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_that_stop_reading_cost_bounded_memory() {
    let test_box = TestBox::new();
    let object = vec![("big.ts".to_owned(), pattern(16 << 20))];
    // No RAM cache: the bodies stream from the file, as for objects over `max_object`
    // (a cached object is one shared buffer, whatever the streams).
    let running = serve(&test_box, "[cache]\nram = \"0\"\n", &object);
    let (before, _) = memory_mb(running.child.id());
    let (held, peak) = stall_h2_connections(&running, "/big.ts", H2_CONNECTIONS, H2_STREAMS).await;
    println!(
        "{H2_CONNECTIONS} h2 connections x {H2_STREAMS} unread streams of a 16 MiB object: resident {before} MB -> {peak} MB (budget +{H2_BUDGET_MB} MB)"
    );
    assert!(
        peak.saturating_sub(before) < H2_BUDGET_MB,
        "resident memory grew from {before} MB to {peak} MB"
    );
    drop(held);
    stop(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_stalled_connections_share_one_queue_budget_and_a_viewer_still_streams() {
    let test_box = TestBox::new();
    let size = 16 << 20;
    let object = vec![("big.ts".to_owned(), pattern(size))];
    let running = serve(
        &test_box,
        &format!("[cache]\nram = \"0\"\n[limits]\nmax_queued_bytes = \"{MANY_POOL_MIB}MiB\"\n"),
        &object,
    );
    let (before, _) = memory_mb(running.child.id());
    let (held, peak) =
        stall_h2_connections(&running, "/big.ts", MANY_CONNECTIONS, H2_STREAMS).await;
    println!(
        "{MANY_CONNECTIONS} h2 connections x {H2_STREAMS} unread streams, max_queued_bytes = {MANY_POOL_MIB}MiB: resident {before} MB -> {peak} MB (budget +{MANY_BUDGET_MB} MB)"
    );
    assert!(
        peak.saturating_sub(before) < MANY_BUDGET_MB,
        "resident memory grew from {before} MB to {peak} MB"
    );
    // The pool is taken by strangers; a viewer still gets its whole object, over HTTP/2
    // (bounded by the pool) and over HTTP/1.1 (the fast path does not queue).
    for client in [h2c_client(), client()] {
        let response = client
            .get(url(running.viewer, "/big.ts"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = response.bytes().await.unwrap();
        assert_eq!(body.len(), size, "a whole body while the pool is held");
    }
    drop(held);
    stop(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_first_requests_for_cold_objects_does_not_read_them_all_into_ram() {
    let test_box = TestBox::new();
    let objects: Vec<(String, Vec<u8>)> = (0..COLD_OBJECTS)
        .map(|number| {
            let mut data = pattern(COLD_OBJECT_BYTES);
            data[0] = number as u8;
            (format!("cold/{number}.ts"), data)
        })
        .collect();
    let running = serve(&test_box, "[cache]\nram = \"16MiB\"\n", &objects);
    let pid = running.child.id();
    let (before, _) = memory_mb(pid);
    let client = client();
    let requests = objects.iter().flat_map(|(path, _)| {
        let url = url(running.viewer, &format!("/{path}"));
        [client.head(&url).send(), client.get(&url).send()]
    });
    let mut answered = Vec::new();
    for request in requests {
        answered.push(tokio::spawn(async move {
            let response = request.await.unwrap();
            let status = response.status();
            let body = response.bytes().await.unwrap();
            (status, body.len())
        }));
    }
    for answer in answered {
        let (status, _) = answer.await.unwrap();
        assert!(status.is_success());
    }
    let (_, peak) = memory_mb(pid);
    println!(
        "{COLD_OBJECTS} cold {} MiB objects, a HEAD and a GET each at once, [cache] ram = 16MiB: resident {before} MB, peak {peak} MB (budget +{COLD_BUDGET_MB} MB)",
        COLD_OBJECT_BYTES >> 20
    );
    assert!(
        peak.saturating_sub(before) < COLD_BUDGET_MB,
        "peak resident memory went from {before} MB to {peak} MB"
    );
    stop(running);
}

/// One h2c connection asking for `streams` GETs of `path` and reading only the first, as a
/// player that opened many and reads them in turn: window updates for stream 1 and the
/// connection only. Returns the bytes of stream 1 when it ends, `None` if it stalls.
async fn read_first_of_many_streams(
    addr: std::net::SocketAddr,
    path: &str,
    streams: usize,
) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    let mut hello = h2::PREFACE.to_vec();
    hello.extend(h2::frame(4, 0, 0, &[]));
    for number in 0..streams {
        hello.extend(h2::get(1 + 2 * number as u32, path));
    }
    tcp.write_all(&hello).await.ok()?;
    let mut got = 0;
    loop {
        let mut head = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut head))
            .await
            .ok()?
            .ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.ok()?;
        match kind {
            // SETTINGS from the server: acknowledge.
            4 if flags & 1 == 0 => tcp.write_all(&h2::frame(4, 1, 0, &[])).await.ok()?,
            // DATA: the connection's window always, the stream's only for stream 1.
            0 if len > 0 => {
                let increment = (len as u32).to_be_bytes();
                let mut updates = h2::frame(8, 0, 0, &increment);
                if stream == 1 {
                    got += len;
                    updates.extend(h2::frame(8, 0, 1, &increment));
                }
                tcp.write_all(&updates).await.ok()?;
            }
            _ => {}
        }
        if kind == 0 && stream == 1 && flags & 1 == 1 {
            return Some(got);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_reading_one_of_many_streams_is_not_stalled_by_the_queue_budget() {
    let size = 4 << 20;
    for pool in ["256MiB", "0"] {
        let test_box = TestBox::new();
        let object = vec![("big.ts".to_owned(), pattern(size))];
        let running = serve(
            &test_box,
            &format!("[cache]\nram = \"0\"\n[limits]\nmax_queued_bytes = \"{pool}\"\n"),
            &object,
        );
        let got = read_first_of_many_streams(running.viewer, "/big.ts", 128).await;
        assert_eq!(
            got,
            Some(size),
            "max_queued_bytes = {pool}: stream 1 of 128, read in turn, stalled"
        );
        stop(running);
    }
}
