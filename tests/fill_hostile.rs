//! The fill against slow, silent and pushy origins: every wait of the fill ends when the
//! window ends, a new manifest arrives or the daemon stops, within `fill.stop_grace` or
//! `limits.shutdown_timeout` (plus a second of slack), whatever the origin does.

mod common;

use std::time::{Duration, Instant};

use common::origin::{Fault, Origin};
use common::*;
use reqwest::StatusCode;
use tidecache::config::{Config, ManifestUrl};
use tidecache::daemon::Daemon;
use tidecache::schedule::{Mode, Override};

/// Slack allowed over a configured bound: scheduling, a compaction, the test's own polling.
const SLACK: Duration = Duration::from_secs(1);
/// How long a stop may take here: every wait of the fill ends at once on a stop, well before
/// `limits.shutdown_timeout`, whose backstop (aborting the tasks) would hide a wait that
/// does not.
const PROMPT_STOP: Duration = Duration::from_millis(700);
/// `limits.shutdown_timeout` in these tests.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// `fill.stop_grace` in these tests.
const STOP_GRACE: Duration = Duration::from_secs(1);

struct FillBox {
    _test_box: TestBox,
    daemon: Daemon,
    token: String,
}

fn config(test_box: &TestBox, extra_fill: &str) -> Config {
    let (token_file, _) = test_box.token_file();
    let mut config = test_box.config(
        1,
        &format!(
            "[schedule]\ndrain = \"0s\"\n[limits]\nshutdown_timeout = \"{}s\"\n[fill]\nretry_delay = \"20ms\"\nstop_grace = \"{}s\"\n{extra_fill}",
            SHUTDOWN_TIMEOUT.as_secs(),
            STOP_GRACE.as_secs()
        ),
    );
    config.admin.token_file = Some(token_file);
    config
}

async fn fill_box(extra_fill: &str) -> FillBox {
    let test_box = TestBox::new();
    let config = config(&test_box, extra_fill);
    let daemon = start(&config).await;
    let (_, token) = test_box.token_file();
    FillBox {
        _test_box: test_box,
        daemon,
        token,
    }
}

async fn push(fill: &FillBox, body: &str) {
    let response = client()
        .put(format!("http://{}/v1/manifest", fill.daemon.admin_addr))
        .bearer_auth(&fill.token)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

/// Polls `check` until it holds; fails the test after `limit`.
async fn within<F, Fut>(limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits (up to 20 s) until `origin` has been asked for `path` `times` times.
async fn wait_for_requests(origin: &Origin, path: &str, times: usize) {
    within(Duration::from_secs(20), || async {
        origin.requests(path).len() >= times
    })
    .await;
}

/// Stops the daemon and returns how long that took; a stop that hangs fails the test.
async fn timed_shutdown(daemon: Daemon) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(60), daemon.shutdown())
        .await
        .expect("shutdown finished within a minute");
    started.elapsed()
}

async fn fill_status(daemon: &Daemon) -> serde_json::Value {
    admin_status(daemon.admin_addr).await["fill"].clone()
}

