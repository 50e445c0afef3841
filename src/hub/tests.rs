//! Hub behaviour with synthetic records: the history/live seam, dedup across
//! channels, slow subscribers, coverage and errors. No Kafka involved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::router::RouteSpec;

/// The client every subscription here is for.
const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

struct Fixture {
    hub: Hub,
    positions: Positions,
    topic: Arc<str>,
}

fn route(topic: &str, channel: &str) -> RouteSpec {
    RouteSpec {
        topic: Some(topic.into()),
        topic_regex: None,
        channel: channel.into(),
    }
}

impl Fixture {
    fn new(config: HubConfig) -> Fixture {
        let router = Router::new(&[route("t", "all"), route("t", "user.{key}")]).unwrap();
        let hub = Hub::new(config, 8, Arc::new(router), Arc::new(Metrics::new()));
        let topic: Arc<str> = Arc::from("t");
        let mut positions = Positions::new();
        for p in 0..2 {
            positions.set(&topic, p, 0);
            hub.partition_assigned(&topic, p, 0, 0);
        }
        hub.set_positions(Arc::new(positions.clone()));
        hub.set_ready(true);
        Fixture {
            hub,
            positions,
            topic,
        }
    }

    /// Publishes the next record of `partition` with `key`, as the ingest
    /// would: to `all` and to `user.{key}`.
    fn produce(&mut self, partition: i32, key: &str) -> i64 {
        let offset = self.positions.get(&self.topic, partition).unwrap();
        let record = Arc::new(Record {
            topic: self.topic.clone(),
            partition,
            offset,
            timestamp: Some(0),
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            headers: vec![],
            payload: Some(Bytes::from(format!("{partition}:{offset}"))),
        });
        let snapshot = Arc::new(self.positions.clone());
        let mut channels = Vec::new();
        self.hub.router().route(&record, &mut channels);
        self.hub.publish(record, &channels, &snapshot);
        self.positions.set(&self.topic, partition, offset + 1);
        self.hub.set_positions(Arc::new(self.positions.clone()));
        offset
    }
}

fn channels(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A cursor over topic `t` at `p0` on partition 0 and `p1` on partition 1.
fn cursor_at(p0: i64, p1: i64) -> Cursor {
    let mut c = Cursor::new();
    c.set("t", 0, p0);
    c.set("t", 1, p1);
    c
}

impl Fixture {
    /// Subscribes to `names` from `start`; panics on a refusal.
    fn subscribe(&self, names: &[&str], start: Start) -> Subscription {
        self.hub
            .subscribe(&channels(names), start, CLIENT)
            .expect("subscribed")
    }

    /// Offsets `from..to` of partition `partition` of the fixture's topic.
    fn range(&self, partition: i32, from: i64, to: i64) -> Vec<PartitionRange> {
        vec![PartitionRange {
            topic: self.topic.clone(),
            partition,
            from,
            to,
        }]
    }
}

/// Drains what is deliverable now, as `partition:offset` strings, and the
/// last cursor.
fn drain(sub: &mut Subscription) -> (Vec<String>, String) {
    let mut got = Vec::new();
    let mut out = Vec::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut cursor = sub.cursor();
    loop {
        out.clear();
        let ready = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(20), sub.next_batch(&mut out, 100)).await
        });
        match ready {
            Ok(Ok(())) => {
                for d in &out {
                    let r = &d.publication.record;
                    got.push(format!("{}:{}", r.partition, r.offset));
                    cursor = d.cursor.clone();
                }
            }
            _ => break,
        }
    }
    (got, cursor)
}

#[test]
fn live_subscriber_gets_only_new_records() {
    let mut f = Fixture::new(HubConfig::default());
    f.produce(0, "a");
    let mut sub = f.subscribe(&["all"], Start::Live);
    f.produce(1, "b");
    f.produce(0, "c");
    assert_eq!(drain(&mut sub).0, ["1:0", "0:1"]);
}

