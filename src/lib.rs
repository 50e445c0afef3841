//! Herald: a Kafka-backed fan-out bridge.
//!
//! Records flow one way, one module per step:
//!
//! ```text
//! Kafka ─▶ kafka::ingest ─▶ router ─▶ hub ─▶ transport::{ws, sse, poll} ─▶ clients
//!                                      ▲
//!             kafka::replay ───────────┘  (history older than memory)
//! ```
//!
//! - [`kafka`] — one consumer per node, assigned every partition of the
//!   routed topics, turning each record into an owned
//!   [`kafka::record::Record`]; and replay, which reads older ranges back for
//!   resuming clients, shared between clients that need the same range.
//! - [`router`] — maps a record to channel names through the configured
//!   templates, and a channel name back to the topics that feed it.
//! - [`hub`] — channel registry, bounded history, live fan-out, cursors and
//!   every rule about resuming; transports get a [`hub::Subscription`].
//! - [`transport`] — thin adapters from a subscription to a wire format:
//!   WebSocket, Server-Sent Events, short and long polling.
//! - [`server`] — HTTP routing, connection limits, errors, `/metrics`,
//!   health, phased shutdown; [`sse_http`] serves a connection that opens
//!   with an event-stream request without hyper's per-connection buffers.
//! - [`dev`] — `herald dev`: an embedded Kafka and a demo.
//!
//! [`run`] wires them together for `herald serve`.

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod dev;
pub mod hub;
pub mod kafka;
pub mod metrics;
pub mod router;
pub mod server;
pub mod shutdown;
pub mod sse_http;
pub mod transport;

pub use server::{Herald, run};
