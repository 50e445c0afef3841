//! The client's compressed messages, inflated before tungstenite reads
//! them: tungstenite has no permessage-deflate and refuses a frame with
//! RSV1 set. [`Inbound`] sits between the socket and tungstenite. On a
//! connection that negotiated permessage-deflate it parses the client's
//! frames; a frame of a compressed message (its first frame has RSV1) is
//! read whole, unmasked, inflated and handed on as the same frame
//! uncompressed, RSV1 clear and masked again with its own key, so
//! tungstenite checks it as any other. Every other frame (control frames
//! between a message's fragments too) passes through as it came, and
//! tungstenite judges it.
//!
//! Each message gets a fresh inflater (the answer says
//! `client_no_context_takeover`), dropped when the message ends, so an
//! idle connection holds none. What a message inflates to is bounded by
//! `limits.max_message_size`: past it the connection is closed with 1009,
//! however small the compressed bytes were. Bytes that are not valid
//! DEFLATE close it with 1007. Writes pass straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::hub::deflated::SYNC_FLUSH_TAIL;

/// Bytes read from the socket at a time while frames are parsed: client
/// messages are small (subscribe, auth).
const READ_CHUNK: usize = 1024;

/// A buffer keeps its allocation once emptied only up to this size.
const KEEP: usize = 4 * 1024;

/// Why a client's compressed message was refused; the connection closes
/// with the code [`InflateError::close_code`] gives.
#[derive(Debug, thiserror::Error)]
pub(super) enum InflateError {
    #[error("message too big: the limit is {limit} bytes once inflated")]
    TooBig { limit: usize },
    #[error("compressed message is not valid DEFLATE: {0}")]
    Corrupt(String),
}

impl InflateError {
    /// RFC 6455's close codes: 1009 too big, 1007 data that is not what
    /// the message says it is.
    pub(super) fn close_code(&self) -> u16 {
        match self {
            InflateError::TooBig { .. } => 1009,
            InflateError::Corrupt(_) => 1007,
        }
    }
}

/// The socket as tungstenite reads it.
pub(super) struct Inbound<S> {
    io: S,
    /// `None` without permessage-deflate: every byte passes as it came.
    frames: Option<Box<Frames>>,
}

impl<S> Inbound<S> {
    /// `io` read as it is (`deflate` false) or with its compressed
    /// messages inflated, each to at most `limit` bytes.
    pub(super) fn new(io: S, deflate: bool, limit: usize) -> Self {
        Inbound {
            io,
            frames: deflate.then(|| Box::new(Frames::new(limit))),
        }
    }
}

/// The client's frames, parsed.
struct Frames {
    /// `limits.max_message_size`: the most a message may inflate to, and
    /// the most a compressed frame may hold.
    limit: usize,
    /// Read from the socket, not yet handed on.
    input: Vec<u8>,
    /// For tungstenite, from `ready_at` on.
    ready: Vec<u8>,
    ready_at: usize,
    /// Payload bytes still to pass through of a frame passed as it came.
    passing: u64,
    /// The inflater of the compressed message in progress (between its
    /// first and its final frame), and what it inflated so far.
    message: Option<(Box<Decompress>, usize)>,
    /// A refused message: from then on bytes pass raw, for the close
    /// handshake's drain.
    failed: bool,
}

/// A frame's header, parsed.
struct Head {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    /// Header bytes.
    len: usize,
    payload: u64,
}

/// The header at the start of `b`, once it is all there.
fn head(b: &[u8]) -> Option<Head> {
    let (b0, b1) = (*b.first()?, *b.get(1)?);
    let (mut len, payload) = match b1 & 0x7F {
        126 => (4, u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as u64),
        127 => (10, u64::from_be_bytes(b.get(2..10)?.try_into().ok()?)),
        n => (2, n as u64),
    };
    let mask = match b1 & 0x80 != 0 {
        true => {
            let key = b.get(len..len + 4)?.try_into().ok()?;
            len += 4;
            Some(key)
        }
        false => None,
    };
    Some(Head {
        fin: b0 & 0x80 != 0,
        rsv1: b0 & 0x40 != 0,
        opcode: b0 & 0x0F,
        mask,
        len,
        payload,
    })
}

