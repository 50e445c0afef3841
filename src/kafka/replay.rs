//! Replay: reading partition ranges back from Kafka for clients whose
//! cursor is older than the hub's history, and resolving `since=`
//! timestamps to offsets.
//!
//! **Shared reads.** Records read back are kept in a node-wide cache: per
//! partition one contiguous *segment* of offsets `[start, end)` whose every
//! record is held. One *filler* thread per partition extends the segment from
//! Kafka as far as any waiting replay needs; every replay — a client's job
//! on its own blocking thread — serves itself from the segment, following
//! the filler. So a thousand clients resuming the same range after a restart
//! cause one Kafka read of it, not a thousand. A replay whose position lies
//! outside the segment while another fill is running reads privately, with a
//! consumer of its own. The cache is bounded (`replay.cache_bytes`).
//!
//! Each job routes records like the ingest does and keeps those that map to
//! the subscriber's channels. Batches go to the subscription through a small
//! bounded channel, so a slow client slows only itself. Records Kafka no
//! longer holds (below the low watermark) are reported as a gap first, never
//! skipped silently (`auto.offset.reset=error`). Each replay is bounded in
//! records, time and concurrency.
//!
//! **Concurrency.** Replays running at once are bounded per node
//! (`replay.max_concurrent`), `since=` look-ups (each a consumer of its own
//! for an offsets-for-times request) too (`replay.max_concurrent_lookups`),
//! and both together per client address (`replay.max_concurrent_per_ip`),
//! so one client cannot take the node's replays for itself. A job holds its
//! places until it has finished, even if its client has gone: the consumer
//! exists until then.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::EndIsNotAnError;
use crate::config::{KafkaConfig, ReplayConfig};
use crate::hub::positions::Positions;
use crate::hub::publication::Publication;
use crate::hub::{OffsetsForTime, PartitionRange, ReplayEvent, ReplaySource, SubscribeError};
use crate::metrics::Metrics;
use crate::per_ip::{PerIpLimit, PerIpPlace};
use crate::record::Record;
use crate::router::Router;

/// Records per batch handed to a subscription, and per filler append.
const BATCH: usize = 500;
/// Batches buffered between a replay and its client.
const BUFFERED_BATCHES: usize = 4;
/// Timeout of each watermark or offsets-for-times request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a low watermark read from Kafka is reused.
const LOW_WATERMARK_TTL: Duration = Duration::from_secs(1);
/// How long a follower sleeps between checks of the filler's progress.
const FOLLOW_WAIT: Duration = Duration::from_millis(100);
/// A segment unused this long, and not being filled, is dropped when the
/// cache needs room.
const SEGMENT_IDLE: Duration = Duration::from_secs(30);

type PartitionKey = (Arc<str>, i32);

pub struct Replayer {
    kafka: KafkaConfig,
    limits: ReplayConfig,
    metrics: Arc<Metrics>,
    /// One per replay running (`replay.max_concurrent`).
    permits: Arc<Semaphore>,
    /// One per `since=` look-up running (`replay.max_concurrent_lookups`).
    lookups: Arc<Semaphore>,
    /// Replays and look-ups per client address
    /// (`replay.max_concurrent_per_ip`).
    per_ip: Arc<PerIpLimit>,
    cache: Arc<Cache>,
}

/// Records read back from Kafka, shared by every replay on the node.
struct Cache {
    state: Mutex<CacheState>,
    /// Signalled whenever a segment grows or a filler stops.
    changed: Condvar,
    max_bytes: usize,
}

#[derive(Default)]
struct CacheState {
    segments: HashMap<PartitionKey, Segment>,
    bytes: usize,
    /// Low watermarks, reused for [`LOW_WATERMARK_TTL`].
    lows: HashMap<PartitionKey, (i64, Instant)>,
}

