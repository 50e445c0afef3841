//! The hub: the channel registry, per-channel history, live fan-out and all
//! resume logic. Transports only turn a [`Subscription`] into bytes.
//!
//! The registry is split into shards, each behind its own lock, keyed by
//! channel name. A channel exists only while it has history or subscribers,
//! so millions of per-user channels with nothing in them cost nothing.
//!
//! **Exactness.** The ingest publishes records one at a time, in a single
//! node-wide order (`seq`). A subscriber registers in its channels and copies
//! their history while holding all of their shard locks, so every
//! publication is either in the copied history or arrives later in its
//! inbox — never both, never neither (a record sent to two of its channels
//! may appear in both, and is then filtered by offset). Positions only move
//! forward, so each record is delivered at most once, in partition order.
//!
//! **History coverage.** For a channel `C` and partition `q`, `floor(C, q)`
//! is the offset from which *every* record of `q` routed to `C` is still in
//! memory. It starts at the node-wide *horizon* when the channel is created
//! and rises as history is evicted; when a channel is dropped its floors
//! fold into the horizon, which therefore bounds every channel that does not
//! exist. A cursor at or above the floors is served from memory, exactly.

pub mod cursor;
pub mod deflated;
pub mod inbox;
pub mod positions;
pub mod publication;
pub mod subscription;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard, RwLock};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::HubConfig;
use crate::metrics::Metrics;
use crate::record::Record;
use crate::router::{Router, is_valid_channel};
use arc_swap::ArcSwap;
use cursor::Cursor;
use inbox::Inbox;
pub use inbox::{CloseReason, SubscriberKind};
use positions::Positions;
use publication::Publication;
pub use subscription::{Delivery, Gap, Subscription};

/// The topics that feed each of a subscription's channels, in its order.
/// The topics feeding each channel of a subscription (sorted, exact
/// capacity: a subscription holds them for its whole life).
pub(crate) type Feeds = Vec<Vec<String>>;

/// How long a subscription waits for a starting node to become ready
/// before it is refused with `not_ready`.
pub const READY_WAIT: Duration = Duration::from_secs(10);

/// Longest a subscription whose cursor names a partition this node does not
/// know waits for the ingest to re-read the metadata.
pub const METADATA_WAIT: Duration = Duration::from_secs(5);

/// How many times a subscription starts again because a reset of
/// partitions ran while it started, before it is refused as `not_ready`.
const RESET_ATTEMPTS: usize = 1000;

/// How often the sweeper drops aged history and empty channels.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Where a new subscription starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// The live end: only records that arrive from now on.
    Live,
    /// Right after a cursor.
    Cursor(Cursor),
    /// The first records with a Kafka timestamp at or after this one (ms).
    Since(i64),
}

/// One channel's subscribers, by transport: `counts[i]` read it through
/// `SubscriberKind::ALL[i]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelCounts {
    pub channel: Arc<str>,
    pub counts: [usize; SubscriberKind::ALL.len()],
}

/// Offsets `from..to` of one partition: a range to read back from Kafka,
/// or (in a gap) one Kafka no longer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRange {
    pub topic: Arc<str>,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

/// Offsets of partitions the ingest could not read because Kafka deleted
/// them first (see [`Hub::partitions_lost`]), for every subscriber, placed in
/// the node-wide publication order by `seq`: publications before it were
/// read before the loss, publications after it after.
///
/// With `reset`, the partitions' offsets started over below the ingest's
/// position (`from`, in the old offsets) and it goes on at `to` in the new
/// ones: see [`Hub::partitions_reset`].
#[derive(Debug)]
pub struct Notice {
    pub seq: u64,
    pub lost: Vec<PartitionRange>,
    pub reset: bool,
}

/// What a replay hands to its subscription, in this order: gaps (if any),
/// record batches, then the channel closes (or `Failed`).
pub enum ReplayEvent {
    Gaps(Vec<PartitionRange>),
    Records(Vec<Arc<Publication>>),
    Failed(String),
}

/// The answer to a `since=` look-up: per partition, in the order asked.
pub type OffsetsForTime = tokio::sync::oneshot::Receiver<Result<Vec<i64>, SubscribeError>>;

/// Reads history older than the hub's memory back from Kafka
/// (`kafka::replay::Replayer`). `client` is the address of the client the
/// work is for: the source bounds what one address may have running.
pub trait ReplaySource: Send + Sync {
    /// Starts reading `ranges`, keeping records `router` maps to `channels`.
    /// Refuses at once when over the replay limits.
    fn start(
        &self,
        ranges: Vec<PartitionRange>,
        channels: Vec<Arc<str>>,
        router: Arc<Router>,
        client: IpAddr,
    ) -> Result<tokio::sync::mpsc::Receiver<ReplayEvent>, SubscribeError>;

    /// Starts looking up the first offset at or after timestamp `ts` (ms)
    /// of each partition (the high watermark where there is none). Refuses
    /// at once when over the look-up limits.
    fn offsets_for_time(
        &self,
        partitions: Vec<(Arc<str>, i32)>,
        ts: i64,
        client: IpAddr,
    ) -> Result<OffsetsForTime, SubscribeError>;

    /// Starts reading the brokers' high watermark of each partition, under
    /// the same limits as [`ReplaySource::offsets_for_time`].
    fn high_watermarks(
        &self,
        partitions: Vec<(Arc<str>, i32)>,
        client: IpAddr,
    ) -> Result<OffsetsForTime, SubscribeError>;

