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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Runs `work` on a blocking thread of the fill's runtime (under `SCHED_IDLE`, as its
/// workers), or on the caller's runtime's blocking pool where that runtime cannot be made,
/// and waits for it.
pub async fn run<T, F>(work: F) -> Result<T, tokio::task::JoinError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match transfers() {
        Some(runtime) => runtime.spawn_blocking(work).await,
        None => tokio::task::spawn_blocking(work).await,
    }
}

/// The runtime the fill's transfers run on, made once per process (every fill of every
/// daemon in the process shares it): its async workers receive what origins and peers send
/// (the copy out of the socket, the pacing, the batching) and its blocking threads write and
/// hash ([`run`]), all under `SCHED_IDLE`. `None` where it cannot be made: transfers then run
/// on the caller's runtime.
pub fn transfers() -> Option<&'static tokio::runtime::Handle> {
    static TRANSFERS: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    TRANSFERS
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .thread_name("tidecache-fill")
                .on_thread_start(joined)
                .on_thread_stop(left)
                .enable_all()
                .build()
                .ok()
        })
        .as_ref()
        .map(tokio::runtime::Runtime::handle)
}

/// The idle threads (the fill runtime's workers and blocking threads), by thread id, so a
/// wind-down can lift them all.
static THREADS: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());
/// Winding-down fill passes (see [`hurry`]); while any is, the idle threads are not idle.
static HURRYING: AtomicUsize = AtomicUsize::new(0);

/// A new idle thread: listed, and put under the policy of the moment.
fn joined() {
    let tid = current_thread();
    let mut threads = THREADS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    threads.push(tid);
    set_policy(tid, HURRYING.load(Ordering::SeqCst) == 0);
}

/// The calling thread's id.
fn current_thread() -> libc::pid_t {
    // SAFETY: `gettid` takes no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// An idle thread that ends.
fn left() {
    let tid = current_thread();
    let mut threads = THREADS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    threads.retain(|&listed| listed != tid);
}

/// While the returned guard lives, the idle threads run as the background runtime does
/// (`SCHED_OTHER` at its nice) instead of under `SCHED_IDLE`.
///
/// A fill pass that winds down (its window ended, a new manifest, a stop) needs its
/// transfers to see the cancel, write what they hold and checkpoint it. Under `SCHED_IDLE`
/// on a box whose viewers use every core, that took the whole shutdown timeout and lost the
/// checkpoints; lifted, it takes what it took at nice +10. Leaving `SCHED_IDLE` needs
/// `RLIMIT_NICE` of at least 20 minus the threads' nice (the systemd unit's
/// `LimitNICE=+10`) or `CAP_SYS_NICE`; without either the threads stay idle, and the log
/// says so once.
pub fn hurry() -> Hurry {
    if HURRYING.fetch_add(1, Ordering::SeqCst) == 0 {
        apply_to_all();
    }
    Hurry(())
}

/// See [`hurry`]. Dropped, the idle threads go back under `SCHED_IDLE` once no pass winds
/// down; [`Hurry::for_good`] keeps them lifted (a stop: the process ends soon, and exiting
/// threads that wait for idle CPU time would hold its exit up).
#[derive(Debug)]
pub struct Hurry(());

impl Hurry {
    /// Keeps the idle threads lifted for the rest of the process's life.
    pub fn for_good(self) {
        std::mem::forget(self);
    }
}

impl Drop for Hurry {
    fn drop(&mut self) {
        if HURRYING.fetch_sub(1, Ordering::SeqCst) == 1 {
            apply_to_all();
        }
    }
}

/// Puts every idle thread under the policy of the moment, read under the list's lock: of a
/// lift and a return racing (two passes in one process), the later one decides.
fn apply_to_all() {
    let threads = THREADS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let idle = HURRYING.load(Ordering::SeqCst) == 0;
    for &tid in threads.iter() {
        set_policy(tid, idle);
    }
}

/// Puts thread `tid` under `SCHED_IDLE` (`idle`) or back under `SCHED_OTHER` at the nice
/// it was created with (the background runtime's nice +10). Best effort: where it is
/// refused, the thread keeps its policy.
fn set_policy(tid: libc::pid_t, idle: bool) {
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` reads the `sched_param` behind the pointer, which is a
    // valid, initialised local for the length of the call; `tid` names a thread of this
    // process (listed while it runs), and a stale one is refused with ESRCH.
    let refused = unsafe { libc::sched_setscheduler(tid, policy, &param) } != 0;
    static SAID: AtomicBool = AtomicBool::new(false);
    if refused && !idle && !SAID.swap(true, Ordering::Relaxed) {
        tracing::info!(
            error = %std::io::Error::last_os_error(),
            "the fill's idle threads cannot be lifted out of SCHED_IDLE to wind a pass down (allow it with LimitNICE=+10 or CAP_SYS_NICE); a wind-down on a busy box may take up to the shutdown timeout"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by each test here: a lift in one would show in the others' policies (no other
    /// test of this binary runs a fill pass).
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// The calling thread's scheduling policy.
    fn policy() -> i32 {
        // SAFETY: `sched_getscheduler` takes no pointer; pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[tokio::test]
    async fn the_work_runs_under_sched_idle_and_the_caller_does_not() {
        let _alone = ONE_AT_A_TIME.lock().await;
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
        let _alone = ONE_AT_A_TIME.lock().await;
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

    #[tokio::test]
    async fn a_wind_down_lifts_the_idle_threads_and_its_end_puts_them_back() {
        let _alone = ONE_AT_A_TIME.lock().await;
        let runtime = transfers().expect("the transfers' runtime");
        let policy_there = || async {
            runtime
                .spawn(async { policy() })
                .await
                .expect("transfer task")
        };
        let hurried = hurry();
        assert_eq!(policy_there().await, libc::SCHED_OTHER);
        assert_eq!(run(policy).await.expect("idle work"), libc::SCHED_OTHER);
        drop(hurried);
        assert_eq!(policy_there().await, libc::SCHED_IDLE);
        assert_eq!(run(policy).await.expect("idle work"), libc::SCHED_IDLE);
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
