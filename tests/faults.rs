//! Faults: disks that lose files or whole stores while serving, origins that misbehave, and
//! request shapes used for smuggling. Nothing wrong is ever served and nothing is lost.

mod common;

use std::time::Duration;

use common::origin::{Fault, Origin};
use common::*;
use reqwest::StatusCode;
use tidecache::daemon::Daemon;

fn manifest(id: &str, base_url: &str, objects: &[(String, Vec<u8>)]) -> String {
    manifest_json(id, base_url, objects)
}

async fn status(daemon: &Daemon) -> serde_json::Value {
    admin_status(daemon.admin_addr).await
}

/// Pushes `body` (through the fill handle, as PUT /v1/manifest does), fills until done.
async fn fill(daemon: &Daemon, body: String, id: &str) -> serde_json::Value {
    daemon
        .fill()
        .accept(tidecache::fill::Received::Bytes(body.into()), u64::MAX)
        .await
        .unwrap();
    fill_until_done(daemon, id).await
}

fn objects(count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|number| {
            let mut data = pattern(3000 + number);
            data[0] = number as u8;
            (format!("t/seg_{number:02}.ts"), data)
        })
        .collect()
}

#[tokio::test]
async fn files_lost_or_truncated_behind_the_daemons_back_are_misses_and_refetched() {
    let origin = Origin::start().await;
    let objects = objects(6);
    origin.put_all(&objects);
    let test_box = TestBox::new();
    let daemon = start(&test_box.config(1, "[schedule]\ndrain = \"0s\"\n")).await;
    let body = manifest("one", &origin.base_url(), &objects);
    fill(&daemon, body.clone(), "one").await;
    let file = |index: usize| {
        test_box
            .store_path(0)
            .join("objects")
            .join(&objects[index].0)
    };
    std::fs::remove_file(file(0)).unwrap();
    std::fs::write(file(1), &objects[1].1[..100]).unwrap();
    let viewer = daemon.viewer_addrs[0];
    for index in [0, 1] {
        assert_eq!(
            get(viewer, &format!("/{}", objects[index].0))
                .await
                .status(),
            StatusCode::NOT_FOUND,
            "never a short or failed 200"
        );
    }
    assert_eq!(
        get(viewer, &format!("/{}", objects[2].0)).await.status(),
        StatusCode::OK
    );
    let done = fill(&daemon, body.replace("\"one\"", "\"two\""), "two").await;
    assert_eq!(
        done["fill"]["last_fill"]["stored"], 2,
        "the two damaged ones refetched"
    );
    for (path, data) in &objects[..2] {
        assert_eq!(&served(viewer, &format!("/{path}")).await[..], &data[..]);
    }
    daemon.shutdown().await;
}