#[test]
fn resume_from_cursor_crosses_history_into_live_exactly() {
    let mut f = Fixture::new(HubConfig::default());
    let mut first = f.subscribe(&["all"], Start::Live);
    for i in 0..6 {
        f.produce(i % 2, "k");
    }
    let (got, _) = drain(&mut first);
    assert_eq!(got, ["0:0", "1:0", "0:1", "1:1", "0:2", "1:2"]);

    // Resume from the last cursor while more arrive.
    let mut again = f.subscribe(&["all"], Start::Live);
    drop(again);
    let mut replay = f
        .hub
        .subscribe(
            &channels(&["all"]),
            Start::Cursor(Cursor::decode(&first.cursor()).unwrap()),
            CLIENT,
        )
        .unwrap();
    drop(first);
    f.produce(0, "k");
    assert_eq!(drain(&mut replay).0, ["0:3"]);

    // From a mid-stream cursor: everything after it, once.
    let mid = cursor_at(1, 2);
    again = f.subscribe(&["all"], Start::Cursor(mid));
    f.produce(1, "k");
    let (got, cursor) = drain(&mut again);
    assert_eq!(got, ["0:1", "0:2", "1:2", "0:3", "1:3"]);
    assert_eq!(Cursor::decode(&cursor).unwrap().to_string(), "t/0@4,t/1@4");
}

#[test]
fn a_record_in_two_subscribed_channels_arrives_once() {
    let mut f = Fixture::new(HubConfig::default());
    let mut sub = f.subscribe(&["all", "user.k"], Start::Live);
    f.produce(0, "k");
    f.produce(0, "other");
    f.produce(1, "k");
    assert_eq!(drain(&mut sub).0, ["0:0", "0:1", "1:0"]);
}

#[test]
fn quiet_partitions_advance_in_the_cursor() {
    let mut f = Fixture::new(HubConfig::default());
    let mut sub = f.subscribe(&["user.k"], Start::Live);
    for _ in 0..3 {
        f.produce(1, "other");
    }
    f.produce(0, "other");
    f.produce(0, "k");
    let (got, cursor) = drain(&mut sub);
    assert_eq!(got, ["0:1"]);
    // Partition 1 moved to 3 although nothing on it was for `user.k`.
    assert_eq!(Cursor::decode(&cursor).unwrap().to_string(), "t/0@2,t/1@3");
}

#[test]
fn slow_subscriber_is_closed_after_what_it_has_queued() {
    let mut f = Fixture::new(HubConfig {
        subscriber_queue: 2,
        ..HubConfig::default()
    });
    let mut slow = f.subscribe(&["all"], Start::Live);
    let mut fast = f.subscribe(&["all"], Start::Live);
    f.produce(0, "k");
    assert_eq!(drain(&mut fast).0, ["0:0"]);
    f.produce(0, "k");
    assert_eq!(drain(&mut fast).0, ["0:1"]);
    f.produce(0, "k");
    assert_eq!(drain(&mut fast).0, ["0:2"]);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut out = Vec::new();
    rt.block_on(slow.next_batch(&mut out, 100)).unwrap();
    assert_eq!(out.len(), 2);
    let cursor = out.last().unwrap().cursor.clone();
    assert_eq!(
        rt.block_on(slow.next_batch(&mut out, 100)),
        Err(CloseReason::Slow)
    );
    drop(slow);
    // It resumes from its last cursor with nothing lost.
    let mut back = f
        .hub
        .subscribe(
            &channels(&["all"]),
            Start::Cursor(Cursor::decode(&cursor).unwrap()),
            CLIENT,
        )
        .unwrap();
    assert_eq!(drain(&mut back).0, ["0:2"]);
}

#[test]
fn evicted_history_is_reported_not_skipped() {
    let mut f = Fixture::new(HubConfig {
        history_messages: 2,
        ..HubConfig::default()
    });
    let _keep = f.subscribe(&["all"], Start::Live);
    for _ in 0..4 {
        f.produce(0, "k");
    }
    let old = cursor_at(1, 0);
    let err = f
        .hub
        .subscribe(&channels(&["all"]), Start::Cursor(old), CLIENT)
        .err()
        .unwrap();
    assert_eq!(
        err,
        SubscribeError::CursorTooOld {
            channel: "all".into(),
            topic: "t".into(),
            partition: 0,
            offset: 1,
            floor: 2
        }
    );
    let ok = cursor_at(2, 0);
    let mut sub = f.subscribe(&["all"], Start::Cursor(ok));
    assert_eq!(drain(&mut sub).0, ["0:2", "0:3"]);
}

