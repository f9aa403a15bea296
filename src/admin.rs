//! The operator's listener (CONTRACT section 5): health, readiness, metrics and status.
//!
//! It runs on its own address and shares nothing with the viewer listeners but the state it
//! reports, so no admin route can ever be reached through a viewer port.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::sync::watch;

use crate::listener::Handler;
use crate::metrics::Metrics;
use crate::schedule::{Mode, ModeState};
use crate::serve::body::ObjectBody;
use crate::store::{StoreStatus, Stores};

/// The admin request handler.
#[derive(Debug)]
pub struct Admin {
    stores: Arc<Stores>,
    mode: watch::Receiver<ModeState>,
    metrics: Metrics,
}

/// `fill` in `/v1/status`.
#[derive(Debug, Serialize)]
pub struct FillStatus {
    /// `idle`, `running`, `done` or `paused`.
    pub state: &'static str,
    /// The manifest the fill works toward, when there is one.
    pub manifest_id: Option<String>,
    /// Objects in that manifest.
    pub objects_total: u64,
    /// Objects stored (already-present ones count).
    pub objects_done: u64,
    /// Objects that failed.
    pub objects_failed: u64,
    /// Bytes in that manifest.
    pub bytes_total: u64,
    /// Bytes stored.
    pub bytes_done: u64,
    /// Current ingest rate.
    pub bytes_per_sec: u64,
}

/// The body of `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// `serving`, `draining` or `filling`.
    pub mode: Mode,
    /// `auto`, `fill` or `serve`.
    #[serde(rename = "override")]
    pub mode_override: &'static str,
    /// Next scheduled mode switch, RFC 3339 UTC.
    pub next_switch: Option<String>,
    /// The manifest in force.
    pub manifest: Option<serde_json::Value>,
    /// Fill progress.
    pub fill: FillStatus,
    /// Objects in the index, all stores together.
    pub objects: usize,
    /// Each store.
    pub stores: Vec<StoreStatus>,
}

impl Admin {
    /// An admin handler reporting on these stores and this mode channel.
    pub fn new(stores: Arc<Stores>, mode: watch::Receiver<ModeState>, metrics: Metrics) -> Admin {
        Admin {
            stores,
            mode,
            metrics,
        }
    }

    /// The current status document.
    pub fn status(&self) -> Status {
        let mode = self.mode.borrow().mode;
        Status {
            mode,
            mode_override: "auto",
            next_switch: None,
            manifest: None,
            fill: FillStatus {
                state: "idle",
                manifest_id: None,
                objects_total: 0,
                objects_done: 0,
                objects_failed: 0,
                bytes_total: 0,
                bytes_done: 0,
                bytes_per_sec: 0,
            },
            objects: self.stores.object_count(),
            stores: self.stores.status(),
        }
    }

    fn respond<B>(&self, request: &Request<B>) -> Response<ObjectBody> {
        let path = request.uri().path();
        let known = ["/healthz", "/readyz", "/metrics", "/v1/status"];
        if !known.contains(&path) {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.readiness(),
            "/metrics" => {
                let body = self
                    .metrics
                    .render(self.mode.borrow().mode, &self.stores.status());
                let mut response = text(StatusCode::OK, &body);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            _ => json(StatusCode::OK, &self.status()),
        }
    }

    /// 200 when viewers are served; 503 with the reason otherwise.
    fn readiness(&self) -> Response<ObjectBody> {
        let mode = self.mode.borrow().mode;
        if mode != Mode::Serving {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {}\n", mode.as_str()),
            );
        }
        if !self.stores.any_usable() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no store is usable\n",
            );
        }
        text(StatusCode::OK, "ready\n")
    }
}

impl Handler for Admin {
    async fn handle(&self, request: Request<Incoming>) -> Response<ObjectBody> {
        self.respond(&request)
    }
}

fn text(status: StatusCode, message: &str) -> Response<ObjectBody> {
    respond_with(
        status,
        "text/plain; charset=utf-8",
        Bytes::copy_from_slice(message.as_bytes()),
    )
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ObjectBody> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            respond_with(status, "application/json", Bytes::from(bytes))
        }
        Err(err) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode status: {err}\n"),
        ),
    }
}

fn respond_with(
    status: StatusCode,
    content_type: &'static str,
    bytes: Bytes,
) -> Response<ObjectBody> {
    let length = bytes.len();
    let mut response = Response::new(ObjectBody::from_bytes(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
