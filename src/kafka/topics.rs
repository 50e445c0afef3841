//! Topics Herald owns (today the Web Push subscriptions topic): created
//! when missing, checked when present.

use std::sync::Arc;
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
    /// There already (see [`cleanup_policy`]).
    Existed,
}

fn admin(kafka: &KafkaConfig) -> Result<Arc<AdminClient<DefaultClientContext>>, KafkaError> {
    let mut cc = rdkafka::ClientConfig::new();
    cc.set("bootstrap.servers", &kafka.brokers)
        .set("client.id", format!("{}-admin", kafka.client_id));
    for (k, v) in &kafka.options {
        cc.set(k, v);
    }
    Ok(Arc::new(cc.create()?))
}

fn options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT))
}

/// Whether the brokers' metadata has `topic` with partitions.
async fn exists(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    topic: &str,
) -> Result<bool, KafkaError> {
    let admin = admin.clone();
    let name = topic.to_owned();
    let metadata = tokio::task::spawn_blocking(move || {
        admin.inner().fetch_metadata(Some(&name), ADMIN_TIMEOUT)
    })
    .await
    .map_err(|_| KafkaError::MetadataFetch(RDKafkaErrorCode::Fail))?;
    let metadata = metadata?;
    Ok(metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
}

/// Creates `topic` with `cleanup.policy=compact` if it does not exist.
pub async fn ensure_compacted(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<Ensured, KafkaError> {
    let admin = admin(kafka)?;
    // Looked up first: a broker that cannot create topics (no CreateTopics
    // ACL, or librdkafka's mock cluster, which never answers) may have it.
    if exists(&admin, topic).await? {
        return Ok(Ensured::Existed);
    }
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
        .set("cleanup.policy", "compact");
    let results = admin.create_topics(&[new], &options()).await?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(Ensured::Created),
        // Created by another node a moment ago.
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(Ensured::Existed),
        Some(Err((_, code))) => Err(KafkaError::AdminOp(code)),
        None => Err(KafkaError::AdminOpCreation(
            "no result for the topic".into(),
        )),
    }
}

/// The topic's `cleanup.policy`; `None` when the broker does not say (one
/// that does not implement DescribeConfigs, such as librdkafka's mock
/// cluster, which may take the whole admin timeout not to).
pub async fn cleanup_policy(kafka: &KafkaConfig, topic: &str) -> Option<String> {
    let admin = admin(kafka).ok()?;
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options())
        .await
        .ok()?;
    let resource = described.into_iter().next()?.ok()?;
    resource.get("cleanup.policy").and_then(|e| e.value.clone())
}
