//! What a viewer request gets: `GET` and `HEAD` of stored objects, as CONTRACT section 4
//! says. The connection itself (HTTP/1.1, HTTP/2, TLS, sendfile) is [`crate::http`]'s, one
//! floor up; it asks this room through [`handler::Handler`] and [`Viewer::answer`].
//!
//! What lives where:
//! - [`handler`]: the seam the transport and admin answer through.
//! - [`range`]: the `Range` header, with coalescing and the amplification limits.
//! - [`conditional`]: `If-*` preconditions in RFC 9110 order.
//! - [`body`]: response bodies streamed from files (and memory).
//! - [`cache`]: the RAM cache of hot, verified objects.
//! - [`signed`]: signed viewer URLs.
//! - [`access_log`]: the access log's background writer.
//! - this file: the [`Viewer`] that turns a request into a response.
//!
//! The viewer never writes to a store; it only looks up the index and reads files.

pub mod access_log;
pub mod answer;
pub mod body;
pub mod cache;
pub mod conditional;
pub mod handler;
pub mod popularity;
pub mod range;
pub mod request;
pub mod signed;
mod validators;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use jiff::Timestamp;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::config::{Config, DuringFill};
use crate::metrics::Metrics;
use crate::object_path;
use crate::schedule::{Clock, Mode, ModeState, SystemClock};
use crate::site::Site;
use crate::store::{StoreError, Stores};
use answer::{Answer, AnswerHeaders};
use body::ObjectBody;
use conditional::{Preconditions, Verdict};
use handler::Handler;
use popularity::Popularity;
use range::{ByteRange, RangeRequest};
use request::RequestHead;
pub use validators::{Validators, etag};

/// Headers a viewer answer carries at most (Server, CORS, validators, Cache-Control,
/// Accept-Ranges, Content-Type/Length/Range, Retry-After or Location).
const RESPONSE_HEADERS: usize = 13;

/// `Retry-After` when serving is paused with no known end (a manual override), in seconds.
pub const RETRY_AFTER_UNKNOWN_SECS: u64 = 300;

/// Methods a viewer may use, for `Allow` and CORS preflight answers.
const ALLOWED_METHODS: &str = "GET, HEAD, OPTIONS";
/// Request headers browser players send that preflight must allow.
const CORS_ALLOWED_HEADERS: &str =
    "Range, If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since, If-Range";
/// `Timing-Allow-Origin` (W3C Resource Timing), sent with the CORS origin's value.
const TIMING_ALLOW_ORIGIN: HeaderName = HeaderName::from_static("timing-allow-origin");
/// Response headers a browser player must be able to read (beyond the CORS safelist).
const CORS_EXPOSED_HEADERS: &str =
    "Accept-Ranges, Content-Length, Content-Range, ETag, Retry-After";

/// The `Content-Type` for an object path, by extension (CONTRACT section 4).
pub fn content_type(path: &str) -> &'static str {
    let extension = path.rsplit_once('.').map_or("", |(_, extension)| extension);
    const TABLE: [(&str, &str); 7] = [
        ("m3u8", "application/vnd.apple.mpegurl"),
        ("mpd", "application/dash+xml"),
        ("m4s", "video/iso.segment"),
        ("mp4", "video/mp4"),
        ("ts", "video/mp2t"),
        ("aac", "audio/aac"),
        ("vtt", "text/vtt"),
    ];
    TABLE
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(extension))
        .map_or("application/octet-stream", |(_, mime)| mime)
}

/// Viewer settings taken from the configuration once, as ready-made header values.
#[derive(Debug, Clone)]
pub struct ViewerSettings {
    /// The key of signed URLs; when set, every GET/HEAD must carry a valid signature.
    signing_key: Option<Vec<u8>>,
    cache_control: HeaderValue,
    cors_origin: Option<HeaderValue>,
    fallback_url: Option<String>,
    during_fill: DuringFill,
}

impl ViewerSettings {
    /// Requires signed URLs under `key` (read from `http.url_signing_key_file`).
    pub fn with_signing_key(mut self, key: Option<Vec<u8>>) -> ViewerSettings {
        self.signing_key = key;
        self
    }

    /// Derives the settings from a validated configuration (without the signing key, which
    /// lives in a file: see [`ViewerSettings::with_signing_key`]).
    pub fn from_config(config: &Config) -> ViewerSettings {
        let cors = &config.http.cors_allow_origin;
        let fallback = config.schedule.fallback_url.as_str().trim_end_matches('/');
        ViewerSettings {
            signing_key: None,
            cache_control: config.http.cache_control.value().clone(),
            cors_origin: (!cors.is_empty()).then(|| cors.value().clone()),
            fallback_url: (!fallback.is_empty()).then(|| fallback.to_owned()),
            during_fill: config.schedule.during_fill,
        }
    }
}

