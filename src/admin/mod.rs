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
pub mod site;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::fill::manifest::ManifestError;
use crate::fill::progress::{FillState, FillStatus};
use crate::fill::{AcceptError, Fill, ManifestSummary, Received, SignatureCheck};
use crate::metrics::{LastPass, Metrics, Snapshot};
use crate::schedule::{Mode, ModeState, Override, OverrideControl};
use crate::serve::body::ObjectBody;
use crate::serve::handler::Handler;
use crate::serve::popularity::Popularity;
use crate::site::SiteStatus;
use crate::store::{StoreStatus, Stores};
use arc_swap::ArcSwap;
use auth::{AdminToken, AuthError};

/// Entries of each list `GET /v1/popularity` gives without `limit`.
const DEFAULT_POPULARITY_LIMIT: usize = 100;

/// The value of `name` in a query string (`a=1&limit=5`), undecoded.
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Largest `POST /v1/mode` body accepted.
const MODE_BODY_LIMIT: usize = 4096;
/// How long `POST /v1/mode` waits for the scheduler to apply an override before answering.
const OVERRIDE_APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The admin request handler.
pub struct Admin {
    stores: Arc<Stores>,
    mode: watch::Receiver<ModeState>,
    metrics: Metrics,
    overrides: Arc<OverrideControl>,
    fill: Arc<Fill>,
    settings: ArcSwap<AdminSettings>,
    popularity: Option<Arc<Popularity>>,
}

/// Who may change the box, what a push may be, and what readiness depends on from the
/// configuration; swapped whole on SIGHUP.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// The bearer token of mutating calls.
    pub token: AdminToken,
    /// When set, pushed manifests must carry a valid `X-Tidecache-Signature`.
    pub hmac_key: Option<Vec<u8>>,
    /// Largest manifest accepted; bigger pushes get 413.
    pub max_manifest_size: usize,
    /// `schedule.during_fill = "serve"`: viewers are served while filling, so the box stays
    /// ready through a fill.
    pub serves_while_filling: bool,
    /// How long a request body may stall (`limits.idle_timeout`): the listener does not
    /// time a connection out while its request is being handled, so body reads bound
    /// their own waits on the client.
    pub body_timeout: Duration,
}

/// The body of `POST /v1/mode`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeRequest {
    mode: Override,
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
    pub manifest: Option<ManifestSummary>,
    /// Fill progress.
    pub fill: FillStatus,
    /// Objects in the index, all stores together.
    pub objects: usize,
    /// Each store.
    pub stores: Vec<StoreStatus>,
    /// The site, when this box is in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<SiteStatus>,
}

impl Admin {
    /// An admin handler reporting on these stores and this mode channel, changing the mode
    /// through `overrides` for callers that hold `token`.
    pub fn new(
        stores: Arc<Stores>,
        mode: watch::Receiver<ModeState>,
        metrics: Metrics,
        overrides: Arc<OverrideControl>,
        fill: Arc<Fill>,
        settings: AdminSettings,
    ) -> Admin {
        Admin {
            stores,
            mode,
            metrics,
            overrides,
            fill,
            settings: ArcSwap::from_pointee(settings),
            popularity: None,
        }
    }

    /// Answers `GET /v1/popularity` from `popularity` (without it: 404, counting is off).
    pub fn with_popularity(mut self, popularity: Arc<Popularity>) -> Admin {
        self.popularity = Some(popularity);
        self
    }

    /// Applies a new token, signing key, manifest size limit and fill behaviour (SIGHUP).
    pub fn reload(&self, settings: AdminSettings) {
        self.settings.store(Arc::new(settings));
    }

    /// The current status document.
    pub fn status(&self) -> Status {
        let state = *self.mode.borrow();
        Status {
            mode: state.mode,
            mode_override: state.mode_override,
            next_switch: state.next_switch.map(|at| at.to_string()),
            manifest: self.fill.manifest().map(|accepted| accepted.summary()),
            fill: self.fill.status(),
            objects: self.stores.object_count(),
            stores: self.stores.status(),
            site: self.fill.site().map(|site| site.status()),
        }
    }

