//! The scheduler in the running daemon: fill windows, draining, overrides over the admin API
//! and the `tidecache mode` command.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use jiff::Timestamp;
use reqwest::StatusCode;
use tidecache::daemon::Daemon;
use tidecache::schedule::{ManualClock, Mode, Override};

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

async fn status(daemon: &Daemon) -> serde_json::Value {
    admin_status(daemon.admin_addr).await
}

async fn ready(daemon: &Daemon) -> StatusCode {
    client()
        .get(format!("http://{}/readyz", daemon.admin_addr))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn inside_a_window_the_box_fills_and_refuses_viewers_until_its_end() {
    let test_box = TestBox::new();
    let config = test_box.config(
        1,
        "[schedule]\nfill_windows = [\"02:00-06:00\"]\ntimezone = \"UTC\"\ndrain = \"0s\"\n",
    );
    seed(&config, &[("a.ts", b"segment")]);
    let (daemon, _clock) = start_at(&config, "2026-11-25T02:10:00Z").await;
    let status = status(&daemon).await;
    assert_eq!(status["mode"], "filling");
    assert_eq!(status["override"], "auto");
    assert_eq!(status["next_switch"], "2026-11-25T06:00:00Z");
    assert_eq!(ready(&daemon).await, StatusCode::SERVICE_UNAVAILABLE);
    let response = get(daemon.viewer_addrs[0], "/a.ts").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers()["retry-after"],
        "13800",
        "3 h 50 min to the window's end, counted on the scheduler's clock"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn before_a_later_window_the_box_serves_and_says_when_it_switches() {
    let test_box = TestBox::new();
    let config = test_box.config(
        1,
        "[schedule]\nfill_windows = [\"12:00-13:00\"]\ntimezone = \"UTC\"\n",
    );
    seed(&config, &[("a.ts", b"segment")]);
    let (daemon, _clock) = start_at(&config, "2026-11-25T10:30:00Z").await;
    let status = status(&daemon).await;
    assert_eq!(status["mode"], "serving");
    assert_eq!(status["next_switch"], "2026-11-25T12:00:00Z");
    assert_eq!(ready(&daemon).await, StatusCode::OK);
    daemon.shutdown().await;
}

#[tokio::test]
async fn the_box_switches_by_itself_through_a_whole_night() {
    let test_box = TestBox::new();
    let config = test_box.config(
        1,
        "[schedule]\nfill_windows = [\"02:00-06:00\"]\ntimezone = \"Europe/London\"\ndrain = \"30s\"\n",
    );
    seed(&config, &[("a.ts", b"segment")]);
    // 2026-11-25 is winter: London is on UTC.
    let clock = Arc::new(ManualClock::new(at("2026-11-25T01:59:00Z")));
    let daemon = Daemon::start_with_clock(&config, clock.clone())
        .await
        .unwrap();
    let viewer = daemon.viewer_addrs[0];
    assert_eq!(get(viewer, "/a.ts").await.status(), StatusCode::OK);
    assert_eq!(status(&daemon).await["next_switch"], "2026-11-25T02:00:00Z");

    clock.set(at("2026-11-25T02:00:00Z"));
    wait_for_mode(&daemon, |state| state.mode == Mode::Draining).await;
    assert_eq!(ready(&daemon).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        get(viewer, "/a.ts").await.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "new viewers get the during_fill answer while draining"
    );
    assert_eq!(status(&daemon).await["next_switch"], "2026-11-25T02:00:30Z");

    clock.set(at("2026-11-25T02:00:30Z"));
    wait_for_mode(&daemon, |state| state.mode == Mode::Filling).await;
    assert_eq!(status(&daemon).await["next_switch"], "2026-11-25T06:00:00Z");

    clock.set(at("2026-11-25T06:00:00Z"));
    wait_for_mode(&daemon, |state| state.mode == Mode::Serving).await;
    assert_eq!(ready(&daemon).await, StatusCode::OK);
    assert_eq!(get(viewer, "/a.ts").await.status(), StatusCode::OK);
    assert_eq!(status(&daemon).await["next_switch"], "2026-11-26T02:00:00Z");

    let metrics = metrics_text(&daemon).await;
    for (mode, count) in [("draining", 1), ("filling", 1), ("serving", 2)] {
        let line = format!("tidecache_mode_transitions_total{{to=\"{mode}\"}} {count}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    daemon.shutdown().await;
}

async fn post_mode(daemon: &Daemon, token: Option<&str>, body: &str) -> reqwest::Response {
    let mut request = client()
        .post(format!("http://{}/v1/mode", daemon.admin_addr))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn post_mode_needs_the_token_and_a_valid_body() {
    let test_box = TestBox::new();
    let daemon = start(&test_box.config(1, "")).await;
    let refused = post_mode(&daemon, Some("whatever-token-value"), r#"{"mode":"fill"}"#).await;
    assert_eq!(
        refused.status(),
        StatusCode::FORBIDDEN,
        "no token configured: mutating calls are refused"
    );
    daemon.shutdown().await;

    let (token_file, token) = test_box.token_file();
    let mut config = test_box.config(1, "[schedule]\ndrain = \"0s\"\n");
    config.admin.token_file = Some(token_file);
    let daemon = start(&config).await;
    let missing = post_mode(&daemon, None, r#"{"mode":"fill"}"#).await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert!(missing.headers().contains_key("www-authenticate"));
    let wrong = post_mode(&daemon, Some("not-the-token-at-all"), r#"{"mode":"fill"}"#).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(body["error"], "wrong bearer token");
    for bad in [
        r#"{"mode":"sleep"}"#,
        "not json",
        r#"{"mode":"fill","x":1}"#,
        "",
    ] {
        let response = post_mode(&daemon, Some(&token), bad).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["error"].is_string());
    }
    let huge = format!(r#"{{"mode":"fill","pad":"{}"}}"#, "x".repeat(10_000));
    assert_eq!(
        post_mode(&daemon, Some(&token), &huge).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let get = client()
        .get(format!("http://{}/v1/mode", daemon.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(status(&daemon).await["mode"], "serving", "nothing changed");

    let metrics = metrics_text(&daemon).await;
    assert!(
        metrics.contains("tidecache_admin_auth_failures_total 2"),
        "failed attempts counted"
    );

    let accepted = post_mode(&daemon, Some(&token), r#"{"mode": "fill"}"#).await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let body: serde_json::Value = accepted.json().await.unwrap();
    assert_eq!(body["override"], "fill");
    assert_eq!(body["mode"], "filling");
    assert_eq!(body["next_switch"], serde_json::Value::Null);
    daemon.shutdown().await;
}

#[tokio::test]
async fn an_override_survives_a_restart_and_auto_returns_to_the_windows() {
    let test_box = TestBox::new();
    let config = test_box.config(1, "[schedule]\ndrain = \"0s\"\n");
    let daemon = start(&config).await;
    daemon.set_override(Override::Fill).await.unwrap();
    wait_for_mode(&daemon, |state| state.mode == Mode::Filling).await;
    daemon.shutdown().await;

    let daemon = start(&config).await;
    let status_after = status(&daemon).await;
    assert_eq!(status_after["override"], "fill");
    assert_eq!(status_after["mode"], "filling");
    daemon.set_override(Override::Auto).await.unwrap();
    wait_for_mode(&daemon, |state| state.mode == Mode::Serving).await;
    assert_eq!(status(&daemon).await["override"], "auto");
    daemon.shutdown().await;
}

#[tokio::test]
async fn the_mode_command_sets_the_override_and_reports_errors_in_one_line() {
    let test_box = TestBox::new();
    let (token_file, _token) = test_box.token_file();
    let mut config = test_box.config(1, "[schedule]\ndrain = \"1h\"\n");
    config.admin.token_file = Some(token_file.clone());
    let daemon = start(&config).await;
    let admin = format!("http://{}", daemon.admin_addr);
    let binary = env!("CARGO_BIN_EXE_tidecache");

    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            Command::new(binary)
                .args(args)
                .env_remove("TIDECACHE_TOKEN")
                .output()
                .unwrap()
        })
    };
    let output = run(vec![
        "mode".into(),
        "fill".into(),
        "--admin".into(),
        admin.clone(),
        "--token-file".into(),
        token_file.display().to_string(),
    ])
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        stdout.contains("mode: draining (override: fill"),
        "{stdout}"
    );

    let output = run(vec![
        "mode".into(),
        "auto".into(),
        "--admin".into(),
        admin.clone(),
        "--token".into(),
        "wrong-token-wrong-token".into(),
    ])
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("401") && stderr.contains("wrong bearer token"),
        "{stderr}"
    );

    let output = run(vec![
        "mode".into(),
        "auto".into(),
        "--admin".into(),
        "https://127.0.0.1:1".into(),
    ])
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2), "a bad URL is a usage error");
    daemon.shutdown().await;

    let output = run(vec!["mode".into(), "auto".into(), "--admin".into(), admin])
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("cannot reach the admin listener"),
        "{stderr}"
    );
}
