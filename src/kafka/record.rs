//! The owned form of a Kafka record, made once at the ingest boundary.

use std::sync::Arc;

use bytes::Bytes;
use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Headers};

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
    /// Copies a borrowed message. `topic` is the interned name; headers are
    /// copied only when some route reads them.
    pub fn from_message(msg: &BorrowedMessage<'_>, topic: Arc<str>, with_headers: bool) -> Self {
        let headers = match (with_headers, msg.headers()) {
            (true, Some(h)) => h
                .iter()
                .map(|h| (h.key.to_owned(), h.value.map(Bytes::copy_from_slice)))
                .collect(),
            _ => Vec::new(),
        };
        Record {
            topic,
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp: msg.timestamp().to_millis(),
            key: msg.key().map(Bytes::copy_from_slice),
            headers,
            payload: msg.payload().map(Bytes::copy_from_slice),
        }
    }

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
