//! A real origin HTTP server for fill tests: serves objects from memory with `Range` support,
//! counts requests, and injects faults (404, 5xx, bodies cut mid-way, wrong bytes, a drip).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What the origin does for one path.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Serve normally.
    None,
    /// Always 404.
    NotFound,
    /// 500 for the first `n` requests, then normal.
    FailFirst(u32),
    /// For the first `n` requests, send only `bytes` bytes of the body, then drop the
    /// connection (Content-Length promises more).
    CutFirst { n: u32, bytes: usize },
    /// Serve these bytes instead of the real ones.
    WrongBody(Vec<u8>),
    /// Send the body in `chunk`-byte pieces, `pause` apart.
    Drip { chunk: usize, pause: Duration },
    /// Always 302 back to the same path.
    RedirectLoop,
    /// Never answer: the connection stays open and silent (an origin that hangs).
    Hang,
    /// For the first `n` requests, 503 with `Retry-After: seconds`; then normal.
    RetryAfter { n: u32, seconds: u64 },
}

#[derive(Debug, Default)]
struct State {
    objects: HashMap<String, (Bytes, Fault)>,
    requests: HashMap<String, Vec<Option<String>>>,
    /// Body bytes of every answer so far (what crossed the "transit").
    bytes_sent: u64,
}

/// The running origin.
#[derive(Clone)]
pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Origin {
    /// Starts an origin on 127.0.0.1:0.
    pub async fn start() -> Origin {
        Origin::start_with_tls(None).await
    }

    /// Starts an origin that speaks HTTPS with this certificate and key (PEM files).
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Origin {
        let mut config = (*tidecache::http::tls::load_tls(cert, key).expect("origin TLS")).clone();
        // This origin speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Origin::start_with_tls(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with_tls(tls: Option<tokio_rustls::TlsAcceptor>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move {
                            match answer(&state, request) {
                                Some(response) => Ok::<_, Infallible>(response),
                                None => std::future::pending().await,
                            }
                        }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Origin { addr, state }
    }

    /// Adds (or replaces) an object at `/path`.
    pub fn put(&self, path: &str, data: &[u8], fault: Fault) {
        if let Ok(mut state) = self.state.lock() {
            state
                .objects
                .insert(path.to_owned(), (Bytes::copy_from_slice(data), fault));
        }
    }

    /// Adds every object, served normally.
    pub fn put_all<P: AsRef<str>, D: AsRef<[u8]>>(&self, objects: &[(P, D)]) {
        for (path, data) in objects {
            self.put(path.as_ref(), data.as_ref(), Fault::None);
        }
    }

    /// The base URL objects are under.
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Body bytes the origin has answered with so far, all paths together.
    pub fn bytes_sent(&self) -> u64 {
        self.state.lock().map(|state| state.bytes_sent).unwrap_or(0)
    }

    /// The `Range` header of every request for `path` so far (None for whole requests).
    pub fn requests(&self, path: &str) -> Vec<Option<String>> {
        self.state
            .lock()
            .map(|state| state.requests.get(path).cloned().unwrap_or_default())
            .unwrap_or_default()
    }
}

/// The answer to `request`, or `None` to never answer.
fn answer(state: &Mutex<State>, request: Request<Incoming>) -> Option<Response<ChannelBody>> {
    let path = request.uri().path().trim_start_matches('/').to_owned();
    let path = percent_encoding::percent_decode_str(&path)
        .decode_utf8_lossy()
        .into_owned();
    let range = request
        .headers()
        .get(http::header::RANGE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let (data, fault, count) = {
        let Ok(mut state) = state.lock() else {
            return Some(status(StatusCode::INTERNAL_SERVER_ERROR));
        };
        let requests = state.requests.entry(path.clone()).or_default();
        requests.push(range.clone());
        let count = requests.len() as u32;
        match state.objects.get(&path) {
            Some((data, fault)) => (data.clone(), fault.clone(), count),
            None => return Some(status(StatusCode::NOT_FOUND)),
        }
    };
    let data = match &fault {
        Fault::NotFound => return Some(status(StatusCode::NOT_FOUND)),
        Fault::Hang => return None,
        Fault::RetryAfter { n, seconds } if count <= *n => {
            let mut response = status(StatusCode::SERVICE_UNAVAILABLE);
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, (*seconds).into());
            return Some(response);
        }
        Fault::RedirectLoop => {
            let mut response = status(StatusCode::FOUND);
            if let Ok(location) = format!("/{path}").parse() {
                response
                    .headers_mut()
                    .insert(http::header::LOCATION, location);
            }
            return Some(response);
        }
        Fault::FailFirst(n) if count <= *n => {
            return Some(status(StatusCode::INTERNAL_SERVER_ERROR));
        }
        Fault::WrongBody(bytes) => Bytes::copy_from_slice(bytes),
        _ => data,
    };
    let total = data.len();
    let start = range
        .as_deref()
        .and_then(|range| range.strip_prefix("bytes="))
        .and_then(|range| range.strip_suffix('-'))
        .and_then(|start| start.parse::<usize>().ok())
        .filter(|start| *start < total);
    let (code, body_bytes) = match start {
        Some(start) => (StatusCode::PARTIAL_CONTENT, data.slice(start..)),
        None => (StatusCode::OK, data),
    };
    let (sender, receiver) = mpsc::channel(4);
    let length = body_bytes.len();
    if let Ok(mut state) = state.lock() {
        state.bytes_sent += length as u64;
    }
    let plan = match fault {
        Fault::CutFirst { n, bytes } if count <= n => Sending::Cut(bytes.min(length)),
        Fault::Drip { chunk, pause } => Sending::Drip(chunk, pause),
        _ => Sending::Whole,
    };
    tokio::spawn(send_body(sender, body_bytes, plan));
    let mut response = Response::new(ChannelBody(receiver));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_LENGTH, length.into());
    if let Some(start) = start {
        if let Ok(value) = format!("bytes {start}-{}/{total}", total - 1).parse() {
            headers.insert(http::header::CONTENT_RANGE, value);
        }
    }
    Some(response)
}

enum Sending {
    Whole,
    Cut(usize),
    Drip(usize, Duration),
}

async fn send_body(
    sender: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    data: Bytes,
    plan: Sending,
) {
    match plan {
        Sending::Whole => {
            let _ = sender.send(Ok(Frame::data(data))).await;
        }
        Sending::Cut(bytes) => {
            let _ = sender.send(Ok(Frame::data(data.slice(..bytes)))).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = sender
                .send(Err(std::io::Error::other("origin cut the body")))
                .await;
        }
        Sending::Drip(chunk, pause) => {
            let mut at = 0;
            while at < data.len() {
                let end = (at + chunk).min(data.len());
                if sender
                    .send(Ok(Frame::data(data.slice(at..end))))
                    .await
                    .is_err()
                {
                    return;
                }
                at = end;
                tokio::time::sleep(pause).await;
            }
        }
    }
}

fn status(code: StatusCode) -> Response<ChannelBody> {
    let (_, receiver) = mpsc::channel(1);
    let mut response = Response::new(ChannelBody(receiver));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(http::header::CONTENT_LENGTH, 0.into());
    response
}

/// A response body fed from a channel, so the origin can pace, cut or fail it.
pub struct ChannelBody(mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.0.poll_recv(cx)
    }
}
