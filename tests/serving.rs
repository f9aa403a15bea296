//! What the box serves from and when: the mode's viewer answers, read-only stores while
//! serving, the access log, signed URLs and the RAM cache.

mod common;

use common::viewer::*;
use common::*;
use reqwest::StatusCode;

#[tokio::test]
async fn not_serving_answers_503_with_retry_after_or_redirects() {
    use tidecache::schedule::{Mode, Override};

    let (_box, daemon, _) = serving_box_at(
        "[schedule]\nfill_windows = [\"02:00-06:00\"]\ntimezone = \"UTC\"\ndrain = \"0s\"\n",
        "2026-11-25T05:30:00Z",
    )
    .await;
    let addr = daemon.viewer_addrs[0];
    wait_for_mode(&daemon, |state| state.mode == Mode::Filling).await;
    let response = get(addr, &format!("/{SEGMENT_PATH}")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        header(response.headers(), "retry-after"),
        "1800",
        "the half hour left of the window"
    );
    daemon.shutdown().await;

    for (during_fill, expected) in [
        (
            "during_fill = \"redirect\"\nfallback_url = \"http://origin.example\"",
            StatusCode::FOUND,
        ),
        ("during_fill = \"serve\"", StatusCode::OK),
        ("during_fill = \"refuse\"", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let (_box, daemon, _) =
            serving_box(&format!("[schedule]\n{during_fill}\ndrain = \"0s\"\n")).await;
        daemon.set_override(Override::Fill).await.unwrap();
        wait_for_mode(&daemon, |state| state.mode == Mode::Filling).await;
        let response = get(daemon.viewer_addrs[0], &format!("/{SEGMENT_PATH}")).await;
        assert_eq!(response.status(), expected, "{during_fill}");
        match expected {
            StatusCode::FOUND => assert_eq!(
                header(response.headers(), "location"),
                format!("http://origin.example/{SEGMENT_PATH}")
            ),
            StatusCode::SERVICE_UNAVAILABLE => assert_eq!(
                header(response.headers(), "retry-after"),
                "300",
                "a manual override has no end: the documented fixed value"
            ),
            _ => {}
        }
        daemon.set_override(Override::Auto).await.unwrap();
        wait_for_mode(&daemon, |state| state.mode == Mode::Serving).await;
        let response = get(daemon.viewer_addrs[0], &format!("/{SEGMENT_PATH}")).await;
        assert_eq!(response.status(), StatusCode::OK, "serving again");
        daemon.shutdown().await;
    }
}

#[tokio::test]
async fn serving_writes_nothing_to_the_stores() {
    let (test_box, daemon, _) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    let snapshot = || {
        let mut entries = Vec::new();
        for number in 0..2 {
            let mut stack = vec![test_box.store_path(number)];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).unwrap() {
                    let entry = entry.unwrap();
                    let meta = entry.metadata().unwrap();
                    if meta.is_dir() {
                        stack.push(entry.path());
                    } else {
                        entries.push((entry.path(), meta.len(), meta.modified().unwrap()));
                    }
                }
            }
        }
        entries.sort();
        entries
    };
    let before = snapshot();
    let client = client();
    for path in [SEGMENT_PATH, "title123/master.m3u8", "missing", "../x"] {
        let _ = client
            .get(url(addr, &format!("/{path}")))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(snapshot(), before);
    daemon.shutdown().await;
}

