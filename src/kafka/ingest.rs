//! The ingest: one Kafka consumer per node, `assign()`ed to every partition
//! of every routed topic (no consumer group: every node sees every record).
//!
//! It runs on its own OS thread with rdkafka's `BaseConsumer`: polling is a
//! blocking call, and a plain loop hands each record to the router and the
//! hub with no channel hop in between. Each record is copied into an owned
//! [`Record`] at once; nothing borrowed from librdkafka outlives the poll.
//!
//! Topic metadata is re-read every `kafka.metadata_refresh` to pick up new
//! topics (for `topic_regex` routes) and new partitions. Partitions known at
//! start-up begin at `kafka.start`; partitions found later begin at their
//! low watermark, so nothing produced to them is missed.
//!
//! **Never a silent skip.** The consumer runs with `auto.offset.reset=error`:
//! when Kafka deletes records (retention, delete-records) before the ingest
//! has read them, librdkafka stops the partition and says so instead of
//! jumping to its end. The ingest then finds which partitions are below
//! their low watermark, tells the hub what was lost (every subscriber gets a
//! gap), counts it in `herald_ingest_resets_total` and goes on at the low
//! watermark.
//!
//! **Never a silent stall.** When librdkafka has dropped every broker it
//! knew (see [`BrokerWatch`]), the ingest creates its consumer again from
//! `kafka.brokers`, assigned at the positions it had reached: nothing is
//! skipped or read twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{BrokerWatch, ErrorEvents};
use crate::config::{KafkaConfig, StartAt};
use crate::hub::positions::Positions;
use crate::hub::{Hub, PartitionRange};
use crate::metrics::{Metrics, Watermarks};
use crate::record::Record;

/// Longest a poll waits for a record; bounds how fast the loop notices
/// shutdown and a due metadata refresh.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// Records taken per batch before the hub's positions are updated. Larger
/// batches cost less, smaller ones keep live-start cursors fresher.
const MAX_BATCH: usize = 1024;
/// Shortest time between two metadata refreshes asked for by subscriptions
/// (see `Hub::take_refresh_request`): what a flood of cursors naming
/// partitions that do not exist can cost the brokers.
const MIN_ASKED_REFRESH: Duration = Duration::from_secs(1);
/// Timeout of metadata and watermark requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// librdkafka callbacks: statistics (watermarks) and client errors.
struct IngestContext {
    watermarks: Arc<Watermarks>,
    errors: ErrorEvents,
    brokers: BrokerWatch,
}

impl IngestContext {
    fn new(watermarks: Arc<Watermarks>, metrics: Arc<Metrics>) -> IngestContext {
        IngestContext {
            watermarks,
            errors: ErrorEvents::new(metrics),
            brokers: BrokerWatch::new(),
        }
    }

    fn report(&self, kind: &str, message: &str) {
        self.errors.report(kind, message);
    }
}

impl ClientContext for IngestContext {
    fn stats(&self, stats: Statistics) {
        self.brokers.observe(&stats);
        self.watermarks
            .update(stats.topics.into_iter().flat_map(|(topic, t)| {
                t.partitions
                    .into_iter()
                    .filter(|(partition, p)| *partition >= 0 && p.hi_offset >= 0)
                    .map(move |(partition, p)| {
                        ((topic.clone(), partition), (p.lo_offset, p.hi_offset))
                    })
            }));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.client_error(error, reason);
    }
}

impl ConsumerContext for IngestContext {}

/// Starts the ingest thread. Fails at once if the consumer cannot be
/// created (bad `[kafka.options]`).
pub fn spawn(
    config: &KafkaConfig,
    hub: Hub,
    metrics: Arc<Metrics>,
    watermarks: Arc<Watermarks>,
    shutdown: CancellationToken,
) -> KafkaResult<JoinHandle<()>> {
    let context = IngestContext::new(watermarks, metrics.clone());
    let mut cc = super::consumer_config(
        config,
        "ingest",
        &[
            ("enable.partition.eof", "false".into()),
            // Low latency when traffic is light.
            ("fetch.wait.max.ms", "20".into()),
            ("fetch.max.bytes", "104857600".into()),
            ("queued.min.messages", "1000000".into()),
            (
                "statistics.interval.ms",
                config.stats_interval.as_millis().to_string(),
            ),
        ],
    );
    // Last, over [kafka.options] (config validation refuses the key there):
    // what the ingest relies on to never skip records without a word.
    cc.set("auto.offset.reset", "error");
    let consumer: BaseConsumer<IngestContext> = cc.create_with_context(context)?;
    let mut ingest = Ingest {
        consumer,
        client_config: cc,
        needs_headers: hub.router().needs_headers(),
        hub,
        metrics,
        start: config.start,
        warm_history: config.warm_history as i64,
        refresh_every: config.metadata_refresh,
        positions: Positions::new(),
        current: Arc::new(Positions::new()),
        topics: HashMap::new(),
        assigned: HashSet::new(),
        consumed: HashMap::new(),
        unrouted: HashMap::new(),
        unrouted_logged: HashSet::new(),
        unread_topics: HashSet::new(),
        first_refresh_done: false,
        deleted_pending: false,
        channels: Vec::new(),
    };
    std::thread::Builder::new()
        .name("herald-ingest".into())
        .spawn(move || ingest.run(shutdown))
        .map_err(|e| KafkaError::Subscription(format!("cannot start the ingest thread: {e}")))
}

