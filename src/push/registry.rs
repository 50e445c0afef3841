//! The subscriptions topic: where `POST`/`DELETE /push/subscriptions`
//! write, and what every node's [`Store`] is rebuilt from and follows.
//!
//! One record per subscription, keyed by its id (hex), its value the
//! [`StoredSubscription`] JSON; a tombstone removes it. The topic is
//! compacted, so it holds the latest state of every subscription however
//! long it runs. Every node reads it from the beginning at start (sending
//! waits until it has reached the end: [`Registry::wait_loaded`]) and then
//! follows it, so a registration on one node reaches the others, and a
//! node killed and restarted has every subscription back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::store::{Store, StoredSubscription, SubscriptionId};
use crate::config::{KafkaConfig, PushConfig};
use crate::kafka::producer::RenewingProducer;
use crate::kafka::topics::{Ensured, cleanup_policy, ensure_compacted};
use crate::kafka::{BrokerWatch, EndIsNotAnError, ErrorEvents, consumer_config, producer_config};
use crate::metrics::Metrics;

/// How long a registration waits for Kafka's acknowledgement.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_TIMEOUT: Duration = Duration::from_millis(200);
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// Delay between attempts to create or find the topic while Kafka is
/// unreachable.
const RETRY: Duration = Duration::from_secs(2);

/// Why a write to the subscriptions topic failed.
#[derive(Debug, thiserror::Error)]
#[error("writing to the subscriptions topic failed: {0}")]
pub struct WriteError(KafkaError);

/// Writes to and follows the subscriptions topic.
pub struct Registry {
    /// Created again when librdkafka dropped every broker it knew (see
    /// [`crate::kafka::BrokerWatch`]) or after a fatal error.
    producer: RenewingProducer,
    metrics: Arc<Metrics>,
    topic: String,
    loaded: watch::Receiver<bool>,
    loaded_tx: watch::Sender<bool>,
}

