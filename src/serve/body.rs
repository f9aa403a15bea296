//! Response bodies that stream from files without reading whole objects into memory.
//!
//! A body is a queue of segments: in-memory bytes (RAM-cached objects, multipart part
//! headers, small error texts) and byte ranges of an open file. Both are handed over a piece
//! at a time ([`CHUNK_SIZE`], or less for HTTP/2); file pieces are positioned reads on a
//! blocking thread, so one shared file descriptor serves every part of a multipart answer and
//! no seek state is shared, and under a [`QueueBudget`] each holds room until the socket took
//! it. The sendfile fast path takes the segments itself ([`ObjectBody::into_parts`]).

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounter;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
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

/// Called once when a response is over, sent whole or cut, with the body bytes that went to
/// the connection: what the access log records (nginx's `$body_bytes_sent`).
pub type EndReport = Box<dyn FnOnce(u64) + Send + Sync>;

/// Bytes of file reads a connection may always have queued (read, not yet taken by its
/// socket), whatever the other connections hold: enough for one [`CHUNK_SIZE`] piece twice
/// over, so a viewer never waits on strangers.
pub const QUEUE_OWN_BYTES: usize = 2 * CHUNK_SIZE as usize;

/// The most one connection may have queued, its own bytes and what it borrows from the
/// process-wide pool together: 2 MiB is 32 HTTP/2 streams' send buffers, or several
/// HTTP/1 pieces, plenty to keep a fast socket busy.
pub const QUEUE_CONNECTION_MAX_BYTES: usize = 2 << 20;

/// What a connection may queue of file bytes for its viewer: [`QUEUE_OWN_BYTES`] of its own,
/// and up to [`QUEUE_CONNECTION_MAX_BYTES`] in all by borrowing from a pool shared by every
/// viewer connection (`limits.max_queued_bytes`); and, so that no stream of an HTTP/2
/// connection waits forever behind its siblings, one piece more for a stream that has
/// nothing queued while the connection's socket takes what it is given.
///
/// Why: a viewer that stops reading (an HTTP/2 client with a hundred open streams, say) makes
/// hyper keep what was read for it until its socket takes it. Bounding that per connection
/// alone would still let enough hostile connections take the memory of the box; bounding it
/// by one shared pool alone would let them starve every other viewer. With both, queued bytes
/// stay within the pool plus [`QUEUE_OWN_BYTES`] per open connection. But streams the
/// viewer is not reading yet (a player that opened many and reads them in turn) park a piece
/// or two each beyond their flow-control windows and can hold a connection's whole share;
/// the stream being read must still get room, or the connection stalls. So a stream with
/// nothing queued may take one piece outside the budget while its connection's socket is
/// not backed up ([`Progress`]): the parked streams are held back by their flow-control
/// windows, not by the socket, so the stream being read always progresses; a viewer that
/// reads nothing backs its socket up and never gets more than the budget. Worst case per
/// connection: its share plus one piece per stream, for a viewer that reads just enough to
/// keep its socket from backing up.
pub struct QueueBudget {
    own: Arc<Semaphore>,
    may_borrow: Arc<Semaphore>,
    pool: Arc<Semaphore>,
    progress: Option<Arc<dyn Progress>>,
    /// Told whenever one of the connection's pieces gives its room back. Waiters listen to
    /// this rather than queue on the semaphores, where a waiter holds the permits handed to
    /// it so far and room sits idle behind it.
    released: Arc<Wakeup>,
}

/// A [`Notify`] that costs an atomic load to tell while nobody listens: every piece's drop
/// tells one, and almost always no body is waiting (`notify_waiters` takes a lock).
#[derive(Debug, Default)]
struct Wakeup {
    listeners: AtomicUsize,
    notify: Notify,
}

impl Wakeup {
    /// Wakes the listeners, if any.
    fn tell(&self) {
        if self.listeners.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Counts a listener until the guard is dropped. A listener registers before it looks
    /// at the state it waits on, and a teller changes that state before it looks at the
    /// count, so no wake-up is lost.
    fn listen(&self) -> Listening<'_> {
        self.listeners.fetch_add(1, Ordering::SeqCst);
        Listening(self)
    }
}

