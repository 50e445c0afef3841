//! The owned form of a Kafka record, and Kafka's rule for topic names.
//!
//! It sits below everything that handles records: the ingest and replay
//! (`kafka`) make one from each message they read
//! ([`kafka::to_record`](crate::kafka::to_record)), the router maps it to
//! channels, the hub keeps and fans it out. Nothing here knows librdkafka.

use std::sync::Arc;

use bytes::Bytes;

/// One Kafka record, owned: nothing borrowed from librdkafka outlives the
/// poll that returned it.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// Kafka timestamp in milliseconds since the epoch, when the record has one.
    pub timestamp: Option<i64>,
    pub key: Option<Bytes>,
    /// Header values; a header with a null value is kept with `None`.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// `None` for a tombstone (null value).
    pub payload: Option<Bytes>,
}

impl Record {
    /// Approximate heap cost, for history accounting.
    pub fn size(&self) -> usize {
        const OVERHEAD: usize = 96;
        OVERHEAD
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.payload.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len) + 32)
                .sum::<usize>()
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// Kafka topic names are at most 249 characters of `[a-zA-Z0-9._-]`.
const MAX_TOPIC_LEN: usize = 249;

/// Kafka's rule for topic names: what a route's `topic` and a cursor's
/// topics must satisfy.
pub fn is_valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