    async fn respond(&self, request: Request<Incoming>) -> Response<ObjectBody> {
        let path = request.uri().path().to_owned();
        if path.starts_with("/v1/site/") {
            return self.site_route(request).await;
        }
        let allowed = match path.as_str() {
            "/healthz" | "/readyz" | "/metrics" | "/v1/status" | "/v1/popularity" => "GET, HEAD",
            "/v1/mode" => "POST",
            "/v1/manifest" => "GET, HEAD, PUT",
            _ => return text(StatusCode::NOT_FOUND, "not found\n"),
        };
        let method = request.method();
        let method_allowed = match allowed {
            "POST" => method == Method::POST,
            "GET, HEAD, PUT" => {
                method == Method::GET || method == Method::HEAD || method == Method::PUT
            }
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
            "/v1/manifest" if request.method() == Method::PUT => self.put_manifest(request).await,
            "/v1/manifest" => match self.fill.manifest() {
                Some(accepted) => json(StatusCode::OK, &accepted.summary()),
                None => error(StatusCode::NOT_FOUND, "no manifest has been accepted yet"),
            },
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/v1/popularity" => self.popularity(request.uri().query()),
            "/readyz" => self.readiness(),
            "/metrics" => {
                let body = self.render_metrics();
                let mut response = text(StatusCode::OK, &body);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            _ => {
                let mut status = self.status();
                if self.settings.load().token.check(request.headers()).is_err() {
                    status.fill = status.fill.for_anyone();
                }
                json(StatusCode::OK, &status)
            }
        }
    }

    /// `GET /v1/popularity?limit=N`: the top N (default 100) hits and misses.
    fn popularity(&self, query: Option<&str>) -> Response<ObjectBody> {
        let Some(popularity) = &self.popularity else {
            return error(
                StatusCode::NOT_FOUND,
                "popularity is not counted on this box (http.popularity = false)",
            );
        };
        let limit = match query_value(query, "limit").map(str::parse::<usize>) {
            None => DEFAULT_POPULARITY_LIMIT,
            Some(Ok(limit)) if (1..=crate::serve::popularity::MAX_LIMIT).contains(&limit) => limit,
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "limit must be a number from 1 to {}",
                        crate::serve::popularity::MAX_LIMIT
                    ),
                );
            }
        };
        json(StatusCode::OK, &popularity.report(limit))
    }

    /// 200 when viewers are served; 503 with the reason otherwise. In a site it also says
    /// whether this box has settled into the site's current members (`Tidecache-Site:
    /// settled` or `settling`), which its peers redirect by, and whether it keeps the members
    /// before the last change (`Tidecache-Site-Earlier: kept` or `none`), without which its
    /// peers give up no moved object.
    fn readiness(&self) -> Response<ObjectBody> {
        let mut response = match self.not_ready() {
            Some(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {reason}\n"),
            ),
            None => text(StatusCode::OK, "ready\n"),
        };
        if let Some(site) = self.fill.site() {
            let standing = site.standing();
            let settled = if standing.settled {
                "settled"
            } else {
                "settling"
            };
            let earlier = if standing.keeps_earlier {
                "kept"
            } else {
                "none"
            };
            let headers = response.headers_mut();
            headers.insert(
                crate::site::SETTLED_HEADER,
                HeaderValue::from_static(settled),
            );
            headers.insert(
                crate::site::EARLIER_HEADER,
                HeaderValue::from_static(earlier),
            );
            if let Ok(members) = HeaderValue::from_str(&standing.members) {
                headers.insert(crate::site::MEMBERS_HEADER, members);
            }
        }
        response
    }

    /// Why viewers should not be sent here now, if they should not: the mode (unless
    /// `during_fill = "serve"`), no usable store, or content never held yet (a new box).
    /// A new manifest alone never makes a serving box unready: content is a latch
    /// ([`Stocked`](crate::fill::stocked::Stocked)).
    fn not_ready(&self) -> Option<String> {
        let mode = self.mode.borrow().mode;
        if mode != Mode::Serving && !self.settings.load().serves_while_filling {
            Some(mode.as_str().to_owned())
        } else if !self.stores.any_usable() {
            Some("no store is usable".to_owned())
        } else if !self.fill.stocked().is_set() {
            Some(self.no_content())
        } else {
            None
        }
    }

    /// Why a box that never held its content is not ready, with how far it is: bytes stored
    /// and verified, never bytes in flight, and a percentage rounded down, so it never reads
    /// as enough while it is not.
    fn no_content(&self) -> String {
        let Some(accepted) = self.fill.manifest() else {
            return "no content: no manifest has been accepted yet".to_owned();
        };
        let stocked = self.fill.stocked();
        let share = stocked.ready_share();
        let id = &accepted.id;
        let held = match stocked.measured() {
            Some(measured) if &measured.manifest_id == id && measured.total > 0 => {
                let tenths = u128::from(measured.held) * 1000 / u128::from(measured.total);
                format!(
                    "holds {} of {} bytes, {}.{} %",
                    measured.held,
                    measured.total,
                    tenths / 10,
                    tenths % 10
                )
            }
            _ if accepted.objects == 0 => "it lists no object".to_owned(),
            _ => "not measured yet".to_owned(),
        };
        format!(
            "no content: manifest {id} not filled yet ({held}); ready after a fill pass without failures or once it holds {} % of its bytes (fill.ready_share)",
            share * 100.0
        )
    }

    /// The metrics text, with the gauges that mirror the mode, stores, readiness, manifest
    /// and last fill pass read now.
    fn render_metrics(&self) -> String {
        let stores = self.stores.status();
        let site_peers: Vec<(String, bool)> = self
            .fill
            .site()
            .map(|site| {
                site.peers()
                    .iter()
                    .map(|peer| (peer.name.clone(), peer.is_ready()))
                    .collect()
            })
            .unwrap_or_default();
        let last_pass = self.fill.status().last_fill.map(|report| LastPass {
            complete: report.state == FillState::Done,
            failed: report.failed,
            ended_at: report
                .started_at
                .parse::<jiff::Timestamp>()
                .map_or(0, |started| {
                    started.as_second() + report.duration_secs.round() as i64
                }),
        });
        self.metrics.render(&Snapshot {
            mode: self.mode.borrow().mode,
            stores: &stores,
            open_files: self.stores.open_files_cached(),
            ready: self.not_ready().is_none(),
            content_held: self.fill.stocked().is_set(),
            manifest_accepted_at: self
                .fill
                .manifest()
                .map(|accepted| accepted.accepted_at.as_second()),
            last_pass,
            site_peers: &site_peers,
        })
    }
}

