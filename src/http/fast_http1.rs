//! A small HTTP/1.1 fast path beside hyper for what players send most: plain `GET` and `HEAD`.
//!
//! hyper has no sendfile path, so every body byte is copied into the socket from user
//! memory. This loop parses request heads with httparse, lets the same [`Viewer`] answer,
//! writes the head itself, and sends file-backed bodies with `sendfile(2)`: the kernel moves
//! page-cache pages to the socket without a copy through user space. Keep-alive and
//! pipelining work as with hyper. Anything else — a body, `Expect`, `Upgrade`, a malformed or
//! oversized head, an HTTP/2 preface — is handed, with every byte already read, to hyper for
//! the rest of the connection, so the fast path never has to be right about the unusual.

use std::io;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::ConnectionLimits;
use crate::serve::answer::Answer;
use crate::serve::body::{BodyPart, EndReport};
use crate::serve::request::{self, RequestHead};
use crate::serve::{Sender, Viewer};
use crate::signal::Shutdown;

/// Request headers parsed at most; a request with more goes to hyper (which answers 431).
const MAX_HEADERS: usize = 64;

/// How a connection left the fast path.
pub enum FastPathEnd {
    /// Closed (by the client, a timeout, an error, or `Connection: close`).
    Closed,
    /// Not for the fast path: hyper takes over, first replaying `buffered`.
    HandOver {
        /// Bytes read but not yet answered.
        buffered: BytesMut,
        /// The connection.
        stream: TcpStream,
    },
}

/// Serves a plain-HTTP viewer connection until it ends or needs hyper.
pub async fn serve(
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    viewer: &Viewer,
    shutdown: &Shutdown,
    limits: ConnectionLimits,
) -> FastPathEnd {
    let mut buffer = BytesMut::with_capacity(4096);
    let mut head = Vec::with_capacity(512);
    let mut awaiting = Awaiting::FirstRequest;
    // One stop wait and one timer for the connection's life, re-armed for each head: a
    // fresh pair per read registered and unregistered both every request (a lock shared by
    // every connection of every worker for the stop signal, a timer-wheel entry).
    let mut stopping = shutdown.clone();
    let mut stopped = std::pin::pin!(stopping.raised());
    // Armed for the first head's deadline (from the accept, give or take): a timer that
    // would fire later than a head's deadline is moved, one that fires sooner is not.
    let mut timer = std::pin::pin!(tokio::time::sleep_until(
        Instant::now() + limits.header_timeout
    ));
    let mut waits = HeadWaits {
        shutdown,
        stopped: stopped.as_mut(),
        timer: timer.as_mut(),
    };
    loop {
        let head_len = match read_head(&mut stream, &mut buffer, awaiting, &mut waits, limits).await
        {
            Ok(Some(head_len)) => head_len,
            Ok(None) => return FastPathEnd::Closed,
            Err(HeadTrouble::Malformed) => {
                let _ = send_all(
                    &stream,
                    &mut [BAD_REQUEST],
                    false,
                    limits.idle_timeout,
                    &mut 0,
                )
                .await;
                let _ = stream.shutdown().await;
                return FastPathEnd::Closed;
            }
            Err(HeadTrouble::CutShort | HeadTrouble::LatePreface)
                if awaiting == Awaiting::NextRequest =>
            {
                let _ = stream.shutdown().await;
                return FastPathEnd::Closed;
            }
            Err(_) => {
                return FastPathEnd::HandOver {
                    buffered: buffer,
                    stream,
                };
            }
        };
        awaiting = Awaiting::NextRequest;
        // The request's path and header values are slices of the head in `buffer`, which
        // moves past it once the answer is written.
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let peer = viewer.logs_access().then_some(peer);
        let Some((request, keep_alive)) = parse(&buffer[..head_len], &mut headers, peer) else {
            return FastPathEnd::HandOver {
                buffered: buffer,
                stream,
            };
        };
        let keep_alive = keep_alive && !waits.shutdown.is_raised();
        let answer = viewer.answer(&request, Sender::Sendfile);
        let (parts, end_report) = encode_head(answer, keep_alive, &mut head);
        // Reports what the socket took of the body when the answer is over: sent whole, cut
        // by an error, or dropped with this task at the shutdown timeout.
        let mut sent = SentBody {
            viewer,
            report: end_report,
            head_len: head.len() as u64,
            written: 0,
        };
        let result = write_response(
            &stream,
            &head,
            &parts,
            limits.idle_timeout,
            &mut sent.written,
        )
        .await;
        drop(sent);
        match result {
            Ok(()) => {}
            Err(err) => {
                if err.kind() == io::ErrorKind::UnexpectedEof {
                    // The file ended before its indexed size: changed behind our back while
                    // open. This answer is cut (the client sees the short body); the next
                    // is a miss and the next fill fetches the object again.
                    viewer.report_short_file(request.path(), header_value(&head, b"etag"));
                }
                return FastPathEnd::Closed;
            }
        }
        buffer.advance(head_len);
        if !keep_alive {
            let _ = stream.shutdown().await;
            return FastPathEnd::Closed;
        }
    }
}

