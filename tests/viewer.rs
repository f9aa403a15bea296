//! CONTRACT section 4, what each request gets: headers, content types, paths, HEAD, CORS,
//! misses and methods, against the real daemon on loopback.

mod common;

use common::viewer::*;
use common::*;
use reqwest::StatusCode;

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
    assert_eq!(
        header(&headers, "timing-allow-origin"),
        "*",
        "hls.js in a browser sees timings and the protocol of cross-origin segments"
    );
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
    text_config.http.cache_control =
        tidecache::config::HeaderText::from_static("public, max-age=60");
    text_config.http.cors_allow_origin =
        tidecache::config::HeaderText::from_static("https://player.example");
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
    // RFC 9110 section 14.1.1: a non-zero suffix range is satisfiable on an empty object,
    // and selects all of it.
    let suffix = client()
        .get(url(daemon.viewer_addrs[0], "/title123/empty.ts"))
        .header(reqwest::header::RANGE, "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(suffix.status(), StatusCode::OK);
    assert_eq!(header(suffix.headers(), "content-length"), "0");
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_trailing_slash_names_a_directory_not_the_object() {
    let (_box, daemon, _) = serving_box("").await;
    let addr = daemon.viewer_addrs[0];
    assert_eq!(get(addr, "/title123/seg.ts").await.status(), StatusCode::OK);
    for alias in ["/title123/seg.ts/", "//title123//seg.ts//"] {
        assert_eq!(
            get(addr, alias).await.status(),
            StatusCode::NOT_FOUND,
            "{alias}"
        );
    }
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
