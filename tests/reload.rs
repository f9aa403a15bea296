//! SIGHUP: what can change live changes without dropping connections; what cannot is
//! reported; a bad new configuration keeps the old one.

mod common;

use std::time::Duration;

use common::process::{signal, spawn_serve, wait_with_timeout};
use common::*;
use reqwest::StatusCode;
use tidecache::config::HeaderText;
use tidecache::schedule::Mode;
use tokio::net::TcpStream;

#[tokio::test]
async fn reload_applies_live_settings_and_names_what_needs_a_restart() {
    let test_box = TestBox::new();
    let config = test_box.config(1, "[schedule]\ndrain = \"0s\"\n");
    seed(&config, &[("a.ts", b"segment")]);
    let (daemon, _clock) = start_at(&config, "2026-11-25T10:30:00Z").await;
    let viewer = daemon.viewer_addrs[0];
    let mut kept_alive = TcpStream::connect(viewer).await.unwrap();
    let first = exchange(&mut kept_alive, b"GET /a.ts HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        first.contains("cache-control: public, max-age=86400"),
        "{first}"
    );

    let (token_file, token) = test_box.token_file();
    let mut changed = config.clone();
    changed.http.cache_control = HeaderText::from_static("public, max-age=5");
    changed.admin.token_file = Some(token_file);
    changed.schedule.fill_windows = vec!["10:00-11:00".parse().unwrap()];
    changed.schedule.during_fill = tidecache::config::DuringFill::Serve;
    changed.http.listen = vec!["127.0.0.1:1".parse().unwrap()];
    let needs_restart = daemon.reload(&changed).unwrap();
    assert_eq!(needs_restart, ["http.listen"]);

    let second = exchange(&mut kept_alive, b"GET /a.ts HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        second.contains("cache-control: public, max-age=5"),
        "the same connection sees the new Cache-Control: {second}"
    );
    wait_for_mode(&daemon, |state| state.mode == Mode::Filling).await;
    assert_eq!(
        get(viewer, "/a.ts").await.status(),
        StatusCode::OK,
        "during_fill = serve took effect"
    );
    let post = client()
        .post(format!("http://{}/v1/mode", daemon.admin_addr))
        .bearer_auth(&token)
        .body(r#"{"mode": "auto"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::OK, "the new token is accepted");

    let mut broken = changed.clone();
    broken.http.cache_control = HeaderText::from_static("public, max-age=99");
    broken.http.url_signing_key_file = Some(test_box.dir.path().join("no-such-key"));
    let refused = daemon.reload(&broken).unwrap_err();
    assert!(refused.is_config(), "{refused}");
    assert!(
        refused
            .to_string()
            .starts_with("http.url_signing_key_file: "),
        "the error names the key: {refused}"
    );
    let third = exchange(&mut kept_alive, b"GET /a.ts HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        third.contains("max-age=5"),
        "nothing of a refused reload applied"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn sighup_rereads_the_file_and_a_bad_file_keeps_the_old_configuration() {
    let test_box = TestBox::new();
    let config = test_box.config(1, "");
    seed(&config, &[("a.ts", b"segment")]);
    let write = |cache_control: &str| {
        test_box.write_file(
            "tidecache.toml",
            format!(
                "state_dir = {:?}\n[http]\nlisten = [\"127.0.0.1:0\"]\ncache_control = {cache_control:?}\n[admin]\nlisten = \"127.0.0.1:0\"\n[[store]]\npath = {:?}\ncapacity = \"1GiB\"\n[schedule]\nfill_windows = []\n",
                test_box.dir.path().join("state"),
                test_box.store_path(0)
            )
            .as_bytes(),
        )
    };
    let file = write("public, max-age=86400");
    let mut running = spawn_serve(&file);
    let cache_control = |running_viewer| async move {
        get(running_viewer, "/a.ts").await.headers()["cache-control"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(cache_control(running.viewer).await, "public, max-age=86400");

    write("public, max-age=60");
    signal(&running.child, "HUP");
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    while cache_control(running.viewer).await != "public, max-age=60" {
        assert!(tokio::time::Instant::now() < deadline, "SIGHUP applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    std::fs::write(&file, b"[limits]\nmax_connections = \"lots\"\n").unwrap();
    signal(&running.child, "HUP");
    let refused = running.wait_for_log("reload refused");
    assert!(refused.contains("limits.max_connections"), "{refused}");
    assert_eq!(
        cache_control(running.viewer).await,
        "public, max-age=60",
        "a bad file changes nothing and the daemon stays up"
    );
    signal(&running.child, "TERM");
    assert_eq!(wait_with_timeout(&mut running.child), Some(0));
}

#[tokio::test]
async fn reload_rereads_the_tls_certificate() {
    let test_box = TestBox::new();
    let first_dir = test_box.dir.path().join("first");
    std::fs::create_dir_all(&first_dir).unwrap();
    let first = make_cert(&first_dir);
    let https = format!(
        "[https]\nlisten = [\"127.0.0.1:0\"]\ncert = {:?}\nkey = {:?}\n",
        first.cert, first.key
    );
    let config = test_box.config(1, &https);
    seed(&config, &[("a.ts", b"segment")]);
    let daemon = start(&config).await;
    let target = format!("https://localhost:{}/a.ts", daemon.https_addrs[0].port());
    let trusting = |pem: &str| {
        reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
            .timeout(IO_TIMEOUT)
            .build()
            .unwrap()
    };
    assert_eq!(
        trusting(&first.cert_pem)
            .get(&target)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // A new certificate at the same paths, as a renewal would leave it.
    let second = make_cert(&first_dir);
    daemon.reload(&config).unwrap();
    assert_eq!(
        trusting(&second.cert_pem)
            .get(&target)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK,
        "new connections get the renewed certificate"
    );
    assert!(
        trusting(&first.cert_pem).get(&target).send().await.is_err(),
        "the old certificate is no longer presented"
    );
    daemon.shutdown().await;
}