/// What the socket took of one answer, counted and reported when it is dropped.
struct SentBody<'a> {
    viewer: &'a Viewer,
    report: Option<EndReport>,
    head_len: u64,
    /// Head and body bytes the socket took.
    written: u64,
}

impl Drop for SentBody<'_> {
    fn drop(&mut self) {
        let body_sent = self.written.saturating_sub(self.head_len);
        self.viewer.count_sent(body_sent);
        if let Some(report) = self.report.take() {
            report(body_sent);
        }
    }
}

/// Why a head is not the fast path's to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadTrouble {
    /// Unusual, oversized or not HTTP: hyper takes the connection over.
    HandOver,
    /// The client closed its side in the middle of a head.
    CutShort,
    /// After a served request, a head hyper would refuse: the fast path answers 400 itself.
    Malformed,
    /// After a served request, the HTTP/2 preface: it may only open a connection (RFC 9113
    /// section 3.4), so the connection is closed without an answer, as hyper closes it.
    LatePreface,
}

/// The whole client connection preface of HTTP/2 (RFC 9113 section 3.4).
const H2_CLIENT_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The answer hyper gives a request head it cannot use, for a connection the fast path
/// closes itself.
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Which request a connection waits for: the first is timed from the accept by the header
/// timeout; a later one may idle (keep-alive) until its first byte starts the header timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    FirstRequest,
    NextRequest,
}

/// What a connection waiting for a head also waits on: the daemon stopping, and its timeout.
struct HeadWaits<'a, S> {
    shutdown: &'a Shutdown,
    /// Resolves once the daemon stops; polled again only while it has not.
    stopped: std::pin::Pin<&'a mut S>,
    timer: std::pin::Pin<&'a mut tokio::time::Sleep>,
}

