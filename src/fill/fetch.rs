//! Getting an object's bytes from its source: HTTP(S) with hyper's client over rustls, or a
//! local file. A download can start at an offset (to resume a partial file); the caller
//! learns whether the source honoured it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::file_roots::{FileRoots, OpenError};
use super::manifest::Source;

/// Redirects followed before giving up (a loop, or an origin misconfigured).
const MAX_REDIRECTS: usize = 5;
/// Longest wait for a response head (across every redirect hop together) or for the next
/// piece of a body before the attempt is abandoned and retried.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a pull of `fill.manifest_url` may take, head and body together: an origin that
/// drips its manifest cannot hold the fill (or a shutdown) hostage.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a peer box's response head: a box of the site answers from its own
/// disk, and one that does not is passed over for the next source.
const PEER_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause a `Retry-After` is obeyed for; beyond it the origin's wish is capped (the
/// window's end or a shutdown cut any pause short anyway).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// Most bytes one read of an origin's socket takes. A receive copies in the kernel, where
/// this VM's kernel (preempt=none) cannot preempt it for a viewer's worker however low the
/// fill's priority: hyper's default grows its reads to ~400 KiB, 40-100 us held at a time.
const FILL_READ_MAX: usize = 64 * 1024;
/// Chunk size for file sources.
const FILE_CHUNK: usize = 1 << 20;

/// Why a download attempt failed, and whether trying again may help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    /// What went wrong, for the report and the log.
    pub message: String,
    /// Connection trouble, a stall, a 5xx, a 429: worth another attempt. A 4xx is not.
    pub retryable: bool,
    /// How long the origin asked to be left alone (`Retry-After` on a 429 or 503), capped
    /// at [`MAX_RETRY_AFTER`].
    pub retry_after: Option<Duration>,
    /// The HTTP status that ended the attempt, when one did (a peer's 404 and 503 mean
    /// "not here" and "not yet").
    pub status: Option<StatusCode>,
}

impl FetchError {
    /// A failure worth another attempt.
    pub fn retry(message: impl Into<String>) -> FetchError {
        FetchError {
            message: message.into(),
            retryable: true,
            retry_after: None,
            status: None,
        }
    }

    /// A failure another attempt would repeat.
    pub fn permanent(message: impl Into<String>) -> FetchError {
        FetchError {
            message: message.into(),
            retryable: false,
            retry_after: None,
            status: None,
        }
    }
}

