//! Byte ranges and conditional requests (RFC 9110 sections 14 and 13), against the real
//! daemon on loopback.

mod common;

use common::viewer::*;
use common::*;
use reqwest::StatusCode;

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
