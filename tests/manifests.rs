//! Large manifests (CONTRACT section 3): NDJSON, gzip, and deltas against the manifest in
//! force, through the real admin listener and the `tidecache manifest build|push` commands.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Output;

use common::*;
use reqwest::StatusCode;
use tidecache::daemon::Daemon;

fn run(args: &[&std::ffi::OsStr]) -> Output {
    std::process::Command::new(common::process::BINARY)
        .args(args)
        .env_remove("TIDECACHE_TOKEN")
        .output()
        .expect("run tidecache")
}

async fn run_async(args: Vec<std::ffi::OsString>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|arg| arg.as_os_str()).collect();
        run(&args)
    })
    .await
    .unwrap()
}

fn os(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<std::ffi::OsString> {
    parts.iter().map(|part| part.as_ref().to_owned()).collect()
}

async fn put(
    daemon: &Daemon,
    token: &str,
    body: Vec<u8>,
    encoding: Option<&str>,
) -> (StatusCode, String) {
    let mut request = client()
        .put(format!("http://{}/v1/manifest", daemon.admin_addr))
        .bearer_auth(token)
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn write_tree(root: &Path, files: &[(&str, &[u8])]) {
    for (path, data) in files {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, data).unwrap();
    }
}

#[tokio::test]
async fn ndjson_gzip_and_chained_deltas_built_and_pushed_from_the_cli() {
    let seed_dir = tempfile::tempdir().unwrap();
    let seed = seed_dir.path().join("seed");
    let a = pattern(30_000);
    let b = pattern(40_000);
    let c = pattern(50_000);
    write_tree(&seed, &[("t/a.ts", &a), ("t/b.ts", &b), ("t/c.ts", &c)]);
    let test_box = TestBox::new();
    let (token_file, token) = test_box.token_file();
    let mut config = test_box.config(
        1,
        &format!("[schedule]\ndrain = \"0s\"\n[fill]\nfile_roots = [{seed:?}]\n"),
    );
    config.admin.token_file = Some(token_file.clone());
    let daemon = start(&config).await;
    let admin = format!("http://{}", daemon.admin_addr);
    let base_url = format!("file://{}/", seed.display());
    let file = |name: &str| test_box.dir.path().join(name);
    let build = |extra: &[&str], output: std::path::PathBuf| {
        let mut args = os(&[&"manifest", &"build", &seed, &"--base-url", &base_url]);
        args.extend(extra.iter().map(std::ffi::OsString::from));
        args.push("-o".into());
        args.push(output.into());
        run_async(args)
    };
    let push = |manifest: std::path::PathBuf| {
        run_async(os(&[
            &"manifest",
            &"push",
            &manifest,
            &"--admin",
            &admin,
            &"--token-file",
            &token_file,
        ]))
    };

    // Night 1: the whole manifest, NDJSON, pushed gzip-compressed.
    let built = build(
        &["--format", "ndjson", "--id", "night-1"],
        file("night-1.ndjson"),
    )
    .await;
    assert_eq!(built.status.code(), Some(0), "{built:?}");
    let text = std::fs::read_to_string(file("night-1.ndjson")).unwrap();
    assert_eq!(
        text.lines().count(),
        4,
        "a header and three objects:\n{text}"
    );
    let pushed = push(file("night-1.ndjson")).await;
    assert_eq!(pushed.status.code(), Some(0), "{pushed:?}");
    fill_until_done(&daemon, "night-1").await;

    // Night 2: b is gone, c changed, d is new. The delta carries only that, and the whole
    // manifest written beside it is the next night's base.
    std::fs::remove_file(seed.join("t/b.ts")).unwrap();
    let c2 = pattern(51_000);
    let d = pattern(7_000);
    write_tree(&seed, &[("t/c.ts", &c2), ("t/d.ts", &d)]);
    let full_2 = file("night-2.ndjson");
    let built = build(
        &[
            "--base",
            file("night-1.ndjson").to_str().unwrap(),
            "--id",
            "night-2",
            "--format",
            "ndjson",
            "--full",
            full_2.to_str().unwrap(),
        ],
        file("night-2.delta"),
    )
    .await;
    assert_eq!(built.status.code(), Some(0), "{built:?}");
    let stderr = String::from_utf8_lossy(&built.stderr);
    assert!(stderr.contains("2 new or changed, 1 removed"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(file("night-2.delta"))
            .unwrap()
            .lines()
            .count(),
        4
    );
    let pushed = push(file("night-2.delta")).await;
    assert_eq!(pushed.status.code(), Some(0), "{pushed:?}");
    let status = admin_status(daemon.admin_addr).await;
    assert_eq!(status["manifest"]["id"], "night-2");
    assert_eq!(status["manifest"]["objects"], 3);
    assert_eq!(status["manifest"]["bytes"], 30_000 + 51_000 + 7_000);

    // The same delta again: its base is no longer in force.
    let again = push(file("night-2.delta")).await;
    assert_ne!(again.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("409"),
        "{again:?}"
    );
    let raw = std::fs::read(file("night-2.delta")).unwrap();
    let (code, body) = put(&daemon, &token, raw, None).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("manifest in force"), "{body}");

    fill_until_done(&daemon, "night-2").await;
    let viewer = daemon.viewer_addrs[0];
    assert_eq!(&served(viewer, "/t/a.ts").await[..], &a[..]);
    assert_eq!(&served(viewer, "/t/c.ts").await[..], &c2[..]);
    assert_eq!(&served(viewer, "/t/d.ts").await[..], &d[..]);
    assert_eq!(get(viewer, "/t/b.ts").await.status(), StatusCode::NOT_FOUND);

    // Night 3 chains on night 2's whole manifest.
    write_tree(&seed, &[("t/e.ts", &d)]);
    let built = build(
        &["--base", full_2.to_str().unwrap(), "--id", "night-3"],
        file("night-3.delta"),
    )
    .await;
    assert_eq!(built.status.code(), Some(0), "{built:?}");
    let pushed = push(file("night-3.delta")).await;
    assert_eq!(pushed.status.code(), Some(0), "{pushed:?}");
    assert_eq!(
        admin_status(daemon.admin_addr).await["manifest"]["objects"],
        4
    );
    daemon.shutdown().await;

    // The deltas' result is what a restart finds in force.
    let daemon = start(&config).await;
    let status = admin_status(daemon.admin_addr).await;
    assert_eq!(status["manifest"]["id"], "night-3");
    assert_eq!(status["manifest"]["objects"], 4);
    daemon.shutdown().await;
}

#[tokio::test]
async fn bad_bodies_are_refused_and_the_manifest_in_force_stays() {
    let test_box = TestBox::new();
    let (token_file, token) = test_box.token_file();
    let mut config = test_box.config(1, "[fill]\nmax_manifest_size = \"64KiB\"\n");
    config.admin.token_file = Some(token_file);
    let daemon = start(&config).await;
    let sha = "00".repeat(32);
    let ndjson = |id: &str, count: usize| {
        let mut text =
            format!("{{\"version\": 1, \"id\": \"{id}\", \"base_url\": \"http://o/\"}}\n");
        for number in 0..count {
            text.push_str(&format!(
                "{{\"path\": \"t/{number:06}.ts\", \"size\": 1, \"sha256\": \"{sha}\"}}\n"
            ));
        }
        text.into_bytes()
    };
    let (code, body) = put(&daemon, &token, gzip(&ndjson("first", 10)), Some("gzip")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");

    // Small once compressed, far over the limit once not.
    let bomb = gzip(&ndjson("bomb", 20_000));
    assert!(bomb.len() < 64 * 1024);
    let (code, body) = put(&daemon, &token, bomb, Some("gzip")).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    let (code, body) = put(&daemon, &token, ndjson("br", 1), Some("br")).await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");

    let mut bad_line = ndjson("bad", 3);
    bad_line.extend_from_slice(b"{\"path\": \"../x.ts\", \"size\": 1, \"sha256\": \"00\"}\n");
    let (code, body) = put(&daemon, &token, bad_line, None).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("line 5"), "{body}");

    let (code, body) = put(
        &daemon,
        &token,
        b"\x1f\x8b\x08\x00garbage".to_vec(),
        Some("gzip"),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");

    let delta = b"{\"version\": 1, \"id\": \"d\", \"base\": \"nope\"}\n".to_vec();
    let (code, body) = put(&daemon, &token, delta, None).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");

    assert_eq!(
        admin_status(daemon.admin_addr).await["manifest"]["id"],
        "first"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&config.state_dir)
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("incoming") || name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "spool files left: {leftovers:?}");
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_long_accept_is_not_cut_by_the_idle_timeout_but_a_stalled_body_is() {
    let test_box = TestBox::new();
    let (token_file, token) = test_box.token_file();
    let mut config = test_box.config(
        1,
        "[limits]\nidle_timeout = \"200ms\"\n[fill]\nmax_manifest_size = \"256MiB\"\n",
    );
    config.admin.token_file = Some(token_file);
    let daemon = start(&config).await;
    let sha = "00".repeat(32);
    let mut text = String::from("{\"version\": 1, \"id\": \"big\", \"base_url\": \"http://o/\"}\n");
    for number in 0..150_000 {
        text.push_str(&format!(
            "{{\"path\": \"t{}/seg_{number:06}.ts\", \"size\": 1, \"sha256\": \"{sha}\"}}\n",
            number / 1000
        ));
    }
    let started = std::time::Instant::now();
    let (code, body) = put(&daemon, &token, gzip(text.as_bytes()), Some("gzip")).await;
    let took = started.elapsed();
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert!(
        took > std::time::Duration::from_millis(400),
        "the accept must outlast the idle timeout for this test to mean anything ({took:?})"
    );
    assert_eq!(
        admin_status(daemon.admin_addr).await["manifest"]["id"],
        "big"
    );

    // A body that stops arriving is cut, and leaves no spool behind.
    let mut stream = tokio::net::TcpStream::connect(daemon.admin_addr)
        .await
        .unwrap();
    let head = format!(
        "PUT /v1/manifest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n{{\"version\""
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .unwrap();
    let answer = tokio::time::timeout(IO_TIMEOUT, read_to_close(&mut stream))
        .await
        .expect("answered or closed within the timeout");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    eventually("the spool file is removed", || async {
        std::fs::read_dir(&config.state_dir)
            .unwrap()
            .flatten()
            .all(|entry| !entry.file_name().to_string_lossy().contains("incoming"))
    })
    .await;
    daemon.shutdown().await;
}
