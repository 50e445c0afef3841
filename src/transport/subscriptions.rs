//! A connection's table of subscriptions, one per channel and each with its
//! own cursor, polled by the connection's task itself: a WebSocket's, and
//! an SSE stream's or a poll's in the `sub=` form (one request, several
//! subscriptions).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use crate::app::App;
use crate::http::access::{self, Reader};
use crate::http::error::ApiError;
use crate::http::query::{SubParam, stream_position};
use crate::hub::{CloseReason, Delivery, Gap, Start, SubscribeError, SubscriberKind, Subscription};

/// Messages one subscription hands over per batch.
const MAX_BATCH: usize = 256;

/// A subscription's answer to the hub, while `subscribe` is in progress.
pub(super) type Subscribing =
    Pin<Box<dyn Future<Output = Result<Subscription, SubscribeError>> + Send>>;

/// One subscription of a connection: its channel, and the hub's answer
/// or the subscription itself.
struct Entry {
    channel: Arc<str>,
    state: EntryState,
}

// Nearly every entry is `Live`, so its size is the entry's size either way;
// boxing it would add an allocation per subscription.
#[allow(clippy::large_enum_variant)]
pub(super) enum EntryState {
    /// Subscribing (from a `subscribe` message). Boxed: only a subscribing
    /// slot pays for the future.
    Subscribing(Subscribing),
    /// Subscribed; `announced` once `subscribed` has been sent.
    Live {
        subscription: Subscription,
        announced: bool,
    },
}

/// What a subscription hands to its connection.
pub(super) struct Outbound {
    pub(super) channel: Arc<str>,
    pub(super) event: Event,
}

pub(super) enum Event {
    /// Subscribed: the starting cursor.
    Subscribed(String),
    /// The hub refused the subscription; the slot is gone.
    Refused(ApiError),
    /// Gaps (with the cursor that steps over them), then the messages in
    /// [`Subscriptions::batch`].
    Batch { gaps: Vec<Gap>, cursor: String },
    /// The subscription ended (`failure` says why a replay failed); the
    /// slot is gone.
    Ended {
        reason: CloseReason,
        failure: Option<String>,
    },
}

impl Entry {
    /// The next event, appending a batch's messages to `batch`; `true`
    /// with it when the slot is finished.
    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Delivery>,
        max: usize,
    ) -> Poll<(Event, bool)> {
        match &mut self.state {
            EntryState::Subscribing(answer) => match ready!(answer.as_mut().poll(cx)) {
                Ok(subscription) => {
                    let cursor = subscription.cursor();
                    self.state = EntryState::Live {
                        subscription,
                        announced: true,
                    };
                    Poll::Ready((Event::Subscribed(cursor), false))
                }
                Err(e) => Poll::Ready((Event::Refused(e.into()), true)),
            },
            EntryState::Live {
                subscription,
                announced,
            } => {
                if !*announced {
                    *announced = true;
                    return Poll::Ready((Event::Subscribed(subscription.cursor()), false));
                }
                match ready!(subscription.poll_batch(cx, batch, max, true)) {
                    Ok(()) => {
                        let gaps = subscription.take_gaps();
                        let cursor = if gaps.is_empty() {
                            String::new()
                        } else {
                            subscription.cursor()
                        };
                        Poll::Ready((Event::Batch { gaps, cursor }, false))
                    }
                    Err(reason) => {
                        let failure = subscription.failure().map(str::to_owned);
                        Poll::Ready((Event::Ended { reason, failure }, true))
                    }
                }
            }
        }
    }
}

/// A connection's subscriptions, polled by its task: no task, no channel,
/// no stream combinator per subscription. Each inbox holds the task's
/// waker; on a wake the entries are polled in turn, starting after the last
/// one served, so a busy channel cannot starve the others.
#[derive(Default)]
pub(super) struct Subscriptions {
    entries: Vec<Entry>,
    turn: usize,
    /// The messages of the last `Batch` event.
    pub(super) batch: Vec<Delivery>,
}

impl Subscriptions {
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn contains(&self, channel: &str) -> bool {
        self.entries.iter().any(|s| &*s.channel == channel)
    }

    pub(super) fn add(&mut self, channel: Arc<str>, state: EntryState) {
        // A slot is a few hundred bytes and most connections hold one:
        // grow one at a time, not to four at once.
        self.entries.reserve_exact(1);
        self.entries.push(Entry { channel, state });
    }

    /// The channels subscribed (or subscribing).
    pub(super) fn channels(&self) -> impl Iterator<Item = &Arc<str>> {
        self.entries.iter().map(|e| &e.channel)
    }

