//! What the viewer tests share: a box seeded with objects of every content type and a
//! 100 kB segment, and small request helpers.

use reqwest::header::HeaderMap;

use super::*;

pub const SEGMENT_PATH: &str = "title123/1080p/seg_00001.m4s";
pub const SEGMENT_LEN: usize = 100_000;

/// A box with a few objects of every content type and a 100 kB segment.
pub async fn serving_box(extra: &str) -> (TestBox, tidecache::daemon::Daemon, Vec<u8>) {
    let (test_box, config, segment) = seeded_box(extra);
    let daemon = start(&config).await;
    (test_box, daemon, segment)
}

/// [`serving_box`] with the scheduler on a manual clock standing at `now` (RFC 3339).
pub async fn serving_box_at(
    extra: &str,
    now: &str,
) -> (TestBox, tidecache::daemon::Daemon, Vec<u8>) {
    let (test_box, config, segment) = seeded_box(extra);
    let (daemon, _clock) = start_at(&config, now).await;
    (test_box, daemon, segment)
}

/// The box and configuration behind [`serving_box`], seeded but not started.
fn seeded_box(extra: &str) -> (TestBox, tidecache::config::Config, Vec<u8>) {
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
    (test_box, config, segment)
}

pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name} in {headers:?}"))
        .to_str()
        .expect("ascii header")
}

pub async fn get_range(addr: std::net::SocketAddr, range: &str) -> reqwest::Response {
    client()
        .get(url(addr, &format!("/{SEGMENT_PATH}")))
        .header(reqwest::header::RANGE, range)
        .send()
        .await
        .unwrap()
}
