//! The operator's listener (CONTRACT section 5): health, readiness, metrics, status, mode.
//!
//! It runs on its own address and shares nothing with the viewer listeners but the state it
//! reports, so no admin route can ever be reached through a viewer port.
//!
//! What lives where:
//! - [`auth`]: the bearer token of mutating calls.
//! - [`client`]: the HTTP client the CLI uses to talk to this listener.
//! - this file: the routes.

pub mod auth;
pub mod client;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::listener::Handler;
use crate::metrics::Metrics;
use crate::schedule::{Mode, ModeState, Override, OverrideControl};
use crate::serve::body::ObjectBody;
use crate::store::{StoreStatus, Stores};
use auth::{AdminToken, AuthError};

/// Largest `POST /v1/mode` body accepted.
const MODE_BODY_LIMIT: usize = 4096;
/// How long `POST /v1/mode` waits for the scheduler to apply an override before answering.
const OVERRIDE_APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The admin request handler.
pub struct Admin {
    stores: Arc<Stores>,
    mode: watch::Receiver<ModeState>,
    metrics: Metrics,
    token: AdminToken,
    overrides: Arc<OverrideControl>,
}

/// The body of `POST /v1/mode`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeRequest {
    mode: Override,
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
    pub mode_override: Override,
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
    /// An admin handler reporting on these stores and this mode channel, changing the mode
    /// through `overrides` for callers that hold `token`.
    pub fn new(
        stores: Arc<Stores>,
        mode: watch::Receiver<ModeState>,
        metrics: Metrics,
        token: AdminToken,
        overrides: Arc<OverrideControl>,
    ) -> Admin {
        Admin {
            stores,
            mode,
            metrics,
            token,
            overrides,
        }
    }

    /// The current status document.
    pub fn status(&self) -> Status {
        let state = *self.mode.borrow();
        Status {
            mode: state.mode,
            mode_override: state.mode_override,
            next_switch: state.next_switch.map(|at| at.to_string()),
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

    async fn respond(&self, request: Request<Incoming>) -> Response<ObjectBody> {
        let path = request.uri().path().to_owned();
        let allowed = match path.as_str() {
            "/healthz" | "/readyz" | "/metrics" | "/v1/status" => "GET, HEAD",
            "/v1/mode" => "POST",
            _ => return text(StatusCode::NOT_FOUND, "not found\n"),
        };
        let method = request.method();
        let method_allowed = match allowed {
            "POST" => method == Method::POST,
            _ => method == Method::GET || method == Method::HEAD,
        };
        if !method_allowed {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allowed));
            return response;
        }
        match path.as_str() {
            "/v1/mode" => self.set_mode(request).await,
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

impl Admin {
    /// `POST /v1/mode`: checks the token, saves the override, waits until the scheduler has
    /// applied it, and answers with the new status.
    async fn set_mode(&self, request: Request<Incoming>) -> Response<ObjectBody> {
        if let Some(refusal) = self.refusal(&request) {
            return refusal;
        }
        let body = match Limited::new(request.into_body(), MODE_BODY_LIMIT)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(err)
                if err
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("body over {MODE_BODY_LIMIT} bytes"),
                );
            }
            Err(err) => return error(StatusCode::BAD_REQUEST, &format!("reading body: {err}")),
        };
        let wanted = match serde_json::from_slice::<ModeRequest>(&body) {
            Ok(request) => request.mode,
            Err(err) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("expected {{\"mode\": \"fill\"|\"serve\"|\"auto\"}}: {err}"),
                );
            }
        };
        if let Err(err) = self.overrides.set(wanted).await {
            tracing::error!(error = %err, "cannot save the mode override");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot save the override: {err}"),
            );
        }
        tracing::info!(mode_override = wanted.as_str(), "mode override set");
        let mut mode = self.mode.clone();
        let applied = tokio::time::timeout(
            OVERRIDE_APPLY_TIMEOUT,
            mode.wait_for(|state| state.mode_override == wanted),
        )
        .await;
        if applied.is_err() {
            tracing::warn!("the scheduler did not apply the override in time");
        }
        json(StatusCode::OK, &self.status())
    }

    /// The refusal of a mutating call without the right token (401, or 403 when no token is
    /// configured); `None` when the token is right.
    fn refusal<B>(&self, request: &Request<B>) -> Option<Response<ObjectBody>> {
        let err = self.token.check(request.headers()).err()?;
        if err != AuthError::NotConfigured {
            self.metrics.admin_auth_failures.inc();
        }
        tracing::warn!(
            reason = %err,
            method = %request.method(),
            path = request.uri().path(),
            "admin call refused"
        );
        let status = match err {
            AuthError::NotConfigured => StatusCode::FORBIDDEN,
            AuthError::Missing | AuthError::Wrong => StatusCode::UNAUTHORIZED,
        };
        let mut response = error(status, &err.to_string());
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tidecache admin\""),
            );
        }
        Some(response)
    }
}

impl Handler for Admin {
    async fn handle(&self, request: Request<Incoming>) -> Response<ObjectBody> {
        self.respond(request).await
    }
}

/// An error answer as JSON `{"error": "..."}`, as the admin API's callers parse it.
fn error(status: StatusCode, message: &str) -> Response<ObjectBody> {
    json(status, &serde_json::json!({ "error": message }))
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
