//! The site's routes on the admin listener (CONTRACT sections 5 and 7), for the other boxes
//! of the site only (the site token):
//! - `GET /v1/site/objects/<path>`: the stored bytes of an object, in any mode, so a sibling
//!   fills from this box instead of the origin. `Range: bytes=N-` resumes. 404 when not
//!   stored; 503 with `Retry-After` while this box's fill pass may still store it.
//! - `POST /v1/site/holds`: which of a list of objects (path and sha256) this box holds,
//!   and whether it holds its content (so a box that gave the object up may delete it).

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::{Admin, error, read_body};
use crate::object_path;
use crate::serve::body::ObjectBody;
use crate::site::Site;

/// The path prefix of the site's object route.
pub const OBJECTS_PREFIX: &str = "/v1/site/objects/";
/// The route that answers which objects this box holds.
pub const HOLDS_PATH: &str = "/v1/site/holds";
/// Most objects one `POST /v1/site/holds` may ask about.
pub const MAX_HOLDS_QUERY: usize = 16_384;
/// Largest `POST /v1/site/holds` body (paths of up to 1 KiB each, and their hashes).
const HOLDS_BODY_LIMIT: usize = 24 << 20;
/// What a peer waiting for this box's fill is told to wait between two asks.
const COME_BACK_SECS: u32 = 1;

/// One object a peer asks about.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldQuery {
    /// The manifest path.
    pub path: String,
    /// The manifest's sha256 of it, hex.
    pub sha256: String,
}

/// The body of `POST /v1/site/holds`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldsQuery {
    /// The objects asked about.
    pub objects: Vec<HeldQuery>,
}

/// The answer of `POST /v1/site/holds`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HoldsAnswer {
    /// Whether this box holds its content (its readiness latch): an object it holds can be
    /// given up by the box it moved from.
    pub stocked: bool,
    /// Whether this box has finished a fill pass under the site's current members (see
    /// [`crate::site::Site::is_settled`]): viewers are sent to it for its share, so a box
    /// that gave an object up to it waits for this.
    pub settled: bool,
    /// For how long it has been settled, in milliseconds.
    pub settled_for_ms: u64,
    /// The fingerprint of the members as this box sees them: a box gives an object up
    /// only to an owner that agrees with it on who owns what.
    pub members: String,
    /// For each object asked about, in order: stored with that sha256 and undamaged.
    pub held: Vec<bool>,
    /// For each object asked about, in order: not held, but this box's fill pass under way
    /// may still store it (a later owner waiting for this one goes on waiting).
    pub coming: Vec<bool>,
    /// The id of the manifest in force here: a later owner that has a newer one keeps
    /// waiting for this box to get it too.
    pub manifest_id: Option<String>,
}