/// Every record of one partition with an offset in `[start, end)`.
struct Segment {
    start: i64,
    end: i64,
    records: VecDeque<Arc<Record>>,
    bytes: usize,
    /// The filler reads until `end` reaches this.
    want: i64,
    filling: bool,
    /// Why the last filler stopped early; followers report it.
    failed: Option<String>,
    last_used: Instant,
    /// The latest deadline of the replays that asked the filler for more:
    /// it reads until then, so each replay is bounded by its own
    /// `replay.timeout`, not by the one that happened to start the filler.
    deadline: Instant,
}

impl Segment {
    fn empty(at: i64) -> Segment {
        Segment {
            start: at,
            end: at,
            records: VecDeque::new(),
            bytes: 0,
            want: at,
            filling: false,
            failed: None,
            last_used: Instant::now(),
            deadline: Instant::now(),
        }
    }
}

impl Replayer {
    pub fn new(kafka: KafkaConfig, limits: ReplayConfig, metrics: Arc<Metrics>) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_concurrent));
        let lookups = Arc::new(Semaphore::new(limits.max_concurrent_lookups));
        let per_ip = PerIpLimit::new(limits.max_concurrent_per_ip);
        let cache = Arc::new(Cache {
            state: Mutex::new(CacheState::default()),
            changed: Condvar::new(),
            max_bytes: limits.cache_bytes,
        });
        Replayer {
            kafka,
            limits,
            metrics,
            permits,
            lookups,
            per_ip,
            cache,
        }
    }

    /// `client`'s place for one more replay or look-up.
    fn client_place(&self, client: IpAddr) -> Result<PerIpPlace, SubscribeError> {
        self.per_ip
            .try_acquire(client)
            .ok_or(SubscribeError::ReplaysPerClient {
                client,
                max: self.per_ip.max(),
            })
    }

    fn consumer_config(&self) -> ClientConfig {
        consumer_config(&self.kafka)
    }
}

fn consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    super::consumer_config(
        kafka,
        "replay",
        &[
            ("enable.partition.eof", "true".into()),
            // Below the low watermark is reported as a gap, never reset.
            ("auto.offset.reset", "error".into()),
            ("fetch.wait.max.ms", "10".into()),
        ],
    )
}

impl ReplaySource for Replayer {
    fn start(
        &self,
        ranges: Vec<PartitionRange>,
        channels: Vec<Arc<str>>,
        router: Arc<Router>,
        client: IpAddr,
    ) -> Result<mpsc::Receiver<ReplayEvent>, SubscribeError> {
        let total: i64 = ranges.iter().map(|r| r.to - r.from).sum();
        if total > self.limits.max_records as i64 {
            return Err(SubscribeError::ReplayTooLarge {
                records: total,
                max: self.limits.max_records,
            });
        }
        let client_place = self.client_place(client)?;
        let permit =
            self.permits
                .clone()
                .try_acquire_owned()
                .map_err(|_| SubscribeError::ReplayBusy {
                    max: self.limits.max_concurrent,
                })?;
        let (tx, rx) = mpsc::channel(BUFFERED_BATCHES);
        let job = Job {
            kafka: self.consumer_config(),
            cache: self.cache.clone(),
            ranges,
            channels,
            router,
            metrics: self.metrics.clone(),
            deadline: Instant::now() + self.limits.timeout,
            tx,
            batch: Vec::new(),
            routed: Vec::new(),
            empty: Arc::new(Positions::new()),
            _places: (permit, client_place),
        };
        tokio::task::spawn_blocking(move || job.run());
        Ok(rx)
    }

    fn offsets_for_time(
        &self,
        partitions: Vec<(Arc<str>, i32)>,
        ts: i64,
        client: IpAddr,
    ) -> Result<OffsetsForTime, SubscribeError> {
        self.look_up(client, move |config| {
            offsets_for_time(config, &partitions, ts)
        })
    }

    fn high_watermarks(
        &self,
        partitions: Vec<(Arc<str>, i32)>,
        client: IpAddr,
    ) -> Result<OffsetsForTime, SubscribeError> {
        self.look_up(client, move |config| high_watermarks(config, &partitions))
    }

    fn forget(&self, partitions: Vec<(Arc<str>, i32)>) {
        let mut state = self.cache.state.lock();
        for key in partitions {
            if let Some(segment) = state.segments.remove(&key) {
                state.bytes -= segment.bytes;
            }
            state.lows.remove(&key);
        }
    }
}

