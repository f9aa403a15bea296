//! SIGKILL of the daemon binary in the middle of a fill: after every restart nothing torn is
//! served, completed objects are not fetched again, and the fill finishes the job.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::origin::{Fault, Origin};
use common::process::{Running, spawn_serve};
use common::*;
use reqwest::StatusCode;

const OBJECTS: usize = 24;
const OBJECT_SIZE: usize = 160_000;
/// The first objects are big and fetched first, so a kill finds megabytes of them on disk.
const BIG_OBJECTS: usize = 2;
const BIG_OBJECT_SIZE: usize = 2_500_000;

/// Every object is 200 with exactly its bytes, or 404 (not there yet); never anything else.
async fn check_nothing_torn(running: &Running, objects: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut present = Vec::new();
    for (path, data) in objects {
        let response = get(running.viewer, &format!("/{path}")).await;
        match response.status() {
            StatusCode::OK => {
                assert_eq!(
                    &response.bytes().await.unwrap()[..],
                    &data[..],
                    "{path} served with wrong bytes"
                );
                present.push(path.clone());
            }
            StatusCode::NOT_FOUND => {}
            other => panic!("{path}: unexpected {other}"),
        }
    }
    present
}

async fn fill_state(running: &Running) -> serde_json::Value {
    admin_status(running.admin).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_fill_leaves_the_box_consistent_and_the_fill_finishes() {
    let origin = Origin::start().await;
    let objects: Vec<(String, Vec<u8>)> = (0..OBJECTS)
        .map(|number| {
            let size = if number < BIG_OBJECTS {
                BIG_OBJECT_SIZE
            } else {
                OBJECT_SIZE
            };
            let mut data = pattern(size);
            data[0] = number as u8;
            (format!("t/seg_{number:03}.m4s"), data)
        })
        .collect();
    for (number, (path, data)) in objects.iter().enumerate() {
        let chunk = if number < BIG_OBJECTS { 64_000 } else { 16_000 };
        origin.put(
            path,
            data,
            Fault::Drip {
                chunk,
                pause: Duration::from_millis(40),
            },
        );
    }
    let test_box = TestBox::new();
    let (token_file, token) = test_box.token_file();
    let config_text = format!(
        "state_dir = {:?}\n[http]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n[[store]]\npath = {:?}\ncapacity = \"1GiB\"\n[[store]]\npath = {:?}\ncapacity = \"1GiB\"\n[schedule]\nfill_windows = []\ndrain = \"0s\"\nduring_fill = \"serve\"\n[fill]\nconcurrency = 2\nretry_delay = \"20ms\"\n",
        test_box.dir.path().join("state"),
        token_file,
        test_box.store_path(0),
        test_box.store_path(1)
    );
    let config_file = test_box.write_file("tidecache.toml", config_text.as_bytes());

    let mut running = spawn_serve(&config_file);
    let listed: Vec<serde_json::Value> = objects
        .iter()
        .enumerate()
        .map(|(number, (path, data))| {
            let priority = i64::from(number < BIG_OBJECTS);
            serde_json::json!({"path": path, "size": data.len(), "sha256": sha256_hex(data), "priority": priority})
        })
        .collect();
    let manifest = serde_json::json!({"version": 1, "id": "crash", "base_url": origin.base_url(), "objects": listed}).to_string();
    let pushed = client()
        .put(format!("http://{}/v1/manifest", running.admin))
        .bearer_auth(&token)
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), StatusCode::ACCEPTED);
    let filling = client()
        .post(format!("http://{}/v1/mode", running.admin))
        .bearer_auth(&token)
        .body(r#"{"mode": "fill"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(filling.status(), StatusCode::OK);

    // TIDECACHE_CRASH_KILLS=30 (and a seed in TIDECACHE_CRASH_SEED) runs a longer crash
    // loop at random moments; CI runs three kills at fixed ones.
    let kills: usize = std::env::var("TIDECACHE_CRASH_KILLS")
        .ok()
        .and_then(|kills| kills.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("TIDECACHE_CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0);
    let mut random = fastrand::Rng::with_seed(seed);
    let delays: Vec<u64> = (0..kills)
        .map(|_| if seed == 0 { 900 } else { random.u64(50..1200) })
        .collect();
    let mut completed_before: HashMap<String, usize> = HashMap::new();
    for kill_after in delays {
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        let _ = running.child.kill();
        let _ = running.child.wait();
        running = spawn_serve(&config_file);
        let present = check_nothing_torn(&running, &objects).await;
        for path in present {
            completed_before
                .entry(path.clone())
                .or_insert_with(|| origin.requests(&path).len());
        }
    }
    assert!(
        kills > 3 || completed_before.len() < OBJECTS,
        "the kills came before the fill finished"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = fill_state(&running).await;
        if status["fill"]["state"] == "done" {
            assert_eq!(status["fill"]["objects_done"], OBJECTS, "{status:#}");
            assert_eq!(
                status["override"], "fill",
                "the override survived the kills"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let present = check_nothing_torn(&running, &objects).await;
    assert_eq!(present.len(), OBJECTS, "every object filled in the end");
    for (path, requests_when_seen) in &completed_before {
        assert_eq!(
            origin.requests(path).len(),
            *requests_when_seen,
            "{path} was complete before a kill and was fetched again"
        );
    }
    let resumed = objects
        .iter()
        .filter(|(path, _)| origin.requests(path).iter().any(Option::is_some))
        .count();
    eprintln!(
        "{} objects complete before the last kill, {resumed} resumed with a Range",
        completed_before.len()
    );
    assert!(
        resumed >= 1,
        "a big object resumed from its partial file after a kill"
    );
    let _ = running.child.kill();
    let _ = running.child.wait();
}
