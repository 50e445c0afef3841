//! A record published to one channel, and its wire envelope, encoded once
//! and shared by every subscriber.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};

use super::deflated::Deflated;
use super::positions::Positions;
use crate::record::Record;

/// What a WebSocket `message` frame has in place of the envelope's
/// opening `{`: its payload is this, `head[1..]`, the cursor, `tail`. Here
/// with the envelope because the compressed form of that payload is kept
/// with the publication ([`Publication::deflated`]).
pub const MESSAGE_OPENING: &[u8] = b"{\"type\":\"message\",";

pub struct Publication {
    /// Node-wide publication order. Subscribers see publications in this
    /// order, which keeps every partition in offset order.
    pub seq: u64,
    pub channel: Arc<str>,
    pub record: Arc<Record>,
    /// Ingest positions when this record's batch began: every record below
    /// them was published before this one. Lets a subscriber's cursor move
    /// past partitions that had nothing for it.
    pub positions: Arc<Positions>,
    /// When the hub received it; history age is measured from here.
    pub received: Instant,
    envelope: OnceLock<Envelope>,
    /// The WebSocket `message` payload compressed, made by the first
    /// connection with permessage-deflate that delivers it; `None` inside
    /// when compressing does not make it smaller.
    deflated: OnceLock<Option<Deflated>>,
}

/// The JSON envelope split around its `cursor` value, which differs per
/// subscriber: `head` + cursor + `tail` is one complete message. Both halves
/// are built once, on first use, and shared.
pub struct Envelope {
    /// `{"channel":"…","cursor":"`
    pub head: Bytes,
    /// `","topic":…,"data":…}`
    pub tail: Bytes,
}

impl Publication {
    pub fn new(
        seq: u64,
        channel: Arc<str>,
        record: Arc<Record>,
        positions: Arc<Positions>,
        received: Instant,
    ) -> Self {
        Publication {
            seq,
            channel,
            record,
            positions,
            received,
            envelope: OnceLock::new(),
            deflated: OnceLock::new(),
        }
    }

    /// Approximate memory held by this publication in history.
    pub fn size(&self) -> usize {
        // The record and its encoded envelope (about the same size again).
        // Not the compressed payload, made later if at all (and smaller
        // than the envelope): the size is counted once, when history
        // takes the publication.
        2 * self.record.size() + self.channel.len()
    }

    pub fn envelope(&self) -> &Envelope {
        self.envelope
            .get_or_init(|| Envelope::encode(&self.channel, &self.record))
    }

    /// The WebSocket `message` payload ([`MESSAGE_OPENING`], the envelope)
    /// compressed for permessage-deflate: compressed on the first call,
    /// the same bytes for every later one. `None` when it would not be
    /// smaller; the message then goes out plain.
    pub fn deflated(&self) -> Option<&Deflated> {
        self.deflated
            .get_or_init(|| {
                let e = self.envelope();
                // The envelope's head opens with `{`.
                let head = [MESSAGE_OPENING, &e.head[1..]].concat();
                Deflated::compress(&head, &e.tail)
            })
            .as_ref()
    }
}

impl Envelope {
    pub fn encode(channel: &str, record: &Record) -> Envelope {
        let mut head = Vec::with_capacity(channel.len() + 32);
        head.extend_from_slice(b"{\"channel\":");
        write_json_string(&mut head, channel);
        head.extend_from_slice(b",\"cursor\":\"");

        let payload_len = record.payload.as_ref().map_or(4, Bytes::len);
        let mut tail = BytesMut::with_capacity(payload_len + record.topic.len() + 128);
        tail.put_slice(b"\",\"topic\":");
        let mut scratch = Vec::new();
        write_json_string(&mut scratch, &record.topic);
        tail.put_slice(&scratch);
        tail.put_slice(
            format!(
                ",\"partition\":{},\"offset\":{},\"ts\":",
                record.partition, record.offset
            )
            .as_bytes(),
        );
        match record.timestamp {
            Some(ts) => tail.put_slice(ts.to_string().as_bytes()),
            None => tail.put_slice(b"null"),
        }
        tail.put_slice(b",\"key\":");
        let mut key_b64 = false;
        match record.key.as_deref() {
            None => tail.put_slice(b"null"),
            Some(k) => match std::str::from_utf8(k) {
                Ok(s) => {
                    scratch.clear();
                    write_json_string(&mut scratch, s);
                    tail.put_slice(&scratch);
                }
                Err(_) => {
                    key_b64 = true;
                    tail.put_u8(b'"');
                    tail.put_slice(STANDARD.encode(k).as_bytes());
                    tail.put_u8(b'"');
                }
            },
        }
        tail.put_slice(b",\"data\":");
        let mut data_b64 = false;
        match record.payload.as_deref() {
            None => tail.put_slice(b"null"),
            Some(p) if is_json(p) => {
                // Raw CR/LF in valid JSON can only be insignificant
                // whitespace (inside strings they must be escaped); a space
                // keeps the envelope on one line, as SSE requires.
                tail.extend(
                    p.iter()
                        .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
                );
            }
            Some(p) => match std::str::from_utf8(p) {
                Ok(s) => {
                    scratch.clear();
                    write_json_string(&mut scratch, s);
                    tail.put_slice(&scratch);
                }
                Err(_) => {
                    data_b64 = true;
                    tail.put_u8(b'"');
                    tail.put_slice(STANDARD.encode(p).as_bytes());
                    tail.put_u8(b'"');
                }
            },
        }
        if data_b64 {
            tail.put_slice(b",\"encoding\":\"base64\"");
        }
        if key_b64 {
            tail.put_slice(b",\"key_encoding\":\"base64\"");
        }
        tail.put_u8(b'}');
        Envelope {
            head: Bytes::from(head),
            tail: tail.freeze(),
        }
    }