#[tokio::test]
async fn a_stop_during_a_dripping_manifest_pull_ends_within_the_shutdown_timeout() {
    let origin = Origin::start().await;
    let manifest = manifest_json("drip", &origin.base_url(), &[("a.ts", b"a")]);
    // Headers at once, then a byte a second: 2 minutes of manifest.
    origin.put(
        "manifest.json",
        manifest.as_bytes(),
        Fault::Drip {
            chunk: 1,
            pause: Duration::from_secs(1),
        },
    );
    let test_box = TestBox::new();
    let mut config = config(&test_box, "");
    config.fill.manifest_url = ManifestUrl::Http(format!("http://{}/manifest.json", origin.addr));
    let daemon = start(&config).await;
    daemon.set_override(Override::Fill).await.unwrap();
    wait_for_requests(&origin, "manifest.json", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let took = timed_shutdown(daemon).await;
    println!("stop during a dripping manifest pull: {took:?}");
    assert!(took <= PROMPT_STOP, "took {took:?}");
}

#[tokio::test]
async fn an_origin_that_never_answers_holds_neither_a_stop_nor_a_new_manifest() {
    let origin = Origin::start().await;
    let data = pattern(10_000);
    origin.put("silent.ts", &data, Fault::Hang);
    origin.put("next.ts", &data, Fault::None);
    let fill = fill_box("").await;
    push(
        &fill,
        &manifest_json("silent", &origin.base_url(), &[("silent.ts", &data)]),
    )
    .await;
    fill.daemon.set_override(Override::Fill).await.unwrap();
    wait_for_requests(&origin, "silent.ts", 1).await;

    // A new manifest mid-fill: its pass starts within stop_grace, not after the 30 s stall.
    let pushed = Instant::now();
    push(
        &fill,
        &manifest_json("next", &origin.base_url(), &[("next.ts", &data)]),
    )
    .await;
    within(Duration::from_secs(40), || async {
        fill_status(&fill.daemon).await["manifest_id"] == "next"
    })
    .await;
    let switched = pushed.elapsed();
    println!("new manifest's pass started {switched:?} after the push");
    assert!(switched <= STOP_GRACE + SLACK, "took {switched:?}");

    // And a stop while the silent origin is asked again.
    push(
        &fill,
        &manifest_json("silent-2", &origin.base_url(), &[("silent.ts", &data)]),
    )
    .await;
    wait_for_requests(&origin, "silent.ts", 2).await;
    let took = timed_shutdown(fill.daemon).await;
    println!("stop while an origin never answers: {took:?}");
    assert!(took <= PROMPT_STOP, "took {took:?}");
}

#[tokio::test]
async fn a_low_rate_cap_does_not_keep_the_fill_writing_after_the_window_ends() {
    let origin = Origin::start().await;
    let data = pattern(4 << 20);
    origin.put("big.ts", &data, Fault::None);
    // 64 KB/s: the object would take about a minute.
    let fill = fill_box("max_rate = \"64KB/s\"\n").await;
    push(
        &fill,
        &manifest_json("slow", &origin.base_url(), &[("big.ts", &data)]),
    )
    .await;
    fill.daemon.set_override(Override::Fill).await.unwrap();
    within(Duration::from_secs(20), || async {
        fill_status(&fill.daemon).await["bytes_done"].as_u64() > Some(100_000)
    })
    .await;
    let ended = Instant::now();
    fill.daemon.set_override(Override::Serve).await.unwrap();
    wait_for_mode(&fill.daemon, |state| state.mode == Mode::Serving).await;
    within(Duration::from_secs(60), || async {
        fill_status(&fill.daemon).await["state"] == "paused"
    })
    .await;
    let stopped = ended.elapsed();
    println!("fill paused {stopped:?} after the window ended (stop_grace {STOP_GRACE:?})");
    assert!(stopped <= STOP_GRACE + SLACK, "took {stopped:?}");
    let took = timed_shutdown(fill.daemon).await;
    assert!(took <= PROMPT_STOP, "took {took:?}");
}

/// `fill.max_rate` is paid a write batch (1 MiB) at a time; objects smaller than that, and
/// attempts an origin cuts short of it, pay too (found by a review: they flowed unpaced).
#[tokio::test]
async fn the_rate_cap_holds_for_objects_and_attempts_smaller_than_a_write_batch() {
    let origin = Origin::start().await;
    // 8 objects of 500 KB at 2 MB/s: the last one's turn comes 1.75 s in.
    let small: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("small{i}.ts"), pattern(500_000 + i)))
        .collect();
    // 4 objects of 1.8 MB, each first attempt cut at 900 KB (then resumed): 7.2 MB in
    // attempts of 900 KB, 3.6 s at 2 MB/s.
    let cut: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("cut{i}.ts"), pattern(1_800_000 + i)))
        .collect();
    for (path, data) in &small {
        origin.put(path, data, Fault::None);
    }
    for (path, data) in &cut {
        origin.put(
            path,
            data,
            Fault::CutFirst {
                n: 1,
                bytes: 900_000,
            },
        );
    }
    let fill = fill_box("max_rate = \"2MB/s\"\nretries = 5\n").await;
    for (id, objects, at_least) in [
        ("small", &small, Duration::from_millis(1500)),
        ("cut", &cut, Duration::from_millis(3000)),
    ] {
        push(&fill, &manifest_json(id, &origin.base_url(), objects)).await;
        let sent_before = origin.bytes_sent();
        let started = Instant::now();
        fill.daemon.set_override(Override::Fill).await.unwrap();
        // What crossed in the first 0.6 s: 1.2 MB at the cap, plus the batch (1 MiB) paid
        // at once, and slack. Paid after reading, the eight transfers took 4 MB at once.
        tokio::time::sleep_until((started + Duration::from_millis(600)).into()).await;
        let early = origin.bytes_sent() - sent_before;
        let done = fill_until_done(&fill.daemon, id).await;
        let took = started.elapsed();
        println!(
            "{id}: {} objects at 2 MB/s took {took:?}; {early} bytes sent in the first 0.6 s",
            objects.len()
        );
        assert_eq!(done["fill"]["objects_failed"], 0, "{done}");
        assert!(took >= at_least, "{id}: the cap was escaped: {took:?}");
        assert!(
            early <= 2_700_000,
            "{id}: a burst over the cap: {early} bytes in 0.6 s"
        );
    }
    fill.daemon.shutdown().await;
}

