//! Connection limits. A connection passes two stages, each under a limit
//! of its own, so a client that sends nothing never holds a place that
//! streaming clients or health checks need:
//!
//! 1. **Waiting for its first request head**, from accept: a
//!    [`PendingPlace`] under `limits.max_pending_connections` for the node
//!    and `limits.max_pending_connections_per_ip` for one address, for at
//!    most `http.head_timeout`. A new connection over the node's limit
//!    pushes out the one that has waited longest (it gets `503
//!    too_many_pending_connections`), so connections that send nothing
//!    cannot keep out those that do; one over its address's limit is
//!    refused at once (`429 too_many_pending_connections_per_ip`).
//! 2. **Once its first head arrived**: a [`ConnectionPermit`] under
//!    `limits.max_connections` and `limits.max_connections_per_ip`, kept
//!    until the connection closes (an upgraded WebSocket keeps it after
//!    hyper has handed the socket over). Over a limit the request gets
//!    `503 too_many_connections` or `429 too_many_connections_per_ip` —
//!    unless it is a probe (`/healthz`, `/readyz`, `/metrics`), which is
//!    answered without a place, and its connection closed after it.
//!
//! [`ClientAddr`], in every request's extensions, carries the client's
//! address to the handlers (replay's per-address limit). Behind a proxy
//! in `http.trusted_proxies` it is the address the proxy forwarded, and
//! the limits above count that one (see [`forwarded`](super::forwarded)).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Request, StatusCode};
use tokio::sync::Notify;

use super::error::ApiError;
use crate::config::{Config, LimitsConfig};
use crate::per_ip::{PerIpLimit, PerIpPlace, Place, Places};

/// The node's connection limits, shared by the accept loop and the
/// connection tasks.
pub struct ConnectionLimits {
    /// Connections waiting for their first head, oldest first.
    pending: parking_lot::Mutex<PendingQueue>,
    max_pending: AtomicUsize,
    pending_per_ip: Arc<PerIpLimit>,
    /// One place per connection past its first head (probes over the
    /// limit aside).
    connections: Arc<Places>,
    per_ip: Arc<PerIpLimit>,
    /// The config whose `[limits]` are in force ([`ConnectionLimits::follow`]).
    applied: parking_lot::Mutex<Option<Arc<Config>>>,
}

/// The connections waiting for their first head, by arrival: the first
/// entry is the one pushed out when the queue is full. Each entry is how
/// to tell its connection.
#[derive(Default)]
struct PendingQueue {
    next_id: u64,
    waiting: BTreeMap<u64, Arc<Notify>>,
}

impl ConnectionLimits {
    pub fn new(config: &LimitsConfig) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            pending: parking_lot::Mutex::new(PendingQueue::default()),
            max_pending: AtomicUsize::new(config.max_pending_connections),
            pending_per_ip: PerIpLimit::new(config.max_pending_connections_per_ip),
            connections: Places::new(config.max_connections),
            per_ip: PerIpLimit::new(config.max_connections_per_ip),
            applied: parking_lot::Mutex::new(None),
        })
    }

    /// Takes `config`'s `[limits]` unless they are the ones in force. Each
    /// listener calls it at every accept with the config as of then, so a
    /// reload applies from the next connection of either listener.
    pub fn follow(&self, config: &Arc<Config>) {
        let mut applied = self.applied.lock();
        if applied.as_ref().is_some_and(|a| Arc::ptr_eq(a, config)) {
            return;
        }
        self.reconfigure(&config.limits);
        *applied = Some(config.clone());
    }

    /// Takes a reloaded `[limits]`: for connections from now on; those
    /// that hold a place keep it.
    fn reconfigure(&self, config: &LimitsConfig) {
        self.max_pending
            .store(config.max_pending_connections, Ordering::Relaxed);
        self.pending_per_ip
            .set_max(config.max_pending_connections_per_ip);
        self.connections.set_max(config.max_connections);
        self.per_ip.set_max(config.max_connections_per_ip);
    }

    fn max_pending(&self) -> usize {
        self.max_pending.load(Ordering::Relaxed)
    }

    /// A place for a new connection from `ip` until its first head
    /// arrives, or the refusal to write it (at once, without waiting).
    /// `None`: a connection from a trusted proxy, whose clients all share
    /// its address: no per-address place until the client is known (see
    /// [`PendingPlace::count_client`]). With the node's queue full, the
    /// connection that has waited longest is pushed out (see
    /// [`PendingPlace::pushed_out`]) to make room.
    pub fn await_head(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<PendingPlace, ApiError> {
        let per_ip = match ip {
            None => None,
            Some(ip) => Some(self.pending_place_of(ip)?),
        };
        let pushed_out = Arc::new(Notify::new());
        let mut queue = self.pending.lock();
        if queue.waiting.len() >= self.max_pending()
            && let Some((_, oldest)) = queue.waiting.pop_first()
        {
            // Stored if its task is not waiting right now: it sees it on
            // its next look.
            oldest.notify_one();
        }
        let id = queue.next_id;
        queue.next_id += 1;
        queue.waiting.insert(id, pushed_out.clone());
        Ok(PendingPlace {
            limits: self.clone(),
            id,
            pushed_out,
            per_ip,
        })
    }

    fn pending_place_of(&self, ip: IpAddr) -> Result<PerIpPlace, ApiError> {
        self.pending_per_ip.try_acquire(ip).ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_pending_connections_per_ip",
                format!(
                    "{ip} holds its limit of {} connections that have not sent a request yet (limits.max_pending_connections_per_ip)",
                    self.pending_per_ip.max()
                ),
            )
        })
    }

    /// The refusal for a connection pushed out of the queue.
    pub fn pushed_out_error(&self) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_pending_connections",
            format!(
                "{} newer connections arrived while this one had not sent its request (limits.max_pending_connections); retry",
                self.max_pending()
            ),
        )
    }

    /// A place for a connection from `ip` that has sent its first head,
    /// or the refusal to send it.
    pub fn admit(&self, ip: IpAddr) -> Result<ConnectionPermit, ApiError> {
        let Some(place) = self.connections.try_take() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!(
                    "this Herald node holds its limit of {} connections; retry later or elsewhere",
                    self.connections.max()
                ),
            ));
        };
        let Some(per_ip) = self.per_ip.try_acquire(ip) else {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections_per_ip",
                format!(
                    "{ip} holds its limit of {} connections to this node (limits.max_connections_per_ip)",
                    self.per_ip.max()
                ),
            ));
        };
        Ok(ConnectionPermit {
            _places: Arc::new((place, per_ip)),
        })
    }
}

