//! The HTTP/1 fast path against hyper, differentially: the same request bytes sent to a box
//! answering plain GET/HEAD on the sendfile fast path and to one where hyper answers
//! everything must give the same number of answers, with the same status codes, framing
//! (Content-Length) and bodies. The corpus holds what well-behaved players send and what
//! they do not: pipelining, HEAD errors, lenient line endings, oversized heads, HTTP/1.0,
//! Host problems and request-smuggling shapes.

mod common;

use std::net::SocketAddr;

use common::*;

/// An object every case can ask for.
const OBJECT: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// One case: its name, the bytes sent on one connection (then half-closed), and the method
/// of each request in it, in order (a HEAD answer has no body, whatever its Content-Length).
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    methods: &'static [&'static str],
}

fn case(name: &'static str, bytes: impl AsRef<[u8]>, methods: &'static [&'static str]) -> Case {
    Case {
        name,
        bytes: bytes.as_ref().to_vec(),
        methods,
    }
}

fn corpus() -> Vec<Case> {
    let get = "GET /a.ts HTTP/1.1\r\nHost: x\r\n\r\n";
    let big_header = |bytes: usize| {
        format!(
            "GET /a.ts HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n{get}",
            "f".repeat(bytes)
        )
    };
    vec![
        case("plain GET", get, &["GET"]),
        case(
            "three pipelined GETs",
            get.repeat(3),
            &["GET", "GET", "GET"],
        ),
        case(
            "HEAD of an object, then GET",
            format!("HEAD /a.ts HTTP/1.1\r\nHost: x\r\n\r\n{get}"),
            &["HEAD", "GET"],
        ),
        case(
            "HEAD 404, then GET",
            format!("HEAD /missing.ts HTTP/1.1\r\nHost: x\r\n\r\n{get}"),
            &["HEAD", "GET"],
        ),
        case(
            "HEAD 400 (bad path), then GET",
            format!("HEAD /a/../b.ts HTTP/1.1\r\nHost: x\r\n\r\n{get}"),
            &["HEAD", "GET"],
        ),
        case(
            "HEAD 412, then GET",
            format!("HEAD /a.ts HTTP/1.1\r\nHost: x\r\nIf-Match: \"nope\"\r\n\r\n{get}"),
            &["HEAD", "GET"],
        ),
        case(
            "HEAD 416, then GET",
            format!("HEAD /a.ts HTTP/1.1\r\nHost: x\r\nRange: bytes=9999-\r\n\r\n{get}"),
            &["HEAD", "GET"],
        ),
        case(
            "HEAD 304, then GET",
            format!(
                "HEAD /a.ts HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"{}\"\r\n\r\n{get}",
                sha256_hex(OBJECT)
            ),
            &["HEAD", "GET"],
        ),
        case(
            "a head ending CRLF LF, then GET",
            format!("GET /a.ts HTTP/1.1\r\nHost: x\r\n\n{get}"),
            &["GET", "GET"],
        ),
        case(
            "bare LF line endings",
            "GET /a.ts HTTP/1.1\nHost: x\n\n",
            &["GET"],
        ),
        case(
            "a blank line before the request",
            format!("\r\n{get}"),
            &["GET"],
        ),
        case(
            "a 12 KB head (under the 16 KiB limit)",
            big_header(12_000),
            &["GET", "GET"],
        ),
        case("a 20 KB head", big_header(20_000), &["GET", "GET"]),
        case("a 31 KB head", big_header(31_000), &["GET", "GET"]),
        case("a 40 KB head", big_header(40_000), &["GET", "GET"]),
        case(
            "HTTP/1.0 with keep-alive, then GET",
            format!("GET /a.ts HTTP/1.0\r\nConnection: keep-alive\r\n\r\n{get}"),
            &["GET", "GET"],
        ),
        case(
            "HTTP/1.0 without keep-alive",
            "GET /a.ts HTTP/1.0\r\n\r\n",
            &["GET"],
        ),
        case(
            "HTTP/1.1 without Host",
            "GET /a.ts HTTP/1.1\r\n\r\n",
            &["GET"],
        ),
        case(
            "HTTP/1.1 with two Hosts",
            "GET /a.ts HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            &["GET"],
        ),
        case(
            "HTTP/1.1 with an invalid Host",
            "GET /a.ts HTTP/1.1\r\nHost: a b/c\r\n\r\n",
            &["GET"],
        ),
        case(
            "HTTP/1.1 with userinfo in Host",
            "GET /a.ts HTTP/1.1\r\nHost: evil@x\r\n\r\n",
            &["GET"],
        ),
        case(
            "HTTP/1.1 with an empty Host",
            "GET /a.ts HTTP/1.1\r\nHost:\r\n\r\n",
            &["GET"],
        ),
        case(
            "a range",
            "GET /a.ts HTTP/1.1\r\nHost: x\r\nRange: bytes=2-5\r\n\r\n",
            &["GET"],
        ),
        case(
            "GET with a Content-Length body, then GET",
            format!("GET /a.ts HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello{get}"),
            &["GET", "GET"],
        ),
        case(
            "Content-Length and Transfer-Encoding together",
            format!(
                "GET /a.ts HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{get}"
            ),
            &["GET", "GET"],
        ),
        case(
            "two Content-Lengths",
            format!(
                "GET /a.ts HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello{get}"
            ),
            &["GET", "GET"],
        ),
        case(
            "a folded header line",
            format!("GET /a.ts HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n{get}"),
            &["GET", "GET"],
        ),
        case(
            "a lower-case method",
            "get /a.ts HTTP/1.1\r\nHost: x\r\n\r\n",
            &["GET"],
        ),
        case(
            "an absolute-form target",
            "GET http://x/a.ts HTTP/1.1\r\nHost: x\r\n\r\n",
            &["GET"],
        ),
        case(
            "Connection: close in the middle of a pipeline",
            format!("{get}GET /a.ts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n{get}"),
            &["GET", "GET", "GET"],
        ),
        case(
            "Expect: 100-continue on a GET",
            "GET /a.ts HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            &["GET"],
        ),
        case(
            "a space before the colon",
            "GET /a.ts HTTP/1.1\r\nHost : x\r\n\r\n",
            &["GET"],
        ),
        case("a request line only", "GET /a.ts HTTP/1.1\r\n", &["GET"]),
        case(
            "the HTTP/2 preface after a request",
            format!("{get}PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            &["GET"],
        ),
        case("garbage", "\x16\x03\x01\x02\x00\x01\x00", &["GET"]),
    ]
}

/// One answer as the comparison sees it.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    content_length: Option<usize>,
    /// Every header line but `date` and `last-modified` (the two answers, and the two
    /// boxes' seeding, may straddle a second) and `connection` (hyper adds `close` when it
    /// already read the client's EOF, which depends on timing), lower-cased and sorted.
    headers: Vec<String>,
    body: Vec<u8>,
}

/// Splits a connection's response bytes into answers, framing each by the request it
/// answers (`methods`) and its Content-Length, as a client would; the rest, if any, is
/// returned as left over.
fn split_answers(mut bytes: &[u8], methods: &[&str]) -> (Vec<Answer>, Vec<u8>) {
    let mut answers = Vec::new();
    let mut methods = methods.iter();
    while let Some(end) = bytes.windows(4).position(|window| window == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let content_length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse::<usize>().ok());
        let mut headers: Vec<String> = head
            .lines()
            .skip(1)
            .filter(|line| {
                !["date:", "last-modified:", "connection:"]
                    .iter()
                    .any(|name| line.starts_with(name))
            })
            .map(|line| {
                // Multipart boundaries come from a per-process counter.
                match line.find("boundary=") {
                    Some(at) => format!("{}boundary=*", &line[..at]),
                    None => line.to_owned(),
                }
            })
            .collect();
        headers.sort();
        let head_only = methods.next() == Some(&"HEAD") || status == 304 || status < 200;
        let body_len = if head_only {
            0
        } else {
            content_length.unwrap_or(0)
        };
        let body_end = (end + 4 + body_len).min(bytes.len());
        answers.push(Answer {
            status,
            content_length,
            headers,
            body: bytes[end + 4..body_end].to_vec(),
        });
        bytes = &bytes[body_end..];
    }
    (answers, bytes.to_vec())
}

