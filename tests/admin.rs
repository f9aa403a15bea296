//! The admin listener skeleton (CONTRACT sections 5 and 6): health, readiness, metrics, status.

mod common;

use common::*;
use reqwest::StatusCode;
use std::sync::Arc;

use tidecache::daemon::Daemon;
use tidecache::schedule::{ManualClock, Mode, Override};

fn admin_url(daemon: &tidecache::daemon::Daemon, path: &str) -> String {
    format!("http://{}{path}", daemon.admin_addr)
}

#[tokio::test]
async fn health_and_readiness_follow_the_mode() {
    let test_box = TestBox::new();
    let config = test_box.config(1, "");
    let daemon = start(&config).await;
    let client = client();
    let health = client
        .get(admin_url(&daemon, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = client
        .get(admin_url(&daemon, "/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a new, empty box is never ready"
    );
    assert!(ready.text().await.unwrap().contains("no content"));
    daemon.shutdown().await;

    // Once the box holds its content (seeding stands for a completed fill), serving is ready.
    seed(&config, &[("a.ts", b"segment")]);
    let daemon = start(&config).await;
    let ready = client
        .get(admin_url(&daemon, "/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    daemon.shutdown().await;

    // A manual clock walks the daemon from draining into filling.
    let start_at: jiff::Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(start_at));
    let config = test_box.config(1, "[schedule]\ndrain = \"30s\"\n");
    let daemon = Daemon::start_with_clock(&config, clock.clone())
        .await
        .unwrap();
    daemon.set_override(Override::Fill).await.unwrap();
    for mode in [Mode::Draining, Mode::Filling] {
        if mode == Mode::Filling {
            clock.set("2026-11-25T12:00:30Z".parse().unwrap());
        }
        wait_for_mode(&daemon, |state| state.mode == mode).await;
        let ready = client
            .get(admin_url(&daemon, "/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(ready.text().await.unwrap().contains(mode.as_str()));
        let health = client
            .get(admin_url(&daemon, "/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK, "alive whatever the mode");
    }
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_box_with_no_usable_store_is_not_ready_and_says_why() {
    let test_box = TestBox::new();
    let config = test_box.config(1, "");
    // The store's directory is a plain file: the store cannot be opened.
    std::fs::write(test_box.store_path(0), b"not a directory").unwrap();
    let daemon = start(&config).await;
    let ready = client()
        .get(admin_url(&daemon, "/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.text().await.unwrap().contains("no store is usable"));
    let status: serde_json::Value = client()
        .get(admin_url(&daemon, "/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["stores"][0]["state"], "failed");
    let viewer = get(daemon.viewer_addrs[0], "/anything.ts").await;
    assert_eq!(
        viewer.status(),
        StatusCode::NOT_FOUND,
        "misses, never a 500"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn status_reports_mode_and_stores_with_object_counts() {
    let test_box = TestBox::new();
    let config = test_box.config(2, "");
    let objects: Vec<(String, Vec<u8>)> = (0..40)
        .map(|number| (format!("t/seg_{number:05}.m4s"), pattern(1000 + number)))
        .collect();
    seed_all(&config, &objects);
    let daemon = start(&config).await;
    let response = client()
        .get(admin_url(&daemon, "/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let status: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status["mode"], "serving");
    assert_eq!(status["override"], "auto");
    assert_eq!(status["fill"]["state"], "idle");
    assert_eq!(status["objects"], 40);
    let stores = status["stores"].as_array().unwrap();
    assert_eq!(stores.len(), 2);
    let mut total_objects = 0;
    let mut total_bytes = 0;
    for store in stores {
        assert_eq!(store["state"], "ok");
        assert!(
            store["objects"].as_u64().unwrap() > 0,
            "rendezvous spreads objects"
        );
        assert_eq!(store["bytes_capacity"], 1 << 30);
        total_objects += store["objects"].as_u64().unwrap();
        total_bytes += store["bytes_used"].as_u64().unwrap();
    }
    assert_eq!(total_objects, 40);
    let expected_bytes: u64 = objects.iter().map(|(_, data)| data.len() as u64).sum();
    assert_eq!(total_bytes, expected_bytes);
    daemon.shutdown().await;
}

#[tokio::test]
async fn metrics_expose_the_contract_names_and_count_requests() {
    let test_box = TestBox::new();
    let config = test_box.config(1, "");
    seed(&config, &[("a.ts", b"0123456789")]);
    let daemon = start(&config).await;
    let viewer = client();
    for path in ["/a.ts", "/a.ts", "/missing.ts"] {
        viewer
            .get(url(daemon.viewer_addrs[0], path))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let response = client()
        .get(admin_url(&daemon, "/metrics"))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    for name in [
        "tidecache_requests_total",
        "tidecache_response_bytes_total",
        "tidecache_request_duration_seconds_bucket",
        "tidecache_open_connections",
        "tidecache_mode",
        "tidecache_fill_objects_total",
        "tidecache_fill_bytes_total",
        "tidecache_store_bytes_used",
        "tidecache_store_bytes_capacity",
        "tidecache_store_errors_total",
        "tidecache_objects",
    ] {
        assert!(
            text.lines().any(|line| line.starts_with(name)),
            "{name} missing from:\n{text}"
        );
    }
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("{prefix} missing from:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("tidecache_requests_total{code=\"200\",method=\"GET\"}"),
        2.0
    );
    assert_eq!(
        value("tidecache_requests_total{code=\"404\",method=\"GET\"}"),
        1.0
    );
    assert!(value("tidecache_response_bytes_total") >= 20.0);
    assert_eq!(value("tidecache_mode{mode=\"serving\"}"), 1.0);
    assert_eq!(value("tidecache_mode{mode=\"filling\"}"), 0.0);
    let store = test_box.store_path(0);
    assert_eq!(
        value(&format!(
            "tidecache_objects{{store={:?}}}",
            store.display().to_string()
        )),
        1.0
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let test_box = TestBox::new();
    let config = test_box.config(1, "");
    let daemon = start(&config).await;
    let client = client();
    let missing = client
        .get(admin_url(&daemon, "/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let wrong = client
        .post(admin_url(&daemon, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong.headers().contains_key("allow"));
    let objects = client
        .get(admin_url(&daemon, "/a.ts"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        objects.status(),
        StatusCode::NOT_FOUND,
        "no viewer route on admin"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn every_metric_the_grafana_dashboard_uses_is_exported() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../config/grafana-dashboard.json"))
            .expect("the dashboard is JSON");
    let test_box = TestBox::new();
    let config = test_box.config(1, "");
    seed(&config, &[("a.ts", b"a")]);
    let daemon = start(&config).await;
    get(daemon.viewer_addrs[0], "/a.ts").await;
    let metrics = metrics_text(&daemon).await;
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("tidecache_"))
            {
                let exported = name.strip_suffix("_bucket").unwrap_or(name);
                assert!(
                    metrics.contains(&format!("# TYPE {exported} ")),
                    "{name} (panel {:?}) is not exported",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "{checked}");
    daemon.shutdown().await;
}

#[tokio::test]
async fn popularity_lists_the_most_requested_hits_and_misses_and_feeds_manifest_build() {
    let (test_box, daemon, _) = common::viewer::serving_box("").await;
    let viewer = daemon.viewer_addrs[0];
    for _ in 0..5 {
        get(viewer, "/title123/seg.ts").await;
    }
    for _ in 0..2 {
        get(viewer, "/title123/master.m3u8").await;
    }
    // HEAD counts as a request and sends no bytes.
    client()
        .head(url(viewer, "/title123/master.m3u8"))
        .send()
        .await
        .unwrap();
    for _ in 0..3 {
        get(viewer, "/title123/not-here.ts?cachebuster=1").await;
    }
    let answer = client()
        .get(admin_url(&daemon, "/v1/popularity?limit=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let report: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(
        report["hits"],
        serde_json::json!([
            {"path": "title123/seg.ts", "requests": 5, "bytes": 10},
            {"path": "title123/master.m3u8", "requests": 3, "bytes": 16},
        ])
    );
    assert_eq!(
        report["misses"],
        serde_json::json!([{"path": "title123/not-here.ts", "requests": 3, "redirected": 0}])
    );
    assert!(
        report["since"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok()
    );
    for bad in ["limit=0", "limit=x", "limit=99999999"] {
        let answer = client()
            .get(admin_url(&daemon, &format!("/v1/popularity?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{bad}");
    }

    // The report sets tomorrow's priorities: the most requested object first.
    let report_file = test_box.write_file("popularity.json", report.to_string().as_bytes());
    let tree = test_box.dir.path().join("tree");
    std::fs::create_dir_all(tree.join("title123")).unwrap();
    for name in ["seg.ts", "master.m3u8", "other.ts"] {
        std::fs::write(tree.join("title123").join(name), name).unwrap();
    }
    let built = std::process::Command::new(common::process::BINARY)
        .args(["manifest", "build"])
        .arg(&tree)
        .args(["--base-url", "http://origin.example/", "--popularity"])
        .arg(&report_file)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_slice(&built.stdout).unwrap();
    let priority = |path: &str| {
        manifest["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|object| object["path"] == path)
            .map(|object| object["priority"].as_i64().unwrap_or(0))
            .unwrap()
    };
    assert_eq!(priority("title123/seg.ts"), 5);
    assert_eq!(priority("title123/master.m3u8"), 3);
    assert_eq!(priority("title123/other.ts"), 0);
    assert!(String::from_utf8_lossy(&built.stderr).contains("1 of them not under"));
}
