//! What the [`super::Viewer`] reads of a request, whichever transport parsed it.
//!
//! hyper hands over an `http::Request`; the sendfile fast path hands over the slices httparse
//! found in the head it read. Building an `http::Request` there (a URI parsed again, a
//! header map hashed and allocated, a refcount per header value) was a fifth of the fast
//! path's user time per request, for the handful of headers a viewer answer looks at.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Version};

use super::handler::PeerAddr;

/// The parts of a request a viewer answer depends on, borrowed from wherever they were parsed.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    method: &'a Method,
    /// The path, percent-encoded as sent (`/` when the target has none).
    path: &'a str,
    query: Option<&'a str>,
    /// Path and query as sent, for redirects and the access log.
    path_and_query: &'a str,
    version: Version,
    headers: Headers<'a>,
    peer: Option<SocketAddr>,
}

/// Where a request's headers are.
#[derive(Debug, Clone, Copy)]
enum Headers<'a> {
    /// hyper's map.
    Map(&'a HeaderMap),
    /// The fast path's head, as httparse split it: names are tokens and values hold no
    /// control character but tab (httparse checks both, with the same rules as the http
    /// crate's `HeaderName` and `HeaderValue`).
    Raw(&'a [httparse::Header<'a>]),
}

/// `GET`, for heads the fast path parsed (a `static`: a `Method` is not a promotable
/// constant).
pub static GET: Method = Method::GET;
/// `HEAD`, likewise.
pub static HEAD: Method = Method::HEAD;

impl<'a> RequestHead<'a> {
    /// The head of a request hyper parsed. The client's address is the [`PeerAddr`]
    /// extension, when the transport put one there.
    pub fn of<B>(request: &'a Request<B>) -> RequestHead<'a> {
        let uri = request.uri();
        RequestHead {
            method: request.method(),
            path: uri.path(),
            query: uri.query(),
            path_and_query: uri.path_and_query().map_or("/", |value| value.as_str()),
            version: request.version(),
            headers: Headers::Map(request.headers()),
            peer: request.extensions().get::<PeerAddr>().map(|peer| peer.0),
        }
    }

    /// The head of an HTTP/1.1 request the fast path parsed, when `target` is a path (and
    /// query) the http crate would take exactly as sent: `None` for any other form (absolute,
    /// `*`), a fragment, a byte outside visible ASCII, or a byte the http crate refuses, so
    /// that hyper decides those as it always has.
    pub fn parsed(
        method: &'a Method,
        target: &'a str,
        headers: &'a [httparse::Header<'a>],
        peer: Option<SocketAddr>,
    ) -> Option<RequestHead<'a>> {
        let (path, query) = split_origin_form(target)?;
        Some(RequestHead {
            method,
            path,
            query,
            path_and_query: target,
            version: Version::HTTP_11,
            headers: Headers::Raw(headers),
            peer,
        })
    }

    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The path, percent-encoded as sent.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The query, without its `?`.
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// Path and query as sent.
    pub fn path_and_query(&self) -> &'a str {
        self.path_and_query
    }

    /// The HTTP version the request came in.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The client's address, when the transport told it.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The first value of header `name`, as `HeaderMap::get` gives it.
    pub fn header(&self, name: &HeaderName) -> Option<&'a [u8]> {
        match self.headers {
            Headers::Map(map) => map.get(name).map(HeaderValue::as_bytes),
            Headers::Raw(raw) => raw
                .iter()
                .find(|header| header.name.eq_ignore_ascii_case(name.as_str()))
                .map(|header| header.value),
        }
    }

    /// The first value of header `name` when it is all visible ASCII (or spaces and tabs),
    /// as `HeaderValue::to_str` accepts it.
    pub fn header_text(&self, name: &HeaderName) -> Option<&'a str> {
        let value = self.header(name)?;
        if value
            .iter()
            .all(|&byte| byte == b'\t' || (b' '..=b'~').contains(&byte))
        {
            std::str::from_utf8(value).ok()
        } else {
            None
        }
    }

    /// Whether the request has a header `name`.
    pub fn has_header(&self, name: &HeaderName) -> bool {
        self.header(name).is_some()
    }

    /// The only value of header `name`: `Err` when there are several, `Ok(None)` when none.
    pub fn single_header(&self, name: &HeaderName) -> Result<Option<&'a [u8]>, Several> {
        fn at_most_one<'v>(
            mut values: impl Iterator<Item = &'v [u8]>,
        ) -> Result<Option<&'v [u8]>, Several> {
            match (values.next(), values.next()) {
                (first, None) => Ok(first),
                _ => Err(Several),
            }
        }
        match self.headers {
            Headers::Map(map) => at_most_one(map.get_all(name).iter().map(HeaderValue::as_bytes)),
            Headers::Raw(raw) => at_most_one(
                raw.iter()
                    .filter(|header| header.name.eq_ignore_ascii_case(name.as_str()))
                    .map(|header| header.value),
            ),
        }
    }
}

/// A header that may appear once appeared more often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Several;

