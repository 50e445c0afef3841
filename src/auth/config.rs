//! The `[auth]` section: where the verification keys come from, which
//! channels need no token, and the limits on tokens and on the key fetches.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::patterns::{PatternError, Patterns};

/// Leeway given to `exp` and `nbf` by default: enough for the clocks of an
/// IdP and a Herald node that NTP keeps within seconds of each other.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Above this a leeway is refused: it would keep accepting a token that
/// long after its `exp`, which defeats short-lived tokens.
pub const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// Default bound on a token's length. Real tokens with a few dozen channel
/// patterns are 1–2 KB; 8 KiB leaves room for long claim lists while keeping
/// the work done before a signature is checked small.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;

/// Above this `max_token_bytes` is refused: a token sits in a request line or
/// header, which the HTTP edge bounds far below this anyway.
pub const MAX_MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Default time for one JWKS fetch, connect to last body byte.
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// Default interval between background JWKS fetches: a key the IdP adds is
/// known within this long even before a token signed with it arrives.
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(300);

/// Default minimum time between two JWKS fetches started by tokens whose
/// `kid` is unknown: anyone can send such tokens, and each could otherwise
/// make Herald fetch the key set once.
pub const DEFAULT_JWKS_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// Below this `jwks_min_refetch_interval` is refused: a burst of tokens with
/// made-up `kid`s would turn into a burst of requests to the IdP.
pub const MIN_JWKS_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(1);

/// The `[auth]` section. Its presence turns authorization on: every channel
/// not in `public_channels` then needs a token whose `channels` claim
/// matches it. Exactly one key source is set: `hmac_secret` or
/// `hmac_secret_file` (HS256), `public_key_file` (RS256 or ES256), or
/// `jwks_url`.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 shared secret, at least 32 bytes (RFC 7518 §3.2: no shorter
    /// than the hash), so it cannot be guessed offline from one token.
    /// Default: none.
    pub hmac_secret: Option<String>,
    /// The same secret read from a file at start (one trailing newline
    /// trimmed), so it need not sit in the config file. Default: none.
    pub hmac_secret_file: Option<PathBuf>,
    /// PEM public key (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`): an RSA
    /// key of at least 2048 bits verifies RS256, an EC P-256 key ES256; the
    /// key type decides, tokens cannot choose. Read at start. Default: none.
    pub public_key_file: Option<PathBuf>,
    /// `http://` or `https://` URL of a JWKS. Its RSA (RS256) and EC P-256
    /// (ES256) signing keys are cached by `kid`, refetched every
    /// `jwks_refresh_interval` and on an unknown `kid`, and kept while the
    /// IdP is unreachable. Default: none.
    pub jwks_url: Option<String>,
    /// Channel patterns anyone may read without a token (`"news"`,
    /// `"public.*"`, or `"*"` for all). A `*` before a pattern's end is an
    /// error. Default: none.
    pub public_channels: Vec<String>,
    /// Whether a token must carry `exp`. With `false` a token without `exp`
    /// never expires (one with `exp` still does). Default: true.
    pub require_exp: bool,
    /// When set, a token's `iss` must be exactly this; a token without `iss`
    /// is refused. Default: not checked.
    pub issuer: Option<String>,
    /// When set, a token's `aud` (a string, or an array of which one entry
    /// suffices) must contain this; a token without `aud` is refused. When
    /// not set, `aud` is not looked at. Default: not checked.
    pub audience: Option<String>,
    /// Clock leeway for `exp` and `nbf`, in whole seconds: a token is
    /// accepted until `exp + leeway`, and a stream it opened ends then.
    /// At most 1 h. Default: 30 s.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// A longer token is refused (`TooLong`) before it is decoded or any
    /// signature is checked, which bounds the work an unauthenticated client
    /// can cause. 1 byte to 64 KiB. Default: 8192.
    pub max_token_bytes: usize,
    /// Time allowed for one JWKS fetch; one that takes longer counts as
    /// failed, and verifications waiting for it get the keys held before.
    /// Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub jwks_timeout: Duration,
    /// How often the JWKS is fetched in the background once `start`ed; after
    /// a failed fetch the next one comes `jwks_min_refetch_interval` later.
    /// At least `jwks_min_refetch_interval`. Default: 5 min.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    /// Tokens with a `kid` not in the cached set start at most one JWKS
    /// fetch per this interval (all verifications waiting meanwhile share
    /// it); within the interval such tokens are refused at once. At least
    /// 1 s. Default: 30 s.
    #[serde(with = "humantime_serde")]
    pub jwks_min_refetch_interval: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hmac_secret: None,
            hmac_secret_file: None,
            public_key_file: None,
            jwks_url: None,
            public_channels: Vec::new(),
            require_exp: true,
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            jwks_timeout: DEFAULT_JWKS_TIMEOUT,
            jwks_refresh_interval: DEFAULT_JWKS_REFRESH_INTERVAL,
            jwks_min_refetch_interval: DEFAULT_JWKS_MIN_REFETCH_INTERVAL,
        }
    }
}

