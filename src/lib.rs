//! Herald: a Kafka-backed fan-out bridge.
//!
//! Records flow one way, one module per step:
//!
//! ```text
//! Kafka ─▶ kafka::ingest ─▶ router ─▶ hub ─▶ transport::{ws, sse, poll} ─▶ http ─▶ clients
//!                                      ▲
//!             kafka::replay ───────────┘  (history older than memory)
//! ```
//!
//! - [`record`] — the owned Kafka record every step passes on, and Kafka's
//!   rule for topic names.
//! - [`kafka`] — one consumer per node, assigned every partition of the
//!   routed topics, turning each message into a [`record::Record`] at the
//!   boundary; replay, which reads older ranges back for resuming
//!   clients, shared between clients that need the same range; and the
//!   producer behind `POST /publish`.
//! - [`router`] — maps a record to channel names through the configured
//!   templates, a channel name back to the topics that feed it, and to the
//!   record to produce so that it lands there.
//! - [`hub`] — channel registry, bounded history, live fan-out, cursors and
//!   every rule about resuming; transports get a [`hub::Subscription`].
//! - [`transport`] — thin adapters from a subscription to a wire format:
//!   WebSocket, Server-Sent Events, short and long polling.
//! - [`http`] — the listener and its limits, request routing, the error
//!   type, bodies, query parameters, CORS, the bare event-stream
//!   connection, `POST /publish` and `/push/subscriptions`.
//! - [`push`] — Web Push: subscriptions kept in a compacted Kafka topic
//!   that every node follows, and a consumer group over the routed topics
//!   that pushes each record once per subscription of its channels. Beside
//!   the live path, never in it: `kafka`, `hub` and the transports do not
//!   import it; `http` serves its registration endpoints.
//! - [`app`] — the state every handler shares; [`node`] starts and stops
//!   one Herald ([`run`] is `herald serve`); [`dev`] is `herald dev`.
//! - [`auth`] — tokens (JWT), keys and JWKS, channel patterns: who may
//!   read what; the HTTP edge (`http::access`) asks it for every request.
//! - [`config`], [`metrics`], [`shutdown`], [`api_keys`] (the publish
//!   keys, compared in constant time), [`per_ip`] (counts per client
//!   address, for the listener's and replay's limits), [`tls`] (the TLS
//!   listener's certificate), [`stream_ends`] (what ends streams before
//!   their clients do: shutdown, a drain, a subject disconnected by the
//!   admin API) — below everything else.
//!
//! Imports point one way: `node → http → transport → hub → (router,
//! record)`, `kafka → hub`, and `app`, `config`, `metrics` below the
//! modules that read them. `tests/layout.rs` keeps it so.

#![forbid(unsafe_code)]

pub mod api_keys;
pub mod app;
pub mod auth;
pub mod config;
pub mod dev;
pub mod http;
pub mod hub;
pub mod kafka;
pub mod metrics;
pub mod node;
pub mod per_ip;
pub mod push;
pub mod record;
pub mod router;
pub mod shutdown;
pub mod stream_ends;
pub mod tls;
pub mod transport;

pub use node::{Herald, run};