#[test]
fn dropped_channels_raise_the_horizon() {
    let mut f = Fixture::new(HubConfig {
        history_messages: 1,
        ..HubConfig::default()
    });
    f.produce(0, "x");
    f.produce(0, "x");
    // `user.x` evicted offset 0; once dropped, a cursor at 0 is too old, at 1 fine.
    f.hub.sweep(Instant::now() + Duration::from_secs(3600));
    assert_eq!(f.hub.channel_count(), 0);
    let mut at0 = Cursor::new();
    at0.set("t", 0, 0);
    assert!(matches!(
        f.hub
            .subscribe(&channels(&["user.x"]), Start::Cursor(at0), CLIENT),
        Err(SubscribeError::CursorTooOld { floor: 2, .. })
    ));
    let at2 = cursor_at(2, 0);
    assert!(
        f.hub
            .subscribe(&channels(&["user.x"]), Start::Cursor(at2), CLIENT)
            .is_ok()
    );
}

#[test]
fn unsubscribing_frees_empty_channels() {
    let f = Fixture::new(HubConfig::default());
    let sub = f.subscribe(&["user.a", "user.b"], Start::Live);
    assert_eq!(f.hub.channel_count(), 2);
    drop(sub);
    assert_eq!(f.hub.channel_count(), 0);
}

#[test]
fn bad_requests_are_named() {
    let f = Fixture::new(HubConfig::default());
    let sub = |names: &[&str], start: Start| f.hub.subscribe(&channels(names), start, CLIENT).err();
    assert_eq!(sub(&[], Start::Live), Some(SubscribeError::NoChannels));
    assert_eq!(
        sub(&["nope"], Start::Live),
        Some(SubscribeError::UnknownChannel("nope".into()))
    );
    assert_eq!(
        sub(&["a\nb"], Start::Live),
        Some(SubscribeError::InvalidChannel("a\nb".into()))
    );
    let many: Vec<String> = (0..9).map(|i| format!("user.{i}")).collect();
    assert_eq!(
        f.hub.subscribe(&many, Start::Live, CLIENT).err(),
        Some(SubscribeError::TooManyChannels { given: 9, max: 8 })
    );
    // A name given many times counts once: 8 distinct channels are allowed.
    let repeated: Vec<String> = std::iter::repeat_n("all".to_owned(), 10_000)
        .chain((0..7).map(|i| format!("user.{i}")))
        .collect();
    let subscription = f.hub.subscribe(&repeated, Start::Live, CLIENT).unwrap();
    assert_eq!(subscription.channels().len(), 8);
    drop(subscription);
    let mut other = Cursor::new();
    other.set("u", 0, 0);
    assert!(matches!(
        sub(&["all"], Start::Cursor(other)),
        Some(SubscribeError::CursorTopic { .. })
    ));
    let mut p9 = Cursor::new();
    p9.set("t", 9, 0);
    assert_eq!(
        sub(&["all"], Start::Cursor(p9)),
        Some(SubscribeError::CursorPartition {
            topic: "t".into(),
            partition: 9,
            count: 2
        })
    );
    // Nothing was left behind by the refusals.
    assert_eq!(f.hub.channel_count(), 0);
}

#[test]
fn memory_budget_bounds_history() {
    let mut f = Fixture::new(HubConfig {
        memory_budget: 4096,
        ..HubConfig::default()
    });
    for i in 0..200 {
        f.produce(i % 2, &format!("user{i}"));
    }
    f.hub.sweep(Instant::now());
    assert!(f.hub.inner.history_bytes.load(Ordering::Relaxed) <= 4096);
}

/// Drains as [`drain`], with each gap as `gap channel partition:from-to`
/// where the transport would send it (before the batch it came with).
fn drain_with_gaps(sub: &mut Subscription) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut got = Vec::new();
    let mut out = Vec::new();
    loop {
        out.clear();
        let ready = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(20), sub.next_batch(&mut out, 100)).await
        });
        let Ok(Ok(())) = ready else { break };
        for gap in sub.take_gaps() {
            for r in &gap.partitions {
                got.push(format!(
                    "gap {} {}:{}-{}",
                    gap.channel, r.partition, r.from, r.to
                ));
            }
        }
        got.extend(out.iter().map(|d| {
            let r = &d.publication.record;
            format!("{}:{}", r.partition, r.offset)
        }));
    }
    got
}

