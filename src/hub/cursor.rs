//! The cursor: the vector of *next* Kafka offsets, one per `(topic,
//! partition)` that feeds a subscription, in a compact opaque string.
//!
//! Wire form: the ASCII `h` (format version 1), then base64url without
//! padding of a byte string:
//!
//! ```text
//! varint topic_count
//! topic_count × { varint name_len, name bytes, varint part_count,
//!                 part_count × { varint partition, varint next_offset } }
//! ```
//!
//! Topics are sorted by name and partitions by number, so a position has
//! exactly one encoding. The string is URL-safe, has no newline and is short:
//! a three-partition topic costs about 30 characters.
//!
//! Decoding is strict: every malformation is a [`CursorError`] that says what
//! was wrong, so the HTTP layer can answer `400` instead of silently
//! resetting a client to the live end.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::record::is_valid_topic;

/// The leading character that names the format version. A future format gets
/// a new letter, and old cursors keep decoding.
const VERSION_PREFIX: char = 'h';

/// Upper bound on the encoded length. A cursor arrives in a URL or an HTTP
/// header; anything longer is not a cursor Herald issued (8 KiB covers a
/// subscription fed by roughly a thousand partitions).
pub const MAX_CURSOR_LEN: usize = 8 * 1024;

/// A decoded cursor: next offset per topic and partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    topics: BTreeMap<String, BTreeMap<i32, i64>>,
}

/// Why a cursor string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("cursor is empty")]
    Empty,
    #[error("cursor is {0} characters long; the limit is {MAX_CURSOR_LEN}")]
    TooLong(usize),
    #[error(
        "cursor does not start with the format marker `{VERSION_PREFIX}` (it starts with {0:?})"
    )]
    UnknownFormat(char),
    #[error("cursor is not valid base64url after its format marker")]
    NotBase64,
    #[error("cursor ends early: {0} is missing")]
    Truncated(&'static str),
    #[error("cursor has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    #[error("cursor names an invalid topic {0:?}")]
    BadTopic(String),
    #[error("cursor names topic {0:?} twice")]
    DuplicateTopic(String),
    #[error("cursor names partition {1} of topic {0:?} twice")]
    DuplicatePartition(String, i32),
    #[error("cursor names partition {1} of topic {0:?}, which is out of range")]
    BadPartition(String, u64),
    #[error("cursor holds offset {2} for {0}/{1}, which is out of range")]
    BadOffset(String, i32, u64),
}

impl Cursor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the next offset of one partition.
    pub fn set(&mut self, topic: &str, partition: i32, next_offset: i64) {
        self.topics
            .entry(topic.to_owned())
            .or_default()
            .insert(partition, next_offset);
    }

    /// The next offset held for a partition, if the cursor names it.
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.topics.get(topic)?.get(&partition).copied()
    }

    /// Topics named by the cursor, in order.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.topics.keys().map(String::as_str)
    }

    /// Every `(topic, partition, next_offset)`, sorted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.topics
            .iter()
            .flat_map(|(t, parts)| parts.iter().map(move |(p, o)| (t.as_str(), *p, *o)))
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Encodes the cursor in its wire form.
    pub fn encode(&self) -> String {
        let mut enc = Encoder::default();
        enc.topic_count(self.topics.len());
        for (topic, parts) in &self.topics {
            enc.topic(topic, parts.len());
            for (partition, offset) in parts {
                enc.partition(*partition, *offset);
            }
        }
        enc.finish()
    }

    /// Decodes and validates a cursor string.
    pub fn decode(s: &str) -> Result<Self, CursorError> {
        if s.is_empty() {
            return Err(CursorError::Empty);
        }
        if s.len() > MAX_CURSOR_LEN {
            return Err(CursorError::TooLong(s.len()));
        }
        let mut chars = s.chars();
        let first = chars.next().unwrap_or_default();
        if first != VERSION_PREFIX {
            return Err(CursorError::UnknownFormat(first));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(chars.as_str())
            .map_err(|_| CursorError::NotBase64)?;
        let mut r = Reader { buf: &bytes };
        let topic_count = r.varint("topic count")?;
        let mut topics = BTreeMap::new();
        for _ in 0..topic_count {
            let len = r.varint("topic name length")? as usize;
            let name = r.bytes(len, "topic name")?;
            let name = std::str::from_utf8(name)
                .ok()
                .filter(|n| is_valid_topic(n))
                .ok_or_else(|| CursorError::BadTopic(String::from_utf8_lossy(name).into()))?
                .to_owned();
            let part_count = r.varint("partition count")?;
            let mut parts = BTreeMap::new();
            for _ in 0..part_count {
                let p = r.varint("partition")?;
                let p = i32::try_from(p).map_err(|_| CursorError::BadPartition(name.clone(), p))?;
                let o = r.varint("offset")?;
                let o = i64::try_from(o).map_err(|_| CursorError::BadOffset(name.clone(), p, o))?;
                if parts.insert(p, o).is_some() {
                    return Err(CursorError::DuplicatePartition(name, p));
                }
            }
            if topics.contains_key(&name) {
                return Err(CursorError::DuplicateTopic(name));
            }
            topics.insert(name, parts);
        }
        if !r.buf.is_empty() {
            return Err(CursorError::TrailingBytes(r.buf.len()));
        }
        Ok(Cursor { topics })
    }
}