    /// Drops whatever is kept of these partitions' records: their offsets
    /// started over ([`Hub::partitions_reset`]).
    fn forget(&self, partitions: Vec<(Arc<str>, i32)>);
}

/// Why a subscription was refused. Each names the offending value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscribeError {
    #[error("no channel given")]
    NoChannels,
    #[error("{given} channels requested; the limit is {max}")]
    TooManyChannels { given: usize, max: usize },
    #[error("invalid channel name {0:?} (1 to 255 bytes, no control characters)")]
    InvalidChannel(String),
    #[error("no route produces channel {0:?}")]
    UnknownChannel(String),
    #[error("cursor names topic {topic:?}, which does not feed channel(s) {channels}")]
    CursorTopic { topic: String, channels: String },
    #[error(
        "cursor names partition {partition} of topic {topic:?}, which has {count} partition(s)"
    )]
    CursorPartition {
        topic: String,
        partition: i32,
        count: usize,
    },
    #[error(
        "cursor position {topic}/{partition}@{offset} is older than the history this node holds for channel {channel:?} (it starts at offset {floor})"
    )]
    CursorTooOld {
        channel: String,
        topic: String,
        partition: i32,
        offset: i64,
        floor: i64,
    },
    #[error("Herald is not ready: Kafka positions are not known yet")]
    NotReady,
    #[error(
        "this Herald node is draining (POST /admin/drain): it takes no new subscriptions; connect to another node"
    )]
    Draining,
    #[error(
        "resuming from this cursor means reading back {records} offsets from Kafka (every record of the partitions feeding the channel(s), whichever channel it maps to); the limit is {max} (replay.max_records): resume from a newer cursor, or without one"
    )]
    ReplayTooLarge { records: i64, max: u64 },
    #[error("{max} replays from Kafka are running (replay.max_concurrent); retry shortly")]
    ReplayBusy { max: usize },
    #[error(
        "{max} since= look-ups in Kafka are running (replay.max_concurrent_lookups); retry shortly"
    )]
    LookupsBusy { max: usize },
    #[error(
        "{client} has {max} replays and since= look-ups running, its limit (replay.max_concurrent_per_ip); retry once one has finished"
    )]
    ReplaysPerClient { client: IpAddr, max: usize },
    #[error("Kafka is unavailable: {0}")]
    Kafka(String),
    #[error("since= needs Kafka to find offsets by time, and this hub has no Kafka access")]
    SinceNeedsKafka,
    #[error(
        "cursor position {topic}/{partition}@{offset} is beyond the end of the partition ({end}): the cursor is from another cluster or from a topic deleted and created again, or was not made by Herald; resume without it (or with since=)"
    )]
    CursorAhead {
        topic: String,
        partition: i32,
        offset: i64,
        end: i64,
    },
    #[error(
        "the broker did not answer offsets-for-times for {topic}/{partition} (librdkafka's mock cluster under herald dev does not), and reading it instead would mean {records} records: resume with a cursor"
    )]
    SinceUnanswered {
        topic: String,
        partition: i32,
        records: i64,
    },
}

/// The hub handle; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    shards: Box<[Mutex<Shard>]>,
    config: HubConfig,
    /// Channels one subscription may hold (`limits.max_channels_per_connection`).
    max_channels: AtomicUsize,
    /// Swapped whole by a config reload ([`Hub::reconfigure`]): records
    /// from then on are routed by the new routes, new subscriptions
    /// resolved by them; open subscriptions keep their channels.
    router: ArcSwap<Router>,
    metrics: Arc<Metrics>,
    /// The ingest's positions as of its latest batch.
    positions: RwLock<Arc<Positions>>,
    /// Offsets from which every record routed to a channel that does not
    /// exist is in memory (that is: none was routed to it).
    horizon: Mutex<Arc<Positions>>,
    /// Per partition, its end when the ingest was assigned it (see
    /// [`Hub::partition_assigned`]).
    live_end: RwLock<Positions>,
    /// Per partition, the offset after the newest range the ingest lost
    /// ([`Hub::partitions_lost`]): no channel's memory covers below it.
    lost: Mutex<Arc<Positions>>,
    ready: AtomicBool,
    /// Set by [`Hub::drain`]: new subscriptions are refused.
    draining: AtomicBool,
    /// Bumped at the start and at the end of each [`Hub::partitions_reset`]:
    /// odd while one is under way. A subscription that saw it change while
    /// it started begins again.
    resets: AtomicU64,
    /// A subscription asks the ingest to re-read the metadata now.
    refresh_wanted: AtomicBool,
    /// Metadata refreshes the ingest has started and finished, and the
    /// wake-up of each finish.
    refreshes_started: AtomicU64,
    refreshes_finished: AtomicU64,
    last_refresh_ok: AtomicBool,
    refreshed: Notify,
    /// Wakes subscriptions waiting for a starting node to become ready.
    became_ready: Notify,
    seq: AtomicU64,
    history_bytes: AtomicUsize,
    /// Wakes the sweeper when history goes over the memory budget.
    pressure: Notify,
    /// Reads older history from Kafka; without one, a cursor older than
    /// memory is refused with `CursorTooOld`.
    replay: RwLock<Option<Arc<dyn ReplaySource>>>,
}

#[derive(Default)]
struct Shard {
    channels: HashMap<Arc<str>, Channel>,
}