/// A registered listener of a [`Wakeup`].
struct Listening<'a>(&'a Wakeup);

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        self.0.listeners.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a connection's socket takes what it is given: told by the transport, which
/// sees its writes.
pub trait Progress: Send + Sync {
    /// Whether the socket's last write was not refused for lack of room.
    fn is_draining(&self) -> bool;
}

/// The size of a stream's one piece outside the budget: small, so a connection's worst case
/// beyond its budget stays at a few hundred kilobytes even with every stream holding one
/// (128 x 4 KiB); enough to keep the stream being read moving until its siblings' room
/// comes back.
const EXTRA_PIECE: u32 = 4 * 1024;

/// How often a body waiting for room looks again at the pool and at its connection's
/// progress (room coming back to the connection, or its own last piece leaving, wakes it
/// at once).
const ROOM_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for QueueBudget {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("QueueBudget")
            .field("own_available", &self.own.available_permits())
            .finish_non_exhaustive()
    }
}

impl QueueBudget {
    /// A new connection's budget, borrowing from `pool` (one permit per byte); `progress`
    /// tells whether the connection is moving (none: never an extra piece).
    pub fn for_connection(
        pool: &Arc<Semaphore>,
        progress: Option<Arc<dyn Progress>>,
    ) -> Arc<QueueBudget> {
        Arc::new(QueueBudget {
            own: Arc::new(Semaphore::new(QUEUE_OWN_BYTES)),
            may_borrow: Arc::new(Semaphore::new(QUEUE_CONNECTION_MAX_BYTES - QUEUE_OWN_BYTES)),
            pool: Arc::clone(pool),
            progress,
            released: Arc::default(),
        })
    }

    /// `bytes` at once if the connection's own share or the pool has them, or as the one
    /// extra piece of a stream with nothing queued on a moving connection.
    fn room_now(&self, body: &Arc<BodyQueue>, bytes: u32) -> Option<QueuedBytes> {
        if let Ok(own) = Arc::clone(&self.own).try_acquire_many_owned(bytes) {
            return Some(QueuedBytes::holding(Some(own), None, body, bytes).telling(self));
        }
        let borrowed = Arc::clone(&self.may_borrow)
            .try_acquire_many_owned(bytes)
            .ok()
            .and_then(|allowed| {
                let borrowed = Arc::clone(&self.pool).try_acquire_many_owned(bytes).ok()?;
                Some((allowed, borrowed))
            });
        if borrowed.is_some() {
            return Some(QueuedBytes::holding(None, borrowed, body, bytes).telling(self));
        }
        let draining = self
            .progress
            .as_ref()
            .is_some_and(|progress| progress.is_draining());
        (draining && body.outstanding.load(Ordering::SeqCst) == 0)
            .then(|| QueuedBytes::holding(None, None, body, bytes.min(EXTRA_PIECE)))
    }
}

/// Waits until [`QueueBudget::room_now`] has room for `bytes`: woken when a piece of the
/// connection gives its room back or this body's last piece leaves, and looking again every
/// [`ROOM_RECHECK`] for the pool and the connection's progress.
async fn wait_for_room(
    budget: Arc<QueueBudget>,
    body: Arc<BodyQueue>,
    bytes: u32,
) -> Option<QueuedBytes> {
    let _listening = (budget.released.listen(), body.drained.listen());
    loop {
        let drained = body.drained.notify.notified();
        let released = budget.released.notify.notified();
        tokio::pin!(drained, released);
        drained.as_mut().enable();
        released.as_mut().enable();
        if let Some(room) = budget.room_now(&body, bytes) {
            return Some(room);
        }
        tokio::select! {
            _ = &mut released => {}
            _ = &mut drained => {}
            _ = tokio::time::sleep(ROOM_RECHECK) => {}
        }
    }
}

