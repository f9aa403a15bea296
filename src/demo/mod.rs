//! `tidecache demo`: a newcomer's first run with no set-up.
//!
//! It serves a small real HLS title (embedded, see `media/README.md`) from an in-process
//! origin over HTTP, starts the real daemon on loopback with a temporary store, accepts a
//! manifest for the title, fills through the real fill path (download, hash, fsync, rename,
//! index), switches to serving and prints URLs to play or fetch. Ctrl-C stops it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::daemon::Daemon;
use crate::schedule::{Mode, Override};

/// The title's files: (object path, bytes).
const TITLE: [(&str, &[u8]); 5] = [
    ("demo/master.m3u8", include_bytes!("media/master.m3u8")),
    ("demo/180p/index.m3u8", include_bytes!("media/index.m3u8")),
    ("demo/180p/seg_000.ts", include_bytes!("media/seg_000.ts")),
    ("demo/180p/seg_001.ts", include_bytes!("media/seg_001.ts")),
    ("demo/180p/seg_002.ts", include_bytes!("media/seg_002.ts")),
];

/// How long the demo waits for its fill before giving up.
const FILL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Something outside the daemon failed (a temp dir, a socket).
    #[error("{0}")]
    Setup(String),
    /// The daemon could not start.
    #[error(transparent)]
    Start(#[from] crate::daemon::StartError),
    /// The fill did not store the title.
    #[error("the demo fill did not finish: {0}")]
    Fill(String),
}

/// Bytes the demo's store may hold: ample for its title (under 400 KB).
const DEMO_STORE_CAPACITY: u64 = 64 << 20;

