//! The producer behind `POST /publish`: one idempotent `FutureProducer`
//! per node (`acks=all`), created only when `[publish]` is configured.
//!
//! A publish waits for Kafka's acknowledgement, bounded by
//! `publish.timeout` (the producer's `message.timeout.ms`, so librdkafka's
//! own retries stay inside it): the caller answers `200` only for a record
//! Kafka holds, at the partition and offset returned here. The record then
//! reaches subscribers like any other, through the ingest, on every node.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;

use super::{BrokerWatch, ErrorEvents, producer_config};
use crate::config::{KafkaConfig, PublishConfig};
use crate::metrics::Metrics;
use crate::router::ProduceTarget;

/// librdkafka callbacks of a [`RenewingProducer`]: client errors become
/// events (`herald_kafka_errors_total{kind}`, rate-limited log lines), and
/// statistics feed its [`BrokerWatch`].
pub(crate) struct WatchedContext {
    errors: Arc<ErrorEvents>,
    brokers: Arc<BrokerWatch>,
}

impl ClientContext for WatchedContext {
    fn stats(&self, stats: Statistics) {
        self.brokers.observe(&stats);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.client_error(error, reason);
    }
}

/// Where Kafka wrote a published record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Why a record was not (or not known to be) written.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// No acknowledgement within `publish.timeout`: Kafka may still have
    /// written the record, so a retry may produce it twice.
    #[error(
        "Kafka did not acknowledge the record within publish.timeout ({}); it may or may not have been written: {reason}",
        humantime::format_duration(*timeout)
    )]
    TimedOut { timeout: Duration, reason: String },
    /// Kafka or the producer cannot take records now (brokers down, the
    /// local queue full, not enough in-sync replicas); nothing was written.
    #[error("Kafka cannot take the record now: {0}")]
    Unavailable(KafkaError),
    /// Larger than the producer's `message.max.bytes` or the topic's limit.
    #[error("the record is larger than Kafka accepts: {0}")]
    TooLarge(KafkaError),
    /// Kafka refused the record for good (authorization, an unknown topic
    /// or partition, an invalid record): retrying will not help.
    #[error("Kafka refused the record: {0}")]
    Refused(KafkaError),
}

impl ProduceError {
    fn from_kafka(error: KafkaError, timeout: Duration) -> ProduceError {
        use RDKafkaErrorCode as Code;
        match error.rdkafka_error_code() {
            Some(Code::MessageTimedOut | Code::RequestTimedOut | Code::OperationTimedOut) => {
                ProduceError::TimedOut {
                    timeout,
                    reason: error.to_string(),
                }
            }
            Some(
                Code::MessageSizeTooLarge | Code::InvalidMessageSize | Code::MessageBatchTooLarge,
            ) => ProduceError::TooLarge(error),
            Some(
                Code::TopicAuthorizationFailed
                | Code::ClusterAuthorizationFailed
                | Code::TransactionalIdAuthorizationFailed
                | Code::UnknownTopic
                | Code::UnknownPartition
                | Code::UnknownTopicOrPartition
                | Code::InvalidRecord
                | Code::InvalidTopic
                | Code::InvalidRequiredAcks
                | Code::PolicyViolation,
            ) => ProduceError::Refused(error),
            _ => ProduceError::Unavailable(error),
        }
    }
}

/// A producer and its [`BrokerWatch`] (rdkafka keeps a future producer's
/// context to itself).
#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) producer: Arc<ClosedApart>,
    brokers: Arc<BrokerWatch>,
}

/// A producer that its last owner, wherever that is, does not wait for:
/// dropping one flushes (up to 500 ms) and joins its polling thread, which
/// must not happen on an async worker (the last owner of a replaced
/// producer is the send that found it failed).
pub(crate) struct ClosedApart(Option<FutureProducer<WatchedContext>>);

impl std::ops::Deref for ClosedApart {
    type Target = FutureProducer<WatchedContext>;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("taken only when dropped")
    }
}

impl Drop for ClosedApart {
    fn drop(&mut self) {
        if let Some(producer) = self.0.take() {
            // Should no thread start, it is closed here after all.
            let _ = std::thread::Builder::new()
                .name("herald-kafka-close".into())
                .spawn(move || drop(producer));
        }
    }
}

/// A long-lived producer that is created again, from the same config, when
/// it can take no more records: after a fatal error (an idempotent
/// producer that lost track of its sequence numbers refuses every later
/// record), and when librdkafka dropped every broker it knew
/// ([`BrokerWatch`]). The publish producer and the Web Push registry's.
pub(crate) struct RenewingProducer {
    /// Cloning it out is one reference count.
    client: Mutex<Client>,
    config: ClientConfig,
    errors: Arc<ErrorEvents>,
    /// What it is, for log lines ("publish producer").
    name: &'static str,
}

impl RenewingProducer {
    /// Creates the producer from `config` (its statistics, which feed the
    /// watch, every `kafka.stats_interval` unless `[kafka.options]` says
    /// otherwise). It connects in the background.
    pub(crate) fn new(
        kafka: &KafkaConfig,
        mut config: ClientConfig,
        errors: Arc<ErrorEvents>,
        name: &'static str,
    ) -> Result<RenewingProducer, KafkaError> {
        if !kafka.options.contains_key("statistics.interval.ms") {
            config.set(
                "statistics.interval.ms",
                kafka.stats_interval.as_millis().to_string(),
            );
        }
        let client = Self::create(&config, &errors)?;
        Ok(RenewingProducer {
            client: Mutex::new(client),
            config,
            errors,
            name,
        })
    }

