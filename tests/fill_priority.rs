//! The fill's threads run under SCHED_IDLE while a pass fills, and a pass that winds down
//! lifts them until it ends (a binary of its own: a stop during another test's pass keeps
//! them lifted for the rest of its process).

mod common;

use std::time::Duration;

use common::origin::{Fault, Origin};
use common::*;
use tidecache::schedule::Override;

/// The scheduling policies of this process's fill threads (`tidecache-fill`).
fn fill_thread_policies() -> Vec<i32> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "tidecache-fill" {
            continue;
        }
        let Ok(tid) = task.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        // SAFETY: `sched_getscheduler` takes no pointer; `tid` names a thread of this
        // process (one that ended meanwhile answers -1, skipped).
        let policy = unsafe { libc::sched_getscheduler(tid) };
        if policy >= 0 {
            policies.push(policy);
        }
    }
    policies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_winding_down_pass_lifts_the_fill_threads_until_it_ends() {
    let origin = Origin::start().await;
    let slow = pattern(2_000_000);
    origin.put(
        "slow.ts",
        &slow,
        Fault::Drip {
            chunk: 20_000,
            pause: Duration::from_millis(20),
        },
    );
    let test_box = TestBox::new();
    let (token_file, token) = test_box.token_file();
    let mut config = test_box.config(
        1,
        "[schedule]\ndrain = \"0s\"\n[fill]\nretry_delay = \"20ms\"\nstop_grace = \"2s\"\n",
    );
    config.admin.token_file = Some(token_file);
    let daemon = start(&config).await;
    let pushed = client()
        .put(format!("http://{}/v1/manifest", daemon.admin_addr))
        .bearer_auth(&token)
        .body(manifest_json(
            "slow",
            &origin.base_url(),
            &[("slow.ts", &slow)],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), 202);
    daemon.set_override(Override::Fill).await.unwrap();
    eventually("the slow object's first bytes arrive", || async {
        admin_status(daemon.admin_addr).await["fill"]["bytes_done"]
            .as_u64()
            .is_some_and(|bytes| bytes > 0)
    })
    .await;
    let filling = fill_thread_policies();
    assert!(
        !filling.is_empty() && filling.iter().all(|&policy| policy == libc::SCHED_IDLE),
        "while filling: {filling:?}"
    );

    // The window ends: the pass winds down for stop_grace (2 s), its transfer still dripping.
    daemon.set_override(Override::Serve).await.unwrap();
    eventually("the fill threads lifted", || async {
        let policies = fill_thread_policies();
        !policies.is_empty() && policies.iter().all(|&policy| policy == libc::SCHED_OTHER)
    })
    .await;
    eventually("the pass paused", || async {
        admin_status(daemon.admin_addr).await["fill"]["state"] == "paused"
    })
    .await;
    let after = fill_thread_policies();
    assert!(
        after.iter().all(|&policy| policy == libc::SCHED_IDLE),
        "after the pass: {after:?}"
    );
    daemon.shutdown().await;
}