    /// The complete envelope with a given cursor, as one JSON text.
    pub fn with_cursor(&self, cursor: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + cursor.len() + self.tail.len());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(cursor.as_bytes());
        out.extend_from_slice(&self.tail);
        out
    }
}

/// Valid JSON *and* UTF-8: serde_json skips over the bytes of strings it
/// ignores without checking them, and the envelope must stay UTF-8 (a
/// WebSocket text frame, an SSE stream).
fn is_json(payload: &[u8]) -> bool {
    std::str::from_utf8(payload).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
}

fn write_json_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing a string into memory cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(key: Option<&[u8]>, payload: Option<&[u8]>) -> serde_json::Value {
        let record = Record {
            topic: Arc::from("t"),
            partition: 1,
            offset: 7,
            timestamp: Some(1_700_000_000_000),
            key: key.map(Bytes::copy_from_slice),
            headers: vec![],
            payload: payload.map(Bytes::copy_from_slice),
        };
        let bytes = Envelope::encode("news", &record).with_cursor("hCUR");
        assert!(!bytes.contains(&b'\n'));
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn json_payload_is_embedded() {
        let v = envelope(
            Some(b"k1"),
            Some(b"{\"a\": [1,\n 2],\r\n \"s\": \"x\\ny\"}"),
        );
        assert_eq!(
            v,
            serde_json::json!({"channel":"news","cursor":"hCUR","topic":"t","partition":1,
                "offset":7,"ts":1_700_000_000_000i64,"key":"k1","data":{"a":[1,2],"s":"x\ny"}})
        );
    }

    #[test]
    fn text_payload_is_a_string() {
        let v = envelope(None, Some("héllo \"world\"\nbye".as_bytes()));
        assert_eq!(v["data"], "héllo \"world\"\nbye");
        assert_eq!(v["key"], serde_json::Value::Null);
        assert!(v.get("encoding").is_none());
    }

    #[test]
    fn binary_payload_is_base64() {
        let v = envelope(Some(&[0xff, 0x00]), Some(&[0xff, 0xfe, 0x00, 0x01]));
        assert_eq!(v["data"], "//4AAQ==");
        assert_eq!(v["encoding"], "base64");
        assert_eq!(v["key"], "/wA=");
        assert_eq!(v["key_encoding"], "base64");
    }

    #[test]
    fn json_with_invalid_utf8_is_base64() {
        let v = envelope(None, Some(b"{\"a\":\"\xff\"}"));
        assert_eq!(v["encoding"], "base64");
    }

    /// Compressed on the first call, the very same bytes after; they
    /// inflate to the plain `message` payload.
    #[test]
    fn the_compressed_payload_is_made_once() {
        let record = Record {
            topic: Arc::from("news"),
            partition: 2,
            offset: 7,
            timestamp: Some(1_700_000_000_000),
            key: Some(Bytes::from_static(b"k")),
            headers: vec![],
            payload: Some(Bytes::from_static(
                b"{\"headline\":\"Tick 7\",\"source\":\"herald dev\"}",
            )),
        };
        let p = Publication::new(
            0,
            Arc::from("news"),
            Arc::new(record),
            Arc::new(Positions::new()),
            Instant::now(),
        );
        let z = p.deflated().expect("smaller compressed");
        assert!(std::ptr::eq(z, p.deflated().unwrap()));
        let mut payload = Vec::new();
        z.write_with(&mut payload, b"hCUR");
        payload.extend_from_slice(&super::super::deflated::SYNC_FLUSH_TAIL);
        let mut inflated = Vec::with_capacity(1024);
        flate2::Decompress::new(false)
            .decompress_vec(&payload, &mut inflated, flate2::FlushDecompress::Sync)
            .unwrap();
        let e = p.envelope();
        assert_eq!(
            inflated,
            [MESSAGE_OPENING, &e.head[1..], b"hCUR", &e.tail].concat()
        );
    }

    #[test]
    fn tombstone_is_null() {
        let v = envelope(Some(b"k"), None);
        assert_eq!(v["data"], serde_json::Value::Null);
    }
}
