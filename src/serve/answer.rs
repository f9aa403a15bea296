//! A viewer's answer before a transport writes it.
//!
//! An answer carries a dozen headers at most, each set once. A list scanned by name costs
//! less than `http::HeaderMap`'s hashing, index table and bucket vector, which the sendfile
//! fast path paid on every request only to walk the map again to write the head. hyper
//! gets an `http::Response` built from the list ([`Answer::into_response`]).

use http::{HeaderName, HeaderValue, Response, StatusCode};

use super::body::ObjectBody;

/// Status, headers in the order they were set, and body.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: StatusCode,
    /// The headers (no `Date`: the transport adds it as it writes).
    pub headers: AnswerHeaders,
    /// The body; a HEAD answer's is empty, its `Content-Length` that of the GET.
    pub body: ObjectBody,
}

/// Headers of one answer, each name at most once.
#[derive(Debug, Default)]
pub struct AnswerHeaders(Vec<(HeaderName, HeaderValue)>);

impl Answer {
    /// An answer of `status` with `body`, room made for `headers` headers.
    pub fn new(status: StatusCode, body: ObjectBody, headers: usize) -> Answer {
        Answer {
            status,
            headers: AnswerHeaders(Vec::with_capacity(headers)),
            body,
        }
    }

    /// The answer as hyper writes it.
    pub fn into_response(self) -> Response<ObjectBody> {
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        let map = response.headers_mut();
        map.reserve(self.headers.0.len());
        for (name, value) in self.headers.0 {
            // Each name is in the list once, so appending never makes a second value.
            map.append(name, value);
        }
        response
    }
}

impl AnswerHeaders {
    /// Sets header `name` to `value`, replacing a value set before.
    pub fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        match self.0.iter_mut().find(|(known, _)| *known == name) {
            Some((_, old)) => *old = value,
            None => self.0.push((name, value)),
        }
    }

    /// Adds header `name`, which the caller knows is not set yet (the headers every object
    /// answer carries, each set once): no scan of those set before.
    pub fn append_new(&mut self, name: HeaderName, value: HeaderValue) {
        debug_assert!(self.get(&name).is_none(), "{name} set twice");
        self.0.push((name, value));
    }

    /// Removes header `name`, if set.
    pub fn remove(&mut self, name: &HeaderName) {
        self.0.retain(|(known, _)| known != name);
    }

    /// The value of header `name`, if set.
    pub fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.0
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, value)| value)
    }

    /// Every header, in the order first set.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.0.iter().map(|(name, value)| (name, value))
    }

    /// How many headers are set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no header is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn a_header_set_twice_keeps_its_place_and_its_last_value_and_hyper_gets_the_same() {
        let mut answer = Answer::new(StatusCode::OK, ObjectBody::empty(), 2);
        answer
            .headers
            .insert(header::SERVER, HeaderValue::from_static("a"));
        answer
            .headers
            .insert(header::ETAG, HeaderValue::from_static("\"1\""));
        answer
            .headers
            .insert(header::SERVER, HeaderValue::from_static("b"));
        let names: Vec<_> = answer
            .headers
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        assert_eq!(names, [header::SERVER, header::ETAG]);
        assert_eq!(answer.headers.get(&header::SERVER).unwrap(), "b");
        answer.headers.remove(&header::ETAG);
        assert_eq!(answer.headers.len(), 1);
        let response = answer.into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers().len(), 1);
        assert_eq!(response.headers()[header::SERVER], "b");
    }
}