/// The viewer request handler.
#[derive(Debug)]
pub struct Viewer {
    stores: Arc<Stores>,
    mode: watch::Receiver<ModeState>,
    settings: ArcSwap<ViewerSettings>,
    metrics: Metrics,
    access_log: Option<access_log::AccessLog>,
    cache: Arc<cache::RamCache>,
    /// The scheduler's clock, so `Retry-After` counts to the window's end in the same time
    /// the scheduler keeps (a test's manual clock included).
    clock: Arc<dyn Clock>,
    /// The site this box belongs to: a miss is redirected to a ready peer that owns the
    /// object.
    site: Option<Arc<Site>>,
    /// What viewers ask for (`http.popularity`).
    popularity: Option<Arc<Popularity>>,
    /// `tidecache_requests_total` series for the common answers to GET and HEAD, resolved
    /// once: a label lookup per request costs a lock and a hash.
    common_counters: Vec<(StatusCode, &'static str, prometheus::IntCounter)>,
}

/// What a blocking thread does with a file after its answer started.
#[derive(Debug, Clone, Copy)]
enum FileWork {
    /// Hash it against its sha256 (the sendfile path, once per version).
    Check,
    /// Read it into the RAM cache.
    Load,
}

/// Where a response's bytes come from.
enum Source {
    /// A verified copy in the RAM cache: ranges are zero-copy slices.
    Memory(Bytes, Validators),
    /// The stored file, streamed in chunks (or sent with sendfile), with the validators when
    /// the RAM cache already had them.
    File(Arc<std::fs::File>, Option<Validators>),
}

impl Source {
    /// Appends `len` bytes from `offset` to `body`.
    fn push(&self, body: &mut ObjectBody, offset: u64, len: u64) {
        match self {
            Source::Memory(bytes, _) => {
                let start = offset as usize;
                body.push_bytes(bytes.slice(start..start + len as usize));
            }
            Source::File(file, _) => body.push_file_range(Arc::clone(file), offset, len),
        }
    }
}

/// RFC 9112 section 3.2: an HTTP/1.1 request carries exactly one `Host`, and a server
/// answers 400 to one with none, several, or an invalid one (smuggling and cache-poisoning
/// attacks start with requests that disagree about their host). HTTP/2 names its authority
/// otherwise, and HTTP/1.0 clients need not send one.
pub fn check_host(request: &RequestHead<'_>) -> Result<(), &'static str> {
    if request.version() != http::Version::HTTP_11 {
        return Ok(());
    }
    let Ok(Some(host)) = request.single_header(&header::HOST) else {
        return Err("an HTTP/1.1 request needs exactly one Host header");
    };
    if valid_host(host) {
        Ok(())
    } else {
        Err("the Host header is not a valid host[:port]")
    }
}

/// RFC 9110 section 7.2: `Host = uri-host [ ":" port ]`, with `uri-host` an IP literal in
/// brackets or a reg-name (RFC 3986 section 3.2.2); empty is allowed. Checked in place:
/// every request pays for it, so it allocates nothing.
fn valid_host(host: &[u8]) -> bool {
    let (name, port) = match host.iter().rposition(|&byte| byte == b':') {
        Some(colon) if !host[colon..].contains(&b']') => (&host[..colon], &host[colon + 1..]),
        _ => (host, &b""[..]),
    };
    if !port.iter().all(u8::is_ascii_digit) {
        return false;
    }
    match name {
        [b'[', literal @ .., b']'] => literal
            .iter()
            .all(|&byte| byte.is_ascii_hexdigit() || b":.".contains(&byte)),
        _ => name
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&byte)),
    }
}

/// Who will write an answer's body to the connection, which decides where it is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// hyper streams the body from memory or the file.
    Hyper,
    /// The HTTP/1 fast path sends file bodies with `sendfile(2)`.
    Sendfile,
}

impl Handler for Viewer {
    async fn handle(&self, request: Request<Incoming>) -> Response<ObjectBody> {
        let answer = self.answer(&RequestHead::of(&request), Sender::Hyper);
        answer
            .into_response()
            .map(|body| body.count_into(self.metrics.response_bytes.clone()))
    }
}

