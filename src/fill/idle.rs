//! The fill's CPU-heavy work (receiving, hashing and writing what it downloads) on threads
//! that run only on CPU time viewers leave.
//!
//! The daemon's background runtime runs at nice +10 from the viewer workers, which gives
//! viewers the larger share of the CPU but still lets a running fill thread finish its slice
//! (up to a few milliseconds) before a viewer worker that wakes. Under `SCHED_IDLE` a waking
//! viewer worker takes the CPU at once. Two things run there: the transfers themselves
//! ([`transfers`]: the copy out of the socket, the pacing, the batching), and the writes,
//! their hashing, the file's creation and its fsync ([`run`]). The admin API, the access
//! log writer and the publish of a finished object (which takes the index's lock viewers
//! read under) stay at nice +10, so a box whose viewers use every core still answers health
//! checks in milliseconds, writes every log line, and never has a viewer wait for a lock an
//! idle thread holds.

use std::sync::OnceLock;

/// Runs `work` on a thread of the fill's idle pool (or on the caller's runtime's blocking
/// pool, where that pool cannot be made) and waits for it.
pub async fn run<T, F>(work: F) -> Result<T, tokio::task::JoinError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match pool() {
        Some(pool) => pool.spawn_blocking(work).await,
        None => tokio::task::spawn_blocking(work).await,
    }
}

/// The idle pool: a runtime used only for its blocking threads, made once per process when
/// the first object is written (every fill of every daemon in the process shares it).
fn pool() -> Option<&'static tokio::runtime::Handle> {
    static POOL: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    POOL.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tidecache-fill-idle")
            .on_thread_start(run_when_idle)
            .build()
            .ok()
    })
    .as_ref()
    .map(tokio::runtime::Runtime::handle)
}

/// The runtime the fill's transfers run on: its async workers receive what origins and
/// peers send (the copy out of the socket, the pacing, the batching) under `SCHED_IDLE`
/// too. `None` where it cannot be made: transfers then run on the caller's runtime.
pub fn transfers() -> Option<&'static tokio::runtime::Handle> {
    static TRANSFERS: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    TRANSFERS
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .thread_name("tidecache-fill-net")
                .on_thread_start(run_when_idle)
                .enable_all()
                .build()
                .ok()
        })
        .as_ref()
        .map(tokio::runtime::Runtime::handle)
}

/// Puts the calling thread under `SCHED_IDLE`. Best effort: where it is refused, the thread
/// keeps the priority it was created with (the background runtime's nice +10).
fn run_when_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` reads the `sched_param` behind the pointer, which is a
    // valid, initialised local for the length of the call; pid 0 is the calling thread.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's scheduling policy.
    fn policy() -> i32 {
        // SAFETY: `sched_getscheduler` takes no pointer; pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[tokio::test]
    async fn the_work_runs_under_sched_idle_and_the_caller_does_not() {
        let before = policy();
        let seen = policies_of_idle_work(8).await;
        assert!(
            seen.iter().all(|&seen| seen == libc::SCHED_IDLE),
            "{seen:?}"
        );
        assert_eq!(policy(), before, "the calling thread keeps its policy");
        assert_ne!(before, libc::SCHED_IDLE);
    }

    #[tokio::test]
    async fn transfers_run_under_sched_idle_with_io_and_timers() {
        let runtime = transfers().expect("the transfers' runtime");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let seen = runtime
            .spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                let _connected = tokio::net::TcpStream::connect(address).await;
                policy()
            })
            .await
            .expect("transfer task");
        assert_eq!(seen, libc::SCHED_IDLE);
        assert_ne!(policy(), libc::SCHED_IDLE, "the caller keeps its policy");
    }

    async fn policies_of_idle_work(count: usize) -> Vec<i32> {
        let handles: Vec<_> = (0..count)
            .map(|_| {
                tokio::spawn(run(|| {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    policy()
                }))
            })
            .collect();
        let mut seen = Vec::new();
        for handle in handles {
            seen.push(handle.await.expect("task").expect("idle work"));
        }
        seen
    }
}
