//! Who may read what: JWT verification and channel authorization.
//!
//! A reader proves what it may read with a JWT (HS256, RS256 or ES256)
//! whose `channels` claim lists channel patterns ([`Patterns`]); channels in
//! `auth.public_channels` need no token, and without an `[auth]` section
//! ([`Auth::open`]) every channel is public.
//!
//! - [`config`] — the `[auth]` section and its checks;
//! - `keys` — a key and the one algorithm it verifies, from a secret, a
//!   PEM file or a JWK;
//! - `jwks` — keys fetched from a JWKS URL, cached by `kid`, refreshed;
//! - `token` — verifying one token into a [`Grant`];
//! - [`patterns`] — the channel pattern syntax.
//!
//! [`Auth`] ties them together: built once at start from the config,
//! [`Auth::verify`] turns a token into a [`Grant`], and
//! [`Auth::authorize`] decides each subscription. This module uses nothing
//! else of Herald's; config and the transports use it.
//!
//! Claims: `exp` (required unless `auth.require_exp = false`), `nbf`
//! (honoured when present), `sub` (optional, kept for logs), `iss` and `aud`
//! (checked when configured), and `channels`, an array of patterns. A token
//! without `channels` is valid but reads only public channels.

pub mod config;
mod jwks;
mod keys;
pub mod patterns;
mod token;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

pub use config::{AuthConfig, AuthConfigError};
pub use keys::MIN_HMAC_SECRET_BYTES;
pub use patterns::{PatternError, Patterns};
pub use token::TokenError;

use jwks::Jwks;
use keys::Key;
use token::{Header, Rules};

/// Authorization as configured. Cheap to clone (an `Arc` inside); built once
/// at start.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    /// `auth.public_channels`.
    public: Patterns,
    /// The same as written, for the start-up summary.
    public_names: Vec<String>,
    /// `None` without `[auth]`: every channel public, no token checked.
    verifier: Option<Verifier>,
}

struct Verifier {
    keys: Keys,
    rules: Rules,
    /// The config key the keys came from, for the start-up summary.
    source: &'static str,
}

enum Keys {
    /// A secret or a PEM key: one key, whatever `kid` a token names.
    Static(Arc<Key>),
    Jwks(Jwks),
}

impl Auth {
    /// No `[auth]` section: every channel is public, and [`Auth::verify`]
    /// accepts any token as a grant of every channel that never expires
    /// (nothing is checked, as nothing needs a token).
    pub fn open() -> Auth {
        Auth {
            inner: Arc::new(Inner {
                public: Patterns::from_claim(&["*"]),
                public_names: vec!["*".into()],
                verifier: None,
            }),
        }
    }

    /// Authorization from an `[auth]` section. Reads the secret or PEM file
    /// now, so a missing, unreadable or invalid one is an error naming its
    /// key; for a JWKS, checks the URL and fetches nothing until
    /// [`Auth::start`].
    pub fn new(cfg: &AuthConfig) -> Result<Auth, AuthConfigError> {
        cfg.check_limits()?;
        let public = cfg.public_patterns()?;
        let (keys, source) = match cfg.key_source()? {
            config::KeySource::Secret(secret, key) => (
                Keys::Static(Arc::new(
                    Key::hmac(&secret).map_err(|e| AuthConfigError::new(key, e.to_string()))?,
                )),
                key,
            ),
            config::KeySource::PemFile(path) => {
                let key = "auth.public_key_file";
                let pem = std::fs::read(path).map_err(|e| {
                    AuthConfigError::new(key, format!("cannot read {}: {e}", path.display()))
                })?;
                let pem = Key::from_pem(&pem)
                    .map_err(|e| AuthConfigError::new(key, format!("{}: {e}", path.display())))?;
                (Keys::Static(Arc::new(pem)), key)
            }
            config::KeySource::Jwks(url) => (Keys::Jwks(Jwks::new(url, cfg)?), "auth.jwks_url"),
        };
        Ok(Auth {
            inner: Arc::new(Inner {
                public,
                public_names: cfg.public_channels.clone(),
                verifier: Some(Verifier {
                    keys,
                    rules: Rules::new(cfg),
                    source,
                }),
            }),
        })
    }

    /// What `herald check` runs: every check [`Auth::new`] makes, files read
    /// included, keeping nothing.
    pub fn check_config(cfg: &AuthConfig) -> Result<(), AuthConfigError> {
        Auth::new(cfg).map(drop)
    }

    /// For a JWKS: spawns the first fetch and the periodic refresh, which
    /// stop at `shutdown`. Does nothing for other key sources, or when called
    /// again. Call from within the Tokio runtime.
    pub fn start(&self, shutdown: CancellationToken) {
        if let Some(Verifier {
            keys: Keys::Jwks(jwks),
            ..
        }) = &self.inner.verifier
        {
            jwks.start(shutdown);
        }
    }