impl Replayer {
    /// Runs one look-up (`find`, blocking, with a consumer of its own)
    /// under the look-up limits: `replay.max_concurrent_lookups` on the
    /// node, and with replays `replay.max_concurrent_per_ip` per client.
    fn look_up(
        &self,
        client: IpAddr,
        find: impl FnOnce(&ClientConfig) -> Result<Vec<i64>, SubscribeError> + Send + 'static,
    ) -> Result<OffsetsForTime, SubscribeError> {
        let client_place = self.client_place(client)?;
        let permit =
            self.lookups
                .clone()
                .try_acquire_owned()
                .map_err(|_| SubscribeError::LookupsBusy {
                    max: self.limits.max_concurrent_lookups,
                })?;
        let config = self.consumer_config();
        let (tx, rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let found = find(&config);
            // The places go before the answer: a subscription that goes on
            // to a replay must find its own look-up's place free.
            drop((permit, client_place));
            let _ = tx.send(found);
        });
        Ok(rx)
    }
}

/// The high watermark of each partition, fresh from the brokers. Blocking.
fn high_watermarks(
    config: &ClientConfig,
    partitions: &[(Arc<str>, i32)],
) -> Result<Vec<i64>, SubscribeError> {
    let consumer: BaseConsumer<EndIsNotAnError> = config
        .create_with_context(EndIsNotAnError)
        .map_err(|e| SubscribeError::Kafka(e.to_string()))?;
    partitions
        .iter()
        .map(|(topic, p)| {
            consumer
                .fetch_watermarks(topic, *p, REQUEST_TIMEOUT)
                .map(|(_, high)| high)
                .map_err(|e| SubscribeError::Kafka(e.to_string()))
        })
        .collect()
}

/// The first offset at or after `ts` of each partition (the high watermark
/// where there is none), with a consumer of its own. Blocking.
fn offsets_for_time(
    config: &ClientConfig,
    partitions: &[(Arc<str>, i32)],
    ts: i64,
) -> Result<Vec<i64>, SubscribeError> {
    let consumer: BaseConsumer<EndIsNotAnError> = config
        .create_with_context(EndIsNotAnError)
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
                // No record at or after `ts`, says the broker: start at
                // the end — once the last record agrees.
                _ => end_unless_contradicted(&consumer, topic, *p, ts),
            }
        })
        .collect()
}

/// Records one `since=` look-up may read itself when the broker did not
/// answer offsets-for-times.
const SINCE_SCAN_LIMIT: i64 = 100_000;

/// The end of `topic/p`, where the broker found no record at or after
/// `ts` — unless its last record is at or after `ts`: then the broker did
/// not really answer (librdkafka's mock cluster under `herald dev` answers
/// every offsets-for-times with "none"), and the partition is read to find
/// the first such record, up to [`SINCE_SCAN_LIMIT`] records; beyond that
/// the look-up is refused rather than silently started at the live end.
fn end_unless_contradicted(
    consumer: &BaseConsumer<EndIsNotAnError>,
    topic: &str,
    p: i32,
    ts: i64,
) -> Result<i64, SubscribeError> {
    let (low, high) = consumer
        .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
        .map_err(|e| SubscribeError::Kafka(e.to_string()))?;
    if high <= low || first_at_or_after(consumer, topic, p, high - 1, high, ts)?.is_none() {
        return Ok(high);
    }
    if high - low > SINCE_SCAN_LIMIT {
        return Err(SubscribeError::SinceUnanswered {
            topic: topic.to_owned(),
            partition: p,
            records: high - low,
        });
    }
    Ok(first_at_or_after(consumer, topic, p, low, high, ts)?.unwrap_or(high))
}

