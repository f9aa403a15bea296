//! Connection limits: slow senders, idle connections, `max_connections`, and graceful drain.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
fn raise_open_file_limit() -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    getrlimit(Resource::Nofile)
        .current
        .map_or(usize::MAX, |current| current as usize)
}

const LIMITS: &str = "[limits]\nheader_timeout = \"1s\"\nidle_timeout = \"2s\"\nmax_connections = 3\nshutdown_timeout = \"5s\"\n";

async fn limited_box() -> (TestBox, tidecache::daemon::Daemon) {
    let test_box = TestBox::new();
    let config = test_box.config(1, LIMITS);
    seed_all(
        &config,
        &[("a.ts", b"segment".to_vec()), ("big.ts", pattern(4 << 20))],
    );
    let daemon = start(&config).await;
    (test_box, daemon)
}

/// How long until the server closes a connection we hold open (bounded by [`IO_TIMEOUT`]).
async fn time_until_closed(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut sink)).await;
    started.elapsed()
}

/// Opens `count` connections to `addr`, each answered 200 for `/a.ts`, and keeps them.
async fn hold_answered_connections(
    addr: std::net::SocketAddr,
    count: usize,
    held: &mut Vec<TcpStream>,
) {
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let answer = exchange(&mut stream, b"GET /a.ts HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        held.push(stream);
    }
}

/// A new connection to `addr` is closed within a second, its request unanswered.
async fn assert_refused_at_once(addr: std::net::SocketAddr) {
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /a.ts HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(IO_TIMEOUT, extra.read_to_end(&mut answer)).await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(1),
        "refused fast, took {waited:?}"
    );
    assert!(answer.is_empty(), "refused without an answer: {answer:?}");
}

