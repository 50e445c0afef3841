//! A publication's WebSocket `message` payload compressed for
//! `permessage-deflate` (RFC 7692) once, and shared by every subscriber
//! that negotiated it.
//!
//! The payload is `head` + cursor + `tail`, and the cursor differs per
//! subscriber. Herald answers every offer with `server_no_context_takeover`,
//! so each message is a DEFLATE stream of its own, and a stream may be
//! made of parts that were compressed independently: a part compressed by
//! a fresh compressor never refers back before its own start. So `head`
//! and `tail` are each compressed once, by a fresh compressor, and ended
//! with a sync flush, which closes the part with an empty *stored* block
//! (3 header bits, padding to a byte, then `LEN`/`NLEN` = `00 00 ff ff`).
//! A subscriber's message is then:
//!
//! ```text
//! head part without its last 4 bytes   ← ends with a stored block's header
//! LEN NLEN of the cursor, the cursor   ← that stored block: the cursor raw
//! tail part without its last 4 bytes   ← `00 00 ff ff` removed, RFC 7692 §7.2.1
//! ```
//!
//! No compression per delivery: the cursor rides in a stored block, and
//! writing the message costs what writing the plain one does.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};

/// What a sync flush ends with: `LEN` = 0 and `NLEN` = `!LEN` of the empty
/// stored block it writes. A permessage-deflate sender removes them from
/// the end of a message, and the receiver appends them again.
pub const SYNC_FLUSH_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The most a stored block holds (`LEN` is 16 bits). A longer cursor takes
/// several blocks, each after the header byte [`STORED_HEADER`].
const STORED_MAX: usize = u16::MAX as usize;

/// A stored block's header on its own byte: `BFINAL` 0, `BTYPE` 00, then
/// padding to the byte boundary.
const STORED_HEADER: u8 = 0x00;

thread_local! {
    /// One compressor per thread, reset before every part: a new one
    /// allocates its window and tables, a reset only clears its hash
    /// table. The default level: the compression is paid once per
    /// publication, and level 1 made Herald's envelopes ~8% bigger.
    static COMPRESSOR: RefCell<Compress> =
        RefCell::new(Compress::new(Compression::default(), false));
}

/// The two compressed parts of a `message` payload.
pub struct Deflated {
    /// The head compressed and sync-flushed, without the last 4 bytes: it
    /// ends with the header of the stored block that holds the cursor.
    head: Bytes,
    /// The tail compressed and sync-flushed, without [`SYNC_FLUSH_TAIL`].
    tail: Bytes,
}

impl Deflated {
    /// `head` and `tail` compressed; `None` when the compressed message
    /// would not be smaller than the plain one (it is then sent plain:
    /// RFC 7692 lets each message choose), or the compressor failed.
    pub fn compress(head: &[u8], tail: &[u8]) -> Option<Deflated> {
        let (head_part, tail_part) = COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            Some((sync_flushed(&mut c, head)?, sync_flushed(&mut c, tail)?))
        })?;
        let head_part = head_part.strip_suffix(&SYNC_FLUSH_TAIL)?;
        let tail_part = tail_part.strip_suffix(&SYNC_FLUSH_TAIL)?;
        // The cursor costs the same in both, but for its stored block's
        // LEN/NLEN.
        if head_part.len() + 4 + tail_part.len() >= head.len() + tail.len() {
            return None;
        }
        Some(Deflated {
            head: Bytes::copy_from_slice(head_part),
            tail: Bytes::copy_from_slice(tail_part),
        })
    }

    /// The length of the compressed payload with a `cursor_len`-byte cursor.
    pub fn len_with(&self, cursor_len: usize) -> usize {
        let blocks = cursor_len.div_ceil(STORED_MAX).max(1);
        // Every stored block after the first brings its header byte.
        self.head.len() + cursor_len + 4 * blocks + (blocks - 1) + self.tail.len()
    }

    /// Appends the compressed payload with `cursor`, [`len_with`] bytes.
    ///
    /// [`len_with`]: Deflated::len_with
    pub fn write_with(&self, out: &mut Vec<u8>, cursor: &[u8]) {
        out.extend_from_slice(&self.head);
        let mut chunks = cursor.chunks(STORED_MAX);
        let first = chunks.next().unwrap_or_default();
        stored_block(out, first);
        for chunk in chunks {
            out.push(STORED_HEADER);
            stored_block(out, chunk);
        }
        out.extend_from_slice(&self.tail);
    }
}