struct Ingest {
    consumer: BaseConsumer<IngestContext>,
    /// What the consumer was created from, to create it again.
    client_config: ClientConfig,
    hub: Hub,
    metrics: Arc<Metrics>,
    needs_headers: bool,
    start: StartAt,
    /// Records per partition read back at start-up into history.
    warm_history: i64,
    refresh_every: Duration,
    /// Next offset per assigned partition, updated per record.
    positions: Positions,
    /// The positions as of the last batch, shared with the hub and with
    /// every publication of the current batch.
    current: Arc<Positions>,
    /// Interned topic names.
    topics: HashMap<String, Arc<str>>,
    assigned: HashSet<(Arc<str>, i32)>,
    /// Counter handles, looked up once per partition rather than per record.
    consumed: HashMap<(Arc<str>, i32), IntCounter>,
    unrouted: HashMap<Arc<str>, IntCounter>,
    /// Topics whose first unrouted record was logged: one line per topic,
    /// however many follow (they are counted).
    unrouted_logged: HashSet<Arc<str>>,
    /// Topics of the cluster no route reads, seen at a metadata refresh
    /// (one log line for each that appears after start).
    unread_topics: HashSet<String>,
    first_refresh_done: bool,
    /// librdkafka stopped a partition whose position Kafka deleted, and the
    /// ingest has not restarted it yet.
    deleted_pending: bool,
    /// Scratch buffer for the router.
    channels: Vec<String>,
}

impl Ingest {
    fn run(&mut self, shutdown: CancellationToken) {
        let mut next_refresh = Instant::now();
        let mut last_refresh = Instant::now();
        while !shutdown.is_cancelled() {
            if !self.consumer.context().brokers.knows_a_broker() {
                self.recreate_consumer();
            }
            let now = Instant::now();
            // A subscription's cursor names a partition not known here:
            // re-read now, at most every MIN_ASKED_REFRESH however many ask.
            let asked = now >= last_refresh + MIN_ASKED_REFRESH && self.hub.take_refresh_request();
            if now >= next_refresh || asked {
                last_refresh = now;
                self.hub.metadata_refresh_starts();
                let result = self.refresh_assignment();
                self.hub.metadata_refreshed(result.is_ok());
                match result {
                    Ok(()) => self.hub.set_ready(true),
                    Err(e) => {
                        self.hub.set_ready(false);
                        self.consumer
                            .context()
                            .report("metadata", &format!("metadata refresh failed: {e}"));
                    }
                }
                if self.deleted_pending {
                    self.retry_step_over_deleted();
                }
                next_refresh = Instant::now() + self.refresh_every;
            }
            if self.assigned.is_empty() {
                // Nothing to poll yet; still serve callbacks (stats, errors).
                let _ = self.consumer.poll(POLL_TIMEOUT);
                continue;
            }
            let mut taken = 0;
            let mut out_of_range = false;
            while taken < MAX_BATCH {
                let timeout = if taken == 0 {
                    POLL_TIMEOUT
                } else {
                    Duration::ZERO
                };
                match self.consumer.poll(timeout) {
                    None => break,
                    Some(Ok(msg)) => {
                        let topic = intern(&mut self.topics, rdkafka::Message::topic(&msg));
                        let record = super::to_record(&msg, topic, self.needs_headers);
                        drop(msg);
                        self.handle(record);
                        taken += 1;
                    }
                    Some(Err(e))
                        if matches!(
                            e.rdkafka_error_code(),
                            Some(
                                RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::LogTruncation
                            )
                        ) =>
                    {
                        // Records before it in the queue were read; the
                        // partition is stopped until assigned again.
                        out_of_range = true;
                        break;
                    }
                    Some(Err(e)) => {
                        let kind = e
                            .rdkafka_error_code()
                            .map_or_else(|| "consume".to_owned(), |c| format!("{c:?}"));
                        self.consumer
                            .context()
                            .report(&kind, &format!("consume error: {e}"));
                        break;
                    }
                }
            }
            if taken > 0 {
                self.publish_positions();
            }
            if out_of_range {
                self.deleted_pending = true;
                self.retry_step_over_deleted();
            }
        }
        tracing::info!("ingest stopped");
    }

