//! The sender: a consumer group (`push.group_id`) over the routed topics,
//! so the nodes divide the partitions between them and each record is
//! pushed by one node; each record routed to a channel with subscriptions
//! becomes one push per subscription.
//!
//! A partition's committed offset only moves past a record once every push
//! for it has ended: delivered, dropped for a permanent reason, or out of
//! retries. A node that dies leaves its partitions to another node from the
//! last committed offset, which pushes again what was not committed
//! (at-least-once); the `Topic` header, derived from the record's position,
//! lets a push service replace a duplicate it has not yet delivered.
//!
//! Each push service (endpoint origin) has its own bound on requests in
//! flight and on pushes waiting, and its own pause after a `Retry-After`,
//! so a slow or failing service holds up no other; and the live
//! WebSocket/SSE/poll path never waits for any of this.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header;
use parking_lot::Mutex;
use prometheus::{Histogram, IntCounter};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Push;
use super::payload;
use super::store::{Subscription, SubscriptionId};
use crate::config::KafkaConfig;
use crate::hub::Hub;
use crate::kafka::{BrokerWatch, ErrorEvents, consumer_config, to_record};

/// Committed offsets are sent this often (and at a rebalance and at stop).
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// The longest a retry waits, however many attempts came before.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// At stop, how long pushes in flight may take to end.
const STOP_GRACE: Duration = Duration::from_secs(5);
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// Drops are logged at most this often per push service (always counted).
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Starts the sender. It waits for the subscription table to be loaded,
/// then joins the group; it ends at `shutdown`, committing what it
/// finished.
pub fn start(
    push: Arc<Push>,
    hub: Hub,
    kafka: &KafkaConfig,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, KafkaError> {
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let errors = Arc::new(ErrorEvents::new(push.metrics.clone()));
    let config = consumer_config(
        kafka,
        "push",
        &[
            ("client.id", format!("{}-push", kafka.client_id)),
            ("group.id", push.config.group_id.clone()),
            // Only when committing a start failed (GroupContext).
            ("auto.offset.reset", "latest".into()),
            ("enable.auto.commit", "false".into()),
            ("fetch.wait.max.ms", "50".into()),
            // Feeds the BrokerWatch.
            (
                "statistics.interval.ms",
                kafka.stats_interval.as_millis().to_string(),
            ),
        ],
    );
    let context = GroupContext::new(
        tracker.clone(),
        errors.clone(),
        None,
        push.metrics.push_assigned_partitions.clone(),
    );
    let consumer: StreamConsumer<GroupContext> = config.create_with_context(context)?;
    let client = reqwest::Client::builder()
        .timeout(push.config.request_timeout)
        .connect_timeout(push.config.request_timeout)
        .pool_max_idle_per_host(push.config.max_in_flight_per_service)
        .pool_idle_timeout(Duration::from_secs(90))
        // An endpoint was checked against the allow-list; a redirect
        // would lead anywhere.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| KafkaError::ClientCreation(format!("push HTTP client: {e}")))?;
    let sender = Sender {
        pending: Arc::new(Semaphore::new(push.config.max_pending)),
        push,
        hub,
        consumer: Mutex::new(Arc::new(consumer)),
        config,
        errors,
        tracker,
        client,
        services: Mutex::new(HashMap::new()),
        queues: Mutex::new(HashMap::new()),
        jobs: TaskTracker::new(),
        refresh_every: kafka.metadata_refresh,
    };
    Ok(tokio::spawn(Arc::new(sender).run(shutdown)))
}

struct Sender {
    push: Arc<Push>,
    hub: Hub,
    /// Created again when librdkafka dropped every broker it knew
    /// ([`BrokerWatch`]); cloning it out is one reference count.
    consumer: Mutex<Arc<StreamConsumer<GroupContext>>>,
    /// What the consumer was created from, to create it again.
    config: ClientConfig,
    errors: Arc<ErrorEvents>,
    tracker: Arc<Mutex<Tracker>>,
    client: reqwest::Client,
    services: Mutex<HashMap<String, Arc<Service>>>,
    /// Pushes waiting behind the one in flight, per subscription (an entry
    /// exists while one is in flight).
    queues: Mutex<HashMap<SubscriptionId, VecDeque<Job>>>,
    /// Pushes not finished, every service together (`push.max_pending`).
    pending: Arc<Semaphore>,
    jobs: TaskTracker,
    refresh_every: Duration,
}

impl Sender {
    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        // librdkafka's events (statistics for the BrokerWatch, errors) are
        // served only inside recv(), so it is awaited from the start, even
        // while no message can come: unserved, they would pile up.
        {
            let consumer = self.consumer();
            loop {
                tokio::select! {
                    _ = self.push.registry.wait_loaded() => break,
                    _ = shutdown.cancelled() => return,
                    received = consumer.recv() => {
                        if let Err(e) = received {
                            tracing::debug!("push consumer: {e}");
                        }
                    }
                }
            }
        }
        let mut subscribed: Vec<String> = Vec::new();
        let mut refresh = tokio::time::interval(self.refresh_every);
        let mut commit = tokio::time::interval(COMMIT_EVERY);
        let needs_headers = self.hub.router().needs_headers();
        let mut topics: HashMap<String, Arc<str>> = HashMap::new();
        let mut channels = Vec::new();
        loop {
            let consumer = self.consumer();
            let refresh_due = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = refresh.tick() => true,
                _ = commit.tick() => {
                    self.commit(CommitMode::Async);
                    false
                }
                // Also before any subscription: it serves the events.
                received = consumer.recv() => {
                    let msg = match received {
                        Ok(msg) => msg,
                        Err(e) => {
                            tracing::debug!("push consumer: {e}");
                            continue;
                        }
                    };
                    let topic = topics
                        .entry(msg.topic().to_owned())
                        .or_insert_with(|| Arc::from(msg.topic()))
                        .clone();
                    let record = to_record(&msg, topic, needs_headers);
                    drop(msg);
                    channels.clear();
                    self.hub.router().route(&record, &mut channels);
                    self.dispatch(record, &channels, &shutdown).await;
                    false
                }
            };
            if refresh_due {
                if !consumer.context().brokers.knows_a_broker() {
                    // Closing the old one blocks: it must not end here.
                    drop(consumer);
                    self.recreate_consumer(&mut subscribed);
                }
                self.resubscribe(&mut subscribed).await;
            }
        }
        self.jobs.close();
        if tokio::time::timeout(STOP_GRACE, self.jobs.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "push: pushes still in flight at stop; their records will be pushed again by the node that takes the partitions over"
            );
        }
        self.commit(CommitMode::Sync);
    }

    fn consumer(&self) -> Arc<StreamConsumer<GroupContext>> {
        self.consumer.lock().clone()
    }

    /// librdkafka dropped every broker it knew ([`BrokerWatch`]): the
    /// group's session with this consumer is over (it can send no
    /// heartbeat), so a new one, from the same config, joins the group
    /// again. It starts each partition it gets at the group's committed
    /// offset, as a node taking partitions over from a dead one does:
    /// pushes not finished are sent again (at-least-once), and those that
    /// end after this do not move a commit. The old one is closed on a
    /// thread of its own (with no broker its close can take long, and a
    /// process that stops does not wait for it), its callbacks turned off
    /// first.
    fn recreate_consumer(&self, subscribed: &mut Vec<String>) {
        let old = self.consumer();
        let known = old.context().known_at_start.lock().clone();
        let context = GroupContext::new(
            self.tracker.clone(),
            self.errors.clone(),
            known,
            self.push.metrics.push_assigned_partitions.clone(),
        );
        let goes_on = format!("joins group {} again", self.push.config.group_id);
        match self.config.create_with_context(context) {
            Ok(fresh) => {
                old.context().retired.store(true, Ordering::SeqCst);
                self.tracker.lock().forget_all();
                self.push.metrics.push_assigned_partitions.set(0);
                *self.consumer.lock() = Arc::new(fresh);
                subscribed.clear();
                self.errors.recreated("push consumer", &goes_on, Ok(()));
                let closing = std::thread::Builder::new()
                    .name("herald-push-close".into())
                    .spawn(move || drop(old));
                if let Err(e) = closing {
                    tracing::warn!("push consumer: no thread to close the old consumer on: {e}");
                }
            }
            // Tried again at the next refresh.
            Err(e) => self.errors.recreated("push consumer", &goes_on, Err(&e)),
        }
    }

    /// Subscribes the group to every topic a route reads (found in the
    /// metadata, so `topic_regex` routes match exactly as the ingest's do).
    async fn resubscribe(&self, subscribed: &mut Vec<String>) {
        let consumer = self.consumer();
        let asking = consumer.clone();
        let metadata =
            tokio::task::spawn_blocking(move || asking.fetch_metadata(None, METADATA_TIMEOUT))
                .await;
        let metadata = match metadata {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                tracing::debug!("push consumer: metadata: {e}");
                return;
            }
            Err(_) => return,
        };
        let router = self.hub.router();
        let mut wanted: Vec<String> = metadata
            .topics()
            .iter()
            .map(|t| t.name())
            .filter(|t| {
                !t.starts_with("__")
                    && *t != self.push.config.subscriptions_topic
                    && router.consumes(t)
            })
            .map(str::to_owned)
            .collect();
        wanted.sort();
        if wanted == *subscribed || wanted.is_empty() {
            return;
        }
        let names: Vec<&str> = wanted.iter().map(String::as_str).collect();
        match consumer.subscribe(&names) {
            Ok(()) => {
                consumer
                    .context()
                    .known_at_start
                    .lock()
                    .get_or_insert_with(|| wanted.iter().cloned().collect());
                tracing::info!(topics = ?wanted, group = self.push.config.group_id, "push: sending for these topics");
                *subscribed = wanted;
            }
            Err(e) => tracing::warn!("push consumer: subscribe: {e}"),
        }
    }

    fn commit(&self, mode: CommitMode) {
        let offsets = self.tracker.lock().committable();
        if offsets.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer().commit(&offsets, mode) {
            tracing::debug!("push consumer: commit: {e}");
        }
    }

    /// One push per subscription of the record's channels.
    async fn dispatch(
        self: &Arc<Self>,
        record: crate::record::Record,
        channels: &[String],
        shutdown: &CancellationToken,
    ) {
        let targets = self.push.store.targets(channels);
        let generation = self.tracker.lock().begin(
            &record.topic,
            record.partition,
            record.offset,
            !targets.is_empty(),
        );
        if targets.is_empty() {
            return;
        }
        let done = Arc::new(RecordDone {
            remaining: AtomicUsize::new(targets.len()),
            tracker: self.tracker.clone(),
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            generation,
        });
        let topic_header = topic_header(&record);
        let mut plaintexts: HashMap<&str, Arc<Vec<u8>>> = HashMap::new();
        for (subscription, channel) in targets {
            let plaintext = plaintexts
                .entry(channel)
                .or_insert_with(|| Arc::new(payload::plaintext(&self.hub, channel, &record)))
                .clone();
            let service = self.service(&subscription.endpoint.origin);
            let permit = tokio::select! {
                permit = self.pending.clone().acquire_owned() => permit.expect("never closed"),
                _ = shutdown.cancelled() => return,
            };
            match service
                .make_room(self.push.config.max_queued_per_service, shutdown)
                .await
            {
                Room::Made => {}
                Room::Stopping => return,
                Room::Failing => {
                    service.dropped.inc();
                    service.log_drop(
                        "push.max_queued_per_service pushes are waiting for it and it is failing",
                    );
                    done.one_done();
                    continue;
                }
            }
            let job = Job {
                subscription,
                plaintext,
                topic: topic_header.clone(),
                timestamp: record.timestamp,
                done: done.clone(),
                service,
                _permit: permit,
            };
            self.enqueue(job);
        }
    }

    /// A subscription's pushes go one at a time, in the order of their
    /// records, so a browser sees each partition in offset order (and one
    /// subscription never has more than one request in flight).
    fn enqueue(self: &Arc<Self>, job: Job) {
        let id = job.subscription.id;
        {
            let mut queues = self.queues.lock();
            if let Some(queue) = queues.get_mut(&id) {
                queue.push_back(job);
                return;
            }
            queues.insert(id, VecDeque::new());
        }
        let sender = self.clone();
        self.jobs.spawn(async move {
            let mut next = Some(job);
            while let Some(job) = next {
                sender.clone().send(job).await;
                let mut queues = sender.queues.lock();
                next = queues.get_mut(&id).and_then(VecDeque::pop_front);
                if next.is_none() {
                    queues.remove(&id);
                }
            }
        });
    }

    fn service(&self, origin: &str) -> Arc<Service> {
        let mut services = self.services.lock();
        if let Some(s) = services.get(origin) {
            return s.clone();
        }
        let m = &self.push.metrics;
        let counter = |result: &str| m.push_sent.with_label_values(&[result, origin]);
        let service = Arc::new(Service {
            origin: origin.to_owned(),
            in_flight: Semaphore::new(self.push.config.max_in_flight_per_service),
            queued: AtomicUsize::new(0),
            room: tokio::sync::Notify::new(),
            failing: std::sync::atomic::AtomicBool::new(false),
            paused_until: Mutex::new(None),
            delivered: counter("delivered"),
            expired: counter("expired"),
            retried: counter("retried"),
            dropped: counter("dropped"),
            latency: m.push_latency.with_label_values(&[origin]),
            last_drop_log: Mutex::new(None),
        });
        services.insert(origin.to_owned(), service.clone());
        service
    }

    /// One push, with its retries, to its end.
    async fn send(self: Arc<Self>, job: Job) {
        let config = &self.push.config;
        let first = Instant::now();
        let service = job.service.clone();
        let body = match web_push_native::encrypt(
            job.plaintext.to_vec(),
            &job.subscription.p256dh,
            &job.subscription.auth.into(),
        ) {
            Ok(body) => body,
            Err(e) => {
                service.dropped.inc();
                service.log_drop(&format!("encryption failed: {e}"));
                return self.finish(job);
            }
        };
        let mut attempt = 1;
        loop {
            service.wait_unpaused().await;
            let outcome = {
                let _slot = service.in_flight.acquire().await.expect("never closed");
                self.attempt(&job, &body).await
            };
            let retry_after = match outcome {
                Outcome::Delivered => {
                    service.failing.store(false, Ordering::Relaxed);
                    service.delivered.inc();
                    if let Some(ts) = job.timestamp {
                        let now = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_millis() as i64;
                        service.latency.observe((now - ts).max(0) as f64 / 1000.0);
                    }
                    break;
                }
                Outcome::Gone(status) => {
                    service.expired.inc();
                    self.forget(&job.subscription, status);
                    break;
                }
                Outcome::Permanent(why) => {
                    service.dropped.inc();
                    service.log_drop(&why);
                    break;
                }
                Outcome::Retry { after, why } => {
                    service.failing.store(true, Ordering::Relaxed);
                    (after.unwrap_or_default(), why)
                }
            };
            let (after, why) = retry_after;
            if after > Duration::ZERO {
                service.pause(after);
            }
            let delay = backoff(config.retry_backoff, attempt).max(after);
            if attempt >= config.max_attempts || first.elapsed() + delay > config.retry_deadline {
                service.dropped.inc();
                service.log_drop(&format!("{why}; gave up after {attempt} attempts"));
                break;
            }
            service.retried.inc();
            tracing::debug!(
                service = service.origin,
                attempt,
                "push: {why}; retrying in {delay:?}"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
        self.finish(job)
    }

    fn finish(&self, job: Job) {
        job.service.queued.fetch_sub(1, Ordering::Relaxed);
        job.service.room.notify_one();
        job.done.one_done();
    }

    async fn attempt(&self, job: &Job, body: &[u8]) -> Outcome {
        let config = &self.push.config;
        let subscription = &job.subscription;
        let request = self
            .client
            .post(subscription.endpoint.uri.to_string())
            .header("TTL", config.ttl.as_secs().to_string())
            .header("Urgency", config.urgency.as_str())
            .header("Topic", &*job.topic)
            .header(header::CONTENT_ENCODING, "aes128gcm")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(
                header::AUTHORIZATION,
                self.push.vapid.header(&subscription.endpoint.origin),
            )
            .body(body.to_vec());
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Outcome::Retry {
                    after: None,
                    why: format!(
                        "no answer within push.request_timeout ({:?})",
                        config.request_timeout
                    ),
                };
            }
            Err(e) => {
                return Outcome::Retry {
                    after: None,
                    why: format!("request failed: {e}"),
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // The connection is reused only once the body has been read.
        let _ = response.bytes().await;
        match status.as_u16() {
            200..=299 => Outcome::Delivered,
            404 | 410 => Outcome::Gone(status.as_u16()),
            429 | 500..=599 => Outcome::Retry {
                after: retry_after,
                why: format!("the push service answered {status}"),
            },
            _ => Outcome::Permanent(format!("the push service refused the push: {status}")),
        }
    }

    /// The push service says the subscription is gone: out of the table
    /// now, and a tombstone in the topic for every node.
    fn forget(&self, subscription: &Arc<Subscription>, status: u16) {
        let id = subscription.id;
        self.push.store.remove(id);
        tracing::info!(
            service = subscription.endpoint.origin,
            status,
            "push subscription expired; removing it"
        );
        let push = self.push.clone();
        tokio::spawn(async move {
            if let Err(e) = push.registry.remove(id).await {
                tracing::warn!(
                    "push: {e}; the subscription stays in the topic until its next push expires it"
                );
            }
        });
    }
}

enum Outcome {
    Delivered,
    /// `404`/`410`: the subscription no longer exists.
    Gone(u16),
    /// Will not succeed however often it is tried.
    Permanent(String),
    Retry {
        after: Option<Duration>,
        why: String,
    },
}

/// The delay before retry number `attempt` (1 for the first retry):
/// `base` doubled each time up to [`MAX_BACKOFF`], then a random point in
/// its upper half, so pushes that failed together do not retry together.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let full = base
        .saturating_mul(1 << (attempt - 1).min(16))
        .min(MAX_BACKOFF);
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    let fraction = f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX);
    full.mul_f64(0.5 + 0.5 * fraction)
}