    fn create(config: &ClientConfig, errors: &Arc<ErrorEvents>) -> Result<Client, KafkaError> {
        let brokers = Arc::new(BrokerWatch::new());
        let producer = config.create_with_context(WatchedContext {
            errors: errors.clone(),
            brokers: brokers.clone(),
        })?;
        Ok(Client {
            producer: Arc::new(ClosedApart(Some(producer))),
            brokers,
        })
    }

    /// The producer to send with: a new one first when the current one
    /// knows no broker any more.
    pub(crate) fn current(&self) -> Client {
        let client = self.client.lock().clone();
        if client.brokers.knows_a_broker() {
            return client;
        }
        self.renew(&client, BrokerWatch::KIND, BrokerWatch::CAUSE);
        self.client.lock().clone()
    }

    /// After a send through `used` failed: a producer that failed fatally
    /// is replaced.
    pub(crate) fn failed(&self, used: &Client) {
        if let Some((code, reason)) = used.producer.client().fatal_error() {
            let why = format!("the producer failed fatally ({code:?}: {reason})");
            self.renew(used, "fatal", &why);
        }
    }

    /// Replaces a producer that can take no more records (once, whichever
    /// send notices first). Records still on their way in the old one end
    /// as their own send says.
    fn renew(&self, failed: &Client, kind: &str, why: &str) {
        let mut current = self.client.lock();
        if !std::ptr::eq(current.producer.client(), failed.producer.client()) {
            return; // already replaced
        }
        // Counted under `kind` once a new one exists, as the consumers
        // count theirs; a failed attempt (tried again at the next send)
        // under "client".
        match Self::create(&self.config, &self.errors) {
            Ok(fresh) => {
                *current = fresh;
                self.errors
                    .report(kind, &format!("{}: {why}; created a new one", self.name));
            }
            Err(e) => self.errors.report(
                "client",
                &format!("{}: {why}, and a new one cannot be created: {e}", self.name),
            ),
        }
    }

    /// Waits (at most `timeout`) for records still on their way to Kafka.
    pub(crate) fn flush(&self, timeout: Duration) {
        let client = self.client.lock().clone();
        if let Err(e) = client.producer.flush(timeout) {
            tracing::warn!("{}: records still unsent at shutdown: {e}", self.name);
        }
    }
}

/// The node's publish producer.
pub struct Publisher {
    producer: RenewingProducer,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

impl Publisher {
    /// Creates the producer. It connects in the background: a broker that is
    /// down shows as `503` on the first publishes, not as a failed start.
    pub fn new(
        kafka: &KafkaConfig,
        publish: &PublishConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Publisher, KafkaError> {
        let config = producer_config(
            kafka,
            "publish",
            &[
                // The whole delivery, retries included, within the bound
                // a publish waits.
                (
                    "message.timeout.ms",
                    publish.timeout.as_millis().to_string(),
                ),
                // The Java client's partitioner: a key lands on the same
                // partition whether Herald or a Java producer wrote it, so
                // per-key order holds across both.
                ("partitioner", "murmur2_random".into()),
                // A publish is one record that someone waits for.
                ("linger.ms", "1".into()),
            ],
        );
        let errors = Arc::new(ErrorEvents::new(metrics.clone()));
        Ok(Publisher {
            producer: RenewingProducer::new(kafka, config, errors, "publish producer")?,
            metrics,
            timeout: publish.timeout,
        })
    }

    /// Produces `payload` where `target` says and waits for Kafka's
    /// acknowledgement, at most `publish.timeout`.
    pub async fn produce(
        &self,
        target: &ProduceTarget,
        payload: &[u8],
    ) -> Result<Produced, ProduceError> {
        let client = self.producer.current();
        let producer = &client.producer;
        let mut record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(&target.topic).payload(payload);
        if let Some(key) = &target.key {
            record = record.key(key.as_str());
        }
        if !target.headers.is_empty() {
            let headers =
                target
                    .headers
                    .iter()
                    .fold(OwnedHeaders::new(), |headers, (name, value)| {
                        headers.insert(Header {
                            key: name,
                            value: Some(value.as_str()),
                        })
                    });
            record = record.headers(headers);
        }
        // librdkafka ends the delivery by message.timeout.ms; the outer
        // bound also covers the wait for room in a full local queue.
        let sent = tokio::time::timeout(self.timeout, producer.send(record, self.timeout)).await;
        let result = match sent {
            Err(_) => Err(ProduceError::TimedOut {
                timeout: self.timeout,
                reason: "no delivery report in time".into(),
            }),
            Ok(Ok(delivery)) => Ok(Produced {
                topic: target.topic.clone(),
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((error, _))) => Err(ProduceError::from_kafka(error, self.timeout)),
        };
        match &result {
            Ok(_) => self
                .metrics
                .published
                .with_label_values(&[&target.topic])
                .inc(),
            Err(_) => self.producer.failed(&client),
        }
        result
    }

    /// Waits (at most `timeout`) for records still on their way to Kafka.
    pub fn flush(&self, timeout: Duration) {
        self.producer.flush(timeout);
    }
}
