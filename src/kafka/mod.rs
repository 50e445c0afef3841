//! Everything that talks to Kafka: the ingest consumer, replay of older
//! ranges, and the owned record type they produce. Transports never reach in
//! here.

pub mod ingest;
pub mod record;
pub mod replay;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

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
