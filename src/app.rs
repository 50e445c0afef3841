//! The shared state of one running Herald, [`App`]: what every HTTP
//! handler and transport reads (config, hub, metrics, the shutdown signal,
//! the connection tasks). It sits below `http` and `transport`, which take
//! it by reference; [`node`](crate::node) builds it and starts the rest.
//!
//! The config and the token rules can be replaced while Herald runs
//! ([`App::reload`], on SIGHUP): readers take a snapshot per connection or
//! request, so what is open keeps the settings it started with.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api_keys::ApiKeys;
use crate::auth::Auth;
use crate::config::Config;
use crate::hub::Hub;
use crate::kafka::producer::Publisher;
use crate::metrics::{Metrics, Watermarks};
use crate::per_ip::Places;
use crate::push::Push;
use crate::router::Router;
use crate::stream_ends::StreamEnds;

/// Shared state of one running Herald.
pub struct App {
    /// The config as last loaded: at start, or by a reload.
    config: ArcSwap<Config>,
    /// Token verification and channel rules (`[auth]`), remade by a
    /// reload.
    auth: ArcSwap<Auth>,
    /// Stops the background work of the current `auth` (a JWKS refresh
    /// loop); a child of `shutdown`, replaced with the `auth` it serves.
    auth_stop: parking_lot::Mutex<CancellationToken>,
    /// The TLS listener's certificate and ALPN (`[tls]`), read again by
    /// each reload; every handshake takes the one in force.
    tls: ArcSwapOption<tokio_rustls::rustls::ServerConfig>,
    /// Reads the config again as at start (`herald serve`'s file and
    /// command-line overrides), for `POST /admin/reload`; `None` for a
    /// node started from a config value (a library user, `herald dev`).
    source: parking_lot::Mutex<Option<ConfigSource>>,
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
    /// finds no place gets `503 too_many_long_polls`.
    pub long_polls: Arc<Places>,
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

/// How to read the config again: the file and overrides `herald serve`
/// started from, validated.
pub type ConfigSource = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Why a reload was refused; the running config stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{} changed, which takes a restart; nothing was reloaded (put it back, or restart the node)",
        .0.join(", ")
    )]
    NeedsRestart(Vec<&'static str>),
    #[error("this node was started from a config value, not a file: there is nothing to re-read")]
    NoSource,
}

impl App {
    /// Builds the state around the config it starts with.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        auth: Auth,
        hub: Hub,
        metrics: Arc<Metrics>,
        watermarks: Arc<Watermarks>,
        shutdown: CancellationToken,
        dev_info: Option<serde_json::Value>,
        publishing: Option<Publishing>,
        push: Option<Arc<Push>>,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
        admin_keys: Option<ApiKeys>,
    ) -> App {
        let auth_stop = shutdown.child_token();
        auth.start(auth_stop.clone());
        App {
            tls: ArcSwapOption::new(tls),
            ends: StreamEnds::new(&shutdown),
            source: parking_lot::Mutex::new(None),
            admin_keys,
            long_polls: Places::new(config.limits.max_long_polls),
            config: ArcSwap::from_pointee(config),
            auth: ArcSwap::from_pointee(auth),
            auth_stop: parking_lot::Mutex::new(auth_stop),
            hub,
            metrics,
            watermarks,
            shutdown,
            dev_info,
            tasks: TaskTracker::new(),
            publishing,
            push,
        }
    }

    /// The config as of now: a snapshot, taken once per request or
    /// connection (a reload does not change what it holds).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The token rules as of now.
    pub fn auth(&self) -> Arc<Auth> {
        self.auth.load_full()
    }

    /// The TLS server config as of now (`None` without `[tls]`).
    pub fn tls(&self) -> Option<Arc<tokio_rustls::rustls::ServerConfig>> {
        self.tls.load_full()
    }

    /// Replaces what can change while running — `[[route]]`, `[auth]`,
    /// `[limits]`, `[sse]`, `[ws]`, `[poll]`, `http.allowed_origins`, the
    /// TLS certificate files —
    /// with `new`'s, for the connections, requests and records from now
    /// on; open streams keep going. `new` must be validated
    /// ([`Config::validate`]). Refused whole, changing nothing, when
    /// another key changed ([`Config::restart_keys_changed`]) or the new
    /// routes or token keys cannot be built; the message says which.
    pub fn reload(&self, new: Config) -> Result<(), ReloadError> {
        let result = self.apply(new);
        match &result {
            Ok(()) => tracing::info!(
                "config reloaded: routes, [auth], [limits], [sse], [ws], [poll], \
                 http.allowed_origins and the TLS certificate apply to new connections; \
                 open ones keep going"
            ),
            Err(e) => tracing::error!("config reload refused, the running config stays: {e}"),
        }
        result
    }

    /// Where [`App::reload_from_source`] reads the config from.
    pub fn set_config_source(&self, source: ConfigSource) {
        *self.source.lock() = Some(source);
    }

    /// Reads the config again from where the node started from and
    /// reloads it (SIGHUP, `POST /admin/reload`); logged either way.
    pub fn reload_from_source(&self) -> Result<(), ReloadError> {
        let source = self.source.lock().clone();
        let loaded = match source {
            None => Err(ReloadError::NoSource),
            Some(load) => load().map_err(ReloadError::Invalid),
        };
        match loaded {
            Ok(config) => self.reload(config),
            Err(e) => {
                tracing::error!("config reload refused, the running config stays: {e}");
                Err(e)
            }
        }
    }

    fn apply(&self, new: Config) -> Result<(), ReloadError> {
        let changed = self.config().restart_keys_changed(&new);
        if !changed.is_empty() {
            return Err(ReloadError::NeedsRestart(changed));
        }
        let router = Router::new(&new.routes)
            .map_err(|e| ReloadError::Invalid(format!("invalid config: {e}")))?;
        let auth = match &new.auth {
            Some(c) => Auth::new(c).map_err(|e| ReloadError::Invalid(e.to_string()))?,
            None => Auth::open(),
        };
        // The certificate files again: a renewed certificate is picked up.
        let tls = match &new.tls {
            Some(t) => Some(
                crate::tls::server_config(t).map_err(|e| ReloadError::Invalid(e.to_string()))?,
            ),
            None => None,
        };
        let auth_stop = self.shutdown.child_token();
        auth.start(auth_stop.clone());
        self.hub
            .reconfigure(Arc::new(router), new.limits.max_channels_per_connection);
        self.auth.store(Arc::new(auth));
        std::mem::replace(&mut *self.auth_stop.lock(), auth_stop).cancel();
        self.long_polls.set_max(new.limits.max_long_polls);
        self.tls.store(tls);
        // Last: the listener sees the new `[limits]` at its next accept.
        self.config.store(Arc::new(new));
        Ok(())
    }
}