/// The offset of the first record in `[from, to)` of `topic/p` whose
/// timestamp is at or after `ts`, reading them.
fn first_at_or_after(
    consumer: &BaseConsumer<EndIsNotAnError>,
    topic: &str,
    p: i32,
    from: i64,
    to: i64,
    ts: i64,
) -> Result<Option<i64>, SubscribeError> {
    let kafka = |e: rdkafka::error::KafkaError| SubscribeError::Kafka(e.to_string());
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Offset(from))
        .map_err(kafka)?;
    consumer.assign(&tpl).map_err(kafka)?;
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    while Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.map_err(kafka)?;
        if message.topic() != topic || message.partition() != p {
            continue;
        }
        if message.timestamp().to_millis().is_some_and(|t| t >= ts) {
            return Ok(Some(message.offset()));
        }
        if message.offset() >= to - 1 {
            return Ok(None);
        }
    }
    Err(SubscribeError::Kafka(format!(
        "reading {topic}/{p} from {from} for since= took longer than {REQUEST_TIMEOUT:?}"
    )))
}

/// One client's replay, on a blocking thread.
struct Job {
    /// Its places under `replay.max_concurrent` and
    /// `replay.max_concurrent_per_ip`, until it has finished. First, so
    /// they are released before `tx` is dropped: a subscription that sees
    /// its replay end may start the next one at once.
    _places: (OwnedSemaphorePermit, PerIpPlace),
    kafka: ClientConfig,
    cache: Arc<Cache>,
    ranges: Vec<PartitionRange>,
    channels: Vec<Arc<str>>,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    deadline: Instant,
    tx: mpsc::Sender<ReplayEvent>,
    /// Publications not sent yet.
    batch: Vec<Arc<Publication>>,
    /// Scratch buffer for the router.
    routed: Vec<String>,
    empty: Arc<Positions>,
}

impl Job {
    fn run(mut self) {
        match self.read() {
            Ok(()) | Err(Outcome::Gone) => {}
            Err(Outcome::Failed(message)) => {
                let _ = self.tx.blocking_send(ReplayEvent::Failed(message));
            }
        }
    }

    fn read(&mut self) -> Result<(), Outcome> {
        let mut plan = Vec::new();
        let mut gaps = Vec::new();
        for r in std::mem::take(&mut self.ranges) {
            let low = self.low_watermark(&r.topic, r.partition)?;
            let mut from = r.from;
            if from < low {
                gaps.push(PartitionRange {
                    topic: r.topic.clone(),
                    partition: r.partition,
                    from,
                    to: low,
                });
                from = low.min(r.to);
            }
            if from < r.to {
                plan.push((r.topic, r.partition, from, r.to));
            }
        }
        if !gaps.is_empty() {
            self.send(ReplayEvent::Gaps(gaps))?;
        }
        for (topic, partition, from, to) in plan {
            self.replay_partition((topic, partition), from, to)?;
        }
        self.flush()
    }

    fn low_watermark(&self, topic: &Arc<str>, partition: i32) -> Result<i64, Outcome> {
        let key = (topic.clone(), partition);
        if let Some((low, at)) = self.cache.state.lock().lows.get(&key)
            && at.elapsed() < LOW_WATERMARK_TTL
        {
            return Ok(*low);
        }
        let consumer: BaseConsumer<EndIsNotAnError> = self
            .kafka
            .create_with_context(EndIsNotAnError)
            .map_err(|e| failed(e.to_string()))?;
        let (low, _) = consumer
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .map_err(|e| failed(format!("watermarks of {topic}/{partition}: {e}")))?;
        self.cache
            .state
            .lock()
            .lows
            .insert(key, (low, Instant::now()));
        Ok(low)
    }

