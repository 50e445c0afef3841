//! The frames Herald encodes itself: unmasked, unfragmented text frames
//! written straight into a connection's output buffer — a `message` frame
//! compressed (RSV1) for a connection with permessage-deflate — and the
//! close reason cut to fit a control frame.

use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::hub::Delivery;
use crate::hub::publication::MESSAGE_OPENING;

/// Appends one unmasked, unfragmented text frame whose payload is `parts`
/// in order. Every part is UTF-8 (JSON Herald wrote, or the envelope,
/// which the hub encodes as UTF-8), so the frame is valid text.
pub(super) fn text_frame(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    text_head(out, false, len);
    for part in parts {
        debug_assert!(std::str::from_utf8(part).is_ok());
        out.extend_from_slice(part);
    }
}

/// The head of an unmasked, unfragmented text frame of `len` bytes
/// (RSV1 set for a compressed one), with room reserved for the payload.
fn text_head(out: &mut Vec<u8>, rsv1: bool, len: usize) {
    let header = FrameHeader {
        rsv1,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    out.reserve(header.len(len as u64) + len);
    header
        .format(len as u64, out)
        .expect("writing to a Vec cannot fail");
}

/// `{"type":"message",…envelope}`: the shared envelope around this
/// subscriber's cursor. With `deflate` (the connection negotiated
/// permessage-deflate) the publication's compressed payload around it,
/// in a frame with RSV1 set, unless compressing did not make it smaller.
pub(super) fn message_frame(out: &mut Vec<u8>, d: &Delivery, deflate: bool) {
    let cursor = d.cursor.as_bytes();
    if let Some(z) = deflate.then(|| d.publication.deflated()).flatten() {
        text_head(out, true, z.len_with(cursor.len()));
        z.write_with(out, cursor);
        return;
    }
    let e = d.publication.envelope();
    // The envelope's head opens with `{`.
    text_frame(out, &[MESSAGE_OPENING, &e.head[1..], cursor, &e.tail]);
}

/// `s` cut to at most `max` bytes on a character boundary (a close
/// frame's reason is at most 123 bytes).
pub(super) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_control_frame() {
        assert_eq!(truncate("é".repeat(100), 123).len(), 122);
        assert_eq!(truncate("ok".into(), 123), "ok");
    }
}
