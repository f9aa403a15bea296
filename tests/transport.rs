//! The transport as clients meet it: HTTP/1.1 keep-alive and pipelining, HTTP/2, TLS and
//! ALPN, hostile and oversized requests, and the sendfile fast path against hyper.

mod common;

use common::viewer::*;
use common::*;
use reqwest::StatusCode;

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

/// An `[https]` section listening on a free port with `cert`, plus `extra` keys.
fn https_section(cert: &TestCert, extra: &str) -> String {
    format!(
        "[https]\nlisten = [\"127.0.0.1:0\"]\ncert = {:?}\nkey = {:?}\n{extra}",
        cert.cert, cert.key
    )
}

/// A box serving HTTPS with a new self-signed certificate and `extra` `[https]` keys.
async fn https_box(extra: &str) -> (TestBox, TestCert, tidecache::daemon::Daemon) {
    let test_box = TestBox::new();
    let cert = make_cert(test_box.dir.path());
    let daemon = start(&test_box.config(1, &https_section(&cert, extra))).await;
    (test_box, cert, daemon)
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
    let (_box, cert, daemon) = https_box("").await;
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

    let (_box, cert, daemon) = https_box("cipher_suites = [\"TLS_AES_256_GCM_SHA384\"]\n").await;
    assert_eq!(
        negotiated_suite(daemon.https_addrs[0], &cert.cert_pem, &openssl_order)
            .await
            .unwrap(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    daemon.shutdown().await;
}

/// A TLS 1.3 ClientHello offering `suites` in that order (GREASE values included, as Chrome
/// and every BoringSSL client send them), an x25519 key share, for `localhost`: what rustls'
/// own client cannot be made to send.
fn client_hello(suites: &[u16]) -> Vec<u8> {
    fn with_u16_len(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }
    fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend(with_u16_len(body));
        out
    }
    let mut name = vec![0u8];
    name.extend(with_u16_len(b"localhost"));
    let mut key_share = vec![0x00, 0x1d, 0x00, 0x20, 9];
    key_share.extend([0u8; 31]);
    let suite_bytes: Vec<u8> = suites
        .iter()
        .flat_map(|suite| suite.to_be_bytes())
        .collect();
    let mut extensions = Vec::new();
    extensions.extend(extension(0x0000, &with_u16_len(&name)));
    extensions.extend(extension(0x000a, &with_u16_len(&[0x00, 0x1d])));
    extensions.extend(extension(
        0x000d,
        &with_u16_len(&[0x04, 0x03, 0x08, 0x04, 0x08, 0x07, 0x04, 0x01]),
    ));
    extensions.extend(extension(0x002b, &[0x02, 0x03, 0x04]));
    extensions.extend(extension(0x0033, &with_u16_len(&key_share)));
    let mut hello = vec![0x03, 0x03];
    hello.extend([7u8; 32]);
    hello.push(0);
    hello.extend(with_u16_len(&suite_bytes));
    hello.extend([0x01, 0x00]);
    hello.extend(with_u16_len(&extensions));
    let mut handshake = vec![0x01];
    handshake.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(with_u16_len(&handshake));
    record
}

/// The cipher suite of the ServerHello a server answers `hello` with.
async fn server_hello_suite(addr: std::net::SocketAddr, hello: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut answer = vec![0u8; 128];
    tokio::time::timeout(IO_TIMEOUT, tcp.read_exact(&mut answer))
        .await
        .expect("a ServerHello in time")
        .unwrap();
    // record header (5), handshake header (4), version (2), random (32), session id.
    assert_eq!(
        (answer[0], answer[5]),
        (0x16, 0x02),
        "a ServerHello: {answer:?}"
    );
    let session_id_len = answer[43] as usize;
    u16::from_be_bytes([answer[44 + session_id_len], answer[45 + session_id_len]])
}

#[tokio::test]
async fn chacha20_preference_sees_past_grease_in_a_real_client_hello() {
    let (_box, _cert, daemon) = https_box("").await;
    let addr = daemon.https_addrs[0];
    let (aes_128, chacha20) = (0x1301, 0x1303);
    // Chrome on a phone without AES instructions, and with them.
    for (offered, expected) in [
        (vec![0x0a0a, chacha20, aes_128], chacha20),
        (vec![0xdada, chacha20, aes_128, 0x00ff], chacha20),
        (vec![0x0a0a, aes_128, chacha20], aes_128),
        (vec![aes_128, chacha20], aes_128),
    ] {
        assert_eq!(
            server_hello_suite(addr, &client_hello(&offered)).await,
            expected,
            "offered {offered:04x?}"
        );
    }
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

#[tokio::test]
async fn an_http2_player_pausing_between_segments_keeps_its_connection_until_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    let test_box = TestBox::new();
    let config = test_box.config(
        1,
        "[limits]\nheader_timeout = \"1s\"\nidle_timeout = \"4s\"\n",
    );
    seed(&config, &[("a.ts", b"segment")]);
    let daemon = start(&config).await;
    let mut stream = tokio::net::TcpStream::connect(daemon.viewer_addrs[0])
        .await
        .unwrap();
    let mut opening = h2::PREFACE.to_vec();
    opening.extend(h2::frame(4, 0, 0, &[]));
    opening.extend(h2::get(1, "/a.ts"));
    stream.write_all(&opening).await.unwrap();
    let ended = |id: u32| move |frame: &h2::FrameHead| frame.stream == id && frame.flags & 0x1 != 0;
    assert!(
        h2::read_until(&mut stream, ended(1)).await.is_some(),
        "first answer"
    );
    // Acknowledge the server's SETTINGS as a client does, then pause like a player between
    // segments: longer than header_timeout, shorter than idle_timeout.
    stream.write_all(&h2::frame(4, 0x1, 0, &[])).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    stream.write_all(&h2::get(3, "/a.ts")).await.unwrap();
    assert!(
        h2::read_until(&mut stream, ended(3)).await.is_some(),
        "the connection outlived header_timeout between requests"
    );
    let started = std::time::Instant::now();
    assert!(
        h2::read_until(&mut stream, |frame| frame.kind == 7)
            .await
            .is_some(),
        "an idle HTTP/2 connection is closed with GOAWAY"
    );
    let idle = started.elapsed();
    assert!(
        idle >= std::time::Duration::from_secs(3),
        "GOAWAY came after idle_timeout, not header_timeout: {idle:?}"
    );
    daemon.shutdown().await;
}

/// A TLS client trusting `cert_pems`, speaking HTTP/1.1; it keeps its sessions for
/// resumption (rustls' client default: 256 per configuration).
fn resuming_client(cert_pems: &[&str]) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert_pem in cert_pems {
        roots
            .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
            .unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    std::sync::Arc::new(config)
}

/// One GET over a new TLS connection; how the handshake went.
async fn tls_get(
    addr: std::net::SocketAddr,
    config: &std::sync::Arc<rustls::ClientConfig>,
) -> rustls::HandshakeKind {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    tls.write_all(b"GET /missing.ts HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Reading to the end also takes in the session tickets the server sent.
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    assert!(answer.starts_with(b"HTTP/1.1 404"), "{answer:?}");
    kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_player_resumes_after_many_others_and_after_a_reload() {
    use rustls::HandshakeKind::{Full, Resumed};
    let test_box = TestBox::new();
    let cert = make_cert(test_box.dir.path());
    let mut config = test_box.config(1, &https_section(&cert, ""));
    config.http.workers = 2;
    let daemon = start(&config).await;
    let addr = daemon.https_addrs[0];
    // The certificate the box will be given later, with a new key.
    let next_dir = tempfile::tempdir().unwrap();
    let next = make_cert(next_dir.path());
    let player = resuming_client(&[&cert.cert_pem, &next.cert_pem]);
    assert_eq!(tls_get(addr, &player).await, Full);
    assert_eq!(tls_get(addr, &player).await, Resumed);
    // 300 other players, each new to the box.
    let started = std::time::Instant::now();
    for _ in 0..300 {
        assert_eq!(
            tls_get(addr, &resuming_client(&[&cert.cert_pem, &next.cert_pem])).await,
            Full
        );
    }
    let full_rate = 300.0 / started.elapsed().as_secs_f64();
    assert_eq!(
        tls_get(addr, &player).await,
        Resumed,
        "resumed after 300 other players"
    );
    // A SIGHUP re-reads the certificate; sessions survive it.
    daemon.reload(&config).unwrap();
    assert_eq!(
        tls_get(addr, &player).await,
        Resumed,
        "resumed after a reload"
    );
    let started = std::time::Instant::now();
    for _ in 0..300 {
        assert_eq!(tls_get(addr, &player).await, Resumed);
    }
    let resumed_rate = 300.0 / started.elapsed().as_secs_f64();
    // A new certificate and key (a re-key, another name): sessions of the old identity end.
    std::fs::copy(&next.cert, &cert.cert).unwrap();
    std::fs::copy(&next.key, &cert.key).unwrap();
    daemon.reload(&config).unwrap();
    assert_eq!(
        tls_get(addr, &player).await,
        Full,
        "a session from the old certificate resumed under the new one"
    );
    assert_eq!(tls_get(addr, &player).await, Resumed);
    println!(
        "TLS connections with a GET, one at a time (debug build, client and server on this machine): full handshakes {full_rate:.0}/s, resumed {resumed_rate:.0}/s"
    );
    daemon.shutdown().await;
}