    fn handle(&mut self, record: Record) {
        let key = (record.topic.clone(), record.partition);
        let metrics = &self.metrics;
        self.consumed
            .entry(key)
            .or_insert_with(|| {
                metrics
                    .consumed
                    .with_label_values(&[&*record.topic, &record.partition.to_string()])
            })
            .inc();
        self.positions
            .set(&record.topic, record.partition, record.offset + 1);
        self.channels.clear();
        if self.hub.router().route(&record, &mut self.channels) == 0 {
            self.unrouted
                .entry(record.topic.clone())
                .or_insert_with(|| metrics.unrouted.with_label_values(&[&*record.topic]))
                .inc();
            if self.unrouted_logged.insert(record.topic.clone()) {
                tracing::warn!(
                    topic = &*record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    "a record maps to no channel and is delivered to no one: {}. \
                     Counted in herald_unrouted_records_total; logged once per topic",
                    self.hub.router().why_unrouted(&record)
                );
            }
            return;
        }
        self.hub
            .publish(Arc::new(record), &self.channels, &self.current);
    }

    /// librdkafka dropped every broker it knew (see [`BrokerWatch`]): a new
    /// consumer, from the same config, goes on where this one stopped.
    /// The records the old one had fetched and not handed out are dropped
    /// with it; the new one reads them again from `positions`, the next
    /// offset of every assigned partition.
    fn recreate_consumer(&mut self) {
        let context = IngestContext::new(
            self.consumer.context().watermarks.clone(),
            self.metrics.clone(),
        );
        let created = self
            .client_config
            .create_with_context::<_, BaseConsumer<IngestContext>>(context)
            .and_then(|consumer| {
                let mut at = TopicPartitionList::new();
                for (topic, partition) in &self.assigned {
                    if let Some(offset) = self.positions.get(topic, *partition) {
                        at.add_partition_offset(topic, *partition, Offset::Offset(offset))?;
                    }
                }
                consumer.incremental_assign(&at)?;
                Ok(consumer)
            });
        let goes_on = "goes on at the offsets it had reached";
        match created {
            Ok(consumer) => {
                (self.consumer.context().errors).recreated("consumer", goes_on, Ok(()));
                self.consumer = consumer;
            }
            // Tried again on the next turn of the loop.
            Err(e) => (self.consumer.context().errors).recreated("consumer", goes_on, Err(&e)),
        }
    }

    fn publish_positions(&mut self) {
        self.current = Arc::new(self.positions.clone());
        self.hub.set_positions(self.current.clone());
    }

    fn retry_step_over_deleted(&mut self) {
        match self.step_over_deleted() {
            Ok(()) => self.deleted_pending = false,
            // The partition stays stopped; tried again at the next
            // metadata refresh.
            Err(e) => self.consumer.context().report(
                "offset_reset",
                &format!("cannot restart a partition whose records were deleted: {e}"),
            ),
        }
    }