/// Reads until `buffer` holds a whole request head and returns its length; `Ok(None)` when
/// the connection should just close (EOF, timeout, shutdown); `Err` when hyper should take over
/// (an oversized head: hyper answers 431; an HTTP/2 preface).
async fn read_head<S: std::future::Future<Output = ()>>(
    stream: &mut (impl AsyncRead + Unpin),
    buffer: &mut BytesMut,
    awaiting: Awaiting,
    waits: &mut HeadWaits<'_, S>,
    limits: ConnectionLimits,
) -> Result<Option<usize>, HeadTrouble> {
    let first = awaiting == Awaiting::FirstRequest;
    let mut timeout = if buffer.is_empty() && !first {
        limits.idle_timeout
    } else {
        limits.header_timeout
    };
    // Worked out at the first wait, from the clock then: a head already whole in the
    // buffer (pipelining) reads no clock, and one that arrives whole reads it once.
    let mut head_deadline: Option<Instant> = None;
    let mut head_started = !buffer.is_empty() || first;
    // Reads made for this head. The timer is polled only when a read would wait, so a
    // client that keeps the socket full (blank lines after a request never grow the buffer
    // to the size limit) is held to the deadline by a look at the clock before each read
    // after the first: the first needs none, and costs a normal request nothing more.
    let mut reads = 0u32;
    loop {
        if first && buffer.starts_with(b"PRI ") {
            return Err(HeadTrouble::HandOver);
        }
        if !first && buffer.starts_with(H2_CLIENT_PREFACE) {
            // Handed to hyper, it would switch a connection that already spoke HTTP/1.1 to
            // HTTP/2; hyper itself closes. Anything else starting `PRI ` is a malformed
            // head like any other (hyper answers it 400).
            return Err(HeadTrouble::LatePreface);
        }
        if awaiting == Awaiting::NextRequest {
            // RFC 9112 section 2.2: an empty line before a request line is ignored.
            while buffer.starts_with(b"\r\n") {
                buffer.advance(2);
            }
        }
        let malformed = || {
            // After a served request, hyper answers a malformed head 400 itself; a fresh
            // hyper connection given the same bytes might not, so the fast path answers.
            if awaiting == Awaiting::NextRequest && !plausible_head(buffer) {
                HeadTrouble::Malformed
            } else {
                HeadTrouble::HandOver
            }
        };
        match scan_head(buffer) {
            HeadScan::Complete(len) if len <= limits.max_header_size => return Ok(Some(len)),
            // Oversized: hyper answers 431.
            HeadScan::Complete(_) => return Err(HeadTrouble::HandOver),
            // Not plain CRLF lines (hyper decides), or already not HTTP (a TLS hello on the
            // plain port: hyper answers 400 at once).
            HeadScan::Unusual => return Err(malformed()),
            HeadScan::Partial if buffer.len() > limits.max_header_size => {
                return Err(HeadTrouble::HandOver);
            }
            HeadScan::Partial if !buffer.is_empty() && !plausible_head(buffer) => {
                return Err(malformed());
            }
            HeadScan::Partial => {}
        }
        if waits.shutdown.is_raised() && buffer.is_empty() {
            return Ok(None);
        }
        if reads > 0 && head_deadline.is_some_and(|deadline| deadline <= Instant::now()) {
            return Ok(None);
        }
        reads = reads.saturating_add(1);
        let deadline = *head_deadline.get_or_insert_with(|| Instant::now() + timeout);
        // The connection's one timer is moved only when it would fire after the deadline.
        // Moving it costs a lock of the timer wheel; under keep-alive traffic each head's
        // deadline is later than the last, so the timer stays where it is, fires early
        // once per timeout, and is set forward then.
        if waits.timer.deadline() > deadline {
            waits.timer.as_mut().reset(deadline);
        }
        let idle = buffer.is_empty();
        let read = tokio::select! {
            biased;
            read = stream.read_buf(buffer) => read,
            // Not polled once raised (checked just above): it has resolved.
            () = waits.stopped.as_mut(), if idle => return Ok(None),
            () = waits.timer.as_mut() => {
                if deadline <= Instant::now() {
                    return Ok(None);
                }
                waits.timer.as_mut().reset(deadline);
                continue;
            }
        };
        match read {
            // The client stopped sending mid-head: a valid start is closed quietly (as hyper
            // does), anything else is hyper's.
            Ok(0) if !buffer.is_empty() => return Err(HeadTrouble::CutShort),
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {
                if !head_started {
                    // The header timeout runs from the head's first byte, if it has to
                    // be waited for at all.
                    head_started = true;
                    timeout = limits.header_timeout;
                    head_deadline = None;
                }
            }
        }
    }
}

/// How far a buffer holds a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadScan {
    /// A whole head of this many bytes, every line ended by CRLF.
    Complete(usize),
    /// No blank line yet, and nothing unusual so far.
    Partial,
    /// A bare LF, or blank lines before the request line: lenient parsers differ on these,
    /// so hyper gets them and the fast path never disagrees with it.
    Unusual,
}

/// Whether the start of a head parses so far (only asked while a head is incomplete).
fn plausible_head(buffer: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    httparse::Request::new(&mut headers).parse(buffer).is_ok()
}

/// Finds the end of the request head at the start of `buffer` (RFC 9112 section 2.2).
fn scan_head(buffer: &[u8]) -> HeadScan {
    if buffer.starts_with(b"\r") || buffer.starts_with(b"\n") {
        return HeadScan::Unusual;
    }
    let mut line_start = 0;
    for (at, _) in buffer
        .iter()
        .enumerate()
        .filter(|(_, byte)| **byte == b'\n')
    {
        if at == 0 || buffer[at - 1] != b'\r' {
            return HeadScan::Unusual;
        }
        if at - 1 == line_start {
            return HeadScan::Complete(at + 1);
        }
        line_start = at + 1;
    }
    HeadScan::Partial
}

