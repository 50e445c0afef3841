//! Connection limits: `limits.max_connections` for the node and
//! `limits.max_connections_per_ip` for one client address. A connection
//! admitted holds a [`ConnectionPermit`] for its whole life (an upgraded
//! WebSocket keeps it after hyper has handed the socket over); one over a
//! limit is refused with `503 too_many_connections` or `429
//! too_many_connections_per_ip`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::config::LimitsConfig;

/// The node's connection limits, shared by the accept loop.
pub struct ConnectionLimits {
    /// One permit per open connection.
    permits: Arc<Semaphore>,
    max_connections: usize,
    per_ip: Arc<PerIp>,
    /// 0: no per-address limit.
    max_per_ip: usize,
}

impl ConnectionLimits {
    pub fn new(config: &LimitsConfig) -> Self {
        ConnectionLimits {
            permits: Arc::new(Semaphore::new(config.max_connections)),
            max_connections: config.max_connections,
            per_ip: Arc::new(PerIp::default()),
            max_per_ip: config.max_connections_per_ip,
        }
    }

    /// A place for a new connection from `ip`, or the refusal to send it.
    pub fn admit(&self, ip: IpAddr) -> Result<ConnectionPermit, ApiError> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!(
                    "this Herald node holds its limit of {} connections; retry later or elsewhere",
                    self.max_connections
                ),
            ));
        };
        let per_ip = if self.max_per_ip == 0 {
            None
        } else if let Some(p) = self.per_ip.try_acquire(ip, self.max_per_ip) {
            Some(Arc::new(p))
        } else {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections_per_ip",
                format!(
                    "{ip} holds its limit of {} connections to this node (limits.max_connections_per_ip)",
                    self.max_per_ip
                ),
            ));
        };
        Ok(ConnectionPermit {
            _permit: Arc::new(permit),
            _per_ip: per_ip,
        })
    }
}

/// A connection's place under the limits, in each request's extensions;
/// released when the last clone drops.
#[derive(Clone)]
pub struct ConnectionPermit {
    _permit: Arc<OwnedSemaphorePermit>,
    _per_ip: Option<Arc<PerIpPermit>>,
}

/// Open connections per client address.
#[derive(Default)]
struct PerIp {
    counts: parking_lot::Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's count under its address; released on drop.
struct PerIpPermit {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn try_acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PerIpPermit> {
        let mut counts = self.counts.lock();
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerIpPermit {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for PerIpPermit {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}