async fn answers(addr: SocketAddr, case: &Case) -> (Vec<Answer>, Vec<u8>) {
    let raw_answer = raw_bytes(addr, &case.bytes).await;
    split_answers(&raw_answer, case.methods)
}

#[tokio::test]
async fn the_fast_path_answers_every_shape_exactly_as_hyper_does() {
    let fast_box = TestBox::new();
    let hyper_box = TestBox::new();
    let fast_config = fast_box.config(1, "");
    let mut hyper_config = hyper_box.config(1, "");
    hyper_config.http.sendfile = false;
    seed(&fast_config, &[("a.ts", OBJECT)]);
    seed(&hyper_config, &[("a.ts", OBJECT)]);
    let fast = start(&fast_config).await;
    let hyper = start(&hyper_config).await;
    let mut differences = Vec::new();
    let mut table = Vec::new();
    for case in corpus() {
        let (fast_answers, fast_rest) = answers(fast.viewer_addrs[0], &case).await;
        let (hyper_answers, hyper_rest) = answers(hyper.viewer_addrs[0], &case).await;
        let statuses = |answers: &[Answer]| {
            answers
                .iter()
                .map(|answer| answer.status.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        table.push(format!(
            "{:<48} fast: [{}]  hyper: [{}]",
            case.name,
            statuses(&fast_answers),
            statuses(&hyper_answers)
        ));
        if fast_answers != hyper_answers || fast_rest != hyper_rest {
            differences.push(format!(
                "{}:\n  fast path: {fast_answers:?} + {:?}\n  hyper:     {hyper_answers:?} + {:?}",
                case.name,
                String::from_utf8_lossy(&fast_rest),
                String::from_utf8_lossy(&hyper_rest)
            ));
        }
    }
    println!("{}", table.join("\n"));
    assert!(
        differences.is_empty(),
        "the fast path and hyper disagree:\n{}",
        differences.join("\n")
    );
    fast.shutdown().await;
    hyper.shutdown().await;
}

#[tokio::test]
async fn http_1_1_host_rules_hold_on_both_paths() {
    let test_box = TestBox::new();
    let config = test_box.config(1, "");
    seed(&config, &[("a.ts", OBJECT)]);
    let daemon = start(&config).await;
    let addr = daemon.viewer_addrs[0];
    for (request, expected) in [
        ("GET /a.ts HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        ("GET /a.ts HTTP/1.1\r\nHost: box.example:8080\r\n\r\n", 200),
        ("GET /a.ts HTTP/1.1\r\n\r\n", 400),
        ("GET /a.ts HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n", 400),
        ("GET /a.ts HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        ("HEAD /a.ts HTTP/1.1\r\n\r\n", 400),
    ] {
        let answer = raw(addr, request.as_bytes()).await;
        assert_eq!(status_of(&answer), expected, "{request:?}: {answer}");
    }
    daemon.shutdown().await;
}

#[test]
fn the_splitter_frames_head_answers_without_a_body() {
    let stream = b"HTTP/1.1 404 Not Found\r\ncontent-length: 10\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (answers, rest) = split_answers(stream, &["HEAD", "GET"]);
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[1].body, b"ok");
    assert!(rest.is_empty());
}

/// Applies `count` random edits to `bytes`: delete, insert a byte that matters to HTTP/1
/// framing, duplicate a line, or cut the end.
fn mutate(bytes: &[u8], random: &mut fastrand::Rng, count: usize) -> Vec<u8> {
    const INTERESTING: &[u8] = b"\r\n :\t\x00\x7faZ0-,;\"\xff";
    let mut out = bytes.to_vec();
    for _ in 0..count {
        if out.is_empty() {
            break;
        }
        let at = random.usize(..out.len());
        match random.u8(..4) {
            0 => {
                out.remove(at);
            }
            1 => out.insert(at, INTERESTING[random.usize(..INTERESTING.len())]),
            2 => {
                let start = out[..at]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |p| p + 1);
                let end = out[at..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(out.len(), |p| at + p + 1);
                let line = out[start..end].to_vec();
                out.splice(end..end, line);
            }
            _ => out.truncate(at.max(1)),
        }
    }
    out
}

#[tokio::test]
async fn mutated_requests_get_the_same_answers_from_the_fast_path_and_hyper() {
    let fast_box = TestBox::new();
    let hyper_box = TestBox::new();
    let fast_config = fast_box.config(1, "[limits]\nheader_timeout = \"2s\"\n");
    let mut hyper_config = hyper_box.config(1, "[limits]\nheader_timeout = \"2s\"\n");
    hyper_config.http.sendfile = false;
    seed(&fast_config, &[("a.ts", OBJECT)]);
    seed(&hyper_config, &[("a.ts", OBJECT)]);
    let fast = start(&fast_config).await;
    let hyper = start(&hyper_config).await;
    // A fixed seed: the same mutations every run; a failure prints the bytes to replay.
    // TIDECACHE_FUZZ_SEED and TIDECACHE_FUZZ_CASES explore further.
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let cases = env("TIDECACHE_FUZZ_CASES", 1000) as usize;
    let mut random = fastrand::Rng::with_seed(env("TIDECACHE_FUZZ_SEED", 20_261_126));
    let corpus = corpus();
    let mut differences = Vec::new();
    for _ in 0..cases {
        let original = &corpus[random.usize(..corpus.len())];
        let edits = random.usize(1..4);
        let case = Case {
            name: original.name,
            bytes: mutate(&original.bytes, &mut random, edits),
            methods: original.methods,
        };
        let fast_answers = answers(fast.viewer_addrs[0], &case).await;
        let hyper_answers = answers(hyper.viewer_addrs[0], &case).await;
        if fast_answers != hyper_answers {
            differences.push(format!(
                "{:?} (from {:?}):\n  fast path: {:?}\n  hyper:     {:?}",
                String::from_utf8_lossy(&case.bytes),
                case.name,
                fast_answers.0,
                hyper_answers.0
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {cases} mutated requests were answered differently:\n{}",
        differences.len(),
        differences.join("\n")
    );
    fast.shutdown().await;
    hyper.shutdown().await;
}