impl Admin {
    /// `POST /v1/mode`: checks the token, saves the override, waits until the scheduler has
    /// applied it, and answers with the new status.
    async fn set_mode(&self, request: Request<Incoming>) -> Response<ObjectBody> {
        if let Some(refusal) = self.refusal(&request) {
            return refusal;
        }
        let body_timeout = self.settings.load().body_timeout;
        let body = match read_body(request.into_body(), MODE_BODY_LIMIT, "body", body_timeout).await
        {
            Ok(body) => body,
            Err((status, message)) => return error(status, &message),
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

    /// `PUT /v1/manifest`: token, size limit, signature, full validation, atomic save; the
    /// manifest in force changes only when all of that succeeds.
    async fn put_manifest(&self, request: Request<Incoming>) -> Response<ObjectBody> {
        if let Some(refusal) = self.refusal(&request) {
            return refusal;
        }
        let auth = self.settings.load_full();
        let limit = auth.max_manifest_size;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("manifest over fill.max_manifest_size ({limit} bytes)"),
            );
        }
        let encoding = request
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(|value| value.to_str().unwrap_or("?").trim().to_ascii_lowercase());
        if let Some(other) = encoding.filter(|value| value != "gzip" && value != "identity") {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("Content-Encoding {other:?}: a manifest is sent as is or gzip"),
            );
        }
        let signature = request
            .headers()
            .get("x-tidecache-signature")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        // Spooling, accepting and cleaning up run in a task of their own: if the connection
        // goes (a client that gives up, the idle timeout during a long accept), the manifest
        // still either comes into force or is refused whole, is logged, and leaves no spool.
        let spool = self.fill.spool_file();
        let fill = Arc::clone(&self.fill);
        let metrics = self.metrics.clone();
        let body = request.into_body();
        let hmac_key = auth.hmac_key.clone();
        let body_timeout = auth.body_timeout;
        let task = tokio::spawn(async move {
            let received = spool_body(body, &spool, limit, hmac_key.as_deref(), body_timeout).await;
            let signed = |check: Option<SignatureCheck>| {
                check.is_none_or(|check| check.verify(signature.as_deref()))
            };
            let answer = match received.map(signed) {
                Err((status, message)) => error(status, &message),
                Ok(false) => {
                    metrics.admin_auth_failures.inc();
                    tracing::warn!("manifest refused: missing or wrong X-Tidecache-Signature");
                    error(
                        StatusCode::UNAUTHORIZED,
                        "missing or wrong X-Tidecache-Signature (sha256=<hex HMAC-SHA256 of the body>)",
                    )
                }
                Ok(true) => accept(&fill, Received::File(spool.clone()), limit as u64).await,
            };
            let _ = tokio::fs::remove_file(&spool).await;
            answer
        });
        task.await.unwrap_or_else(|err| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the manifest push failed: {err}"),
            )
        })
    }

    /// The refusal of a mutating call without the right token (401, or 403 when no token is
    /// configured); `None` when the token is right.
    fn refusal<B>(&self, request: &Request<B>) -> Option<Response<ObjectBody>> {
        let err = self.settings.load().token.check(request.headers()).err()?;
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

/// Reads a request body of at most `limit` bytes: 413 beyond it, 400 when the client breaks
/// off.
/// Accepts a received manifest and answers: 202, or why not (400 invalid, 409 a delta on
/// another base or on a manifest in force that cannot be read back, 413 too large once
/// decompressed, 500 not saved).
async fn accept(fill: &Fill, received: Received, limit: u64) -> Response<ObjectBody> {
    match fill.accept(received, limit).await {
        Ok(summary) => json(StatusCode::ACCEPTED, &summary),
        Err(AcceptError::Invalid(err)) => {
            tracing::warn!(error = %err, "manifest refused; the one in force stays");
            let status = match err {
                ManifestError::WrongBase { .. } => StatusCode::CONFLICT,
                ManifestError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            error(status, &err.to_string())
        }
        Err(err @ AcceptError::InForceUnreadable(_)) => {
            tracing::error!(error = %err, "delta refused; the manifest in force stays");
            error(StatusCode::CONFLICT, &err.to_string())
        }
        Err(err @ AcceptError::Save(_)) => {
            tracing::error!(error = %err, "manifest not saved; the one in force stays");
            error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string())
        }
    }
}

/// Writes a pushed body to `spool` as it arrives (never holding it whole), at most `limit`
/// bytes, computing its HMAC under `hmac_key` when one is configured.
async fn spool_body(
    mut body: Incoming,
    spool: &std::path::Path,
    limit: usize,
    hmac_key: Option<&[u8]>,
    stall: Duration,
) -> Result<Option<SignatureCheck>, (StatusCode, String)> {
    use tokio::io::AsyncWriteExt;
    let unsaved = |err: std::io::Error| {
        tracing::error!(error = %err, "cannot spool a pushed manifest");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot spool the manifest: {err}"),
        )
    };
    let mut file = tokio::fs::File::create(spool).await.map_err(unsaved)?;
    let mut check = hmac_key.map(SignatureCheck::new);
    let mut received = 0usize;
    let stalled = || {
        (
            StatusCode::REQUEST_TIMEOUT,
            format!("the manifest body stalled for {stall:?} (limits.idle_timeout)"),
        )
    };
    while let Some(frame) = tokio::time::timeout(stall, body.frame())
        .await
        .map_err(|_| stalled())?
    {
        let frame =
            frame.map_err(|err| (StatusCode::BAD_REQUEST, format!("reading body: {err}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len();
        if received > limit {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("manifest (fill.max_manifest_size) over {limit} bytes"),
            ));
        }
        if let Some(check) = &mut check {
            check.update(&data);
        }
        file.write_all(&data).await.map_err(unsaved)?;
    }
    file.flush().await.map_err(unsaved)?;
    Ok(check)
}

/// A small request body (at most `limit` bytes), whole within `deadline`.
async fn read_body(
    body: Incoming,
    limit: usize,
    what: &str,
    deadline: Duration,
) -> Result<Bytes, (StatusCode, String)> {
    let Ok(collected) = tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await
    else {
        return Err((
            StatusCode::REQUEST_TIMEOUT,
            format!("the {what} did not arrive within {deadline:?} (limits.idle_timeout)"),
        ));
    };
    match collected {
        Ok(body) => Ok(body.to_bytes()),
        Err(err)
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{what} over {limit} bytes"),
            ))
        }
        Err(err) => Err((StatusCode::BAD_REQUEST, format!("reading body: {err}"))),
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
