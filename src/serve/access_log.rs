//! The optional viewer access log, written off the hot path.
//!
//! The request path only formats nothing and blocks on nothing: it hands a small record to a
//! bounded channel with `try_send` (a full channel drops the line and counts it). A
//! background task formats the lines, buffers them and writes them out every second; SIGHUP
//! reopens the file, so logrotate can move it away.
//!
//! A write that fails (a full disk) loses nothing it has not counted: what the file did not
//! take stays buffered, starting with the rest of a line cut short, and is written when
//! there is room again, so the file never holds half a line followed by another; while the
//! buffer is over 4 MiB, new lines are dropped and counted in
//! `tidecache_access_log_dropped_total`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;
use tokio::sync::mpsc;

use crate::config::AccessLogFormat;

/// Lines waiting for the writer; beyond this, lines are dropped (and counted), never waited for.
const QUEUE: usize = 65_536;
/// How often buffered lines are written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Bytes kept for the file while it takes nothing (a full disk); lines beyond are dropped.
const MAX_PENDING: usize = 4 << 20;

/// One answered viewer request.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// The client.
    pub peer: Option<SocketAddr>,
    /// When the request arrived.
    pub time: SystemTime,
    /// Method.
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub version: &'static str,
    /// Status code.
    pub status: u16,
    /// Body bytes sent (not the Content-Length: a HEAD sends none, a cut download less).
    pub bytes: u64,
    /// `Referer`, if any.
    pub referer: Option<String>,
    /// `User-Agent`, if any.
    pub user_agent: Option<String>,
    /// Time to the response head, seconds.
    pub duration: f64,
}

/// What the writer task is asked to do.
enum Message {
    Line(Box<AccessRecord>),
    Reopen,
    /// Write everything out and stop (the daemon is exiting); told back when done.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// The request side of the access log.
#[derive(Debug, Clone)]
pub struct AccessLog {
    sender: mpsc::Sender<Message>,
    dropped: IntCounter,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Line(_) => "Line",
            Message::Reopen => "Reopen",
            Message::Close(_) => "Close",
        })
    }
}

impl AccessLog {
    /// Opens `path` for appending and starts the writer thread.
    pub fn start(
        path: PathBuf,
        format: AccessLogFormat,
        dropped: IntCounter,
    ) -> std::io::Result<AccessLog> {
        let file = open(&path)?;
        let (sender, receiver) = mpsc::channel(QUEUE);
        let writer = Writer {
            path,
            format,
            file,
            pending: Vec::with_capacity(1 << 16),
            cut: 0,
            failing: false,
            dropped: dropped.clone(),
        };
        // A thread of its own, at the priority of the thread that starts the daemon (the
        // viewers'), not a task of the background runtime at nice +10: at that priority a
        // box whose viewers used every core dropped 13 % of its lines (wrk -t2 -c64 against
        // two workers).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        std::thread::Builder::new()
            .name("tidecache-access-log".into())
            .spawn(move || runtime.block_on(writer.run(receiver)))?;
        Ok(AccessLog { sender, dropped })
    }

    /// Queues a record; never waits.
    pub fn record(&self, record: AccessRecord) {
        if self
            .sender
            .try_send(Message::Line(Box::new(record)))
            .is_err()
        {
            self.dropped.inc();
        }
    }

    /// Asks the writer to reopen the file (after logrotate moved it).
    pub fn reopen(&self) {
        let _ = self.sender.try_send(Message::Reopen);
    }

