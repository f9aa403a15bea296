//! Objects the page cache does not hold are read from the disk on blocking threads, never
//! on a viewer worker: a worker that waits for the disk stalls every connection it serves
//! (a cold 2 MiB read took 1.6-6 ms on this machine's disk, against a hot answer's p99 of
//! well under a millisecond). The kernel counts the bytes each thread has the disk read
//! (`/proc/self/task/*/io`), so the test asks it which threads read. Its own binary: the
//! daemon's threads are the only viewer workers in the process.

mod common;

use common::*;
use reqwest::StatusCode;

/// Bytes the disk has read for the daemon's viewer workers (threads `viewer-N`; their
/// blocking threads are `viewer-N-disk`), from the kernel's per-thread I/O accounting.
fn viewer_worker_disk_reads() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let task = task.expect("a task").path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let name = name.trim();
        let worker = name
            .strip_prefix("viewer-")
            .is_some_and(|number| number.bytes().all(|byte| byte.is_ascii_digit()));
        if !worker {
            continue;
        }
        let io = std::fs::read_to_string(task.join("io")).expect("per-thread I/O accounting");
        total += io
            .lines()
            .find_map(|line| line.strip_prefix("read_bytes: "))
            .and_then(|bytes| bytes.trim().parse::<u64>().ok())
            .expect("read_bytes");
    }
    total
}

/// Drops a file's clean pages from the page cache.
fn evict(path: &std::path::Path) {
    let file = std::fs::File::open(path).expect("object file");
    file.sync_all().expect("sync");
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
}

/// Bytes of `path` in the page cache, from util-linux's `fincore`.
fn resident_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux)");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("fincore said {out:?}"))
}

#[tokio::test]
async fn cold_answers_are_read_in_on_blocking_threads_not_on_viewer_workers() {
    let test_box = TestBox::new();
    let config = test_box.config(1, "[cache]\nram = \"0\"\n");
    // One object small enough to be read in large folios (up to 16 MiB), one larger that is
    // read where it is sent; odd sizes, so the last window is partial.
    let objects: Vec<(String, Vec<u8>)> = vec![
        ("small.ts".to_string(), pattern((5 << 20) + 333)),
        ("large.ts".to_string(), {
            let mut data = pattern((20 << 20) + 4097);
            data[0] = 1;
            data
        }),
    ];
    seed_all(&config, &objects);
    let file = |name: &str| test_box.store_path(0).join("objects").join(name);
    let daemon = start(&config).await;
    let addr = daemon.viewer_addrs[0];
    // Asked once, the files are in the open-file cache; then their pages are dropped, as
    // the page cache drops a segment nobody asked for in a while.
    for (path, data) in &objects {
        assert_eq!(&served(addr, &format!("/{path}")).await[..], &data[..]);
    }
    for (path, _) in &objects {
        evict(&file(path));
    }
    if resident_bytes(&file("small.ts")) > 0 {
        eprintln!("skipped: this file system keeps its pages (tmpfs?)");
        daemon.shutdown().await;
        return;
    }
    // A worker remembers a span it found cached for a second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let before = viewer_worker_disk_reads();
    let client = client();
    let ranged = |path: &str, range: &str| {
        client
            .get(url(addr, &format!("/{path}")))
            .header("range", format!("bytes={range}"))
            .send()
    };
    let small = &objects[0].1;
    let large = &objects[1].1;
    let answer = ranged("large.ts", "2097000-6291999").await.unwrap();
    assert_eq!(answer.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        &answer.bytes().await.unwrap()[..],
        &large[2_097_000..6_292_000]
    );
    let answer = ranged("small.ts", "100-200").await.unwrap();
    assert_eq!(&answer.bytes().await.unwrap()[..], &small[100..201]);
    assert_eq!(&served(addr, "/small.ts").await[..], &small[..]);
    assert_eq!(&served(addr, "/large.ts").await[..], &large[..]);
    let after = viewer_worker_disk_reads();
    let read_in = resident_bytes(&file("small.ts"));
    daemon.shutdown().await;
    assert_eq!(
        after - before,
        0,
        "the viewer workers had the disk read {} bytes",
        after - before
    );
    assert!(
        read_in >= small.len() as u64,
        "the small object was read in whole: {read_in} bytes"
    );
}
