//! One token's verification: header, algorithm check against the key,
//! signature and claims (by jsonwebtoken), and the [`Grant`] it yields.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;
use serde::Deserialize;

use super::Grant;
use super::config::AuthConfig;
use super::keys::{Alg, Key};
use super::patterns::Patterns;

/// Header values and other text taken from a token are cut to this many
/// bytes in error messages: the messages go back to clients and into logs,
/// and a token is up to `max_token_bytes` of attacker-chosen text.
const MAX_QUOTED_BYTES: usize = 64;

/// Why a token was refused. The messages say what was wrong; none includes
/// the token (a replayable credential) or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is {len} bytes, more than the {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token is signed with {found:?}; this key verifies {expected} only")]
    WrongAlgorithm {
        found: String,
        expected: &'static str,
    },
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token issuer (iss) is not the one configured")]
    WrongIssuer,
    #[error("token audience (aud) does not include the one configured")]
    WrongAudience,
    #[error("token has no {0:?} claim")]
    MissingClaim(&'static str),
    /// The `kid` is not in the key set (`None`: the token names no `kid` and
    /// the set has several keys to choose from).
    #[error("{}", match .0 {
        Some(kid) => format!("no key with kid {kid:?}"),
        None => "token has no kid, and the key set has more than one key".to_owned(),
    })]
    UnknownKey(Option<String>),
    /// Server side: no key to check against could be had (the JWKS was never
    /// fetched, or holds no usable key).
    #[error("verification keys unavailable: {0}")]
    KeysUnavailable(String),
}

impl TokenError {
    /// The error code for clients: `token_expired`, `auth_unavailable` (the
    /// server's fault, a 503) or `invalid_token`.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Expired => "token_expired",
            TokenError::KeysUnavailable(_) => "auth_unavailable",
            _ => "invalid_token",
        }
    }
}

/// The JWS header members Herald reads.
pub(super) struct Header {
    pub alg: String,
    pub kid: Option<String>,
}

impl Header {
    /// Decodes the first part of a compact JWS. The header is read here and
    /// not only by jsonwebtoken so that an `alg` it has no name for
    /// (`"none"`) is reported as the wrong algorithm, and so `kid` is known
    /// before a key is chosen.
    pub fn parse(token: &str) -> Result<Header, TokenError> {
        #[derive(Deserialize)]
        struct Raw {
            alg: String,
            kid: Option<String>,
        }
        let (head, _) = token
            .split_once('.')
            .ok_or_else(|| TokenError::Malformed("not a JWT (no '.')".into()))?;
        let json = URL_SAFE_NO_PAD
            .decode(head)
            .map_err(|_| TokenError::Malformed("header is not base64url".into()))?;
        let raw: Raw = serde_json::from_slice(&json)
            .map_err(|e| TokenError::Malformed(clip(&format!("header: {e}"), 200)))?;
        Ok(Header {
            alg: raw.alg,
            kid: raw.kid,
        })
    }
}

/// The claims Herald keeps. `exp`, `nbf`, `iss` and `aud` are checked by
/// jsonwebtoken's [`Validation`]; `exp` is read here too for the grant's end.
#[derive(Deserialize)]
struct GrantClaims {
    sub: Option<String>,
    channels: Option<Vec<String>>,
    exp: Option<f64>,
}

/// The claim checks, built once from the config for each algorithm (a
/// jsonwebtoken `Validation` names the algorithms it accepts).
pub(super) struct Rules {
    hs256: Validation,
    rs256: Validation,
    es256: Validation,
    leeway: Duration,
    pub max_token_bytes: usize,
}

impl Rules {
    pub fn new(cfg: &AuthConfig) -> Rules {
        let leeway = Duration::from_secs(cfg.leeway.as_secs());
        let validation = |alg: Alg| {
            let mut v = Validation::new(alg.jwt());
            v.leeway = leeway.as_secs();
            v.validate_exp = true; // when present; `required_spec_claims` makes it required
            v.validate_nbf = true;
            let mut required = HashSet::new();
            if cfg.require_exp {
                required.insert("exp".to_owned());
            }
            // jsonwebtoken checks `iss` and `aud` only when present; when
            // configured they are required too.
            if let Some(issuer) = &cfg.issuer {
                v.set_issuer(&[issuer]);
                required.insert("iss".to_owned());
            }
            match &cfg.audience {
                Some(audience) => {
                    v.set_audience(&[audience]);
                    required.insert("aud".to_owned());
                }
                None => v.validate_aud = false,
            }
            v.required_spec_claims = required;
            v
        };
        Rules {
            hs256: validation(Alg::Hs256),
            rs256: validation(Alg::Rs256),
            es256: validation(Alg::Es256),
            leeway,
            max_token_bytes: cfg.max_token_bytes,
        }
    }