    /// Serves `[pos, to)` of one partition from the shared segment,
    /// starting or following its filler; reads privately when the segment
    /// is busy elsewhere.
    fn replay_partition(
        &mut self,
        key: PartitionKey,
        mut pos: i64,
        to: i64,
    ) -> Result<(), Outcome> {
        while pos < to {
            if Instant::now() > self.deadline {
                return Err(failed(
                    "replay from Kafka took longer than replay.timeout".into(),
                ));
            }
            let mut state = self.cache.state.lock();
            let segment = state
                .segments
                .entry(key.clone())
                .or_insert_with(|| Segment::empty(pos));
            segment.last_used = Instant::now();
            if segment.start <= pos && pos < segment.end {
                let limit = to.min(segment.end);
                let first = segment.records.partition_point(|r| r.offset < pos);
                let taken: Vec<Arc<Record>> = segment
                    .records
                    .range(first..)
                    .take_while(|r| r.offset < limit)
                    .take(BATCH)
                    .cloned()
                    .collect();
                pos = match taken.last() {
                    Some(last) if taken.len() == BATCH => last.offset + 1,
                    _ => limit,
                };
                drop(state);
                self.emit(taken)?;
                continue;
            }
            let adjacent = segment.start <= pos && pos == segment.end;
            if adjacent || !segment.filling {
                if !adjacent {
                    // Start the segment over at this position.
                    let bytes = segment.bytes;
                    *segment = Segment::empty(pos);
                    state.bytes -= bytes;
                }
                let segment = state.segments.get_mut(&key).expect("present");
                segment.want = segment.want.max(to);
                segment.deadline = segment.deadline.max(self.deadline);
                if !segment.filling {
                    if let Some(message) = segment.failed.take()
                        && adjacent
                        && segment.end > segment.start
                    {
                        // The last fill of this very position failed.
                        return Err(failed(message));
                    }
                    segment.filling = true;
                    let filler = Filler {
                        kafka: self.kafka.clone(),
                        cache: self.cache.clone(),
                        metrics: self.metrics.clone(),
                        key: key.clone(),
                        from: segment.end,
                    };
                    std::thread::Builder::new()
                        .name("herald-replay-fill".into())
                        .spawn(move || filler.run())
                        .map_err(|e| failed(format!("cannot start a replay thread: {e}")))?;
                }
                self.wait(state);
                continue;
            }
            // The segment is being filled elsewhere: read on our own.
            drop(state);
            return self.private_read(&key, pos, to);
        }
        Ok(())
    }

    /// Waits for the filler to make progress (or stop).
    fn wait(&self, mut state: MutexGuard<'_, CacheState>) {
        self.cache.changed.wait_for(&mut state, FOLLOW_WAIT);
    }

