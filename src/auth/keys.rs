//! Verification keys: an HS256 secret, a PEM public key, or one JWK of a
//! key set. Each key carries the one algorithm it verifies, decided by the
//! key's type when it is loaded, never by a token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash, 256
/// bits. A shorter secret is refused at load; one token signed with it is
/// enough to guess it offline.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// RSA moduli shorter than this are refused (a PEM file at load; a JWK is
/// left out of the key set): 1024-bit RSA is within reach of factoring, and
/// NIST has not allowed it for signatures since 2013.
pub const MIN_RSA_BITS: usize = 2048;

/// RSA moduli longer than this are refused: verification cost grows with the
/// square of the size, and no IdP issues bigger keys, so a JWKS offering one
/// would only slow every verification with it.
pub const MAX_RSA_BITS: usize = 8192;

/// Larger RSA public exponents are refused, as the rsa crate refuses them at
/// each verification: a huge exponent makes every verification slow.
const MAX_RSA_EXPONENT: u64 = (1 << 33) - 1;

/// The algorithms Herald verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    Hs256,
    Rs256,
    Es256,
}

impl Alg {
    /// As written in a JWS header's `alg`.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }

    pub(super) fn jwt(self) -> Algorithm {
        match self {
            Alg::Hs256 => Algorithm::HS256,
            Alg::Rs256 => Algorithm::RS256,
            Alg::Es256 => Algorithm::ES256,
        }
    }
}

/// A key that verifies exactly one algorithm.
#[derive(Clone)]
pub(super) struct Key {
    pub alg: Alg,
    pub decoding: DecodingKey,
    /// The key's public numbers (RSA `n` then `e`, or the EC point; empty for
    /// a secret), to tell whether a refetched key set changed.
    pub material: Vec<u8>,
}

/// Why a key was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum KeyError {
    #[error(
        "the secret is {0} bytes; HS256 needs at least {MIN_HMAC_SECRET_BYTES} (RFC 7518 §3.2)"
    )]
    ShortSecret(usize),
    #[error("not a PEM file (no \"-----BEGIN ...-----\" line)")]
    NotPem,
    #[error(
        "\"{0}\" is a private key; give the public key only \
         (`openssl pkey -in KEY -pubout`)"
    )]
    PrivateKey(String),
    #[error("\"{0}\" is not a public key; expected \"PUBLIC KEY\" or \"RSA PUBLIC KEY\"")]
    NotPublicKey(String),
    #[error("an RSA key of {0} bits; Herald accepts {MIN_RSA_BITS} to {MAX_RSA_BITS}")]
    RsaSize(usize),
    #[error("curve {0}; Herald verifies ES256, on P-256 only")]
    Curve(String),
    #[error("key type {0:?}; Herald verifies RSA (RS256) and EC P-256 (ES256) keys")]
    KeyType(String),
    #[error("alg {0:?} for a {1} key; Herald verifies {2} with it")]
    KeyAlg(String, &'static str, &'static str),
    #[error("use {0:?}: not a signing key")]
    NotForSigning(String),
    #[error("invalid key: {0}")]
    Invalid(String),
}

impl Key {
    /// An HS256 key.
    pub fn hmac(secret: &[u8]) -> Result<Key, KeyError> {
        if secret.len() < MIN_HMAC_SECRET_BYTES {
            return Err(KeyError::ShortSecret(secret.len()));
        }
        let decoding =
            DecodingKey::from_secret(secret).map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(Key {
            alg: Alg::Hs256,
            decoding,
            material: Vec::new(),
        })
    }

    /// A PEM public key: RSA → RS256, EC P-256 → ES256.
    pub fn from_pem(pem: &[u8]) -> Result<Key, KeyError> {
        let text = std::str::from_utf8(pem).map_err(|_| KeyError::NotPem)?;
        let label = text
            .lines()
            .find_map(|line| {
                line.trim()
                    .strip_prefix("-----BEGIN ")
                    .and_then(|rest| rest.strip_suffix("-----"))
            })
            .ok_or(KeyError::NotPem)?;
        match label {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
            private if private.contains("PRIVATE KEY") => {
                return Err(KeyError::PrivateKey(private.to_owned()));
            }
            other => return Err(KeyError::NotPublicKey(other.to_owned())),
        }
        if let Ok(rsa) = DecodingKey::from_rsa_pem(pem) {
            let der = rsa
                .try_get_as_bytes()
                .map_err(|e| KeyError::Invalid(e.to_string()))?;
            let (n, e) = (provider()?.key_utils.rsa_pub_components_from_public_key)(der)
                .map_err(|e| KeyError::Invalid(format!("RSA public key: {e}")))?;
            return Key::rsa(&n, &e);
        }
        match DecodingKey::from_ec_pem(pem) {
            Ok(ec) => {
                let point = ec
                    .try_get_as_bytes()
                    .map_err(|e| KeyError::Invalid(e.to_string()))?;
                match point.len() {
                    65 => Key::p256(point.to_vec()),
                    97 => Err(KeyError::Curve("P-384".into())),
                    133 => Err(KeyError::Curve("P-521".into())),
                    n => Err(KeyError::Invalid(format!("EC public point of {n} bytes"))),
                }
            }
            Err(_) => Err(KeyError::Invalid(
                "neither an RSA nor an EC public key (Ed25519 and others are not supported)".into(),
            )),
        }
    }