/// `LEN`, `NLEN` (little-endian) and the bytes of a stored block whose
/// header is already written.
fn stored_block(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len() as u16;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// `input` compressed from a fresh state, ended with a sync flush.
fn sync_flushed(c: &mut Compress, input: &[u8]) -> Option<Vec<u8>> {
    c.reset();
    let mut out = Vec::with_capacity(input.len() + 64);
    loop {
        let consumed = c.total_in() as usize;
        c.compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
            .ok()?;
        // Done once all the input is in and the flush did not fill the
        // buffer (a full one may hold back more).
        if c.total_in() as usize == input.len() && out.len() < out.capacity() {
            return Some(out);
        }
        out.reserve(out.capacity().max(64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    const HEAD: &[u8] = b"{\"type\":\"message\",\"channel\":\"news\",\"cursor\":\"";
    const TAIL: &[u8] = b"\",\"topic\":\"news\",\"partition\":2,\"offset\":7,\"ts\":1700000000000,\"key\":\"k\",\"data\":{\"headline\":\"news news news news\",\"n\":7}}";

    fn inflate(payload: &[u8]) -> Vec<u8> {
        let mut input = payload.to_vec();
        input.extend_from_slice(&SYNC_FLUSH_TAIL);
        let mut d = Decompress::new(false);
        let mut out = Vec::with_capacity(64 * 1024 + input.len() * 4);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .expect("valid DEFLATE");
        assert_eq!(d.total_in() as usize, input.len(), "all input read");
        out
    }

    #[test]
    fn a_sync_flush_ends_with_an_empty_stored_block() {
        COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            for input in [HEAD, TAIL, b"".as_slice(), b"x".as_slice()] {
                let part = sync_flushed(&mut c, input).unwrap();
                assert!(part.ends_with(&SYNC_FLUSH_TAIL), "{part:02x?}");
            }
        });
    }

    #[test]
    fn parts_and_the_stored_cursor_inflate_to_the_message() {
        let z = Deflated::compress(HEAD, TAIL).expect("smaller compressed");
        for cursor in ["hAQRuZXdzAwACAQACAQ", "", "h"] {
            let mut payload = Vec::new();
            z.write_with(&mut payload, cursor.as_bytes());
            assert_eq!(payload.len(), z.len_with(cursor.len()));
            assert_eq!(inflate(&payload), [HEAD, cursor.as_bytes(), TAIL].concat());
            assert!(payload.len() < HEAD.len() + cursor.len() + TAIL.len());
        }
    }

    #[test]
    fn a_cursor_longer_than_a_stored_block_takes_several() {
        let z = Deflated::compress(HEAD, TAIL).unwrap();
        let cursor: Vec<u8> = (0..150_000).map(|i| b'a' + (i % 26) as u8).collect();
        let mut payload = Vec::new();
        z.write_with(&mut payload, &cursor);
        assert_eq!(payload.len(), z.len_with(cursor.len()));
        assert_eq!(inflate(&payload), [HEAD, &cursor, TAIL].concat());
    }

    /// The reset compressor is as good as a fresh one: a part compressed
    /// after another refers to nothing before its own start.
    #[test]
    fn a_reset_compressor_forgets_what_it_compressed_before() {
        let fresh =
            |input: &[u8]| sync_flushed(&mut Compress::new(Compression::default(), false), input);
        COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            sync_flushed(&mut c, TAIL).unwrap();
            assert_eq!(sync_flushed(&mut c, TAIL), fresh(TAIL));
        });
    }

    #[test]
    fn what_compression_does_not_shrink_goes_plain() {
        let noise: Vec<u8> = (0u32..64)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert!(Deflated::compress(b"{", &noise).is_none());
    }
}
