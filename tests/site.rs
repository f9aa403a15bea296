//! A site of boxes (CONTRACT section 7), end to end: three real daemons and then a fourth,
//! one counting origin, viewers that follow redirects.
//!
//! What it shows: each object on exactly `copies` boxes; shares within a few percent of the
//! weights; the origin sends each object once per site although some have two copies; a
//! fourth box takes about a quarter of the objects from its siblings (not the origin) and
//! no object is unavailable at any point meanwhile; every object is readable from every box
//! with redirects followed, and a request bounces at most once; a stopped box is out of
//! every redirect within seconds.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::origin::Origin;
use common::site::*;
use common::*;
use tidecache::fill::Received;
use tidecache::schedule::Override;

const NAMES: [&str; 4] = ["box-a", "box-b", "box-c", "box-d"];
const OBJECTS: usize = 6000;
/// `[fill]` keys of every box: 6000 small objects go faster with more at once.
const FILL: &str = "concurrency = 16\n";
/// The site's objects: sizes from 256 B to 2.3 KiB, every sixth with two copies.
fn objects() -> Vec<(String, Vec<u8>, u8)> {
    (0..OBJECTS)
        .map(|i| {
            let mut data = pattern(256 + (i * 37) % 2048);
            data[0] = i as u8;
            data[1] = (i >> 8) as u8;
            let copies = if i % 6 == 0 { 2 } else { 1 };
            (format!("t{}/seg_{i:05}.ts", i % 40), data, copies)
        })
        .collect()
}

/// The boxes holding each object.
fn holders_of_each(boxes: &[SiteBox], objects: &[(String, Vec<u8>, u8)]) -> Vec<Vec<&'static str>> {
    objects
        .iter()
        .map(|(path, _, _)| holders(boxes, path))
        .collect()
}

fn assert_copies_and_shares(boxes: &[SiteBox], objects: &[(String, Vec<u8>, u8)]) {
    let held = holders_of_each(boxes, objects);
    let mut per_box: HashMap<&str, usize> = HashMap::new();
    for ((path, _, copies), holders) in objects.iter().zip(&held) {
        assert_eq!(holders.len(), usize::from(*copies), "{path}: {holders:?}");
        for name in holders {
            *per_box.entry(name).or_default() += 1;
        }
    }
    let copies: usize = objects
        .iter()
        .map(|(_, _, copies)| usize::from(*copies))
        .sum();
    let expected = copies as f64 / boxes.len() as f64;
    for site_box in boxes {
        let count = per_box.get(site_box.name).copied().unwrap_or(0) as f64;
        let off = (count - expected).abs() / expected;
        println!(
            "{}: {count} objects, {:.1} % off an equal share",
            site_box.name,
            off * 100.0
        );
        assert!(
            off < 0.05,
            "{}: {count} against {expected:.0}",
            site_box.name
        );
    }
}

