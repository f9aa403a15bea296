//! Response bodies that stream from files without reading whole objects into memory.
//!
//! A body is a queue of segments: in-memory bytes (multipart part headers, small error texts)
//! and byte ranges of an open file. File ranges are read in [`CHUNK_SIZE`] pieces with
//! positioned reads on a blocking thread, so one shared file descriptor serves every part of
//! a multipart answer and no seek state is shared. A later sendfile, io_uring or RAM-cache
//! path replaces how a segment is produced, not what a body is.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounter;
use tokio::task::JoinHandle;

/// Bytes read from disk per body frame: large enough to amortise the thread hop, small enough
/// that a slow viewer pins little memory.
pub const CHUNK_SIZE: u64 = 128 * 1024;

/// One piece of a response body.
#[derive(Debug)]
enum Segment {
    /// Bytes already in memory.
    Memory(Bytes),
    /// `remaining` bytes of `file` starting at `offset`.
    File {
        file: Arc<File>,
        offset: u64,
        remaining: u64,
    },
}

/// A piece of a body as [`ObjectBody::into_parts`] gives it.
#[derive(Debug)]
pub enum BodyPart {
    /// Bytes in memory.
    Memory(Bytes),
    /// `len` bytes of `file` from `offset`.
    File {
        /// The open file.
        file: Arc<File>,
        /// Where the bytes start.
        offset: u64,
        /// How many.
        len: u64,
    },
}

/// Called once when a file ends before the range the body promised from it.
pub type ShortFileReport = Box<dyn FnOnce() + Send + Sync>;

/// The body type of every response tidecache sends, viewer or admin.
#[derive(Default)]
pub struct ObjectBody {
    segments: VecDeque<Segment>,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
    remaining: u64,
    sent_bytes: Option<IntCounter>,
    short_file: Option<ShortFileReport>,
    /// Bytes read per file chunk; 0 means [`CHUNK_SIZE`].
    chunk_size: u64,
}

impl std::fmt::Debug for ObjectBody {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ObjectBody")
            .field("segments", &self.segments)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl ObjectBody {
    /// A body with nothing in it (HEAD, 304, redirects).
    pub fn empty() -> Self {
        ObjectBody::default()
    }

    /// A body of bytes already in memory.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        let mut body = ObjectBody::default();
        body.push_bytes(bytes.into());
        body
    }

    /// Appends in-memory bytes.
    pub fn push_bytes(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.remaining += bytes.len() as u64;
            self.segments.push_back(Segment::Memory(bytes));
        }
    }

    /// Appends `len` bytes of `file` from `offset`.
    pub fn push_file_range(&mut self, file: Arc<File>, offset: u64, len: u64) {
        if len > 0 {
            self.remaining += len;
            self.segments.push_back(Segment::File {
                file,
                offset,
                remaining: len,
            });
        }
    }

    /// The body's pieces, for a writer that sends files itself (the sendfile fast path).
    pub fn into_parts(self) -> Vec<BodyPart> {
        self.segments
            .into_iter()
            .map(|segment| match segment {
                Segment::Memory(bytes) => BodyPart::Memory(bytes),
                Segment::File {
                    file,
                    offset,
                    remaining,
                } => BodyPart::File {
                    file,
                    offset,
                    len: remaining,
                },
            })
            .collect()
    }

    /// Runs `report` if a file turns out shorter than the range read from it (changed behind
    /// tidecache's back while open), so the object can be taken out of service; the body
    /// still ends in an error, so the client never takes the short answer for whole.
    pub fn on_short_file(mut self, report: ShortFileReport) -> Self {
        self.short_file = Some(report);
        self
    }

    /// Reads files in pieces of `bytes` instead of [`CHUNK_SIZE`]: what an HTTP/2 stream
    /// pins while its viewer does not read, so many streams stay cheap.
    pub fn with_chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = bytes.max(1);
        self
    }

    /// Counts every byte handed to the connection in `counter` (response_bytes_total).
    pub fn count_into(mut self, counter: IntCounter) -> Self {
        self.sent_bytes = Some(counter);
        self
    }

    /// Total bytes this body will produce; the `Content-Length`.
    pub fn len(&self) -> u64 {
        self.remaining
    }

    /// Whether the body has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    fn emit(&mut self, bytes: Bytes) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.remaining -= bytes.len() as u64;
        if let Some(counter) = &self.sent_bytes {
            counter.inc_by(bytes.len() as u64);
        }
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

/// Reads exactly `len` bytes at `offset`; a short file is an error, never a short body.
fn read_chunk(file: &File, offset: u64, len: u64) -> io::Result<Bytes> {
    let mut buffer = BytesMut::zeroed(len as usize);
    file.read_exact_at(&mut buffer, offset)?;
    Ok(buffer.freeze())
}

impl Body for ObjectBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(handle) = this.pending.as_mut() {
                let joined = ready!(Pin::new(handle).poll(cx));
                this.pending = None;
                return match joined {
                    Ok(Ok(bytes)) => this.emit(bytes),
                    Ok(Err(err)) => {
                        if err.kind() == io::ErrorKind::UnexpectedEof {
                            if let Some(report) = this.short_file.take() {
                                report();
                            }
                        }
                        Poll::Ready(Some(Err(err)))
                    }
                    Err(join) => Poll::Ready(Some(Err(io::Error::other(join)))),
                };
            }
            match this.segments.pop_front() {
                None => return Poll::Ready(None),
                Some(Segment::Memory(bytes)) => return this.emit(bytes),
                Some(Segment::File {
                    file,
                    offset,
                    remaining,
                }) => {
                    let chunk = match this.chunk_size {
                        0 => CHUNK_SIZE,
                        configured => configured,
                    };
                    let len = remaining.min(chunk);
                    if remaining > len {
                        this.segments.push_front(Segment::File {
                            file: Arc::clone(&file),
                            offset: offset + len,
                            remaining: remaining - len,
                        });
                    }
                    this.pending = Some(tokio::task::spawn_blocking(move || {
                        read_chunk(&file, offset, len)
                    }));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Write;

    fn file_with(content: &[u8]) -> Arc<File> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(content).unwrap();
        Arc::new(file)
    }

    #[tokio::test]
    async fn streams_segments_in_order_across_chunks() {
        let content: Vec<u8> = (0..(CHUNK_SIZE as usize * 2 + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let file = file_with(&content);
        let mut body = ObjectBody::from_bytes("head|");
        body.push_file_range(Arc::clone(&file), 3, content.len() as u64 - 3);
        body.push_bytes(Bytes::from_static(b"|tail"));
        let expected_len = 5 + content.len() as u64 - 3 + 5;
        assert_eq!(body.len(), expected_len);
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected.len() as u64, expected_len);
        assert_eq!(&collected[..5], b"head|");
        assert_eq!(&collected[5..collected.len() - 5], &content[3..]);
    }

    #[tokio::test]
    async fn file_shorter_than_promised_is_an_error_not_a_short_body() {
        let file = file_with(b"short");
        let mut body = ObjectBody::empty();
        body.push_file_range(file, 0, 100);
        let reported = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&reported);
        let body = body.on_short_file(Box::new(move || {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }));
        assert!(body.collect().await.is_err());
        assert!(
            reported.load(std::sync::atomic::Ordering::Relaxed),
            "reported"
        );
    }
}
