//! `/readyz` means "worth sending viewers to" (CONTRACT section 5): a new, empty box is never
//! ready; a box becomes ready once it holds its content (a fill pass without failures, or
//! `fill.ready_share` of the manifest's bytes); and a new manifest alone never makes a serving
//! box unready, across restarts too.

mod common;

use std::time::Duration;

use common::origin::{Fault, Origin};
use common::*;
use reqwest::StatusCode;
use tidecache::config::Config;
use tidecache::daemon::Daemon;
use tidecache::schedule::{Mode, Override};

/// `/readyz`'s status and body.
async fn readiness(daemon: &Daemon) -> (StatusCode, String) {
    let response = client()
        .get(format!("http://{}/readyz", daemon.admin_addr))
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

/// Pushes a manifest named `id` of `objects`, fetched from `origin`.
async fn push_objects<P: AsRef<str>, D: AsRef<[u8]>>(
    daemon: &Daemon,
    token: &str,
    origin: &Origin,
    id: &str,
    objects: &[(P, D)],
) {
    push(
        daemon,
        token,
        manifest_json(id, &origin.base_url(), objects),
    )
    .await;
}

/// `count` segments `<prefix>/<n>.ts` of distinct sizes from `size` up.
fn segments(prefix: &str, count: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|number| (format!("{prefix}/{number}.ts"), pattern(size + number)))
        .collect()
}