/// What one body has queued: its pieces not yet taken by the socket.
#[derive(Debug, Default)]
struct BodyQueue {
    outstanding: AtomicU64,
    /// Told when `outstanding` falls to zero.
    drained: Wakeup,
}

/// Room held by one piece read from a file, in a [`QueueBudget`] (or as a stream's extra
/// piece); given back when the piece is dropped, which hyper does once the socket has taken
/// it.
#[derive(Debug)]
struct QueuedBytes {
    own: Option<OwnedSemaphorePermit>,
    borrowed: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
    body: Arc<BodyQueue>,
    bytes: u64,
    /// The connection's [`QueueBudget::released`], told once the permits are back.
    released: Option<Arc<Wakeup>>,
}

impl QueuedBytes {
    fn holding(
        own: Option<OwnedSemaphorePermit>,
        borrowed: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
        body: &Arc<BodyQueue>,
        bytes: u32,
    ) -> QueuedBytes {
        body.outstanding
            .fetch_add(u64::from(bytes), Ordering::SeqCst);
        QueuedBytes {
            own,
            borrowed,
            body: Arc::clone(body),
            bytes: u64::from(bytes),
            released: None,
        }
    }

    /// Tells `budget`'s waiters when this room is given back.
    fn telling(mut self, budget: &QueueBudget) -> QueuedBytes {
        self.released = Some(Arc::clone(&budget.released));
        self
    }
}

impl Drop for QueuedBytes {
    fn drop(&mut self) {
        // The permits go back first, so a waiter woken below finds them.
        drop(self.own.take());
        drop(self.borrowed.take());
        if let Some(released) = &self.released {
            released.tell();
        }
        if self
            .body
            .outstanding
            .fetch_sub(self.bytes, Ordering::SeqCst)
            == self.bytes
        {
            self.body.drained.tell();
        }
    }
}

/// A piece read from a file that holds its room in the budget for as long as it lives.
struct QueuedPiece {
    bytes: Vec<u8>,
    _room: QueuedBytes,
}

impl AsRef<[u8]> for QueuedPiece {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A wait for room in a connection's budget.
type RoomWait = Pin<Box<dyn Future<Output = Option<QueuedBytes>> + Send>>;

/// The body type of every response tidecache sends, viewer or admin.
#[derive(Default)]
pub struct ObjectBody {
    segments: VecDeque<Segment>,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
    /// Where file pieces take their room, and this body's pieces still queued (for the
    /// one-piece-per-stream guarantee); `None` reads without a bound (admin answers, and
    /// bodies the sendfile path sends itself, which then allocate nothing for it).
    budget: Option<(Arc<QueueBudget>, Arc<BodyQueue>)>,
    /// The wait for room for the next file piece, while the budget has none.
    room_wait: Option<RoomWait>,
    remaining: u64,
    sent_bytes: Option<IntCounter>,
    short_file: Option<ShortFileReport>,
    /// Bytes read per file chunk; 0 means [`CHUNK_SIZE`].
    chunk_size: u64,
    /// Body bytes handed to the connection so far.
    emitted: u64,
    /// Told [`ObjectBody::emitted`] when the body is dropped.
    on_end: Option<EndReport>,
}

impl Drop for ObjectBody {
    fn drop(&mut self) {
        if let Some(report) = self.on_end.take() {
            report(self.emitted);
        }
    }
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

    /// The body's pieces, for a writer that sends files itself (the sendfile fast path), and
    /// the end report, which that writer owes the bytes it sent.
    pub fn into_parts(mut self) -> (Vec<BodyPart>, Option<EndReport>) {
        let report = self.on_end.take();
        let parts = std::mem::take(&mut self.segments)
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
            .collect();
        (parts, report)
    }

