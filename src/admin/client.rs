//! The client side of the admin API, for the commands an operator or an origin runs
//! (`tidecache mode`, later `status` and `manifest push`).
//!
//! The admin listener speaks plain HTTP on a management address, so this is one HTTP/1.1
//! exchange over TCP per call, bounded in time, with errors worded for the person at the
//! terminal.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long one admin call may take, connection included (a large manifest push must fit).
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The admin URL is not an `http://host:port` URL.
    #[error("admin URL {url:?}: {reason}")]
    BadUrl {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The daemon could not be reached.
    #[error("cannot reach the admin listener at {url}: {reason}")]
    Unreachable {
        /// Where we tried.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The daemon answered with an error.
    #[error("{url} answered {status}: {message}")]
    Refused {
        /// The URL called.
        url: String,
        /// The status code.
        status: StatusCode,
        /// The `error` field of the JSON answer, or its text.
        message: String,
    },
}

/// A connection target and credentials for the admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    authority: String,
    token: Option<String>,
}

impl AdminClient {
    /// A client for the admin listener at `url` (e.g. `http://127.0.0.1:8081`).
    pub fn new(url: &str, token: Option<String>) -> Result<AdminClient, ClientError> {
        let bad = |reason| ClientError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => {
                return Err(bad(
                    "the admin listener speaks plain HTTP; use http:// (over loopback or a management network)",
                ));
            }
            None => return Err(bad("give the scheme, e.g. http://127.0.0.1:8081")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad("no host"))?
            .as_str()
            .to_owned();
        let authority = if uri.port_u16().is_some() {
            authority
        } else {
            format!("{authority}:80")
        };
        Ok(AdminClient {
            base: url.trim_end_matches('/').to_owned(),
            authority,
            token,
        })
    }

    /// `GET path`, returning the body of a 2xx answer.
    pub async fn get(&self, path: &str) -> Result<Bytes, ClientError> {
        self.call(Method::GET, path, None, &[]).await
    }

    /// `POST path` with a JSON body, returning the body of a 2xx answer.
    pub async fn post_json(&self, path: &str, body: Bytes) -> Result<Bytes, ClientError> {
        self.call(Method::POST, path, Some(body), &[]).await
    }

    /// `PUT path` with a JSON body and extra headers (a manifest and its signature).
    pub async fn put_json(
        &self,
        path: &str,
        body: Bytes,
        headers: &[(&'static str, String)],
    ) -> Result<Bytes, ClientError> {
        self.call(Method::PUT, path, Some(body), headers).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        headers: &[(&'static str, String)],
    ) -> Result<Bytes, ClientError> {
        let url = format!("{}{path}", self.base);
        match tokio::time::timeout(CALL_TIMEOUT, self.exchange(method, path, body, headers)).await {
            Ok(Ok((status, bytes))) if status.is_success() => Ok(bytes),
            Ok(Ok((status, bytes))) => Err(ClientError::Refused {
                url,
                status,
                message: error_message(&bytes),
            }),
            Ok(Err(reason)) => Err(ClientError::Unreachable { url, reason }),
            Err(_) => Err(ClientError::Unreachable {
                url,
                reason: format!("no answer within {CALL_TIMEOUT:?}"),
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        headers: &[(&'static str, String)],
    ) -> Result<(StatusCode, Bytes), String> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|err| err.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| err.to_string())?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority)
            .header(
                http::header::USER_AGENT,
                concat!("tidecache/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|err| err.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| err.to_string())?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|err| err.to_string())?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// The `error` field of a JSON error answer, else the answer's text.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value.get("error")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_must_be_plain_http_with_a_host() {
        assert!(AdminClient::new("http://127.0.0.1:8081", None).is_ok());
        assert!(AdminClient::new("http://127.0.0.1:8081/", None).is_ok());
        assert!(AdminClient::new("https://127.0.0.1:8081", None).is_err());
        assert!(AdminClient::new("127.0.0.1:8081", None).is_err());
        let default_port = AdminClient::new("http://admin.example", None).unwrap();
        assert_eq!(default_port.authority, "admin.example:80");
    }

    #[test]
    fn error_messages_come_from_the_json_error_field() {
        assert_eq!(
            error_message(br#"{"error": "wrong bearer token"}"#),
            "wrong bearer token"
        );
        assert_eq!(error_message(b"not found\n"), "not found");
    }
}
