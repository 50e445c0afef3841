//! The subscription table every node holds in memory: a copy of the
//! compacted subscriptions topic, rebuilt from it at start and kept up to
//! date by following it ([`super::registry`]). Nothing else stores a
//! subscription; the table is only ever changed by what the topic says
//! (and, ahead of it, by this node's own writes to it).

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::RwLock;
use prometheus::IntGauge;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::endpoint::{self, Endpoint};

/// A subscription's id: the first 16 bytes of SHA-256 of its endpoint, so
/// a browser that registers the same endpoint again replaces its entry
/// (the record key in the topic is its hex form).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SubscriptionId([u8; 16]);

impl SubscriptionId {
    pub fn of_endpoint(endpoint: &str) -> SubscriptionId {
        let digest = Sha256::digest(endpoint.as_bytes());
        let mut id = [0; 16];
        id.copy_from_slice(&digest[..16]);
        SubscriptionId(id)
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<SubscriptionId> {
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let mut id = [0; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(SubscriptionId(id))
    }
}

/// One registered browser subscription.
#[derive(Debug)]
pub struct Subscription {
    pub id: SubscriptionId,
    pub endpoint: Endpoint,
    /// The browser's ECDH public key (`keys.p256dh`).
    pub p256dh: p256::PublicKey,
    /// The browser's authentication secret (`keys.auth`).
    pub auth: [u8; 16],
    pub channels: Box<[Box<str>]>,
}

/// A subscription as the topic stores it (JSON, the record's value).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoredSubscription {
    pub endpoint: String,
    pub keys: Keys,
    pub channels: Vec<String>,
    /// When it was registered, ms since the epoch.
    pub registered_ms: u64,
}

/// `keys` of a browser's `PushSubscription.toJSON()`, base64url.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Keys {
    pub p256dh: String,
    pub auth: String,
}

/// Why a subscription's keys are refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeysError {
    #[error("keys.p256dh is not a base64url uncompressed P-256 point (65 bytes)")]
    P256dh,
    #[error("keys.auth is not a base64url 16-byte secret")]
    Auth,
}

impl Keys {
    /// The decoded keys. Browsers send unpadded base64url; padding and
    /// the standard alphabet are accepted too.
    pub fn decode(&self) -> Result<(p256::PublicKey, [u8; 16]), KeysError> {
        let point = decode_b64(&self.p256dh).ok_or(KeysError::P256dh)?;
        if point.len() != 65 || point[0] != 4 {
            return Err(KeysError::P256dh);
        }
        let key = p256::PublicKey::from_sec1_bytes(&point).map_err(|_| KeysError::P256dh)?;
        let auth = decode_b64(&self.auth).ok_or(KeysError::Auth)?;
        let auth: [u8; 16] = auth.try_into().map_err(|_| KeysError::Auth)?;
        Ok((key, auth))
    }
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=').replace('+', "-").replace('/', "_");
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// Why a registration does not fit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Full {
    #[error(
        "channel {channel:?} has {limit} push subscriptions (push.max_subscriptions_per_channel)"
    )]
    Channel { channel: String, limit: usize },
    #[error("this deployment holds {limit} push subscriptions (push.max_subscriptions)")]
    Total { limit: usize },
}

#[derive(Default)]
struct Tables {
    by_id: HashMap<SubscriptionId, Arc<Subscription>>,
    by_channel: HashMap<Box<str>, HashMap<SubscriptionId, Arc<Subscription>>>,
}

/// The table: by id, and by channel for sending.
pub struct Store {
    tables: RwLock<Tables>,
    gauge: IntGauge,
}

impl Store {
    pub fn new(gauge: IntGauge) -> Store {
        Store {
            tables: RwLock::new(Tables::default()),
            gauge,
        }
    }

