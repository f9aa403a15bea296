//! The viewer transport: listeners, the HTTP/1 fast path, TLS and the worker threads.
//!
//! This room owns the connection, from accept to close; what a request gets is decided one
//! floor down, in [`crate::serve`], through the [`crate::serve::handler::Handler`] seam.
//!
//! What lives where:
//! - this file: per-connection limits, connection counters, binding and its error.
//! - [`listener`]: the accept loop shared by every listener (viewer HTTP, HTTPS and admin).
//! - [`fast_http1`]: the sendfile fast path for plain GET/HEAD beside hyper.
//! - [`tls`]: loading certificates and the per-client cipher suite choice.
//! - [`workers`]: the viewer event-loop threads, one runtime each.

pub mod fast_http1;
pub mod listener;
pub mod tls;
pub mod workers;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::net::TcpListener;

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

/// A listening address that cannot be bound (in use, not this host's, no permission).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// What the OS said.
    pub source: io::Error,
}

/// Binds a TCP listener and reads back its address (the real port when `:0` was asked).
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), BindError> {
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let local = tcp
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    Ok((tcp, local))
}
