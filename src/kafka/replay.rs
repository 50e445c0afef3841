//! Replay: reading a partition range back from Kafka for a client whose
//! cursor is older than the hub's history, and resolving `since=`
//! timestamps to offsets.
//!
//! A replay runs on a blocking thread with its own short-lived consumer,
//! `assign()`ed to exactly the ranges it needs. It routes each record like
//! the ingest does and keeps those that map to the subscriber's channels.
//! Batches go to the subscription through a small bounded channel, so a
//! slow client slows only its own Kafka read. Records Kafka no longer holds
//! (below the low watermark) are reported as a gap first, never skipped
//! silently. Each replay is bounded in records, time and concurrency.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::record::Record;
use crate::config::{KafkaConfig, ReplayConfig};
use crate::hub::positions::Positions;
use crate::hub::publication::Publication;
use crate::hub::{GapRange, ReplayEvent, ReplayRange, ReplaySource, SubscribeError};
use crate::metrics::Metrics;
use crate::router::Router;

/// Records per batch handed to the subscription.
const BATCH: usize = 500;
/// Batches buffered between the Kafka read and the client.
const BUFFERED_BATCHES: usize = 4;
/// Timeout of each watermark or offsets-for-times request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Replayer {
    kafka: KafkaConfig,
    limits: ReplayConfig,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
}