/// A `Retry-After` value (delay-seconds or an HTTP-date, RFC 9110 section 10.2.3) as a
/// pause from `now`, capped at [`MAX_RETRY_AFTER`]; `None` when absent or unreadable.
pub fn retry_after(value: Option<&str>, now: std::time::SystemTime) -> Option<Duration> {
    let value = value?.trim();
    let pause = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(pause.min(MAX_RETRY_AFTER))
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ClientSetupError {
    path: String,
    reason: String,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Downloads objects. One per fill engine; connections are pooled per origin.
#[derive(Clone)]
pub struct Fetcher {
    client: HttpsClient,
}

impl Fetcher {
    /// A fetcher trusting the system's roots (or webpki's when the system has none), plus
    /// `ca_file` when given (an origin with a private CA).
    pub fn new(ca_file: Option<&Path>) -> Result<Fetcher, ClientSetupError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if let Some(path) = ca_file {
            use rustls_pki_types::CertificateDer;
            use rustls_pki_types::pem::PemObject;
            let error = |reason: String| ClientSetupError {
                path: path.display().to_string(),
                reason,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|err| error(crate::config::key_file::describe_pem_error(&err)))?;
            if certs.is_empty() {
                return Err(error("no certificate in the file".to_owned()));
            }
            for cert in certs {
                roots.add(cert).map_err(|err| error(err.to_string()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| ClientSetupError {
                path: "(TLS client)".to_owned(),
                reason: err.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .http1_max_buf_size(FILL_READ_MAX)
            .build(connector);
        Ok(Fetcher { client })
    }

    /// A conditional GET of a small document (the pulled manifest): `None` when the origin
    /// says it has not changed since `etag`; otherwise the body (at most `limit` bytes) and
    /// its new ETag.
    pub async fn get_if_changed(
        &self,
        url: &str,
        etag: Option<&str>,
        limit: usize,
    ) -> Result<Option<(Bytes, Option<String>)>, FetchError> {
        tokio::time::timeout(PULL_TIMEOUT, self.pull(url, etag, limit))
            .await
            .map_err(|_| {
                FetchError::retry(format!("{url}: not pulled whole in {PULL_TIMEOUT:?}"))
            })?
    }

    async fn pull(
        &self,
        url: &str,
        etag: Option<&str>,
        limit: usize,
    ) -> Result<Option<(Bytes, Option<String>)>, FetchError> {
        let mut request = Request::get(url).header(
            header::USER_AGENT,
            concat!("tidecache/", env!("CARGO_PKG_VERSION")),
        );
        if let Some(etag) = etag {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        let request = request
            .body(Full::default())
            .map_err(|err| FetchError::permanent(format!("{url}: {err}")))?;
        let response = tokio::time::timeout(STALL_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| FetchError::retry(format!("{url}: no response in {STALL_TIMEOUT:?}")))?
            .map_err(|err| FetchError::retry(format!("{url}: {}", error_chain(&err))))?;
        match response.status() {
            StatusCode::NOT_MODIFIED => Ok(None),
            StatusCode::OK => {
                let new_etag = response
                    .headers()
                    .get(header::ETAG)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                let body = http_body_util::Limited::new(response.into_body(), limit)
                    .collect()
                    .await
                    .map_err(|err| FetchError::retry(format!("{url}: {err}")))?
                    .to_bytes();
                Ok(Some((body, new_etag)))
            }
            status => Err(FetchError::retry(format!("{url}: {status}"))),
        }
    }

    /// Starts downloading `source` from byte `offset`; a file source must lie in `roots`.
    pub async fn open(
        &self,
        source: &Source,
        offset: u64,
        roots: &Arc<FileRoots>,
    ) -> Result<Download, FetchError> {
        match source {
            Source::File(path) => open_file(path, offset, Arc::clone(roots)).await,
            Source::Http(url) => self.open_http(url, offset, None).await,
        }
    }

    /// Starts downloading from a peer box of the site (`GET` with the site's bearer token),
    /// from byte `offset`.
    pub async fn open_peer(
        &self,
        url: &str,
        bearer: &str,
        offset: u64,
    ) -> Result<Download, FetchError> {
        self.open_http(url, offset, Some(bearer)).await
    }

    /// POSTs a JSON `body` to a peer box of the site and returns its 200 answer's body (at
    /// most `limit` bytes), within `timeout`.
    pub async fn post_peer(
        &self,
        url: &str,
        bearer: &str,
        body: Vec<u8>,
        limit: usize,
        timeout: Duration,
    ) -> Result<Bytes, FetchError> {
        let exchange = async {
            let request = Request::post(url)
                .header(
                    header::USER_AGENT,
                    concat!("tidecache/", env!("CARGO_PKG_VERSION")),
                )
                .header(header::AUTHORIZATION, bearer)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|err| FetchError::permanent(format!("{url}: {err}")))?;
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| FetchError::retry(format!("{url}: {}", error_chain(&err))))?;
            let status = response.status();
            if status != StatusCode::OK {
                let mut error = FetchError::retry(format!("{url}: {status}"));
                error.status = Some(status);
                return Err(error);
            }
            http_body_util::Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .map_err(|err| FetchError::retry(format!("{url}: {err}")))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| FetchError::retry(format!("{url}: no answer in {timeout:?}")))?
    }

    async fn open_http(
        &self,
        url: &str,
        offset: u64,
        bearer: Option<&str>,
    ) -> Result<Download, FetchError> {
        let mut target: Uri = url
            .parse()
            .map_err(|_| FetchError::permanent(format!("{url}: not a valid URL")))?;
        // One deadline for the head, whatever the redirects: a chain of slow hops is one stall.
        let head_timeout = if bearer.is_some() {
            PEER_HEAD_TIMEOUT
        } else {
            STALL_TIMEOUT
        };
        let deadline = tokio::time::Instant::now() + head_timeout;
        for _ in 0..=MAX_REDIRECTS {
            let mut request = Request::get(target.clone()).header(
                header::USER_AGENT,
                concat!("tidecache/", env!("CARGO_PKG_VERSION")),
            );
            if offset > 0 {
                request = request.header(header::RANGE, format!("bytes={offset}-"));
            }
            if let Some(bearer) = bearer {
                request = request.header(header::AUTHORIZATION, bearer);
            }
            let request = request
                .body(Full::default())
                .map_err(|err| FetchError::permanent(format!("{target}: {err}")))?;
            let response = tokio::time::timeout_at(deadline, self.client.request(request))
                .await
                .map_err(|_| {
                    FetchError::retry(format!("{target}: no response in {head_timeout:?}"))
                })?
                .map_err(|err| FetchError::retry(format!("{target}: {}", error_chain(&err))))?;
            let status = response.status();
            if status.is_redirection() && bearer.is_some() {
                // The site token goes to the configured admin address only, never where a
                // peer (or whatever answers at its address) points.
                let mut error = FetchError::permanent(format!(
                    "{target}: {status}: a peer's redirect is not followed with the site token"
                ));
                error.status = Some(status);
                return Err(error);
            }
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|value| value.to_str().ok())
                    .ok_or_else(|| {
                        FetchError::permanent(format!("{target}: {status} without Location"))
                    })?;
                target = resolve(&target, location).ok_or_else(|| {
                    FetchError::permanent(format!("{target}: bad Location {location:?}"))
                })?;
                continue;
            }
            return match status {
                StatusCode::OK => Ok(Download::http(response.into_body(), false)),
                StatusCode::PARTIAL_CONTENT if offset > 0 => {
                    let starts_at_offset = response
                        .headers()
                        .get(header::CONTENT_RANGE)
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.strip_prefix("bytes "))
                        .and_then(|value| value.split('-').next())
                        .and_then(|start| start.parse::<u64>().ok())
                        == Some(offset);
                    if starts_at_offset {
                        Ok(Download::http(response.into_body(), true))
                    } else {
                        Err(FetchError::retry(format!(
                            "{target}: 206 for another range than asked; starting over"
                        )))
                    }
                }
                StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => Err(FetchError::retry(format!(
                    "{target}: 416 for the resume offset; starting over"
                ))),
                status if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
                    let mut error = FetchError::retry(format!("{target}: {status}"));
                    error.status = Some(status);
                    if matches!(
                        status,
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                    ) {
                        error.retry_after = retry_after(
                            response
                                .headers()
                                .get(header::RETRY_AFTER)
                                .and_then(|value| value.to_str().ok()),
                            std::time::SystemTime::now(),
                        );
                    }
                    Err(error)
                }
                status => {
                    let mut error = FetchError::permanent(format!("{target}: {status}"));
                    error.status = Some(status);
                    Err(error)
                }
            };
        }
        Err(FetchError::permanent(format!(
            "{url}: more than {MAX_REDIRECTS} redirects"
        )))
    }
}

/// A download in progress.
pub struct Download {
    /// Whether the bytes start at the offset asked for (else they start at 0).
    pub resumed: bool,
    body: DownloadBody,
}

enum DownloadBody {
    Http(Incoming),
    File(tokio::fs::File),
}

impl Download {
    fn http(body: Incoming, resumed: bool) -> Download {
        Download {
            resumed,
            body: DownloadBody::Http(body),
        }
    }

    /// The next piece of the body, `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, FetchError> {
        match &mut self.body {
            DownloadBody::Http(body) => loop {
                let frame = tokio::time::timeout(STALL_TIMEOUT, body.frame())
                    .await
                    .map_err(|_| {
                        FetchError::retry(format!("body stalled for {STALL_TIMEOUT:?}"))
                    })?;
                match frame {
                    None => return Ok(None),
                    Some(Err(err)) => {
                        return Err(FetchError::retry(format!(
                            "body cut: {}",
                            error_chain(&err)
                        )));
                    }
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            if !data.is_empty() {
                                return Ok(Some(data));
                            }
                        }
                    }
                }
            },
            DownloadBody::File(file) => {
                let mut buffer = vec![0u8; FILE_CHUNK];
                let read = file
                    .read(&mut buffer)
                    .await
                    .map_err(|err| FetchError::retry(format!("read: {err}")))?;
                if read == 0 {
                    return Ok(None);
                }
                buffer.truncate(read);
                Ok(Some(Bytes::from(buffer)))
            }
        }
    }
}