impl Registry {
    pub fn new(
        kafka: &KafkaConfig,
        push: &PushConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Registry, KafkaError> {
        let mut cc = producer_config(
            kafka,
            "push-registry",
            &[
                ("message.timeout.ms", WRITE_TIMEOUT.as_millis().to_string()),
                ("linger.ms", "1".into()),
            ],
        );
        // A registration's order per key is its partition's order; the
        // Java client's partitioner keeps that whichever tool writes.
        cc.set("partitioner", "murmur2_random");
        let errors = Arc::new(ErrorEvents::new(metrics.clone()));
        let producer = RenewingProducer::new(kafka, cc, errors, "push registry producer")?;
        let (loaded_tx, loaded) = watch::channel(false);
        Ok(Registry {
            producer,
            metrics,
            topic: push.subscriptions_topic.clone(),
            loaded,
            loaded_tx,
        })
    }

    /// Writes a subscription (replacing any with the same endpoint), once
    /// Kafka acknowledged it.
    pub async fn write(
        &self,
        id: SubscriptionId,
        stored: &StoredSubscription,
    ) -> Result<(), WriteError> {
        let value = serde_json::to_vec(stored).expect("a subscription serialises");
        self.send(id, Some(&value)).await
    }

    /// Writes a tombstone for `id`.
    pub async fn remove(&self, id: SubscriptionId) -> Result<(), WriteError> {
        self.send(id, None).await
    }

    async fn send(&self, id: SubscriptionId, value: Option<&[u8]>) -> Result<(), WriteError> {
        let key = id.to_hex();
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic).key(&key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        let client = self.producer.current();
        let sent = client.producer.send(record, WRITE_TIMEOUT).await;
        sent.map(|_| ()).map_err(|(e, _)| {
            self.producer.failed(&client);
            WriteError(e)
        })
    }

    /// Whether the table holds everything the topic held when this node
    /// started.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Waits until [`Registry::is_loaded`].
    pub async fn wait_loaded(&self) {
        let mut loaded = self.loaded.clone();
        let _ = loaded.wait_for(|l| *l).await;
    }

    /// Creates the topic if missing, then follows it into `store` on a
    /// thread of its own until `shutdown`. The thread starts at once and
    /// serves the consumer's events (statistics, errors) while the topic
    /// is being made: unserved, they would pile up.
    pub fn follow(
        &self,
        kafka: &KafkaConfig,
        push: &PushConfig,
        store: Arc<Store>,
        shutdown: CancellationToken,
    ) -> Result<(), KafkaError> {
        let config = consumer_config(
            kafka,
            "push-registry",
            &[
                ("client.id", format!("{}-push-follower", kafka.client_id)),
                // The end of each partition is how "loaded" is known.
                ("enable.partition.eof", "true".into()),
                ("fetch.wait.max.ms", "100".into()),
                // A consumer created again resumes at the offsets the old
                // one reached; if the topic lost them (deleted and made
                // again), reading it all again is harmless: it is
                // compacted, and the last record per key wins.
                ("auto.offset.reset", "earliest".into()),
                // Feeds the BrokerWatch.
                (
                    "statistics.interval.ms",
                    kafka.stats_interval.as_millis().to_string(),
                ),
            ],
        );
        let follower = Follower {
            consumer: config.create_with_context(FollowerContext::default())?,
            config,
            // Its own: a WARN line for each client even when both are
            // created again within the log interval.
            errors: ErrorEvents::new(self.metrics.clone()),
            topic: push.subscriptions_topic.clone(),
            allowed: push.allowed_endpoint_hosts.clone(),
            allow_http: push.allow_http_endpoints,
            store,
            loaded: self.loaded_tx.clone(),
            refresh_every: kafka.metadata_refresh,
            next: HashMap::new(),
        };
        let topic_ready = Arc::new(AtomicBool::new(false));
        let ready = topic_ready.clone();
        let stop = shutdown.clone();
        std::thread::Builder::new()
            .name("herald-push-registry".into())
            .spawn(move || follower.run(&ready, stop))
            .map_err(|e| {
                KafkaError::ClientCreation(format!(
                    "cannot start the push subscriptions follower: {e}"
                ))
            })?;
        let kafka = kafka.clone();
        let push = push.clone();
        tokio::spawn(async move {
            ensure_topic(&kafka, &push, &shutdown).await;
            topic_ready.store(true, Ordering::Release);
        });
        Ok(())
    }
}

/// Creates the subscriptions topic when missing, retrying while Kafka
/// cannot be reached.
async fn ensure_topic(kafka: &KafkaConfig, push: &PushConfig, shutdown: &CancellationToken) {
    let topic = &push.subscriptions_topic;
    loop {
        let ensured = ensure_compacted(
            kafka,
            topic,
            push.subscriptions_topic_partitions,
            push.subscriptions_topic_replication,
        )
        .await;
        match ensured {
            Ok(Ensured::Created) => {
                tracing::info!(topic, "push subscriptions topic created (compacted)")
            }
            Ok(Ensured::Existed) => {
                // Checked beside the start, not before it: a broker may
                // take its whole timeout not to answer.
                let kafka = kafka.clone();
                let topic = topic.clone();
                tokio::spawn(async move {
                    match cleanup_policy(&kafka, &topic).await {
                        Some(policy) if !policy.split(',').any(|p| p.trim() == "compact") => {
                            tracing::error!(
                                topic,
                                policy,
                                "the push subscriptions topic is not compacted: retention will delete subscriptions; set cleanup.policy=compact on it"
                            )
                        }
                        _ => {}
                    }
                });
            }
            Err(e) => {
                tracing::warn!(
                    topic,
                    "cannot create or find the push subscriptions topic, retrying: {e}"
                );
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        }
        return;
    }
}

/// The follower's librdkafka callbacks: the end of a partition is how
/// "loaded" is known, not an error ([`EndIsNotAnError`]); statistics feed
/// its [`BrokerWatch`].
#[derive(Default)]
struct FollowerContext {
    brokers: BrokerWatch,
}

impl ClientContext for FollowerContext {
    fn stats(&self, stats: Statistics) {
        self.brokers.observe(&stats);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        EndIsNotAnError.error(error, reason);
    }
}

impl ConsumerContext for FollowerContext {}

struct Follower {
    consumer: BaseConsumer<FollowerContext>,
    /// What the consumer was created from, to create it again.
    config: ClientConfig,
    errors: ErrorEvents,
    topic: String,
    allowed: Vec<String>,
    allow_http: bool,
    store: Arc<Store>,
    loaded: watch::Sender<bool>,
    refresh_every: Duration,
    /// The offset after the last record read, per partition.
    next: HashMap<i32, i64>,
}

impl Follower {
    fn run(mut self, topic_ready: &AtomicBool, shutdown: CancellationToken) {
        while !topic_ready.load(Ordering::Acquire) {
            if shutdown.is_cancelled() {
                return;
            }
            let _ = self.consumer.poll(POLL_TIMEOUT);
        }
        let mut assigned: HashSet<i32> = HashSet::new();
        // Partitions not yet read to their end since start.
        let mut loading: HashSet<i32> = HashSet::new();
        let mut next_refresh = std::time::Instant::now();
        while !shutdown.is_cancelled() {
            if !self.consumer.context().brokers.knows_a_broker() {
                self.recreate_consumer(&assigned);
            }
            if std::time::Instant::now() >= next_refresh {
                next_refresh = std::time::Instant::now() + self.refresh_every;
                match self.assign_new(&mut assigned) {
                    Ok(new) if !*self.loaded.borrow() => loading.extend(new),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(topic = self.topic, "push subscriptions topic: {e}"),
                }
                if assigned.is_empty() {
                    // Nothing to read yet; still serve the events.
                    let _ = self.consumer.poll(POLL_TIMEOUT);
                    continue;
                }
            }
            match self.consumer.poll(POLL_TIMEOUT) {
                None => {}
                Some(Ok(msg)) => {
                    self.next.insert(msg.partition(), msg.offset() + 1);
                    let key = msg.key().map(String::from_utf8_lossy);
                    let Some(key) = key else {
                        tracing::warn!(
                            offset = msg.offset(),
                            "push subscriptions topic: a record without a key, skipped"
                        );
                        continue;
                    };
                    if let Err(reason) =
                        self.store
                            .apply(&key, msg.payload(), &self.allowed, self.allow_http)
                    {
                        tracing::warn!(
                            partition = msg.partition(),
                            offset = msg.offset(),
                            "push subscriptions topic: record skipped: {reason}"
                        );
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition)))
                    if loading.remove(&partition) && loading.is_empty() =>
                {
                    tracing::info!(
                        subscriptions = self.store.len(),
                        "push subscriptions loaded from {}",
                        self.topic
                    );
                    let _ = self.loaded.send(true);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => tracing::debug!("push subscriptions follower: {e}"),
            }
        }
    }

    /// librdkafka dropped every broker it knew ([`BrokerWatch`]): a new
    /// consumer, from the same config, goes on where this one stopped (a
    /// partition not read from yet, from its beginning). A partition still
    /// loading reports its end to the new one.
    fn recreate_consumer(&mut self, assigned: &HashSet<i32>) {
        let created = self
            .config
            .create_with_context::<_, BaseConsumer<FollowerContext>>(FollowerContext::default())
            .and_then(|consumer| {
                let mut at = TopicPartitionList::new();
                for p in assigned {
                    let offset = self
                        .next
                        .get(p)
                        .map_or(Offset::Beginning, |&o| Offset::Offset(o));
                    at.add_partition_offset(&self.topic, *p, offset)?;
                }
                consumer.incremental_assign(&at)?;
                Ok(consumer)
            });
        let (client, goes_on) = (
            "push subscriptions follower",
            "goes on at the offsets it had reached",
        );
        match created {
            Ok(consumer) => {
                self.errors.recreated(client, goes_on, Ok(()));
                self.consumer = consumer;
            }
            // Tried again on the next turn of the loop.
            Err(e) => self.errors.recreated(client, goes_on, Err(&e)),
        }
    }

    /// Assigns partitions of the topic not assigned yet, from their
    /// beginning; returns them.
    fn assign_new(&self, assigned: &mut HashSet<i32>) -> Result<Vec<i32>, KafkaError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), METADATA_TIMEOUT)?;
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == self.topic) else {
            return Ok(Vec::new());
        };
        if topic.error().is_some() {
            return Ok(Vec::new());
        }
        let new: Vec<i32> = topic
            .partitions()
            .iter()
            .map(|p| p.id())
            .filter(|p| !assigned.contains(p))
            .collect();
        if new.is_empty() {
            return Ok(new);
        }
        let mut tpl = TopicPartitionList::new();
        for p in &new {
            tpl.add_partition_offset(&self.topic, *p, Offset::Beginning)?;
        }
        self.consumer.incremental_assign(&tpl)?;
        assigned.extend(new.iter().copied());
        Ok(new)
    }
}