/// Serves `t/a.ts` once (its open file is cached), truncates the file in place, and checks
/// that the next answer is cut short of its Content-Length and the one after is a 404.
async fn truncated_while_cached(extra: &str, sendfile: bool) {
    let test_box = TestBox::new();
    let mut config = test_box.config(1, extra);
    config.http.sendfile = sendfile;
    let data = pattern(50_000);
    seed(&config, &[("t/a.ts", &data)]);
    let daemon = start(&config).await;
    let viewer = daemon.viewer_addrs[0];
    let request = b"GET /t/a.ts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let first = raw(viewer, request).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first:?}");
    assert!(
        first.ends_with(&*String::from_utf8_lossy(&data)),
        "whole body"
    );

    // Same inode, shorter: the cached open file sees it, its size check at open does not run.
    let file = test_box.store_path(0).join("objects/t/a.ts");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(100)
        .unwrap();
    let cut = raw(viewer, request).await;
    // The fast path has sent the head when sendfile finds the file short. Through hyper the
    // body's first read may fail before hyper has flushed the head, and then the connection
    // closes with no answer at all: as good for the client (it retries), never a whole 200.
    assert!(
        cut.starts_with("HTTP/1.1 200") || (!sendfile && cut.is_empty()),
        "served from the cached file: {cut:?}"
    );
    let body_len = cut.len() - cut.find("\r\n\r\n").map_or(cut.len(), |end| end + 4);
    assert!(
        body_len < data.len(),
        "the client sees a short body against Content-Length, never a complete wrong 200"
    );
    assert_eq!(
        get(viewer, "/t/a.ts").await.status(),
        StatusCode::NOT_FOUND,
        "taken out of service; the next fill fetches it again"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_file_truncated_while_its_open_file_is_cached_cuts_one_answer_then_is_a_miss() {
    // The RAM cache off on both paths: it loads an object after its first request, and a load
    // that reads the truncated file finds it damaged (a 404 at once, which is right, but not
    // what this test is about, and racing the truncation made the test flaky).
    truncated_while_cached("[cache]\nram = \"0\"\n", true).await;
    truncated_while_cached("[cache]\nram = \"0\"\n", false).await;
}

#[tokio::test]
async fn a_store_that_vanishes_fails_alone_and_its_objects_are_replaced_by_the_next_fill() {
    let origin = Origin::start().await;
    let objects = objects(16);
    origin.put_all(&objects);
    let test_box = TestBox::new();
    let daemon = start(&test_box.config(2, "[schedule]\ndrain = \"0s\"\n")).await;
    let body = manifest("one", &origin.base_url(), &objects);
    fill(&daemon, body.clone(), "one").await;
    let on_store_1: Vec<&(String, Vec<u8>)> = objects
        .iter()
        .filter(|(path, _)| test_box.store_path(1).join("objects").join(path).exists())
        .collect();
    assert!(!on_store_1.is_empty() && on_store_1.len() < objects.len());
    std::fs::rename(
        test_box.store_path(1),
        test_box.dir.path().join("pulled-out"),
    )
    .unwrap();

    let viewer = daemon.viewer_addrs[0];
    for (path, data) in &objects {
        let response = get(viewer, &format!("/{path}")).await;
        if on_store_1.iter().any(|(lost, _)| lost == path) {
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        } else {
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(&response.bytes().await.unwrap()[..], &data[..]);
        }
    }
    let now = status(&daemon).await;
    assert_eq!(now["stores"][1]["state"], "failed");
    assert!(
        now["stores"][1]["error"]
            .as_str()
            .unwrap()
            .contains("unreadable")
    );
    assert_eq!(now["stores"][0]["state"], "ok");
    let ready = client()
        .get(format!("http://{}/readyz", daemon.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "one usable store still serves"
    );
    let metrics = metrics_text(&daemon).await;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("tidecache_store_errors_total")
                && line.contains("nvme1")
                && !line.ends_with(" 0"))
    );

    let done = fill(&daemon, body.replace("\"one\"", "\"two\""), "two").await;
    assert_eq!(done["fill"]["last_fill"]["stored"], on_store_1.len());
    for (path, data) in &objects {
        assert_eq!(
            &served(viewer, &format!("/{path}")).await[..],
            &data[..],
            "{path} served again from the remaining store"
        );
    }
    daemon.shutdown().await;
}

