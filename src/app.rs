//! The shared state of one running Herald, [`App`]: what every HTTP
//! handler and transport reads (config, hub, metrics, the shutdown signal,
//! the connection tasks). It sits below `http` and `transport`, which take
//! it by reference; [`node`](crate::node) builds it and starts the rest.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api_keys::ApiKeys;
use crate::auth::Auth;
use crate::config::Config;
use crate::hub::Hub;
use crate::kafka::producer::Publisher;
use crate::metrics::{Metrics, Watermarks};
use crate::push::Push;
use crate::stream_ends::StreamEnds;

/// Shared state of one running Herald.
pub struct App {
    pub config: Config,
    /// Token verification and channel rules (`[auth]`).
    pub auth: Auth,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    /// The brokers' watermarks, written by the ingest, read for
    /// `herald_partition_lag`.
    pub watermarks: Arc<Watermarks>,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// What every long-lived stream selects on: shutdown, a drain, or its
    /// token's subject disconnected (the admin API).
    pub ends: Arc<StreamEnds>,
    /// The admin API's keys (`[admin]`); without them `/admin/…` is `404`.
    pub admin_keys: Option<ApiKeys>,
    /// Extra JSON served at `/dev/info` by `herald dev`.
    pub dev_info: Option<serde_json::Value>,
    /// Every connection task, plain HTTP and upgraded WebSocket alike:
    /// shutdown waits for them (under `http.shutdown_grace`).
    pub tasks: TaskTracker,
    /// Long polls waiting at once (`limits.max_long_polls`); a poll that
    /// finds no permit gets `503 too_many_long_polls`.
    pub long_polls: Arc<Semaphore>,
    /// `POST /publish`: present only when `[publish]` is configured.
    pub publishing: Option<Publishing>,
    /// Web Push: present only when `[push]` is configured.
    pub push: Option<Arc<Push>>,
}

/// What `POST /publish` needs: the node's producer and the keys that may
/// use it.
pub struct Publishing {
    pub publisher: Publisher,
    pub keys: ApiKeys,
}