#[tokio::test]
async fn the_access_log_records_each_request_in_combined_or_json_lines() {
    for format in ["combined", "json"] {
        let test_box = TestBox::new();
        let log = test_box.dir.path().join("access.log");
        let mut config = test_box.config(1, "");
        config.http.access_log = Some(log.clone());
        config.http.access_log_format = if format == "json" {
            tidecache::config::AccessLogFormat::Json
        } else {
            tidecache::config::AccessLogFormat::Combined
        };
        seed(&config, &[("a.ts", b"segment")]);
        let daemon = start(&config).await;
        let addr = daemon.viewer_addrs[0];
        client()
            .get(url(addr, "/a.ts?token=1"))
            .header("user-agent", "test-player/1.0")
            .send()
            .await
            .unwrap();
        get(addr, "/missing.ts").await;
        let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().count() >= 2 {
                break text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "log written within the timeout"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        // The two requests went over two connections, whose lines may come in either order
        // (each is queued when its answer has been written).
        let line_of = |target: &str| {
            text.lines()
                .find(|line| line.contains(target))
                .unwrap_or_else(|| panic!("no line for {target} in {text}"))
        };
        let (found, missing) = (line_of("/a.ts?token=1"), line_of("/missing.ts"));
        if format == "combined" {
            assert!(found.starts_with("127.0.0.1 - - ["), "{found}");
            assert!(
                found.contains("\"GET /a.ts?token=1 HTTP/1.1\" 200 7 \"-\" \"test-player/1.0\""),
                "{found}"
            );
            assert!(
                missing.contains("\"GET /missing.ts HTTP/1.1\" 404"),
                "{missing}"
            );
        } else {
            let first: serde_json::Value = serde_json::from_str(found).unwrap();
            assert_eq!(first["status"], 200);
            assert_eq!(first["target"], "/a.ts?token=1");
            assert_eq!(first["user_agent"], "test-player/1.0");
        }
        daemon.shutdown().await;
    }
}

#[tokio::test]
async fn signed_urls_are_required_when_a_key_is_set_and_checked_before_the_disk() {
    let test_box = TestBox::new();
    let key_file = test_box.write_file("url.key", b"0123456789abcdef-url-key\n");
    let mut config = test_box.config(1, "");
    config.http.url_signing_key_file = Some(key_file.clone());
    seed(&config, &[("t/a.ts", b"segment")]);
    let daemon = start(&config).await;
    let addr = daemon.viewer_addrs[0];
    let key = b"0123456789abcdef-url-key";
    let now = jiff::Timestamp::now().as_second();
    let signed = |path: &str, expires: i64| {
        format!(
            "{path}?{}",
            tidecache::serve::signed::sign(key, path, expires)
        )
    };
    let good = get(addr, &signed("/t/a.ts", now + 60)).await;
    assert_eq!(good.status(), StatusCode::OK);
    assert_eq!(&good.bytes().await.unwrap()[..], b"segment");
    assert_eq!(
        get(addr, &signed("/t/missing.ts", now + 60)).await.status(),
        StatusCode::NOT_FOUND,
        "a valid signature for a missing object is a plain miss"
    );
    for bad in [
        "/t/a.ts".to_owned(),
        signed("/t/a.ts", now - 1),
        signed("/t/other.ts", now + 60).replace("/t/other.ts", "/t/a.ts"),
        format!("/t/a.ts?exp={}&sig={}", now + 60, "0".repeat(64)),
        "/t/a.ts?exp=soon&sig=zz".to_owned(),
    ] {
        assert_eq!(
            get(addr, &bad).await.status(),
            StatusCode::FORBIDDEN,
            "{bad}"
        );
    }
    // Hostile paths are refused without a disk access either way.
    assert_eq!(
        get(addr, "/../etc/passwd").await.status(),
        StatusCode::FORBIDDEN
    );

    // The CLI helper makes URLs the box accepts.
    let output = std::process::Command::new(common::process::BINARY)
        .args(["sign-url", "/t/a.ts", "--expires", "5m", "--key-file"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let url_path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(url_path.starts_with("/t/a.ts?exp="), "{url_path}");
    assert_eq!(get(addr, &url_path).await.status(), StatusCode::OK);
    daemon.shutdown().await;
}

#[tokio::test]
async fn sign_url_prints_urls_a_player_can_send_for_paths_that_need_encoding() {
    let test_box = TestBox::new();
    let key_file = test_box.write_file("url.key", b"0123456789abcdef-url-key\n");
    let mut config = test_box.config(1, "");
    config.http.url_signing_key_file = Some(key_file.clone());
    let objects: [(&str, &[u8]); 3] = [
        ("t/seg with space.ts", b"spaced"),
        ("t/caf\u{e9}~(1).ts", b"accented"),
        ("t/100%.ts", b"percent"),
    ];
    seed(&config, &objects);
    let daemon = start(&config).await;
    let addr = daemon.viewer_addrs[0];
    for (path, data) in objects {
        let output = std::process::Command::new(common::process::BINARY)
            .args(["sign-url", path, "--key-file"])
            .arg(&key_file)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{path}: {output:?}");
        let printed = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(
            !printed.contains(' ') && printed.is_ascii(),
            "{path}: a URL curl and players accept: {printed}"
        );
        // Through a real HTTP client's URL parser, as a player would send it.
        let parsed = reqwest::Url::parse(&format!("http://{addr}{printed}")).unwrap();
        let response = client().get(parsed).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}: {printed}");
        assert_eq!(&response.bytes().await.unwrap()[..], data, "{path}");
        // Another spelling of the same path (an escaped letter) is the same object.
        let respelled = printed.replacen("/t/", "/%74/", 1);
        assert_eq!(
            get(addr, &respelled).await.status(),
            StatusCode::OK,
            "{path}: {respelled}"
        );
    }
    daemon.shutdown().await;
}

#[tokio::test]
async fn hot_objects_are_served_from_ram_byte_identical_with_ranges() {
    let (test_box, daemon, segment) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    // Plain-HTTP GETs (sendfile) never load the RAM cache; the writers that copy anyway do.
    for _ in 0..3 {
        let whole = get(addr, &format!("/{SEGMENT_PATH}")).await;
        assert_eq!(&whole.bytes().await.unwrap()[..], &segment[..]);
    }
    assert_eq!(
        metric_value(&metrics_text(&daemon).await, "tidecache_ram_cache_bytes"),
        Some(0.0),
        "sendfile answers load nothing into RAM"
    );
    let whole = h2c_client()
        .get(format!("http://{addr}/{SEGMENT_PATH}"))
        .send()
        .await
        .unwrap();
    assert_eq!(&whole.bytes().await.unwrap()[..], &segment[..]);
    eventually("the segment is loaded into RAM", || async {
        metric_value(&metrics_text(&daemon).await, "tidecache_ram_cache_bytes")
            .is_some_and(|bytes| bytes >= SEGMENT_LEN as f64)
    })
    .await;
    // With the file gone from disk, only the RAM copy can answer these ranges. It serves
    // the writers that copy anyway (HTTP/2 here, TLS); the plain-HTTP fast path sends from
    // the page cache with sendfile, which costs less CPU per GB.
    let on_disk = (0..2)
        .map(|store| {
            test_box
                .store_path(store)
                .join("objects")
                .join(SEGMENT_PATH)
        })
        .find(|path| path.exists())
        .unwrap();
    std::fs::remove_file(on_disk).unwrap();
    let h2_range = |range: &'static str| {
        h2c_client()
            .get(format!("http://{addr}/{SEGMENT_PATH}"))
            .header(reqwest::header::RANGE, range)
            .send()
    };
    let ranged = h2_range("bytes=1000-1999").await.unwrap();
    assert_eq!(ranged.version(), reqwest::Version::HTTP_2);
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&ranged.bytes().await.unwrap()[..], &segment[1000..2000]);
    let multi = h2_range("bytes=0-9,-10").await.unwrap();
    let body = multi.bytes().await.unwrap();
    assert!(body.windows(10).any(|window| window == &segment[..10]));
    assert!(
        body.windows(10)
            .any(|window| window == &segment[SEGMENT_LEN - 10..])
    );

    // The operator sees it: bytes held, hits (the ranges above at least), the first miss.
    let metrics = metrics_text(&daemon).await;
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{metrics}"))
    };
    assert_eq!(value("tidecache_ram_cache_bytes"), SEGMENT_LEN as u64);
    assert!(value("tidecache_ram_cache_hits_total") >= 2);
    assert!(value("tidecache_ram_cache_misses_total") >= 1);
    assert_eq!(
        value("tidecache_open_files_cached"),
        1,
        "whole answers of small objects go by sendfile from the cached open file"
    );
    daemon.shutdown().await;
}

