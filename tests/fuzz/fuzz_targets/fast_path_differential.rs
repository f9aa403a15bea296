//! The HTTP/1 sendfile fast path against hyper, differentially, on arbitrary bytes: the
//! same bytes sent on one connection (then half-closed) to a daemon answering plain
//! GET/HEAD on the fast path and to one where hyper answers everything must get the same
//! answers. This is tests/fast_path.rs with libFuzzer choosing the bytes.
//!
//! What is compared, per connection:
//! - each answer's status line, its headers except `date` and `connection`, and its body;
//! - the bytes left after the last whole answer head;
//! - whether the server closed the connection within [`CONNECTION_LIMIT`].
//!
//! Not compared, because two correct servers may differ there:
//! - `date`: the two answers may straddle a second;
//! - `connection`: hyper adds `connection: close` to an answer when it has already read the
//!   client's EOF, which depends on when the half-close arrived; every connection here is
//!   read to its end, so which answers came and their framing is what matters;
//! - the multipart boundary: it comes from a process-wide counter, so it differs between the
//!   two daemons; it is replaced by a placeholder (it has a fixed length, so the
//!   Content-Length still compares);
//! - whether the close was a FIN or a reset: a reset only means the server closed with
//!   request bytes unread, and how many it had read depends on timing.
//!
//! Framing answers without knowing the requests: an answer to HEAD has a Content-Length but
//! no body, and the methods of arbitrary bytes cannot be known without parsing them the way
//! one of the two servers does, which is what is under test. Instead an answer is taken as
//! bodiless when the bytes right after its head are the start of another answer
//! (`HTTP/1.`) or the end of the stream; otherwise its body is Content-Length bytes (what is
//! there of them). No body this daemon sends starts with `HTTP/1.`: the object, slices of
//! it, multipart bodies (they start with CRLF `--`) and short text errors. So a HEAD answer
//! that wrongly carries a body, or a GET answer that wrongly lacks one, still shows as a
//! difference against the other server; only both servers being wrong the same way hides.
//!
//! Before a difference is reported it is checked twice, and each check that explains it is
//! printed to stderr (`flaky`, `segmentation`) instead of failing the run:
//! - the input is tried again (up to [`ATTEMPTS`] times in all): a difference that goes
//!   away is timing, not a disagreement;
//! - the hyper daemon is sent the input again in pieces, a pause apart (see
//!   [`segmentations`]): cut where the fast path's reads end, and cut at each request
//!   head's end. hyper's own answer depends on how the bytes arrive, not only on what they
//!   are: after a served request, a malformed tail gets hyper's bare 400 or only the close
//!   depending on the reads it came in, and both were seen for the same bytes (hyper writes
//!   an error answer only while no other answer is being written: `on_parse_error` in its
//!   h1 `conn.rs`). The fast path changes how the bytes reach hyper: on a hand-over hyper
//!   gets what the fast path read first and the rest in later reads. So if hyper answers as
//!   the fast path did when the bytes arrive in pieces a client could send, the fast path
//!   answered as hyper can, and it is not counted. About one in ten inputs of a grown
//!   corpus differs this way (always by that one trailing 400). Set
//!   `FAST_PATH_DIFFERENTIAL_STRICT=1` to count these too.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use tidecache::config::Config;
use tidecache::daemon::Daemon;
use tidecache::store::Stores;
use tidecache::store::writer::ObjectWriter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The object both daemons serve as `/a.ts` (the one tests/fast_path.rs serves).
const OBJECT: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Longest input sent; the rest is ignored.
const MAX_INPUT: usize = 64 * 1024;

/// The daemons' `[limits]`: a truncated head or an idle connection ends within a second or
/// two instead of the defaults' 10 s and 60 s.
const LIMITS: &str = "[limits]\nheader_timeout = \"1s\"\nidle_timeout = \"2s\"\n";

/// How long one connection may take from connect to the server's close. Well past the
/// daemons' own timeouts, so a connection still open then is a server that hangs.
const CONNECTION_LIMIT: Duration = Duration::from_secs(6);

