//! A subscriber's bounded queue. The ingest pushes without ever waiting; a
//! subscriber that lets its queue fill is closed as slow instead of slowing
//! anyone else down.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

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
}

struct State {
    queue: VecDeque<Arc<Publication>>,
    closed: Option<CloseReason>,
}

/// The publication was not queued; the subscriber must be forgotten.
pub struct Rejected;

impl Inbox {
    pub fn new(capacity: usize) -> Self {
        Inbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: None,
            }),
            waker: AtomicWaker::new(),
            capacity,
        }
    }

    /// Queues a publication. On overflow the inbox closes as [`CloseReason::Slow`]:
    /// what is queued is still delivered, then the subscriber ends.
    pub fn push(&self, publication: Arc<Publication>) -> Result<(), Rejected> {
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return Err(Rejected);
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

    pub fn close(&self, reason: CloseReason) {
        let mut state = self.state.lock();
        state.closed.get_or_insert(reason);
        drop(state);
        self.waker.wake();
    }

    /// Moves every queued publication into `out` once there are some, or
    /// returns the close reason once the inbox is closed and empty.
    pub fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Arc<Publication>>,
    ) -> Poll<Result<(), CloseReason>> {
        // Registered before looking, so a push after the look wakes us.
        self.waker.register(cx.waker());
        let mut state = self.state.lock();
        if !state.queue.is_empty() {
            if out.is_empty() {
                std::mem::swap(out, &mut state.queue);
            } else {
                out.extend(state.queue.drain(..));
            }
            return Poll::Ready(Ok(()));
        }
        match state.closed {
            Some(reason) => Poll::Ready(Err(reason)),
            None => Poll::Pending,
        }
    }

    /// Like [`Inbox::recv`] without waiting: moves what is queued into
    /// `out` and says whether there was anything. Returns the close reason
    /// once the inbox is closed and empty.
    pub fn try_recv(&self, out: &mut VecDeque<Arc<Publication>>) -> Result<bool, CloseReason> {
        let mut state = self.state.lock();
        if !state.queue.is_empty() {
            out.extend(state.queue.drain(..));
            return Ok(true);
        }
        match state.closed {
            Some(reason) => Err(reason),
            None => Ok(false),
        }
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