/// The request of a plain GET or HEAD head, and whether the connection stays open; `None`
/// for anything the fast path leaves to hyper. The request borrows the head's bytes and
/// `headers`; it carries the client's address `peer` when given (the access log's).
fn parse<'h>(
    head: &'h [u8],
    headers: &'h mut [std::mem::MaybeUninit<httparse::Header<'h>>; MAX_HEADERS],
    peer: Option<std::net::SocketAddr>,
) -> Option<(RequestHead<'h>, bool)> {
    let mut parsed = httparse::Request::new(&mut []);
    if !matches!(
        parsed.parse_with_uninit_headers(head, headers),
        Ok(httparse::Status::Complete(_))
    ) {
        return None;
    }
    let method = match parsed.method? {
        "GET" => &request::GET,
        "HEAD" => &request::HEAD,
        _ => return None,
    };
    // HTTP/1.0 (keep-alive negotiated by header, answers downgraded) is hyper's.
    if parsed.version? != 1 {
        return None;
    }
    let target = parsed.path?;
    let headers: &'h [httparse::Header<'h>] = &*std::mem::take(&mut parsed.headers);
    let mut connection_close = false;
    for header in headers {
        let name = header.name;
        if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
            || (name.eq_ignore_ascii_case("content-length") && header.value != b"0")
        {
            return None;
        }
        if name.eq_ignore_ascii_case("connection") {
            // Compared in place: most players send `Connection: keep-alive` on every request.
            connection_close |= header
                .value
                .split(|&byte| byte == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    let request = RequestHead::parsed(method, target, headers, peer)?;
    Some((request, !connection_close))
}

/// Writes the response head into `out` (with `Date` and, when closing, `Connection:
/// close`), reusing its allocation, and returns the body's parts and its end report.
fn encode_head(
    answer: Answer,
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> (Vec<BodyPart>, Option<EndReport>) {
    let Answer {
        status,
        headers,
        body,
    } = answer;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    append_http_date(out);
    out.extend_from_slice(b"\r\n");
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    body.into_parts()
}

/// The value of header `name` (lower case, as `encode_head` writes names) in an encoded
/// response head; empty when absent.
fn header_value<'a>(head: &'a [u8], name: &[u8]) -> &'a [u8] {
    head.split(|&byte| byte == b'\n')
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(b": ")
                .map(|value| value.strip_suffix(b"\r").unwrap_or(value))
        })
        .unwrap_or_default()
}

/// Largest file body the head is sent with `MSG_MORE` before: 64 KiB, what one segment
/// offload carries. Up to it, corking saves a packet per answer (about 5 % of the CPU per
/// GB of 64 KiB answers, benches/compare). Past it, with BBR pacing each socket itself (no
/// fq qdisc: this VM's default), a corked head followed by sendfile stalled some answers for
/// 40-70 ms: 256 KiB ranges at 200 requests/s (benches/paced_viewers.rs) saw 3 to 8 such
/// stalls per 2,400 answers corked and 0-2 uncorked; 128 KiB, now and then; 64 KiB, never.
/// With cubic, none even corked. nginx's `tcp_nopush on` (TCP_CORK) shows the same stalls in
/// benches/compare. Past one segment the packet saved is a small share of the answer.
const CORK_BODY_MAX: u64 = 64 * 1024;

/// Slices one `sendmsg` takes at most; longer runs (many-range answers) take several.
const MAX_IOV: usize = 16;

