//! Ending streams before their client does, for three reasons, each a
//! value every long-lived stream (an SSE stream, a WebSocket, a long poll)
//! selects on through its [`EndSignal`]:
//!
//! - **shutdown** (SIGTERM): the node stops; its clients reconnect
//!   elsewhere;
//! - **draining** (`POST /admin/drain`): the same, but the node keeps
//!   running (and serving `/metrics`), refusing new subscriptions;
//! - **revoked** (`POST /admin/disconnect?sub=…`): every stream opened with
//!   a token of that subject (`sub`) ends, telling the client its token
//!   was revoked; other streams go on.
//!
//! One token per subject that has streams open, each a child of the
//! node's token (itself a child of the shutdown token): cancelling the
//! node's ends them all, cancelling a subject's ends only its own. A
//! stream holds one clone and a count of its subject's streams; a subject
//! with no stream open has no entry. Revoking one wakes only its streams,
//! however many others the node holds.
//!
//! Below `app`, `http` and the transports, which all use it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Locks the subjects are spread over: a stream opening takes one, so
/// streams of different subjects rarely wait on each other.
const SHARDS: usize = 16;

/// Why a stream was ended by the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The node is stopping: reconnect, to any node.
    Shutdown,
    /// The node is draining: reconnect, to another node.
    Draining,
    /// The token's subject was disconnected by the admin API: do not
    /// reconnect with the same token.
    Revoked,
}

impl EndReason {
    /// The `reason` clients see (SSE `event: reconnect`, the WebSocket
    /// close reason).
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Shutdown => "shutdown",
            EndReason::Draining => "draining",
            EndReason::Revoked => "token_revoked",
        }
    }
}

/// The node's end signals: its own, and one per subject with streams.
pub struct StreamEnds {
    shutdown: CancellationToken,
    /// Cancelled at shutdown or by a drain.
    node: CancellationToken,
    draining: AtomicBool,
    subjects: Box<[Mutex<SubjectShard>]>,
}

/// The subjects whose names hash to one shard.
type SubjectShard = HashMap<Arc<str>, Subject>;

/// A subject's streams: their signal, and how many hold it.
struct Subject {
    token: CancellationToken,
    holders: usize,
}

/// What one stream selects on to learn the node wants it ended.
pub struct EndSignal {
    token: CancellationToken,
    ends: Arc<StreamEnds>,
    /// The subject it counts under, when its token had one.
    subject: Option<Arc<str>>,
}

impl StreamEnds {
    /// Signals that end with `shutdown` too.
    pub fn new(shutdown: &CancellationToken) -> Arc<StreamEnds> {
        Arc::new(StreamEnds {
            shutdown: shutdown.clone(),
            node: shutdown.child_token(),
            draining: AtomicBool::new(false),
            subjects: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    fn shard(&self, subject: &str) -> &Mutex<SubjectShard> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        subject.hash(&mut hasher);
        &self.subjects[hasher.finish() as usize % SHARDS]
    }

    /// The signal of a stream opened with a token of `subject` (or with
    /// none). Already fired when the node is draining or stopping.
    pub fn watch(self: &Arc<Self>, subject: Option<&str>) -> EndSignal {
        let Some(subject) = subject else {
            return EndSignal {
                token: self.node.clone(),
                ends: self.clone(),
                subject: None,
            };
        };
        let mut shard = self.shard(subject).lock();
        let (name, entry) = match shard.get_key_value(subject) {
            Some((name, _)) => {
                let name = name.clone();
                let entry = shard.get_mut(&name).expect("just found");
                (name, entry)
            }
            None => {
                let name: Arc<str> = Arc::from(subject);
                let entry = shard.entry(name.clone()).or_insert_with(|| Subject {
                    token: self.node.child_token(),
                    holders: 0,
                });
                (name, entry)
            }
        };
        entry.holders += 1;
        EndSignal {
            token: entry.token.clone(),
            ends: self.clone(),
            subject: Some(name),
        }
    }

    /// Ends every stream of `subject`; returns how many there were.
    /// Streams it opens from now on are not affected.
    pub fn revoke(&self, subject: &str) -> usize {
        let mut shard = self.shard(subject).lock();
        let Some(entry) = shard.get_mut(subject) else {
            return 0;
        };
        // A fresh signal for the streams opened after this; the holders
        // of the old one still count until they have gone.
        let old = std::mem::replace(&mut entry.token, self.node.child_token());
        old.cancel();
        entry.holders
    }

    /// Ends every stream, telling clients to reconnect elsewhere; the node
    /// goes on. Whether it was draining already.
    pub fn drain(&self) -> bool {
        let was = self.draining.swap(true, Ordering::AcqRel);
        self.node.cancel();
        was
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Why a signal that fired did: the node's reasons win over a
    /// subject's.
    fn reason(&self) -> EndReason {
        if self.shutdown.is_cancelled() {
            EndReason::Shutdown
        } else if self.is_draining() {
            EndReason::Draining
        } else {
            EndReason::Revoked
        }
    }
}

impl EndSignal {
    /// Resolves when the stream is to end, with why.
    pub async fn ended(&self) -> EndReason {
        self.token.cancelled().await;
        self.ends.reason()
    }

    /// [`EndSignal::ended`] as a future that owns what it waits on, for a
    /// loop that pins it once (see [`EndSignal::reason`] for why, once it
    /// resolved).
    pub fn ended_owned(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// Why the stream is to end (call once [`EndSignal::ended_owned`]
    /// resolved).
    pub fn reason(&self) -> EndReason {
        self.ends.reason()
    }
}

impl Drop for EndSignal {
    fn drop(&mut self) {
        let Some(subject) = &self.subject else { return };
        let mut shard = self.ends.shard(subject).lock();
        if let Some(entry) = shard.get_mut(&**subject) {
            entry.holders -= 1;
            if entry.holders == 0 {
                shard.remove(&**subject);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn revoking_a_subject_ends_its_streams_only() {
        let shutdown = CancellationToken::new();
        let ends = StreamEnds::new(&shutdown);
        let a1 = ends.watch(Some("alice"));
        let a2 = ends.watch(Some("alice"));
        let b = ends.watch(Some("bob"));
        let anonymous = ends.watch(None);
        assert_eq!(ends.revoke("alice"), 2);
        assert_eq!(a1.ended().await, EndReason::Revoked);
        assert_eq!(a2.ended().await, EndReason::Revoked);
        assert!(b.ended().now_or_never().is_none());
        assert!(anonymous.ended().now_or_never().is_none());
        // A stream opened after the revocation is not ended by it.
        let a3 = ends.watch(Some("alice"));
        assert!(a3.ended().now_or_never().is_none());
        drop((a1, a2));
        assert_eq!(ends.revoke("alice"), 1);
        drop(a3);
        assert_eq!(
            ends.revoke("alice"),
            0,
            "no entry left once its streams went"
        );
        assert_eq!(ends.revoke("nobody"), 0);
        // Draining ends everyone, with its own reason.
        assert!(!ends.drain());
        assert_eq!(b.ended().await, EndReason::Draining);
        assert_eq!(anonymous.ended().await, EndReason::Draining);
        assert_eq!(
            ends.watch(Some("carol")).ended().await,
            EndReason::Draining,
            "a stream opened while draining ends at once"
        );
        shutdown.cancel();
        assert_eq!(b.ended().await, EndReason::Shutdown);
    }
}
