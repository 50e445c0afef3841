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
//! Each varint is unsigned LEB128 in the fewest bytes (at most 10), topics
//! are in strictly increasing byte order of their names, each with at least
//! one partition, partitions in strictly increasing number order, and
//! nothing follows the last one. So a position has exactly one encoding,
//! and decoding accepts that one only: for every string `s`,
//! `Cursor::decode(s)` succeeds only if `Cursor::decode(s)?.encode() == s`.
//! The string is URL-safe, has no newline and is short: a three-partition
//! topic costs about 30 characters.
//!
//! Decoding is strict: every malformation is a [`CursorError`] that says what
//! was wrong, so the HTTP layer can answer `400 invalid_cursor` instead of
//! silently resetting a client to the live end. A string longer than
//! [`MAX_CURSOR_LEN`] is refused unread, so what decoding allocates is
//! bounded by that.

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
    #[error("cursor is {0} bytes long; the limit is {MAX_CURSOR_LEN}")]
    TooLong(usize),
    #[error(
        "cursor does not start with the format marker `{VERSION_PREFIX}` (it starts with {0:?})"
    )]
    UnknownFormat(char),
    #[error("cursor is not valid base64url after its format marker")]
    NotBase64,
    #[error("cursor ends early: {0} is missing")]
    Truncated(&'static str),
    #[error("cursor writes its {0} in more bytes than it needs")]
    Overlong(&'static str),
    #[error("cursor holds a {0} that does not fit in 64 bits")]
    Overflow(&'static str),
    #[error("cursor has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    #[error("cursor names an invalid topic {0:?}")]
    BadTopic(String),
    #[error("cursor names topic {0:?} twice")]
    DuplicateTopic(String),
    #[error("cursor names topic {1:?} after {0:?}; topics are in name order")]
    TopicOutOfOrder(String, String),
    #[error("cursor names topic {0:?} with no partition")]
    NoPartition(String),
    #[error("cursor names partition {1} of topic {0:?} twice")]
    DuplicatePartition(String, i32),
    #[error(
        "cursor names partition {2} of topic {0:?} after partition {1}; partitions are in number order"
    )]
    PartitionOutOfOrder(String, i32, i32),
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

    /// Encodes the cursor in its wire form, the one [`Cursor::decode`]
    /// accepts. A negative partition or offset (never a Kafka position)
    /// is written as 0.
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
        let mut topics: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        // Each topic and partition takes at least one byte, so these loops
        // end with the bytes whatever the counts say.
        for _ in 0..topic_count {
            let len = r.varint("topic name length")? as usize;
            let name = r.bytes(len, "topic name")?;
            let name = std::str::from_utf8(name)
                .ok()
                .filter(|n| is_valid_topic(n))
                .ok_or_else(|| CursorError::BadTopic(String::from_utf8_lossy(name).into()))?
                .to_owned();
            if let Some((last, _)) = topics.last_key_value()
                && *last >= name
            {
                return Err(if *last == name {
                    CursorError::DuplicateTopic(name)
                } else {
                    CursorError::TopicOutOfOrder(last.clone(), name)
                });
            }
            let part_count = r.varint("partition count")?;
            if part_count == 0 {
                return Err(CursorError::NoPartition(name));
            }
            let mut parts = BTreeMap::new();
            for _ in 0..part_count {
                let p = r.varint("partition")?;
                let p = i32::try_from(p).map_err(|_| CursorError::BadPartition(name.clone(), p))?;
                let o = r.varint("offset")?;
                let o = i64::try_from(o).map_err(|_| CursorError::BadOffset(name.clone(), p, o))?;
                if let Some((&last, _)) = parts.last_key_value()
                    && last >= p
                {
                    return Err(if last == p {
                        CursorError::DuplicatePartition(name, p)
                    } else {
                        CursorError::PartitionOutOfOrder(name, last, p)
                    });
                }
                parts.insert(p, o);
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
    /// An unsigned LEB128 varint in its shortest form: a last byte of 0
    /// after others adds nothing (overlong), and the tenth byte can only
    /// hold bit 63.
    fn varint(&mut self, what: &'static str) -> Result<u64, CursorError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or(CursorError::Truncated(what))?;
            self.buf = rest;
            if i == 9 && b > 1 {
                return Err(CursorError::Overflow(what));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(CursorError::Overlong(what));
                }
                return Ok(v);
            }
        }
        // Not reached: a tenth byte of 0 or 1 ends the varint.
        Err(CursorError::Overflow(what))
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

    /// How a generated varint is written.
    #[derive(Debug, Clone, Copy)]
    enum Form {
        /// As Herald writes it.
        Minimal,
        /// With this many needless continuation bytes.
        Overlong(usize),
        /// In ten bytes, the last one this. Never canonical here: only
        /// numbers from 2^63 need ten bytes, and none of them is a
        /// partition or an offset.
        TenBytes(u8),
    }

    /// The parts of a cursor's byte string, written with chosen varint
    /// forms: the generator of near misses.
    #[derive(Debug, Clone)]
    struct RawCursor {
        topics: Vec<(String, Vec<(u64, u64)>)>,
        forms: Vec<Form>,
        trailing: Vec<u8>,
    }

    impl RawCursor {
        fn bytes(&self) -> Vec<u8> {
            let mut forms = self.forms.iter().copied().cycle();
            let mut out = Vec::new();
            let mut put = |v: u64, out: &mut Vec<u8>| {
                put_varint(v, forms.next().unwrap_or(Form::Minimal), out)
            };
            put(self.topics.len() as u64, &mut out);
            for (name, parts) in &self.topics {
                put(name.len() as u64, &mut out);
                out.extend_from_slice(name.as_bytes());
                put(parts.len() as u64, &mut out);
                for (p, o) in parts {
                    put(*p, &mut out);
                    put(*o, &mut out);
                }
            }
            out.extend_from_slice(&self.trailing);
            out
        }

        /// Whether these are the bytes Herald writes for some cursor.
        fn is_canonical(&self) -> bool {
            let numbers = 1 + self
                .topics
                .iter()
                .map(|(_, p)| 2 + 2 * p.len())
                .sum::<usize>();
            let forms = self.forms.iter().cycle().take(numbers);
            forms.into_iter().all(|f| matches!(f, Form::Minimal))
                && self.trailing.is_empty()
                && self.topics.windows(2).all(|w| w[0].0 < w[1].0)
                && self.topics.iter().all(|(name, parts)| {
                    is_valid_topic(name)
                        && !parts.is_empty()
                        && parts.windows(2).all(|w| w[0].0 < w[1].0)
                        && parts
                            .iter()
                            .all(|(p, o)| *p <= i32::MAX as u64 && *o <= i64::MAX as u64)
                })
        }
    }

    fn put_varint(mut v: u64, form: Form, out: &mut Vec<u8>) {
        let mut groups = Vec::new();
        loop {
            groups.push((v & 0x7f) as u8);
            v >>= 7;
            if v == 0 {
                break;
            }
        }
        match form {
            Form::Minimal => {}
            Form::Overlong(extra) => groups.extend(std::iter::repeat_n(0, extra)),
            Form::TenBytes(last) => {
                groups.resize(10, 0);
                groups[9] = last & 0x7f;
            }
        }
        let n = groups.len();
        for (i, g) in groups.into_iter().enumerate() {
            out.push(if i + 1 < n { g | 0x80 } else { g });
        }
    }

    fn raw_cursor() -> impl Strategy<Value = RawCursor> {
        let form = prop_oneof![
            12 => Just(Form::Minimal),
            1 => (1usize..4).prop_map(Form::Overlong),
            1 => (0u8..128).prop_map(Form::TenBytes),
        ];
        let number = prop_oneof![
            0u64..300,
            any::<u64>(),
            Just(i32::MAX as u64 + 1),
            Just(i64::MAX as u64 + 1)
        ];
        // Few names and partitions, so that repeats and disorder are common.
        let name = prop_oneof![8 => "[ab]{1,2}", 1 => Just("bad topic".to_owned()), 1 => Just(String::new())];
        let part = (prop_oneof![0u64..4, number.clone()], number);
        let topic = (name, proptest::collection::vec(part, 0..4));
        (
            proptest::collection::vec(topic, 0..4),
            proptest::collection::vec(form, 1..40),
            prop_oneof![8 => Just(Vec::new()), 1 => proptest::collection::vec(any::<u8>(), 1..3)],
        )
            .prop_map(|(topics, forms, trailing)| RawCursor {
                topics,
                forms,
                trailing,
            })
    }

    /// `h` and the base64url of `bytes`.
    fn wire(bytes: &[u8]) -> String {
        format!("h{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    #[test]
    fn only_the_shortest_varint_is_accepted() {
        // One topic "a", partition 0 at offset 5: [1, 1, 'a', 1, 0, 5].
        assert_eq!(
            Cursor::decode(&wire(&[1, 1, b'a', 1, 0, 5]))
                .unwrap()
                .get("a", 0),
            Some(5)
        );
        assert_eq!(
            Cursor::decode(&wire(&[0x81, 0x00, 1, b'a', 1, 0, 5])),
            Err(CursorError::Overlong("topic count"))
        );
        assert_eq!(
            Cursor::decode(&wire(&[1, 1, b'a', 1, 0, 0x85, 0x80, 0x00])),
            Err(CursorError::Overlong("offset"))
        );
        // The empty cursor, its count written in two bytes.
        assert_eq!(
            Cursor::decode(&wire(&[0x80, 0x00])),
            Err(CursorError::Overlong("topic count"))
        );
        // Bit 63 needs a tenth byte of 1; anything more is past 64 bits
        // (and was dropped before: 0x02 here decoded as offset 0).
        let mut ten = vec![1, 1, b'a', 1, 0];
        ten.extend([0x80; 9]);
        ten.push(0x02);
        assert_eq!(
            Cursor::decode(&wire(&ten)),
            Err(CursorError::Overflow("offset"))
        );
        *ten.last_mut().unwrap() = 0x01;
        assert_eq!(
            Cursor::decode(&wire(&ten)),
            Err(CursorError::BadOffset("a".into(), 0, 1 << 63))
        );
        let mut c = Cursor::new();
        c.set("a", 0, i64::MAX);
        assert_eq!(Cursor::decode(&c.encode()), Ok(c));
    }

    #[test]
    fn topics_and_partitions_are_accepted_in_order_only() {
        assert_eq!(
            Cursor::decode(&wire(&[2, 1, b'b', 1, 0, 0, 1, b'a', 1, 0, 0])),
            Err(CursorError::TopicOutOfOrder("b".into(), "a".into()))
        );
        assert_eq!(
            Cursor::decode(&wire(&[2, 1, b'a', 1, 0, 0, 1, b'a', 1, 1, 0])),
            Err(CursorError::DuplicateTopic("a".into()))
        );
        assert_eq!(
            Cursor::decode(&wire(&[1, 1, b'a', 2, 1, 0, 0, 0])),
            Err(CursorError::PartitionOutOfOrder("a".into(), 1, 0))
        );
        assert_eq!(
            Cursor::decode(&wire(&[1, 1, b'a', 0])),
            Err(CursorError::NoPartition("a".into()))
        );
    }

    #[test]
    fn only_unpadded_base64url_with_zero_spare_bits_is_accepted() {
        assert_eq!(Cursor::decode("hAA"), Ok(Cursor::new()));
        for s in [
            "hAA=", "hAA==", "hAB", "hAP", "hA", "hA+A", "hA/A", "hA A", "hAA\n",
        ] {
            assert_eq!(Cursor::decode(s), Err(CursorError::NotBase64), "{s}");
        }
        assert_eq!(
            Cursor::decode(&wire(&[0, 0])),
            Err(CursorError::TrailingBytes(1))
        );
    }

    /// Short names often (so that topics collide and sort), any valid
    /// name, and the longest.
    fn topic_name() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => "[a-c]{1,2}",
            2 => "[a-zA-Z0-9._-]{1,40}",
            1 => Just("x".repeat(249)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every position decodes back to itself, whether the hub writes it
        /// from its position table or from a [`Cursor`], and both write
        /// the same string.
        #[test]
        fn any_position_round_trips(
            entries in proptest::collection::vec(
                (topic_name(), prop_oneof![0i32..64, 0..=i32::MAX], prop_oneof![0i64..1000, 0..=i64::MAX]),
                0..16,
            )
        ) {
            let mut c = Cursor::new();
            for (t, p, o) in &entries {
                c.set(t, *p, *o);
            }
            let s = c.encode();
            prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(Cursor::decode(&s).unwrap(), c.clone());
            // Positions index partitions in a vector: small numbers only.
            let mut positions = super::super::positions::Positions::new();
            let mut small = Cursor::new();
            for (t, p, o) in &entries {
                let p = p % 64;
                positions.set(&std::sync::Arc::from(t.as_str()), p, *o);
                small.set(t, p, *o);
            }
            prop_assert_eq!(positions.encode_cursor(), small.encode());
        }

        /// A cursor longer than [`MAX_CURSOR_LEN`] is refused unread,
        /// naming the limit; one within it is read.
        #[test]
        fn only_a_cursor_over_the_limit_is_too_long(extra in 0usize..64, over in any::<bool>()) {
            let len = if over { MAX_CURSOR_LEN + 1 + extra } else { MAX_CURSOR_LEN - extra };
            let s = format!("h{}", "A".repeat(len - 1));
            match Cursor::decode(&s) {
                Err(CursorError::TooLong(n)) => {
                    prop_assert!(over);
                    prop_assert_eq!(n, len);
                    let message = CursorError::TooLong(n).to_string();
                    prop_assert!(message.contains(&MAX_CURSOR_LEN.to_string()), "{}", message);
                }
                _ => prop_assert!(!over),
            }
        }

        /// Decoding accepts exactly one encoding of each cursor: whatever
        /// bytes decode, encoding the result gives the same string back.
        /// The bytes are near misses of real cursors (overlong varints, a
        /// 10th varint byte, unsorted or repeated topics and partitions,
        /// empty topics, trailing bytes), and they decode exactly when
        /// they are the canonical form.
        #[test]
        fn only_the_canonical_encoding_decodes(raw in raw_cursor()) {
            let s = format!("h{}", URL_SAFE_NO_PAD.encode(raw.bytes()));
            match Cursor::decode(&s) {
                Ok(c) => {
                    prop_assert!(raw.is_canonical(), "non-canonical {raw:?} decoded to {c}");
                    prop_assert_eq!(c.encode(), s);
                }
                Err(e) => prop_assert!(!raw.is_canonical(), "canonical {raw:?} refused: {e}"),
            }
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