    fn validation(&self, alg: Alg) -> &Validation {
        match alg {
            Alg::Hs256 => &self.hs256,
            Alg::Rs256 => &self.rs256,
            Alg::Es256 => &self.es256,
        }
    }

    /// Verifies `token` (whose `header` was parsed) with `key`.
    pub fn verify(&self, token: &str, header: &Header, key: &Key) -> Result<Grant, TokenError> {
        // The key's algorithm is the only one accepted: this is what refuses
        // `alg: none` and an HS256 token "signed" with an RSA public key.
        if header.alg != key.alg.name() {
            return Err(TokenError::WrongAlgorithm {
                found: clip(&header.alg, MAX_QUOTED_BYTES),
                expected: key.alg.name(),
            });
        }
        let data =
            jsonwebtoken::decode::<GrantClaims>(token, &key.decoding, self.validation(key.alg))
                .map_err(|e| token_error(e.into_kind()))?;
        let claims = data.claims;
        let expires_at = claims
            .exp
            .and_then(|exp| Duration::try_from_secs_f64(exp).ok())
            .and_then(|exp| SystemTime::UNIX_EPOCH.checked_add(exp))
            .and_then(|exp| exp.checked_add(self.leeway));
        Ok(Grant {
            subject: claims.sub,
            channels: Arc::new(Patterns::from_claim(
                claims.channels.as_deref().unwrap_or_default(),
            )),
            expires_at,
        })
    }
}

fn token_error(kind: ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        // Rules require exp, iss and aud only.
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => TokenError::MissingClaim("exp"),
            "iss" => TokenError::MissingClaim("iss"),
            "aud" => TokenError::MissingClaim("aud"),
            other => TokenError::Malformed(clip(&format!("no {other:?} claim"), 200)),
        },
        ErrorKind::InvalidClaimFormat(claim) => {
            TokenError::Malformed(format!("claim {claim:?} has the wrong type"))
        }
        ErrorKind::InvalidToken => TokenError::Malformed(
            "not three dot-separated parts, or a header Herald does not support (crit, b64)".into(),
        ),
        ErrorKind::Base64(_) => TokenError::Malformed("a part is not base64url".into()),
        ErrorKind::Utf8(_) => TokenError::Malformed("a part is not UTF-8".into()),
        ErrorKind::Json(e) => TokenError::Malformed(clip(&format!("claims: {e}"), 200)),
        other => TokenError::Malformed(clip(&format!("{other:?}"), 200)),
    }
}

/// `text` cut to at most `max` bytes at a character boundary, marked `…`
/// when cut.
pub(super) fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(TokenError::Expired.code(), "token_expired");
        assert_eq!(
            TokenError::KeysUnavailable("x".into()).code(),
            "auth_unavailable"
        );
        for e in [
            TokenError::TooLong { len: 9, max: 8 },
            TokenError::Malformed("x".into()),
            TokenError::BadSignature,
            TokenError::WrongAlgorithm {
                found: "none".into(),
                expected: "RS256",
            },
            TokenError::NotYetValid,
            TokenError::WrongIssuer,
            TokenError::WrongAudience,
            TokenError::MissingClaim("exp"),
            TokenError::UnknownKey(None),
        ] {
            assert_eq!(e.code(), "invalid_token", "{e}");
        }
    }

    #[test]
    fn header_parse() {
        let enc = |json: &str| URL_SAFE_NO_PAD.encode(json);
        let h = Header::parse(&format!("{}.e30.", enc(r#"{"alg":"none"}"#))).unwrap();
        assert_eq!(h.alg, "none");
        assert_eq!(h.kid, None);
        let h = Header::parse(&format!("{}.x.y", enc(r#"{"alg":"RS256","kid":"k1"}"#))).unwrap();
        assert_eq!(h.kid.as_deref(), Some("k1"));
        for bad in ["", "abc", "!!!.x.y", &format!("{}.x.y", enc("[1]"))] {
            assert!(
                matches!(Header::parse(bad), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn clip_cuts_at_a_char_boundary() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "abc…");
        assert_eq!(clip("aé", 2), "a…");
    }
}