#[test]
fn offsets_the_ingest_lost_are_a_gap_in_order_once_per_channel() {
    let mut f = Fixture::new(HubConfig::default());
    let mut sub = f.subscribe(&["all", "user.a"], Start::Live);
    f.produce(0, "a");
    f.produce(1, "b");
    f.produce(0, "c");
    // Partition 0 loses offsets 2..7 (Kafka deleted them unread).
    f.hub.partitions_lost(f.range(0, 2, 7));
    f.positions.set(&f.topic, 0, 7);
    f.produce(0, "a");
    f.produce(1, "a");
    assert_eq!(
        drain_with_gaps(&mut sub),
        [
            "0:0",
            "1:0",
            "0:1",
            "gap all 0:2-7",
            "gap user.a 0:2-7",
            "0:7",
            "1:1"
        ]
    );
    // A cursor from before the loss is not served from memory (which
    // lacks 2..7): without Kafka to read back from, it is refused.
    let before = Cursor::decode(&{
        let c = cursor_at(1, 0);
        c.encode()
    })
    .unwrap();
    assert!(matches!(
        f.hub
            .subscribe(&channels(&["all"]), Start::Cursor(before), CLIENT)
            .map(|_| ()),
        Err(SubscribeError::CursorTooOld { floor: 7, .. })
    ));
    // A subscriber that joins afterwards hears nothing of it.
    let mut late = f.subscribe(&["all"], Start::Live);
    f.produce(0, "z");
    assert_eq!(drain_with_gaps(&mut late), ["0:8"]);
}

#[test]
fn offsets_that_start_over_are_a_reset_and_the_new_records_are_delivered() {
    let mut f = Fixture::new(HubConfig::default());
    let mut sub = f.subscribe(&["all"], Start::Live);
    for _ in 0..3 {
        f.produce(0, "a");
    }
    f.produce(1, "b");
    // Partition 0 was deleted and created again: its offsets start at 0.
    f.hub.partitions_reset(f.range(0, 3, 0));
    f.positions.set(&f.topic, 0, 0);
    f.produce(0, "a");
    f.produce(0, "a");
    let got = drain_with_gaps(&mut sub);
    assert_eq!(
        got,
        ["0:0", "0:1", "0:2", "1:0", "gap all 0:3-0", "0:0", "0:1"]
    );
    assert_eq!(sub.take_gaps(), []);
}

// Found in review of issue 13's edges; each failed before its fix.

/// A reset, then a cursor from the new offsets whose other partition is at
/// a record published before the reset: memory does not serve it (its
/// ingest positions name the old offsets and would move the cursor past the
/// new records).
#[test]
fn after_a_reset_no_record_from_before_moves_a_cursor_past_the_new_ones() {
    let mut f = Fixture::new(HubConfig::default());
    for _ in 0..3 {
        f.produce(0, "a");
    }
    f.produce(1, "b");
    f.hub.partitions_reset(f.range(0, 3, 0));
    f.positions.set(&f.topic, 0, 0);
    f.produce(0, "a");
    f.produce(0, "a");
    let again = f
        .hub
        .subscribe(&channels(&["all"]), Start::Cursor(cursor_at(0, 0)), CLIENT)
        .map(|_| ());
    // Memory was emptied (every publication carried the old offsets): the
    // record of partition 1 is read back from Kafka, or refused without it.
    assert!(
        matches!(
            again,
            Err(SubscribeError::CursorTooOld {
                partition: 1,
                floor: 1,
                ..
            })
        ),
        "{again:?}"
    );
    // A cursor at the new start gets the new records only.
    let mut again = f
        .hub
        .subscribe(&channels(&["all"]), Start::Cursor(cursor_at(0, 1)), CLIENT)
        .unwrap();
    assert_eq!(drain(&mut again).0, ["0:0", "0:1"]);
}

