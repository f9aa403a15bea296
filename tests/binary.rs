//! The `tidecache` binary as an operator runs it: exit codes, one-line errors, and a clean
//! stop on SIGTERM and SIGINT.

mod common;

use std::process::{Command, Output};

use common::*;

use common::process::{BINARY, signal, spawn_serve, wait_with_timeout};

/// A config file for `serve` inside the test box: `http` holds the `[http]` keys.
fn serve_config(test_box: &TestBox, name: &str, http: &str) -> std::path::PathBuf {
    test_box.config_file(name, http, "")
}

/// A config file serving HTTPS only, with this certificate and key.
fn https_config(
    test_box: &TestBox,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::path::PathBuf {
    test_box.config_file(
        "tls.toml",
        "listen = []",
        &format!("[https]\nlisten = [\"127.0.0.1:0\"]\ncert = {cert:?}\nkey = {key:?}\n"),
    )
}

fn run(args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tidecache")
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn check_config_prints_the_effective_config_and_exits_0() {
    let test_box = TestBox::new();
    let file = test_box.write_file(
        "ok.toml",
        b"[http]\nlisten = [\"127.0.0.1:8080\"]\n[limits]\nheader_timeout = \"5s\"\n",
    );
    let output = run(&["check-config", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("header_timeout = \"5s\""), "{printed}");
    assert!(
        printed.contains("max_connections = 100000"),
        "defaults filled in"
    );
    let reparsed = tidecache::config::Config::parse(&printed);
    assert!(reparsed.is_ok(), "printed config is valid: {reparsed:?}");
}

#[test]
fn check_config_names_the_bad_key_in_one_line_and_exits_2() {
    let test_box = TestBox::new();
    for (name, text, key) in [
        (
            "typo.toml",
            "[limits]\nheader_timout = \"5s\"\n",
            "header_timout",
        ),
        (
            "size.toml",
            "[limits]\nheader_timeout = \"fast\"\n",
            "limits.header_timeout",
        ),
        (
            "window.toml",
            "[schedule]\nfill_windows = [\"25:00-03:00\"]\n",
            "schedule.fill_windows",
        ),
        (
            "zone.toml",
            "[schedule]\ntimezone = \"Mars/Olympus\"\n",
            "schedule.timezone",
        ),
        ("syntax.toml", "[http\n", "tidecache: error:"),
    ] {
        let file = test_box.write_file(name, text.as_bytes());
        let output = run(&["check-config", file.to_str().unwrap()]);
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{name}: one line: {stderr}"
        );
        assert!(stderr.contains(key), "{name}: names {key}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let output = run(&["check-config", "/nonexistent/tidecache.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr_of(&output).contains("/nonexistent/tidecache.toml"));
}

#[test]
fn usage_errors_exit_2() {
    let output = run(&["no-such-command"]);
    assert_eq!(output.status.code(), Some(2));
    let output = run(&["serve", "--config"]);
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test]
async fn serve_answers_then_exits_0_on_sigterm_and_sigint() {
    for signal_name in ["TERM", "INT"] {
        let test_box = TestBox::new();
        let config = test_box.config(1, "");
        seed(&config, &[("t/master.m3u8", b"#EXTM3U\n")]);
        let file = serve_config(&test_box, "tidecache.toml", "listen = [\"127.0.0.1:0\"]");
        let mut running = spawn_serve(&file);
        let client = client();
        let health = client
            .get(format!("http://{}/healthz", running.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        let playlist = client
            .get(url(running.viewer, "/t/master.m3u8"))
            .send()
            .await
            .unwrap();
        assert_eq!(playlist.status(), 200);
        assert_eq!(playlist.text().await.unwrap(), "#EXTM3U\n");
        signal(&running.child, signal_name);
        assert_eq!(
            wait_with_timeout(&mut running.child),
            Some(0),
            "SIG{signal_name}"
        );
    }
}

#[test]
fn serve_with_a_bad_config_or_a_taken_port_fails_in_one_line() {
    let test_box = TestBox::new();
    let bad = test_box.write_file("bad.toml", b"[limits]\nmax_connections = 0\n");
    let output = run(&["serve", "--config", bad.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = stderr_of(&output);
    assert!(stderr.contains("limits.max_connections"), "{stderr}");

    let key = test_box.write_file("url.key", b"secret");
    let signed = serve_config(
        &test_box,
        "signed.toml",
        &format!("listen = [\"127.0.0.1:0\"]\nurl_signing_key_file = {key:?}"),
    );
    let output = run(&["serve", "--config", signed.to_str().unwrap()]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "refuses rather than serve unsigned"
    );
    assert!(stderr_of(&output).contains("http.url_signing_key_file"));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let file = serve_config(
        &test_box,
        "taken.toml",
        &format!("listen = [\"127.0.0.1:{port}\"]"),
    );
    let output = run(&["serve", "--config", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr_of(&output);
    let error_lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("tidecache: error:"))
        .collect();
    assert_eq!(error_lines.len(), 1, "{stderr}");
    assert!(
        error_lines[0].contains(&format!("127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

#[test]
fn serve_with_unusable_tls_files_is_a_configuration_error_naming_the_key() {
    let test_box = TestBox::new();
    let TestCert { cert, key, .. } = make_cert(test_box.dir.path());
    let garbage = test_box.write_file("garbage.pem", b"not PEM at all\n");
    let missing = test_box.dir.path().join("missing.pem");
    let cases = [
        ("missing cert", &missing, &key, "https.cert: "),
        ("cert without a certificate", &garbage, &key, "https.cert: "),
        ("missing key", &cert, &missing, "https.key: "),
        ("key that is not a key", &cert, &garbage, "https.key: "),
    ];
    for (name, cert, key, expected) in cases {
        let file = https_config(&test_box, cert, key);
        let output = run(&["serve", "--config", file.to_str().unwrap()]);
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        let error_lines: Vec<&str> = stderr
            .lines()
            .filter(|line| line.starts_with("tidecache: error:"))
            .collect();
        assert_eq!(error_lines.len(), 1, "{name}: {stderr}");
        assert!(
            error_lines[0].contains(expected),
            "{name}: expected {expected:?} in {stderr}"
        );
    }
}

#[test]
fn sign_url_refuses_a_key_the_box_would_refuse() {
    let test_box = TestBox::new();
    for (name, key) in [("short.key", &b"short\n"[..]), ("empty.key", b"\n")] {
        let key = test_box.write_file(name, key);
        let output = run(&["sign-url", "/a.ts", "--key-file", key.to_str().unwrap()]);
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains("--key-file"), "{name}: {stderr}");
        assert!(output.stdout.is_empty(), "{name}: no URL is printed");
    }
}

#[test]
fn a_sighup_the_moment_systemd_hears_ready_reloads_and_does_not_kill() {
    use std::os::unix::net::UnixDatagram;
    for round in 0..5 {
        let test_box = TestBox::new();
        let file = serve_config(&test_box, "tidecache.toml", "listen = [\"127.0.0.1:0\"]");
        let socket_path = test_box.dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&socket_path).unwrap();
        notify
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut child = Command::new(BINARY)
            .args(["serve", "--config"])
            .arg(&file)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut message = [0u8; 512];
        loop {
            let read = notify.recv(&mut message).expect("READY within 10 s");
            if String::from_utf8_lossy(&message[..read]).contains("READY=1") {
                break;
            }
        }
        // What systemctl reload does the instant the unit is up.
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: killed by a SIGHUP sent right after READY"
        );
        signal(&child, "TERM");
        assert_eq!(wait_with_timeout(&mut child), Some(0), "round {round}");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(
            stderr.contains("configuration reloaded"),
            "round {round}: {stderr}"
        );
        assert!(
            !stderr.contains('\u{1b}'),
            "round {round}: colour codes in a log that is not a terminal: {stderr:?}"
        );
    }
}

#[test]
fn pem_errors_name_the_marker_in_words() {
    let test_box = TestBox::new();
    let TestCert { key, .. } = make_cert(test_box.dir.path());
    let unclosed = test_box.write_file("unclosed.pem", b"-----BEGIN CERTIFICATE-----\nMIIB\n");
    let file = https_config(&test_box, &unclosed, &key);
    let output = run(&["serve", "--config", file.to_str().unwrap()]);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("END CERTIFICATE"), "{stderr}");
    assert!(!stderr.contains("[45, 45"), "bytes as numbers: {stderr}");
}