#[tokio::test]
async fn retry_after_on_503_is_honoured_before_the_next_attempt() {
    let origin = Origin::start().await;
    let data = pattern(20_000);
    origin.put("busy.ts", &data, Fault::RetryAfter { n: 1, seconds: 2 });
    let fill = fill_box("retries = 5\n").await;
    push(
        &fill,
        &manifest_json("busy", &origin.base_url(), &[("busy.ts", &data)]),
    )
    .await;
    let started = Instant::now();
    fill.daemon.set_override(Override::Fill).await.unwrap();
    wait_for_requests(&origin, "busy.ts", 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        origin.requests("busy.ts").len(),
        1,
        "asked again before the origin's Retry-After (the 20 ms backoff alone would have \
         used up every retry by now)"
    );
    let done = fill_until_done(&fill.daemon, "busy").await;
    assert_eq!(done["fill"]["objects_done"], 1);
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(origin.requests("busy.ts").len(), 2);
    fill.daemon.shutdown().await;
}

#[tokio::test]
async fn every_pushed_manifest_gets_its_pass_even_when_pushed_mid_pass() {
    // The review's race: push A and let it finish; push B with a slow object; push C while
    // B runs. C's pass must always start (it was skipped when a freed manifest's address
    // was reused). Run it many times over.
    let origin = Origin::start().await;
    let quick = pattern(1000);
    let slow = pattern(200_000);
    origin.put(
        "slow.ts",
        &slow,
        Fault::Drip {
            chunk: 10_000,
            pause: Duration::from_millis(100),
        },
    );
    let fill = fill_box("").await;
    fill.daemon.set_override(Override::Fill).await.unwrap();
    for round in 0..10 {
        let (a, b, c) = (
            format!("a-{round}"),
            format!("b-{round}"),
            format!("c-{round}"),
        );
        let quick_path = format!("quick-{round}.ts");
        origin.put(&quick_path, &quick, Fault::None);
        push(
            &fill,
            &manifest_json(&a, &origin.base_url(), &[(&quick_path, &quick)]),
        )
        .await;
        within(Duration::from_secs(20), || async {
            let status = fill_status(&fill.daemon).await;
            status["manifest_id"] == a.as_str() && status["state"] == "done"
        })
        .await;
        let slow_requests = origin.requests("slow.ts").len();
        push(
            &fill,
            &manifest_json(&b, &origin.base_url(), &[("slow.ts", &slow)]),
        )
        .await;
        wait_for_requests(&origin, "slow.ts", slow_requests + 1).await;
        push(
            &fill,
            &manifest_json(&c, &origin.base_url(), &[(&quick_path, &quick)]),
        )
        .await;
        within(Duration::from_secs(20), || async {
            let status = fill_status(&fill.daemon).await;
            status["manifest_id"] == c.as_str() && status["state"] == "done"
        })
        .await;
    }
    fill.daemon.shutdown().await;
}

#[tokio::test]
async fn a_window_that_ends_during_the_manifest_pull_gets_no_pass_while_serving() {
    let origin = Origin::start().await;
    let data = pattern(5_000);
    origin.put("a.ts", &data, Fault::None);
    let test_box = TestBox::new();
    let mut config = config(&test_box, "");
    config.fill.manifest_url = ManifestUrl::Http(format!("http://{}/manifest.json", origin.addr));
    // First night: the pulled manifest holds a.ts, and it is filled.
    origin.put(
        "manifest.json",
        manifest_json("with-a", &origin.base_url(), &[("a.ts", &data)]).as_bytes(),
        Fault::None,
    );
    let daemon = start(&config).await;
    fill_until_done(&daemon, "with-a").await;
    // Next night: the new manifest drops a.ts, and drips in over about 4 s.
    let without_a = manifest_json("without-a", &origin.base_url(), &[("b.ts", &data)]);
    origin.put("b.ts", &data, Fault::None);
    origin.put(
        "manifest.json",
        without_a.as_bytes(),
        Fault::Drip {
            chunk: without_a.len() / 40 + 1,
            pause: Duration::from_millis(100),
        },
    );
    let pulls = origin.requests("manifest.json").len();
    daemon.set_override(Override::Fill).await.unwrap();
    wait_for_requests(&origin, "manifest.json", pulls + 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The window ends mid-pull.
    daemon.set_override(Override::Serve).await.unwrap();
    wait_for_mode(&daemon, |state| state.mode == Mode::Serving).await;
    // Long after the drip would have finished: still serving, a.ts untouched.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let response = get(daemon.viewer_addrs[0], "/a.ts").await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "a pass ran while serving and deleted a.ts"
    );
    assert_eq!(
        origin.requests("b.ts").len(),
        0,
        "a transfer started while serving"
    );
    let took = timed_shutdown(daemon).await;
    assert!(took <= PROMPT_STOP, "took {took:?}");
}