/// How often an input is sent before a difference counts.
const ATTEMPTS: usize = 3;

/// Between two pieces of an input sent in pieces: long enough for the server to read the
/// first on its own.
const PIECE_PAUSE: Duration = Duration::from_millis(20);

/// The fast path's first read buffer: its reads end at multiples of this.
const FAST_PATH_READ: usize = 4096;

/// Request head ends tried as cuts at most, so a long pipeline's check stays short.
const MAX_HEAD_CUTS: usize = 16;

/// The two daemons, started once per process and never stopped.
struct Harness {
    runtime: tokio::runtime::Runtime,
    /// Plain-HTTP viewer address of the daemon with the sendfile fast path.
    fast: SocketAddr,
    /// The same, of the daemon with `http.sendfile = false`: hyper answers everything.
    hyper: SocketAddr,
    /// The running daemons, never shut down. Kept here, not forgotten, so LeakSanitizer
    /// still sees what they allocate as reachable.
    _daemons: Mutex<[Daemon; 2]>,
    /// Holds the stores; never dropped (statics are not), so a run leaves one small
    /// `tidecache-fuzz-*` directory in the temporary directory.
    _dir: tempfile::TempDir,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("tidecache-fuzz-")
            .tempdir()
            .expect("temporary directory");
        let (fast_config, hyper_config) = seeded_configs(dir.path());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let daemons = runtime.block_on(async {
            [
                Daemon::start(&fast_config)
                    .await
                    .expect("fast-path daemon starts"),
                Daemon::start(&hyper_config)
                    .await
                    .expect("hyper daemon starts"),
            ]
        });
        Harness {
            runtime,
            fast: daemons[0].viewer_addrs[0],
            hyper: daemons[1].viewer_addrs[0],
            _daemons: Mutex::new(daemons),
            _dir: dir,
        }
    })
}

/// The two daemons' configurations (one store each, every listener on 127.0.0.1:0, no fill
/// window, [`LIMITS`]; the second with the fast path off), their stores holding `a.ts` with
/// the same fill time, so `Last-Modified` and the conditional requests agree.
fn seeded_configs(dir: &std::path::Path) -> (Config, Config) {
    for attempt in 0.. {
        let root = dir.join(format!("attempt{attempt}"));
        let fast_config = config(&root.join("fast"));
        let mut hyper_config = config(&root.join("hyper"));
        hyper_config.http.sendfile = false;
        // Seeded a second apart (rarely): seed both again.
        if seed(&fast_config) == seed(&hyper_config) {
            return (fast_config, hyper_config);
        }
    }
    unreachable!()
}

/// A configuration as tests/common's `TestBox::config(1, LIMITS)` builds it, rooted at `root`.
fn config(root: &std::path::Path) -> Config {
    let text = format!(
        "[http]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[store]]\npath = {:?}\ncapacity = \"1GiB\"\n{LIMITS}",
        root.join("nvme0")
    );
    let mut config = Config::parse(&text).unwrap_or_else(|err| panic!("config: {err}\n{text}"));
    config.state_dir = root.join("state");
    // The default 02:00-06:00 UTC window would switch the daemons to filling at night.
    config.schedule.fill_windows.clear();
    config
}

/// Writes `a.ts` through the store API (as tests/common's `seed_all` does) and returns its
/// fill time.
fn seed(config: &Config) -> i64 {
    let stores = Arc::new(Stores::load(&config.stores));
    let sha256: [u8; 32] = Sha256::digest(OBJECT).into();
    let mut writer = ObjectWriter::begin(&stores, "a.ts", OBJECT.len() as u64, sha256)
        .unwrap_or_else(|err| panic!("begin a.ts: {err}"));
    writer.write(OBJECT).expect("write a.ts");
    writer.finish().expect("finish a.ts").filled_at
}

