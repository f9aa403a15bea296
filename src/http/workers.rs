//! Viewer event loops: one single-threaded runtime per worker thread, each accepting on
//! every viewer socket, as nginx's worker processes do.
//!
//! Why not the daemon's multi-threaded runtime: there, the thread that polls epoll wakes a
//! connection's task, another idle worker is woken to steal it, and TLS state and buffers
//! bounce between cores. On the 2-core bench box (unpinned), the same handler on a one-thread
//! runtime served HTTPS a third faster than on two work-stealing threads. Here a connection
//! is accepted, parsed, answered and closed on one thread; nothing but the shared index,
//! RAM cache and counters is touched by two cores. A busy worker wakes later for a new
//! connection than an idle one, so accepts lean toward idle workers.
//!
//! Every worker holds a duplicate of each listening socket in its own epoll; whichever
//! wakes first accepts (the other sees `WouldBlock`). Admin, the scheduler and the fill stay
//! on the daemon's runtime, so a busy data plane never delays `/healthz` or a fill.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use tokio::sync::{Semaphore, mpsc};

use super::listener::Listener;
use super::tls::ViewerTls;
use super::{ConnectionLimits, ConnectionMetrics};
use crate::serve::Viewer;
use crate::signal::{self, Cut, Shutdown, Signal, Trigger};

/// A bound viewer socket and what its connections need, shared by every worker.
pub struct ViewerSocket {
    /// The bound, non-blocking socket; each worker accepts on a duplicate of it.
    pub tcp: std::net::TcpListener,
    /// TLS for HTTPS sockets.
    pub tls: Option<Arc<ArcSwap<ViewerTls>>>,
    /// Whether plain GET/HEAD go through the sendfile fast path first.
    pub fast_path: bool,
}

/// What every viewer connection shares, whichever worker accepted it.
#[derive(Clone)]
pub struct ViewerShared {
    /// Who answers requests.
    pub viewer: Arc<Viewer>,
    /// `max_connections` permits, one pool for all sockets and workers.
    pub permits: Arc<Semaphore>,
    /// Per-connection limits, swapped on SIGHUP.
    pub limits: Arc<ArcSwap<ConnectionLimits>>,
    /// Connection counters.
    pub metrics: ConnectionMetrics,
    /// Queue room viewer connections borrow (`limits.max_queued_bytes`), one pool for all.
    pub queue_pool: Arc<Semaphore>,
}

/// The running worker threads.
pub struct ViewerWorkers {
    threads: Vec<JoinHandle<()>>,
    cut: Trigger<Cut>,
}

impl ViewerWorkers {
    /// Starts `count` workers (0: one per CPU) over `sockets`. They stop accepting when
    /// `shutdown` is raised, and their thread ends once every connection they accepted has closed (or
    /// at [`ViewerWorkers::cut`]). Each holds a clone of `finished` until then, so the daemon
    /// can wait for the last one.
    pub fn start(
        count: u32,
        sockets: Vec<ViewerSocket>,
        shared: ViewerShared,
        shutdown: Shutdown,
        finished: mpsc::Sender<()>,
    ) -> io::Result<ViewerWorkers> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, |cpus| cpus.get()),
            count => count as usize,
        };
        let sockets = Arc::new(sockets);
        let (cut, cut_rx) = signal::channel::<Cut>();
        let mut threads = Vec::with_capacity(count);
        // Disk reads of objects not in the RAM cache go to each runtime's blocking pool;
        // together the pools keep tokio's default of 512 threads for the whole process.
        let blocking_threads = (512 / count).max(8);
        for number in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(blocking_threads)
                .thread_name(format!("viewer-{number}-disk"))
                .build()?;
            let (sockets, shared, shutdown, finished, cut_rx) = (
                Arc::clone(&sockets),
                shared.clone(),
                shutdown.clone(),
                finished.clone(),
                cut_rx.clone(),
            );
            let thread = std::thread::Builder::new()
                .name(format!("viewer-{number}"))
                .spawn(move || {
                    let _finished = finished;
                    runtime.block_on(worker(sockets, shared, shutdown, cut_rx));
                })?;
            threads.push(thread);
        }
        Ok(ViewerWorkers { threads, cut })
    }

    /// Waits (at most `limit`) until every worker thread has ended, its runtime dropped
    /// and with it what its connections held (their responses' access-log lines included).
    pub async fn finished(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.threads.iter().all(JoinHandle::is_finished) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }

    /// How many worker threads run.
    pub fn count(&self) -> usize {
        self.threads.len()
    }

    /// Ends every worker now, dropping the connections still open (the shutdown timeout ran
    /// out).
    pub fn cut(&self) {
        self.cut.raise();
    }
}

impl Drop for ViewerWorkers {
    fn drop(&mut self) {
        self.cut();
    }
}

/// One worker: an accept loop per socket, then waiting for its connections to end.
async fn worker(
    sockets: Arc<Vec<ViewerSocket>>,
    shared: ViewerShared,
    shutdown: Shutdown,
    mut cut: Signal<Cut>,
) {
    let (finished, mut all_closed) = mpsc::channel::<()>(1);
    for socket in sockets.iter() {
        match accept_loop(socket, &shared, finished.clone()) {
            Ok(listener) => {
                tokio::spawn(listener.run(shutdown.clone()));
            }
            Err(err) => {
                tracing::error!(error = %err, "a viewer worker cannot accept on a listener")
            }
        }
    }
    // Only the accept loops keep the sockets open from here, so new connections are refused
    // as soon as the last loop stops.
    drop(sockets);
    drop(finished);
    tokio::select! {
        _ = all_closed.recv() => {}
        _ = cut.raised() => {}
    }
}

/// This worker's accept loop over a duplicate of `socket`.
fn accept_loop(
    socket: &ViewerSocket,
    shared: &ViewerShared,
    finished: mpsc::Sender<()>,
) -> io::Result<Listener<Viewer>> {
    let tcp = tokio::net::TcpListener::from_std(socket.tcp.try_clone()?)?;
    Ok(Listener {
        tcp,
        tls: socket.tls.clone(),
        handler: Arc::clone(&shared.viewer),
        permits: Arc::clone(&shared.permits),
        limits: Arc::clone(&shared.limits),
        metrics: shared.metrics.clone(),
        queue_pool: Some(Arc::clone(&shared.queue_pool)),
        fast_path: socket.fast_path.then(|| Arc::clone(&shared.viewer)),
        finished,
    })
}