    /// Applies one record of the subscriptions topic: a value replaces
    /// the entry, a tombstone (`None`) removes it. A record that is not a
    /// valid subscription (written by something else) is skipped, with the
    /// reason.
    pub fn apply(
        &self,
        key: &str,
        value: Option<&[u8]>,
        allowed: &[String],
        allow_http: bool,
    ) -> Result<(), String> {
        let id = SubscriptionId::from_hex(key)
            .ok_or_else(|| format!("key {key:?} is not a subscription id"))?;
        let Some(value) = value else {
            self.remove(id);
            return Ok(());
        };
        let stored: StoredSubscription =
            serde_json::from_slice(value).map_err(|e| format!("not a stored subscription: {e}"))?;
        if SubscriptionId::of_endpoint(&stored.endpoint) != id {
            return Err("the key is not the id of the endpoint".into());
        }
        // Checked again: the allow-list may have shrunk since it was
        // registered, and the topic may hold what another tool wrote.
        let endpoint =
            endpoint::check(&stored.endpoint, allowed, allow_http).map_err(|e| e.to_string())?;
        let (p256dh, auth) = stored.keys.decode().map_err(|e| e.to_string())?;
        self.insert(Subscription {
            id,
            endpoint,
            p256dh,
            auth,
            channels: stored
                .channels
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
        });
        Ok(())
    }

    pub fn insert(&self, subscription: Subscription) {
        let subscription = Arc::new(subscription);
        let mut tables = self.tables.write();
        let tables = &mut *tables;
        if let Some(old) = tables.by_id.insert(subscription.id, subscription.clone()) {
            unlink(&mut tables.by_channel, &old);
        }
        for channel in subscription.channels.iter() {
            tables
                .by_channel
                .entry(channel.clone())
                .or_default()
                .insert(subscription.id, subscription.clone());
        }
        self.gauge.set(tables.by_id.len() as i64);
    }

    pub fn remove(&self, id: SubscriptionId) {
        let mut tables = self.tables.write();
        let tables = &mut *tables;
        if let Some(old) = tables.by_id.remove(&id) {
            unlink(&mut tables.by_channel, &old);
        }
        self.gauge.set(tables.by_id.len() as i64);
    }

    pub fn len(&self) -> usize {
        self.tables.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: SubscriptionId) -> Option<Arc<Subscription>> {
        self.tables.read().by_id.get(&id).cloned()
    }

    /// Whether a subscription `id` for `channels` fits the limits (one that
    /// replaces its own entry takes no new room).
    pub fn check_room(
        &self,
        id: SubscriptionId,
        channels: &[String],
        per_channel: usize,
        total: usize,
    ) -> Result<(), Full> {
        let tables = self.tables.read();
        if !tables.by_id.contains_key(&id) && tables.by_id.len() >= total {
            return Err(Full::Total { limit: total });
        }
        for channel in channels {
            if let Some(subs) = tables.by_channel.get(channel.as_str())
                && subs.len() >= per_channel
                && !subs.contains_key(&id)
            {
                return Err(Full::Channel {
                    channel: channel.clone(),
                    limit: per_channel,
                });
            }
        }
        Ok(())
    }

    /// Every subscription to any of `channels`, each once, with the first
    /// of `channels` it is subscribed to (the channel its push names).
    pub fn targets<'c>(&self, channels: &'c [String]) -> Vec<(Arc<Subscription>, &'c str)> {
        let tables = self.tables.read();
        let mut out: Vec<(Arc<Subscription>, &str)> = Vec::new();
        for (i, channel) in channels.iter().enumerate() {
            let Some(subs) = tables.by_channel.get(channel.as_str()) else {
                continue;
            };
            for sub in subs.values() {
                // Subscribed to an earlier channel of the record: already in.
                let earlier = channels[..i]
                    .iter()
                    .any(|c| sub.channels.iter().any(|s| **s == **c));
                if !earlier {
                    out.push((sub.clone(), channel));
                }
            }
        }
        out
    }
}