    /// Drops a subscription (it leaves the hub now); whether there was one.
    pub(super) fn remove(&mut self, channel: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|s| &*s.channel != channel);
        self.entries.len() < before
    }

    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Outbound> {
        self.poll_next_up_to(cx, MAX_BATCH)
    }

    /// [`Subscriptions::poll_next`], a batch holding at most `max` messages
    /// (a poll's `limit`).
    pub(super) fn poll_next_up_to(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<Outbound> {
        self.batch.clear();
        let n = self.entries.len();
        for k in 0..n {
            let i = (self.turn + k) % n;
            if let Poll::Ready((event, finished)) =
                self.entries[i].poll_event(cx, &mut self.batch, max)
            {
                let channel = if finished {
                    self.turn = i;
                    self.entries.remove(i).channel
                } else {
                    self.turn = i + 1;
                    self.entries[i].channel.clone()
                };
                return Poll::Ready(Outbound { channel, event });
            }
        }
        Poll::Pending
    }
}

impl Subscriptions {
    /// The live subscriptions, for a transport that takes from each in
    /// turn without waiting (a poll).
    pub(super) fn live_mut(&mut self) -> impl Iterator<Item = (&Arc<str>, &mut Subscription)> {
        self.entries.iter_mut().filter_map(|e| match &mut e.state {
            EntryState::Live { subscription, .. } => Some((&e.channel, subscription)),
            EntryState::Subscribing(_) => None,
        })
    }

    /// Whether the hub has cut any of them off as slow.
    pub(super) fn any_cut_off_as_slow(&self) -> bool {
        self.entries.iter().any(|e| match &e.state {
            EntryState::Live { subscription, .. } => subscription.is_cut_off_as_slow(),
            EntryState::Subscribing(_) => false,
        })
    }
}

/// The subscriptions of one `sub=` request (an SSE stream or a poll), one
/// per channel and each from its own cursor, and each one's cursor after
/// what the request handed out last, in the order of the `sub=` values:
/// what the stream's position ([`stream_position`]) and a poll's
/// `cursors` are made of.
pub(super) struct Multiplexed {
    pub(super) table: Subscriptions,
    cursors: Vec<(Arc<str>, String)>,
    /// One of them ended cut off as slow: it has left `table`, but the
    /// request still counts as a slow client when it goes.
    pub(super) ended_slow: bool,
}

impl Multiplexed {
    /// Every channel of `subs` may be read by `reader`, or the refusal of
    /// the first that may not, naming it.
    pub(super) fn authorize(app: &App, reader: &Reader, subs: &[SubParam]) -> Result<(), ApiError> {
        for sub in subs {
            reader
                .authorize_one(app, &sub.channel)
                .map_err(|e| access::denied(e).for_channel(&sub.channel))?;
        }
        Ok(())
    }

    /// Subscribes each `(channel, start)` in turn; the first refusal
    /// refuses the request, naming its channel (the subscriptions made
    /// before it leave the hub).
    pub(super) async fn subscribe(
        app: &App,
        starts: Vec<(String, Start)>,
        client: IpAddr,
        kind: SubscriberKind,
    ) -> Result<Multiplexed, ApiError> {
        let mut table = Subscriptions::default();
        let mut cursors = Vec::with_capacity(starts.len());
        for (channel, start) in starts {
            let subscription = app
                .hub
                .subscribe_from(std::slice::from_ref(&channel), start, client)
                .await
                .map_err(|e| ApiError::from(e).for_channel(&channel))?;
            subscription.count_as(kind);
            let channel = Arc::<str>::from(channel);
            cursors.push((channel.clone(), subscription.cursor()));
            table.add(
                channel,
                EntryState::Live {
                    subscription,
                    announced: true,
                },
            );
        }
        Ok(Multiplexed {
            table,
            cursors,
            ended_slow: false,
        })
    }

    /// Whether the hub cut any of them off as slow.
    pub(super) fn is_cut_off_as_slow(&self) -> bool {
        self.ended_slow || self.table.any_cut_off_as_slow()
    }

    /// `channel`'s subscription is at `cursor` now.
    pub(super) fn advance(&mut self, channel: &str, cursor: &str) {
        if let Some((_, at)) = self.cursors.iter_mut().find(|(c, _)| &**c == channel) {
            at.clear();
            at.push_str(cursor);
        }
    }

    /// The channels, in the order of the `sub=` values.
    pub(super) fn channels(&self) -> impl Iterator<Item = &str> {
        self.cursors.iter().map(|(c, _)| &**c)
    }

    /// The stream's position: every subscription's cursor, in order.
    pub(super) fn position(&self) -> String {
        stream_position(self.cursors.iter().map(|(_, c)| c.as_str()))
    }

    /// `{"CHANNEL": cursor, …}`, every subscription's cursor.
    pub(super) fn cursors_json(&self) -> serde_json::Value {
        self.cursors
            .iter()
            .map(|(c, at)| (c.to_string(), serde_json::Value::from(at.as_str())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}
