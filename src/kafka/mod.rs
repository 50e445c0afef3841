//! Everything that talks to Kafka: the ingest consumer and the owned record
//! type it produces. Transports never reach in here.

pub mod ingest;
pub mod record;
pub mod replay;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// Client settings shared by every Kafka client Herald creates; the
/// `[kafka.options]` table is applied last and wins.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.brokers)
        .set("client.id", &config.client_id);
    for (k, v) in &config.options {
        cc.set(k, v);
    }
    cc
}