    /// One JWK of a key set. `Ok` with the key and its `kid`; `Err` tells why
    /// it is left out (not an error for the set: IdPs publish encryption
    /// keys and other algorithms beside the signing keys).
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<(Option<String>, Key), KeyError> {
        /// The JWK members Herald reads (RFC 7517 §4, RFC 7518 §6); the rest
        /// are ignored.
        #[derive(Deserialize)]
        struct Jwk {
            kty: String,
            kid: Option<String>,
            #[serde(rename = "use")]
            public_key_use: Option<String>,
            alg: Option<String>,
            crv: Option<String>,
            n: Option<String>,
            e: Option<String>,
            x: Option<String>,
            y: Option<String>,
        }
        let jwk = Jwk::deserialize(jwk).map_err(|e| KeyError::Invalid(e.to_string()))?;
        if let Some(usage) = jwk.public_key_use.filter(|u| u != "sig") {
            return Err(KeyError::NotForSigning(usage));
        }
        let member = |value: Option<String>, name: &str| {
            let value = value.ok_or_else(|| KeyError::Invalid(format!("no \"{name}\"")))?;
            URL_SAFE_NO_PAD
                .decode(value.trim_end_matches('='))
                .map_err(|_| KeyError::Invalid(format!("\"{name}\" is not base64url")))
        };
        let key = match jwk.kty.as_str() {
            "RSA" => {
                check_jwk_alg(jwk.alg, "RSA", Alg::Rs256)?;
                Key::rsa(&member(jwk.n, "n")?, &member(jwk.e, "e")?)?
            }
            "EC" => {
                let curve = jwk.crv.unwrap_or_default();
                if curve != "P-256" {
                    return Err(KeyError::Curve(curve));
                }
                check_jwk_alg(jwk.alg, "EC P-256", Alg::Es256)?;
                let (x, y) = (member(jwk.x, "x")?, member(jwk.y, "y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(KeyError::Invalid("P-256 coordinates are 32 bytes".into()));
                }
                let mut point = Vec::with_capacity(65);
                point.push(0x04); // SEC1: uncompressed point
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Key::p256(point)?
            }
            other => return Err(KeyError::KeyType(other.to_owned())),
        };
        Ok((jwk.kid, key))
    }

    fn rsa(n: &[u8], e: &[u8]) -> Result<Key, KeyError> {
        let n = strip_leading_zeros(n);
        let e = strip_leading_zeros(e);
        let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(KeyError::RsaSize(bits));
        }
        // What the rsa crate checks when it verifies (rsa::PublicKey::new),
        // checked here so that a bad key is refused once, not at every token.
        if n.last().is_some_and(|b| b & 1 == 0) {
            return Err(KeyError::Invalid("RSA modulus is even".into()));
        }
        let exponent =
            (e.len() <= 8).then(|| e.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b)));
        if !exponent.is_some_and(|e| (3..=MAX_RSA_EXPONENT).contains(&e) && e & 1 == 1) {
            return Err(KeyError::Invalid(
                "RSA exponent is not odd, from 3 to 2^33 - 1".into(),
            ));
        }
        let mut material = n.to_vec();
        material.extend_from_slice(e);
        Ok(Key {
            alg: Alg::Rs256,
            decoding: DecodingKey::from_rsa_raw_components(n, e),
            material,
        })
    }

    fn p256(point: Vec<u8>) -> Result<Key, KeyError> {
        let decoding = DecodingKey::from_ec_der(&point);
        // Building a verifier parses the point, so one off the curve is
        // refused here instead of failing every token later.
        (provider()?.verifier_factory)(&Algorithm::ES256, &decoding)
            .map_err(|_| KeyError::Invalid("not a point on P-256".into()))?;
        Ok(Key {
            alg: Alg::Es256,
            decoding,
            material: point,
        })
    }
}