async fn push(daemon: &Daemon, token: &str, body: String) {
    let response = client()
        .put(format!("http://{}/v1/manifest", daemon.admin_addr))
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

fn box_config(test_box: &TestBox, fill: &str) -> (Config, String) {
    let (token_file, token) = test_box.token_file();
    let mut config = test_box.config(
        2,
        &format!("[schedule]\ndrain = \"0s\"\n[fill]\nretry_delay = \"10ms\"\nretries = 1\n{fill}"),
    );
    config.admin.token_file = Some(token_file);
    (config, token)
}

#[tokio::test]
async fn a_new_box_waits_for_its_content_and_a_new_manifest_never_withdraws_it() {
    let origin = Origin::start().await;
    let night_1 = segments("t1", 20, 5000);
    origin.put_all(&night_1);
    let test_box = TestBox::new();
    let (config, token) = box_config(&test_box, "");
    let daemon = start(&config).await;

    let (status, body) = readiness(&daemon).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("no content: no manifest"), "{body}");
    assert_eq!(
        metric_value(&metrics_text(&daemon).await, "tidecache_ready"),
        Some(0.0)
    );

    // Serving, with a manifest but nothing of it held: still no content.
    push_objects(&daemon, &token, &origin, "night-1", &night_1).await;
    let (status, body) = readiness(&daemon).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("no content: manifest night-1"), "{body}");

    fill_until_done(&daemon, "night-1").await;
    let (status, body) = readiness(&daemon).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        metric_value(&metrics_text(&daemon).await, "tidecache_ready"),
        Some(1.0)
    );

    // Tomorrow's manifest is all new: the box holds none of it, and stays ready.
    let night_2 = segments("t2", 20, 7000);
    origin.put_all(&night_2);
    push_objects(&daemon, &token, &origin, "night-2", &night_2).await;
    let (status, body) = readiness(&daemon).await;
    assert_eq!(status, StatusCode::OK, "a new manifest alone: {body}");
    daemon.shutdown().await;

    // Nor after a restart with that manifest in force and none of it held.
    let daemon = start(&config).await;
    let (status, body) = readiness(&daemon).await;
    assert_eq!(status, StatusCode::OK, "after a restart: {body}");
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_pass_with_failures_makes_the_box_ready_only_at_its_share_of_the_bytes() {
    let origin = Origin::start().await;
    // 90 % of the bytes arrive; the rest is missing at the origin.
    let big = pattern(90_000);
    let lost = pattern(10_000);
    origin.put("big.mp4", &big, Fault::None);
    origin.put("lost.mp4", &lost, Fault::NotFound);
    let objects = [("big.mp4", &big[..]), ("lost.mp4", &lost[..])];
    let test_box = TestBox::new();
    let (config, token) = box_config(&test_box, "");
    let daemon = start(&config).await;
    push_objects(&daemon, &token, &origin, "night-1", &objects).await;
    let done = fill_until_done(&daemon, "night-1").await;
    assert_eq!(done["fill"]["objects_failed"], 1);
    let (status, body) = readiness(&daemon).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("holds 90000 of 100000 bytes, 90.0 %") && body.contains("95 %"),
        "says how far it is: {body}"
    );
    daemon.shutdown().await;

    // An operator accepts 80 %: at start the stores are found to hold enough.
    let (mut config, _) = box_config(&test_box, "ready_share = 0.8\n");
    config.state_dir = test_box.dir.path().join("state");
    let daemon = start(&config).await;
    let (status, body) = readiness(&daemon).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_box_whose_latch_is_lost_is_ready_at_start_when_its_stores_hold_the_manifest() {
    // A box filled by a version without the latch (or whose save failed) must not be
    // withdrawn by an upgrade.
    let origin = Origin::start().await;
    let objects = segments("t", 10, 3000);
    origin.put_all(&objects);
    let test_box = TestBox::new();
    let (config, token) = box_config(&test_box, "");
    let daemon = start(&config).await;
    push_objects(&daemon, &token, &origin, "night-1", &objects).await;
    fill_until_done(&daemon, "night-1").await;
    daemon.shutdown().await;
    std::fs::remove_file(config.state_dir.join("stocked")).expect("the latch was saved");

    let daemon = start(&config).await;
    let (status, body) = readiness(&daemon).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(config.state_dir.join("stocked").exists(), "saved again");
    daemon.shutdown().await;

    // Emptied stores with the latch gone: not ready.
    std::fs::remove_file(config.state_dir.join("stocked")).unwrap();
    for number in 0..2 {
        std::fs::remove_dir_all(test_box.store_path(number)).unwrap();
    }
    let daemon = start(&config).await;
    let (status, body) = readiness(&daemon).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_box_that_serves_while_filling_stays_ready_through_the_fill() {
    for (during_fill, expected) in [
        ("serve", StatusCode::OK),
        ("refuse", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let test_box = TestBox::new();
        let config = test_box.config(
            1,
            &format!("[schedule]\ndrain = \"0s\"\nduring_fill = \"{during_fill}\"\n"),
        );
        seed(&config, &[("a.ts", b"segment")]);
        let daemon = start(&config).await;
        daemon.set_override(Override::Fill).await.unwrap();
        wait_for_mode(&daemon, |state| state.mode == Mode::Filling).await;
        let (status, body) = readiness(&daemon).await;
        assert_eq!(status, expected, "during_fill = {during_fill}: {body}");
        tokio::time::timeout(Duration::from_secs(10), daemon.shutdown())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn bytes_in_flight_never_count_and_an_empty_manifest_never_makes_a_box_ready() {
    // Every object fails: a big one whose bytes are not what the manifest says, sent slowly
    // so that it is in flight (past fill.ready_share of the bytes) while small ones, also
    // wrong, keep failing beside it.
    let origin = Origin::start().await;
    let big = pattern(2 << 20);
    let mut claimed = big.clone();
    claimed[0] ^= 1;
    origin.put(
        "big.ts",
        &big,
        Fault::Drip {
            chunk: 64 * 1024,
            pause: Duration::from_millis(25),
        },
    );
    let mut objects: Vec<(String, Vec<u8>)> = vec![("big.ts".to_owned(), claimed)];
    for number in 0..25 {
        let path = format!("wrong/{number}.ts");
        origin.put(
            &path,
            b"xy",
            Fault::Drip {
                chunk: 1,
                pause: Duration::from_millis(30),
            },
        );
        objects.push((path, b"zz".to_vec()));
    }
    let test_box = TestBox::new();
    let (config, token) = box_config(
        &test_box,
        "concurrency = 2
ready_share = 0.5
",
    );
    let daemon = start(&config).await;
    push_objects(&daemon, &token, &origin, "night-1", &objects).await;
    let done = fill_until_done(&daemon, "night-1").await;
    assert_eq!(done["fill"]["objects_failed"], 26);
    let (status, body) = readiness(&daemon).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("holds 0 of"), "{body}");

    // A pass over an empty manifest completes without a failure, and holds nothing.
    push_objects::<&str, &[u8]>(&daemon, &token, &origin, "empty", &[]).await;
    fill_until_done(&daemon, "empty").await;
    let (status, body) = readiness(&daemon).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("lists no object"), "{body}");
    daemon.shutdown().await;
    assert!(!config.state_dir.join("stocked").exists());
}

#[tokio::test]
async fn an_upgrade_keeps_a_serving_box_ready_with_tonights_manifest_pushed() {
    let origin = Origin::start().await;
    let night_1 = segments("t1", 10, 2000);
    let night_2 = segments("t2", 10, 4000);
    origin.put_all(&night_1);
    origin.put_all(&night_2);
    let test_box = TestBox::new();
    let (config, token) = box_config(&test_box, "");
    let daemon = start(&config).await;
    push_objects(&daemon, &token, &origin, "night-1", &night_1).await;
    fill_until_done(&daemon, "night-1").await;
    daemon.shutdown().await;
    // What a version before the latch leaves: no latch, tonight's manifest saved as JSON.
    std::fs::remove_file(config.state_dir.join("stocked")).unwrap();
    std::fs::remove_file(config.state_dir.join("manifest.bin")).unwrap();
    std::fs::write(
        config.state_dir.join("manifest.json"),
        manifest_json("night-2", &origin.base_url(), &night_2),
    )
    .unwrap();
    let daemon = start(&config).await;
    let (status, body) = readiness(&daemon).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        admin_status(daemon.admin_addr).await["manifest"]["id"],
        "night-2"
    );
    daemon.shutdown().await;
    assert!(config.state_dir.join("manifest.bin").exists(), "converted");
    assert!(!config.state_dir.join("manifest.json").exists());
}

#[tokio::test]
async fn a_latch_is_not_honoured_over_empty_stores_and_a_lowered_share_applies_on_reload() {
    let origin = Origin::start().await;
    let kept = pattern(60_000);
    let lost = pattern(40_000);
    origin.put("kept.ts", &kept, Fault::None);
    origin.put("lost.ts", &lost, Fault::NotFound);
    let objects = [("kept.ts", &kept[..]), ("lost.ts", &lost[..])];
    let test_box = TestBox::new();
    let (config, token) = box_config(&test_box, "");
    let daemon = start(&config).await;
    push_objects(&daemon, &token, &origin, "night-1", &objects).await;
    fill_until_done(&daemon, "night-1").await;
    let (status, body) = readiness(&daemon).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "60 %: {body}");
    let (mut lowered, _) = box_config(&test_box, "ready_share = 0.5\n");
    lowered.admin.token_file = config.admin.token_file.clone();
    lowered.state_dir = config.state_dir.clone();
    lowered.admin.listen = config.admin.listen;
    lowered.http.listen = config.http.listen.clone();
    daemon.reload(&lowered).expect("reload");
    eventually("the lowered share applies", || async {
        readiness(&daemon).await.0 == StatusCode::OK
    })
    .await;
    daemon.shutdown().await;

    // The drives are replaced: the latch file stays, but empty stores are not content.
    for number in 0..2 {
        std::fs::remove_dir_all(test_box.store_path(number)).unwrap();
    }
    let daemon = start(&config).await;
    let (status, body) = readiness(&daemon).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("no content"), "{body}");
    daemon.shutdown().await;
}