    /// After librdkafka reported a position out of range (or a truncated
    /// log): every assigned partition whose position is below its low
    /// watermark lost the records in between; one whose position is beyond
    /// its end had its offsets start over below it — the topic was deleted
    /// and created again, or its log truncated. The hub hears of both
    /// before anything after them is published; each partition is assigned
    /// again at its low watermark.
    fn step_over_deleted(&mut self) -> KafkaResult<()> {
        let mut lost = Vec::new();
        let mut reset = Vec::new();
        // Within its range: librdkafka may have stopped it all the same (a
        // truncation found by its own checks): assigned again where it is.
        let mut unchanged = Vec::new();
        let mut unanswered = None;
        for (topic, partition) in &self.assigned {
            let Some(at) = self.positions.get(topic, *partition) else {
                continue;
            };
            // One partition that cannot answer (gone with a topic created
            // again with fewer partitions) does not hold up the others.
            let (low, high) =
                match self
                    .consumer
                    .fetch_watermarks(topic, *partition, REQUEST_TIMEOUT)
                {
                    Ok(watermarks) => watermarks,
                    Err(e) => {
                        unanswered = Some(e);
                        continue;
                    }
                };
            let range = PartitionRange {
                topic: topic.clone(),
                partition: *partition,
                from: at,
                to: low,
            };
            if at < low {
                lost.push(range);
            } else if at > high {
                reset.push(range);
            } else {
                unchanged.push((topic.clone(), *partition, at));
            }
        }
        let done = unanswered.map_or(Ok(()), Err);
        let mut again = TopicPartitionList::new();
        for range in lost.iter().chain(&reset) {
            again.add_partition_offset(&range.topic, range.partition, Offset::Offset(range.to))?;
        }
        for (topic, partition, at) in &unchanged {
            again.add_partition_offset(topic, *partition, Offset::Offset(*at))?;
        }
        if again.count() == 0 {
            return done;
        }
        self.consumer.incremental_unassign(&again)?;
        self.consumer.incremental_assign(&again)?;
        const LOST: &str = "Kafka deleted records before Herald read them (retention while \
                            Herald was behind or stopped?): subscribers are sent a gap";
        const RESET: &str = "the partition ends below Herald's position: the topic was deleted \
                             and created again (or its log truncated); subscribers are sent a \
                             reset";
        let described = lost
            .iter()
            .map(|r| (r, LOST))
            .chain(reset.iter().map(|r| (r, RESET)));
        for (range, what) in described {
            tracing::warn!(
                topic = &*range.topic,
                partition = range.partition,
                from = range.from,
                to = range.to,
                "{what}; reading goes on at {}",
                range.to
            );
        }
        for range in lost.iter().chain(&reset) {
            self.metrics
                .ingest_resets
                .with_label_values(&[&*range.topic, &range.partition.to_string()])
                .inc();
            self.positions.set(&range.topic, range.partition, range.to);
        }
        let changed = !lost.is_empty() || !reset.is_empty();
        if !lost.is_empty() {
            self.hub.partitions_lost(lost);
        }
        if !reset.is_empty() {
            self.hub.partitions_reset(reset);
        }
        if changed {
            self.publish_positions();
        }
        done
    }

    /// Assigns partitions not assigned yet, each at an explicit offset.
    fn refresh_assignment(&mut self) -> KafkaResult<()> {
        let metadata = self.consumer.fetch_metadata(None, REQUEST_TIMEOUT)?;
        let mut added = TopicPartitionList::new();
        let mut starts = Vec::new();
        for topic in metadata.topics() {
            let name = topic.name();
            if name.starts_with("__") || topic.error().is_some() {
                continue;
            }
            if !self.hub.router().consumes(name) {
                // A topic that appears while Herald runs and that no route
                // reads is most often a producer's typo or a missing route:
                // said once (topics there at start are the cluster's
                // business, not news).
                if self.unread_topics.insert(name.to_owned()) && self.first_refresh_done {
                    tracing::info!(
                        topic = name,
                        "a new topic that no route reads: Herald does not consume it"
                    );
                }
                continue;
            }
            for partition in topic.partitions() {
                let id = partition.id();
                let key = (intern(&mut self.topics, name), id);
                if self.assigned.contains(&key) {
                    continue;
                }
                let (low, high) = self.consumer.fetch_watermarks(name, id, REQUEST_TIMEOUT)?;
                self.consumer.context().watermarks.seed(name, id, low, high);
                let (start, live_end) = match (self.first_refresh_done, self.start) {
                    // Read back the last `warm_history` records so clients
                    // resuming right after a restart are served from memory.
                    (false, StartAt::Latest) => ((high - self.warm_history).max(low), high),
                    (false, StartAt::Earliest) => (low, low),
                    // Found later: everything in it is new.
                    (true, _) => (low, low),
                };
                added.add_partition_offset(name, id, Offset::Offset(start))?;
                starts.push((key, start, live_end));
            }
        }
        if !starts.is_empty() {
            self.consumer.incremental_assign(&added)?;
            for ((topic, partition), start, live_end) in starts {
                tracing::info!(
                    topic = &*topic,
                    partition,
                    start,
                    live_end,
                    "assigned partition"
                );
                self.hub
                    .partition_assigned(&topic, partition, start, live_end);
                // Every documented series is there from the first scrape.
                let labels = [&*topic, &partition.to_string()];
                self.metrics.ingest_resets.with_label_values(&labels);
                self.consumed
                    .entry((topic.clone(), partition))
                    .or_insert_with(|| self.metrics.consumed.with_label_values(&labels));
                self.unrouted
                    .entry(topic.clone())
                    .or_insert_with(|| self.metrics.unrouted.with_label_values(&[&*topic]));
                self.positions.set(&topic, partition, start);
                self.assigned.insert((topic, partition));
            }
            self.publish_positions();
        }
        self.first_refresh_done = true;
        Ok(())
    }
}

/// The shared name of a topic, allocated once per topic.
fn intern(topics: &mut HashMap<String, Arc<str>>, topic: &str) -> Arc<str> {
    if let Some(t) = topics.get(topic) {
        return t.clone();
    }
    let t: Arc<str> = Arc::from(topic);
    topics.insert(topic.to_owned(), t.clone());
    t
}