/// Path and query of an origin-form request target (RFC 9112 section 3.2.1), split at the
/// first `?`, when the http crate would parse `target` into exactly that: `None` for
/// anything it would refuse, read otherwise (a fragment, non-ASCII bytes), or that is not
/// origin form. Its byte classes are copied from `http::uri::PathAndQuery`.
fn split_origin_form(target: &str) -> Option<(&str, Option<&str>)> {
    const MAX_LEN: usize = u16::MAX as usize - 1;
    let bytes = target.as_bytes();
    if bytes.first() != Some(&b'/') || bytes.len() > MAX_LEN {
        return None;
    }
    let in_path = |byte: u8| {
        matches!(byte,
            0x21 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7A | 0x7C | 0x7E | b'"' | b'{' | b'}')
    };
    let in_query = |byte: u8| matches!(byte, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E);
    let query_at = bytes.iter().position(|&byte| byte == b'?');
    let path_end = query_at.unwrap_or(bytes.len());
    if !bytes[..path_end].iter().all(|&byte| in_path(byte)) {
        return None;
    }
    match query_at {
        None => Some((target, None)),
        Some(at) => {
            if !bytes[at + 1..].iter().all(|&byte| in_query(byte)) {
                return None;
            }
            Some((&target[..at], Some(&target[at + 1..])))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every target the fast path takes is read exactly as the http crate reads it; every
    /// one it leaves to hyper is one the http crate refuses or reads otherwise.
    #[test]
    fn origin_form_targets_split_as_the_http_crate_splits_them() {
        let mut targets: Vec<String> = [
            "/",
            "/a/b.m4s",
            "/a?",
            "/a?b=c&d",
            "/a??b",
            "/a?b?c",
            "/%41",
            "/a#f",
            "/a?b#f",
            "*",
            "http://host/a",
            "a/b",
            "",
            "/a b",
            "/a\"{}|",
            "/a<b",
            "/a`b",
            "/a^b",
            "/a\\b",
            "/a[b]",
            "/é",
            "/a?é",
            "/a?<>",
            "/a?`",
            "/a?\"",
        ]
        .iter()
        .map(|target| target.to_string())
        .collect();
        targets.extend((0u8..128).map(|byte| format!("/x{}y?q{}r", byte as char, byte as char)));
        for target in &targets {
            let ours = split_origin_form(target);
            let theirs = target.parse::<http::Uri>();
            match ours {
                Some((path, query)) => {
                    let uri = theirs.unwrap_or_else(|err| panic!("{target:?}: {err}"));
                    assert_eq!(uri.path(), path, "{target:?}");
                    assert_eq!(uri.query(), query, "{target:?}");
                    assert_eq!(
                        uri.path_and_query().map(|value| value.as_str()),
                        Some(target.as_str()),
                        "{target:?}"
                    );
                }
                None => {
                    let read_the_same = theirs.as_ref().is_ok_and(|uri| {
                        target.starts_with('/')
                            && uri.path_and_query().map(|value| value.as_str())
                                == Some(target.as_str())
                            && target.is_ascii()
                    });
                    assert!(!read_the_same, "{target:?} left to hyper needlessly");
                }
            }
        }
    }

    #[test]
    fn raw_headers_read_as_a_header_map_reads_them() {
        let raw = [
            httparse::Header {
                name: "Host",
                value: b"a",
            },
            httparse::Header {
                name: "range",
                value: b"bytes=0-1",
            },
            httparse::Header {
                name: "HOST",
                value: b"b",
            },
            httparse::Header {
                name: "user-agent",
                value: b"caf\xc3\xa9",
            },
            httparse::Header {
                name: "If-None-Match",
                value: b"\"x\",\t\"y\"",
            },
        ];
        let parsed = RequestHead::parsed(&GET, "/a?b", &raw, None).expect("origin form");
        let mut built = Request::builder().uri("/a?b");
        for header in &raw {
            built = built.header(header.name, header.value);
        }
        let built = built.body(()).expect("a valid request");
        let mapped = RequestHead::of(&built);
        assert_eq!(
            (parsed.path(), parsed.query(), parsed.path_and_query()),
            (mapped.path(), mapped.query(), mapped.path_and_query())
        );
        assert_eq!(parsed.path(), "/a");
        assert_eq!(parsed.query(), Some("b"));
        for name in [
            http::header::HOST,
            http::header::RANGE,
            http::header::USER_AGENT,
            http::header::IF_NONE_MATCH,
            http::header::IF_RANGE,
            http::header::REFERER,
        ] {
            assert_eq!(parsed.header(&name), mapped.header(&name), "{name}");
            assert_eq!(
                parsed.header_text(&name),
                mapped.header_text(&name),
                "{name}"
            );
            assert_eq!(parsed.has_header(&name), mapped.has_header(&name), "{name}");
            assert_eq!(
                parsed.single_header(&name),
                mapped.single_header(&name),
                "{name}"
            );
        }
        assert_eq!(parsed.header(&http::header::HOST), Some(&b"a"[..]));
        assert_eq!(parsed.single_header(&http::header::HOST), Err(Several));
        assert_eq!(
            parsed.single_header(&http::header::RANGE),
            Ok(Some(&b"bytes=0-1"[..]))
        );
        assert_eq!(parsed.single_header(&http::header::IF_RANGE), Ok(None));
        assert_eq!(parsed.header_text(&http::header::RANGE), Some("bytes=0-1"));
        assert_eq!(parsed.header_text(&http::header::USER_AGENT), None);
        assert!(parsed.has_header(&http::header::USER_AGENT));
        assert!(!parsed.has_header(&http::header::REFERER));
        assert_eq!(
            parsed.header_text(&http::header::IF_NONE_MATCH),
            Some("\"x\",\t\"y\"")
        );
    }
}