/// RFC 8030 §5.4 `Topic`: at most 32 characters of the base64url alphabet.
/// From the record's position, so the same record pushed twice (a node
/// took over a partition before the first push was committed) replaces
/// the first push at the push service if it was not delivered yet.
fn topic_header(record: &crate::record::Record) -> Arc<str> {
    let digest = Sha256::digest(format!(
        "{}/{}/{}",
        record.topic, record.partition, record.offset
    ));
    Arc::from(URL_SAFE_NO_PAD.encode(&digest[..24]))
}

struct Job {
    subscription: Arc<Subscription>,
    plaintext: Arc<Vec<u8>>,
    topic: Arc<str>,
    timestamp: Option<i64>,
    done: Arc<RecordDone>,
    service: Arc<Service>,
    _permit: OwnedSemaphorePermit,
}

/// One push service: the endpoints of one origin.
struct Service {
    origin: String,
    in_flight: Semaphore,
    /// Pushes for it not yet ended (`push.max_queued_per_service`).
    queued: AtomicUsize,
    /// Told when a push for it ends (room in `queued`).
    room: tokio::sync::Notify,
    /// Its last attempt failed in a way worth retrying (timeout, 429,
    /// 5xx); cleared by a delivery.
    failing: std::sync::atomic::AtomicBool,
    /// No request before this instant (a `Retry-After`).
    paused_until: Mutex<Option<Instant>>,
    delivered: IntCounter,
    expired: IntCounter,
    retried: IntCounter,
    dropped: IntCounter,
    latency: Histogram,
    last_drop_log: Mutex<Option<Instant>>,
}