/// Counter that makes multipart boundaries unique within a process.
static BOUNDARY_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Viewer {
    /// A viewer over `stores` that obeys the mode channel.
    pub fn new(
        stores: Arc<Stores>,
        mode: watch::Receiver<ModeState>,
        settings: ViewerSettings,
        metrics: Metrics,
    ) -> Viewer {
        Viewer {
            stores,
            mode,
            settings: ArcSwap::from_pointee(settings),
            metrics,
            access_log: None,
            cache: Arc::new(cache::RamCache::new(0, 0)),
            clock: Arc::new(SystemClock),
            site: None,
            popularity: None,
            common_counters: Vec::new(),
        }
        .with_common_counters()
    }

    fn with_common_counters(mut self) -> Viewer {
        for status in [
            StatusCode::OK,
            StatusCode::PARTIAL_CONTENT,
            StatusCode::NOT_MODIFIED,
            StatusCode::NOT_FOUND,
        ] {
            for method in ["GET", "HEAD"] {
                let counter = self
                    .metrics
                    .requests
                    .with_label_values(&[status.as_str(), method]);
                self.common_counters.push((status, method, counter));
            }
        }
        self
    }

    /// Answers one request, counting it and logging it. For [`Sender::Sendfile`], a
    /// whole-object answer comes from the file even when the object is in the RAM cache, so
    /// the caller can send it with sendfile instead of copying it from memory.
    pub fn answer(&self, request: &RequestHead<'_>, sender: Sender) -> Answer {
        let started = Instant::now();
        let arrived = self.access_log.as_ref().map(|_| SystemTime::now());
        let mut response = self.respond(request, sender);
        if request.method() == Method::HEAD {
            // Whatever the status, a HEAD answer ends with its head (RFC 9110 section
            // 9.3.2); its Content-Length stays the GET's. Both transports rely on it.
            response.body = ObjectBody::empty();
        }
        let method = match *request.method() {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        self.count_request(response.status, method);
        let duration = started.elapsed().as_secs_f64();
        self.metrics.request_duration.observe(duration);
        if let (Some(log), Some(time)) = (&self.access_log, arrived) {
            // Written when the response is over, with the body bytes that went out (a HEAD
            // sends none; a cut download, what the client got), as nginx's $body_bytes_sent.
            let mut record = access_record(request, &response, time, duration);
            let log = log.clone();
            let body = std::mem::replace(&mut response.body, ObjectBody::empty());
            response.body = body.on_end(Box::new(move |sent| {
                record.bytes = sent;
                log.record(record);
            }));
        }
        response
    }

    /// Takes the version of the object behind `uri_path` whose answer carried `etag` out of
    /// service because its file ended before its indexed size while being sent (truncated
    /// behind tidecache's back). A version published since is left alone.
    pub fn report_short_file(&self, uri_path: &str, etag: &[u8]) {
        let sha256 = etag
            .strip_prefix(b"\"")
            .and_then(|rest| rest.strip_suffix(b"\""))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(crate::store::unhex)
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
        if let (Ok(path), Some(sha256)) = (object_path::from_request(uri_path), sha256) {
            self.stores.report_damaged(&path, &sha256);
        }
    }

    /// Whether requests are logged, so callers know the client's address is needed.
    pub fn logs_access(&self) -> bool {
        self.access_log.is_some()
    }

    /// Counts body bytes a writer other than hyper sent (the sendfile fast path).
    pub fn count_sent(&self, bytes: u64) {
        self.metrics.response_bytes.inc_by(bytes);
    }

    /// Counts an answer in `tidecache_requests_total`.
    fn count_request(&self, status: StatusCode, method: &'static str) {
        match self
            .common_counters
            .iter()
            .find(|(known, known_method, _)| *known == status && *known_method == method)
        {
            Some((_, _, counter)) => counter.inc(),
            None => self
                .metrics
                .requests
                .with_label_values(&[status.as_str(), method])
                .inc(),
        }
    }

    /// Reads the time for `Retry-After` from `clock`, the scheduler's (the system clock by
    /// default).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Viewer {
        self.clock = clock;
        self
    }

    /// Counts what viewers ask for into `popularity`.
    pub fn with_popularity(mut self, popularity: Arc<Popularity>) -> Viewer {
        self.popularity = Some(popularity);
        self
    }

    /// Redirects misses to the best-ranked ready box of `site`.
    pub fn with_site(mut self, site: Arc<Site>) -> Viewer {
        self.site = Some(site);
        self
    }

    /// Keeps hot objects in `cache` (see [`cache::RamCache`]).
    pub fn with_ram_cache(mut self, cache: cache::RamCache) -> Viewer {
        self.cache = Arc::new(cache);
        self
    }

    /// Logs every answered request to `log` (built before the viewer starts serving).
    pub fn with_access_log(mut self, log: access_log::AccessLog) -> Viewer {
        self.access_log = Some(log);
        self
    }

    /// Reopens the access log file (SIGHUP, after logrotate).
    pub fn reopen_access_log(&self) {
        if let Some(log) = &self.access_log {
            log.reopen();
        }
    }

    /// Writes out the access log's queued lines and stops its writer (the daemon exits).
    pub async fn close_access_log(&self) {
        if let Some(log) = &self.access_log {
            log.close().await;
        }
    }

    /// Applies new settings (SIGHUP): requests from now on see them; none is cut.
    pub fn reload(&self, settings: ViewerSettings) {
        self.settings.store(Arc::new(settings));
    }

    /// Turns one request into a response. Synchronous: lookups and opens do not wait on
    /// anything but the local disk; bytes are streamed later by the body.
    fn respond(&self, request: &RequestHead<'_>, sender: Sender) -> Answer {
        if let Err(problem) = check_host(request) {
            return self.text(
                StatusCode::BAD_REQUEST,
                &format!("bad request: {problem}\n"),
            );
        }
        let method = request.method();
        if method == Method::OPTIONS {
            return self.options(request);
        }
        if method != Method::GET && method != Method::HEAD {
            let mut response = self.text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers
                .insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
            return response;
        }
        // Read once for the request: each read of the shared settings costs a few atomics.
        let settings = self.settings.load();
        if let Some(key) = &settings.signing_key {
            let now = jiff::Timestamp::now().as_second();
            if let Err(err) = signed::check(key, request.path(), request.query(), now) {
                return self.text(StatusCode::FORBIDDEN, &format!("forbidden: {err}\n"));
            }
        }
        if let Some(response) = self.not_serving(request, &settings) {
            return response;
        }
        let path = match object_path::from_request(request.path()) {
            Ok(path) => path,
            Err(err) => return self.text(StatusCode::BAD_REQUEST, &format!("bad path: {err}\n")),
        };
        // The sendfile fast path sends every object (and range) from its file, even one the RAM
        // cache holds: the copy out of the cache costs more CPU per GB served than sendfile
        // from the page cache (benches/compare, 2 MiB and ranges against nginx). The RAM cache
        // serves the writers that copy anyway (TLS, HTTP/2, hyper).
        let prefer_file = sender == Sender::Sendfile;
        // A GET on the sendfile path loads nothing into RAM (it never sends from there), but
        // has its version's file checked once: that SHA-256 is what takes a flipped bit out
        // of service while serving (see `cache`).
        let admission = if request.method() == Method::HEAD {
            cache::Admission::Peek
        } else if prefer_file {
            cache::Admission::Verify
        } else {
            cache::Admission::Load
        };
        let mut replaced_meanwhile = 0;
        let (meta, source, fresh) = loop {
            let Some(meta) = self.stores.lookup(&path) else {
                return self.counted_miss(request, &path);
            };
            match self.source(&path, meta, prefer_file, admission) {
                Ok((source, fresh)) => break (meta, source, fresh),
                // A fill replaced it between the lookup and the open: look again.
                Err(StoreError::Changed { .. }) if replaced_meanwhile < 3 => {
                    replaced_meanwhile += 1;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "stored object unreadable; answering as a miss");
                    return self.counted_miss(request, &path);
                }
            }
        };
        let response = self.object(request, &settings, &path, meta, source, sender, fresh);
        if let Some(popularity) = &self.popularity {
            let bytes = if request.method() == Method::HEAD {
                0
            } else {
                response.body.len()
            };
            popularity.hit(&path, bytes);
        }
        response
    }

    /// Where the bytes of the object `meta` describes come from: the RAM cache, or its
    /// file (opened, and a RAM-cache load started when the cache wants it), and whether the
    /// file was opened just now rather than found in the open-file cache. `prefer_file`:
    /// cached objects are sent from their file too (sendfile beats a copy).
    fn source(
        &self,
        path: &str,
        meta: crate::store::ObjectMeta,
        prefer_file: bool,
        admission: cache::Admission,
    ) -> Result<(Source, bool), StoreError> {
        match self.cache.lookup(path, &meta, admission) {
            cache::Lookup::Hit(bytes, validators) if !prefer_file => {
                Ok((Source::Memory(bytes, validators), false))
            }
            // A verified, cached object the caller will sendfile: the file, whose bytes the
            // cache checked when it loaded them.
            cache::Lookup::Hit(_, validators) => {
                let object = self.stores.open(path, meta)?;
                Ok((Source::File(object.file, Some(validators)), object.fresh))
            }
            cache::Lookup::Miss { load } => {
                let object = match self.stores.open(path, meta) {
                    Ok(object) => object,
                    Err(err) => {
                        // The load slot this miss was granted goes back whatever the error
                        // (a replaced object included): kept, it would block loads for good.
                        if load {
                            self.cache.insert(path, &meta, None);
                        }
                        return Err(err);
                    }
                };
                if load {
                    self.read_in_background(path, meta, &object.file, FileWork::Load);
                }
                Ok((Source::File(object.file, None), object.fresh))
            }
            cache::Lookup::Unverified => {
                let object = match self.stores.open(path, meta) {
                    Ok(object) => object,
                    Err(err) => {
                        self.cache.checked(path, &meta, Err(cache::LoadError::Read));
                        return Err(err);
                    }
                };
                self.read_in_background(path, meta, &object.file, FileWork::Check);
                Ok((Source::File(object.file, None), object.fresh))
            }
        }
    }

    /// Reads an object's file on a blocking thread once its answer has started: to check
    /// it against its sha256 (once per version, see [`cache::Admission::Verify`]) or to
    /// load it into the RAM cache (hashed unless that version was checked already). A
    /// mismatch takes the version out of service.
    fn read_in_background(
        &self,
        path: &str,
        meta: crate::store::ObjectMeta,
        file: &Arc<std::fs::File>,
        work: FileWork,
    ) {
        let (cache, stores, file, path) = (
            Arc::clone(&self.cache),
            Arc::clone(&self.stores),
            Arc::clone(file),
            path.to_string(),
        );
        tokio::task::spawn_blocking(move || {
            let outcome = match work {
                FileWork::Check => {
                    let checked = cache::check_file(&file, &meta);
                    cache.checked(&path, &meta, checked);
                    checked
                }
                FileWork::Load => {
                    let checked = cache.is_checked(&path, &meta);
                    let loaded = cache::load_verified(&file, &meta, checked);
                    let outcome = loaded.as_ref().map(|_| ()).map_err(|failure| *failure);
                    // Counted as `checked` counts a check: hashed, so not a failed read.
                    if !checked && outcome != Err(cache::LoadError::Read) {
                        cache.count_check();
                    }
                    cache.insert(&path, &meta, loaded.ok());
                    outcome
                }
            };
            if outcome == Err(cache::LoadError::Mismatch) {
                stores.report_damaged_version(&path, &meta);
            }
        });
    }

    /// The answer for a found object: 200, 206, 304, 412 or 416. A body streamed by hyper
    /// ([`Sender::Hyper`]) reports a file found shorter than indexed; the sendfile path
    /// notices that itself.
    #[allow(
        clippy::too_many_arguments,
        reason = "the request's parts, each decided by a different step of `respond`"
    )]
    fn object(
        &self,
        request: &RequestHead<'_>,
        settings: &ViewerSettings,
        path: &str,
        meta: crate::store::ObjectMeta,
        source: Source,
        sender: Sender,
        fresh: bool,
    ) -> Answer {
        let text = |name: HeaderName| request.header_text(&name);
        let validators = match &source {
            Source::Memory(_, validators) | Source::File(_, Some(validators)) => validators.clone(),
            Source::File(_, None) => Validators::memoized(&meta),
        };
        let etag = validators.etag.to_str().unwrap_or("");
        let preconditions = Preconditions {
            if_match: text(header::IF_MATCH),
            if_none_match: text(header::IF_NONE_MATCH),
            if_modified_since: text(header::IF_MODIFIED_SINCE),
            if_unmodified_since: text(header::IF_UNMODIFIED_SINCE),
            if_range: text(header::IF_RANGE),
        };
        let honor_range = match conditional::evaluate(&preconditions, etag, meta.filled_at) {
            Verdict::NotModified => {
                let mut response =
                    self.with_common(settings, StatusCode::NOT_MODIFIED, ObjectBody::empty());
                self.validators(settings, &mut response.headers, &validators);
                return response;
            }
            Verdict::PreconditionFailed => {
                return self.text(StatusCode::PRECONDITION_FAILED, "precondition failed\n");
            }
            Verdict::Proceed { honor_range } => honor_range,
        };
        let is_head = request.method() == Method::HEAD;
        let range = match text(header::RANGE) {
            Some(value) if honor_range => range::parse(value, meta.size),
            _ => RangeRequest::Whole,
        };
        let mime = content_type(path);
        // A file opened just now for a GET the sendfile path answers is read into the page
        // cache in large folios first (see `store::read_in_large_folios`): the bytes this
        // answer sends, for objects up to 16 MiB and answers of at least 64 KiB. A HEAD, 304,
        // 412, 416 or small range reads nothing more than it sends, and an open-file cache
        // hit nothing more.
        let read_ahead = |start: u64, end: u64| {
            if let Source::File(file, _) = &source {
                if fresh
                    && !is_head
                    && sender == Sender::Sendfile
                    && meta.size <= LARGE_FOLIO_OBJECT_MAX
                    && end - start >= LARGE_FOLIO_ANSWER_MIN - 1
                {
                    crate::store::read_in_large_folios(file, meta.size, start..=end);
                }
            }
        };
        let (status, mut body, content_range, multipart_type) = match range {
            RangeRequest::Whole => {
                read_ahead(0, meta.size.saturating_sub(1));
                let mut body = ObjectBody::empty();
                source.push(&mut body, 0, meta.size);
                (StatusCode::OK, body, None, None)
            }
            RangeRequest::Partial(ranges) if ranges.len() == 1 => {
                let ByteRange { start, end } = ranges[0];
                read_ahead(start, end);
                let mut body = ObjectBody::empty();
                source.push(&mut body, start, end - start + 1);
                (
                    StatusCode::PARTIAL_CONTENT,
                    body,
                    Some(single_content_range(start, end, meta.size)),
                    None,
                )
            }
            RangeRequest::Partial(ranges) => {
                let boundary = format!(
                    "{:016x}{}",
                    BOUNDARY_COUNTER.fetch_add(1, Ordering::Relaxed),
                    etag.get(1..17).unwrap_or("")
                );
                let body = multipart(&source, meta.size, &ranges, mime, &boundary);
                (
                    StatusCode::PARTIAL_CONTENT,
                    body,
                    None,
                    Some(format!("multipart/byteranges; boundary={boundary}")),
                )
            }
            RangeRequest::Unsatisfiable => {
                let mut response =
                    self.text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
                insert(
                    &mut response.headers,
                    header::CONTENT_RANGE,
                    &format!("bytes */{}", meta.size),
                );
                response
                    .headers
                    .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                return response;
            }
        };
        let length = body.len();
        if !is_head && sender == Sender::Hyper && matches!(source, Source::File(..)) {
            let stores = Arc::clone(&self.stores);
            let path: Box<str> = path.into();
            let sha256 = meta.sha256;
            body = body.on_short_file(Box::new(move || stores.report_damaged(&path, &sha256)));
        }
        let mut response = self.with_common(settings, status, body);
        let headers = &mut response.headers;
        self.validators(settings, headers, &validators);
        match multipart_type {
            Some(value) => insert(headers, header::CONTENT_TYPE, &value),
            None => {
                headers.append_new(header::CONTENT_TYPE, HeaderValue::from_static(mime));
            }
        }
        headers.append_new(header::CONTENT_LENGTH, HeaderValue::from(length));
        if let Some(value) = content_range {
            headers.append_new(header::CONTENT_RANGE, value);
        }
        response
    }

    /// `ETag`, `Last-Modified`, `Cache-Control` and `Accept-Ranges`: sent on 200, 206 and 304.
    fn validators(
        &self,
        settings: &ViewerSettings,
        headers: &mut AnswerHeaders,
        validators: &Validators,
    ) {
        headers.append_new(header::ETAG, validators.etag.clone());
        headers.append_new(header::LAST_MODIFIED, validators.last_modified.clone());
        headers.append_new(header::CACHE_CONTROL, settings.cache_control.clone());
        headers.append_new(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }

    /// Headers every viewer response carries: `Server` and CORS.
    fn with_common(
        &self,
        settings: &ViewerSettings,
        status: StatusCode,
        body: ObjectBody,
    ) -> Answer {
        // One allocation for the dozen headers an answer carries.
        let mut response = Answer::new(status, body, RESPONSE_HEADERS);
        let headers = &mut response.headers;
        headers.append_new(header::SERVER, HeaderValue::from_static("tidecache"));
        if let Some(origin) = &settings.cors_origin {
            headers.append_new(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            // Resource Timing: without it a browser player (hls.js) sees no timings and no
            // protocol for cross-origin segments, so it cannot estimate bandwidth well.
            headers.append_new(TIMING_ALLOW_ORIGIN, origin.clone());
            headers.append_new(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(CORS_EXPOSED_HEADERS),
            );
        }
        response
    }

    /// A short plain-text answer (errors, refusals).
    fn text(&self, status: StatusCode, message: &str) -> Answer {
        let body = ObjectBody::from_bytes(Bytes::copy_from_slice(message.as_bytes()));
        let length = body.len();
        let mut response = self.with_common(&self.settings.load(), status, body);
        let headers = &mut response.headers;
        headers.append_new(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.append_new(header::CONTENT_LENGTH, HeaderValue::from(length));
        response
    }

    /// 302 to the fallback URL plus the request's path and query.
    fn redirect(&self, fallback: &str, request: &RequestHead<'_>) -> Answer {
        let path_and_query = request.path_and_query();
        let mut response = self.text(StatusCode::FOUND, "found elsewhere\n");
        insert(
            &mut response.headers,
            header::LOCATION,
            &format!("{fallback}{path_and_query}"),
        );
        response
    }

    /// [`Viewer::miss_to`], counted for popularity: a request sent to a sibling is marked so,
    /// since the sibling counts it again as a hit.
    fn counted_miss(&self, request: &RequestHead<'_>, path: &str) -> Answer {
        let (response, to_peer) = self.miss_to(request, path);
        if let Some(popularity) = &self.popularity {
            popularity.miss(path, to_peer);
        }
        response
    }

    /// A missing object: in a site, 302 to the best-ranked ready peer (unless a peer sent
    /// the request here already); else 302 to the fallback when configured, else 404. Also
    /// says whether the answer sends the viewer to a peer of the site. `path` is the
    /// request's object path, already decoded and checked.
    fn miss_to(&self, request: &RequestHead<'_>, path: &str) -> (Answer, bool) {
        if let Some(site) = &self.site {
            if !crate::site::was_redirected(request.query()) {
                // Only a path the manifest lists: a scanner's guesses are plain misses.
                let target = Some(path)
                    .filter(|path| site.may_list(path))
                    .and_then(|path| site.redirect_target(path));
                if let Some(peer) = target {
                    self.metrics.site_redirects.inc();
                    let location =
                        crate::site::redirect_location(&peer, request.path(), request.query());
                    let mut response = self.text(StatusCode::FOUND, "found elsewhere\n");
                    insert(&mut response.headers, header::LOCATION, &location);
                    return (response, true);
                }
            }
        }
        let response = match &self.settings.load().fallback_url {
            Some(fallback) => self.redirect(fallback, request),
            None => self.text(StatusCode::NOT_FOUND, "not found\n"),
        };
        (response, false)
    }

    /// The `during_fill` answer when the box is not serving, or `None` when it serves.
    fn not_serving(&self, request: &RequestHead<'_>, settings: &ViewerSettings) -> Option<Answer> {
        let state = *self.mode.borrow();
        if state.mode == Mode::Serving || settings.during_fill == DuringFill::Serve {
            return None;
        }
        match (settings.during_fill, &settings.fallback_url) {
            (DuringFill::Redirect, Some(fallback)) => Some(self.redirect(fallback, request)),
            _ => {
                let mut response = self.text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "filling; come back later\n",
                );
                let seconds = retry_after_secs(state.serving_resumes_at, self.clock.now());
                response
                    .headers
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                Some(response)
            }
        }
    }

    /// `OPTIONS`: a CORS preflight answer, or the allowed methods.
    fn options(&self, request: &RequestHead<'_>) -> Answer {
        let settings = self.settings.load();
        let mut response = self.with_common(&settings, StatusCode::NO_CONTENT, ObjectBody::empty());
        let headers = &mut response.headers;
        headers.insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        let preflight = request.has_header(&header::ORIGIN)
            && request.has_header(&header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight && settings.cors_origin.is_some() {
            headers.remove(&header::ACCESS_CONTROL_EXPOSE_HEADERS);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOWED_METHODS),
            );
            let allowed = request
                .header(&header::ACCESS_CONTROL_REQUEST_HEADERS)
                .and_then(|value| HeaderValue::from_bytes(value).ok())
                .unwrap_or(HeaderValue::from_static(CORS_ALLOWED_HEADERS));
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed);
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
        }
        response
    }
}