    /// Reads `[pos, to)` with a consumer of its own, bypassing the cache.
    fn private_read(&mut self, key: &PartitionKey, pos: i64, to: i64) -> Result<(), Outcome> {
        let consumer: BaseConsumer<EndIsNotAnError> = self
            .kafka
            .create_with_context(EndIsNotAnError)
            .map_err(|e| failed(e.to_string()))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&key.0, key.1, Offset::Offset(pos))
            .map_err(|e| failed(e.to_string()))?;
        consumer.assign(&tpl).map_err(|e| failed(e.to_string()))?;
        loop {
            if Instant::now() > self.deadline {
                return Err(failed(
                    "replay from Kafka took longer than replay.timeout".into(),
                ));
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
                Some(Err(e)) => return Err(failed(format!("reading Kafka: {e}"))),
                Some(Ok(msg)) => {
                    if msg.offset() >= to {
                        return Ok(());
                    }
                    let record = Arc::new(super::to_record(&msg, key.0.clone(), true));
                    drop(msg);
                    self.metrics.replay_records.inc();
                    let last = record.offset + 1 >= to;
                    self.emit(vec![record])?;
                    if last {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Routes records and queues those for the subscriber's channels.
    fn emit(&mut self, records: Vec<Arc<Record>>) -> Result<(), Outcome> {
        for record in records {
            self.routed.clear();
            self.router.route(&record, &mut self.routed);
            let Some(channel) = self
                .channels
                .iter()
                .find(|c| self.routed.iter().any(|r| r == &***c))
            else {
                continue;
            };
            self.batch.push(Arc::new(Publication::new(
                0,
                channel.clone(),
                record,
                self.empty.clone(),
                Instant::now(),
            )));
            if self.batch.len() >= BATCH {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Outcome> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.send(ReplayEvent::Records(batch))
    }

    fn send(&self, event: ReplayEvent) -> Result<(), Outcome> {
        self.tx.blocking_send(event).map_err(|_| Outcome::Gone)
    }
}

/// How a replay ended early.
enum Outcome {
    /// The client went away.
    Gone,
    /// Kafka could not be read; the client is told why.
    Failed(String),
}

fn failed(message: String) -> Outcome {
    Outcome::Failed(message)
}

/// Reads one partition from Kafka into its shared segment until the segment
/// reaches what the replays following it want.
struct Filler {
    kafka: ClientConfig,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    key: PartitionKey,
    from: i64,
}

impl Filler {
    fn run(self) {
        let result = self.fill();
        let mut state = self.cache.state.lock();
        if let Some(segment) = state.segments.get_mut(&self.key) {
            segment.filling = false;
            if let Err(message) = result {
                segment.failed = Some(message);
            }
        }
        drop(state);
        self.cache.changed.notify_all();
    }

    fn fill(&self) -> Result<(), String> {
        let consumer: BaseConsumer<EndIsNotAnError> = self
            .kafka
            .create_with_context(EndIsNotAnError)
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.key.0, self.key.1, Offset::Offset(self.from))
            .map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let mut chunk: Vec<Arc<Record>> = Vec::with_capacity(BATCH);
        loop {
            if self.past_deadline() {
                // No one waits any more: each follower ended at its own
                // deadline with its own message. Not a failure of this
                // position, so a replay that comes later starts a filler
                // afresh rather than inheriting a timeout it never had.
                return Ok(());
            }
            chunk.clear();
            let mut at_end = false;
            let mut timeout = Duration::from_millis(100);
            while chunk.len() < BATCH {
                match consumer.poll(timeout) {
                    None => break,
                    Some(Err(KafkaError::PartitionEOF(_))) => {
                        at_end = true;
                        break;
                    }
                    Some(Err(e)) => return Err(format!("reading Kafka: {e}")),
                    Some(Ok(msg)) => {
                        chunk.push(Arc::new(super::to_record(&msg, self.key.0.clone(), true)));
                    }
                }
                timeout = Duration::ZERO;
            }
            if self.append(&chunk, at_end) {
                return Ok(());
            }
        }
    }

    /// Whether every replay following this filler is past its deadline.
    fn past_deadline(&self) -> bool {
        let state = self.cache.state.lock();
        state
            .segments
            .get(&self.key)
            .is_none_or(|segment| Instant::now() > segment.deadline)
    }

    /// Adds a chunk to the segment; whether the filler is done.
    fn append(&self, chunk: &[Arc<Record>], at_end: bool) -> bool {
        let mut state = self.cache.state.lock();
        let state = &mut *state;
        let Some(segment) = state.segments.get_mut(&self.key) else {
            return true;
        };
        for record in chunk {
            if record.offset < segment.end {
                continue;
            }
            let size = record.size();
            segment.records.push_back(record.clone());
            segment.end = record.offset + 1;
            segment.bytes += size;
            state.bytes += size;
            self.metrics.replay_records.inc();
        }
        if at_end {
            // Nothing more in Kafka right now: offsets up to what is wanted
            // hold no record (compaction, transaction markers).
            segment.end = segment.end.max(segment.want);
        }
        let done = segment.end >= segment.want;
        // Over the cache budget: idle segments go first, then this one's
        // oldest records (a replay behind them reads privately).
        if state.bytes > self.cache.max_bytes {
            let now = Instant::now();
            let key = &self.key;
            let mut freed = 0;
            state.segments.retain(|k, s| {
                let keep = k == key || s.filling || now.duration_since(s.last_used) < SEGMENT_IDLE;
                if !keep {
                    freed += s.bytes;
                }
                keep
            });
            state.bytes -= freed;
            let segment = state.segments.get_mut(&self.key).expect("kept");
            while state.bytes > self.cache.max_bytes && segment.records.len() > 1 {
                let r = segment.records.pop_front().expect("non-empty");
                let size = r.size();
                segment.bytes -= size;
                state.bytes -= size;
                segment.start = segment.records.front().map_or(segment.end, |r| r.offset);
            }
        }
        self.cache.changed.notify_all();
        done
    }
}
