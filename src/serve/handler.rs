//! The seam between the transport ([`crate::http`], admin) and what answers requests: the
//! [`Handler`] trait and what a connection tells a request about itself ([`PeerAddr`]).

use std::future::Future;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::body::ObjectBody;

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