impl fmt::Display for Cursor {
    /// A readable form for logs and error messages: `topic/0@12,topic/1@7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (t, p, o) in self.iter() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{t}/{p}@{o}")?;
        }
        Ok(())
    }
}

/// Streaming encoder, so the hub can write a cursor straight from its own
/// position tables without building a [`Cursor`] first. Callers must feed
/// topics in name order and partitions in number order.
#[derive(Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// An encoder whose buffer holds `bytes` before it grows.
    pub fn with_capacity(bytes: usize) -> Self {
        Encoder {
            buf: Vec::with_capacity(bytes),
        }
    }

    pub fn topic_count(&mut self, n: usize) {
        self.varint(n as u64);
    }

    pub fn topic(&mut self, name: &str, partitions: usize) {
        self.varint(name.len() as u64);
        self.buf.extend_from_slice(name.as_bytes());
        self.varint(partitions as u64);
    }

    pub fn partition(&mut self, partition: i32, next_offset: i64) {
        self.varint(partition.max(0) as u64);
        self.varint(next_offset.max(0) as u64);
    }

    pub fn finish(self) -> String {
        let mut out = String::with_capacity(1 + self.buf.len().div_ceil(3) * 4);
        out.push(VERSION_PREFIX);
        URL_SAFE_NO_PAD.encode_string(&self.buf, &mut out);
        out
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self, what: &'static str) -> Result<u64, CursorError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or(CursorError::Truncated(what))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CursorError::Truncated(what))
    }

    fn bytes(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], CursorError> {
        if self.buf.len() < len {
            return Err(CursorError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_example() {
        let mut c = Cursor::new();
        c.set("orders", 0, 12);
        c.set("orders", 2, 0);
        c.set("orders", 1, 7_000_000_000);
        c.set("news", 0, 3);
        let s = c.encode();
        assert!(s.starts_with('h'));
        assert_eq!(Cursor::decode(&s).unwrap(), c);
        assert_eq!(
            c.to_string(),
            "news/0@3,orders/0@12,orders/1@7000000000,orders/2@0"
        );
    }

    #[test]
    fn empty_cursor_round_trips() {
        let c = Cursor::new();
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn malformed_cursors_name_the_problem() {
        assert_eq!(Cursor::decode(""), Err(CursorError::Empty));
        assert_eq!(Cursor::decode("x123"), Err(CursorError::UnknownFormat('x')));
        assert_eq!(Cursor::decode("h!!"), Err(CursorError::NotBase64));
        // One topic announced, nothing follows.
        assert_eq!(
            Cursor::decode(&format!("h{}", URL_SAFE_NO_PAD.encode([1u8]))),
            Err(CursorError::Truncated("topic name length"))
        );
        let mut enc = Encoder::default();
        enc.topic_count(1);
        enc.topic("bad topic", 0);
        assert_eq!(
            Cursor::decode(&enc.finish()),
            Err(CursorError::BadTopic("bad topic".into()))
        );
        let mut c = Cursor::new();
        c.set("t", 0, 1);
        let mut s = c.encode();
        s.push('A');
        assert!(Cursor::decode(&s).is_err());
        assert_eq!(
            Cursor::decode(&"h".repeat(MAX_CURSOR_LEN + 1)),
            Err(CursorError::TooLong(MAX_CURSOR_LEN + 1))
        );
    }

    #[test]
    fn duplicate_partitions_are_rejected() {
        let mut enc = Encoder::default();
        enc.topic_count(1);
        enc.topic("t", 2);
        enc.partition(0, 1);
        enc.partition(0, 2);
        assert_eq!(
            Cursor::decode(&enc.finish()),
            Err(CursorError::DuplicatePartition("t".into(), 0))
        );
    }

    fn topic_name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._-]{1,40}"
    }

    proptest! {
        #[test]
        fn any_position_round_trips(
            entries in proptest::collection::vec(
                (topic_name(), 0i32..10_000, 0i64..i64::MAX), 0..40)
        ) {
            let mut c = Cursor::new();
            for (t, p, o) in &entries {
                c.set(t, *p, *o);
            }
            let s = c.encode();
            prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(Cursor::decode(&s).unwrap(), c);
        }

        #[test]
        fn decoding_garbage_never_panics(s in "\\PC{0,200}") {
            let _ = Cursor::decode(&s);
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let s = format!("h{}", URL_SAFE_NO_PAD.encode(bytes));
            let _ = Cursor::decode(&s);
        }
    }
}