async fn every_object_from_every_box(boxes: &[SiteBox], objects: &[(String, Vec<u8>, u8)]) {
    let objects = Arc::new(objects.to_vec());
    let mut readers = tokio::task::JoinSet::new();
    for site_box in boxes {
        let (viewer, name, objects) = (site_box.viewer(), site_box.name, Arc::clone(&objects));
        // Four readers per box, each a quarter of the objects.
        for part in 0..4 {
            let objects = Arc::clone(&objects);
            readers.spawn(async move {
                let client = following();
                for (path, data, _) in objects.iter().skip(part).step_by(4) {
                    let response = client
                        .get(url(viewer, &format!("/{path}")))
                        .send()
                        .await
                        .expect("answered");
                    assert_eq!(response.status(), 200, "{path} from {name}");
                    assert_eq!(&response.bytes().await.expect("body")[..], &data[..]);
                }
            });
        }
    }
    while let Some(read) = readers.join_next().await {
        read.expect("a reader");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_site_holds_each_object_copies_times_fills_from_siblings_and_redirects_viewers() {
    let objects = objects();
    let origin = Origin::start().await;
    for (path, data, _) in &objects {
        origin.put(path, data, common::origin::Fault::None);
    }
    let manifest_bytes: u64 = objects.iter().map(|(_, data, _)| data.len() as u64).sum();
    let manifest = Bytes::from(manifest("site-1", &origin.base_url(), &objects));

    // Three boxes, each told of the other two.
    let mut boxes = Vec::new();
    for name in &NAMES[..3] {
        boxes.push(SiteBox::start(name, FILL).await);
    }
    let site = addresses(&boxes, &vec![1.0; boxes.len()]);
    for site_box in &mut boxes {
        site_box.peer_with(&site, 1);
        site_box
            .daemon()
            .fill()
            .accept(Received::Bytes(manifest.clone()), 1 << 30)
            .await
            .expect("manifest accepted");
    }
    let started = Instant::now();
    fill_all(&boxes.iter().collect::<Vec<_>>(), "site-1").await;
    println!("three boxes filled in {:?}", started.elapsed());
    serve_all(&boxes).await;
    all_ready(&boxes).await;

    assert_copies_and_shares(&boxes, &objects);
    let origin_after_three = origin.bytes_sent();
    println!(
        "origin bytes: {origin_after_three} for a manifest of {manifest_bytes} ({:.3}x)",
        origin_after_three as f64 / manifest_bytes as f64
    );
    assert!(
        origin_after_three as f64 <= manifest_bytes as f64 * 1.05,
        "{origin_after_three} origin bytes for {manifest_bytes}"
    );
    let started = Instant::now();
    every_object_from_every_box(&boxes, &objects).await;
    println!(
        "every object read from every box in {:?}",
        started.elapsed()
    );

    // A request another box already redirected is never redirected again.
    let (path, _, _) = objects
        .iter()
        .find(|(path, _, _)| !boxes[0].holds(path))
        .expect("an object box-a does not hold");
    let bounced = client()
        .get(url(boxes[0].viewer(), &format!("/{path}?tidecache-hop=1")))
        .send()
        .await
        .expect("answered");
    assert_eq!(bounced.status(), 404);
    // A path the manifest does not list is a plain miss, not a redirect to its would-be
    // owner (the box knows the listed paths from a Bloom filter: about 1 % of unlisted
    // paths would still be redirected once).
    let unlisted = (0..20)
        .filter(|i| {
            let path = format!("/scan/{i}.php");
            let site = boxes[0].daemon().fill().site().unwrap();
            !site.is_mine(&path[1..], 0)
        })
        .count();
    let mut redirected_unlisted = 0;
    for i in 0..20 {
        let answer = get(boxes[0].viewer(), &format!("/scan/{i}.php")).await;
        if answer.status() == 302 {
            redirected_unlisted += 1;
        }
    }
    assert!(
        unlisted > 5 && redirected_unlisted <= 1,
        "{redirected_unlisted} of {unlisted}"
    );
    let redirected = get(boxes[0].viewer(), &format!("/{path}")).await;
    assert_eq!(redirected.status(), 302);
    assert!(
        redirected.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with("tidecache-hop=1")
    );

    // A fourth box joins: every box is told, all fill (the first three keep serving), and
    // viewers ask all the while.
    let before = holders_of_each(&boxes, &objects);
    boxes.push(SiteBox::start(NAMES[3], FILL).await);
    let site = addresses(&boxes, &vec![1.0; boxes.len()]);
    for site_box in &mut boxes {
        site_box.peer_with(&site, 1);
    }
    boxes[3]
        .daemon()
        .fill()
        .accept(Received::Bytes(manifest.clone()), 1 << 30)
        .await
        .expect("manifest accepted");
    let stop_asking = Arc::new(AtomicBool::new(false));
    let (asked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let asking = {
        let viewers: Vec<SocketAddr> = boxes[..3].iter().map(SiteBox::viewer).collect();
        let objects = objects.clone();
        let (stop_asking, asked, failed) = (
            Arc::clone(&stop_asking),
            Arc::clone(&asked),
            Arc::clone(&failed),
        );
        tokio::spawn(async move {
            let client = following();
            let mut turn = 0usize;
            while !stop_asking.load(Ordering::Relaxed) {
                let (path, data, _) = &objects[(turn * 7919) % objects.len()];
                let viewer = viewers[turn % viewers.len()];
                turn += 1;
                let answer = client.get(url(viewer, &format!("/{path}"))).send().await;
                let (good, what) = match answer {
                    Ok(response) if response.status() == 200 => {
                        let from = response.url().to_string();
                        let body = response.bytes().await;
                        (body.is_ok_and(|body| body[..] == data[..]), from)
                    }
                    Ok(response) => (
                        false,
                        format!("{} from {}", response.status(), response.url()),
                    ),
                    Err(err) => (false, err.to_string()),
                };
                asked.fetch_add(1, Ordering::Relaxed);
                if !good {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("unavailable during the join: {path} from {viewer}: {what}");
                }
            }
        })
    };
    let started = Instant::now();
    fill_all(&boxes.iter().collect::<Vec<_>>(), "site-1").await;
    println!("four boxes filled in {:?}", started.elapsed());
    // The fourth box holds its share now; a second pass on the others gives up what moved,
    // once every box has seen it settled (two readiness checks and a timeout: 0.9 s).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for site_box in &boxes[..3] {
        site_box
            .daemon()
            .set_override(Override::Serve)
            .await
            .expect("override serve");
    }
    let started = Instant::now();
    fill_all(&boxes[..3].iter().collect::<Vec<_>>(), "site-1").await;
    println!("second pass in {:?}", started.elapsed());
    serve_all(&boxes).await;
    all_ready(&boxes).await;
    stop_asking.store(true, Ordering::Relaxed);
    asking.await.expect("the viewer task");
    println!(
        "viewers during the join: {} requests, {} failed",
        asked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert!(asked.load(Ordering::Relaxed) > 100);
    assert_eq!(failed.load(Ordering::Relaxed), 0);

    assert_copies_and_shares(&boxes, &objects);
    let after = holders_of_each(&boxes, &objects);
    let moved = before
        .iter()
        .zip(&after)
        .filter(|(before, after)| before != after)
        .count();
    // Copies that moved: each is now on a box that did not hold it before.
    let moved_copies: usize = before
        .iter()
        .zip(&after)
        .map(|(before, after)| after.iter().filter(|name| !before.contains(name)).count())
        .sum();
    let copies: usize = objects
        .iter()
        .map(|(_, _, copies)| usize::from(*copies))
        .sum();
    let moved_share = moved_copies as f64 / copies as f64;
    println!(
        "moved by the join: {moved_copies} of {copies} copies ({:.1} %), {moved} objects changed boxes",
        moved_share * 100.0
    );
    assert!(
        (0.22..0.28).contains(&moved_share),
        "{moved_copies} copies moved"
    );
    assert_eq!(
        origin.bytes_sent(),
        origin_after_three,
        "the fourth box filled from its siblings, not the origin"
    );
    let peer_bytes = metric_value(
        &metrics_text(boxes[3].daemon()).await,
        "tidecache_fill_source_bytes_total{source=\"peer\"}",
    )
    .unwrap_or(0.0);
    assert!(peer_bytes > 0.0);
    every_object_from_every_box(&boxes, &objects).await;

    // box-b stops: within seconds no box sends viewers to it.
    let stopped = boxes.remove(1);
    let stopped_at = Instant::now();
    let stopped_viewer = format!("http://{}", stopped.viewer());
    if let Some(daemon) = stopped.daemon {
        daemon.shutdown().await;
    }
    let its_objects: Vec<&String> = objects
        .iter()
        .zip(&after)
        .filter(|(_, holders)| holders.contains(&"box-b"))
        .map(|((path, _, _), _)| path)
        .take(50)
        .collect();
    loop {
        let mut sent_there = 0;
        for site_box in &boxes {
            for path in &its_objects {
                let answer = get(site_box.viewer(), &format!("/{path}")).await;
                let location = answer
                    .headers()
                    .get("location")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("");
                if location.starts_with(&stopped_viewer) {
                    sent_there += 1;
                }
            }
        }
        if sent_there == 0 {
            break;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(5),
            "redirects still go to the stopped box"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "the stopped box was out of every redirect after {:?}",
        stopped_at.elapsed()
    );
    for site_box in boxes.iter_mut() {
        if let Some(daemon) = site_box.daemon.take() {
            daemon.shutdown().await;
        }
    }
    drop(stopped.test_box);
}
