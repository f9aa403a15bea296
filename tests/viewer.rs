//! CONTRACT section 4, request by request, against the real daemon on loopback.

mod common;

use common::*;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};

const SEGMENT_PATH: &str = "title123/1080p/seg_00001.m4s";
const SEGMENT_LEN: usize = 100_000;

/// A box with a few objects of every content type and a 100 kB segment.
async fn serving_box(extra: &str) -> (TestBox, tidecache::daemon::Daemon, Vec<u8>) {
    let test_box = TestBox::new();
    let config = test_box.config(2, extra);
    let segment = pattern(SEGMENT_LEN);
    seed(
        &config,
        &[
            (SEGMENT_PATH, &segment),
            ("title123/master.m3u8", b"#EXTM3U\n"),
            ("title123/manifest.mpd", b"<MPD/>"),
            ("title123/init.mp4", b"init"),
            ("title123/seg.ts", b"ts"),
            ("title123/audio.aac", b"aac"),
            ("title123/subs.vtt", b"WEBVTT\n"),
            ("title123/blob.bin", b"blob"),
            ("title123/empty.ts", b""),
            ("dir with space/a%b.ts", b"encoded"),
        ],
    );
    let daemon = start(&config).await;
    (test_box, daemon, segment)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name} in {headers:?}"))
        .to_str()
        .expect("ascii header")
}