/// What [`Service::make_room`] found.
enum Room {
    Made,
    /// The service is failing: its full queue would only grow.
    Failing,
    Stopping,
}

impl Service {
    /// Takes a place among the pushes waiting for this service. At the
    /// limit, waits for one to end while the service is healthy (a busy
    /// push service — most browsers share one — slows reading, and loses
    /// nothing); refuses while it is failing, so a service that is down
    /// cannot hold up the others.
    async fn make_room(&self, limit: usize, shutdown: &CancellationToken) -> Room {
        loop {
            if self.queued.fetch_add(1, Ordering::AcqRel) < limit {
                return Room::Made;
            }
            self.queued.fetch_sub(1, Ordering::AcqRel);
            if self.failing.load(Ordering::Relaxed) {
                return Room::Failing;
            }
            tokio::select! {
                _ = self.room.notified() => {}
                _ = shutdown.cancelled() => return Room::Stopping,
            }
        }
    }

    fn pause(&self, duration: Duration) {
        let until = Instant::now() + duration;
        let mut paused = self.paused_until.lock();
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    async fn wait_unpaused(&self) {
        loop {
            let until = *self.paused_until.lock();
            match until {
                Some(until) if until > Instant::now() => {
                    tokio::time::sleep_until(until.into()).await
                }
                _ => return,
            }
        }
    }

    fn log_drop(&self, why: &str) {
        let now = Instant::now();
        let mut last = self.last_drop_log.lock();
        if last.is_none_or(|t| now.duration_since(t) >= DROP_LOG_INTERVAL) {
            *last = Some(now);
            tracing::warn!(service = self.origin, "push dropped: {why}");
        }
    }
}

/// Counts down the pushes of one record; the last one tells the tracker.
struct RecordDone {
    remaining: AtomicUsize,
    tracker: Arc<Mutex<Tracker>>,
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    generation: u64,
}

impl RecordDone {
    fn one_done(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker
                .lock()
                .finish(&self.topic, self.partition, self.offset, self.generation);
        }
    }
}