/// A reset notice delivered through two channels, drained in between (as
/// happens when the subscriber's task drains between the ingest's pushes).
#[test]
fn a_reset_heard_through_two_channels_is_applied_once() {
    let mut f = Fixture::new(HubConfig::default());
    let mut sub = f.subscribe(&["all"], Start::Live);
    for _ in 0..3 {
        f.produce(0, "a");
    }
    f.hub.partitions_reset(f.range(0, 3, 0));
    let first = drain_with_gaps(&mut sub);
    assert_eq!(first, ["0:0", "0:1", "0:2", "gap all 0:3-0"]);
    // The same notice arriving again (second channel's push).
    let n = Arc::new(Notice {
        seq: f.hub.inner.seq.load(Ordering::Relaxed) - 1,
        lost: vec![PartitionRange {
            topic: f.topic.clone(),
            partition: 0,
            from: 3,
            to: 0,
        }],
        reset: true,
    });
    sub.inbox.push_notice(n);
    assert_eq!(drain_with_gaps(&mut sub), Vec::<String>::new());
}

/// A fixture with a replay source the test plays by hand, `history_messages`
/// per channel in memory and a queue of two.
fn with_fake_replay(history_messages: usize) -> (Fixture, Arc<FakeReplay>) {
    let f = Fixture::new(HubConfig {
        history_messages,
        subscriber_queue: 2,
        ..HubConfig::default()
    });
    let fake = Arc::new(FakeReplay {
        senders: Default::default(),
        ranges: Default::default(),
    });
    f.hub.set_replay_source(fake.clone());
    (f, fake)
}

/// Records what replays were started and hands their channels to the test.
struct FakeReplay {
    senders: parking_lot::Mutex<Vec<tokio::sync::mpsc::Sender<ReplayEvent>>>,
    ranges: parking_lot::Mutex<Vec<Vec<PartitionRange>>>,
}

impl ReplaySource for FakeReplay {
    fn start(
        &self,
        ranges: Vec<PartitionRange>,
        _channels: Vec<Arc<str>>,
        _router: Arc<Router>,
        _client: IpAddr,
    ) -> Result<tokio::sync::mpsc::Receiver<ReplayEvent>, SubscribeError> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        self.senders.lock().push(tx);
        self.ranges.lock().push(ranges);
        Ok(rx)
    }
    // It has no Kafka to look anything up in, and says so, as a replay
    // source that cannot reach Kafka does.
    fn offsets_for_time(
        &self,
        _: Vec<(Arc<str>, i32)>,
        _: i64,
        _: IpAddr,
    ) -> Result<OffsetsForTime, SubscribeError> {
        Err(SubscribeError::Kafka(
            "no Kafka behind this replay source".into(),
        ))
    }
    fn high_watermarks(
        &self,
        _: Vec<(Arc<str>, i32)>,
        _: IpAddr,
    ) -> Result<OffsetsForTime, SubscribeError> {
        Err(SubscribeError::Kafka(
            "no Kafka behind this replay source".into(),
        ))
    }
    // It keeps no records between replays.
    fn forget(&self, _: Vec<(Arc<str>, i32)>) {}
}

fn replayed(f: &Fixture, partition: i32, offsets: std::ops::Range<i64>, key: &str) -> ReplayEvent {
    ReplayEvent::Records(
        offsets
            .map(|offset| {
                Arc::new(Publication::new(
                    0,
                    Arc::from("all"),
                    Arc::new(Record {
                        topic: f.topic.clone(),
                        partition,
                        offset,
                        timestamp: Some(0),
                        key: Some(Bytes::copy_from_slice(key.as_bytes())),
                        headers: vec![],
                        payload: Some(Bytes::from(format!("{partition}:{offset}"))),
                    }),
                    Arc::new(Positions::new()),
                    Instant::now(),
                ))
            })
            .collect(),
    )
}

