//! A subscription: history first, then live publications, filtered so each
//! record reaches the subscriber once and in partition order, with the cursor
//! after every message.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Inner;
use super::inbox::{CloseReason, Inbox};
use super::positions::Positions;
use super::publication::Publication;

/// One message ready for a transport: the shared publication and this
/// subscriber's cursor after it.
pub struct Delivery {
    pub publication: Arc<Publication>,
    pub cursor: String,
}

pub struct Subscription {
    pub(super) hub: Arc<Inner>,
    pub(super) channels: Vec<Arc<str>>,
    pub(super) inbox: Arc<Inbox>,
    /// Publications taken from history at subscribe time, then drained
    /// batches from the inbox, in publication order.
    pub(super) backlog: VecDeque<Arc<Publication>>,
    /// Next offset per partition: what the cursor encodes.
    pub(super) positions: Positions,
}

impl Subscription {
    pub fn channels(&self) -> &[Arc<str>] {
        &self.channels
    }

    /// The current cursor: where a client would resume now.
    pub fn cursor(&self) -> String {
        self.positions.encode_cursor()
    }

    /// Waits for at least one message and appends up to `max` to `out`.
    /// Returns the reason once the subscription can deliver nothing more;
    /// everything accepted before that was delivered.
    pub async fn next_batch(
        &mut self,
        out: &mut Vec<Delivery>,
        max: usize,
    ) -> Result<(), CloseReason> {
        let start = out.len();
        loop {
            while out.len() - start < max {
                let Some(publication) = self.backlog.pop_front() else {
                    break;
                };
                if let Some(cursor) = self.accept(&publication) {
                    out.push(Delivery {
                        publication,
                        cursor,
                    });
                }
            }
            if out.len() > start {
                return Ok(());
            }
            self.inbox.recv(&mut self.backlog).await?;
        }
    }

    /// Whether this publication is new to the subscriber; if so advances the
    /// positions and returns the cursor after it.
    fn accept(&mut self, publication: &Publication) -> Option<String> {
        let record = &publication.record;
        let next = self
            .positions
            .get(&record.topic, record.partition)
            .unwrap_or(0);
        if record.offset < next {
            // Before its starting point, or already delivered through
            // another of its channels.
            return None;
        }
        self.positions
            .set(&record.topic, record.partition, record.offset + 1);
        self.positions.raise_from(&publication.positions);
        Some(self.positions.encode_cursor())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.inbox.close(CloseReason::Gone);
        self.hub.unsubscribe(&self.channels, &self.inbox);
    }
}