/// Per assigned partition: the records whose pushes have not all ended.
/// The committable offset is the lowest of them, or past the last record
/// read when none is left.
#[derive(Default)]
struct Tracker {
    partitions: HashMap<(Arc<str>, i32), Track>,
    /// Distinguishes a partition's tracking before and after it was
    /// revoked and assigned again: a push that ends after its partition
    /// left is not counted in the new one.
    generations: u64,
}

struct Track {
    generation: u64,
    unfinished: BTreeSet<i64>,
    next: i64,
    committed: i64,
}

impl Track {
    /// The offset to commit — the lowest unfinished record, or past the
    /// last one read — when it moved since the last commit.
    fn uncommitted(&self) -> Option<i64> {
        let at = self.unfinished.first().copied().unwrap_or(self.next);
        (at > self.committed).then_some(at)
    }
}

impl Tracker {
    fn begin(&mut self, topic: &Arc<str>, partition: i32, offset: i64, has_pushes: bool) -> u64 {
        let generations = &mut self.generations;
        let track = self
            .partitions
            .entry((topic.clone(), partition))
            .or_insert_with(|| {
                *generations += 1;
                Track {
                    generation: *generations,
                    unfinished: BTreeSet::new(),
                    next: offset,
                    committed: -1,
                }
            });
        if has_pushes {
            track.unfinished.insert(offset);
        }
        track.next = track.next.max(offset + 1);
        track.generation
    }