/// Runs the demo until Ctrl-C (or SIGTERM).
pub async fn run() -> Result<(), DemoError> {
    let dir = tempfile::Builder::new()
        .prefix("tidecache-demo-")
        .tempdir()
        .map_err(|err| DemoError::Setup(format!("temporary directory: {err}")))?;
    let origin = start_origin().await?;
    println!("origin:  serving the demo title at http://{origin}/ (in this process)");

    let mut config = Config {
        state_dir: dir.path().join("state"),
        ..Config::default()
    };
    config.stores[0].path = dir.path().join("store");
    // A fixed room for the small title: the default (the file system's free space less a
    // 2 % reserve of its size) is nothing on a nearly full disk, and the demo must run there.
    config.stores[0].capacity = Some(crate::config::ByteSize(DEMO_STORE_CAPACITY));
    config.schedule.fill_windows.clear();
    config.schedule.drain = crate::config::HumanDuration(Duration::ZERO);
    config.http.listen = vec![preferred_or_any(8080).await];
    config.admin.listen = preferred_or_any(8081).await;
    let daemon = match Daemon::start(&config).await {
        // Another program took a preferred port between the probe and the bind: any free
        // port serves a demo as well.
        Err(crate::daemon::StartError::Bind(_)) => {
            config.http.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
            config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            Daemon::start(&config).await?
        }
        started => started?,
    };
    let viewer = daemon.viewer_addrs[0];
    let admin = daemon.admin_addr;
    println!(
        "box:     tidecache on http://{viewer}/ (admin http://{admin}/), store in {}",
        dir.path().display()
    );

    let manifest = manifest(&format!("http://{origin}/"));
    let summary = daemon
        .fill()
        .accept(
            crate::fill::Received::Bytes(Bytes::from(manifest)),
            u64::MAX,
        )
        .await
        .map_err(|err| DemoError::Fill(err.to_string()))?;
    println!(
        "fill:    manifest {} accepted: {} objects, {} bytes; filling now",
        summary.id, summary.objects, summary.bytes
    );
    daemon
        .set_override(Override::Fill)
        .await
        .map_err(|err| DemoError::Fill(err.to_string()))?;
    let filled = tokio::time::timeout(FILL_TIMEOUT, async {
        loop {
            let status = daemon.fill().status();
            if status.state == crate::fill::progress::FillState::Done
                && status.manifest_id.as_deref() == Some(summary.id.as_str())
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .map_err(|_| DemoError::Fill(format!("not done within {FILL_TIMEOUT:?}")))?;
    if filled.objects_failed > 0 {
        let report = filled
            .last_fill
            .map(|report| report.failures)
            .unwrap_or_default();
        return Err(DemoError::Fill(format!(
            "{} objects failed: {report:?}",
            filled.objects_failed
        )));
    }
    println!(
        "fill:    done: {} objects verified and stored",
        filled.objects_done
    );
    daemon
        .set_override(Override::Auto)
        .await
        .map_err(|err| DemoError::Fill(err.to_string()))?;
    let mut mode = daemon.mode();
    let _ = mode.wait_for(|state| state.mode == Mode::Serving).await;

    let playlist = format!("http://{viewer}/demo/master.m3u8");
    println!("serving: {playlist}");
    println!();
    println!("Try:");
    println!("  ffplay {playlist}");
    println!("  curl -s {playlist}");
    println!("  curl -sI -H 'Range: bytes=0-187' http://{viewer}/demo/180p/seg_000.ts");
    println!("  cargo run --release -- status --admin http://{admin}");
    println!("or open {playlist} in Safari, or in any page using hls.js.");
    println!();
    println!("Ctrl-C stops the demo and removes its temporary store.");

    wait_for_stop().await;
    println!("stopping");
    daemon.shutdown().await;
    Ok(())
}

/// The manifest for the embedded title, fetched from `base_url`.
fn manifest(base_url: &str) -> String {
    let objects: Vec<serde_json::Value> = TITLE
        .iter()
        .map(|(path, data)| {
            serde_json::json!({
                "path": path,
                "size": data.len(),
                "sha256": crate::store::hex(&Sha256::digest(data)),
                "priority": i64::from(path.ends_with(".m3u8")),
            })
        })
        .collect();
    serde_json::json!({
        "version": crate::fill::manifest::MANIFEST_VERSION,
        "id": "demo",
        "base_url": base_url,
        "objects": objects,
    })
    .to_string()
}

/// `127.0.0.1:port` when it is free, else an ephemeral loopback port.
async fn preferred_or_any(port: u16) -> SocketAddr {
    let preferred = SocketAddr::from(([127, 0, 0, 1], port));
    match TcpListener::bind(preferred).await {
        Ok(listener) => {
            drop(listener);
            preferred
        }
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

/// Serves the embedded title over plain HTTP/1.1 on an ephemeral loopback port.
async fn start_origin() -> Result<SocketAddr, DemoError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|err| DemoError::Setup(format!("origin socket: {err}")))?;
    let addr = listener
        .local_addr()
        .map_err(|err| DemoError::Setup(format!("origin socket: {err}")))?;
    let files: Arc<Vec<(&'static str, Bytes)>> = Arc::new(
        TITLE
            .iter()
            .map(|(path, data)| (*path, Bytes::from_static(data)))
            .collect(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let files = Arc::clone(&files);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let files = Arc::clone(&files);
                        async move {
                            let path = request.uri().path().trim_start_matches('/');
                            let found = files.iter().find(|(name, _)| *name == path);
                            let response = match found {
                                Some((_, data)) => Response::builder()
                                    .header(header::CONTENT_LENGTH, data.len())
                                    .body(Full::new(data.clone())),
                                None => Response::builder()
                                    .status(StatusCode::NOT_FOUND)
                                    .body(Full::new(Bytes::new())),
                            };
                            Ok::<_, Infallible>(response.unwrap_or_default())
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_title_is_a_valid_manifest_of_real_segments() {
        let parsed =
            crate::fill::manifest::parse(manifest("http://127.0.0.1:1/").as_bytes()).unwrap();
        assert_eq!(parsed.len(), TITLE.len());
        for (path, data) in TITLE {
            if path.ends_with(".ts") {
                assert_eq!(data.len() % 188, 0, "{path}: whole TS packets");
                assert!(
                    data.chunks(188).all(|packet| packet[0] == 0x47),
                    "{path}: TS sync bytes"
                );
            }
        }
        let variant = std::str::from_utf8(TITLE[1].1).unwrap();
        for (path, _) in &TITLE[2..] {
            let name = path.rsplit('/').next().unwrap();
            assert!(variant.contains(name), "the playlist lists {name}");
        }
    }
}
