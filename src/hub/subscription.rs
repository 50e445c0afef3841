//! A subscription: history first, then live publications, filtered so each
//! record reaches the subscriber once and in partition order, with the cursor
//! after every message.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::sync::mpsc;

use super::cursor::Cursor;
use super::inbox::{CloseReason, Inbox};
use super::positions::Positions;
use super::publication::Publication;
use super::{Feeds, Hub, Inner, Notice, PartitionRange, ReplayEvent, Start};

/// A batch stops growing past this many bytes of records, so a transport
/// that writes a batch as one chunk never hands its HTTP layer more than
/// about this much at once: what a stalled client can hold stays bounded, and
/// the rest waits in its inbox, where overflowing it marks the client slow.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;

/// One message ready for a transport: the shared publication and this
/// subscriber's cursor after it.
pub struct Delivery {
    pub publication: Arc<Publication>,
    pub cursor: String,
    /// Published after the subscription started; `false` for records a
    /// resuming client catches up on from history or from Kafka, whose
    /// age says nothing about Herald's latency.
    pub live: bool,
}

/// Records a subscriber will never get because Kafka deleted them
/// (retention) before it resumed: the contract's `gap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub channel: Arc<str>,
    pub partitions: Vec<PartitionRange>,
    /// The partitions' offsets started over (a topic deleted and created
    /// again): `from` is in the old offsets, `to` in the new ones.
    pub reset: bool,
}

impl Gap {
    /// The gap object: `{"channel","partitions":[{"topic","partition","from","to"}]}`,
    /// each partition with `"reset": true` when its offsets started over.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "channel": &*self.channel,
            "partitions": self.partitions.iter().map(|g| {
                let mut entry = serde_json::json!({
                    "topic": &*g.topic, "partition": g.partition, "from": g.from, "to": g.to,
                });
                if self.reset {
                    entry["reset"] = true.into();
                }
                entry
            }).collect::<Vec<_>>(),
        })
    }
}

pub struct Subscription {
    pub(super) hub: Arc<Inner>,
    pub(super) channels: Vec<Arc<str>>,
    /// The topics feeding each channel (same order), to say which channel
    /// a gap hits.
    pub(super) feeds: Feeds,
    /// Records older than the hub's memory, being read back from Kafka;
    /// delivered before the backlog.
    pub(super) replay: Option<mpsc::Receiver<ReplayEvent>>,
    /// Records read back that did not fit in the last batch (`max`): they
    /// go before anything else.
    pub(super) replayed: VecDeque<Arc<Publication>>,
    /// Gaps not yet taken by the transport.
    pub(super) gaps: Vec<Gap>,
    /// Why the replay failed, once it has.
    pub(super) failure: Option<String>,
    pub(super) inbox: Arc<Inbox>,
    /// Publications taken from history at subscribe time, then drained
    /// batches from the inbox, in publication order.
    pub(super) backlog: VecDeque<Arc<Publication>>,
    /// How many at the front of `backlog` came from history.
    pub(super) from_history: usize,
    /// Losses the ingest reported, each to be applied once every
    /// publication before it (by `seq`) has been taken from `backlog`.
    pub(super) notices: VecDeque<Arc<Notice>>,
    /// The `seq` of the last notice applied: a subscriber of several
    /// channels receives each notice through every one of them.
    pub(super) last_notice: Option<u64>,
    /// Where each range being read back ends: once the read-back has
    /// ended, the subscription has every record below, even if the last
    /// ones were not for its channels.
    pub(super) replay_ends: Vec<(Arc<str>, i32, i64)>,
    /// Next offset per partition: what the cursor encodes.
    pub(super) positions: Positions,
    /// The client's address, which bounds the replays it may have running.
    pub(super) client: IpAddr,
}

impl Subscription {
    pub fn channels(&self) -> &[Arc<str>] {
        &self.channels
    }

    /// Says which transport reads this subscription, for the admin API's
    /// counts per channel (`GET /admin/channels`).
    pub fn count_as(&self, kind: super::SubscriberKind) {
        self.inbox.set_kind(kind);
    }

    /// The current cursor: where a client would resume now.
    pub fn cursor(&self) -> String {
        self.positions.encode_cursor()
    }

    /// Gaps found since the last call. A transport sends them before the
    /// messages of the same batch; they come before any replayed record.
    pub fn take_gaps(&mut self) -> Vec<Gap> {
        std::mem::take(&mut self.gaps)
    }

