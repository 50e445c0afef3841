//! A subscriber's bounded queue. The ingest pushes without ever waiting; a
//! subscriber that lets its queue fill is closed as slow instead of slowing
//! anyone else down.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use super::Notice;
use super::publication::Publication;

/// Why a subscription stopped receiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its queue overflowed: the client reads slower than messages arrive.
    Slow,
    /// The subscriber went away.
    Gone,
    /// Reading older history back from Kafka failed or timed out
    /// ([`Subscription::failure`](super::Subscription::failure) says why).
    ReplayFailed,
}

/// One subscriber reads an inbox, so one waker is enough: the task polling
/// it, woken when the queue stops being empty or the inbox closes.
pub struct Inbox {
    state: Mutex<State>,
    waker: AtomicWaker,
    capacity: usize,
    /// Which transport reads it ([`SubscriberKind`] as a byte), for the
    /// admin API's counts per channel; set once, after subscribing.
    kind: AtomicU8,
}

/// The transport a subscriber reads through, as the admin API counts
/// them. A subscription not yet told (or embedded without a transport)
/// is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SubscriberKind {
    Other = 0,
    Sse = 1,
    Ws = 2,
    Poll = 3,
}

impl SubscriberKind {
    /// Every kind, in the order of their counts in [`ChannelCounts`](super::ChannelCounts).
    pub const ALL: [SubscriberKind; 4] = [
        SubscriberKind::Sse,
        SubscriberKind::Ws,
        SubscriberKind::Poll,
        SubscriberKind::Other,
    ];

    /// The name of the kind in the admin API (the `transport` label of
    /// the metrics).
    pub fn name(self) -> &'static str {
        match self {
            SubscriberKind::Sse => "sse",
            SubscriberKind::Ws => "ws",
            SubscriberKind::Poll => "poll",
            SubscriberKind::Other => "other",
        }
    }

    fn from_byte(b: u8) -> SubscriberKind {
        match b {
            1 => SubscriberKind::Sse,
            2 => SubscriberKind::Ws,
            3 => SubscriberKind::Poll,
            _ => SubscriberKind::Other,
        }
    }
}

struct State {
    queue: VecDeque<Arc<Publication>>,
    /// Lost offsets the subscriber must hear of, in publication order with
    /// the queue (a notice's `seq` says where). Rare, so outside `capacity`.
    notices: Vec<Arc<Notice>>,
    closed: Option<CloseReason>,
    /// The subscriber is reading older records back from Kafka and does
    /// not drain the queue meanwhile: overflowing then is the server's
    /// doing, not the subscriber's, so it does not close the inbox.
    catching_up: bool,
    /// The queue overflowed while catching up and was dropped: what it
    /// held (and what came after) must be read again.
    overflowed: bool,
}

/// The publication was not queued; the subscriber must be forgotten.
pub struct Rejected;

impl Inbox {
    pub fn new(capacity: usize) -> Self {
        Inbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                notices: Vec::new(),
                closed: None,
                catching_up: false,
                overflowed: false,
            }),
            waker: AtomicWaker::new(),
            capacity,
            kind: AtomicU8::new(SubscriberKind::Other as u8),
        }
    }

    pub fn set_kind(&self, kind: SubscriberKind) {
        self.kind.store(kind as u8, Ordering::Relaxed);
    }

    pub fn kind(&self) -> SubscriberKind {
        SubscriberKind::from_byte(self.kind.load(Ordering::Relaxed))
    }

    /// An inbox for a subscriber that first reads records back from Kafka
    /// (see [`Inbox::finish_catching_up`]).
    pub fn catching_up(capacity: usize) -> Self {
        let inbox = Inbox::new(capacity);
        inbox.state.lock().catching_up = true;
        inbox
    }

    /// The subscriber has read back what it was missing and starts to
    /// drain the queue. Whether the queue overflowed meanwhile (then it
    /// holds nothing, and the subscriber must pick up from its position
    /// again rather than from the queue).
    pub fn finish_catching_up(&self) -> bool {
        let mut state = self.state.lock();
        state.catching_up = false;
        state.overflowed
    }

    /// Queues a publication. On overflow the inbox closes as [`CloseReason::Slow`]:
    /// what is queued is still delivered, then the subscriber ends. While
    /// catching up, an overflow drops the queue instead and further
    /// publications are not kept.
    pub fn push(&self, publication: Arc<Publication>) -> Result<(), Rejected> {
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return Err(Rejected);
        }
        if state.overflowed {
            return Ok(());
        }
        if state.queue.len() >= self.capacity && state.catching_up {
            state.overflowed = true;
            state.queue = VecDeque::new();
            return Ok(());
        }
        if state.queue.len() >= self.capacity {
            state.closed = Some(CloseReason::Slow);
            drop(state);
            self.waker.wake();
            return Err(Rejected);
        }
        let was_empty = state.queue.is_empty();
        state.queue.push_back(publication);
        drop(state);
        if was_empty {
            self.waker.wake();
        }
        Ok(())
    }

    /// Queues a notice of lost offsets. A closed inbox ignores it: its
    /// subscriber resumes from a cursor, and the hub's floors send that
    /// resume to Kafka, which answers a loss with a gap (and a cursor from
    /// before a reset beyond the new end with `cursor_ahead`).
    pub fn push_notice(&self, notice: Arc<Notice>) {
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return;
        }
        state.notices.push(notice);
        drop(state);
        self.waker.wake();
    }

    pub fn close(&self, reason: CloseReason) {
        let mut state = self.state.lock();
        state.closed.get_or_insert(reason);
        drop(state);
        self.waker.wake();
    }

    /// Moves every queued publication and notice into `out` and `notices`
    /// once there are some, or returns the close reason once the inbox is
    /// closed and empty. Both are taken at once, so every publication
    /// queued before a notice is in `out` when the notice is.
    pub fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Arc<Publication>>,
        notices: &mut VecDeque<Arc<Notice>>,
    ) -> Poll<Result<(), CloseReason>> {
        // Registered before looking, so a push after the look wakes us.
        self.waker.register(cx.waker());
        match self.try_recv(out, notices) {
            Ok(true) => Poll::Ready(Ok(())),
            Ok(false) => Poll::Pending,
            Err(reason) => Poll::Ready(Err(reason)),
        }
    }

    /// Like [`Inbox::poll_recv`] without waiting: moves what is queued
    /// into `out` and `notices` and says whether there was anything.
    /// Returns the close reason once the inbox is closed and empty.
    pub fn try_recv(
        &self,
        out: &mut VecDeque<Arc<Publication>>,
        notices: &mut VecDeque<Arc<Notice>>,
    ) -> Result<bool, CloseReason> {
        let mut state = self.state.lock();
        if state.queue.is_empty() && state.notices.is_empty() {
            return match state.closed {
                Some(reason) => Err(reason),
                None => Ok(false),
            };
        }
        if out.is_empty() {
            std::mem::swap(out, &mut state.queue);
        } else {
            out.extend(state.queue.drain(..));
        }
        notices.extend(state.notices.drain(..));
        Ok(true)
    }

    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Why the inbox closed, if it has (queued publications may remain).
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.state.lock().closed
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
