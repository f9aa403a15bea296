//! The accept loop shared by every listener: viewer HTTP, viewer HTTPS and admin.
//!
//! One connection is one task holding one `max_connections` permit (a semaphore shared by all
//! viewer listeners); when none is left the connection is closed at once, so a flood costs the
//! box nothing but an accept. Each connection is served by hyper-util's auto builder (HTTP/1.1
//! with keep-alive and pipelining, or HTTP/2 by prior knowledge or ALPN), with a header-read
//! timeout against slow senders, an idle timeout for connections on which nothing moves, and
//! a watcher so SIGTERM can drain it gracefully.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use super::fast_http1::{self, FastPathEnd};
use super::tls::ViewerTls;
use super::{ConnectionLimits, ConnectionMetrics};
use crate::serve::Viewer;
use crate::serve::body::{ObjectBody, Progress, QueueBudget};
use crate::serve::handler::{Handler, PeerAddr};
use crate::signal::Shutdown;

/// Everything one accept loop needs.
pub struct Listener<H> {
    /// The bound socket.
    pub tcp: TcpListener,
    /// TLS for HTTPS listeners; swapped on SIGHUP when the certificate is re-read.
    pub tls: Option<Arc<ArcSwap<ViewerTls>>>,
    /// Who answers requests.
    pub handler: Arc<H>,
    /// Connection permits; shared by all viewer listeners.
    pub permits: Arc<Semaphore>,
    /// Per-connection limits; swapped on SIGHUP, read by each new connection.
    pub limits: Arc<ArcSwap<ConnectionLimits>>,
    /// Connection counters.
    pub metrics: ConnectionMetrics,
    /// The pool viewer connections borrow queue room from (`limits.max_queued_bytes`, one
    /// permit per byte); `None` for the admin listener, whose answers are small.
    pub queue_pool: Option<Arc<Semaphore>>,
    /// Plain-HTTP viewer listeners answer plain GET/HEAD here first (sendfile), handing
    /// anything else to hyper; `None` for HTTPS and admin listeners.
    pub fast_path: Option<Arc<Viewer>>,
    /// Held by every connection task; the daemon knows all connections ended when the last
    /// clone is dropped (the receiver then yields `None`).
    pub finished: mpsc::Sender<()>,
}

impl<H: Handler> Listener<H> {
    /// Accepts until `shutdown` is raised, then returns. Open connections see the same signal:
    /// they finish in-flight responses, then close.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut built_for = **self.limits.load();
        let mut builder = Arc::new(protocol_builder(built_for));
        loop {
            let accepted = tokio::select! {
                accepted = self.tcp.accept() => accepted,
                _ = shutdown.raised() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                self.metrics.refused.inc();
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let limits = **self.limits.load();
            if limits.max_header_size != built_for.max_header_size {
                built_for = limits;
                builder = Arc::new(protocol_builder(limits));
            }
            let connection = Connection {
                stream,
                tls: self.tls.as_ref().map(|tls| tls.load_full()),
                fast_path: self.fast_path.clone(),
                hyper: HyperSession {
                    peer,
                    handler: Arc::clone(&self.handler),
                    builder: Arc::clone(&builder),
                    limits,
                    shutdown: shutdown.clone(),
                    queue_pool: self.queue_pool.clone(),
                },
            };
            let held = Held::open(permit, self.finished.clone(), self.metrics.open.clone());
            tokio::spawn(async move {
                connection.run().await;
                drop(held);
            });
        }
    }
}

/// What a connection task holds until it ends: its `max_connections` permit, a clone of the
/// listener's `finished` sender, and its place in the open-connections gauge.
struct Held {
    _permit: OwnedSemaphorePermit,
    _finished: mpsc::Sender<()>,
    open: IntGauge,
}

