//! The operator's commands against real daemons: demo, status, verify, doctor.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::{BINARY, signal, wait_with_timeout};
use common::*;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_fills_and_serves_a_playable_hls_title_and_stops_on_ctrl_c() {
    let mut child = Command::new(BINARY)
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn demo");
    let stdout = child.stdout.take().unwrap();
    // Kept for the failure message: the demo's one error line says why it stopped.
    let stderr = child.stderr.take().unwrap();
    let stderr_lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let mut playlist_url = None;
    let mut admin_url = None;
    while playlist_url.is_none() {
        let line = match receiver.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(err) => {
                let _ = child.kill();
                let errors = stderr_lines.join().unwrap_or_default();
                panic!("demo prints its URLs: {err}; its stderr: {errors:?}");
            }
        };
        if let Some(url) = line.strip_prefix("serving: ") {
            playlist_url = Some(url.to_owned());
        }
        if let Some(rest) = line.split("(admin ").nth(1) {
            admin_url = rest
                .split(')')
                .next()
                .map(|url| url.trim_end_matches('/').to_owned());
        }
    }
    let playlist_url = playlist_url.unwrap();
    let client = client();
    let master = client.get(&playlist_url).send().await.unwrap();
    assert_eq!(master.status(), StatusCode::OK);
    assert_eq!(
        master.headers()["content-type"],
        "application/vnd.apple.mpegurl"
    );
    let master = master.text().await.unwrap();
    assert!(master.starts_with("#EXTM3U"));
    let variant_path = master
        .lines()
        .find(|line| !line.starts_with('#') && !line.is_empty())
        .unwrap();
    let base = playlist_url.rsplit_once('/').unwrap().0;
    let variant_url = format!("{base}/{variant_path}");
    let variant = client
        .get(&variant_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(variant.contains("#EXT-X-ENDLIST"));
    let variant_base = variant_url.rsplit_once('/').unwrap().0;
    let segments: Vec<&str> = variant
        .lines()
        .filter(|line| line.ends_with(".ts"))
        .collect();
    assert_eq!(segments.len(), 3);
    for segment in segments {
        let response = client
            .get(format!("{variant_base}/{segment}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["content-type"], "video/mp2t");
        let body = response.bytes().await.unwrap();
        assert!(body.len() > 10_000 && body.len() % 188 == 0, "{segment}");
        assert!(
            body.chunks(188).all(|packet| packet[0] == 0x47),
            "{segment}: MPEG-TS"
        );
    }
    if let Ok(probe) = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(&playlist_url)
        .output()
    {
        let streams = String::from_utf8_lossy(&probe.stdout);
        assert!(
            streams.contains("h264") && streams.contains("aac"),
            "ffprobe decodes the served title: {streams}"
        );
    }

    let admin_url = admin_url.expect("demo prints its admin URL");
    let status = tokio::task::spawn_blocking(move || {
        Command::new(BINARY)
            .args(["status", "--admin", &admin_url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(0), "{status:?}");
    assert!(
        text.contains("mode:      serving (override auto)"),
        "{text}"
    );
    assert!(text.contains("manifest:  demo (5 objects"), "{text}");
    assert!(text.contains("last fill: done"), "{text}");

    signal(&child, "INT");
    assert_eq!(wait_with_timeout(&mut child), Some(0));
}

#[tokio::test]
async fn status_prints_a_summary_or_json_and_fails_in_one_line_when_unreachable() {
    let test_box = TestBox::new();
    let config = test_box.config(1, "");
    seed(&config, &[("a.ts", b"abc")]);
    let daemon = start(&config).await;
    let admin = format!("http://{}", daemon.admin_addr);
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || Command::new(BINARY).args(args).output().unwrap())
    };
    let json = run(vec![
        "status".into(),
        "--admin".into(),
        admin.clone(),
        "--json".into(),
    ])
    .await
    .unwrap();
    assert_eq!(json.status.code(), Some(0));
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(parsed["objects"], 1);
    let human = run(vec!["status".into(), "--admin".into(), admin.clone()])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("fill:      idle") && text.contains("1 objects"),
        "{text}"
    );
    daemon.shutdown().await;
    let down = run(vec!["status".into(), "--admin".into(), admin])
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert_eq!(down.status.code(), Some(1));
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn verify_finds_and_quarantines_damaged_objects_and_refuses_a_store_in_use() {
    let test_box = TestBox::new();
    let config = test_box.config(2, "");
    let objects: Vec<(String, Vec<u8>)> = (0..20)
        .map(|number| (format!("t/seg_{number:02}.ts"), pattern(5000 + number)))
        .collect();
    seed_all(&config, &objects);
    let config_file = test_box.write_file(
        "verify.toml",
        format!(
            "state_dir = {:?}\n[[store]]\npath = {:?}\ncapacity = \"1GiB\"\n[[store]]\npath = {:?}\ncapacity = \"1GiB\"\n",
            test_box.dir.path().join("state"),
            test_box.store_path(0),
            test_box.store_path(1)
        )
        .as_bytes(),
    );
    let flipped = (0..2)
        .map(|store| test_box.store_path(store).join("objects/t/seg_07.ts"))
        .find(|path| path.exists())
        .unwrap();
    let mut bytes = std::fs::read(&flipped).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&flipped, bytes).unwrap();

    let run = |file: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            Command::new(BINARY)
                .args(["verify", "--config"])
                .arg(file)
                .output()
                .unwrap()
        })
    };
    let first = run(config_file.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert_eq!(first.status.code(), Some(1), "{first:?}");
    assert!(stdout.contains("damaged: t/seg_07.ts"), "{stdout}");
    assert!(
        stdout.contains("verified 20 objects") && stdout.contains("1 damaged"),
        "{stdout}"
    );
    let second = run(config_file.clone()).await.unwrap();
    assert_eq!(second.status.code(), Some(0), "{second:?}");
    assert!(String::from_utf8_lossy(&second.stdout).contains("verified 19 objects"));

    let daemon = start(&config).await;
    assert_eq!(
        get(daemon.viewer_addrs[0], "/t/seg_07.ts").await.status(),
        StatusCode::NOT_FOUND,
        "a quarantined object is not served"
    );
    assert_eq!(
        get(daemon.viewer_addrs[0], "/t/seg_08.ts").await.status(),
        StatusCode::OK
    );
    let busy = run(config_file).await.unwrap();
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        stderr.contains("in use by another tidecache process"),
        "{stderr}"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn doctor_prints_one_verdict_line_per_check() {
    let test_box = TestBox::new();
    let config = test_box.write_file(
        "doctor.toml",
        format!("[[store]]\npath = {:?}\n", test_box.dir.path()).as_bytes(),
    );
    let bad_spec = test_box.write_file("spec.toml", b"[cpu]\nwarn_below = \"many\"\n");
    let (good, bad) = tokio::task::spawn_blocking(move || {
        let good = Command::new(BINARY)
            .args(["doctor", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let bad = Command::new(BINARY)
            .args(["doctor", "--spec"])
            .arg(&bad_spec)
            .output()
            .unwrap();
        (good, bad)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&good.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 10, "nine checks and one per store: {stdout}");
    for line in &lines {
        assert!(
            ["pass  ", "warn  ", "fail  "]
                .iter()
                .any(|verdict| line.starts_with(verdict)),
            "{line}"
        );
    }
    let any_fail = lines.iter().any(|line| line.starts_with("fail"));
    assert_eq!(good.status.code(), Some(i32::from(any_fail)), "{stdout}");
    assert!(stdout.contains("store "), "{stdout}");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("tidecache: error: spec:"));
}

#[test]
fn the_systemd_unit_has_what_an_appliance_needs() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/tidecache.service"
    ))
    .unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=tidecache",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=",
        "StateDirectory=tidecache",
        "PrivateTmp=yes",
        "LimitNOFILE=",
        "ExecStartPre=/usr/bin/tidecache check-config",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "missing {line}");
    }
    let sysusers = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/tidecache.sysusers"
    ))
    .unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u tidecache ")));
    // Where systemd-analyze exists, the unit must verify; the only complaint allowed is that
    // the binary is not installed on the machine running the tests.
    if let Ok(output) = Command::new("systemd-analyze")
        .args([
            "verify",
            concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/tidecache.service"),
        ])
        .output()
    {
        let complaints = String::from_utf8_lossy(&output.stderr);
        for complaint in complaints.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                complaint.contains("/usr/bin/tidecache") && complaint.contains("not executable"),
                "systemd-analyze: {complaint}"
            );
        }
    }
}