    /// Whether tokens are checked at all (an `[auth]` section was given).
    pub fn is_enabled(&self) -> bool {
        self.inner.verifier.is_some()
    }

    /// Whether `channel` may be read without a token.
    pub fn is_public(&self, channel: &str) -> bool {
        self.inner.public.matches(channel)
    }

    /// Verifies a token (without its `Bearer ` prefix) into a grant. Async
    /// because, with a JWKS, a `kid` not in the cache may wait for a fetch
    /// (one per `jwks_min_refetch_interval`, shared by every verification
    /// that needs it). A token longer than `auth.max_token_bytes` is refused
    /// before anything else is done with it.
    pub async fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        let Some(verifier) = &self.inner.verifier else {
            return Ok(Grant {
                subject: None,
                channels: Arc::new(Patterns::from_claim(&["*"])),
                expires_at: None,
            });
        };
        let max = verifier.rules.max_token_bytes;
        if token.len() > max {
            return Err(TokenError::TooLong {
                len: token.len(),
                max,
            });
        }
        let header = Header::parse(token)?;
        let key = match &verifier.keys {
            Keys::Static(key) => key.clone(),
            Keys::Jwks(jwks) => jwks.key_for(header.kid.as_deref()).await?,
        };
        verifier.rules.verify(token, &header, &key)
    }

    /// Whether this reader may read `channel`: a public channel always;
    /// otherwise only with a grant that allows it and has not expired.
    pub fn authorize(&self, grant: Option<&Grant>, channel: &str) -> Result<(), Denied> {
        if self.is_public(channel) {
            return Ok(());
        }
        let Some(grant) = grant else {
            return Err(Denied::TokenRequired {
                channel: channel.to_owned(),
            });
        };
        if grant.is_expired(SystemTime::now()) {
            return Err(Denied::TokenExpired {
                channel: channel.to_owned(),
            });
        }
        if !grant.allows(channel) {
            return Err(Denied::Forbidden {
                channel: channel.to_owned(),
            });
        }
        Ok(())
    }
}

/// One line for the start-up log: whether tokens are checked, with which
/// keys, and what is public.
impl fmt::Display for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(verifier) = &self.inner.verifier else {
            return f.write_str("auth off (no [auth] section): every channel is public");
        };
        match &verifier.keys {
            Keys::Static(key) => {
                write!(f, "auth: {} tokens ({})", key.alg.name(), verifier.source)?
            }
            Keys::Jwks(jwks) => write!(f, "auth: RS256/ES256 tokens, keys from {}", jwks.url())?,
        }
        if self.inner.public_names.is_empty() {
            f.write_str("; no public channels")
        } else {
            write!(f, "; public: {}", self.inner.public_names.join(", "))
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Auth({self})")
    }
}

/// What a verified token allows. Cheap to clone: the patterns are shared.
#[derive(Debug, Clone)]
pub struct Grant {
    subject: Option<String>,
    channels: Arc<Patterns>,
    expires_at: Option<SystemTime>,
}

impl Grant {
    /// The token's `sub`, if it had one.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The token's `channels` claim.
    pub fn channels(&self) -> &Patterns {
        &self.channels
    }

    /// Whether the `channels` claim matches `channel` (expiry aside).
    pub fn allows(&self, channel: &str) -> bool {
        self.channels.matches(channel)
    }

    /// When the token stops being accepted: its `exp` plus `auth.leeway`,
    /// the moment [`Auth::verify`] starts refusing it, and so when a stream
    /// it opened must end. `None`: it never expires (no `exp`, with
    /// `auth.require_exp = false`, or no `[auth]`).
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// Time left before [`Grant::expires_at`] as seen from `now` (zero once
    /// past); `None` if it never expires. What a transport sleeps on.
    pub fn time_left(&self, now: SystemTime) -> Option<Duration> {
        self.expires_at
            .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
    }

    /// Whether the grant has expired at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| now > at)
    }
}

/// Why a reader may not read a channel. Each names the channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Not public, and no token was given: `invalid_token` (HTTP 401).
    #[error("channel {channel:?} needs a token")]
    TokenRequired { channel: String },
    /// The token has expired since it was verified: `token_expired` (401).
    #[error("the token for channel {channel:?} has expired")]
    TokenExpired { channel: String },
    /// The token's `channels` claim does not match: `forbidden_channel`
    /// (HTTP 403).
    #[error("the token does not allow channel {channel:?}")]
    Forbidden { channel: String },
}

impl Denied {
    /// The error code for clients.
    pub fn code(&self) -> &'static str {
        match self {
            Denied::TokenRequired { .. } => "invalid_token",
            Denied::TokenExpired { .. } => "token_expired",
            Denied::Forbidden { .. } => "forbidden_channel",
        }
    }

    /// The channel refused.
    pub fn channel(&self) -> &str {
        match self {
            Denied::TokenRequired { channel }
            | Denied::TokenExpired { channel }
            | Denied::Forbidden { channel } => channel,
        }
    }
}
