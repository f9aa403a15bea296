//! Paced viewers for `benches/fill-while-serving`: a compiled client, so the tail it
//! measures is the server's, not an interpreter's (Python's threads waiting on each other
//! for the GIL swung that bench's p99 by 2x between rounds).
//!
//! Usage (the bench script runs it; `cargo bench` alone just prints this):
//!   paced_viewers PORT RATE CONNECTIONS RANGE_BYTES PATHS_FILE [SECONDS]
//!
//! CONNECTIONS keep-alive HTTP/1.1 connections, one thread each, together send RATE
//! requests per second, each for a random RANGE_BYTES-aligned range of a random path of
//! PATHS_FILE (one per line; objects of at least 8 ranges), or for the whole object when
//! RANGE_BYTES is 0 (answered 200, any length). Each request has a due time on
//! a fixed schedule and its latency is measured from then, so a late start counts against
//! the server (no coordinated omission). Runs SECONDS, or until stdin closes when none is
//! given. Prints one JSON object: every latency in milliseconds, sorted, the body bytes
//! received, and the first error, if any (a status other than 206 or a short body).
//! With `PACED_VIEWERS_TRACE=FILE`, also writes each request's connection, due time (seconds
//! from the start) and latency to FILE, to see when slow answers happen.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What one connection measured.
#[derive(Default)]
struct Measured {
    latencies_ms: Vec<f64>,
    /// (connection, due seconds from the start, latency ms), in order.
    trace: Vec<(u64, f64, f64)>,
    served: u64,
    error: Option<String>,
}

/// A small, seeded generator: the choices need no quality beyond not repeating.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 || args.iter().any(|arg| arg == "--bench") {
        println!("paced_viewers: run by benches/fill-while-serving (see the file's doc)");
        return;
    }
    let number = |at: usize| -> u64 {
        args[at]
            .parse()
            .unwrap_or_else(|_| panic!("argument {} is not a number: {}", at + 1, args[at]))
    };
    let (port, rate, connections, range) = (number(0), number(1), number(2), number(3));
    let paths: Arc<Vec<String>> = Arc::new(
        std::fs::read_to_string(&args[4])
            .expect("the paths file")
            .lines()
            .filter(|line| !line.is_empty())
            .map(|line| format!("/{}", line.trim_start_matches('/')))
            .collect(),
    );
    assert!(!paths.is_empty(), "no paths");
    let stop = Arc::new(AtomicBool::new(false));
    let interval = Duration::from_secs_f64(connections as f64 / rate as f64);
    let started = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|number| {
            let (paths, stop) = (Arc::clone(&paths), Arc::clone(&stop));
            // Spread over the first interval, so the connections do not send in step.
            let first = started + interval.mul_f64(number as f64 / connections as f64);
            std::thread::spawn(move || {
                viewer(
                    port,
                    &paths,
                    range,
                    (started, first),
                    interval,
                    number + 1,
                    &stop,
                )
            })
        })
        .collect();
    match args.get(5) {
        Some(seconds) => std::thread::sleep(Duration::from_secs_f64(
            seconds.parse().expect("SECONDS is a number"),
        )),
        None => {
            let mut line = String::new();
            while std::io::stdin().lock().read_line(&mut line).unwrap_or(0) > 0 {
                line.clear();
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Measured::default();
    for thread in threads {
        let measured = thread.join().unwrap_or_else(|_| Measured {
            error: Some("a viewer thread panicked".into()),
            ..Measured::default()
        });
        all.latencies_ms.extend(measured.latencies_ms);
        all.trace.extend(measured.trace);
        all.served += measured.served;
        all.error = all.error.or(measured.error);
    }
    all.latencies_ms.sort_by(f64::total_cmp);
    if let Ok(file) = std::env::var("PACED_VIEWERS_TRACE") {
        all.trace.sort_by(|a, b| a.1.total_cmp(&b.1));
        let lines: String = all
            .trace
            .iter()
            .map(|(connection, due, ms)| format!("{connection} {due:.4} {ms:.3}\n"))
            .collect();
        std::fs::write(&file, lines).expect("the trace file");
    }
    let latencies: Vec<String> = all
        .latencies_ms
        .iter()
        .map(|ms| format!("{ms:.4}"))
        .collect();
    let error = all.error.map_or("null".to_string(), |error| {
        format!("\"{}\"", error.replace('\\', "\\\\").replace('"', "'"))
    });
    println!(
        "{{\"latencies_ms\": [{}], \"served\": {}, \"seconds\": {:.3}, \"error\": {}}}",
        latencies.join(","),
        all.served,
        started.elapsed().as_secs_f64(),
        error
    );
}

/// One keep-alive connection sending a request every `interval`, from `first` on.
fn viewer(
    port: u64,
    paths: &[String],
    range: u64,
    (started, first): (Instant, Instant),
    interval: Duration,
    seed: u64,
    stop: &AtomicBool,
) -> Measured {
    let mut measured = Measured::default();
    let mut chooser = XorShift(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491));
    let connection = match TcpStream::connect(("127.0.0.1", port as u16)) {
        Ok(connection) => connection,
        Err(err) => {
            measured.error = Some(format!("connect: {err}"));
            return measured;
        }
    };
    let _ = connection.set_nodelay(true);
    let _ = connection.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = match connection.try_clone() {
        Ok(writer) => writer,
        Err(err) => {
            measured.error = Some(format!("clone: {err}"));
            return measured;
        }
    };
    let mut reader = BufReader::with_capacity(1 << 20, connection);
    let mut body = vec![0u8; range as usize];
    let mut due = first;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let path = &paths[chooser.below(paths.len())];
        let whole = range == 0;
        let request = if whole {
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        } else {
            let start = chooser.below(8) as u64 * range;
            format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes={start}-{}\r\n\r\n",
                start + range - 1
            )
        };
        let wanted = if whole { 200 } else { 206 };
        let outcome = writer
            .write_all(request.as_bytes())
            .map_err(|err| format!("send: {err}"))
            .and_then(|()| read_answer(&mut reader, &mut body, whole));
        let took = due.elapsed();
        match outcome {
            Ok(status) if status == wanted => {
                measured.latencies_ms.push(took.as_secs_f64() * 1000.0);
                measured.trace.push((
                    seed,
                    (due - started).as_secs_f64(),
                    took.as_secs_f64() * 1000.0,
                ));
                measured.served += body.len() as u64;
            }
            Ok(status) => {
                measured.error = Some(format!("a viewer got {status}, not {wanted}"));
                return measured;
            }
            Err(err) => {
                measured.error = Some(err);
                return measured;
            }
        }
        due += interval;
    }
    measured
}

/// Reads one answer whose body is exactly `body.len()` bytes (any length, `body` resized to
/// it, when `any_length`); returns its status.
fn read_answer(
    reader: &mut impl BufRead,
    body: &mut Vec<u8>,
    any_length: bool,
) -> Result<u16, String> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|err| format!("status line: {err}"))?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("status line {line:?}"))?;
    let mut length = None;
    loop {
        line.clear();
        reader
            .read_line(&mut line)
            .map_err(|err| format!("header: {err}"))?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    if let (true, Some(length)) = (any_length, length) {
        body.resize(length, 0);
    }
    match length {
        Some(length) if length == body.len() => reader
            .read_exact(body)
            .map(|()| status)
            .map_err(|err| format!("body: {err}")),
        Some(length) => Err(format!("a viewer got {status} with {length} bytes")),
        None => Err(format!("a viewer got {status} without a length")),
    }
}