impl Held {
    fn open(permit: OwnedSemaphorePermit, finished: mpsc::Sender<()>, open: IntGauge) -> Held {
        open.inc();
        Held {
            _permit: permit,
            _finished: finished,
            open,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// One accepted connection and everything needed to serve it, from the first byte (or TLS
/// handshake) to close.
struct Connection<H> {
    stream: TcpStream,
    tls: Option<Arc<ViewerTls>>,
    fast_path: Option<Arc<Viewer>>,
    hyper: HyperSession<H>,
}

/// What hyper needs to serve a connection's bytes, whichever transport carries them.
struct HyperSession<H> {
    peer: SocketAddr,
    handler: Arc<H>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnectionLimits,
    shutdown: Shutdown,
    /// The pool the connection's queue budget borrows from (viewer listeners).
    queue_pool: Option<Arc<Semaphore>>,
}

impl<H: Handler> HyperSession<H> {
    async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        serve_io(
            io,
            self.peer,
            self.handler,
            &self.builder,
            self.shutdown,
            self.limits,
            self.queue_pool,
        )
        .await
    }
}

impl<H: Handler> Connection<H> {
    /// Serves the connection until it ends: TLS connections after their handshake, plain
    /// ones on the sendfile fast path first when there is one (which may hand the rest of
    /// the connection to hyper), everything else with hyper.
    async fn run(self) {
        let Connection {
            stream,
            tls,
            fast_path,
            hyper,
        } = self;
        if let Some(tls) = tls {
            let handshake = tls.accept(stream);
            // A handshake that has not finished has no request to drain: a stop ends it at
            // once (a scanner stalling on :443 must not hold every SIGTERM for the timeout).
            let mut shutdown = hyper.shutdown.clone();
            let finished = tokio::select! {
                finished = tokio::time::timeout(hyper.limits.header_timeout, handshake) => finished,
                _ = shutdown.raised() => return,
            };
            match finished {
                Ok(Ok(stream)) => hyper.serve(stream).await,
                Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
            return;
        }
        let Some(viewer) = fast_path else {
            return hyper.serve(stream).await;
        };
        let ended =
            fast_http1::serve(stream, hyper.peer, &viewer, &hyper.shutdown, hyper.limits).await;
        if let FastPathEnd::HandOver { buffered, stream } = ended {
            hyper
                .serve(fast_http1::Replayed::new(buffered, stream))
                .await;
        }
    }
}

/// Streams an HTTP/2 connection may have open at once (nginx's default is 128; a player
/// uses a handful).
pub const H2_MAX_STREAMS: u32 = 128;

/// Bytes hyper buffers per HTTP/2 stream ahead of the viewer's flow-control window (its
/// default is about 400 KiB). What all of a connection's streams queue together is bounded
/// further by its [`QueueBudget`] (2 MiB at most).
pub const H2_SEND_BUFFER: usize = 64 * 1024;

/// File bytes an HTTP/2 stream reads at once: one DATA frame's worth (16 KiB is the
/// protocol's default frame size), so a stream whose viewer stops reading pins its send
/// buffer and one such piece, not a 128 KiB chunk.
pub const H2_CHUNK_SIZE: u64 = 16 * 1024;

/// The HTTP/1.1 + HTTP/2 connection builder for these limits.
fn protocol_builder(limits: ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_size)
        .keep_alive(true)
        // A client that pipelines and then shuts its write side still gets every answer.
        .half_close(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_send_buf_size(H2_SEND_BUFFER)
        .max_header_list_size(limits.max_header_size as u32);
    builder
}

/// Serves one connection until it ends, is idle too long, or shutdown drains it.
async fn serve_io<I, H>(
    io: I,
    peer: SocketAddr,
    handler: Arc<H>,
    builder: &auto::Builder<TokioExecutor>,
    mut shutdown: Shutdown,
    limits: ConnectionLimits,
    queue_pool: Option<Arc<Semaphore>>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let activity = Arc::new(Activity::new());
    let budget = queue_pool.map(|pool| {
        let progress: Arc<dyn Progress> = Arc::clone(&activity) as Arc<dyn Progress>;
        QueueBudget::for_connection(&pool, Some(progress))
    });
    let io = TokioIo::new(ActivityIo {
        inner: io,
        activity: Arc::clone(&activity),
        preface_seen: Some(0),
    });
    let service_activity = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(PeerAddr(peer));
        let handler = Arc::clone(&handler);
        let mut in_flight = InFlight::begin(Arc::clone(&service_activity));
        let http2 = request.version() == hyper::Version::HTTP_2;
        let budget = budget.clone();
        async move {
            let response = handler.handle(request).await;
            in_flight.handled();
            Ok::<_, Infallible>(response.map(|mut body| {
                if http2 {
                    body = body.with_chunk_size(H2_CHUNK_SIZE);
                }
                if let Some(budget) = budget {
                    body = body.within(budget);
                }
                InFlightBody {
                    inner: body,
                    _in_flight: in_flight,
                }
            }))
        }
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut draining = false;
    // Set once an idle HTTP/2 connection was sent GOAWAY: when to drop it regardless.
    let mut closing_by: Option<Instant> = None;
    loop {
        let deadline = closing_by.unwrap_or_else(|| activity.deadline(limits));
        tokio::select! {
            result = &mut connection => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.raised(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(deadline) => {
                if closing_by.is_some() {
                    return;
                }
                if activity.deadline(limits) <= Instant::now() {
                    if activity.is_http2() {
                        // Say GOAWAY, so the client opens a new connection for its next
                        // request instead of racing this one's close.
                        tracing::debug!("closing an idle HTTP/2 connection with GOAWAY");
                        draining = true;
                        connection.as_mut().graceful_shutdown();
                        closing_by = Some(Instant::now() + GOAWAY_GRACE);
                        continue;
                    }
                    tracing::debug!("closing connection: request head too slow or idle too long");
                    return;
                }
            }
        }
    }
}

/// How long an idle HTTP/2 connection told GOAWAY has to close before it is dropped.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// Marks a request as being answered from the moment hyper hands it over until its response
/// body is dropped (sent or abandoned). While any request is in flight the header timeout
/// does not run, so a long download is never mistaken for a slow request head.
///
/// It also counts the request as being handled (see [`Activity::handling`]) from its start
/// until [`InFlight::handled`] (the response head is ready) or its drop, whichever is first.
struct InFlight {
    activity: Arc<Activity>,
    handling: bool,
}

impl InFlight {
    fn begin(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.handling.fetch_add(1, Ordering::Relaxed);
        activity.head_started_ms.store(NO_HEAD, Ordering::Relaxed);
        InFlight {
            activity,
            handling: true,
        }
    }

    /// The handler has answered: the idle timeout counts again, from now.
    fn handled(&mut self) {
        if std::mem::take(&mut self.handling) {
            self.activity.handling.fetch_sub(1, Ordering::Relaxed);
            self.activity.touch();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.handling {
            self.activity.handling.fetch_sub(1, Ordering::Relaxed);
        }
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.activity.touch();
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
pub struct InFlightBody {
    inner: ObjectBody,
    _in_flight: InFlight,
}

impl hyper::body::Body for InFlightBody {
    type Data = <ObjectBody as hyper::body::Body>::Data;
    type Error = <ObjectBody as hyper::body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// `head_started_ms` when no request head is being waited for.
const NO_HEAD: u64 = u64::MAX;

/// What a connection is doing, for its two timers (times in milliseconds after it opened).
///
/// - The **header timeout** runs from the first byte of a request head (or from the accept,
///   for a new connection) until hyper hands the request over, like nginx's
///   `client_header_timeout`: a slow sender is cut however steadily it trickles.
/// - The **idle timeout** runs from the last byte moved, like nginx's `keepalive_timeout`: a
///   kept-alive connection waiting for its next request may sit that long.
///
/// hyper's own `header_read_timeout` is not used because it also runs while a kept-alive
/// connection waits for its next request, which would cut idle players at the header timeout.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
    head_started_ms: AtomicU64,
    in_flight: AtomicU32,
    /// Requests whose handler is working on them (until it returns the response head):
    /// the connection is not idle then, however long the work takes (a manifest of tens
    /// of millions of objects being accepted). A handler that reads a request body bounds
    /// its own waits on the client.
    handling: AtomicU32,
    /// The connection speaks HTTP/2: frames between streams (SETTINGS acks, PINGs,
    /// WINDOW_UPDATEs) are not request heads, so only the idle timeout applies between
    /// requests, and an idle close says GOAWAY first.
    http2: AtomicBool,
    /// The socket's last write was refused for lack of room (the viewer is not reading):
    /// until one succeeds, streams get no room beyond the connection's queue budget.
    backed_up: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            handling: AtomicU32::new(0),
            http2: AtomicBool::new(false),
            backed_up: AtomicBool::new(false),
        }
    }

    fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Notes a write's outcome: bytes taken are activity and clear `backed_up`; a write
    /// refused for lack of room sets it.
    fn wrote(&self, result: &Poll<io::Result<usize>>) {
        match result {
            Poll::Ready(Ok(written)) if *written > 0 => {
                self.touch();
                self.backed_up.store(false, Ordering::Relaxed);
            }
            Poll::Pending => self.backed_up.store(true, Ordering::Relaxed),
            Poll::Ready(_) => {}
        }
    }

    /// Bytes arrived: note the activity, and start the header timer if they begin a head.
    fn bytes_read(&self) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 && !self.is_http2() {
            let _ = self.head_started_ms.compare_exchange(
                NO_HEAD,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// When the connection must be closed unless something happens first.
    fn deadline(&self, limits: ConnectionLimits) -> Instant {
        let at = |ms: u64| self.opened + Duration::from_millis(ms);
        let idle = if self.handling.load(Ordering::Relaxed) > 0 {
            Instant::now() + limits.idle_timeout
        } else {
            at(self.last_ms.load(Ordering::Relaxed)) + limits.idle_timeout
        };
        match self.head_started_ms.load(Ordering::Relaxed) {
            NO_HEAD => idle,
            started => idle.min(at(started) + limits.header_timeout),
        }
    }
}

impl Progress for Activity {
    fn is_draining(&self) -> bool {
        !self.backed_up.load(Ordering::Relaxed)
    }
}

/// The first bytes of every HTTP/2 connection, cleartext or inside TLS (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Wraps a connection's I/O to note when bytes move, for the idle timeout.
struct ActivityIo<I> {
    inner: I,
    activity: Arc<Activity>,
    /// How many bytes of the HTTP/2 preface the connection has matched so far; `None` once
    /// decided (it diverged, or matched whole and the connection was marked HTTP/2). Decided
    /// on the preface's bytes, not on the first read: a first read of `P` may be `POST`.
    preface_seen: Option<usize>,
}

impl<I: AsyncRead + Unpin> AsyncRead for ActivityIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            if let Some(seen) = self.preface_seen {
                let read = &buf.filled()[before..];
                let compared = read.len().min(H2_PREFACE.len() - seen);
                self.preface_seen = if read[..compared] != H2_PREFACE[seen..seen + compared] {
                    None
                } else if seen + compared == H2_PREFACE.len() {
                    self.activity.http2.store(true, Ordering::Relaxed);
                    // A preface that came a byte at a time started the header timer; frames
                    // between streams are not request heads.
                    self.activity
                        .head_started_ms
                        .store(NO_HEAD, Ordering::Relaxed);
                    None
                } else {
                    Some(seen + compared)
                };
            }
            self.activity.bytes_read();
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ActivityIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
