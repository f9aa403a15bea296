//! The accept loop shared by every listener: viewer HTTP, viewer HTTPS and admin.
//!
//! One connection is one task holding one `max_connections` permit (a semaphore shared by all
//! viewer listeners); when none is left the connection is closed at once, so a flood costs the
//! box nothing but an accept. Each connection is served by hyper-util's auto builder (HTTP/1.1
//! with keep-alive and pipelining, or HTTP/2 by prior knowledge or ALPN), with a header-read
//! timeout against slow senders, an idle timeout for connections on which nothing moves, and
//! a watcher so SIGTERM can drain it gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::serve::body::ObjectBody;

/// The client's address, put in every request's extensions (for the access log).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Answers requests; implemented by the viewer data plane and the admin API.
pub trait Handler: Send + Sync + 'static {
    /// Produces the response to one request. Never fails: errors are HTTP answers.
    fn handle(
        &self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<ObjectBody>> + Send;
}

/// Per-connection limits from `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time allowed for a request head (HTTP/1) and for a TLS handshake.
    pub header_timeout: Duration,
    /// A connection with no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head; beyond it HTTP/1 answers 431.
    pub max_header_size: usize,
}

/// Counters a listener keeps up to date.
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: IntGauge,
    /// Connections closed at accept for lack of a permit.
    pub refused: IntCounter,
}

/// Errors that stop a listener from starting.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// The TLS certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ListenerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenerError::Bind { addr, source })
}

/// The IANA name of a rustls cipher suite (rustls spells TLS 1.3 ones `TLS13_...`).
fn suite_name(suite: &rustls::SupportedCipherSuite) -> String {
    format!("{:?}", suite.suite()).replacen("TLS13_", "TLS_", 1)
}

/// Every cipher suite this build can offer, by IANA name (for `https.cipher_suites`).
pub fn cipher_suite_names() -> Vec<String> {
    rustls::crypto::ring::ALL_CIPHER_SUITES
        .iter()
        .map(suite_name)
        .collect()
}

/// The suite called `name` (IANA spelling, case-insensitive), if this build offers it.
pub fn cipher_suite(name: &str) -> Option<rustls::SupportedCipherSuite> {
    rustls::crypto::ring::ALL_CIPHER_SUITES
        .iter()
        .find(|suite| suite_name(suite).eq_ignore_ascii_case(name.trim()))
        .copied()
}

/// Builds the rustls server configuration from PEM files with rustls' default cipher suites.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ListenerError> {
    load_tls_with(cert, key, &[])
}