#[tokio::test]
async fn misbehaving_origins_fail_objects_without_storing_anything_wrong() {
    let origin = Origin::start().await;
    let looping = pattern(1000);
    let longer = pattern(2000);
    let dripping = pattern(60_000);
    origin.put("loop.ts", &looping, Fault::RedirectLoop);
    origin.put("longer.ts", &longer, Fault::WrongBody(pattern(2500)));
    origin.put(
        "drip.ts",
        &dripping,
        Fault::Drip {
            chunk: 1000,
            pause: Duration::from_millis(5),
        },
    );
    let test_box = TestBox::new();
    let daemon = start(&test_box.config(
        1,
        "[schedule]\ndrain = \"0s\"\n[fill]\nretries = 1\nretry_delay = \"10ms\"\n",
    ))
    .await;
    let objects = vec![
        ("loop.ts".to_owned(), looping),
        ("longer.ts".to_owned(), longer),
        ("drip.ts".to_owned(), dripping.clone()),
    ];
    let done = fill(
        &daemon,
        manifest("faults", &origin.base_url(), &objects),
        "faults",
    )
    .await;
    assert_eq!(done["fill"]["objects_done"], 1);
    let failures = done["fill"]["last_fill"]["failures"].as_array().unwrap();
    let reason = |path: &str| {
        failures
            .iter()
            .find(|failure| failure["path"] == path)
            .map(|failure| failure["reason"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert!(
        reason("loop.ts").contains("redirects"),
        "{}",
        reason("loop.ts")
    );
    assert!(
        reason("longer.ts").contains("size does not match"),
        "{}",
        reason("longer.ts")
    );
    let viewer = daemon.viewer_addrs[0];
    assert_eq!(
        get(viewer, "/loop.ts").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(viewer, "/longer.ts").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        &get(viewer, "/drip.ts").await.bytes().await.unwrap()[..],
        &dripping[..]
    );
    let tmp = std::fs::read_dir(test_box.store_path(0).join("tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "no temp file left behind by a failed object");
    daemon.shutdown().await;
}

#[tokio::test]
async fn request_smuggling_shapes_are_refused_and_the_server_stays_up() {
    let test_box = TestBox::new();
    let config = test_box.config(1, "");
    seed(&config, &[("a.ts", b"segment")]);
    let daemon = start(&config).await;
    let addr = daemon.viewer_addrs[0];
    // Each shape is followed by a second request hidden where a confused parser would read
    // it as the next one; it must never be answered.
    let smuggled = "GET /smuggled.ts HTTP/1.1\r\nHost: x\r\n\r\n";
    for (request, refused) in [
        (
            "GET /a.ts HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            true,
        ),
        (
            "GET /a.ts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            true,
        ),
        (
            "GET /a.ts HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            true,
        ),
        (
            "GET /a.ts HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n",
            true,
        ),
        // CL + TE: RFC 9112 lets Transfer-Encoding win and requires closing after the answer.
        (
            "GET /a.ts HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            false,
        ),
    ] {
        let answer = raw(addr, format!("{request}{smuggled}").as_bytes()).await;
        let answers = answer.matches("HTTP/1.1 ").count();
        if refused {
            assert!(
                answer.is_empty() || status_of(&answer) == 400,
                "{request:?} -> {answer:?}"
            );
        } else {
            assert_eq!(answers, 1, "{answer:?}");
            assert!(answer.contains("connection: close"), "{answer:?}");
        }
        assert!(answers <= 1, "the hidden request was answered: {answer:?}");
        assert!(
            !answer.contains("404"),
            "the hidden request was answered: {answer:?}"
        );
    }
    assert_eq!(get(addr, "/a.ts").await.status(), StatusCode::OK);
    daemon.shutdown().await;
}

/// A 1 MiB tmpfs mounted for a test, unmounted when dropped; `None` where mounting is not
/// allowed (not root, or no mount namespace rights), so the test says so and skips.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: std::path::PathBuf) -> Option<SmallDisk> {
        std::fs::create_dir_all(&path).ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(SmallDisk { path })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test]
async fn a_store_that_runs_out_of_space_is_marked_full_and_objects_go_elsewhere() {
    let test_box = TestBox::new();
    let Some(disk) = SmallDisk::mount(test_box.store_path(0)) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let origin = Origin::start().await;
    let objects: Vec<(String, Vec<u8>)> = (0..12)
        .map(|number| {
            let mut data = pattern(300_000);
            data[0] = number as u8;
            (format!("big/seg_{number:02}.ts"), data)
        })
        .collect();
    origin.put_all(&objects);
    let mut config = test_box.config(
        2,
        "[schedule]\ndrain = \"0s\"\n[fill]\nconcurrency = 2\nretry_delay = \"10ms\"\n",
    );
    // The small disk claims far more room than it has, so placement sends objects there
    // until the file system itself says ENOSPC.
    config.stores[0].capacity = Some(tidecache::config::ByteSize(100 << 30));
    let daemon = start(&config).await;
    let done = fill(
        &daemon,
        manifest("full", &origin.base_url(), &objects),
        "full",
    )
    .await;
    assert_eq!(done["fill"]["objects_done"], objects.len(), "{done:#}");
    assert_eq!(done["stores"][0]["state"], "full");
    let viewer = daemon.viewer_addrs[0];
    for (path, data) in &objects {
        assert_eq!(&served(viewer, &format!("/{path}")).await[..], &data[..]);
    }
    let leftovers = std::fs::read_dir(disk.path.join("tmp")).unwrap().count();
    assert_eq!(
        leftovers, 0,
        "the temp file of the refused write was removed"
    );
    daemon.shutdown().await;
}