    /// Writes out every line queued so far and stops the writer; returns once done (or at
    /// once if it already stopped). Lines recorded after this are counted as dropped.
    pub async fn close(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.sender.send(Message::Close(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

fn open(path: &PathBuf) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The writer task's state: the file and what it has yet to take.
struct Writer<W> {
    path: PathBuf,
    format: AccessLogFormat,
    file: W,
    /// Bytes the file has yet to take, oldest first, starting with the whole of a line the
    /// file took only the first `cut` bytes of.
    pending: Vec<u8>,
    /// How much of `pending`'s first line is already in the file (a write cut short).
    cut: usize,
    /// Whether the last write failed (logged once per failing stretch, not per line).
    failing: bool,
    dropped: IntCounter,
}

impl Writer<std::fs::File> {
    async fn run(mut self, mut receiver: mpsc::Receiver<Message>) {
        let mut ticks = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                message = receiver.recv() => match message {
                    Some(Message::Line(record)) => {
                        self.push(&record);
                        if self.pending.len() >= 1 << 16 {
                            self.flush();
                        }
                    }
                    Some(Message::Reopen) => {
                        self.flush();
                        match open(&self.path) {
                            Ok(reopened) => {
                                self.take_back_cut_line();
                                self.file = reopened;
                            }
                            Err(err) => tracing::error!(path = %self.path.display(), error = %err, "cannot reopen the access log; writing to the old file"),
                        }
                    }
                    Some(Message::Close(done)) => {
                        self.flush();
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.flush();
                        return;
                    }
                },
                _ = ticks.tick() => self.flush(),
            }
        }
    }
}

impl Writer<std::fs::File> {
    /// Before the file is switched (logrotate), takes the start of a line the old file got
    /// only part of back out of it, so the whole line goes to the new file and neither holds
    /// half a line.
    fn take_back_cut_line(&mut self) {
        if self.cut == 0 {
            return;
        }
        let truncated = self.file.metadata().and_then(|meta| {
            self.file
                .set_len(meta.len().saturating_sub(self.cut as u64))
        });
        match truncated {
            Ok(()) => self.cut = 0,
            Err(err) => {
                tracing::warn!(path = %self.path.display(), error = %err, "cannot take a cut line back out of the rotated access log")
            }
        }
    }
}

impl<W: Write> Writer<W> {
    /// Adds a record's line, or drops it (counted) while the file takes nothing.
    fn push(&mut self, record: &AccessRecord) {
        if self.pending.len() >= MAX_PENDING {
            self.dropped.inc();
            return;
        }
        self.pending
            .extend_from_slice(format_line(record, self.format).as_bytes());
    }

    /// Writes what the file takes; keeps the rest, with the whole of a line cut short (and
    /// how much of it the file holds, to go on from the exact byte it stopped at).
    fn flush(&mut self) {
        let mut written = self.cut;
        while written < self.pending.len() {
            match self.file.write(&self.pending[written..]) {
                Ok(0) => {
                    self.fail(&std::io::Error::from(std::io::ErrorKind::WriteZero));
                    break;
                }
                Ok(taken) => written += taken,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.fail(&err);
                    break;
                }
            }
        }
        let whole_lines = self.pending[..written]
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |newline| newline + 1);
        self.pending.drain(..whole_lines);
        self.cut = written - whole_lines;
        if self.pending.is_empty() && self.failing {
            self.failing = false;
            tracing::info!(path = %self.path.display(), "access log writes work again");
        }
    }

    fn fail(&mut self, err: &std::io::Error) {
        if !self.failing {
            self.failing = true;
            tracing::warn!(path = %self.path.display(), error = %err, "access log write failed; lines are kept (up to 4 MiB) and written when it works again");
        }
    }
}

/// One line of the log, newline included.
pub fn format_line(record: &AccessRecord, format: AccessLogFormat) -> String {
    let peer = record
        .peer
        .map_or_else(|| "-".to_owned(), |peer| peer.ip().to_string());
    match format {
        AccessLogFormat::Combined => {
            let time = jiff::Timestamp::try_from(record.time)
                .map(|time| time.strftime("%d/%b/%Y:%H:%M:%S +0000").to_string())
                .unwrap_or_else(|_| "-".to_owned());
            let quoted = |value: &Option<String>| {
                value
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), escape_combined)
            };
            format!(
                "{peer} - - [{time}] \"{} {} {}\" {} {} \"{}\" \"{}\"\n",
                escape_combined(&record.method),
                escape_combined(&record.target),
                record.version,
                record.status,
                record.bytes,
                quoted(&record.referer),
                quoted(&record.user_agent),
            )
        }
        AccessLogFormat::Json => {
            let time = jiff::Timestamp::try_from(record.time)
                .map(|time| time.to_string())
                .unwrap_or_default();
            let mut line = serde_json::json!({
                "time": time,
                "remote": peer,
                "method": record.method,
                "target": record.target,
                "version": record.version,
                "status": record.status,
                "bytes": record.bytes,
                "referer": record.referer,
                "user_agent": record.user_agent,
                "duration": record.duration,
            })
            .to_string();
            line.push('\n');
            line
        }
    }
}