fn unlink(
    by_channel: &mut HashMap<Box<str>, HashMap<SubscriptionId, Arc<Subscription>>>,
    old: &Subscription,
) {
    for channel in old.channels.iter() {
        if let Some(subs) = by_channel.get_mut(channel) {
            subs.remove(&old.id);
            if subs.is_empty() {
                by_channel.remove(channel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::elliptic_curve::sec1::ToEncodedPoint;

    fn stored(endpoint: &str, channels: &[&str]) -> Vec<u8> {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let point = secret.public_key().to_encoded_point(false);
        serde_json::to_vec(&StoredSubscription {
            endpoint: endpoint.into(),
            keys: Keys {
                p256dh: URL_SAFE_NO_PAD.encode(point.as_bytes()),
                auth: URL_SAFE_NO_PAD.encode([7u8; 16]),
            },
            channels: channels.iter().map(|c| c.to_string()).collect(),
            registered_ms: 1,
        })
        .unwrap()
    }

    fn store() -> Store {
        Store::new(IntGauge::new("g", "g").unwrap())
    }

    const ALLOWED: &[&str] = &["push.example"];

    fn allowed() -> Vec<String> {
        ALLOWED.iter().map(|s| s.to_string()).collect()
    }

    fn key(endpoint: &str) -> String {
        SubscriptionId::of_endpoint(endpoint).to_hex()
    }

    #[test]
    fn replace_remove_and_targets() {
        let s = store();
        let a = "https://push.example/a";
        let b = "https://push.example/b";
        s.apply(&key(a), Some(&stored(a, &["x", "y"])), &allowed(), false)
            .unwrap();
        s.apply(&key(b), Some(&stored(b, &["y"])), &allowed(), false)
            .unwrap();
        let channels = vec!["x".to_string(), "y".to_string()];
        let mut t: Vec<_> = s
            .targets(&channels)
            .into_iter()
            .map(|(sub, c)| (sub.endpoint.uri.to_string(), c))
            .collect();
        t.sort();
        assert_eq!(t, vec![(a.to_string(), "x"), (b.to_string(), "y")]);
        // Re-registering replaces: a is now on z only.
        s.apply(&key(a), Some(&stored(a, &["z"])), &allowed(), false)
            .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.targets(&["x".to_string()]).len(), 0);
        s.apply(&key(b), None, &allowed(), false).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.targets(&channels).len(), 0);
        assert_eq!(s.gauge.get(), 1);
    }

    #[test]
    fn records_that_are_not_subscriptions_are_refused() {
        let s = store();
        let a = "https://push.example/a";
        assert!(
            s.apply("nothex", Some(&stored(a, &["x"])), &allowed(), false)
                .is_err()
        );
        assert!(
            s.apply(
                &key("https://push.example/other"),
                Some(&stored(a, &["x"])),
                &allowed(),
                false
            )
            .is_err()
        );
        let evil = "https://evil.example/a";
        assert!(
            s.apply(&key(evil), Some(&stored(evil, &["x"])), &allowed(), false)
                .is_err()
        );
        assert!(s.apply(&key(a), Some(b"{}"), &allowed(), false).is_err());
        assert!(s.is_empty());
    }

    #[test]
    fn room() {
        let s = store();
        let a = "https://push.example/a";
        s.apply(&key(a), Some(&stored(a, &["x"])), &allowed(), false)
            .unwrap();
        let b = SubscriptionId::of_endpoint("https://push.example/b");
        let x = vec!["x".to_string()];
        assert_eq!(
            s.check_room(b, &x, 1, 10),
            Err(Full::Channel {
                channel: "x".into(),
                limit: 1
            })
        );
        // Replacing its own entry always fits.
        assert_eq!(
            s.check_room(SubscriptionId::of_endpoint(a), &x, 1, 1),
            Ok(())
        );
        assert_eq!(
            s.check_room(b, &["w".to_string()], 1, 1),
            Err(Full::Total { limit: 1 })
        );
    }

    #[test]
    fn ids_round_trip() {
        let id = SubscriptionId::of_endpoint("https://push.example/a");
        assert_eq!(SubscriptionId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(SubscriptionId::from_hex("zz"), None);
    }
}