/// What one connection got back, as far as the comparison goes.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    answers: Vec<Answer>,
    /// Bytes after the last whole answer head (escaped).
    rest: String,
    /// The server had not closed within [`CONNECTION_LIMIT`].
    hung: bool,
}

/// One answer as the comparison sees it.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    /// `HTTP/1.1 200 OK`.
    status_line: String,
    /// `name: value` with the name in lower case, sorted; no `date` or `connection`.
    headers: Vec<String>,
    /// The body (escaped), multipart boundary replaced.
    body: String,
}

/// Sends `input` on a fresh connection to `addr` while reading, half-closes once it is
/// sent, and reads until the server closes (reading and writing at once, so a long
/// pipeline cannot fill both directions' buffers and stall).
async fn exchange(addr: SocketAddr, input: &[u8]) -> Outcome {
    exchange_in_pieces(addr, input, &[]).await
}

/// [`exchange`], writing `input` in pieces cut at the offsets `cuts` (ascending), with
/// [`PIECE_PAUSE`] between them.
async fn exchange_in_pieces(addr: SocketAddr, input: &[u8], cuts: &[usize]) -> Outcome {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|err| panic!("connect to the daemon at {addr}: {err}"));
    let (mut reader, mut writer) = stream.into_split();
    let mut received = Vec::new();
    let exchanged = tokio::time::timeout(CONNECTION_LIMIT, async {
        let send = async {
            // The server may close before reading everything (a 400, an oversized head):
            // that is an answer, not an error.
            let mut start = 0;
            for &cut in cuts.iter().chain([&input.len()]) {
                if start > 0 {
                    tokio::time::sleep(PIECE_PAUSE).await;
                }
                if writer.write_all(&input[start..cut]).await.is_err() {
                    break;
                }
                start = cut;
            }
            let _ = writer.shutdown().await;
        };
        // A reset after the answers (the server closed with input unread) ends it too.
        let receive = async {
            let _ = reader.read_to_end(&mut received).await;
        };
        tokio::join!(send, receive);
    })
    .await;
    let (answers, rest) = split_answers(&received);
    Outcome {
        answers,
        rest: rest.escape_ascii().to_string(),
        hung: exchanged.is_err(),
    }
}

/// Splits a connection's response bytes into answers (see the module's doc for how a body
/// is framed without knowing the method) and returns what is left after the last head.
fn split_answers(mut bytes: &[u8]) -> (Vec<Answer>, &[u8]) {
    let mut answers = Vec::new();
    while let Some(end) = bytes.windows(4).position(|window| window == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_owned();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let mut content_length = None;
        let mut boundary = None;
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "date" | "connection" => continue,
                "content-length" => content_length = value.parse::<usize>().ok(),
                "content-type" => {
                    boundary = value
                        .split_once("boundary=")
                        .map(|(_, boundary)| boundary.to_owned());
                }
                _ => {}
            }
            headers.push(format!("{name}: {value}"));
        }
        let after_head = &bytes[end + 4..];
        let bodiless = status < 200
            || status == 204
            || status == 304
            || after_head.is_empty()
            || after_head.starts_with(b"HTTP/1.");
        let body_len = if bodiless {
            0
        } else {
            content_length.unwrap_or(0).min(after_head.len())
        };
        let mut body = after_head[..body_len].escape_ascii().to_string();
        if let Some(boundary) = boundary.filter(|boundary| !boundary.is_empty()) {
            body = body.replace(&boundary, "<boundary>");
            for header in &mut headers {
                *header = header.replace(&boundary, "<boundary>");
            }
        }
        headers.sort();
        answers.push(Answer {
            status_line,
            headers,
            body,
        });
        bytes = &after_head[body_len..];
    }
    (answers, bytes)
}

/// The outcomes of `input` from the fast-path daemon and from the hyper one.
fn outcomes(harness: &Harness, input: &[u8]) -> (Outcome, Outcome) {
    harness.runtime.block_on(async {
        tokio::join!(
            exchange(harness.fast, input),
            exchange(harness.hyper, input)
        )
    })
}

