//! Places under a per-client-address limit: the listener's
//! (`limits.max_connections_per_ip`, `limits.max_pending_connections_per_ip`)
//! and replay's (`replay.max_concurrent_per_ip`). One table counts what each
//! address holds; a [`PerIpPlace`] gives its place back when dropped.
//!
//! [`Places`] is the same without addresses: a node-wide count under a
//! maximum (`limits.max_connections`, `limits.max_long_polls`).
//!
//! Both maxima can change while places are held (a config reload): a
//! lower one refuses new places until enough are given back, and takes
//! none away.
//!
//! It sits below `http` and `kafka`, which both use it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What each client address holds of one thing, at most `max` of it.
pub struct PerIpLimit {
    /// 0: no limit (nothing is counted).
    max: AtomicUsize,
    counts: parking_lot::Mutex<HashMap<IpAddr, usize>>,
}

/// One place of one address under a [`PerIpLimit`]; released on drop.
pub struct PerIpPlace {
    /// `None` when the limit is off.
    table: Option<Arc<PerIpLimit>>,
    ip: IpAddr,
}

impl PerIpLimit {
    /// A table allowing `max` places per address; 0 turns the limit off.
    pub fn new(max: usize) -> Arc<PerIpLimit> {
        Arc::new(PerIpLimit {
            max: AtomicUsize::new(max),
            counts: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// The limit; 0 when it is off.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Changes the limit for places taken from now on. Places taken while
    /// the limit was off were not counted and stay uncounted.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// A place for `ip`, or `None` when it holds `max` already. An address
    /// that holds nothing has no entry, so the table is as big as the
    /// number of addresses holding something.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<PerIpPlace> {
        let max = self.max();
        if max == 0 {
            return Some(PerIpPlace { table: None, ip });
        }
        let mut counts = self.counts.lock();
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerIpPlace {
            table: Some(self.clone()),
            ip,
        })
    }
}

impl Drop for PerIpPlace {
    fn drop(&mut self) {
        let Some(table) = &self.table else { return };
        let mut counts = table.counts.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// A node-wide count of places, at most `max` at once.
pub struct Places {
    taken: AtomicUsize,
    max: AtomicUsize,
}

/// One place under [`Places`]; given back on drop.
pub struct Place {
    places: Arc<Places>,
}

impl Places {
    pub fn new(max: usize) -> Arc<Places> {
        Arc::new(Places {
            taken: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        })
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Changes the maximum for places taken from now on.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// A place, or `None` when `max` are taken.
    pub fn try_take(self: &Arc<Self>) -> Option<Place> {
        let max = self.max();
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Place {
            places: self.clone(),
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.places.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_maximum_refuses_new_places_until_enough_are_given_back() {
        let places = Places::new(3);
        let mut held: Vec<Place> = (0..3).map(|_| places.try_take().unwrap()).collect();
        assert!(places.try_take().is_none());
        places.set_max(1);
        held.truncate(1);
        // One is still held: the new maximum.
        assert!(places.try_take().is_none());
        places.set_max(2);
        let _again = places.try_take().expect("room under the raised maximum");
        assert!(places.try_take().is_none());
    }

    #[test]
    fn each_address_holds_at_most_max_and_gets_its_places_back() {
        let limit = PerIpLimit::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limit.try_acquire(a).unwrap();
        let _second = limit.try_acquire(a).unwrap();
        assert!(limit.try_acquire(a).is_none());
        assert!(
            limit.try_acquire(b).is_some(),
            "another address is not held back"
        );
        drop(first);
        assert!(limit.try_acquire(a).is_some());
    }

    #[test]
    fn zero_is_no_limit() {
        let limit = PerIpLimit::new(0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..100).map(|_| limit.try_acquire(a).unwrap()).collect();
        assert_eq!(held.len(), 100);
        assert!(limit.counts.lock().is_empty());
    }
}