fn apply_mask(bytes: &mut [u8], key: [u8; 4]) {
    for (i, b) in bytes.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

impl Frames {
    fn new(limit: usize) -> Self {
        Frames {
            limit,
            input: Vec::new(),
            ready: Vec::new(),
            ready_at: 0,
            passing: 0,
            message: None,
            failed: false,
        }
    }

    /// Moves what `input` holds into `ready`: frames passed through, and
    /// compressed frames inflated once they are whole.
    fn process(&mut self) -> Result<(), InflateError> {
        loop {
            if self.passing > 0 {
                let n = self.input.len().min(self.passing as usize);
                self.ready.extend(self.input.drain(..n));
                self.passing -= n as u64;
                if self.passing > 0 {
                    return Ok(());
                }
            }
            let Some(h) = head(&self.input) else {
                return Ok(());
            };
            let compressed = match h.opcode {
                // Text, binary: a new message, compressed if RSV1.
                0x1 | 0x2 => h.rsv1 && self.message.is_none(),
                // A continuation of the compressed message (without RSV1:
                // RFC 7692 sets it on the first frame only).
                0x0 => !h.rsv1 && self.message.is_some(),
                _ => false,
            };
            // An unmasked frame goes on as it is: tungstenite refuses it.
            let (true, Some(key)) = (compressed, h.mask) else {
                self.ready.extend(self.input.drain(..h.len));
                self.passing = h.payload;
                continue;
            };
            if h.payload > self.limit as u64 {
                return Err(InflateError::TooBig { limit: self.limit });
            }
            let end = h.len + h.payload as usize;
            if self.input.len() < end {
                self.input.reserve(end - self.input.len());
                return Ok(());
            }
            let mut payload: Vec<u8> = self.input.drain(..end).skip(h.len).collect();
            apply_mask(&mut payload, key);
            let (inflater, inflated) = self
                .message
                .get_or_insert_with(|| (Box::new(Decompress::new(false)), 0));
            let room = self.limit - *inflated;
            let mut out = inflate(inflater, &payload, Vec::new(), room, self.limit)?;
            if h.fin {
                out = inflate(inflater, &SYNC_FLUSH_TAIL, out, room, self.limit)?;
            }
            *inflated += out.len();
            if h.fin {
                self.message = None;
            }
            // The same frame, inflated, RSV1 clear, masked again.
            self.ready.push((u8::from(h.fin) << 7) | h.opcode);
            let n = out.len();
            match n {
                0..=125 => self.ready.push(0x80 | n as u8),
                126..=0xFFFF => {
                    self.ready.push(0x80 | 126);
                    self.ready.extend_from_slice(&(n as u16).to_be_bytes());
                }
                _ => {
                    self.ready.push(0x80 | 127);
                    self.ready.extend_from_slice(&(n as u64).to_be_bytes());
                }
            }
            self.ready.extend_from_slice(&key);
            apply_mask(&mut out, key);
            self.ready.extend_from_slice(&out);
        }
    }
}

/// `input` inflated onto `out`, which may hold at most `room` bytes of a
/// message limited to `limit`.
fn inflate(
    d: &mut Decompress,
    input: &[u8],
    mut out: Vec<u8>,
    room: usize,
    limit: usize,
) -> Result<Vec<u8>, InflateError> {
    let mut read = 0;
    loop {
        if out.len() == out.capacity() {
            // Room for one byte past `room`, which tells a message that is
            // too big without inflating it further.
            let grow = (input.len() * 4).clamp(256, 64 * 1024);
            out.reserve_exact(grow.min(room + 1 - out.len()));
        }
        let (in0, out0) = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(&input[read..], &mut out, FlushDecompress::Sync)
            .map_err(|e| InflateError::Corrupt(e.to_string()))?;
        read += (d.total_in() - in0) as usize;
        if out.len() > room {
            return Err(InflateError::TooBig { limit });
        }
        let full = out.len() == out.capacity();
        // Done when the stream ended (a final block), or all the input is
        // in and the inflater had room to spare (a full buffer may hold
        // back more).
        if status == Status::StreamEnd || (read == input.len() && !full) {
            return Ok(out);
        }
        if !full && d.total_in() == in0 && d.total_out() == out0 {
            return Err(InflateError::Corrupt(
                "the inflater makes no progress".into(),
            ));
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inbound<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(f) = this.frames.as_deref_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        loop {
            if f.failed {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            if f.ready_at < f.ready.len() {
                let n = buf.remaining().min(f.ready.len() - f.ready_at);
                buf.put_slice(&f.ready[f.ready_at..f.ready_at + n]);
                f.ready_at += n;
                if f.ready_at == f.ready.len() {
                    f.ready.clear();
                    f.ready_at = 0;
                    if f.ready.capacity() > KEEP {
                        f.ready = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if let Err(e) = f.process() {
                f.failed = true;
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
            if f.ready_at < f.ready.len() {
                continue;
            }
            if f.input.is_empty() && f.input.capacity() > KEEP {
                f.input = Vec::new();
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut chunk = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                // The end: a frame cut short goes with it.
                return Poll::Ready(Ok(()));
            }
            f.input.extend_from_slice(chunk.filled());
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inbound<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
        let key = [1, 2, 3, 4];
        assert!(payload.len() < 126);
        let mut frame = vec![b0, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&key);
        let mut body = payload.to_vec();
        apply_mask(&mut body, key);
        frame.extend_from_slice(&body);
        frame
    }

    fn deflated(text: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(text.len() + 64);
        c.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
        out.truncate(out.len() - 4);
        out
    }

    /// `input` fed a byte at a time: what tungstenite would read.
    fn through(input: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
        let mut f = Frames::new(limit);
        for &b in input {
            f.input.push(b);
            f.process()?;
        }
        Ok(f.ready)
    }

    #[test]
    fn a_compressed_message_in_fragments_around_a_ping_is_handed_on_inflated() {
        let z = deflated(b"{\"type\":\"subscribe\",\"channel\":\"news\"}");
        let (a, b) = z.split_at(z.len() / 2);
        let input = [
            masked(0x41, a),        // text, RSV1, not final
            masked(0x89, b"ping"),  // a ping between the fragments
            masked(0x80, b),        // the final continuation
            masked(0x81, b"plain"), // an uncompressed message after it
        ]
        .concat();
        let out = through(&input, 1024).unwrap();
        let mut inflated = Vec::new();
        let mut rest = out.as_slice();
        let mut b0s = Vec::new();
        while !rest.is_empty() {
            let h = head(rest).unwrap();
            let mut payload = rest[h.len..h.len + h.payload as usize].to_vec();
            apply_mask(&mut payload, h.mask.expect("still masked"));
            b0s.push(rest[0]);
            if rest[0] & 0x0F != 0x9 {
                inflated.extend_from_slice(&payload);
            }
            rest = &rest[h.len + h.payload as usize..];
        }
        assert_eq!(b0s, [0x01, 0x89, 0x80, 0x81], "RSV1 cleared, the rest kept");
        assert_eq!(
            inflated,
            b"{\"type\":\"subscribe\",\"channel\":\"news\"}plain"
        );
    }

    #[test]
    fn a_message_that_inflates_past_the_limit_is_refused() {
        let z = deflated(&[b' '; 4096]);
        assert!(z.len() < 100);
        assert!(matches!(
            through(&masked(0xC1, &z), 4095),
            Err(InflateError::TooBig { limit: 4095 })
        ));
        assert!(through(&masked(0xC1, &z), 4096).is_ok());
        assert!(matches!(
            through(&masked(0xC1, &[0xff; 8]), 4096),
            Err(InflateError::Corrupt(_))
        ));
    }
}
