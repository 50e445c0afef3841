//! A wake gate: polls a source only after that source woke the task.
//!
//! A connection's task waits on several sources at once (its
//! subscriptions, the client's socket, timers) and `select!` polls each of
//! them on every wake, whichever woke it. Polling the socket to learn the
//! client sent nothing walks tungstenite, hyper's upgraded I/O and tokio's
//! readiness, which takes the I/O driver's per-socket lock; polling the
//! subscriptions again right after a write round locks every inbox. A
//! source polled through a gate gets a waker of its own, which opens the
//! gate and wakes the task; while the gate is shut the poll answers
//! `Pending` at once. After a `Ready` it stays open, as the source may
//! have more.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

pub(crate) struct Gate {
    state: Arc<State>,
    waker: Waker,
}

#[derive(Default)]
struct State {
    open: AtomicBool,
    task: AtomicWaker,
}

impl Wake for State {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.open.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Gate {
    /// An open gate: the source has not been polled yet.
    pub(crate) fn new() -> Self {
        let state = Arc::new(State::default());
        state.open.store(true, Ordering::Relaxed);
        Gate {
            waker: Waker::from(state.clone()),
            state,
        }
    }

    /// Opens the gate: the source changed without waking (a subscription
    /// was added), so the next poll must look.
    pub(crate) fn open(&self) {
        self.state.open.store(true, Ordering::Release);
    }

    /// `poll` with the gate's own waker if the gate is open; `Pending` at
    /// once if it is shut (the task is woken when the source wakes).
    pub(crate) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.state.task.register(cx.waker());
        if !self.state.open.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let polled = poll(&mut Context::from_waker(&self.waker));
        if polled.is_ready() {
            self.state.open.store(true, Ordering::Release);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_shut_gate_polls_nothing_until_its_source_wakes() {
        use std::cell::{Cell, RefCell};
        let task = Arc::new(Count(AtomicUsize::new(0)));
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        let gate = Gate::new();
        let polls = Cell::new(0);
        let source_waker: RefCell<Option<Waker>> = RefCell::new(None);
        let pending = |cx: &mut Context<'_>| {
            polls.set(polls.get() + 1);
            *source_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::<()>::Pending
        };
        assert!(gate.poll(&mut cx, pending).is_pending());
        assert!(gate.poll(&mut cx, pending).is_pending());
        assert_eq!(
            polls.get(),
            1,
            "shut after a Pending: the second poll is skipped"
        );
        source_waker.borrow_mut().take().unwrap().wake();
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            1,
            "the source's wake woke the task"
        );
        assert!(gate.poll(&mut cx, pending).is_pending());
        assert_eq!(polls.get(), 2, "open after the source woke");
        source_waker.borrow_mut().take().unwrap().wake();
        assert!(gate.poll(&mut cx, |_| Poll::Ready(())).is_ready());
        assert!(gate.poll(&mut cx, pending).is_pending());
        assert_eq!(
            polls.get(),
            3,
            "open after a Ready: the source may have more"
        );
        gate.open();
        assert!(gate.poll(&mut cx, pending).is_pending());
        assert_eq!(polls.get(), 4, "opened by hand");
    }
}