impl Replayer {
    pub fn new(
        kafka: KafkaConfig,
        limits: ReplayConfig,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_concurrent));
        Replayer {
            kafka,
            limits,
            router,
            metrics,
            permits,
        }
    }

    fn consumer(&self) -> Result<BaseConsumer, KafkaError> {
        let mut cc = super::client_config(&self.kafka);
        cc.set("group.id", format!("{}-replay", self.kafka.client_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            // Below the low watermark is reported as a gap, never reset.
            .set("auto.offset.reset", "error")
            .set("fetch.wait.max.ms", "10");
        for (k, v) in &self.kafka.options {
            cc.set(k, v);
        }
        cc.create()
    }
}

impl ReplaySource for Replayer {
    fn start(
        &self,
        ranges: Vec<ReplayRange>,
        channels: Vec<Arc<str>>,
    ) -> Result<mpsc::Receiver<ReplayEvent>, SubscribeError> {
        let total: i64 = ranges.iter().map(|r| r.to - r.from).sum();
        if total > self.limits.max_records as i64 {
            return Err(SubscribeError::ReplayTooLarge {
                records: total,
                max: self.limits.max_records,
            });
        }
        let permit =
            self.permits
                .clone()
                .try_acquire_owned()
                .map_err(|_| SubscribeError::ReplayBusy {
                    max: self.limits.max_concurrent,
                })?;
        let consumer = self
            .consumer()
            .map_err(|e| SubscribeError::Kafka(e.to_string()))?;
        let (tx, rx) = mpsc::channel(BUFFERED_BATCHES);
        let job = Job {
            consumer,
            ranges,
            channels,
            router: self.router.clone(),
            metrics: self.metrics.clone(),
            deadline: Instant::now() + self.limits.timeout,
            tx,
            _permit: permit,
        };
        tokio::task::spawn_blocking(move || job.run());
        Ok(rx)
    }

    fn offsets_for_time(
        &self,
        partitions: &[(Arc<str>, i32)],
        ts: i64,
    ) -> Result<Vec<i64>, SubscribeError> {
        let consumer = self
            .consumer()
            .map_err(|e| SubscribeError::Kafka(e.to_string()))?;
        let mut tpl = TopicPartitionList::new();
        for (topic, p) in partitions {
            tpl.add_partition_offset(topic, *p, Offset::Offset(ts))
                .map_err(|e| SubscribeError::Kafka(e.to_string()))?;
        }
        let found = consumer
            .offsets_for_times(tpl, REQUEST_TIMEOUT)
            .map_err(|e| SubscribeError::Kafka(format!("offsets for time {ts}: {e}")))?;
        partitions
            .iter()
            .map(|(topic, p)| {
                let elem = found
                    .find_partition(topic, *p)
                    .ok_or_else(|| SubscribeError::Kafka(format!("no offset for {topic}/{p}")))?;
                match elem.offset() {
                    Offset::Offset(o) => Ok(o),
                    // No record at or after `ts`: start at the end.
                    _ => consumer
                        .fetch_watermarks(topic, *p, REQUEST_TIMEOUT)
                        .map(|(_, high)| high)
                        .map_err(|e| SubscribeError::Kafka(e.to_string())),
                }
            })
            .collect()
    }
}

struct Job {
    consumer: BaseConsumer,
    ranges: Vec<ReplayRange>,
    channels: Vec<Arc<str>>,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    deadline: Instant,
    tx: mpsc::Sender<ReplayEvent>,
    _permit: OwnedSemaphorePermit,
}

impl Job {
    fn run(self) {
        if let Err(message) = self.read() {
            let _ = self.tx.blocking_send(ReplayEvent::Failed(message));
        }
    }

    fn read(&self) -> Result<(), String> {
        let mut assignment = TopicPartitionList::new();
        // Per partition: the end of its range.
        let mut open: HashMap<(Arc<str>, i32), i64> = HashMap::new();
        let mut gaps = Vec::new();
        for r in &self.ranges {
            let (low, _) = self
                .consumer
                .fetch_watermarks(&r.topic, r.partition, REQUEST_TIMEOUT)
                .map_err(|e| format!("watermarks of {}/{}: {e}", r.topic, r.partition))?;
            let mut from = r.from;
            if from < low {
                let to = low.min(r.to);
                gaps.push(GapRange {
                    topic: r.topic.clone(),
                    partition: r.partition,
                    from,
                    to: low,
                });
                from = to;
            }
            if from < r.to {
                assignment
                    .add_partition_offset(&r.topic, r.partition, Offset::Offset(from))
                    .map_err(|e| e.to_string())?;
                open.insert((r.topic.clone(), r.partition), r.to);
            }
        }
        if !gaps.is_empty() && self.tx.blocking_send(ReplayEvent::Gaps(gaps)).is_err() {
            return Ok(());
        }
        if open.is_empty() {
            return Ok(());
        }
        self.consumer
            .assign(&assignment)
            .map_err(|e| e.to_string())?;
        let empty = Arc::new(Positions::new());
        let mut topics: HashMap<String, Arc<str>> = HashMap::new();
        let mut batch = Vec::with_capacity(BATCH);
        let mut routed = Vec::new();
        while !open.is_empty() {
            if Instant::now() > self.deadline {
                return Err("replay from Kafka took longer than replay.timeout".into());
            }
            let msg = match self.consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    // Nothing more to read (compaction left holes at the end).
                    open.retain(|(_, part), _| *part != p);
                    continue;
                }
                Some(Err(e)) => return Err(format!("reading Kafka: {e}")),
                Some(Ok(m)) => m,
            };
            let topic = topics
                .entry(msg.topic().to_owned())
                .or_insert_with(|| Arc::from(msg.topic()))
                .clone();
            let key = (topic.clone(), msg.partition());
            let Some(&end) = open.get(&key) else { continue };
            if msg.offset() >= end {
                open.remove(&key);
                continue;
            }
            let record = Arc::new(Record::from_message(
                &msg,
                topic,
                self.router.needs_headers(),
            ));
            drop(msg);
            if record.offset + 1 >= end {
                open.remove(&key);
            }
            self.metrics.replay_records.inc();
            routed.clear();
            self.router.route(&record, &mut routed);
            let Some(channel) = self
                .channels
                .iter()
                .find(|c| routed.iter().any(|r| r == &***c))
            else {
                continue;
            };
            batch.push(Arc::new(Publication::new(
                0,
                channel.clone(),
                record,
                empty.clone(),
                Instant::now(),
            )));
            if batch.len() >= BATCH
                && self
                    .tx
                    .blocking_send(ReplayEvent::Records(std::mem::take(&mut batch)))
                    .is_err()
            {
                return Ok(());
            }
        }
        if !batch.is_empty() {
            let _ = self.tx.blocking_send(ReplayEvent::Records(batch));
        }
        Ok(())
    }
}