fn check_jwk_alg(alg: Option<String>, kind: &'static str, only: Alg) -> Result<(), KeyError> {
    match alg {
        Some(alg) if alg != only.name() => Err(KeyError::KeyAlg(alg, kind, only.name())),
        _ => Ok(()),
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// jsonwebtoken's crypto backend: there is exactly one (`rust_crypto`, set in
/// Cargo.toml), so this fails only in a build with a second one switched on.
fn provider() -> Result<&'static CryptoProvider, KeyError> {
    CryptoProvider::try_get_default().ok_or_else(|| {
        KeyError::Invalid("jsonwebtoken was built without exactly one crypto backend".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RSA_PUB: &str = include_str!("testdata/rsa.pub.pem");
    const RSA_KEY: &str = include_str!("testdata/rsa.key.pem");
    const EC_PUB: &str = include_str!("testdata/ec.pub.pem");
    const P384_PUB: &str = include_str!("testdata/p384.pub.pem");
    const RSA1024_PUB: &str = include_str!("testdata/rsa1024.pub.pem");

    #[test]
    fn pem_key_type_decides_the_algorithm() {
        assert_eq!(Key::from_pem(RSA_PUB.as_bytes()).unwrap().alg, Alg::Rs256);
        assert_eq!(Key::from_pem(EC_PUB.as_bytes()).unwrap().alg, Alg::Es256);
    }

    #[test]
    fn pem_refusals_say_why() {
        let err = |pem: &str| Key::from_pem(pem.as_bytes()).err().unwrap();
        assert_eq!(err(RSA_KEY), KeyError::PrivateKey("PRIVATE KEY".into()));
        assert_eq!(err(P384_PUB), KeyError::Curve("P-384".into()));
        assert_eq!(err(RSA1024_PUB), KeyError::RsaSize(1024));
        assert_eq!(err("hello"), KeyError::NotPem);
        assert!(matches!(
            err("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
            KeyError::Invalid(_)
        ));
        assert!(err(RSA_KEY).to_string().contains("-pubout"));
    }

    #[test]
    fn short_secret_refused() {
        assert_eq!(
            Key::hmac(b"secret").err().unwrap(),
            KeyError::ShortSecret(6)
        );
        assert_eq!(Key::hmac(&[7; 32]).unwrap().alg, Alg::Hs256);
    }

    #[test]
    fn jwk_kinds() {
        let ec = Key::from_pem(EC_PUB.as_bytes()).unwrap();
        let (x, y) = ec.material[1..].split_at(32);
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let ec_jwk = json!({"kty": "EC", "crv": "P-256", "kid": "e1", "x": b64(x), "y": b64(y)});
        let (kid, key) = Key::from_jwk(&ec_jwk).unwrap();
        assert_eq!(kid.as_deref(), Some("e1"));
        assert_eq!(key.alg, Alg::Es256);
        assert_eq!(key.material, ec.material);

        let mut off_curve = ec_jwk.clone();
        off_curve["y"] = json!(b64(&[1; 32]));
        assert!(matches!(
            Key::from_jwk(&off_curve),
            Err(KeyError::Invalid(_))
        ));

        let mut enc = ec_jwk.clone();
        enc["use"] = json!("enc");
        assert_eq!(
            Key::from_jwk(&enc).err().unwrap(),
            KeyError::NotForSigning("enc".into())
        );
        let mut es384 = ec_jwk.clone();
        es384["alg"] = json!("ES384");
        assert!(matches!(Key::from_jwk(&es384), Err(KeyError::KeyAlg(..))));

        let rsa = Key::from_pem(RSA_PUB.as_bytes()).unwrap();
        let (n, e) = rsa.material.split_at(256);
        let rsa_jwk = json!({"kty": "RSA", "alg": "RS256", "n": b64(n), "e": b64(e)});
        let (kid, key) = Key::from_jwk(&rsa_jwk).unwrap();
        assert_eq!(kid, None);
        assert_eq!(key.alg, Alg::Rs256);
        let mut even_e = rsa_jwk.clone();
        even_e["e"] = json!(b64(&[1, 0, 0]));
        assert!(matches!(Key::from_jwk(&even_e), Err(KeyError::Invalid(_))));
        let mut ps256 = rsa_jwk.clone();
        ps256["alg"] = json!("PS256");
        assert!(matches!(Key::from_jwk(&ps256), Err(KeyError::KeyAlg(..))));

        assert_eq!(
            Key::from_jwk(&json!({"kty": "oct", "k": "c2VjcmV0"}))
                .err()
                .unwrap(),
            KeyError::KeyType("oct".into())
        );
        assert_eq!(
            Key::from_jwk(&json!({"kty": "OKP", "crv": "Ed25519", "x": "AA"}))
                .err()
                .unwrap(),
            KeyError::KeyType("OKP".into())
        );
    }
}
