//! Transports: thin adapters from a hub [`Subscription`](crate::hub::Subscription)
//! to a wire format. Cursor rules, history and resume live in the hub; the
//! query parameters, errors and bodies they share live in `http`.
//!
//! - [`sse`] — `GET /sse`: one stream, one cursor for all its channels
//!   (`channel=`), or one per channel (`sub=`).
//! - [`ws`] — `GET /ws`: JSON frames, one subscription (and cursor) per channel.
//! - [`poll`] — `GET /poll`: short and long polls, one cursor per request
//!   (`channel=`), or one per channel (`sub=`).
//!
//! A connection holding one hub subscription per channel (a WebSocket, a
//! `sub=` stream or poll) keeps them in the table of `subscriptions`.

pub(crate) mod gate;
pub mod poll;
pub mod sse;
mod subscriptions;
pub mod ws;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::hub::Delivery;
use crate::metrics::Metrics;

/// Counts delivered messages and the latency of live ones (Kafka
/// timestamp → now, just before they are written); those a resuming
/// client catches up on are counted apart, their age being the client's
/// absence, not Herald's latency.
pub fn observe_delivered(metrics: &Metrics, transport: &str, batch: &[Delivery]) {
    if batch.is_empty() {
        return;
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    metrics.delivery_latency.observe_ms(
        batch
            .iter()
            .filter(|d| d.live)
            .filter_map(|d| d.publication.record.timestamp)
            .map(|ts| (now_ms - ts).max(0) as u64),
    );
    metrics.delivered_to(transport).inc_by(batch.len() as u64);
    let catching_up = batch.iter().filter(|d| !d.live).count();
    if catching_up > 0 {
        metrics
            .catch_up_delivered
            .with_label_values(&[transport])
            .inc_by(catching_up as u64);
    }
}

/// Counts a connection (or a poll in progress) in
/// `herald_connections{transport}` while it lives.
pub struct ConnectionGauge(prometheus::IntGauge);

impl ConnectionGauge {
    pub fn new(metrics: &Metrics, transport: &str) -> Self {
        let g = metrics.connections.with_label_values(&[transport]);
        g.inc();
        ConnectionGauge(g)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}