/// A field of a combined-format line escaped as nginx's default `escape=default` does: `"`,
/// `\` and bytes outside printable ASCII become `\xHH`, so no value can end its field early
/// or forge another for a parser of the Apache convention.
fn escape_combined(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &byte in value.as_bytes() {
        if byte == b'"' || byte == b'\\' || !(0x20..0x7f).contains(&byte) {
            out.push_str(&format!("\\x{byte:02X}"));
        } else {
            out.push(char::from(byte));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord {
        AccessRecord {
            peer: Some("192.0.2.7:51000".parse().unwrap()),
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_036_000),
            method: "GET".to_owned(),
            target: "/t/seg_1.ts?token=\"x\"".to_owned(),
            version: "HTTP/1.1",
            status: 206,
            bytes: 1024,
            referer: None,
            user_agent: Some("hls.js \"1.5\"".to_owned()),
            duration: 0.00042,
        }
    }

    #[test]
    fn combined_lines_read_like_nginx() {
        assert_eq!(
            format_line(&record(), AccessLogFormat::Combined),
            "192.0.2.7 - - [25/Nov/2025:02:00:00 +0000] \"GET /t/seg_1.ts?token=\\x22x\\x22 HTTP/1.1\" 206 1024 \"-\" \"hls.js \\x221.5\\x22\"\n"
        );
    }

    #[test]
    fn a_crafted_user_agent_cannot_forge_fields() {
        let mut forged = record();
        // Meant to close the user-agent field and add a fake one, for parsers that read `\"`
        // as an escaped quote.
        forged.user_agent = Some("x\\\" \"forged\u{7f}".to_owned());
        let line = format_line(&forged, AccessLogFormat::Combined);
        assert!(
            line.ends_with("\"x\\x5C\\x22 \\x22forged\\x7F\"\n"),
            "{line}"
        );
        assert_eq!(
            line.matches('"').count(),
            6,
            "three quoted fields, no more: {line}"
        );
    }

    /// A file that takes `room` bytes, then fails with ENOSPC until given more room.
    struct TinyDisk {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for TinyDisk {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let take = bytes.len().min(self.room - self.taken.len());
            if take == 0 {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            self.taken.extend_from_slice(&bytes[..take]);
            Ok(take)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A JSON-line writer on a [`TinyDisk`] of `room` bytes, and its dropped-lines counter.
    fn writer_on_disk_with_room(room: usize) -> (Writer<TinyDisk>, IntCounter) {
        let dropped = IntCounter::new("dropped", "test").unwrap();
        let writer = Writer {
            path: PathBuf::from("access.log"),
            format: AccessLogFormat::Json,
            file: TinyDisk {
                taken: Vec::new(),
                room,
            },
            pending: Vec::new(),
            cut: 0,
            failing: false,
            dropped: dropped.clone(),
        };
        (writer, dropped)
    }

    #[test]
    fn a_full_disk_cuts_no_line_and_loses_nothing_uncounted() {
        let (mut writer, dropped) = writer_on_disk_with_room(700);
        let mut sent = 0;
        for round in 0..3 {
            for _ in 0..5 {
                writer.push(&record());
                sent += 1;
            }
            writer.flush();
            if round == 1 {
                // Space comes back.
                writer.file.room = usize::MAX;
            }
        }
        writer.flush();
        let text = String::from_utf8(writer.file.taken.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|err| panic!("a torn line {line:?}: {err}"));
        }
        assert!(text.ends_with('\n'));
        assert_eq!(lines.len() as u64 + dropped.get(), sent);
        assert_eq!(
            lines.len(),
            15,
            "the buffer held every line through the outage"
        );
    }

    #[test]
    fn beyond_the_pending_limit_lines_are_dropped_and_counted() {
        let (mut writer, dropped) = writer_on_disk_with_room(0);
        let line_len = format_line(&record(), AccessLogFormat::Json).len();
        let fits = MAX_PENDING.div_ceil(line_len);
        for _ in 0..fits + 10 {
            writer.push(&record());
        }
        writer.flush();
        assert_eq!(dropped.get(), 10);
    }

    #[test]
    fn json_lines_parse() {
        let line = format_line(&record(), AccessLogFormat::Json);
        let value: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(value["status"], 206);
        assert_eq!(value["remote"], "192.0.2.7");
        assert_eq!(value["time"], "2025-11-25T02:00:00Z");
    }
}