    fn finish(&mut self, topic: &Arc<str>, partition: i32, offset: i64, generation: u64) {
        if let Some(track) = self.partitions.get_mut(&(topic.clone(), partition))
            && track.generation == generation
        {
            track.unfinished.remove(&offset);
        }
    }

    /// Offsets that moved since the last call.
    fn committable(&mut self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), track) in &mut self.partitions {
            if let Some(at) = track.uncommitted() {
                track.committed = at;
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(at));
            }
        }
        tpl
    }

    /// Stops tracking every partition (their consumer is gone): pushes
    /// that end after this count in no commit.
    fn forget_all(&mut self) {
        self.partitions.clear();
    }

    /// The committable offsets of `revoked`, which stop being tracked.
    fn revoke(&mut self, revoked: &TopicPartitionList) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        let gone: HashSet<(String, i32)> = revoked
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        self.partitions.retain(|(topic, partition), track| {
            if !gone.contains(&(topic.to_string(), *partition)) {
                return true;
            }
            if let Some(at) = track.uncommitted() {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(at));
            }
            false
        });
        tpl
    }
}

/// The group consumer's callbacks: where a partition nobody has pushed
/// from yet starts, committing what is finished before partitions go to
/// another node, and counting client errors.
struct GroupContext {
    tracker: Arc<Mutex<Tracker>>,
    errors: Arc<ErrorEvents>,
    /// The topics of this node's first subscription (set once).
    known_at_start: Mutex<Option<HashSet<String>>>,
    assigned: prometheus::IntGauge,
    brokers: BrokerWatch,
    /// Its consumer was replaced ([`Sender::recreate_consumer`]): the
    /// partitions it still holds are no longer this node's to commit.
    retired: AtomicBool,
}