/// A subscription whose queue overflowed while it read back catches up
/// again from its position, not from past a loss reported meanwhile: the
/// records before the loss are read back (here Kafka no longer has them,
/// so the gap starts at its position), never stepped over.
#[test]
fn catching_up_again_delivers_the_records_before_a_loss_then_its_gap() {
    let (mut f, fake) = with_fake_replay(2);
    for _ in 0..10 {
        f.produce(0, "a");
    }
    let c = cursor_at(0, 0);
    let mut sub = f.subscribe(&["all"], Start::Cursor(c));
    assert_eq!(fake.ranges.lock()[0][0].to, 8);
    for _ in 0..3 {
        f.produce(0, "a"); // 10, 11, 12: overflow the catching-up queue
    }
    f.hub.partitions_lost(f.range(0, 13, 20));
    f.positions.set(&f.topic, 0, 20);
    f.hub.set_positions(Arc::new(f.positions.clone()));
    let tx = fake.senders.lock().remove(0);
    tx.try_send(replayed(&f, 0, 0..8, "a")).ok().unwrap();
    drop(tx);
    f.produce(0, "a"); // 20
    let got = drain_with_gaps(&mut sub);
    assert_eq!(
        got,
        ["0:0", "0:1", "0:2", "0:3", "0:4", "0:5", "0:6", "0:7"]
    );
    // The next round reads 8..20 back, not 13..20: records 8..12 are not
    // stepped over. Kafka, which deleted everything below 20, answers with
    // the gap from 8.
    let ranges = fake.ranges.lock().clone();
    assert_eq!(
        (ranges.len(), ranges[1][0].from, ranges[1][0].to),
        (2, 8, 20)
    );
    let tx = fake.senders.lock().remove(0);
    tx.try_send(ReplayEvent::Gaps(vec![PartitionRange {
        topic: f.topic.clone(),
        partition: 0,
        from: 8,
        to: 20,
    }]))
    .ok()
    .unwrap();
    drop(tx);
    assert_eq!(drain_with_gaps(&mut sub), ["gap all 0:8-20", "0:20"]);
}

/// After an overflow, the next round reads back from the end of the range
/// the last one read, not from the channel's last record in it: a sparse
/// channel does not read the same range again.
#[test]
fn catching_up_again_reads_on_from_the_end_of_the_range_read() {
    let (mut f, fake) = with_fake_replay(1);
    f.produce(0, "k"); // 0: the only user.k record in the range
    for _ in 0..20 {
        f.produce(0, "x");
    }
    // user.x and all evict; user.k evicts nothing; drop every channel.
    f.hub.sweep(Instant::now() + Duration::from_secs(3600));
    assert_eq!(f.hub.channel_count(), 0);
    let c = cursor_at(0, 0);
    let mut sub = f.subscribe(&["user.k"], Start::Cursor(c));
    for _ in 0..3 {
        f.produce(0, "k");
    }
    let tx = fake.senders.lock().remove(0);
    tx.try_send(replayed(&f, 0, 0..1, "k")).ok().unwrap();
    drop(tx);
    let _ = drain_with_gaps(&mut sub);
    let ranges = fake.ranges.lock().clone();
    assert_eq!(ranges.len(), 2);
    assert_eq!(
        ranges[1][0].from, ranges[0][0].to,
        "second round starts again at {}",
        ranges[1][0].from
    );
}

/// A live subscription starting after a reset, before the ingest publishes
/// its positions, starts in the new offsets.
#[test]
fn a_subscription_starting_during_a_reset_starts_in_the_new_offsets() {
    let mut f = Fixture::new(HubConfig::default());
    for _ in 0..3 {
        f.produce(0, "a");
    }
    f.hub.partitions_reset(f.range(0, 3, 0));
    let mut sub = f.subscribe(&["all"], Start::Live);
    f.positions.set(&f.topic, 0, 0);
    f.hub.set_positions(Arc::new(f.positions.clone()));
    f.produce(0, "a");
    f.produce(0, "a");
    assert_eq!(drain_with_gaps(&mut sub), ["0:0", "0:1"]);
}

#[test]
fn a_reset_keeps_the_history_bytes_exact() {
    let mut f = Fixture::new(HubConfig::default());
    for i in 0..10 {
        f.produce(i % 2, "a");
    }
    f.hub.partitions_reset(f.range(0, 5, 0));
    let sum: usize = f
        .hub
        .inner
        .shards
        .iter()
        .map(|s| {
            s.lock()
                .channels
                .values()
                .map(|c| c.history_bytes)
                .sum::<usize>()
        })
        .sum();
    let real: usize = f
        .hub
        .inner
        .shards
        .iter()
        .map(|s| {
            s.lock()
                .channels
                .values()
                .map(|c| c.history.iter().map(|p| p.size()).sum::<usize>())
                .sum::<usize>()
        })
        .sum();
    assert_eq!(
        (f.hub.inner.history_bytes.load(Ordering::Relaxed), sum),
        (real, real)
    );
}
