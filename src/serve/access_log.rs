//! The optional viewer access log, written off the hot path.
//!
//! The request path only formats nothing and blocks on nothing: it hands a small record to a
//! bounded channel with `try_send` (a full channel drops the line and counts it). A
//! background task formats the lines, buffers them and writes them out every second; SIGHUP
//! reopens the file, so logrotate can move it away.

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
    /// Body bytes promised (Content-Length).
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
        })
    }
}

impl AccessLog {
    /// Opens `path` for appending and starts the writer task.
    pub fn start(
        path: PathBuf,
        format: AccessLogFormat,
        dropped: IntCounter,
    ) -> std::io::Result<AccessLog> {
        let file = open(&path)?;
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(path, format, file, receiver));
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
}

fn open(path: &PathBuf) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

async fn write_lines(
    path: PathBuf,
    format: AccessLogFormat,
    mut file: std::fs::File,
    mut receiver: mpsc::Receiver<Message>,
) {
    let mut buffer: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut ticks = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            message = receiver.recv() => match message {
                Some(Message::Line(record)) => {
                    buffer.extend_from_slice(format_line(&record, format).as_bytes());
                    if buffer.len() >= 1 << 16 {
                        flush(&mut file, &mut buffer, &path);
                    }
                }
                Some(Message::Reopen) => {
                    flush(&mut file, &mut buffer, &path);
                    match open(&path) {
                        Ok(reopened) => file = reopened,
                        Err(err) => tracing::error!(path = %path.display(), error = %err, "cannot reopen the access log; writing to the old file"),
                    }
                }
                None => {
                    flush(&mut file, &mut buffer, &path);
                    return;
                }
            },
            _ = ticks.tick() => flush(&mut file, &mut buffer, &path),
        }
    }
}

fn flush(file: &mut std::fs::File, buffer: &mut Vec<u8>, path: &std::path::Path) {
    if buffer.is_empty() {
        return;
    }
    if let Err(err) = file.write_all(buffer) {
        tracing::warn!(path = %path.display(), error = %err, "access log write failed");
    }
    buffer.clear();
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
                    .map_or_else(|| "-".to_owned(), |value| value.replace('"', "\\\""))
            };
            format!(
                "{peer} - - [{time}] \"{} {} {}\" {} {} \"{}\" \"{}\"\n",
                record.method,
                record.target.replace('"', "%22"),
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
            "192.0.2.7 - - [25/Nov/2025:02:00:00 +0000] \"GET /t/seg_1.ts?token=%22x%22 HTTP/1.1\" 206 1024 \"-\" \"hls.js \\\"1.5\\\"\"\n"
        );
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