/// The access-log record of an answered request.
fn access_record(
    request: &RequestHead<'_>,
    response: &Answer,
    time: SystemTime,
    duration: f64,
) -> access_log::AccessRecord {
    // Not `to_str`, which gives up on any byte outside visible ASCII: the log shows every
    // User-Agent and Referer (escaped by the format), not `-` for a non-ASCII one.
    let header = |name: HeaderName| {
        request
            .header(&name)
            .map(|value| String::from_utf8_lossy(value).into_owned())
    };
    access_log::AccessRecord {
        peer: request.peer(),
        time,
        method: request.method().to_string(),
        target: request.path_and_query().to_owned(),
        version: match request.version() {
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        status: response.status.as_u16(),
        bytes: 0,
        referer: header(header::REFERER),
        user_agent: header(header::USER_AGENT),
        duration,
    }
}

/// Whole seconds until serving resumes, at least 1; a fixed value when the end is unknown.
pub fn retry_after_secs(resumes_at: Option<Timestamp>, now: Timestamp) -> u64 {
    match resumes_at {
        Some(at) => {
            let left = at.duration_since(now);
            let whole = u64::try_from(left.as_secs()).unwrap_or(0);
            (whole + u64::from(left.subsec_nanos() > 0)).max(1)
        }
        None => RETRY_AFTER_UNKNOWN_SECS,
    }
}

/// A `multipart/byteranges` body over several ranges of one file.
fn multipart(
    source: &Source,
    size: u64,
    ranges: &[ByteRange],
    mime: &str,
    boundary: &str,
) -> ObjectBody {
    let mut body = ObjectBody::empty();
    for range in ranges {
        let head = format!(
            "\r\n--{boundary}\r\nContent-Type: {mime}\r\nContent-Range: bytes {}-{}/{}\r\n\r\n",
            range.start, range.end, size
        );
        body.push_bytes(Bytes::from(head));
        source.push(&mut body, range.start, range.len());
    }
    body.push_bytes(Bytes::from(format!("\r\n--{boundary}--\r\n")));
    body
}

/// Objects up to this size are read into the page cache in large folios when a GET opens
/// them for the sendfile path; a larger one is left to the kernel's read-ahead.
const LARGE_FOLIO_OBJECT_MAX: u64 = 16 << 20;

/// Smaller answers are left to the kernel's read-ahead: a player's probe of a few bytes does
/// not read megabytes.
const LARGE_FOLIO_ANSWER_MIN: u64 = 64 << 10;

/// `Content-Range: bytes start-end/size` of a single-range answer, written without the
/// formatting machinery (one allocation, on every range request).
fn single_content_range(start: u64, end: u64, size: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    let mut value = Vec::with_capacity(6 + 3 * 20 + 2);
    value.extend_from_slice(b"bytes ");
    value.extend_from_slice(digits.format(start).as_bytes());
    value.push(b'-');
    value.extend_from_slice(digits.format(end).as_bytes());
    value.push(b'/');
    value.extend_from_slice(digits.format(size).as_bytes());
    HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        .unwrap_or_else(|_| HeaderValue::from_static("bytes */0"))
}

/// Inserts a header whose value we built; values come from validated or formatted text.
fn insert(headers: &mut AnswerHeaders, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_range_is_written_as_format_would() {
        for (start, end, size) in [
            (0, 0, 1),
            (0, 65_535, 1 << 20),
            (7, 9, 10),
            (u64::MAX - 1, u64::MAX - 1, u64::MAX),
        ] {
            assert_eq!(
                super::single_content_range(start, end, size)
                    .to_str()
                    .unwrap(),
                format!("bytes {start}-{end}/{size}")
            );
        }
    }

    use super::*;

    #[test]
    fn host_values_follow_rfc_9110() {
        for good in [
            "x",
            "box.example",
            "box.example:8080",
            "[::1]:80",
            "[fe80::1]",
            "",
            "a-b_c~d%20",
        ] {
            assert!(valid_host(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "a b", "evil@x", "x/y", "x:8o", "[::1", "x:80:80", "x?y", "x#y",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }
    #[test]
    fn content_types_follow_the_contract_table() {
        assert_eq!(
            content_type("t/master.m3u8"),
            "application/vnd.apple.mpegurl"
        );
        assert_eq!(content_type("t/manifest.mpd"), "application/dash+xml");
        assert_eq!(content_type("t/1080p/seg_1.m4s"), "video/iso.segment");
        assert_eq!(content_type("t/init.mp4"), "video/mp4");
        assert_eq!(content_type("t/seg.TS"), "video/mp2t");
        assert_eq!(content_type("t/audio.aac"), "audio/aac");
        assert_eq!(content_type("t/subs.vtt"), "text/vtt");
        assert_eq!(content_type("t/blob"), "application/octet-stream");
        assert_eq!(content_type("t.d/blob"), "application/octet-stream");
    }

    #[test]
    fn retry_after_counts_whole_seconds_up() {
        let now = Timestamp::from_second(1000).unwrap();
        let later = |millis: i64| {
            now.checked_add(jiff::SignedDuration::from_millis(millis))
                .ok()
        };
        assert_eq!(retry_after_secs(later(3500), now), 4);
        assert_eq!(retry_after_secs(later(3_600_000), now), 3600);
        assert_eq!(retry_after_secs(later(-5000), now), 1);
        assert_eq!(retry_after_secs(None, now), RETRY_AFTER_UNKNOWN_SECS);
    }
}