/// Damages a stored file behind the daemon's back: one bit, at byte 12,345.
fn flip_a_bit(file: &std::path::Path) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[12_345] ^= 0x10;
    std::fs::write(file, bytes).unwrap();
}

#[tokio::test]
async fn a_flipped_bit_found_by_the_first_check_takes_the_object_out_of_service() {
    // Plain HTTP (sendfile) checks the file once; HTTP/2 loads it into RAM, checking it.
    let test_box = TestBox::new();
    let config = test_box.config(1, "");
    let data = pattern(50_000);
    seed(
        &config,
        &[
            ("flip.ts", &data),
            ("flip-h2.ts", &data[..45_000]),
            ("fine.ts", &data[..40_000]),
        ],
    );
    for name in ["flip.ts", "flip-h2.ts"] {
        flip_a_bit(&test_box.store_path(0).join("objects").join(name));
    }
    let daemon = start(&config).await;
    let addr = daemon.viewer_addrs[0];
    let h2 = h2c_client();
    let status = |path: &'static str| {
        let h2 = h2.clone();
        async move {
            if path.contains("h2") {
                let response = h2.get(url(addr, path)).send().await.unwrap();
                assert_eq!(response.version(), reqwest::Version::HTTP_2);
                response.status()
            } else {
                get(addr, path).await.status()
            }
        }
    };
    for path in ["/flip.ts", "/flip-h2.ts"] {
        let _first = status(path).await;
        eventually(&format!("{path} taken out of service"), || async {
            status(path).await == StatusCode::NOT_FOUND
        })
        .await;
    }
    assert_eq!(get(addr, "/fine.ts").await.status(), StatusCode::OK);
    let metrics = metrics_text(&daemon).await;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("tidecache_store_errors_total") && line.ends_with(" 2")),
        "{metrics}"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn plain_http_checks_each_version_once_even_when_the_hot_set_outgrows_ram() {
    // Ten 300 KB objects against a 1 MiB RAM cache: loading on every miss, each round of
    // plain-HTTP GETs read and hashed every object again (0.45 CPU s/GB against nginx's
    // 0.075 in benches/compare with a hot set four times the cache). Checked once, the
    // rounds after the first hash nothing.
    let test_box = TestBox::new();
    let config = test_box.config(1, "[cache]\nram = \"1MiB\"\n");
    let objects: Vec<(String, Vec<u8>)> = (0..10)
        .map(|number| {
            let mut data = pattern(300_000);
            data[0] = number as u8;
            (format!("hot/{number}.ts"), data)
        })
        .collect();
    seed_all(&config, &objects);
    let daemon = start(&config).await;
    let addr = daemon.viewer_addrs[0];
    let checks = || async {
        metric_value(&metrics_text(&daemon).await, "tidecache_file_checks_total").unwrap_or(-1.0)
    };
    for round in 0..4 {
        for (path, data) in &objects {
            let body = get(addr, &format!("/{path}")).await.bytes().await.unwrap();
            assert_eq!(&body[..], &data[..]);
        }
        if round == 0 {
            // A check runs beside its answer; at most four at once, so some of the first
            // round's may have been skipped and come with a later round.
            eventually("the first round's checks are done", || async {
                checks().await >= 1.0
            })
            .await;
        }
    }
    eventually("every object checked", || async { checks().await >= 10.0 }).await;
    let after = checks().await;
    for (path, _) in &objects {
        assert_eq!(
            get(addr, &format!("/{path}")).await.status(),
            StatusCode::OK
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(after, 10.0, "each version once");
    assert_eq!(checks().await, 10.0, "and nothing after");
    assert_eq!(
        metric_value(&metrics_text(&daemon).await, "tidecache_ram_cache_bytes"),
        Some(0.0),
        "plain HTTP loads nothing into RAM"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_file_filled_again_with_the_same_bytes_is_checked_again() {
    // Found by review: the record of checked versions named (path, store, size, sha256), so
    // a file deleted and filled again with the same bytes (or a damaged copy replaced) was
    // taken as checked, and a bit flipped in the new file was served, over plain HTTP and
    // from RAM over HTTP/2. The fill time is part of the version now.
    let test_box = TestBox::new();
    let config = test_box.config(1, "");
    let data = pattern(50_000);
    seed(&config, &[("refill.ts", &data)]);
    let daemon = start(&config).await;
    let addr = daemon.viewer_addrs[0];
    assert_eq!(served(addr, "/refill.ts").await, data);
    eventually("the first file is checked", || async {
        metric_value(&metrics_text(&daemon).await, "tidecache_file_checks_total") >= Some(1.0)
    })
    .await;
    assert!(daemon.stores.remove("refill.ts").unwrap());
    // A later fill: fill times are in seconds.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut writer = tidecache::store::writer::ObjectWriter::begin(
        &daemon.stores,
        "refill.ts",
        data.len() as u64,
        sha256(&data),
    )
    .unwrap();
    writer.write(&data).unwrap();
    writer.finish().unwrap();
    flip_a_bit(&test_box.store_path(0).join("objects/refill.ts"));
    let _first = get(addr, "/refill.ts").await;
    eventually(
        "the new file's flipped bit taken out of service",
        || async { get(addr, "/refill.ts").await.status() == StatusCode::NOT_FOUND },
    )
    .await;
    daemon.shutdown().await;
}

/// Reads `log` until it holds at least `lines` lines (bounded).
async fn log_lines(log: &std::path::Path, lines: usize) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().count() >= lines {
            return text
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{lines} log lines in time: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn bytes_sent_are_counted_and_logged_not_bytes_promised() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let size = 32 << 20;
    // The sendfile path, hyper's path from the file, and hyper's path from the RAM cache
    // (one shared buffer, which used to be handed over, and counted, whole).
    for (sendfile, cache) in [
        (true, "ram = \"0\""),
        (false, "ram = \"0\""),
        (false, "ram = \"128MiB\"\nmax_object = \"64MiB\""),
    ] {
        let test_box = TestBox::new();
        let log = test_box.dir.path().join("access.log");
        let mut config = test_box.config(1, &format!("[cache]\n{cache}\n"));
        config.http.sendfile = sendfile;
        config.http.access_log = Some(log.clone());
        config.http.access_log_format = tidecache::config::AccessLogFormat::Json;
        seed(&config, &[("big.ts", &pattern(size))]);
        let daemon = start(&config).await;
        let addr = daemon.viewer_addrs[0];
        let counted = || async {
            metric_value(
                &metrics_text(&daemon).await,
                "tidecache_response_bytes_total",
            )
            .unwrap_or(0.0) as u64
        };
        let mut lines_before = 0;
        if cache.contains("128MiB") {
            // Load the object into the RAM cache first.
            assert_eq!(
                get(addr, "/big.ts").await.bytes().await.unwrap().len(),
                size
            );
            eventually("the object is in the RAM cache", || async {
                metric_value(&metrics_text(&daemon).await, "tidecache_ram_cache_bytes")
                    .is_some_and(|bytes| bytes >= size as f64)
            })
            .await;
            lines_before = 1;
        }
        let case = format!("sendfile = {sendfile}, {}", cache.replace('\n', " "));
        let before = counted().await;

        // A HEAD sends no body, whatever its Content-Length says.
        let head = client().head(url(addr, "/big.ts")).send().await.unwrap();
        assert_eq!(
            head.headers()["content-length"].to_str().unwrap(),
            size.to_string()
        );
        // A player that reads 1 MiB of the answer and goes away.
        let mut cut = tokio::net::TcpStream::connect(addr).await.unwrap();
        cut.write_all(b"GET /big.ts HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = vec![0u8; 1 << 20];
        cut.read_exact(&mut got).await.unwrap();
        drop(cut);

        let lines = log_lines(&log, lines_before + 2).await;
        let (head_line, get_line) = (&lines[lines_before], &lines[lines_before + 1]);
        assert_eq!(head_line["method"], "HEAD");
        assert_eq!(head_line["bytes"], 0, "{case}: {head_line}");
        let logged = get_line["bytes"].as_u64().unwrap();
        assert!(
            logged > 0 && logged < size as u64,
            "{case}: a cut download logs what went out, not {size}: {get_line}"
        );
        let added = counted().await - before;
        println!("{case}: cut after 1 MiB read: logged {logged} bytes, counted {added}");
        assert!(
            added > 0 && added < size as u64,
            "{case}: tidecache_response_bytes_total rose by {added}"
        );
        daemon.shutdown().await;
    }
}

#[tokio::test]
async fn the_access_log_on_a_full_disk_keeps_whole_lines_and_counts_what_it_drops() {
    let test_box = TestBox::new();
    let mount = test_box.dir.path().join("logfs");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mount)
        .output();
    if !mounted.as_ref().is_ok_and(|output| output.status.success()) {
        println!("skipped: cannot mount a tmpfs here (needs root): {mounted:?}");
        return;
    }
    // Each file on its own holds whole lines only: a line cut by the full disk must not end
    // one file and go on in the next.
    let parsed_lines = |file: &std::path::Path| {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends in half a line",
            file.display()
        );
        for line in text.lines() {
            let value: Result<serde_json::Value, _> = serde_json::from_str(line);
            assert!(value.is_ok(), "a torn line in {}: {line:?}", file.display());
        }
        text.lines().count()
    };
    let unmount = || {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&mount)
            .status();
    };
    let log = mount.join("access.log");
    let filler = mount.join("filler");
    // Leave about 4 KB free: room for a few dozen lines, then ENOSPC mid-line.
    let mut filler_bytes = 60 * 1024;
    std::fs::write(&filler, vec![0u8; filler_bytes]).unwrap();
    while std::fs::write(mount.join("probe"), vec![0u8; 8 * 1024]).is_ok() {
        filler_bytes += 8 * 1024;
        std::fs::write(&filler, vec![0u8; filler_bytes]).unwrap();
    }
    let _ = std::fs::remove_file(mount.join("probe"));
    let mut config = test_box.config(1, "");
    config.http.access_log = Some(log.clone());
    config.http.access_log_format = tidecache::config::AccessLogFormat::Json;
    seed(&config, &[("a.ts", b"segment")]);
    let daemon = start(&config).await;
    let addr = daemon.viewer_addrs[0];
    let requests = 120;
    for number in 0..requests {
        let response = get(addr, &format!("/a.ts?request={number}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        if number == requests / 2 {
            // Let the writer hit the full disk with half of them, then rotate the log as
            // logrotate does (rename, then SIGHUP) while the disk is still full.
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            std::fs::rename(&log, mount.join("access.log.1")).unwrap();
            daemon.reload(&config).unwrap();
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let rotated = mount.join("access.log.1");
    let while_full = std::fs::read_to_string(&rotated).unwrap_or_default()
        + &std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        while_full.lines().count() < requests,
        "the disk was meant to fill up: {} lines",
        while_full.lines().count()
    );
    std::fs::remove_file(&filler).unwrap();
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    let text = loop {
        let text = std::fs::read_to_string(&rotated).unwrap_or_default()
            + &std::fs::read_to_string(&log).unwrap_or_default();
        let dropped = metric_value(
            &metrics_text(&daemon).await,
            "tidecache_access_log_dropped_total",
        )
        .unwrap_or(0.0) as usize;
        if text.lines().count() + dropped >= requests || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let dropped = metric_value(
        &metrics_text(&daemon).await,
        "tidecache_access_log_dropped_total",
    )
    .unwrap_or(0.0) as usize;
    daemon.shutdown().await;
    let parsed = parsed_lines(&rotated) + parsed_lines(&log);
    unmount();
    assert_eq!(text.lines().count(), parsed);
    println!(
        "{requests} requests, the log rotated while the disk was full: {parsed} lines parsed, {dropped} counted as dropped"
    );
    assert_eq!(parsed + dropped, requests);
}

#[tokio::test]
async fn answers_cut_at_the_shutdown_timeout_are_in_the_access_log() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for sendfile in [true, false] {
        let test_box = TestBox::new();
        let log = test_box.dir.path().join("access.log");
        let mut config = test_box.config(
            1,
            "[cache]\nram = \"0\"\n[limits]\nshutdown_timeout = \"1s\"\n",
        );
        config.http.sendfile = sendfile;
        config.http.access_log = Some(log.clone());
        config.http.access_log_format = tidecache::config::AccessLogFormat::Json;
        seed(&config, &[("huge.ts", &pattern(64 << 20))]);
        let daemon = start(&config).await;
        // A player that reads the start of a big answer, then stops reading.
        let mut stalled = tokio::net::TcpStream::connect(daemon.viewer_addrs[0])
            .await
            .unwrap();
        stalled
            .write_all(b"GET /huge.ts HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut start = vec![0u8; 1 << 20];
        stalled.read_exact(&mut start).await.unwrap();
        let drained = tokio::time::timeout(IO_TIMEOUT, daemon.shutdown())
            .await
            .expect("shutdown returns");
        assert!(!drained, "a reader that stopped cannot drain");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "sendfile {sendfile}: {text:?}");
        let sent = lines[0]["bytes"].as_u64().unwrap();
        assert!(
            (1 << 20..64 << 20).contains(&sent),
            "sendfile {sendfile}: the cut answer logs what went out: {sent}"
        );
        drop(stalled);
    }
}

/// Bytes of `path` in the page cache, from util-linux's `fincore`.
fn resident_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux)");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("fincore said {out:?}"))
}

/// A GET the sendfile path answers from a file it just opened reads the object into the
/// page cache first (in large folios); a HEAD, a 304 and a one-byte range of a cold 16 MiB
/// object must not read it whole (a hostile review measured 15 ms and 16 MiB each when they
/// did, on the viewer's event loop).
#[tokio::test]
async fn only_gets_read_cold_objects_ahead_and_only_around_what_they_send() {
    use sha2::Digest;
    let test_box = TestBox::new();
    let config = test_box.config(1, "[cache]\nram = \"0\"\n");
    let size = 16 << 20;
    let names = ["head.ts", "range.ts", "cond.ts", "whole.ts"];
    let objects: Vec<(String, Vec<u8>)> = names
        .iter()
        .enumerate()
        .map(|(number, name)| {
            let mut data = pattern(size);
            data[0] = number as u8;
            (name.to_string(), data)
        })
        .collect();
    seed_all(&config, &objects);
    let file = |name: &str| test_box.store_path(0).join("objects").join(name);
    for name in names {
        let opened = std::fs::File::open(file(name)).unwrap();
        opened.sync_all().unwrap();
        rustix::fs::fadvise(&opened, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    }
    if resident_bytes(&file("head.ts")) > 0 {
        eprintln!("skipped: this file system keeps its pages (tmpfs?)");
        return;
    }
    let daemon = start(&config).await;
    let addr = daemon.viewer_addrs[0];
    let client = client();
    let etag = format!("\"{:x}\"", sha2::Sha256::digest(&objects[2].1));
    let head = client.head(url(addr, "/head.ts")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    let range = client
        .get(url(addr, "/range.ts"))
        .header("range", "bytes=0-0")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&range.bytes().await.unwrap()[..], &objects[1].1[..1]);
    let unchanged = client
        .get(url(addr, "/cond.ts"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    let whole = client.get(url(addr, "/whole.ts")).send().await.unwrap();
    assert_eq!(whole.bytes().await.unwrap().len(), size);
    let read_in: Vec<u64> = names
        .iter()
        .map(|name| resident_bytes(&file(name)))
        .collect();
    daemon.shutdown().await;
    assert_eq!(read_in[0], 0, "a HEAD reads nothing: {read_in:?}");
    assert!(
        read_in[1] <= 1 << 20,
        "a one-byte range is left to the kernel's read-ahead: {read_in:?}"
    );
    assert_eq!(read_in[2], 0, "a 304 reads nothing: {read_in:?}");
    assert_eq!(
        read_in[3], size as u64,
        "a whole GET reads it all: {read_in:?}"
    );
}