    /// Runs `report` with the body bytes sent once the response is over (the body dropped,
    /// sent whole or cut; or told by the writer that took its parts).
    pub fn on_end(mut self, report: EndReport) -> Self {
        self.on_end = Some(report);
        self
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

    /// Takes room in `budget` for every piece read from a file, waiting for room when there
    /// is none: how a viewer that stops reading stops costing memory.
    pub fn within(mut self, budget: Arc<QueueBudget>) -> Self {
        self.budget = Some((budget, Arc::default()));
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
        self.emitted += bytes.len() as u64;
        if let Some(counter) = &self.sent_bytes {
            counter.inc_by(bytes.len() as u64);
        }
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

/// Reads exactly `len` bytes at `offset`; a short file is an error, never a short body.
/// With `room`, the bytes hold it until they are dropped.
fn read_chunk(file: &File, offset: u64, len: u64, room: Option<QueuedBytes>) -> io::Result<Bytes> {
    match room {
        None => {
            let mut buffer = BytesMut::zeroed(len as usize);
            file.read_exact_at(&mut buffer, offset)?;
            Ok(buffer.freeze())
        }
        Some(room) => {
            let mut bytes = vec![0; len as usize];
            file.read_exact_at(&mut bytes, offset)?;
            Ok(Bytes::from_owner(QueuedPiece { bytes, _room: room }))
        }
    }
}

impl ObjectBody {
    /// Bytes handed to the connection at once: [`CHUNK_SIZE`], or the smaller size set by
    /// [`ObjectBody::with_chunk_size`].
    fn piece_size(&self) -> u64 {
        match self.chunk_size {
            0 => CHUNK_SIZE,
            configured => configured.min(CHUNK_SIZE),
        }
    }

    /// Room in the budget for a piece of `len` bytes: `Ready(None)` when there is no budget,
    /// `Pending` while the connection's socket has yet to take enough.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: u64) -> Poll<Option<QueuedBytes>> {
        let Some((budget, queued)) = &self.budget else {
            return Poll::Ready(None);
        };
        // Pieces are at most CHUNK_SIZE (or a smaller configured size), far below u32::MAX.
        let len = len as u32;
        if self.room_wait.is_none() {
            if let Some(room) = budget.room_now(queued, len) {
                return Poll::Ready(Some(room));
            }
            self.room_wait = Some(Box::pin(wait_for_room(
                Arc::clone(budget),
                Arc::clone(queued),
                len,
            )));
        }
        let wait = self.room_wait.as_mut().map(|wait| wait.as_mut().poll(cx));
        match wait {
            Some(Poll::Ready(room)) => {
                self.room_wait = None;
                Poll::Ready(room)
            }
            _ => Poll::Pending,
        }
    }
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
                Some(Segment::Memory(mut bytes)) => {
                    // A RAM-cached object is one shared buffer: handed over a piece at a
                    // time (slices, no copy), so what counts as sent is what the connection
                    // took, not the whole object at once.
                    let piece = this.piece_size() as usize;
                    if bytes.len() > piece {
                        let rest = bytes.split_off(piece);
                        this.segments.push_front(Segment::Memory(rest));
                    }
                    return this.emit(bytes);
                }
                Some(Segment::File {
                    file,
                    offset,
                    remaining,
                }) => {
                    let wanted = remaining.min(this.piece_size());
                    let (room, len) = match this.poll_room(cx, wanted) {
                        // A stream's extra piece may be smaller than asked.
                        Poll::Ready(room) => {
                            let len = room.as_ref().map_or(wanted, |room| room.bytes.min(wanted));
                            (room, len)
                        }
                        Poll::Pending => {
                            this.segments.push_front(Segment::File {
                                file,
                                offset,
                                remaining,
                            });
                            return Poll::Pending;
                        }
                    };
                    if remaining > len {
                        this.segments.push_front(Segment::File {
                            file: Arc::clone(&file),
                            offset: offset + len,
                            remaining: remaining - len,
                        });
                    }
                    this.pending = Some(tokio::task::spawn_blocking(move || {
                        read_chunk(&file, offset, len, room)
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

    /// Reads the next frame's data, or `None` if none comes within a short wait.
    async fn next_data(body: &mut ObjectBody) -> Option<Bytes> {
        let frame = tokio::time::timeout(std::time::Duration::from_millis(200), body.frame())
            .await
            .ok()?;
        frame?.ok()?.into_data().ok()
    }

    #[tokio::test]
    async fn a_connection_that_holds_its_share_waits_until_its_socket_takes_some() {
        let content = vec![7u8; CHUNK_SIZE as usize * 3];
        let empty_pool = Arc::new(Semaphore::new(0));
        let budget = QueueBudget::for_connection(&empty_pool, None);
        let mut body = ObjectBody::empty();
        body.push_file_range(file_with(&content), 0, content.len() as u64);
        let mut body = body.within(budget);
        let first = next_data(&mut body).await.expect("first piece");
        let second = next_data(&mut body).await.expect("second piece");
        assert_eq!(first.len() + second.len(), QUEUE_OWN_BYTES);
        assert!(
            next_data(&mut body).await.is_none(),
            "a third piece while the first two are still queued"
        );
        drop(first);
        let third = next_data(&mut body)
            .await
            .expect("room once a piece is sent");
        assert_eq!(third.len(), CHUNK_SIZE as usize);
    }

    #[tokio::test]
    async fn borrowing_from_the_pool_stops_at_the_connection_maximum() {
        let content = vec![1u8; QUEUE_CONNECTION_MAX_BYTES + CHUNK_SIZE as usize];
        let pool = Arc::new(Semaphore::new(64 << 20));
        let budget = QueueBudget::for_connection(&pool, None);
        let mut body = ObjectBody::empty();
        body.push_file_range(file_with(&content), 0, content.len() as u64);
        let mut body = body.within(budget);
        let mut queued = Vec::new();
        while let Some(piece) = next_data(&mut body).await {
            queued.push(piece);
        }
        let held: usize = queued.iter().map(Bytes::len).sum();
        assert_eq!(held, QUEUE_CONNECTION_MAX_BYTES);
        assert_eq!(
            pool.available_permits(),
            (64 << 20) - (QUEUE_CONNECTION_MAX_BYTES - QUEUE_OWN_BYTES)
        );
        drop(queued);
        assert_eq!(
            pool.available_permits(),
            64 << 20,
            "all borrowed room returned"
        );
    }

    /// A connection whose progress the test sets.
    struct Moving(std::sync::atomic::AtomicBool);

    impl Progress for Moving {
        fn is_draining(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[tokio::test]
    async fn a_stream_behind_parked_siblings_still_gets_a_piece_while_the_connection_moves() {
        let content = vec![3u8; CHUNK_SIZE as usize * 4];
        let moving = Arc::new(Moving(std::sync::atomic::AtomicBool::new(false)));
        let budget = QueueBudget::for_connection(
            &Arc::new(Semaphore::new(0)),
            Some(Arc::clone(&moving) as Arc<dyn Progress>),
        );
        // Siblings the viewer does not read hold the connection's whole share.
        let mut parked = ObjectBody::empty();
        parked.push_file_range(file_with(&content), 0, content.len() as u64);
        let mut parked = parked.within(Arc::clone(&budget));
        let held = [
            next_data(&mut parked).await.unwrap(),
            next_data(&mut parked).await.unwrap(),
        ];
        let mut read = ObjectBody::empty();
        read.push_file_range(file_with(&content), 0, content.len() as u64);
        let mut read = read.within(Arc::clone(&budget));
        assert!(
            next_data(&mut read).await.is_none(),
            "no room and no progress: the stream waits"
        );
        moving.0.store(true, Ordering::Relaxed);
        let first = tokio::time::timeout(ROOM_RECHECK * 2, read.frame())
            .await
            .expect("a moving connection's idle stream gets one piece")
            .and_then(|frame| frame.ok()?.into_data().ok())
            .unwrap();
        assert!(
            next_data(&mut read).await.is_none(),
            "only one while that piece is queued"
        );
        drop(first);
        assert!(
            next_data(&mut read).await.is_some(),
            "the next once the socket took it"
        );
        drop(held);
    }
}