/// Written by hand so that printing a config never prints the secret.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hmac_secret",
                &self.hmac_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("hmac_secret_file", &self.hmac_secret_file)
            .field("public_key_file", &self.public_key_file)
            .field("jwks_url", &self.jwks_url)
            .field("public_channels", &self.public_channels)
            .field("require_exp", &self.require_exp)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("max_token_bytes", &self.max_token_bytes)
            .field("jwks_timeout", &self.jwks_timeout)
            .field("jwks_refresh_interval", &self.jwks_refresh_interval)
            .field("jwks_min_refetch_interval", &self.jwks_min_refetch_interval)
            .finish()
    }
}

/// Why an `[auth]` section cannot be used. `key` is the full config key
/// (`"auth.public_key_file"`); the message names the value or path and what
/// is wrong with it, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct AuthConfigError {
    pub key: &'static str,
    pub message: String,
}

impl AuthConfigError {
    pub(super) fn new(key: &'static str, message: impl Into<String>) -> AuthConfigError {
        AuthConfigError {
            key,
            message: message.into(),
        }
    }
}

/// The one key source a valid config names.
pub(super) enum KeySource<'a> {
    /// HS256 secret bytes, and the key they came from.
    Secret(Vec<u8>, &'static str),
    PemFile(&'a Path),
    Jwks(&'a str),
}

impl AuthConfig {
    /// Exactly one key source, read where it is a file.
    pub(super) fn key_source(&self) -> Result<KeySource<'_>, AuthConfigError> {
        let set: Vec<&'static str> = [
            ("auth.hmac_secret", self.hmac_secret.is_some()),
            ("auth.hmac_secret_file", self.hmac_secret_file.is_some()),
            ("auth.public_key_file", self.public_key_file.is_some()),
            ("auth.jwks_url", self.jwks_url.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, on)| on.then_some(key))
        .collect();
        match set[..] {
            [] => Err(AuthConfigError::new(
                "auth",
                "no key source: set one of auth.hmac_secret, auth.hmac_secret_file, \
                 auth.public_key_file or auth.jwks_url",
            )),
            [_] => Ok(()),
            [first, second, ..] => Err(AuthConfigError::new(
                second,
                format!("cannot be combined with {first}: give exactly one key source"),
            )),
        }?;
        if let Some(secret) = &self.hmac_secret {
            return Ok(KeySource::Secret(
                secret.as_bytes().to_vec(),
                "auth.hmac_secret",
            ));
        }
        if let Some(path) = &self.hmac_secret_file {
            let key = "auth.hmac_secret_file";
            let mut bytes = std::fs::read(path).map_err(|e| {
                AuthConfigError::new(key, format!("cannot read {}: {e}", path.display()))
            })?;
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
                if bytes.last() == Some(&b'\r') {
                    bytes.pop();
                }
            }
            return Ok(KeySource::Secret(bytes, key));
        }
        if let Some(path) = &self.public_key_file {
            return Ok(KeySource::PemFile(path));
        }
        let url = self.jwks_url.as_deref().unwrap_or_default();
        Ok(KeySource::Jwks(url))
    }

    /// The checks on the limits and the claims rules, without the keys.
    pub(super) fn check_limits(&self) -> Result<(), AuthConfigError> {
        if self.leeway > MAX_LEEWAY {
            return Err(AuthConfigError::new(
                "auth.leeway",
                format!(
                    "{} is more than {}: expired tokens would be accepted that long",
                    humantime::format_duration(self.leeway),
                    humantime::format_duration(MAX_LEEWAY)
                ),
            ));
        }
        if self.max_token_bytes == 0 || self.max_token_bytes > MAX_MAX_TOKEN_BYTES {
            return Err(AuthConfigError::new(
                "auth.max_token_bytes",
                format!(
                    "{} is outside 1..={MAX_MAX_TOKEN_BYTES}",
                    self.max_token_bytes
                ),
            ));
        }
        if self.jwks_timeout.is_zero() {
            return Err(AuthConfigError::new(
                "auth.jwks_timeout",
                "0s would fail every fetch",
            ));
        }
        if self.jwks_min_refetch_interval < MIN_JWKS_MIN_REFETCH_INTERVAL {
            return Err(AuthConfigError::new(
                "auth.jwks_min_refetch_interval",
                format!(
                    "{} is under {}: tokens with made-up key ids could make Herald \
                     fetch the key set that often",
                    humantime::format_duration(self.jwks_min_refetch_interval),
                    humantime::format_duration(MIN_JWKS_MIN_REFETCH_INTERVAL)
                ),
            ));
        }
        if self.jwks_refresh_interval < self.jwks_min_refetch_interval {
            return Err(AuthConfigError::new(
                "auth.jwks_refresh_interval",
                format!(
                    "{} is shorter than auth.jwks_min_refetch_interval ({})",
                    humantime::format_duration(self.jwks_refresh_interval),
                    humantime::format_duration(self.jwks_min_refetch_interval)
                ),
            ));
        }
        for (key, value) in [
            ("auth.issuer", &self.issuer),
            ("auth.audience", &self.audience),
        ] {
            if value.as_deref() == Some("") {
                return Err(AuthConfigError::new(
                    key,
                    "is empty; leave it out to not check the claim",
                ));
            }
        }
        Ok(())
    }

    /// `public_channels`, parsed strictly.
    pub(super) fn public_patterns(&self) -> Result<Patterns, AuthConfigError> {
        Patterns::parse(&self.public_channels)
            .map_err(|e: PatternError| AuthConfigError::new("auth.public_channels", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AuthConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn defaults() {
        let cfg = parse(r#"hmac_secret = "x""#).unwrap();
        assert!(cfg.require_exp);
        assert_eq!(cfg.leeway, Duration::from_secs(30));
        assert_eq!(cfg.max_token_bytes, 8192);
        assert_eq!(cfg.jwks_timeout, Duration::from_secs(5));
        assert_eq!(cfg.jwks_refresh_interval, Duration::from_secs(300));
        assert_eq!(cfg.jwks_min_refetch_interval, Duration::from_secs(30));
    }

    #[test]
    fn unknown_keys_and_durations() {
        assert!(parse("hmac_secrett = \"x\"").is_err());
        let cfg = parse("leeway = \"5s\"\njwks_timeout = \"250ms\"").unwrap();
        assert_eq!(cfg.leeway, Duration::from_secs(5));
        assert_eq!(cfg.jwks_timeout, Duration::from_millis(250));
    }

    #[test]
    fn zero_or_two_key_sources_are_errors_naming_the_keys() {
        let err = AuthConfig::default().key_source().err().unwrap();
        assert_eq!(err.key, "auth");
        assert!(err.message.contains("auth.jwks_url"), "{err}");

        let cfg = AuthConfig {
            hmac_secret: Some("s".repeat(32)),
            jwks_url: Some("https://idp/jwks".into()),
            ..AuthConfig::default()
        };
        let err = cfg.key_source().err().unwrap();
        assert_eq!(err.key, "auth.jwks_url");
        assert!(err.message.contains("auth.hmac_secret"), "{err}");

        let cfg = AuthConfig {
            hmac_secret: Some("s".repeat(32)),
            hmac_secret_file: Some("/dev/null".into()),
            ..AuthConfig::default()
        };
        assert_eq!(cfg.key_source().err().unwrap().key, "auth.hmac_secret_file");
    }

    #[test]
    fn secret_file_loses_one_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("herald-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "abc \r\n").unwrap();
        let cfg = AuthConfig {
            hmac_secret_file: Some(path.clone()),
            ..AuthConfig::default()
        };
        match cfg.key_source().unwrap() {
            KeySource::Secret(bytes, key) => {
                assert_eq!(bytes, b"abc ");
                assert_eq!(key, "auth.hmac_secret_file");
            }
            _ => panic!("not a secret"),
        }
        std::fs::remove_dir_all(&dir).unwrap();

        let err = cfg.key_source().err().unwrap();
        assert_eq!(err.key, "auth.hmac_secret_file");
        assert!(err.message.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn limits_are_checked_with_the_key_named() {
        let check = |cfg: AuthConfig| cfg.check_limits().err().map(|e| e.key);
        let base = AuthConfig::default;
        assert_eq!(check(base()), None);
        let cases = [
            (
                AuthConfig {
                    leeway: Duration::from_secs(7200),
                    ..base()
                },
                "auth.leeway",
            ),
            (
                AuthConfig {
                    max_token_bytes: 0,
                    ..base()
                },
                "auth.max_token_bytes",
            ),
            (
                AuthConfig {
                    jwks_timeout: Duration::ZERO,
                    ..base()
                },
                "auth.jwks_timeout",
            ),
            (
                AuthConfig {
                    jwks_min_refetch_interval: Duration::from_millis(10),
                    ..base()
                },
                "auth.jwks_min_refetch_interval",
            ),
            (
                AuthConfig {
                    jwks_refresh_interval: Duration::from_secs(10),
                    ..base()
                },
                "auth.jwks_refresh_interval",
            ),
            (
                AuthConfig {
                    audience: Some(String::new()),
                    ..base()
                },
                "auth.audience",
            ),
        ];
        for (cfg, key) in cases {
            assert_eq!(check(cfg), Some(key));
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let cfg = AuthConfig {
            hmac_secret: Some("very-secret-value".into()),
            ..AuthConfig::default()
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("very-secret-value"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn public_channels_with_inner_star_name_the_pattern() {
        let cfg = AuthConfig {
            public_channels: vec!["news".into(), "a*b".into()],
            ..AuthConfig::default()
        };
        let err = cfg.public_patterns().unwrap_err();
        assert_eq!(err.key, "auth.public_channels");
        assert!(err.to_string().contains("a*b"), "{err}");
    }
}