#[tokio::test]
async fn get_answers_200_with_every_contract_header() {
    let (_box, daemon, segment) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    let response = get(addr, &format!("/{SEGMENT_PATH}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(header(&headers, "content-length"), SEGMENT_LEN.to_string());
    assert_eq!(header(&headers, "content-type"), "video/iso.segment");
    assert_eq!(
        header(&headers, "etag"),
        format!("\"{}\"", sha256_hex(&segment))
    );
    assert!(httpdate::parse_http_date(header(&headers, "last-modified")).is_ok());
    assert_eq!(header(&headers, "accept-ranges"), "bytes");
    assert_eq!(header(&headers, "cache-control"), "public, max-age=86400");
    assert_eq!(header(&headers, "access-control-allow-origin"), "*");
    let body = response.bytes().await.unwrap();
    assert_eq!(&body[..], &segment[..]);
    daemon.shutdown().await;
}

#[tokio::test]
async fn content_type_follows_the_extension_table() {
    let (_box, daemon, _) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    let client = client();
    for (path, expected) in [
        ("/title123/master.m3u8", "application/vnd.apple.mpegurl"),
        ("/title123/manifest.mpd", "application/dash+xml"),
        ("/title123/init.mp4", "video/mp4"),
        ("/title123/seg.ts", "video/mp2t"),
        ("/title123/audio.aac", "audio/aac"),
        ("/title123/subs.vtt", "text/vtt"),
        ("/title123/blob.bin", "application/octet-stream"),
    ] {
        let response = client.get(url(addr, path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            header(response.headers(), "content-type"),
            expected,
            "{path}"
        );
    }
    daemon.shutdown().await;
}

#[tokio::test]
async fn cache_control_and_cors_origin_are_configurable() {
    let test_box = TestBox::new();
    let mut text_config = test_box.config(1, "");
    text_config.http.cache_control = "public, max-age=60".to_owned();
    text_config.http.cors_allow_origin = "https://player.example".to_owned();
    seed(&text_config, &[("a.ts", b"abc")]);
    let daemon = start(&text_config).await;
    let response = get(daemon.viewer_addrs[0], "/a.ts").await;
    assert_eq!(
        header(response.headers(), "cache-control"),
        "public, max-age=60"
    );
    assert_eq!(
        header(response.headers(), "access-control-allow-origin"),
        "https://player.example"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn empty_objects_are_served() {
    let (_box, daemon, _) = serving_box("").await;
    let response = get(daemon.viewer_addrs[0], "/title123/empty.ts").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(response.headers(), "content-length"), "0");
    assert!(response.bytes().await.unwrap().is_empty());
    daemon.shutdown().await;
}

#[tokio::test]
async fn percent_encoded_paths_are_decoded_once_and_query_is_ignored() {
    let (_box, daemon, segment) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    let client = client();
    let response = client
        .get(url(addr, "/dir%20with%20space/a%25b.ts"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(&response.bytes().await.unwrap()[..], b"encoded");
    let response = client
        .get(url(addr, &format!("/{SEGMENT_PATH}?cb=123&token=abc")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().len(), segment.len());
    let response = client
        .get(url(addr, "//title123//master.m3u8"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "repeated slashes merge");
    daemon.shutdown().await;
}

#[tokio::test]
async fn head_has_the_get_headers_and_no_body_on_h1_and_h2() {
    let (_box, daemon, _) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    for client in [client(), h2c_client()] {
        let get = client
            .get(url(addr, &format!("/{SEGMENT_PATH}")))
            .send()
            .await
            .unwrap();
        let get_headers = get.headers().clone();
        let head = client
            .head(url(addr, &format!("/{SEGMENT_PATH}")))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        for name in [
            "content-length",
            "content-type",
            "etag",
            "last-modified",
            "accept-ranges",
            "cache-control",
        ] {
            assert_eq!(
                header(head.headers(), name),
                header(&get_headers, name),
                "{name} on {:?}",
                head.version()
            );
        }
        assert!(head.bytes().await.unwrap().is_empty());
    }
    let raw_head = raw(
        addr,
        format!("HEAD /{SEGMENT_PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        raw_head.contains(&format!("content-length: {SEGMENT_LEN}\r\n")),
        "{raw_head}"
    );
    assert!(
        raw_head.ends_with("\r\n\r\n"),
        "HEAD sends no body: {raw_head:?}"
    );
    daemon.shutdown().await;
}

async fn get_range(addr: std::net::SocketAddr, range: &str) -> reqwest::Response {
    client()
        .get(url(addr, &format!("/{SEGMENT_PATH}")))
        .header(header::RANGE, range)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn single_ranges_of_every_form_give_206() {
    let (_box, daemon, segment) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    let len = SEGMENT_LEN;
    for (range, start, end) in [
        ("bytes=0-0", 0, 0),
        ("bytes=100-199", 100, 199),
        ("bytes=99000-", 99_000, len - 1),
        ("bytes=-500", len - 500, len - 1),
        ("bytes=99990-200000", 99_990, len - 1),
        ("bytes=-200000", 0, len - 1),
    ] {
        let response = get_range(addr, range).await;
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(response.headers(), "content-range"),
            format!("bytes {start}-{end}/{len}"),
            "{range}"
        );
        assert_eq!(
            header(response.headers(), "content-length"),
            (end - start + 1).to_string()
        );
        assert_eq!(
            header(response.headers(), "content-type"),
            "video/iso.segment"
        );
        assert!(response.headers().contains_key("etag"));
        let body = response.bytes().await.unwrap();
        assert_eq!(&body[..], &segment[start..=end], "{range}");
    }
    daemon.shutdown().await;
}

#[tokio::test]
async fn several_ranges_give_multipart_byteranges() {
    let (_box, daemon, segment) = serving_box("").await;
    let response = get_range(daemon.viewer_addrs[0], "bytes=0-9, 50-59,-5").await;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert!(response.headers().get("content-range").is_none());
    let content_type = header(response.headers(), "content-type").to_owned();
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .expect("multipart type")
        .to_owned();
    let length: usize = header(response.headers(), "content-length")
        .parse()
        .unwrap();
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len(), length);
    let mut expected = Vec::new();
    for (start, end) in [(0, 9), (50, 59), (SEGMENT_LEN - 5, SEGMENT_LEN - 1)] {
        expected.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Type: video/iso.segment\r\nContent-Range: bytes {start}-{end}/{SEGMENT_LEN}\r\n\r\n"
            )
            .as_bytes(),
        );
        expected.extend_from_slice(&segment[start..=end]);
    }
    expected.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    assert_eq!(&body[..], &expected[..]);
    daemon.shutdown().await;
}

#[tokio::test]
async fn overlapping_ranges_are_coalesced() {
    let (_box, daemon, segment) = serving_box("").await;
    let response = get_range(daemon.viewer_addrs[0], "bytes=0-99,50-149,150-199").await;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(response.headers(), "content-range"),
        format!("bytes 0-199/{SEGMENT_LEN}")
    );
    assert_eq!(&response.bytes().await.unwrap()[..], &segment[..200]);
    daemon.shutdown().await;
}

#[tokio::test]
async fn range_amplification_is_answered_with_the_whole_object() {
    let (_box, daemon, _) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    let seventeen: Vec<String> = (0..17)
        .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
        .collect();
    let response = get_range(addr, &format!("bytes={}", seventeen.join(","))).await;
    assert_eq!(response.status(), StatusCode::OK, "more than 16 ranges");
    assert_eq!(response.bytes().await.unwrap().len(), SEGMENT_LEN);
    let sixteen: Vec<String> = (0..16)
        .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
        .collect();
    let response = get_range(addr, &format!("bytes={}", sixteen.join(","))).await;
    assert_eq!(
        response.status(),
        StatusCode::PARTIAL_CONTENT,
        "16 ranges are fine"
    );
    // The sum is taken over the ranges as asked, before coalescing (as nginx does).
    let response = get_range(addr, "bytes=0-60000,40000-99999").await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "ranges adding up past the object"
    );
    assert_eq!(response.bytes().await.unwrap().len(), SEGMENT_LEN);
    daemon.shutdown().await;
}

#[tokio::test]
async fn unsatisfiable_range_gives_416_with_the_length() {
    let (_box, daemon, _) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    for range in ["bytes=100000-", "bytes=200000-300000", "bytes=-0"] {
        let response = get_range(addr, range).await;
        assert_eq!(
            response.status(),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{range}"
        );
        assert_eq!(
            header(response.headers(), "content-range"),
            format!("bytes */{SEGMENT_LEN}")
        );
    }
    daemon.shutdown().await;
}

#[tokio::test]
async fn malformed_or_foreign_ranges_are_ignored() {
    let (_box, daemon, _) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    for range in [
        "bytes=abc",
        "bytes=5-1",
        "items=0-10",
        "bytes=0-1,junk",
        "bytes=",
        "0-10",
        "bytes=99999999999999999999999-",
    ] {
        let response = get_range(addr, range).await;
        assert_eq!(response.status(), StatusCode::OK, "{range}");
        assert_eq!(
            response.bytes().await.unwrap().len(),
            SEGMENT_LEN,
            "{range}"
        );
    }
    daemon.shutdown().await;
}

#[tokio::test]
async fn conditional_requests_follow_rfc_9110() {
    let (_box, daemon, segment) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    let client = client();
    let path = url(addr, &format!("/{SEGMENT_PATH}"));
    let first = client.get(&path).send().await.unwrap();
    let etag = header(first.headers(), "etag").to_owned();
    let modified = header(first.headers(), "last-modified").to_owned();
    let earlier = httpdate::fmt_http_date(std::time::UNIX_EPOCH);
    let later = httpdate::fmt_http_date(
        std::time::SystemTime::now() + std::time::Duration::from_secs(86_400),
    );
    let weak = format!("W/{etag}");
    let other = "\"other\"".to_owned();
    let garbage = "garbage".to_owned();
    let any = "*".to_owned();
    let first_ten = "bytes=0-9".to_owned();

    let cases: Vec<(Vec<(&str, &String)>, StatusCode)> = vec![
        (vec![("if-none-match", &etag)], StatusCode::NOT_MODIFIED),
        (vec![("if-none-match", &weak)], StatusCode::NOT_MODIFIED),
        (vec![("if-none-match", &any)], StatusCode::NOT_MODIFIED),
        (vec![("if-none-match", &other)], StatusCode::OK),
        (vec![("if-match", &etag)], StatusCode::OK),
        (vec![("if-match", &other)], StatusCode::PRECONDITION_FAILED),
        (vec![("if-match", &weak)], StatusCode::PRECONDITION_FAILED),
        (
            vec![("if-modified-since", &modified)],
            StatusCode::NOT_MODIFIED,
        ),
        (
            vec![("if-modified-since", &later)],
            StatusCode::NOT_MODIFIED,
        ),
        (vec![("if-modified-since", &earlier)], StatusCode::OK),
        (vec![("if-modified-since", &garbage)], StatusCode::OK),
        (
            vec![("if-unmodified-since", &earlier)],
            StatusCode::PRECONDITION_FAILED,
        ),
        (vec![("if-unmodified-since", &modified)], StatusCode::OK),
        // If-None-Match takes precedence over If-Modified-Since.
        (
            vec![("if-none-match", &other), ("if-modified-since", &later)],
            StatusCode::OK,
        ),
        // If-Range with the current validator honours the range; a stale one sends everything.
        (
            vec![("range", &first_ten), ("if-range", &etag)],
            StatusCode::PARTIAL_CONTENT,
        ),
        (
            vec![("range", &first_ten), ("if-range", &modified)],
            StatusCode::PARTIAL_CONTENT,
        ),
        (
            vec![("range", &first_ten), ("if-range", &other)],
            StatusCode::OK,
        ),
        (
            vec![("range", &first_ten), ("if-range", &earlier)],
            StatusCode::OK,
        ),
    ];
    for (headers, expected) in cases {
        let mut request = client.get(&path);
        for (name, value) in &headers {
            request = request.header(*name, value.as_str());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), expected, "{headers:?}");
        let has_range = headers.iter().any(|(name, _)| *name == "range");
        let body = response.bytes().await.unwrap();
        match expected {
            StatusCode::NOT_MODIFIED => assert!(body.is_empty()),
            StatusCode::PARTIAL_CONTENT => assert_eq!(&body[..], &segment[..10]),
            StatusCode::OK if has_range => assert_eq!(body.len(), SEGMENT_LEN),
            _ => {}
        }
    }

    let not_modified = client
        .get(&path)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(header(not_modified.headers(), "etag"), etag);
    assert_eq!(header(not_modified.headers(), "last-modified"), modified);
    assert!(not_modified.headers().contains_key("cache-control"));
    daemon.shutdown().await;
}

#[tokio::test]
async fn cors_preflight_and_plain_options() {
    let (_box, daemon, _) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    let client = client();
    let preflight = client
        .request(
            reqwest::Method::OPTIONS,
            url(addr, &format!("/{SEGMENT_PATH}")),
        )
        .header("origin", "https://player.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "range")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let headers = preflight.headers();
    assert_eq!(header(headers, "access-control-allow-origin"), "*");
    assert!(header(headers, "access-control-allow-methods").contains("GET"));
    assert!(
        header(headers, "access-control-allow-headers")
            .to_ascii_lowercase()
            .contains("range")
    );
    assert!(headers.contains_key("access-control-max-age"));

    let plain = client
        .request(reqwest::Method::OPTIONS, url(addr, "/anything"))
        .send()
        .await
        .unwrap();
    assert!(plain.status().is_success());
    assert_eq!(header(plain.headers(), "allow"), "GET, HEAD, OPTIONS");

    let get = client
        .get(url(addr, &format!("/{SEGMENT_PATH}")))
        .header("origin", "https://player.example")
        .send()
        .await
        .unwrap();
    let exposed = header(get.headers(), "access-control-expose-headers").to_ascii_lowercase();
    for name in ["content-range", "content-length", "etag", "accept-ranges"] {
        assert!(exposed.contains(name), "{name} exposed to browser players");
    }
    daemon.shutdown().await;
}

#[tokio::test]
async fn missing_objects_are_404_or_302_to_the_fallback() {
    let (_box, daemon, _) = serving_box("").await;
    let response = get(daemon.viewer_addrs[0], "/title999/seg.ts").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    daemon.shutdown().await;

    let (_box, daemon, _) =
        serving_box("[schedule]\nfallback_url = \"https://origin.example/cdn/\"\n").await;
    let response = get(daemon.viewer_addrs[0], "/title999/seg.ts?token=1").await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(
        header(response.headers(), "location"),
        "https://origin.example/cdn/title999/seg.ts?token=1"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn other_methods_get_405_with_allow() {
    let (_box, daemon, _) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    let client = client();
    for method in ["POST", "PUT", "DELETE", "PATCH", "PROPFIND"] {
        let response = client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                url(addr, &format!("/{SEGMENT_PATH}")),
            )
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
        assert_eq!(header(response.headers(), "allow"), "GET, HEAD, OPTIONS");
    }
    let stored = client
        .get(url(addr, &format!("/{SEGMENT_PATH}")))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::OK, "nothing was changed");
    daemon.shutdown().await;
}

#[tokio::test]
async fn hostile_paths_get_400_over_raw_tcp_and_the_server_stays_up() {
    let (_box, daemon, _) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    let long = format!("/{}", "a/".repeat(600));
    let long_segment = format!("/{}", "b".repeat(300));
    for target in [
        "/../etc/passwd",
        "/title123/../../etc/passwd",
        "/%2e%2e/etc/passwd",
        "/%2E%2E%2Fetc%2Fpasswd",
        "/title123/%2e/master.m3u8",
        "/./title123/master.m3u8",
        "/title123/master.m3u8%00",
        "/a%5c..%5cb",
        "/a\\b",
        "/%ff%fe",
        "/%zz",
        long.as_str(),
        long_segment.as_str(),
    ] {
        let answer = raw(
            addr,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&answer), 400, "{target}: {answer}");
    }
    // Not even HTTP: the parser refuses, nothing panics.
    let answer = raw(addr, b"\x16\x03\x01garbage\r\n\r\n").await;
    assert!(answer.is_empty() || status_of(&answer) == 400, "{answer:?}");
    let answer = raw(addr, b"GET /a b c HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.is_empty() || status_of(&answer) == 400, "{answer:?}");

    let still_up = get(addr, &format!("/{SEGMENT_PATH}")).await;
    assert_eq!(still_up.status(), StatusCode::OK);
    daemon.shutdown().await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (_box, daemon, _) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    let huge = "x".repeat(64 * 1024);
    let answer = raw(
        addr,
        format!("GET /{SEGMENT_PATH} HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        status_of(&answer),
        431,
        "{}",
        &answer[..answer.len().min(200)]
    );
    let still_up = get(addr, &format!("/{SEGMENT_PATH}")).await;
    assert_eq!(still_up.status(), StatusCode::OK);
    daemon.shutdown().await;
}

#[tokio::test]
async fn keep_alive_and_pipelining_on_http_1_1() {
    let (_box, daemon, _) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    let request = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let pipelined = format!(
        "{}{}GET /title123/subs.vtt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        request("/title123/master.m3u8"),
        request("/title123/missing.ts"),
    );
    let answer = raw(addr, pipelined.as_bytes()).await;
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &answer[at + 9..at + 12])
        .collect();
    assert_eq!(statuses, ["200", "404", "200"], "{answer:?}");
    assert!(answer.contains("#EXTM3U\n"));
    assert!(answer.ends_with("WEBVTT\n"), "{answer}");

    // One client connection serves many requests.
    let client = client();
    for _ in 0..20 {
        let response = client
            .get(url(addr, "/title123/master.m3u8"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.bytes().await.unwrap();
    }
    let metrics = metrics_text(&daemon).await;
    let open: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("tidecache_open_connections "))
        .expect("open connections gauge")
        .parse()
        .unwrap();
    assert!(open <= 1.0, "keep-alive reused one connection: {open}");
    daemon.shutdown().await;
}

#[tokio::test]
async fn http2_prior_knowledge_serves_ranges_and_many_streams() {
    let (_box, daemon, segment) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    let client = h2c_client();
    let response = client
        .get(url(addr, &format!("/{SEGMENT_PATH}")))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&response.bytes().await.unwrap()[..], &segment[10..20]);
    let mut requests = Vec::new();
    for _ in 0..32 {
        let client = client.clone();
        let target = url(addr, &format!("/{SEGMENT_PATH}"));
        requests.push(tokio::spawn(async move {
            client
                .get(target)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        }));
    }
    for request in requests {
        assert_eq!(&request.await.unwrap()[..], &segment[..]);
    }
    daemon.shutdown().await;
}

#[tokio::test]
async fn https_with_alpn_h2_and_http_1_1() {
    let test_box = TestBox::new();
    let cert = make_cert(test_box.dir.path());
    let config = test_box.config(
        1,
        &format!(
            "[https]\nlisten = [\"127.0.0.1:0\"]\ncert = {:?}\nkey = {:?}\n",
            cert.cert, cert.key
        ),
    );
    let segment = pattern(SEGMENT_LEN);
    seed(&config, &[(SEGMENT_PATH, &segment)]);
    let daemon = start(&config).await;
    let addr = daemon.https_addrs[0];
    let root = reqwest::Certificate::from_pem(cert.cert_pem.as_bytes()).unwrap();
    let build = |h1_only: bool| {
        let builder = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .timeout(IO_TIMEOUT)
            .tls_built_in_root_certs(false)
            .add_root_certificate(root.clone());
        let builder = if h1_only {
            builder.http1_only()
        } else {
            builder
        };
        builder.build().unwrap()
    };
    let target = format!("https://localhost:{}/{SEGMENT_PATH}", addr.port());
    let h2 = build(false).get(&target).send().await.unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2, "ALPN picked h2");
    assert_eq!(h2.status(), StatusCode::OK);
    assert_eq!(&h2.bytes().await.unwrap()[..], &segment[..]);
    let h1 = build(true)
        .get(&target)
        .header("range", "bytes=-100")
        .send()
        .await
        .unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    assert_eq!(h1.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        &h1.bytes().await.unwrap()[..],
        &segment[SEGMENT_LEN - 100..]
    );

    // Plain HTTP on the TLS port is refused without harming the listener.
    let answer = raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!answer.contains("200 OK"));
    let again = build(false).get(&target).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    daemon.shutdown().await;
}

/// The suite a TLS client offering `offered` (in that order of preference) ends up with.
async fn negotiated_suite(
    addr: std::net::SocketAddr,
    cert_pem: &str,
    offered: &[rustls::SupportedCipherSuite],
) -> std::io::Result<rustls::CipherSuite> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = offered.to_vec();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(IO_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))??;
    Ok(tls.get_ref().1.negotiated_cipher_suite().unwrap().suite())
}

