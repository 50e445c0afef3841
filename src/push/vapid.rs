//! The VAPID `Authorization` header (RFC 8292): `vapid t=<JWT>, k=<public
//! key>`, the JWT signed ES256 with the node's key.
//!
//! Signed here rather than by the encryption crate: `web-push-native` and
//! `web-push` both build `aud` from the endpoint's scheme and host and drop
//! a non-default port, while RFC 8292 §2 wants the origin of the push
//! resource — port included — and push services compare it. One JWT per
//! push service origin, reused until an hour before it expires.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use parking_lot::Mutex;
use serde::Serialize;

use super::endpoint::audience;
use super::keys::VapidKeys;

/// A JWT's lifetime: RFC 8292 allows at most 24 hours.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Signed again when less than this is left.
const RENEW_BEFORE: Duration = Duration::from_secs(3600);

#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    exp: u64,
    sub: &'a str,
}

/// Makes (and caches) VAPID headers.
pub struct Vapid {
    key: EncodingKey,
    public_key: String,
    subject: String,
    cache: Mutex<HashMap<String, (String, Instant)>>,
}

impl Vapid {
    pub fn new(keys: &VapidKeys, subject: &str) -> Vapid {
        let der = keys
            .secret()
            .to_pkcs8_der()
            .expect("a P-256 key encodes as PKCS#8");
        Vapid {
            key: EncodingKey::from_ec_der(der.as_bytes()),
            public_key: keys.public_key_base64().to_owned(),
            subject: subject.to_owned(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The header value for a push service at `origin`
    /// (`scheme://host:port`, as [`super::endpoint::Endpoint`] has it).
    pub fn header(&self, origin: &str) -> String {
        let now = Instant::now();
        if let Some((header, expires)) = self.cache.lock().get(origin)
            && *expires > now + RENEW_BEFORE
        {
            return header.clone();
        }
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(LIFETIME)
            .as_secs();
        let claims = Claims {
            aud: audience(origin),
            exp,
            sub: &self.subject,
        };
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key)
            .expect("signing with a valid P-256 key cannot fail");
        let header = format!("vapid t={jwt}, k={}", self.public_key);
        self.cache
            .lock()
            .insert(origin.to_owned(), (header.clone(), now + LIFETIME));
        header
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_simple::prelude::*;

    #[test]
    fn aud_keeps_the_port_and_verifies_with_another_library() {
        let keys = VapidKeys::generate().unwrap();
        let vapid = Vapid::new(&keys, "mailto:ops@example.com");
        let header = vapid.header("http://127.0.0.1:9999");
        let (t, k) = header
            .strip_prefix("vapid t=")
            .and_then(|rest| rest.split_once(", k="))
            .unwrap();
        assert_eq!(k, keys.public_key_base64());
        let point =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, k).unwrap();
        let verifier = ES256PublicKey::from_bytes(&point).unwrap();
        let claims = verifier.verify_token::<NoCustomClaims>(t, None).unwrap();
        assert_eq!(
            claims.audiences.unwrap().into_set(),
            std::collections::HashSet::from(["http://127.0.0.1:9999".to_string()])
        );
        assert_eq!(claims.subject.as_deref(), Some("mailto:ops@example.com"));
        // Cached per origin; a default port is left out of aud.
        assert_eq!(vapid.header("http://127.0.0.1:9999"), header);
        let other = vapid.header("https://fcm.googleapis.com:443");
        let t = other
            .strip_prefix("vapid t=")
            .unwrap()
            .split_once(", k=")
            .unwrap()
            .0;
        let claims = verifier.verify_token::<NoCustomClaims>(t, None).unwrap();
        assert_eq!(
            claims.audiences.unwrap().into_set(),
            std::collections::HashSet::from(["https://fcm.googleapis.com".to_string()])
        );
    }
}