async fn open_file(
    path: &Path,
    offset: u64,
    roots: Arc<FileRoots>,
) -> Result<Download, FetchError> {
    let owned = path.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || roots.open(&owned))
        .await
        .map_err(|err| FetchError::retry(format!("{}: {err}", path.display())))?;
    let file = opened.map_err(|err| {
        let message = format!("{}: {err}", path.display());
        match err {
            OpenError::Outside(outside) => FetchError::permanent(outside.to_string()),
            OpenError::NotRegular => FetchError::permanent(message),
            OpenError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                FetchError::permanent(message)
            }
            OpenError::Io(_) => FetchError::retry(message),
        }
    })?;
    let mut file = tokio::fs::File::from_std(file);
    if offset > 0 {
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|err| FetchError::retry(format!("{}: {err}", path.display())))?;
    }
    Ok(Download {
        resumed: true,
        body: DownloadBody::File(file),
    })
}

/// Resolves a `Location` against the URL that answered with it.
fn resolve(base: &Uri, location: &str) -> Option<Uri> {
    if location.contains("://") {
        return location.parse().ok();
    }
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}").parse().ok();
    }
    let base_path = base.path();
    let directory = &base_path[..base_path.rfind('/').map_or(0, |at| at + 1)];
    format!("{scheme}://{authority}{directory}{location}")
        .parse()
        .ok()
}

/// An error and its sources on one line (hyper's errors say little at the top).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            retry_after(Some("120"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(retry_after(Some(" 0 "), now), Some(Duration::ZERO));
        assert_eq!(retry_after(Some("86400"), now), Some(MAX_RETRY_AFTER));
        let in_ninety = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            retry_after(Some(&in_ninety), now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(retry_after(Some(&past), now), Some(Duration::ZERO));
        assert_eq!(retry_after(Some("soon"), now), None);
        assert_eq!(retry_after(Some("-5"), now), None);
        assert_eq!(retry_after(None, now), None);
    }

    #[test]
    fn locations_resolve_absolute_rooted_and_relative() {
        let base: Uri = "http://origin.example/a/b/seg.ts".parse().unwrap();
        assert_eq!(
            resolve(&base, "https://cdn.example/x.ts")
                .unwrap()
                .to_string(),
            "https://cdn.example/x.ts"
        );
        assert_eq!(
            resolve(&base, "/c/x.ts").unwrap().to_string(),
            "http://origin.example/c/x.ts"
        );
        assert_eq!(
            resolve(&base, "x.ts").unwrap().to_string(),
            "http://origin.example/a/b/x.ts"
        );
    }
}