fuzz_target!(
    // Started before the fuzzing, so what starting allocates is not counted against the
    // first input by libFuzzer's leak check.
    init: {
        harness();
    },
    |data: &[u8]| check(&data[..data.len().min(MAX_INPUT)])
);

/// The ways of cutting `input` into pieces that the hyper daemon is sent when it answered
/// differently from the fast path, each a list of ascending offsets:
/// - where the fast path's reads end when everything arrives at once: every multiple of
///   [`FAST_PATH_READ`] alone, and all of them (its buffer starts at 4 KiB and doubles
///   when full; after an answer the freed room is reused, so these are the usual ends,
///   not every possible one);
/// - after each request head (a blank line), and one byte later, alone: whether the next
///   request's first byte comes in the same read as the head before it decides whether
///   hyper answers a malformed one 400 (seen on fuzzer inputs; on a hand-over, hyper's
///   first reads end where its buffer is full, which may be anywhere);
/// - after every head: a client that waits for each answer before sending the next request.
fn segmentations(input: &[u8]) -> Vec<Vec<usize>> {
    let reads: Vec<usize> = (FAST_PATH_READ..input.len())
        .step_by(FAST_PATH_READ)
        .collect();
    let head_ends: Vec<usize> = (1..input.len())
        .filter(|&at| input[..at].ends_with(b"\n\n") || input[..at].ends_with(b"\n\r\n"))
        .take(MAX_HEAD_CUTS)
        .collect();
    let mut choices: Vec<Vec<usize>> = reads.iter().map(|&cut| vec![cut]).collect();
    if reads.len() > 1 {
        choices.push(reads);
    }
    for &end in &head_ends {
        choices.push(vec![end]);
        if end + 1 < input.len() {
            choices.push(vec![end + 1]);
        }
    }
    if head_ends.len() > 1 {
        choices.push(head_ends);
    }
    choices
}

/// Sends `input` to both daemons and panics (a finding) when they answer differently
/// every time, [`ATTEMPTS`] times in a row, and hyper does not answer as the fast path did
/// when the bytes reach it in pieces either.
fn check(input: &[u8]) {
    let harness = harness();
    let (fast, hyper) = outcomes(harness, input);
    if fast == hyper {
        return;
    }
    let escaped = input.escape_ascii().to_string();
    for _ in 1..ATTEMPTS {
        let (fast_again, hyper_again) = outcomes(harness, input);
        if fast_again == hyper_again {
            eprintln!(
                "flaky (not counted): the fast path and hyper differed once on {}:\n  \
                 fast path: {fast:?}\n  hyper:     {hyper:?}",
                preview(&escaped)
            );
            return;
        }
    }
    let strict = std::env::var_os("FAST_PATH_DIFFERENTIAL_STRICT").is_some_and(|v| v == "1");
    if !strict {
        for cuts in segmentations(input) {
            let hyper_in_pieces =
                harness
                    .runtime
                    .block_on(exchange_in_pieces(harness.hyper, input, &cuts));
            if hyper_in_pieces == fast {
                eprintln!(
                    "segmentation (not counted): hyper answers {} as the fast path does when \
                     it arrives cut at {cuts:?}",
                    preview(&escaped)
                );
                return;
            }
        }
    }
    let in_pieces = if strict {
        ""
    } else {
        ", nor when hyper gets it in pieces"
    };
    panic!(
        "the fast path and hyper answer differently ({ATTEMPTS} of {ATTEMPTS} tries{in_pieces}) \
         to {escaped:?}:\n  fast path: {fast:#?}\n  hyper:     {hyper:#?}"
    );
}

/// The start of an escaped input, for notes that do not fail the run.
fn preview(escaped: &str) -> String {
    match escaped.char_indices().nth(200) {
        Some((end, _)) => format!("{:?}... ({} escaped bytes)", &escaped[..end], escaped.len()),
        None => format!("{escaped:?}"),
    }
}
