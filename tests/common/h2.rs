//! Raw HTTP/2 for tests that must send what well-behaved clients do not (never reading,
//! pausing between streams): frames written by hand, HPACK without Huffman coding.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::IO_TIMEOUT;

/// The client connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One HTTP/2 frame (RFC 9113 section 4.1).
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A GET of `path` on `stream`, END_STREAM | END_HEADERS: static `:method GET` and
/// `:scheme http`, literal `:path` and `:authority` with indexed names.
pub fn get(stream: u32, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x44, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x41, 1, b'x']);
    frame(1, 0x5, stream, &block)
}

/// A frame's header, as read back.
pub struct FrameHead {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

/// Reads frames until `done` says stop; `None` if the connection ends or stalls first.
pub async fn read_until(
    stream: &mut TcpStream,
    mut done: impl FnMut(&FrameHead) -> bool,
) -> Option<()> {
    loop {
        let mut head = [0u8; 9];
        tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut head))
            .await
            .ok()?
            .ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut payload))
            .await
            .ok()?
            .ok()?;
        let frame = FrameHead {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]),
        };
        if done(&frame) {
            return Some(());
        }
    }
}