/// Builds the rustls server configuration from PEM files, offering `suites` (IANA names;
/// all of this build's when empty) and h2 and http/1.1 by ALPN.
pub fn load_tls_with(
    cert: &Path,
    key: &Path,
    suites: &[String],
) -> Result<Arc<rustls::ServerConfig>, ListenerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|err| ListenerError::Tls(format!("certificate {}: {err}", cert.display())))?;
    if certs.is_empty() {
        return Err(ListenerError::Tls(format!(
            "certificate {}: no certificate in file",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|err| ListenerError::Tls(format!("key {}: {err}", key.display())))?;
    let mut provider = rustls::crypto::ring::default_provider();
    if !suites.is_empty() {
        provider.cipher_suites = suites
            .iter()
            .map(|name| {
                cipher_suite(name)
                    .ok_or_else(|| ListenerError::Tls(format!("unknown cipher suite {name:?}")))
            })
            .collect::<Result<_, _>>()?;
    }
    let provider = Arc::new(provider);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| ListenerError::Tls(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| {
            ListenerError::Tls(format!("certificate and key do not fit together: {err}"))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS settings of HTTPS viewer listeners (swapped whole on SIGHUP).
///
/// Cipher suites follow the server's order (`https.cipher_suites`, AES-128-GCM first by
/// default), except for a client that lists a ChaCha20-Poly1305 suite first of all: such a
/// client (BoringSSL on a phone without AES instructions) says ChaCha20 is much cheaper for
/// it, and it gets it, as OpenSSL's `SSL_OP_PRIORITIZE_CHACHA` does. Following clients'
/// order alone would hand ChaCha20 to every OpenSSL client (ffmpeg), whose fixed order is
/// AES-256-GCM, ChaCha20, AES-128-GCM, even on AES hardware.
pub struct ViewerTls {
    server_order: Arc<rustls::ServerConfig>,
    client_order: Arc<rustls::ServerConfig>,
    offered: Vec<rustls::CipherSuite>,
}

impl ViewerTls {
    /// Loads the certificate and key and offers `suites` (IANA names, in preference order).
    pub fn load(cert: &Path, key: &Path, suites: &[String]) -> Result<ViewerTls, ListenerError> {
        let client_order = load_tls_with(cert, key, suites)?;
        let mut server_order = (*client_order).clone();
        server_order.ignore_client_order = true;
        let offered = client_order
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|suite| suite.suite())
            .collect();
        Ok(ViewerTls {
            server_order: Arc::new(server_order),
            client_order,
            offered,
        })
    }

    /// Reads the ClientHello and completes the handshake with the configuration it calls
    /// for.
    pub async fn accept<IO>(&self, stream: IO) -> io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                .await?;
        let config = if client_prefers_chacha20(start.client_hello().cipher_suites(), &self.offered)
        {
            Arc::clone(&self.client_order)
        } else {
            Arc::clone(&self.server_order)
        };
        start.into_stream(config).await
    }
}

/// Whether the client lists a ChaCha20-Poly1305 suite first of all, and it is `offered`.
pub fn client_prefers_chacha20(
    client: &[rustls::CipherSuite],
    offered: &[rustls::CipherSuite],
) -> bool {
    use rustls::CipherSuite::{
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        TLS13_CHACHA20_POLY1305_SHA256,
    };
    client.first().is_some_and(|suite| {
        offered.contains(suite)
            && matches!(
                suite,
                TLS13_CHACHA20_POLY1305_SHA256
                    | TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
    })
}

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
    /// Plain-HTTP viewer listeners answer plain GET/HEAD here first (sendfile), handing
    /// anything else to hyper; `None` for HTTPS and admin listeners.
    pub fast_path: Option<Arc<crate::serve::Viewer>>,
    /// Held by every connection task; the daemon knows all connections ended when the last
    /// clone is dropped (the receiver then yields `None`).
    pub finished: mpsc::Sender<()>,
}

impl<H: Handler> Listener<H> {
    /// Accepts until `shutdown` turns true, then returns. Open connections see the same signal:
    /// they finish in-flight responses, then close.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut built_for = **self.limits.load();
        let mut builder = Arc::new(protocol_builder(built_for));
        loop {
            let accepted = tokio::select! {
                accepted = self.tcp.accept() => accepted,
                _ = shutdown.wait_for(|stop| *stop) => return,
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
            let handler = Arc::clone(&self.handler);
            let builder = Arc::clone(&builder);
            let tls = self.tls.as_ref().map(|tls| tls.load_full());
            let fast_path = self.fast_path.clone();
            let finished = self.finished.clone();
            let drain = shutdown.clone();
            let open = self.metrics.open.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _finished = finished;
                open.inc();
                match tls {
                    None => match fast_path {
                        Some(viewer) => {
                            let mut fast_drain = drain.clone();
                            match crate::fast_http1::serve(
                                stream,
                                peer,
                                &viewer,
                                &mut fast_drain,
                                limits,
                            )
                            .await
                            {
                                crate::fast_http1::Outcome::Done => {}
                                crate::fast_http1::Outcome::HandOver { buffered, stream } => {
                                    let io = crate::fast_http1::Replayed::new(buffered, stream);
                                    serve_io(io, peer, handler, &builder, drain, limits).await
                                }
                            }
                        }
                        None => serve_io(stream, peer, handler, &builder, drain, limits).await,
                    },
                    Some(tls) => {
                        match tokio::time::timeout(limits.header_timeout, tls.accept(stream)).await
                        {
                            Ok(Ok(stream)) => {
                                serve_io(stream, peer, handler, &builder, drain, limits).await
                            }
                            Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    }
                }
                open.dec();
            });
        }
    }
}

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
        .max_concurrent_streams(256)
        .max_header_list_size(limits.max_header_size as u32);
    builder
}

/// Serves one connection until it ends, is idle too long, or shutdown drains it.
async fn serve_io<I, H>(
    io: I,
    peer: SocketAddr,
    handler: Arc<H>,
    builder: &auto::Builder<TokioExecutor>,
    mut drain: watch::Receiver<bool>,
    limits: ConnectionLimits,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(ActivityIo {
        inner: io,
        activity: Arc::clone(&activity),
    });
    let service_activity = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(PeerAddr(peer));
        let handler = Arc::clone(&handler);
        let in_flight = InFlight::begin(Arc::clone(&service_activity));
        async move {
            let response = handler.handle(request).await;
            Ok::<_, Infallible>(response.map(|body| InFlightBody {
                inner: body,
                _in_flight: in_flight,
            }))
        }
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        let deadline = activity.deadline(limits);
        tokio::select! {
            result = &mut connection => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            _ = drain.wait_for(|stop| *stop), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(deadline) => {
                if activity.deadline(limits) <= Instant::now() {
                    tracing::debug!("closing connection: request head too slow or idle too long");
                    return;
                }
            }
        }
    }
}

/// Marks a request as being answered from the moment hyper hands it over until its response
/// body is dropped (sent or abandoned). While any request is in flight the header timeout
/// does not run, so a long download is never mistaken for a slow request head.
struct InFlight {
    activity: Arc<Activity>,
}

impl InFlight {
    fn begin(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.head_started_ms.store(NO_HEAD, Ordering::Relaxed);
        InFlight { activity }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
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
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes arrived: note the activity, and start the header timer if they begin a head.
    fn bytes_read(&self) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
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
        let idle = at(self.last_ms.load(Ordering::Relaxed)) + limits.idle_timeout;
        match self.head_started_ms.load(Ordering::Relaxed) {
            NO_HEAD => idle,
            started => idle.min(at(started) + limits.header_timeout),
        }
    }
}

/// Wraps a connection's I/O to note when bytes move, for the idle timeout.
struct ActivityIo<I> {
    inner: I,
    activity: Arc<Activity>,
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
        if matches!(result, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite::{
        TLS13_AES_128_GCM_SHA256 as AES128, TLS13_AES_256_GCM_SHA384 as AES256,
        TLS13_CHACHA20_POLY1305_SHA256 as CHACHA,
    };

    #[test]
    fn chacha20_goes_only_to_clients_that_list_it_first_of_all() {
        let offered = [AES128, CHACHA];
        assert!(client_prefers_chacha20(&[CHACHA, AES128], &offered));
        assert!(
            !client_prefers_chacha20(&[AES256, CHACHA, AES128], &offered),
            "OpenSSL's fixed order says nothing about its hardware"
        );
        assert!(!client_prefers_chacha20(&[AES128, CHACHA], &offered));
        assert!(!client_prefers_chacha20(&[AES256], &offered));
        assert!(!client_prefers_chacha20(&[CHACHA], &[AES128]));
    }
}