/// Writes head and body, adding every byte the socket takes to `written` (so a cut answer
/// still counts what went out). The head and the memory parts that follow it go out in one
/// `sendmsg`, as hyper's `writev` would; file parts go by sendfile.
/// Everything but the last piece is sent with `MSG_MORE`, so the kernel packs the head and
/// the start of the file into full segments instead of a small packet of its own (what
/// nginx gets from `tcp_nopush`, without two `setsockopt` calls per response).
async fn write_response(
    stream: &TcpStream,
    head: &[u8],
    parts: &[BodyPart],
    idle: Duration,
    written: &mut u64,
) -> io::Result<()> {
    let mut run: [&[u8]; MAX_IOV] = [&[]; MAX_IOV];
    run[0] = head;
    let mut run_len = 1;
    for part in parts {
        match part {
            BodyPart::Memory(bytes) => {
                if run_len == MAX_IOV {
                    send_all(stream, &mut run[..run_len], true, idle, written).await?;
                    run_len = 0;
                }
                run[run_len] = bytes;
                run_len += 1;
            }
            BodyPart::File { file, offset, len } => {
                // MSG_MORE holds the head for the file's first bytes: one full segment for a
                // small body. Before a large one it is measured to cost, not save: corked
                // sends of megabytes took 5 times the CPU per GB of uncorked ones
                // (benches/compare, 2 MiB; nginx's tcp_nopush on against off shows the same),
                // and stalled now and then (see `CORK_BODY_MAX`).
                let more = *len <= CORK_BODY_MAX;
                send_all(stream, &mut run[..run_len], more, idle, written).await?;
                run_len = 0;
                send_file(stream, file, *offset, *len, idle, written).await?;
            }
        }
    }
    send_all(stream, &mut run[..run_len], false, idle, written).await
}

/// Sends every byte of `slices` (at most [`MAX_IOV`]), with `MSG_MORE` when `more`, adding
/// what the socket takes to `total`.
async fn send_all(
    stream: &TcpStream,
    slices: &mut [&[u8]],
    more: bool,
    idle: Duration,
    total: &mut u64,
) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendFlags, sendmsg};
    let flags = if more {
        SendFlags::MORE | SendFlags::NOSIGNAL
    } else {
        SendFlags::NOSIGNAL
    };
    let mut first = 0;
    while first < slices.len() {
        if slices[first].is_empty() {
            first += 1;
            continue;
        }
        let iov: [io::IoSlice<'_>; MAX_IOV] = std::array::from_fn(|i| {
            io::IoSlice::new(slices.get(first + i).copied().unwrap_or(&[]))
        });
        let count = slices.len() - first;
        let mut written = when_writable(stream, idle, || {
            sendmsg(
                stream,
                &iov[..count],
                &mut SendAncillaryBuffer::default(),
                flags,
            )
        })
        .await?;
        if written == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        *total += written as u64;
        while written > 0 && first < slices.len() {
            let length = slices[first].len();
            if written >= length {
                written -= length;
                first += 1;
            } else {
                slices[first] = &slices[first][written..];
                written = 0;
            }
        }
    }
    Ok(())
}

/// Runs the non-blocking socket operation `operation`, waiting (at most `idle` each time)
/// for the socket to become writable whenever it would block. No timer is set when the
/// socket takes the bytes at once, which is the common case.
async fn when_writable(
    stream: &TcpStream,
    idle: Duration,
    mut operation: impl FnMut() -> rustix::io::Result<usize>,
) -> io::Result<usize> {
    loop {
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            operation().map_err(io::Error::from)
        }) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                within(idle, stream.writable()).await?;
            }
            result => return result,
        }
    }
}

/// `sendfile(2)` of `len` bytes from `offset`, waiting for the socket as needed, adding what
/// the socket takes to `total`.
async fn send_file(
    stream: &TcpStream,
    file: &std::fs::File,
    mut offset: u64,
    mut remaining: u64,
    idle: Duration,
    total: &mut u64,
) -> io::Result<()> {
    while remaining > 0 {
        let chunk = usize::try_from(remaining.min(1 << 22)).unwrap_or(1 << 22);
        let sent = when_writable(stream, idle, || {
            rustix::fs::sendfile(stream, file, Some(&mut offset), chunk)
        })
        .await?;
        if sent == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        *total += sent as u64;
        remaining -= sent as u64;
    }
    Ok(())
}

async fn within<T>(
    idle: Duration,
    operation: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(idle, operation)
        .await
        .unwrap_or_else(|_| Err(io::Error::from(io::ErrorKind::TimedOut)))
}