/// A connection's place while it has not sent its first head; released
/// on drop.
pub struct PendingPlace {
    limits: Arc<ConnectionLimits>,
    id: u64,
    pushed_out: Arc<Notify>,
    /// `None` for a trusted proxy's connection until its PROXY header
    /// named the client, and for good without one.
    per_ip: Option<PerIpPlace>,
}

impl PendingPlace {
    /// Resolves once a newer connection has taken this one's place: the
    /// connection is to be closed with
    /// [`ConnectionLimits::pushed_out_error`].
    pub async fn pushed_out(&self) {
        self.pushed_out.notified().await;
    }
}

impl PendingPlace {
    /// Counts the connection under `ip`'s pending limit from now on: the
    /// client a trusted proxy's PROXY header named. Over the limit, the
    /// refusal to write.
    pub fn count_client(&mut self, ip: IpAddr) -> Result<(), ApiError> {
        self.per_ip = Some(self.limits.pending_place_of(ip)?);
        Ok(())
    }
}

impl Drop for PendingPlace {
    fn drop(&mut self) {
        self.limits.pending.lock().waiting.remove(&self.id);
    }
}

/// A connection's place under `limits.max_connections` (and its address's
/// under `limits.max_connections_per_ip`), in each of its requests'
/// extensions; released when the last clone drops.
#[derive(Clone)]
pub struct ConnectionPermit {
    _places: Arc<(Place, PerIpPlace)>,
}

/// The client's address, in every request's extensions (set by the
/// listener), for limits per client address further down.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// The address of the client that sent `req`. Every request Herald
    /// serves comes through the listener, which sets it; one built
    /// elsewhere counts as `0.0.0.0`.
    pub fn of<B>(req: &Request<B>) -> IpAddr {
        req.extensions()
            .get::<ClientAddr>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_pending: usize, per_ip: usize) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(&LimitsConfig {
            max_pending_connections: max_pending,
            max_pending_connections_per_ip: per_ip,
            ..LimitsConfig::default()
        })
    }

    #[tokio::test]
    async fn a_full_queue_pushes_out_the_oldest_waiting_connection() {
        let limits = limits(2, 0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let first = limits.await_head(Some(ip)).unwrap();
        let second = limits.await_head(Some(ip)).unwrap();
        let third = limits.await_head(Some(ip)).unwrap();
        // The first was told; the others were not.
        tokio::time::timeout(std::time::Duration::from_secs(1), first.pushed_out())
            .await
            .expect("the oldest is pushed out");
        assert!(
            futures_util::FutureExt::now_or_never(second.pushed_out()).is_none()
                && futures_util::FutureExt::now_or_never(third.pushed_out()).is_none()
        );
        // A connection that leaves the queue frees its place for the next.
        drop(second);
        let _fourth = limits.await_head(Some(ip)).unwrap();
        assert!(futures_util::FutureExt::now_or_never(third.pushed_out()).is_none());
    }

    #[test]
    fn one_address_over_its_pending_limit_is_refused_at_once() {
        let limits = limits(100, 1);
        let _held = limits.await_head("10.0.0.1".parse().ok()).unwrap();
        let e = limits.await_head("10.0.0.1".parse().ok()).err().unwrap();
        assert_eq!(
            (e.status, e.code),
            (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_pending_connections_per_ip"
            )
        );
        assert!(limits.await_head("10.0.0.2".parse().ok()).is_ok());
        // A trusted proxy's connections wait uncounted until a PROXY
        // header names their client, then count under it.
        let mut proxied = limits.await_head(None).unwrap();
        assert!(limits.await_head(None).is_ok());
        let e = proxied
            .count_client("10.0.0.1".parse().unwrap())
            .unwrap_err();
        assert_eq!(e.code, "too_many_pending_connections_per_ip");
        proxied.count_client("10.0.0.3".parse().unwrap()).unwrap();
    }
}