impl GroupContext {
    fn new(
        tracker: Arc<Mutex<Tracker>>,
        errors: Arc<ErrorEvents>,
        known_at_start: Option<HashSet<String>>,
        assigned: prometheus::IntGauge,
    ) -> GroupContext {
        GroupContext {
            tracker,
            errors,
            known_at_start: Mutex::new(known_at_start),
            assigned,
            brokers: BrokerWatch::new(),
            retired: AtomicBool::new(false),
        }
    }

    /// Commits a start for every assigned partition the group has no
    /// offset for, before the assignment takes effect: a topic this node
    /// knew when it started begins at its live end (a new deployment does
    /// not push history), one that appeared later at its beginning (as
    /// the ingest reads it: nothing produced to a new topic is missed).
    /// Committed at once, so a node that takes the partition over later
    /// continues from there rather than choosing again.
    fn commit_starts(&self, consumer: &BaseConsumer<Self>, assigned: &TopicPartitionList) {
        let committed = match consumer.committed_offsets(assigned.clone(), METADATA_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    "push consumer: committed offsets: {e}; new partitions start at their end"
                );
                return;
            }
        };
        let known = self.known_at_start.lock().clone().unwrap_or_default();
        let mut starts = TopicPartitionList::new();
        for e in committed.elements() {
            if e.offset() != Offset::Invalid {
                continue;
            }
            match consumer.fetch_watermarks(e.topic(), e.partition(), METADATA_TIMEOUT) {
                Ok((low, high)) => {
                    let start = if known.contains(e.topic()) { high } else { low };
                    let _ = starts.add_partition_offset(
                        e.topic(),
                        e.partition(),
                        Offset::Offset(start),
                    );
                }
                Err(err) => tracing::warn!(
                    topic = e.topic(),
                    partition = e.partition(),
                    "push consumer: watermarks: {err}; the partition starts at its end"
                ),
            }
        }
        if starts.count() > 0
            && let Err(e) = consumer.commit(&starts, CommitMode::Sync)
        {
            tracing::warn!("push consumer: committing start offsets: {e}");
        }
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, stats: Statistics) {
        self.brokers.observe(&stats);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.client_error(error, reason);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.retired.load(Ordering::SeqCst) {
            return;
        }
        match rebalance {
            Rebalance::Revoke(revoked) => {
                self.assigned.set(0);
                let offsets = self.tracker.lock().revoke(revoked);
                if offsets.count() > 0
                    && let Err(e) = consumer.commit(&offsets, CommitMode::Sync)
                {
                    tracing::debug!("push consumer: commit at rebalance: {e}");
                }
            }
            Rebalance::Assign(assigned) => self.commit_starts(consumer, assigned),
            Rebalance::Error(_) => {}
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.retired.load(Ordering::SeqCst) {
            return;
        }
        if let Rebalance::Assign(assigned) = rebalance {
            self.assigned.set(assigned.count() as i64);
            tracing::info!(
                partitions = assigned.count(),
                "push: partitions assigned to this node"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_past_finished_records() {
        let mut t = Tracker::default();
        let topic: Arc<str> = Arc::from("t");
        let g = t.begin(&topic, 0, 10, true);
        t.begin(&topic, 0, 11, false);
        t.begin(&topic, 0, 12, true);
        let offsets = |tpl: TopicPartitionList| {
            tpl.elements()
                .iter()
                .map(|e| e.offset())
                .collect::<Vec<_>>()
        };
        assert_eq!(offsets(t.committable()), vec![Offset::Offset(10)]);
        t.finish(&topic, 0, 12, g);
        assert_eq!(offsets(t.committable()), vec![]);
        t.finish(&topic, 0, 10, g);
        assert_eq!(offsets(t.committable()), vec![Offset::Offset(13)]);
        // A push that ends after its partition was revoked and assigned
        // again does not count.
        t.begin(&topic, 0, 13, true);
        let mut revoked = TopicPartitionList::new();
        revoked.add_partition("t", 0);
        assert_eq!(offsets(t.revoke(&revoked)), vec![]);
        let g2 = t.begin(&topic, 0, 13, true);
        assert_ne!(g, g2);
        t.finish(&topic, 0, 13, g);
        assert_eq!(offsets(t.committable()), vec![Offset::Offset(13)]);
    }

    #[test]
    fn a_consumer_created_again_commits_nothing_of_the_old_ones_pushes() {
        let mut t = Tracker::default();
        let topic: Arc<str> = Arc::from("t");
        let old = t.begin(&topic, 0, 5, true);
        t.forget_all();
        assert_eq!(t.committable().count(), 0, "nothing left to commit");
        // The new consumer starts at the committed offset (5) again.
        let new = t.begin(&topic, 0, 5, true);
        assert_ne!(old, new);
        t.finish(&topic, 0, 5, old);
        let committed: Vec<Offset> = t
            .committable()
            .elements()
            .iter()
            .map(|e| e.offset())
            .collect();
        assert_eq!(
            committed,
            vec![Offset::Offset(5)],
            "the old push's end moves nothing"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let base = Duration::from_millis(500);
        for attempt in 1..=3 {
            let d = backoff(base, attempt);
            let full = base * (1 << (attempt - 1));
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
        assert!(backoff(base, 40) <= MAX_BACKOFF);
    }

    #[test]
    fn topic_header_is_rfc8030_sized() {
        let record = crate::record::Record {
            topic: Arc::from("news"),
            partition: 3,
            offset: 99,
            timestamp: None,
            key: None,
            headers: vec![],
            payload: None,
        };
        let t = topic_header(&record);
        assert_eq!(t.len(), 32);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
}