struct Channel {
    history: VecDeque<Arc<Publication>>,
    history_bytes: usize,
    subscribers: Vec<Arc<Inbox>>,
    /// The horizon when the channel was created.
    base: Arc<Positions>,
    /// Floors raised by eviction: offset after the newest evicted record.
    evicted: Positions,
}

impl Channel {
    fn new(base: Arc<Positions>) -> Self {
        Channel {
            history: VecDeque::new(),
            history_bytes: 0,
            subscribers: Vec::new(),
            base,
            evicted: Positions::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.history.is_empty() && self.subscribers.is_empty()
    }

    /// The offset from which every record of `topic/partition` routed here
    /// is in history. `horizon` answers for partitions newer than the channel.
    fn floor(&self, topic: &str, partition: i32, horizon: &Positions) -> i64 {
        let base = self
            .base
            .get(topic, partition)
            .or_else(|| horizon.get(topic, partition))
            .unwrap_or(0);
        base.max(self.evicted.get(topic, partition).unwrap_or(0))
    }
}

/// Why a publication leaves history, the `reason` of
/// `herald_hub_evictions_total`: over `hub.history_messages` (`count`) or
/// `hub.history_bytes` (`bytes`) for its channel, older than
/// `hub.history_age` (`age`), over the node's `hub.memory_budget`
/// (`budget`), or its partition's offsets started over (`reset`).
const EVICTION_REASONS: [&str; 5] = ["count", "bytes", "age", "budget", "reset"];

impl Hub {
    pub fn new(
        config: HubConfig,
        max_channels: usize,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
    ) -> Hub {
        let shards = (0..config.shards)
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        // Every reason's series is there from the first scrape.
        for reason in EVICTION_REASONS {
            metrics.hub_evictions.with_label_values(&[reason]);
        }
        Hub {
            inner: Arc::new(Inner {
                shards,
                config,
                max_channels: AtomicUsize::new(max_channels),
                router: ArcSwap::new(router),
                metrics,
                positions: RwLock::new(Arc::new(Positions::new())),
                horizon: Mutex::new(Arc::new(Positions::new())),
                live_end: RwLock::new(Positions::new()),
                lost: Mutex::new(Arc::new(Positions::new())),
                ready: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                resets: AtomicU64::new(0),
                refresh_wanted: AtomicBool::new(false),
                refreshes_started: AtomicU64::new(0),
                refreshes_finished: AtomicU64::new(0),
                last_refresh_ok: AtomicBool::new(false),
                refreshed: Notify::new(),
                became_ready: Notify::new(),
                seq: AtomicU64::new(0),
                history_bytes: AtomicUsize::new(0),
                pressure: Notify::new(),
                replay: RwLock::new(None),
            }),
        }
    }

    /// Lets the hub read history older than its memory from Kafka.
    pub fn set_replay_source(&self, source: Arc<dyn ReplaySource>) {
        *self.inner.replay.write() = Some(source);
    }

    /// The routes as of now (a cheap snapshot: hold it for one piece of
    /// work, not for ever).
    pub fn router(&self) -> arc_swap::Guard<Arc<Router>> {
        self.inner.router.load()
    }

    /// Takes reloaded routes and `limits.max_channels_per_connection`, for
    /// records and subscriptions from now on.
    pub fn reconfigure(&self, router: Arc<Router>, max_channels: usize) {
        self.inner.router.store(router);
        self.inner
            .max_channels
            .store(max_channels, Ordering::Relaxed);
    }

    /// Records the ingest's latest positions.
    pub fn set_positions(&self, positions: Arc<Positions>) {
        *self.inner.positions.write() = positions;
    }

    /// The ingest's latest positions.
    pub fn positions(&self) -> Arc<Positions> {
        self.inner.positions.read().clone()
    }

    /// The ingest starts reading a partition at `start`: nothing below it
    /// will ever be in memory. `live_end` is the partition's end when it was
    /// assigned: records below it were produced before this node started and
    /// are read only to warm the history, so a subscription "at the live end"
    /// never starts below it.
    pub fn partition_assigned(&self, topic: &Arc<str>, partition: i32, start: i64, live_end: i64) {
        let mut horizon = self.inner.horizon.lock();
        Arc::make_mut(&mut horizon).set(topic, partition, start);
        drop(horizon);
        self.inner.live_end.write().set(topic, partition, live_end);
    }

    /// The ingest's position in each of `lost` (`from`) was deleted by
    /// Kafka before it was read, and it goes on at `to`: the records in
    /// between never reach this node. Every subscriber is told with a gap
    /// in its stream, in order (a subscription at `from` or before hears of
    /// it between the records before and after); memory no longer covers
    /// anything below `to`, so a cursor below it is read back from Kafka,
    /// whose answer is a gap too. Call before publishing anything at or
    /// after `to`.
    pub fn partitions_lost(&self, lost: Vec<PartitionRange>) {
        let inner = &*self.inner;
        // Raised before any shard is locked: a subscription registering
        // meanwhile either reads the raised floor (its shard locks are
        // taken first) or is registered when its shard is reached below.
        let mut floors = inner.lost.lock();
        let f = Arc::make_mut(&mut floors);
        for range in &lost {
            f.raise(&range.topic, range.partition, range.to);
        }
        drop(floors);
        let notice = Arc::new(Notice {
            seq: inner.seq.fetch_add(1, Ordering::Relaxed),
            lost,
            reset: false,
        });
        for shard in inner.shards.iter() {
            let shard = shard.lock();
            for channel in shard.channels.values() {
                for inbox in &channel.subscribers {
                    inbox.push_notice(notice.clone());
                }
            }
        }
    }