    /// Why the subscription ended with [`CloseReason::ReplayFailed`].
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Whether the hub has cut this subscriber off as slow (its queue
    /// overflowed), even if it has not read to that point yet.
    pub fn is_cut_off_as_slow(&self) -> bool {
        self.inbox.close_reason() == Some(CloseReason::Slow)
    }

    /// Waits for at least one message (or a gap, see [`Subscription::take_gaps`])
    /// and appends up to `max` messages to `out`. Returns the reason once the
    /// subscription can deliver nothing more; everything accepted before
    /// that was delivered.
    pub async fn next_batch(
        &mut self,
        out: &mut Vec<Delivery>,
        max: usize,
    ) -> Result<(), CloseReason> {
        poll_fn(|cx| self.poll_batch(cx, out, max, true)).await
    }

    /// Like [`Subscription::next_batch`], but never waits for a live record:
    /// appends what the subscription can deliver now, possibly nothing (a
    /// short poll). Records being read back from Kafka are still waited for,
    /// because they exist already (bounded by `replay.timeout`): a client
    /// resuming from an old cursor makes progress with every call.
    pub async fn ready_batch(
        &mut self,
        out: &mut Vec<Delivery>,
        max: usize,
    ) -> Result<(), CloseReason> {
        poll_fn(|cx| self.poll_batch(cx, out, max, false)).await
    }

    /// [`Subscription::next_batch`] (`wait_for_live`) or
    /// [`Subscription::ready_batch`] as a poll, for a transport that polls
    /// its subscriptions itself.
    pub fn poll_batch(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<Delivery>,
        max: usize,
        wait_for_live: bool,
    ) -> Poll<Result<(), CloseReason>> {
        let start = out.len();
        loop {
            // Read-back records first, each batch up to `max`.
            // Read back from Kafka: never live.
            let mut all_catching_up = usize::MAX;
            Self::take_before(
                &mut self.replayed,
                u64::MAX,
                &mut self.positions,
                out,
                start,
                max,
                &mut all_catching_up,
            );
            if out.len() > start {
                return Poll::Ready(Ok(()));
            }
            let Some(replay) = &mut self.replay else {
                break;
            };
            match ready!(replay.poll_recv(cx)) {
                Some(ReplayEvent::Gaps(ranges)) => {
                    self.note_gaps(ranges);
                    return Poll::Ready(Ok(()));
                }
                Some(ReplayEvent::Records(batch)) => self.replayed.extend(batch),
                Some(ReplayEvent::Failed(message)) => {
                    self.hub.metrics.replay_failures.inc();
                    self.replay = None;
                    self.failure = Some(message);
                    return Poll::Ready(Err(CloseReason::ReplayFailed));
                }
                None => {
                    self.replay = None;
                    for (topic, partition, end) in std::mem::take(&mut self.replay_ends) {
                        self.positions.raise(&topic, partition, end);
                    }
                    if self.inbox.finish_catching_up() {
                        self.pick_up_again()?;
                    }
                }
            }
        }
        loop {
            // Publications before the next notice, then the notice.
            let stop = self.notices.front().map_or(u64::MAX, |n| n.seq);
            Self::take_before(
                &mut self.backlog,
                stop,
                &mut self.positions,
                out,
                start,
                max,
                &mut self.from_history,
            );
            if out.len() > start {
                return Poll::Ready(Ok(()));
            }
            if self.backlog.front().is_none_or(|p| p.seq > stop)
                && let Some(notice) = self.notices.pop_front()
            {
                if self.note_lost(&notice) {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if wait_for_live {
                ready!(
                    self.inbox
                        .poll_recv(cx, &mut self.backlog, &mut self.notices)
                )?;
            } else if !self.inbox.try_recv(&mut self.backlog, &mut self.notices)? {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// The live records that arrived while this subscription read back from
    /// Kafka overflowed its inbox: it starts over from its position, as a
    /// client resuming from its cursor would, but without a round trip and
    /// without ever telling the client it was slow, since the backlog was
    /// the server's doing. Each round reads back only what arrived during
    /// the previous one, so a client that reads faster than records arrive
    /// converges; one that does not ends when the catching up goes over the
    /// replay limits (`replay.max_records`, `replay.timeout`).
    fn pick_up_again(&mut self) -> Result<(), CloseReason> {
        // A reset still counts: it moves the position back, which the
        // floors alone would not do. A loss does not: the records before
        // it (in the dropped queue) are read again, and the floor sends the
        // lost range to Kafka, whose answer is the gap.
        let mut dropped = VecDeque::new();
        let _ = self.inbox.try_recv(&mut dropped, &mut self.notices);
        while let Some(notice) = self.notices.pop_front() {
            if notice.reset {
                self.note_lost(&notice);
            }
        }
        let hub = Hub {
            inner: self.hub.clone(),
        };
        let channels: Vec<String> = self.channels.iter().map(|c| c.to_string()).collect();
        let mut at = Cursor::new();
        for (topic, partition, next) in self.positions.iter() {
            at.set(topic, partition, next);
        }
        match hub.subscribe(&channels, Start::Cursor(at), self.client) {
            Ok(mut fresh) => {
                fresh.gaps = std::mem::take(&mut self.gaps);
                fresh.last_notice = self.last_notice;
                // The old inbox leaves the channels as `self` is replaced.
                *self = fresh;
                Ok(())
            }
            Err(e) => {
                self.failure = Some(format!(
                    "catching up with the records that arrived while older ones were read back from Kafka: {e}"
                ));
                Err(CloseReason::ReplayFailed)
            }
        }
    }

    /// Applies a notice of offsets the ingest lost: where this subscription
    /// has not passed them, its cursor steps over them and a gap says so,
    /// from its own position (every record before the loss was delivered
    /// already). Whether there is a gap to send. A subscriber of several
    /// channels receives the same notice through each; the first applies.
    fn note_lost(&mut self, notice: &Arc<Notice>) -> bool {
        if self.last_notice.is_some_and(|last| notice.seq <= last) {
            return false;
        }
        self.last_notice = Some(notice.seq);
        let ranges: Vec<PartitionRange> = notice
            .lost
            .iter()
            .filter(|r| self.feeds.iter().flatten().any(|t| **t == *r.topic))
            .filter_map(|r| {
                let at = self.positions.get(&r.topic, r.partition).unwrap_or(r.from);
                if notice.reset {
                    // Back to where the new offsets are read from.
                    return Some(PartitionRange {
                        from: at,
                        ..r.clone()
                    });
                }
                (at < r.to).then(|| PartitionRange {
                    from: at.max(r.from),
                    ..r.clone()
                })
            })
            .collect();
        if ranges.is_empty() {
            return false;
        }
        if notice.reset {
            for r in &ranges {
                self.positions.set(&r.topic, r.partition, r.to);
            }
            self.push_gaps(&ranges, true);
        } else {
            self.note_gaps(ranges);
        }
        true
    }

    /// Moves publications from `queue` into `out` (as deliveries, skipping
    /// those already delivered) until `out` holds `max` more than `start`
    /// or [`MAX_BATCH_BYTES`] of records, or the next one's `seq` is past
    /// `stop`. The first `catching_up` of `queue` are not live (and the
    /// count goes down as they are taken).
    fn take_before(
        queue: &mut VecDeque<Arc<Publication>>,
        stop: u64,
        positions: &mut Positions,
        out: &mut Vec<Delivery>,
        start: usize,
        max: usize,
        catching_up: &mut usize,
    ) {
        let mut bytes = 0;
        while out.len() - start < max && bytes < MAX_BATCH_BYTES {
            if queue.front().is_none_or(|p| p.seq > stop) {
                break;
            }
            let publication = queue.pop_front().expect("checked");
            let live = *catching_up == 0;
            *catching_up = catching_up.saturating_sub(1);
            if let Some(cursor) = accept(positions, &publication) {
                bytes += publication.record.size();
                out.push(Delivery {
                    publication,
                    cursor,
                    live,
                });
            }
        }
    }

    fn note_gaps(&mut self, ranges: Vec<PartitionRange>) {
        for r in &ranges {
            // Those offsets are gone: the cursor moves past them.
            self.positions.raise(&r.topic, r.partition, r.to);
        }
        self.push_gaps(&ranges, false);
    }

    /// One gap per channel fed by some of `ranges`.
    fn push_gaps(&mut self, ranges: &[PartitionRange], reset: bool) {
        for (channel, topics) in self.channels.iter().zip(&self.feeds) {
            let partitions: Vec<PartitionRange> = ranges
                .iter()
                .filter(|r| topics.iter().any(|t| **t == *r.topic))
                .cloned()
                .collect();
            if !partitions.is_empty() {
                self.gaps.push(Gap {
                    channel: channel.clone(),
                    partitions,
                    reset,
                });
            }
        }
    }
}

/// Whether this publication is new to the subscriber at `positions`; if so
/// advances them and returns the cursor after it.
fn accept(positions: &mut Positions, publication: &Publication) -> Option<String> {
    let record = &publication.record;
    let next = positions.get(&record.topic, record.partition).unwrap_or(0);
    if record.offset < next {
        // Before its starting point, or already delivered through another
        // of its channels.
        return None;
    }
    positions.set(&record.topic, record.partition, record.offset + 1);
    positions.raise_from(&publication.positions);
    Some(positions.encode_cursor())
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.inbox.close(CloseReason::Gone);
        self.hub.unsubscribe(&self.channels, &self.inbox);
    }
}
