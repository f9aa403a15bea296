//! The Prometheus alert rules shipped in `config/prometheus/`: valid (`promtool check
//! rules`), doing what they say on synthetic series (`promtool test rules`), and using only
//! metrics the daemon exports (so are the Grafana dashboard's queries). promtool comes with
//! Debian's `prometheus` package; `.ci/run` installs it, and this test fails without it.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;

const RULES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/prometheus");

/// Runs promtool in the rules directory; its output, or the test fails.
fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(RULES_DIR)
        .output()
        .unwrap_or_else(|err| {
            panic!("promtool is needed (apt-get install prometheus; .ci/run installs it): {err}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid_and_fire_on_the_series_they_describe() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    println!("{checked}");
    assert!(checked.contains("SUCCESS: 8 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"]);
    println!("{tested}");
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// The `tidecache_*` names a text mentions.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tidecache_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|character| character.is_ascii_alphanumeric() || *character == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_use_is_exported() {
    let test_box = TestBox::new();
    let config = test_box.config(2, "");
    let daemon = start(&config).await;
    let exposition = metrics_text(&daemon).await;
    let exported: BTreeSet<String> = exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    for (file, text) in [
        (
            "config/prometheus/alerts.yml",
            std::fs::read_to_string(format!("{RULES_DIR}/alerts.yml")).unwrap(),
        ),
        (
            "config/grafana-dashboard.json",
            std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/config/grafana-dashboard.json"
            ))
            .unwrap(),
        ),
    ] {
        let used = metric_names_in(&text);
        assert!(!used.is_empty(), "{file} names no tidecache metric");
        let missing: Vec<&String> = used
            .iter()
            .filter(|name| !exported.contains(*name))
            .collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics the daemon does not export: {missing:?}\nexported: {exported:?}"
        );
    }
    daemon.shutdown().await;
}

#[tokio::test]
async fn the_gauges_the_rules_use_follow_the_box() {
    use common::origin::{Fault, Origin};
    let origin = Origin::start().await;
    let data = pattern(10_000);
    origin.put("a.ts", &data, Fault::None);
    origin.put("gone.ts", b"x", Fault::NotFound);
    let test_box = TestBox::new();
    let (token_file, token) = test_box.token_file();
    let mut config = test_box.config(1, "[schedule]\ndrain = \"0s\"\n");
    config.admin.token_file = Some(token_file);
    let daemon = start(&config).await;
    let gauge = |text: &str, name: &str| metric_value(text, name).unwrap_or(-1.0);
    let before = metrics_text(&daemon).await;
    assert_eq!(gauge(&before, "tidecache_ready"), 0.0, "a new box");
    assert_eq!(gauge(&before, "tidecache_content_held"), 0.0);
    assert_eq!(
        gauge(&before, "tidecache_manifest_accepted_timestamp_seconds"),
        0.0
    );
    assert!(before.contains("tidecache_fill_last_pass{state=\"done\"} 0"));
    let body = manifest_json(
        "night-1",
        &origin.base_url(),
        &[("a.ts", &data[..]), ("gone.ts", b"x")],
    );
    let pushed = client()
        .put(format!("http://{}/v1/manifest", daemon.admin_addr))
        .bearer_auth(&token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), 202);
    fill_until_done(&daemon, "night-1").await;
    let after = metrics_text(&daemon).await;
    let now = jiff::Timestamp::now().as_second() as f64;
    let accepted = gauge(&after, "tidecache_manifest_accepted_timestamp_seconds");
    assert!((now - 120.0..=now).contains(&accepted), "{accepted}");
    assert!(
        after.contains("tidecache_fill_last_pass{state=\"done\"} 1"),
        "{after}"
    );
    assert!(after.contains("tidecache_fill_last_pass{state=\"paused\"} 0"));
    assert_eq!(
        gauge(&after, "tidecache_fill_last_pass_failed_objects"),
        1.0
    );
    let ended = gauge(&after, "tidecache_fill_last_pass_end_timestamp_seconds");
    assert!((now - 120.0..=now + 1.0).contains(&ended), "{ended}");
    assert!(
        after.lines().any(
            |line| line.starts_with("tidecache_store_state{state=\"ok\"") && line.ends_with(" 1")
        ),
        "a store in state ok: {after}"
    );
    assert_eq!(
        gauge(&after, "tidecache_ready"),
        1.0,
        "10,000 of 10,001 bytes held: over fill.ready_share"
    );
    assert_eq!(gauge(&after, "tidecache_content_held"), 1.0);
    daemon.shutdown().await;
}