#[tokio::test]
async fn slow_header_senders_are_cut_at_header_timeout() {
    let (_box, daemon) = limited_box().await;
    let addr = daemon.viewer_addrs[0];

    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"GET /a.ts HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let waited = time_until_closed(&mut partial).await;
    assert!(
        waited < Duration::from_secs(4),
        "partial headers held {waited:?}"
    );

    let mut silent = TcpStream::connect(addr).await.unwrap();
    let waited = time_until_closed(&mut silent).await;
    assert!(
        waited < Duration::from_secs(4),
        "silent connection held {waited:?}"
    );

    let mut trickle = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut cut = false;
    for byte in b"GET /a.ts HTTP/1.1\r\nHost: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n" {
        if trickle.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = if cut {
        started.elapsed()
    } else {
        started.elapsed() + time_until_closed(&mut trickle).await
    };
    assert!(
        waited < Duration::from_secs(9),
        "a byte every 100 ms held the connection {waited:?}"
    );

    let response = get(addr, "/a.ts").await;
    assert_eq!(response.status(), StatusCode::OK);
    daemon.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let (_box, daemon) = limited_box().await;
    let mut stream = TcpStream::connect(daemon.viewer_addrs[0]).await.unwrap();
    let answer = exchange(&mut stream, b"GET /a.ts HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.ends_with("segment"), "{answer:?}");
    // Waiting longer than header_timeout between requests is fine: that is idle time.
    tokio::time::sleep(Duration::from_millis(1400)).await;
    let answer = exchange(&mut stream, b"GET /a.ts HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        answer.ends_with("segment"),
        "kept alive past header_timeout: {answer:?}"
    );
    let waited = time_until_closed(&mut stream).await;
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "idle connection closed after {waited:?}, idle_timeout is 2s"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_half_sent_second_head_is_cut_at_the_header_timeout_not_the_idle_one() {
    // The fast path moves its head timer only when it would fire after the deadline, and
    // sets it forward when it fires early. Here it is set forward to the idle deadline (5 s
    // after the first answer) when the accept's header deadline passes during the idle wait;
    // the next head's first byte must then bring it back to the header timeout (1 s).
    let test_box = TestBox::new();
    let config = test_box.config(
        1,
        "[limits]\nheader_timeout = \"1s\"\nidle_timeout = \"5s\"\n",
    );
    seed_all(&config, &[("a.ts", b"segment".to_vec())]);
    let daemon = start(&config).await;
    let mut stream = TcpStream::connect(daemon.viewer_addrs[0]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = exchange(&mut stream, b"GET /a.ts HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.ends_with("segment"), "{answer:?}");
    // Past the accept's header deadline: the timer fires early and is set to the idle one.
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Part of a head, then silence: only the timer can cut it (a dribbling client is also
    // caught by the look at the clock before each read).
    stream
        .write_all(b"GET /a.ts HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let waited = time_until_closed(&mut stream).await;
    assert!(
        waited < Duration::from_millis(2500),
        "a second head left half sent held the connection {waited:?}; header_timeout is 1 s \
         (the idle deadline would cut it after about 3.7 s)"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_max_connections_are_refused_and_others_kept() {
    let (_box, daemon) = limited_box().await;
    let addr = daemon.viewer_addrs[0];
    let mut held = Vec::new();
    hold_answered_connections(addr, 3, &mut held).await;
    assert_refused_at_once(addr).await;

    // The held connections still work.
    let answer = exchange(&mut held[0], b"GET /a.ts HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.ends_with("segment"), "{answer:?}");
    let metrics = metrics_text(&daemon).await;
    assert!(
        metrics.lines().any(
            |line| line.starts_with("tidecache_connections_refused_total ")
                && !line.ends_with(" 0")
        ),
        "refusal counted"
    );
    drop(held);
    eventually("the held connections are closed", || async {
        metric_value(&metrics_text(&daemon).await, "tidecache_open_connections") == Some(0.0)
    })
    .await;
    let response = get(addr, "/a.ts").await;
    assert_eq!(response.status(), StatusCode::OK, "a slot is free again");
    daemon.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_response_finish_and_stops_accepting() {
    let (_box, daemon) = limited_box().await;
    let addr = daemon.viewer_addrs[0];
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /big.ts HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 1024];
    let read = stream.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..read]).starts_with("HTTP/1.1 200"));

    let stopping = tokio::spawn(daemon.shutdown());
    eventually("no new connections once stopping", || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    let mut rest = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut rest))
        .await
        .expect("response finishes")
        .unwrap();
    let head_end = first[..read]
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("head")
        + 4;
    assert_eq!(
        read - head_end + rest.len(),
        4 << 20,
        "whole body delivered"
    );
    assert!(stopping.await.unwrap(), "drained within the bound");
}

#[tokio::test]
async fn a_download_stalled_past_the_shutdown_timeout_is_cut_and_shutdown_returns() {
    let test_box = TestBox::new();
    let mut config = test_box.config(
        1,
        "[limits]\nidle_timeout = \"60s\"\nshutdown_timeout = \"1s\"\n",
    );
    config.http.workers = 2;
    seed(&config, &[("big.ts", &pattern(16 << 20))]);
    let daemon = start(&config).await;
    let mut stalled = TcpStream::connect(daemon.viewer_addrs[0]).await.unwrap();
    stalled
        .write_all(b"GET /big.ts HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 1024];
    let read = stalled.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..read]).starts_with("HTTP/1.1 200"));

    let started = Instant::now();
    let drained = tokio::time::timeout(IO_TIMEOUT, daemon.shutdown())
        .await
        .expect("shutdown returns");
    assert!(!drained, "a reader that never reads cannot drain");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // The worker that held it has ended: the connection is closed, not left hanging.
    let waited = time_until_closed(&mut stalled).await;
    assert!(
        waited < Duration::from_secs(4),
        "still open after {waited:?}"
    );
}

#[tokio::test]
async fn four_workers_share_one_connection_limit_and_one_open_connections_gauge() {
    let test_box = TestBox::new();
    let mut config = test_box.config(1, "[limits]\nmax_connections = 40\n");
    config.http.workers = 4;
    seed(&config, &[("a.ts", &pattern(100_000))]);
    let daemon = start(&config).await;
    let addr = daemon.viewer_addrs[0];
    let mut tasks = Vec::new();
    for _ in 0..32 {
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            for _ in 0..5 {
                let answer = exchange(&mut stream, b"GET /a.ts HTTP/1.1\r\nHost: x\r\n\r\n").await;
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
            }
            stream
        }));
    }
    let mut held = Vec::new();
    for task in tasks {
        held.push(task.await.unwrap());
    }
    let metrics = metrics_text(&daemon).await;
    assert!(
        metrics
            .lines()
            .any(|line| line == "tidecache_open_connections 32"),
        "every worker counts into one gauge"
    );
    // 32 held + 8 more reach the limit of 40 across all workers; the 41st is refused.
    hold_answered_connections(addr, 8, &mut held).await;
    assert_refused_at_once(addr).await;
    drop(held);
    assert!(
        daemon.shutdown().await,
        "idle keep-alive connections drain at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_header_connections_are_cut_while_a_real_viewer_is_served() {
    let test_box = TestBox::new();
    let config = test_box.config(
        1,
        "[limits]\nheader_timeout = \"1s\"\nidle_timeout = \"10s\"\nmax_connections = 5000\n",
    );
    seed(&config, &[("a.ts", &pattern(64 * 1024))]);
    let daemon = start(&config).await;
    let addr = daemon.viewer_addrs[0];
    // Both ends of every connection live in this process: make room for them, as the unit's
    // LimitNOFILE does for the daemon, and scale down where the hard limit is low.
    let attackers_wanted = raise_open_file_limit().saturating_sub(256) / 2;
    let mut attackers = Vec::new();
    for _ in 0..attackers_wanted.min(1000) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream
            .write_all(b"GET /a.ts HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await;
        attackers.push(stream);
    }
    let client = client();
    let mut latencies = Vec::new();
    for _ in 0..100 {
        let started = Instant::now();
        let response = client.get(url(addr, "/a.ts")).send().await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        response.bytes().await.unwrap();
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    latencies.sort();
    let p95 = latencies[94];
    assert!(
        p95 < Duration::from_millis(200),
        "real viewer p95 {p95:?} under attack"
    );
    // Every attacker is cut at the header timeout, not held.
    let started = Instant::now();
    for mut stream in attackers {
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut sink)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "all cut by then"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_stalled_tls_handshake_does_not_hold_up_a_stop() {
    let test_box = TestBox::new();
    let cert = make_cert(test_box.dir.path());
    let config = test_box.config(
        1,
        &format!(
            "[https]\nlisten = [\"127.0.0.1:0\"]\ncert = {:?}\nkey = {:?}\n[limits]\nheader_timeout = \"10s\"\nshutdown_timeout = \"10s\"\n",
            cert.cert, cert.key
        ),
    );
    let daemon = start(&config).await;
    // A scanner: connects to :443, sends half a ClientHello, and waits.
    let mut scanner = TcpStream::connect(daemon.https_addrs[0]).await.unwrap();
    scanner
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let mut silent = TcpStream::connect(daemon.https_addrs[0]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let drained = tokio::time::timeout(IO_TIMEOUT, daemon.shutdown())
        .await
        .expect("shutdown returns");
    let took = started.elapsed();
    assert!(drained, "nothing was in flight");
    assert!(
        took < Duration::from_secs(1),
        "a stop waited {took:?} on handshakes"
    );
    for stream in [&mut scanner, &mut silent] {
        let waited = time_until_closed(stream).await;
        assert!(
            waited < Duration::from_secs(1),
            "still open after {waited:?}"
        );
    }
}

#[tokio::test]
async fn a_connection_whose_first_read_is_a_p_keeps_its_header_timeout_on_hyper() {
    // On hyper's path (HTTPS, or sendfile off), a first read of just `P` could be the
    // HTTP/2 preface or `PUT`; taken for HTTP/2, the connection's later request heads never
    // started the header timer, and a trickle held it for as long as it trickled.
    let test_box = TestBox::new();
    let mut config = test_box.config(
        1,
        "[limits]\nheader_timeout = \"1s\"\nidle_timeout = \"30s\"\n",
    );
    config.http.sendfile = false;
    let daemon = start(&config).await;
    let mut stream = TcpStream::connect(daemon.viewer_addrs[0]).await.unwrap();
    stream.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = exchange(
        &mut stream,
        b"UT /a.ts HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer:?}");
    let started = Instant::now();
    let mut cut = false;
    for byte in b"GET /a.ts HTTP/1.1\r\nHost: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"
    {
        if stream.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = if cut {
        started.elapsed()
    } else {
        started.elapsed() + time_until_closed(&mut stream).await
    };
    assert!(
        waited < Duration::from_secs(3),
        "a trickled second head held the connection {waited:?}"
    );
    daemon.shutdown().await;
}
