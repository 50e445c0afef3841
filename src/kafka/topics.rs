//! Topics Herald owns (today the Web Push subscriptions topic): created
//! when missing, checked when present.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::KafkaConfig;

const ADMIN_TIMEOUT: Duration = Duration::from_secs(20);

/// What [`ensure_compacted`] found or did.
#[derive(Debug, PartialEq, Eq)]
pub enum Ensured {
    Created,
    /// There already, with `cleanup.policy` including `compact`.
    Compacted,
    /// There already, with another `cleanup.policy` (the value): its
    /// records will be deleted by retention.
    NotCompacted(String),
    /// There already; its config could not be read (a broker that does
    /// not implement DescribeConfigs, such as librdkafka's mock cluster).
    Unchecked,
}

/// Creates `topic` with `cleanup.policy=compact` if it does not exist;
/// otherwise reports whether it is compacted.
pub async fn ensure_compacted(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<Ensured, KafkaError> {
    let mut cc = rdkafka::ClientConfig::new();
    cc.set("bootstrap.servers", &kafka.brokers)
        .set("client.id", format!("{}-admin", kafka.client_id));
    for (k, v) in &kafka.options {
        cc.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = cc.create()?;
    let options = AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT));
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
        .set("cleanup.policy", "compact");
    let results = admin.create_topics(&[new], &options).await?;
    match results.into_iter().next() {
        Some(Ok(_)) => return Ok(Ensured::Created),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {}
        Some(Err((_, code))) => return Err(KafkaError::AdminOp(code)),
        None => {
            return Err(KafkaError::AdminOpCreation(
                "no result for the topic".into(),
            ));
        }
    }
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
        .await;
    let Ok(described) = described else {
        return Ok(Ensured::Unchecked);
    };
    let Some(Ok(resource)) = described.into_iter().next() else {
        return Ok(Ensured::Unchecked);
    };
    match resource.get("cleanup.policy").and_then(|e| e.value.clone()) {
        Some(policy) if policy.split(',').any(|p| p.trim() == "compact") => Ok(Ensured::Compacted),
        Some(policy) => Ok(Ensured::NotCompacted(policy)),
        None => Ok(Ensured::Unchecked),
    }
}