#[tokio::test]
async fn https_prefers_aes_128_gcm_gives_chacha20_to_clients_without_aes_and_obeys_config() {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    let test_box = TestBox::new();
    let cert = make_cert(test_box.dir.path());
    let https = format!(
        "[https]\nlisten = [\"127.0.0.1:0\"]\ncert = {:?}\nkey = {:?}\n",
        cert.cert, cert.key
    );
    let daemon = start(&test_box.config(1, &https)).await;
    let addr = daemon.https_addrs[0];
    let openssl_order = [
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS13_AES_128_GCM_SHA256,
    ];
    assert_eq!(
        negotiated_suite(addr, &cert.cert_pem, &openssl_order)
            .await
            .unwrap(),
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        "the server's order for a client with AES hardware"
    );
    assert_eq!(
        negotiated_suite(
            addr,
            &cert.cert_pem,
            &[TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_128_GCM_SHA256]
        )
        .await
        .unwrap(),
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        "a client putting ChaCha20 first has no AES hardware: it gets ChaCha20"
    );
    assert!(
        negotiated_suite(addr, &cert.cert_pem, &[TLS13_AES_256_GCM_SHA384])
            .await
            .is_err(),
        "AES-256 is not offered by default"
    );
    daemon.shutdown().await;

    let test_box = TestBox::new();
    let cert = make_cert(test_box.dir.path());
    let https = format!(
        "[https]\nlisten = [\"127.0.0.1:0\"]\ncert = {:?}\nkey = {:?}\ncipher_suites = [\"TLS_AES_256_GCM_SHA384\"]\n",
        cert.cert, cert.key
    );
    let daemon = start(&test_box.config(1, &https)).await;
    assert_eq!(
        negotiated_suite(daemon.https_addrs[0], &cert.cert_pem, &openssl_order)
            .await
            .unwrap(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn missing_tls_files_stop_the_start_with_a_clear_error() {
    let test_box = TestBox::new();
    let config = test_box.config(
        1,
        "[https]\nlisten = [\"127.0.0.1:0\"]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
    );
    let err = match tidecache::daemon::Daemon::start(&config).await {
        Ok(_) => panic!("started without a certificate"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}

#[tokio::test]
async fn not_serving_answers_503_with_retry_after_or_redirects() {
    use tidecache::schedule::{Mode, Override};

    let (window, ends) = window_around_now(30);
    let (_box, daemon, _) = serving_box(&format!(
        "[schedule]\nfill_windows = [\"{window}\"]\ndrain = \"0s\"\n"
    ))
    .await;
    let addr = daemon.viewer_addrs[0];
    wait_for_mode(&daemon, |state| state.mode == Mode::Filling).await;
    let response = get(addr, &format!("/{SEGMENT_PATH}")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry: i64 = header(response.headers(), "retry-after").parse().unwrap();
    let left = ends.as_second() - jiff::Timestamp::now().as_second();
    assert!(
        (left - 2..=left + 1).contains(&retry),
        "{retry} vs {left} s left"
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
async fn admin_routes_do_not_answer_on_the_viewer_port() {
    let (_box, daemon, _) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    for path in [
        "/metrics",
        "/healthz",
        "/readyz",
        "/v1/status",
        "/v1/manifest",
    ] {
        let response = client().get(url(addr, path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    daemon.shutdown().await;
}

#[tokio::test]
async fn oversized_headers_on_http2_are_refused_and_the_connection_survives() {
    let (_box, daemon, _) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    let client = h2c_client();
    let target = url(addr, &format!("/{SEGMENT_PATH}"));
    let refused = client
        .get(&target)
        .header("x-big", "x".repeat(64 * 1024))
        .send()
        .await;
    // The server advertises SETTINGS_MAX_HEADER_LIST_SIZE; the request is refused (by the
    // client honouring it, or by the server resetting the stream), never served.
    let err = refused.expect_err("an over-size header list is refused");
    assert!(err.is_request(), "{err:?}");
    let after = client.get(&target).send().await.unwrap();
    assert_eq!(after.status(), StatusCode::OK);
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
        let lines: Vec<&str> = text.lines().collect();
        if format == "combined" {
            assert!(lines[0].starts_with("127.0.0.1 - - ["), "{}", lines[0]);
            assert!(
                lines[0].contains("\"GET /a.ts?token=1 HTTP/1.1\" 200 7 \"-\" \"test-player/1.0\""),
                "{}",
                lines[0]
            );
            assert!(
                lines[1].contains("\"GET /missing.ts HTTP/1.1\" 404"),
                "{}",
                lines[1]
            );
        } else {
            let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
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
async fn hot_objects_are_served_from_ram_byte_identical_with_ranges() {
    let (test_box, daemon, segment) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    for _ in 0..3 {
        let whole = get(addr, &format!("/{SEGMENT_PATH}")).await;
        assert_eq!(&whole.bytes().await.unwrap()[..], &segment[..]);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // With the file gone from disk, only the RAM copy can answer these ranges.
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
    let ranged = get_range(addr, "bytes=1000-1999").await;
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&ranged.bytes().await.unwrap()[..], &segment[1000..2000]);
    let multi = get_range(addr, "bytes=0-9,-10").await;
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

#[tokio::test]
async fn a_flipped_bit_found_when_loading_into_ram_takes_the_object_out_of_service() {
    let test_box = TestBox::new();
    let config = test_box.config(1, "");
    let data = pattern(50_000);
    seed(&config, &[("flip.ts", &data), ("fine.ts", &data[..40_000])]);
    let file = test_box.store_path(0).join("objects/flip.ts");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[12_345] ^= 0x10;
    std::fs::write(&file, bytes).unwrap();
    let daemon = start(&config).await;
    let addr = daemon.viewer_addrs[0];
    let _first = get(addr, "/flip.ts").await;
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    while get(addr, "/flip.ts").await.status() != StatusCode::NOT_FOUND {
        assert!(
            tokio::time::Instant::now() < deadline,
            "taken out of service"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(get(addr, "/fine.ts").await.status(), StatusCode::OK);
    let metrics = metrics_text(&daemon).await;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("tidecache_store_errors_total") && line.ends_with(" 1")),
        "{metrics}"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn the_sendfile_fast_path_and_hyper_answer_alike() {
    let mut answers = Vec::new();
    for sendfile in [true, false] {
        let test_box = TestBox::new();
        let mut config = test_box.config(1, "");
        config.http.sendfile = sendfile;
        let data = pattern(300_000);
        seed(&config, &[("a.ts", &data)]);
        let daemon = start(&config).await;
        let addr = daemon.viewer_addrs[0];
        let mut seen = Vec::new();
        for range in [None, Some("bytes=1000-1999"), Some("bytes=0-9,-10")] {
            let mut request = client().get(url(addr, "/a.ts"));
            if let Some(range) = range {
                request = request.header("range", range);
            }
            let response = request.send().await.unwrap();
            let mut headers: Vec<(String, String)> = response
                .headers()
                .iter()
                // Date and Last-Modified (the fill time of each box's seed) may differ by a
                // second between the two boxes.
                .filter(|(name, _)| {
                    !["date", "content-type", "last-modified"].contains(&name.as_str())
                })
                .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
                .collect();
            headers.sort();
            let status = response.status();
            let body = response.bytes().await.unwrap();
            if range.is_none() {
                assert_eq!(&body[..], &data[..], "sendfile = {sendfile}");
            }
            seen.push((
                status,
                headers,
                if range == Some("bytes=0-9,-10") {
                    body.len()
                } else {
                    0
                },
            ));
        }
        answers.push(seen);
        daemon.shutdown().await;
    }
    assert_eq!(answers[0], answers[1]);
}