/// Appends the `Date` header value, formatted once per second per thread. The second comes
/// from the coarse clock (a memory read, where the precise clock reads a counter every
/// response), which lags by up to a kernel tick: in the last [`COARSE_CLOCK_MARGIN`] of a
/// second the precise clock is read instead, so `Date` never runs a second behind (RFC 9110
/// section 6.6.1 wants it when the message is made, and `Last-Modified` must not be later).
fn append_http_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static CACHED: RefCell<(i64, String)> = const { RefCell::new((0, String::new())) };
    }
    let coarse = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    let second = if coarse.tv_nsec < 1_000_000_000 - COARSE_CLOCK_MARGIN.as_nanos() as i64 {
        coarse.tv_sec
    } else {
        rustix::time::clock_gettime(rustix::time::ClockId::Realtime).tv_sec
    };
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second || cached.1.is_empty() {
            let at = u64::try_from(second).map_or(SystemTime::UNIX_EPOCH, |second| {
                SystemTime::UNIX_EPOCH + Duration::from_secs(second)
            });
            *cached = (second, httpdate::fmt_http_date(at));
        }
        out.extend_from_slice(cached.1.as_bytes());
    })
}

/// How far the coarse clock may lag the precise one, with room: a kernel tick is 1-10 ms
/// (HZ 1000 to 100).
const COARSE_CLOCK_MARGIN: Duration = Duration::from_millis(20);

/// A connection whose first bytes were already read: hyper reads `buffered` first.
pub struct Replayed {
    buffered: BytesMut,
    stream: TcpStream,
}

impl Replayed {
    /// Wraps `stream`, replaying `buffered` before reading from it again.
    pub fn new(buffered: BytesMut, stream: TcpStream) -> Replayed {
        Replayed { buffered, stream }
    }
}

impl AsyncRead for Replayed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if !self.buffered.is_empty() {
            let take = self.buffered.len().min(buf.remaining());
            buf.put_slice(&self.buffered[..take]);
            self.buffered.advance(take);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that always has more blank lines ready, faster than any server reads them.
    struct BlankLines;

    impl AsyncRead for BlankLines {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let pairs = buf.remaining() / 2;
            buf.put_slice(&b"\r\n".repeat(pairs));
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn the_date_is_never_a_second_behind_the_precise_clock() {
        // Found by review: the coarse clock lags by up to a tick, so near a second's end its
        // second could be the one before, and `Date` earlier than a `Last-Modified` stamped
        // in the same few milliseconds.
        let until = std::time::Instant::now() + Duration::from_millis(2200);
        let mut out = Vec::new();
        while std::time::Instant::now() < until {
            let before = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            out.clear();
            append_http_date(&mut out);
            let date = httpdate::parse_http_date(std::str::from_utf8(&out).unwrap())
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert!(
                date >= before,
                "Date {date} is before the second it was made in, {before}"
            );
        }
    }

    #[test]
    fn blank_lines_that_never_stop_coming_are_cut_at_the_head_deadline() {
        // Found by review: after an answered request the fast path drops each leading CRLF,
        // so a flood of them never grows the buffer to the size limit, and the timer was
        // only polled when a read would wait: a client keeping the socket full (faster than
        // a worker drains it) held the connection, and the worker's core, as long as it
        // liked. Run on a thread of its own: without the look at the clock it never ends.
        let (done, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            let ended = runtime.block_on(async {
                let (_trigger, shutdown) = crate::signal::channel::<crate::signal::Stop>();
                let mut stopping = shutdown.clone();
                let mut stopped = std::pin::pin!(stopping.raised());
                let mut timer = std::pin::pin!(tokio::time::sleep_until(Instant::now()));
                let mut waits = HeadWaits {
                    shutdown: &shutdown,
                    stopped: stopped.as_mut(),
                    timer: timer.as_mut(),
                };
                let limits = ConnectionLimits {
                    header_timeout: Duration::from_millis(100),
                    idle_timeout: Duration::from_millis(100),
                    max_header_size: 16 * 1024,
                };
                let mut buffer = BytesMut::with_capacity(4096);
                read_head(
                    &mut BlankLines,
                    &mut buffer,
                    Awaiting::NextRequest,
                    &mut waits,
                    limits,
                )
                .await
            });
            let _ = done.send(ended);
        });
        let ended = outcome.recv_timeout(Duration::from_secs(5));
        assert_eq!(ended, Ok(Ok(None)), "cut at the deadline");
    }
}
