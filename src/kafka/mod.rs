//! Everything that talks to Kafka: the ingest consumer and replay of older
//! ranges, both turning each message into an owned [`Record`] at the
//! boundary. Transports never reach in here.

pub mod ingest;
pub mod replay;

use std::sync::Arc;

use bytes::Bytes;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Headers};

use crate::config::KafkaConfig;
use crate::record::Record;

/// Copies a borrowed message into an owned [`Record`], once, at the
/// boundary: nothing borrowed from librdkafka outlives the poll that
/// returned it. `topic` is the interned name; headers are copied only when
/// some route reads them.
pub fn to_record(msg: &BorrowedMessage<'_>, topic: Arc<str>, with_headers: bool) -> Record {
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

/// Settings of every consumer Herald creates: `assign()`-only (the group id
/// is never joined and nothing is committed), the consumer's own `settings`,
/// then the `[kafka.options]` table, which is applied last and wins.
pub fn consumer_config(
    config: &KafkaConfig,
    role: &str,
    settings: &[(&str, String)],
) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.brokers)
        .set("client.id", &config.client_id)
        .set("group.id", format!("{}-{role}", config.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Larger fetches: with librdkafka's defaults (1 MiB per partition,
        // 100k queued messages) a consumer of 100-byte records stalls at
        // ~200k records/s on this class of machine; with these it reads
        // ~800k/s (herald-bench ingest). Prefetch memory stays bounded by
        // queued.max.messages.kbytes (64 MiB by default).
        .set("max.partition.fetch.bytes", "10485760");
    for (k, v) in settings {
        cc.set(*k, v);
    }
    for (k, v) in &config.options {
        cc.set(k, v);
    }
    cc
}