    /// Each of `reset` ends below the ingest's position (`from`): its
    /// offsets started over — the topic was deleted and created again, or
    /// its log was truncated — and the ingest goes on at `to`, in the new
    /// offsets. Every subscriber is told with a gap marked `reset`, in
    /// order, and its position moves back to `to`, so the new records are
    /// delivered rather than taken for ones it already had.
    ///
    /// Memory is emptied: not only the records of the old offsets, but every
    /// publication before now, since each carries the ingest's positions of
    /// the time (which name the old offsets, and would move a cursor past
    /// the new records). Records read back from Kafka before are forgotten
    /// too. Subscriptions starting meanwhile notice the reset (see
    /// `resets` in [`Hub::subscribe`]) and start again. Call before
    /// publishing anything of the new offsets.
    pub fn partitions_reset(&self, reset: Vec<PartitionRange>) {
        let inner = &*self.inner;
        // Odd while the reset is under way.
        inner.resets.fetch_add(1, Ordering::SeqCst);
        {
            let mut positions = (**inner.positions.read()).clone();
            let mut floors = inner.lost.lock();
            let mut horizon = inner.horizon.lock();
            let mut live_end = inner.live_end.write();
            let (f, h) = (Arc::make_mut(&mut floors), Arc::make_mut(&mut horizon));
            for r in &reset {
                positions.set(&r.topic, r.partition, r.to);
                f.set(&r.topic, r.partition, r.to);
                h.set(&r.topic, r.partition, r.to);
                live_end.set(&r.topic, r.partition, r.to);
            }
            *inner.positions.write() = Arc::new(positions);
        }
        if let Some(source) = inner.replay.read().clone() {
            source.forget(
                reset
                    .iter()
                    .map(|r| (r.topic.clone(), r.partition))
                    .collect(),
            );
        }
        let notice = Arc::new(Notice {
            seq: inner.seq.fetch_add(1, Ordering::Relaxed),
            lost: reset.clone(),
            reset: true,
        });
        // Channels created from one horizon share their base: lowered once.
        let mut bases: HashMap<*const Positions, Arc<Positions>> = HashMap::new();
        for shard in inner.shards.iter() {
            let mut shard = shard.lock();
            for channel in shard.channels.values_mut() {
                while !channel.history.is_empty() {
                    inner.evict_front(channel, "reset");
                }
                let lowered = bases.entry(Arc::as_ptr(&channel.base)).or_insert_with(|| {
                    let mut base = (*channel.base).clone();
                    for r in &reset {
                        if base.get(&r.topic, r.partition).is_some() {
                            base.set(&r.topic, r.partition, r.to);
                        }
                    }
                    Arc::new(base)
                });
                channel.base = lowered.clone();
                for r in &reset {
                    if channel.evicted.get(&r.topic, r.partition).is_some() {
                        channel.evicted.set(&r.topic, r.partition, r.to);
                    }
                }
                for inbox in &channel.subscribers {
                    inbox.push_notice(notice.clone());
                }
            }
        }
        inner.resets.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether a subscription asked for a metadata refresh since the last
    /// call (the ingest's question; it decides how soon to answer).
    pub fn take_refresh_request(&self) -> bool {
        self.inner.refresh_wanted.swap(false, Ordering::AcqRel)
    }

    /// The ingest starts to re-read the metadata.
    pub fn metadata_refresh_starts(&self) {
        self.inner.refreshes_started.fetch_add(1, Ordering::AcqRel);
    }

    /// The ingest has re-read the metadata (`ok`: successfully) and
    /// published what it found.
    pub fn metadata_refreshed(&self, ok: bool) {
        self.inner.last_refresh_ok.store(ok, Ordering::Release);
        self.inner.refreshes_finished.fetch_add(1, Ordering::AcqRel);
        self.inner.refreshed.notify_waiters();
    }

    /// A cursor names partitions (or topics) this node does not know yet:
    /// another node may already see them, added a moment ago. Asks the
    /// ingest for a refresh — one for every subscription asking meanwhile
    /// — and waits for it to finish, at most [`METADATA_WAIT`]; the
    /// subscription is then checked against what Kafka said.
    async fn learn_cursor_partitions(&self, cursor: &Cursor) -> Result<(), SubscribeError> {
        let positions = self.positions();
        let unknown = cursor.iter().any(|(topic, partition, _)| {
            self.router().consumes(topic)
                && positions
                    .topic(topic)
                    .is_none_or(|p| usize::try_from(partition).is_ok_and(|p2| p2 >= p.len()))
        });
        if !unknown {
            return Ok(());
        }
        let inner = &*self.inner;
        let deadline = tokio::time::Instant::now() + METADATA_WAIT;
        // A refresh under way may have missed the partition: wait for the
        // end of one that starts after the request.
        let wanted = inner.refreshes_started.load(Ordering::Acquire) + 1;
        inner.refresh_wanted.store(true, Ordering::Release);
        // Refusing the cursor is for what Kafka said it lacks; without an
        // answer the client is told to try again.
        let unanswered = || {
            SubscribeError::Kafka(
                "the cursor names partitions this node does not know, and re-reading Kafka's metadata to check them failed; retry shortly".into(),
            )
        };
        loop {
            let refreshed = inner.refreshed.notified();
            if inner.refreshes_finished.load(Ordering::Acquire) >= wanted {
                return if inner.last_refresh_ok.load(Ordering::Acquire) {
                    Ok(())
                } else {
                    Err(unanswered())
                };
            }
            if tokio::time::timeout_at(deadline, refreshed).await.is_err() {
                return Err(unanswered());
            }
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
        if ready {
            self.inner.became_ready.notify_waiters();
        }
    }

    /// Waits up to `max` for the hub to be ready; whether it is.
    pub async fn wait_ready(&self, max: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let notified = self.inner.became_ready.notified();
            if self.is_ready() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_ready();
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// From now on every new subscription is refused with
    /// [`SubscribeError::Draining`]; those open go on until their
    /// transports end them. There is no way back but a restart.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// The channels that have subscribers, each with how many read it
    /// through each transport, sorted by name; only those starting with
    /// `prefix`, at most `limit` of them, and how many matched in all.
    /// Holds one shard's lock at a time, for one pass over its channels.
    pub fn channel_counts(&self, prefix: &str, limit: usize) -> (Vec<ChannelCounts>, usize) {
        let mut all = Vec::new();
        for shard in self.inner.shards.iter() {
            let shard = shard.lock();
            for (name, channel) in &shard.channels {
                if channel.subscribers.is_empty() || !name.starts_with(prefix) {
                    continue;
                }
                let mut counts = [0usize; SubscriberKind::ALL.len()];
                for inbox in &channel.subscribers {
                    let kind = inbox.kind();
                    if let Some(i) = SubscriberKind::ALL.iter().position(|k| *k == kind) {
                        counts[i] += 1;
                    }
                }
                all.push(ChannelCounts {
                    channel: name.clone(),
                    counts,
                });
            }
        }
        let total = all.len();
        all.sort_unstable_by(|a, b| a.channel.cmp(&b.channel));
        all.truncate(limit);
        (all, total)
    }

    /// Number of channels held.
    pub fn channel_count(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().channels.len())
            .sum()
    }

    /// Publishes one record to its channels. Called by the ingest, in offset
    /// order per partition; never blocks on a subscriber.
    pub fn publish(&self, record: Arc<Record>, channels: &[String], positions: &Arc<Positions>) {
        let inner = &*self.inner;
        let now = Instant::now();
        for name in channels {
            let seq = inner.seq.fetch_add(1, Ordering::Relaxed);
            let mut shard = inner.shard(name).lock();
            let key = match shard.channels.get_key_value(name.as_str()) {
                Some((key, _)) => key.clone(),
                None => {
                    let key: Arc<str> = Arc::from(name.as_str());
                    let base = inner.horizon.lock().clone();
                    shard.channels.insert(key.clone(), Channel::new(base));
                    key
                }
            };
            let channel = shard.channels.get_mut(&key).expect("just ensured");
            let publication = Arc::new(Publication::new(
                seq,
                key,
                record.clone(),
                positions.clone(),
                now,
            ));
            let size = publication.size();
            channel
                .subscribers
                .retain(|inbox| inbox.push(publication.clone()).is_ok());
            channel.history.push_back(publication);
            channel.history_bytes += size;
            let total = inner.history_bytes.fetch_add(size, Ordering::Relaxed) + size;
            while channel.history.len() > inner.config.history_messages {
                inner.evict_front(channel, "count");
            }
            while channel.history_bytes > inner.config.history_bytes && channel.history.len() > 1 {
                inner.evict_front(channel, "bytes");
            }
            if total > inner.config.memory_budget {
                // Hard stop above the budget: this channel gives up its
                // oldest history now; the sweeper trims everyone else.
                if total > inner.config.memory_budget + inner.config.memory_budget / 8 {
                    while !channel.history.is_empty()
                        && inner.history_bytes.load(Ordering::Relaxed) > inner.config.memory_budget
                    {
                        inner.evict_front(channel, "budget");
                    }
                }
                inner.pressure.notify_one();
            }
        }
    }

    /// Like [`Hub::subscribe`], and also resolves [`Start::Since`] to
    /// offsets through Kafka (offsets-for-times) first.
    pub async fn subscribe_from(
        &self,
        channels: &[String],
        start: Start,
        client: IpAddr,
    ) -> Result<Subscription, SubscribeError> {
        if self.is_draining() {
            return Err(SubscribeError::Draining);
        }
        // A node that is starting holds new subscriptions briefly rather
        // than refusing them: a browser's EventSource gives up for good on
        // any non-200 answer, and clients reconnect in a burst on restarts.
        self.wait_ready(READY_WAIT).await;
        let ts = match start {
            Start::Since(ts) => ts,
            Start::Cursor(cursor) => {
                self.learn_cursor_partitions(&cursor).await?;
                self.check_not_ahead(&cursor, client).await?;
                return self.subscribe(channels, Start::Cursor(cursor), client);
            }
            Start::Live => return self.subscribe(channels, start, client),
        };
        let source = self
            .inner
            .replay
            .read()
            .clone()
            .ok_or(SubscribeError::SinceNeedsKafka)?;
        if !self.is_ready() {
            return Err(SubscribeError::NotReady);
        }
        let positions = self.positions();
        let (_, feeds) = self.resolve_channels(channels, &positions)?;
        let topics: BTreeSet<&String> = feeds.iter().flatten().collect();
        let mut partitions = Vec::new();
        for topic in topics {
            let count = positions.topic(topic).map_or(0, <[i64]>::len);
            let topic: Arc<str> = Arc::from(topic.as_str());
            partitions.extend((0..count as i32).map(|p| (topic.clone(), p)));
        }
        let offsets = source
            .offsets_for_time(partitions.clone(), ts, client)?
            .await
            .map_err(|_| {
                SubscribeError::Kafka("the since= look-up ended without an answer".into())
            })??;
        let mut cursor = Cursor::new();
        for ((topic, partition), offset) in partitions.iter().zip(offsets) {
            cursor.set(topic, *partition, offset);
        }
        self.subscribe(channels, Start::Cursor(cursor), client)
    }

    /// A cursor from which `channel` starts with `record`: every partition
    /// feeding the channel at this node's ingest position, the record's own
    /// at the record (Web Push sends it, so that `/poll` returns the record
    /// a push had to leave out).
    pub fn cursor_at(&self, channel: &str, record: &Record) -> String {
        let positions = self.positions();
        let mut cursor = Cursor::new();
        let topics = self
            .router()
            .topics_for_channel(channel, positions.topics())
            .unwrap_or_default();
        for topic in &topics {
            for (partition, next) in positions
                .topic(topic)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                if *next != positions::UNKNOWN {
                    cursor.set(topic, partition as i32, *next);
                }
            }
        }
        cursor.set(&record.topic, record.partition, record.offset);
        cursor.encode()
    }

    /// A cursor offset past this node's ingest position is normal (another
    /// node read further); past the partition's end at the brokers it can
    /// only come from another cluster, a recreated topic or a forgery, and
    /// starting there would skip the records that fill the difference
    /// without a word. Only such positions are checked, with one
    /// watermark look-up.
    async fn check_not_ahead(&self, cursor: &Cursor, client: IpAddr) -> Result<(), SubscribeError> {
        let positions = self.positions();
        let ahead: Vec<((Arc<str>, i32), i64)> = cursor
            .iter()
            .filter(|(topic, partition, offset)| {
                positions
                    .get(topic, *partition)
                    .is_some_and(|at| *offset > at)
            })
            .map(|(topic, partition, offset)| ((Arc::from(topic), partition), offset))
            .collect();
        if ahead.is_empty() {
            return Ok(());
        }
        let Some(source) = self.inner.replay.read().clone() else {
            return Ok(());
        };
        let partitions: Vec<(Arc<str>, i32)> = ahead.iter().map(|(tp, _)| tp.clone()).collect();
        let ends = source
            .high_watermarks(partitions, client)?
            .await
            .map_err(|_| {
                SubscribeError::Kafka("the watermark look-up ended without an answer".into())
            })??;
        for (((topic, partition), offset), end) in ahead.into_iter().zip(ends) {
            if offset > end {
                return Err(SubscribeError::CursorAhead {
                    topic: topic.to_string(),
                    partition,
                    offset,
                    end,
                });
            }
        }
        Ok(())
    }

    /// Deduplicates channel names (in linear time) and checks their
    /// number before anything else, then validates them and finds the
    /// topics that feed each (among the topics the ingest knows).
    fn resolve_channels(
        &self,
        channels: &[String],
        positions: &Positions,
    ) -> Result<(Vec<Arc<str>>, Feeds), SubscribeError> {
        let mut seen: HashSet<&str> = HashSet::with_capacity(channels.len());
        let distinct: Vec<&String> = channels
            .iter()
            .filter(|c| seen.insert(c.as_str()))
            .collect();
        if distinct.is_empty() {
            return Err(SubscribeError::NoChannels);
        }
        let max = self.inner.max_channels.load(Ordering::Relaxed);
        if distinct.len() > max {
            return Err(SubscribeError::TooManyChannels {
                given: distinct.len(),
                max,
            });
        }
        let mut names: Vec<Arc<str>> = Vec::with_capacity(distinct.len());
        for c in distinct {
            if !is_valid_channel(c) {
                return Err(SubscribeError::InvalidChannel(c.clone()));
            }
            names.push(Arc::from(c.as_str()));
        }
        let router = self.router();
        let feeds = names
            .iter()
            .map(|name| {
                router
                    .topics_for_channel(name, positions.topics())
                    .map(|topics| topics.into_iter().collect())
                    .ok_or_else(|| SubscribeError::UnknownChannel(name.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok((names, feeds))
    }

    /// Subscribes to `channels` from `start` for `client` (whose address
    /// bounds the replays it may have running). All checks happen before
    /// anything is registered: an error leaves no trace.
    pub fn subscribe(
        &self,
        channels: &[String],
        start: Start,
        client: IpAddr,
    ) -> Result<Subscription, SubscribeError> {
        if self.is_draining() {
            return Err(SubscribeError::Draining);
        }
        // A reset under way lowers positions this start may have read:
        // start again once it is over (resets are rare, and short).
        for _ in 0..RESET_ATTEMPTS {
            let resets = self.inner.resets.load(Ordering::SeqCst);
            if resets % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            if let Some(subscription) =
                self.subscribe_once(channels, start.clone(), client, resets)?
            {
                return Ok(subscription);
            }
        }
        Err(SubscribeError::NotReady)
    }

    fn subscribe_once(
        &self,
        channels: &[String],
        start: Start,
        client: IpAddr,
        resets: u64,
    ) -> Result<Option<Subscription>, SubscribeError> {
        let inner = &self.inner;
        if !self.is_ready() {
            return Err(SubscribeError::NotReady);
        }
        let positions = self.positions();
        let (names, feeds) = self.resolve_channels(channels, &positions)?;
        let all_topics: BTreeSet<&String> = feeds.iter().flatten().collect();

        // Starting positions for every partition feeding the subscription.
        let live_end = inner.live_end.read();
        let mut start_at = Positions::new();
        for topic in &all_topics {
            let Some(offsets) = positions.topic(topic) else {
                continue;
            };
            let topic: Arc<str> = Arc::from(topic.as_str());
            for (p, live) in offsets.iter().enumerate() {
                if *live == positions::UNKNOWN {
                    continue;
                }
                let at = match &start {
                    Start::Live => (*live).max(live_end.get(&topic, p as i32).unwrap_or(0)),
                    Start::Cursor(c) => c.get(&topic, p as i32).unwrap_or(0),
                    Start::Since(_) => return Err(SubscribeError::SinceNeedsKafka),
                };
                start_at.set(&topic, p as i32, at);
            }
        }
        drop(live_end);
        if let Start::Cursor(c) = &start {
            for (topic, partition, _) in c.iter() {
                if !all_topics.iter().any(|t| t.as_str() == topic) {
                    return Err(SubscribeError::CursorTopic {
                        topic: topic.to_owned(),
                        channels: names
                            .iter()
                            .map(|n| n.as_ref())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
                let count = positions.topic(topic).map_or(0, <[i64]>::len);
                if partition < 0 || partition as usize >= count {
                    return Err(SubscribeError::CursorPartition {
                        topic: topic.to_owned(),
                        partition,
                        count,
                    });
                }
            }
        }

        // Lock every shard involved, in index order (no deadlock with other
        // subscribers; the ingest holds one shard at a time).
        let mut shard_ids: Vec<usize> = names.iter().map(|n| inner.shard_index(n)).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> = shard_ids
            .iter()
            .map(|&i| (i, inner.shards[i].lock()))
            .collect();
        let horizon = inner.horizon.lock().clone();
        let lost = inner.lost.lock().clone();
        if inner.resets.load(Ordering::SeqCst) != resets {
            return Ok(None);
        }

        // Check coverage. At the live end, step over evicted history; from a
        // cursor, what memory lacks is read back from Kafka (or refused).
        let replay = inner.replay.read().clone();
        let mut replay_to: BTreeMap<(Arc<str>, i32), i64> = BTreeMap::new();
        for (name, topics) in names.iter().zip(&feeds) {
            let shard = guard_for(&mut guards, inner.shard_index(name));
            let channel = shard
                .channels
                .entry(name.clone())
                .or_insert_with(|| Channel::new(horizon.clone()));
            for topic in topics {
                let Some(offsets) = start_at.topic(topic).map(<[i64]>::to_vec) else {
                    continue;
                };
                let topic_arc: Arc<str> = Arc::from(topic.as_str());
                for (p, at) in offsets.into_iter().enumerate() {
                    let floor = channel
                        .floor(topic, p as i32, &horizon)
                        .max(lost.get(topic, p as i32).unwrap_or(0));
                    if at >= floor || at == positions::UNKNOWN {
                        continue;
                    }
                    match (&start, &replay) {
                        (Start::Live, _) => start_at.set(&topic_arc, p as i32, floor),
                        (_, Some(_)) => {
                            let end = replay_to
                                .entry((topic_arc.clone(), p as i32))
                                .or_insert(floor);
                            *end = (*end).max(floor);
                        }
                        (_, None) => {
                            let err = SubscribeError::CursorTooOld {
                                channel: name.to_string(),
                                topic: topic.clone(),
                                partition: p as i32,
                                offset: at,
                                floor,
                            };
                            drop(guards);
                            self.drop_if_empty(&names);
                            return Err(err);
                        }
                    }
                }
            }
        }

        // Register and copy history under the same locks.
        // While it reads back from Kafka it does not drain its inbox.
        let inbox = Arc::new(if replay_to.is_empty() {
            Inbox::new(inner.config.subscriber_queue)
        } else {
            Inbox::catching_up(inner.config.subscriber_queue)
        });
        let mut backlog: Vec<Arc<Publication>> = Vec::new();
        for name in &names {
            let shard = guard_for(&mut guards, inner.shard_index(name));
            let channel = shard.channels.get_mut(name).expect("created above");
            backlog.extend(
                channel
                    .history
                    .iter()
                    .filter(|p| {
                        let r = &p.record;
                        r.offset >= start_at.get(&r.topic, r.partition).unwrap_or(0)
                    })
                    .cloned(),
            );
            channel.subscribers.push(inbox.clone());
        }
        drop(guards);
        backlog.sort_by_key(|p| p.seq);

        let replay_ends: Vec<(Arc<str>, i32, i64)> = replay_to
            .iter()
            .map(|((topic, partition), to)| (topic.clone(), *partition, *to))
            .collect();
        let replay_rx = match (replay, replay_to.is_empty()) {
            (Some(source), false) => {
                let ranges = replay_to
                    .into_iter()
                    .map(|((topic, partition), to)| PartitionRange {
                        from: start_at.get(&topic, partition).unwrap_or(0),
                        topic,
                        partition,
                        to,
                    })
                    .collect();
                match source.start(ranges, names.clone(), inner.router.load_full(), client) {
                    Ok(rx) => Some(rx),
                    Err(e) => {
                        inbox.close(CloseReason::Gone);
                        inner.unsubscribe(&names, &inbox);
                        return Err(e);
                    }
                }
            }
            _ => None,
        };

        Ok(Some(Subscription {
            hub: self.inner.clone(),
            channels: names,
            feeds,
            replay: replay_rx,
            replayed: VecDeque::new(),
            notices: VecDeque::new(),
            last_notice: None,
            replay_ends,
            client,
            gaps: Vec::new(),
            failure: None,
            inbox,
            from_history: backlog.len(),
            backlog: backlog.into(),
            positions: start_at,
        }))
    }

    fn drop_if_empty(&self, names: &[Arc<str>]) {
        for name in names {
            let mut shard = self.inner.shard(name).lock();
            if shard.channels.get(name).is_some_and(Channel::is_empty) {
                let channel = shard.channels.remove(name).expect("present");
                self.inner.fold_into_horizon(&channel);
            }
        }
    }

    /// Drops aged history and empty channels every second, and trims history
    /// to the memory budget when woken by pressure. Ends on `shutdown`.
    pub async fn run_sweeper(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.inner.pressure.notified() => {}
            }
            self.sweep(Instant::now());
        }
    }

    /// One sweep: age limit, then the memory budget, oldest history first.
    pub fn sweep(&self, now: Instant) {
        let inner = &*self.inner;
        let age = inner.config.history_age;
        inner.sweep_older_than(now.checked_sub(age), "age");
        // Over budget: halve the age limit until history fits.
        let mut limit = age;
        while inner.history_bytes.load(Ordering::Relaxed) > inner.config.memory_budget
            && limit > Duration::from_millis(1)
        {
            limit /= 2;
            inner.sweep_older_than(now.checked_sub(limit), "budget");
        }
        if inner.history_bytes.load(Ordering::Relaxed) > inner.config.memory_budget {
            inner.sweep_older_than(Some(now), "budget");
        }
        inner.metrics.hub_channels.set(self.channel_count() as i64);
        inner
            .metrics
            .hub_history_bytes
            .set(inner.history_bytes.load(Ordering::Relaxed) as i64);
    }
}

fn guard_for<'a, 'g>(
    guards: &'a mut [(usize, MutexGuard<'g, Shard>)],
    index: usize,
) -> &'a mut Shard {
    let i = guards
        .binary_search_by_key(&index, |(i, _)| *i)
        .expect("shard locked");
    &mut guards[i].1
}

impl Inner {
    fn shard_index(&self, channel: &str) -> usize {
        let mut h = DefaultHasher::new();
        channel.hash(&mut h);
        (h.finish() % self.shards.len() as u64) as usize
    }

    fn shard(&self, channel: &str) -> &Mutex<Shard> {
        &self.shards[self.shard_index(channel)]
    }

    fn evict_front(&self, channel: &mut Channel, reason: &'static str) {
        debug_assert!(EVICTION_REASONS.contains(&reason));
        let Some(p) = channel.history.pop_front() else {
            return;
        };
        let size = p.size();
        channel.history_bytes -= size;
        self.history_bytes.fetch_sub(size, Ordering::Relaxed);
        channel
            .evicted
            .raise(&p.record.topic, p.record.partition, p.record.offset + 1);
        self.metrics
            .hub_evictions
            .with_label_values(&[reason])
            .inc();
    }

    /// Evicts history received before `cutoff` (everything when `None`…
    /// never: `None` means the clock cannot go back that far) and drops
    /// channels left empty.
    fn sweep_older_than(&self, cutoff: Option<Instant>, reason: &'static str) {
        let Some(cutoff) = cutoff else { return };
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let mut dropped = Vec::new();
            for (name, channel) in shard.channels.iter_mut() {
                while channel
                    .history
                    .front()
                    .is_some_and(|p| p.received <= cutoff)
                {
                    self.evict_front(channel, reason);
                }
                if channel.is_empty() {
                    dropped.push(name.clone());
                }
            }
            for name in dropped {
                if let Some(channel) = shard.channels.remove(&name) {
                    self.fold_into_horizon(&channel);
                }
            }
        }
    }

    /// A dropped channel's raised floors become the horizon for channels
    /// that do not exist.
    fn fold_into_horizon(&self, channel: &Channel) {
        if channel.evicted.iter().next().is_none() {
            return;
        }
        let mut horizon = self.horizon.lock();
        let h = Arc::make_mut(&mut horizon);
        for (topic, partition, offset) in channel.evicted.iter() {
            h.raise(topic, partition, offset);
        }
    }

    pub(crate) fn unsubscribe(&self, channels: &[Arc<str>], inbox: &Arc<Inbox>) {
        for name in channels {
            let mut shard = self.shard(name).lock();
            let Some(channel) = shard.channels.get_mut(name) else {
                continue;
            };
            channel.subscribers.retain(|i| !Arc::ptr_eq(i, inbox));
            if channel.is_empty() {
                let channel = shard.channels.remove(name).expect("present");
                self.fold_into_horizon(&channel);
            }
        }
    }
}

#[cfg(test)]
mod tests;