impl Admin {
    /// Answers a request under `/v1/site/`.
    pub(super) async fn site_route(&self, request: Request<Incoming>) -> Response<ObjectBody> {
        let path = request.uri().path().to_owned();
        let Some(site) = self.fill.site() else {
            return error(StatusCode::NOT_FOUND, "this box is not in a site ([site])");
        };
        let is_objects = path.starts_with(OBJECTS_PREFIX);
        if !is_objects && path != HOLDS_PATH {
            return error(StatusCode::NOT_FOUND, "not found");
        }
        let allowed = if is_objects { "GET, HEAD" } else { "POST" };
        let method_allowed = if is_objects {
            request.method() == Method::GET || request.method() == Method::HEAD
        } else {
            request.method() == Method::POST
        };
        if !method_allowed {
            let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allowed));
            return response;
        }
        if !site.token().admits(request.headers()) {
            self.metrics.admin_auth_failures.inc();
            tracing::warn!(path, "site call refused: missing or wrong site token");
            let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong site token");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tidecache site\""),
            );
            return response;
        }
        if is_objects {
            self.stored_object(&request, &path[OBJECTS_PREFIX.len() - 1..])
        } else {
            self.holds(request, site).await
        }
    }

    /// `GET /v1/site/objects/<path>`.
    fn stored_object(&self, request: &Request<Incoming>, uri_path: &str) -> Response<ObjectBody> {
        let path = match object_path::from_request(uri_path) {
            Ok(path) => path,
            Err(err) => return error(StatusCode::BAD_REQUEST, &format!("bad path: {err}")),
        };
        let opened = self
            .stores
            .lookup(&path)
            .map(|meta| self.stores.open(&path, meta));
        let object = match opened {
            Some(Ok(object)) => object,
            Some(Err(err)) => {
                tracing::warn!(path = &*path, error = %err, "a stored object a peer asked for is unreadable");
                return error(StatusCode::NOT_FOUND, "not stored here");
            }
            None if self.fill.is_coming(&path) => {
                let mut response = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not stored yet: this box's fill pass may still store it",
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(COME_BACK_SECS));
                return response;
            }
            None => return error(StatusCode::NOT_FOUND, "not stored here"),
        };
        let size = object.meta.size;
        let etag = format!("\"{}\"", crate::store::hex(&object.meta.sha256));
        let from = resume_offset(request.headers().get(header::RANGE));
        let (status, offset) = match from {
            Some(offset) if offset < size => (StatusCode::PARTIAL_CONTENT, offset),
            Some(_) => {
                let mut response = error(StatusCode::RANGE_NOT_SATISFIABLE, "beyond the object");
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return response;
            }
            None => (StatusCode::OK, 0),
        };
        let mut body = ObjectBody::empty();
        if request.method() == Method::GET {
            body.push_file_range(object.file, offset, size - offset);
        }
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size - offset));
        if let Ok(value) = HeaderValue::from_str(&etag) {
            headers.insert(header::ETAG, value);
        }
        if status == StatusCode::PARTIAL_CONTENT {
            if let Ok(value) = HeaderValue::from_str(&format!("bytes {offset}-{}/{size}", size - 1))
            {
                headers.insert(header::CONTENT_RANGE, value);
            }
        }
        response
    }

    /// `POST /v1/site/holds`.
    async fn holds(&self, request: Request<Incoming>, site: &Site) -> Response<ObjectBody> {
        let body_timeout = self.settings.load().body_timeout;
        let body = match read_body(
            request.into_body(),
            HOLDS_BODY_LIMIT,
            "body",
            body_timeout.max(Duration::from_secs(1)),
        )
        .await
        {
            Ok(body) => body,
            Err((status, message)) => return error(status, &message),
        };
        let query = match serde_json::from_slice::<HoldsQuery>(&body) {
            Ok(query) => query,
            Err(err) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("expected {{\"objects\": [{{\"path\", \"sha256\"}}]}}: {err}"),
                );
            }
        };
        if query.objects.len() > MAX_HOLDS_QUERY {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("at most {MAX_HOLDS_QUERY} objects per request"),
            );
        }
        let held: Vec<bool> = query
            .objects
            .iter()
            .map(|object| {
                let sha256 = crate::store::unhex(&object.sha256);
                self.stores
                    .lookup(&object.path)
                    .is_some_and(|meta| sha256.as_deref() == Some(&meta.sha256[..]))
            })
            .collect();
        let coming = query
            .objects
            .iter()
            .zip(&held)
            .map(|(object, held)| !held && self.fill.is_coming(&object.path))
            .collect();
        let standing = site.standing();
        super::json(
            StatusCode::OK,
            &HoldsAnswer {
                stocked: self.fill.stocked().is_set(),
                settled: standing.settled,
                settled_for_ms: u64::try_from(site.settled_for().as_millis()).unwrap_or(u64::MAX),
                members: standing.members,
                held,
                coming,
                manifest_id: self.fill.manifest().map(|accepted| accepted.id.clone()),
            },
        )
    }
}

/// The offset of a resume request, `Range: bytes=N-`; any other form is read as the whole
/// object (peers only ever send this one).
fn resume_offset(range: Option<&HeaderValue>) -> Option<u64> {
    range?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_open_ended_range_resumes() {
        let offset = |value: &str| resume_offset(Some(&HeaderValue::from_str(value).unwrap()));
        assert_eq!(offset("bytes=100-"), Some(100));
        assert_eq!(offset("bytes=0-"), Some(0));
        assert_eq!(offset("bytes=1-2"), None);
        assert_eq!(offset("bytes=-5"), None);
        assert_eq!(offset("items=1-"), None);
        assert_eq!(resume_offset(None), None);
    }
}
