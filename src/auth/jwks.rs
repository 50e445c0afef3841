//! Keys from a JWKS URL: fetched over HTTP, cached by `kid`, refreshed in
//! the background, refetched when a token names a `kid` not in the cache (at
//! most once per `jwks_min_refetch_interval`), and kept while the IdP cannot
//! be reached, so tokens signed with known keys keep working through an IdP
//! outage.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::Deserialize;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

use super::config::{AuthConfig, AuthConfigError};
use super::keys::Key;
use super::token::{TokenError, clip};

/// A JWKS body larger than this is a failed fetch: real key sets are a few
/// KB, and the bound keeps a broken or hostile endpoint from filling memory.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// At most this many keys of a set are read; the rest are ignored (and the
/// log says how many). IdPs publish a handful; each key read costs a parse.
const MAX_JWKS_KEYS: usize = 100;

/// `kid`s are cut to this length in log lines and in `UnknownKey` errors:
/// a token's `kid` is attacker-chosen text up to `max_token_bytes` long.
const MAX_LOGGED_KID_BYTES: usize = 64;

/// A JWKS and the keys last fetched from it. The state is shared with the
/// refresh task and with fetch tasks, which can outlive the verification
/// that started them.
pub(super) struct Jwks {
    shared: Arc<Shared>,
}

struct Shared {
    url: reqwest::Url,
    /// Has the per-fetch timeout (`jwks_timeout`) set.
    client: reqwest::Client,
    /// `auth.jwks_refresh_interval` and `auth.jwks_min_refetch_interval`
    /// (their limits are documented on `AuthConfig`).
    refresh_interval: Duration,
    min_refetch_interval: Duration,
    /// The keys verifications read: swapped whole by a fetch, never edited.
    keys: RwLock<Arc<KeySet>>,
    /// Held for the whole of a fetch, so concurrent verifications that need
    /// one wait for the same fetch instead of each starting their own.
    fetch: Arc<Mutex<FetchState>>,
    /// `start` was called: the background refresh runs.
    started: AtomicBool,
}

/// The usable keys of one fetched key set.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// Every usable key, with its `kid` if it has one, in the set's order.
    all: Vec<(Option<String>, Arc<Key>)>,
    /// Whether this came from a fetch (the initial set is empty and unfetched).
    fetched: bool,
}

impl KeySet {
    /// The key for a token's `kid`. A token without `kid` gets the set's only
    /// key; with several there is no telling which the token means.
    fn find(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None => match &self.all[..] {
                [(_, only)] => Some(only.clone()),
                _ => None,
            },
        }
    }

    /// What identifies the set's keys, to tell whether a fetch changed it.
    fn same_keys(&self, other: &KeySet) -> bool {
        self.all.len() == other.all.len()
            && self
                .all
                .iter()
                .zip(&other.all)
                .all(|((k1, a), (k2, b))| k1 == k2 && a.alg == b.alg && a.material == b.material)
    }

    fn kids(&self) -> Vec<String> {
        self.all
            .iter()
            .map(|(kid, key)| match kid {
                Some(kid) => format!("{}:{}", clip(kid, MAX_LOGGED_KID_BYTES), key.alg.name()),
                None => format!("(no kid):{}", key.alg.name()),
            })
            .collect()
    }
}

#[derive(Default)]
struct FetchState {
    /// When the last fetch began, whatever its outcome.
    last_start: Option<Instant>,
    /// Fetches failed in a row; a streak is logged at its first failure and
    /// at its end, not at each retry.
    failures: u64,
}

/// Why a fetch did not give a key set. The old keys stay in use.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{0}")]
    Request(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("body larger than {MAX_JWKS_BYTES} bytes")]
    TooBig,
    #[error("not a JWKS: {0}")]
    NotJwks(String),
    #[error("no usable key (RSA for RS256, EC P-256 for ES256); left out: {0:?}")]
    NoUsableKey(Vec<String>),
}

/// A fetched set: its usable keys, and why the others were left out.
struct Fetched {
    keys: KeySet,
    ignored: Vec<String>,
}

impl Jwks {
    /// Checks the URL and builds the HTTP client; fetches nothing.
    pub fn new(url: &str, cfg: &AuthConfig) -> Result<Jwks, AuthConfigError> {
        let key = "auth.jwks_url";
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| AuthConfigError::new(key, format!("{url:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(AuthConfigError::new(
                key,
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.jwks_timeout)
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AuthConfigError::new(key, format!("HTTP client: {}", chain(&e))))?;
        Ok(Jwks {
            shared: Arc::new(Shared {
                url: parsed,
                client,
                refresh_interval: cfg.jwks_refresh_interval,
                min_refetch_interval: cfg.jwks_min_refetch_interval,
                keys: RwLock::new(Arc::new(KeySet::default())),
                fetch: Arc::new(Mutex::new(FetchState::default())),
                started: AtomicBool::new(false),
            }),
        })
    }

    pub fn url(&self) -> &reqwest::Url {
        &self.shared.url
    }

    /// Spawns the background refresh: a first fetch now, then one every
    /// `jwks_refresh_interval` (every `jwks_min_refetch_interval` while
    /// fetches fail), until `shutdown`. A second call does nothing.
    pub fn start(&self, shutdown: CancellationToken) {
        if self.shared.started.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.shared.url.scheme() == "http" {
            tracing::warn!(
                url = %self.shared.url,
                "auth.jwks_url is plain http: anyone on the path to the IdP can swap the keys; \
                 use https outside tests"
            );
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                let fetched = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    fetched = async {
                        let state = shared.fetch.clone().lock_owned().await;
                        shared.fetch_and_store(state).await.0
                    } => fetched,
                };
                let wait = if fetched {
                    shared.refresh_interval
                } else {
                    shared.min_refetch_interval
                };
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
    }

    /// The key for a token's `kid`, from the cache or, when it is not there,
    /// from a fetch: one started now if none began within
    /// `jwks_min_refetch_interval`, or the one under way.
    pub async fn key_for(&self, kid: Option<&str>) -> Result<Arc<Key>, TokenError> {
        let shared = &self.shared;
        let current = shared.keys.read().clone();
        if let Some(key) = current.find(kid) {
            return Ok(key);
        }
        if kid.is_none() && current.all.len() > 1 {
            return Err(TokenError::UnknownKey(None)); // a fetch would not choose for it
        }
        let state = shared.fetch.clone().lock_owned().await;
        if let Some(key) = shared.keys.read().find(kid) {
            return Ok(key); // fetched while this one waited
        }
        let recent = state
            .last_start
            .is_some_and(|at| at.elapsed() < shared.min_refetch_interval);
        if recent {
            return Err(shared.miss(kid));
        }
        // On its own task, so that a verification given up halfway (its
        // client left) does not abort a fetch that others wait for.
        let fetch = tokio::spawn({
            let shared = shared.clone();
            async move { shared.fetch_and_store(state).await }
        });
        match fetch.await {
            Ok(_) => shared.keys.read().find(kid).ok_or_else(|| shared.miss(kid)),
            Err(_) => Err(TokenError::KeysUnavailable("the key fetch failed".into())),
        }
    }
}

impl Shared {
    /// The refusal for a `kid` that a fetch did not (or may not yet) bring.
    fn miss(&self, kid: Option<&str>) -> TokenError {
        let keys = self.keys.read();
        if !keys.fetched {
            // The reason is in the log (`fetch_and_store`); clients get no
            // internal URLs or errors.
            TokenError::KeysUnavailable("the key set could not be fetched yet".into())
        } else {
            TokenError::UnknownKey(kid.map(|kid| clip(kid, MAX_LOGGED_KID_BYTES)))
        }
    }

    /// One fetch with the fetch lock held; replaces the keys on success.
    /// Returns whether it succeeded, and the lock for the caller to release.
    async fn fetch_and_store(
        &self,
        mut state: OwnedMutexGuard<FetchState>,
    ) -> (bool, OwnedMutexGuard<FetchState>) {
        state.last_start = Some(Instant::now());
        let result = self.fetch().await;
        let url = &self.url;
        match result {
            Ok(fetched) => {
                if state.failures > 0 {
                    tracing::info!(%url, failures = state.failures, "JWKS fetched again after failures");
                }
                state.failures = 0;
                let mut keys = self.keys.write();
                if !keys.fetched || !keys.same_keys(&fetched.keys) {
                    tracing::info!(
                        %url,
                        keys = fetched.keys.all.len(),
                        kids = ?fetched.keys.kids(),
                        ignored = ?fetched.ignored,
                        "JWKS keys loaded"
                    );
                }
                *keys = Arc::new(fetched.keys);
                (true, state)
            }
            Err(error) => {
                let held = self.keys.read().all.len();
                if state.failures == 0 {
                    tracing::warn!(
                        %url,
                        %error,
                        keys_kept = held,
                        "JWKS fetch failed; keeping the keys fetched before"
                    );
                } else {
                    tracing::debug!(%url, %error, failures = state.failures + 1, "JWKS fetch failed again");
                }
                state.failures += 1;
                (false, state)
            }
        }
    }

    async fn fetch(&self) -> Result<Fetched, FetchError> {
        let request = |e: reqwest::Error| FetchError::Request(chain(&e));
        let mut response = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(request)?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err(FetchError::TooBig);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(FetchError::TooBig);
            }
            body.extend_from_slice(&chunk);
        }
        parse(&body)
    }
}

/// A JWKS document: its usable keys, and the others with why they are left
/// out. A set without a usable key is an error, so the keys held before stay.
fn parse(body: &[u8]) -> Result<Fetched, FetchError> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document =
        serde_json::from_slice(body).map_err(|e| FetchError::NotJwks(e.to_string()))?;
    let mut keys = KeySet {
        fetched: true,
        ..KeySet::default()
    };
    let mut ignored = Vec::new();
    if document.keys.len() > MAX_JWKS_KEYS {
        ignored.push(format!(
            "{} keys after the first {MAX_JWKS_KEYS}",
            document.keys.len() - MAX_JWKS_KEYS
        ));
    }
    for jwk in document.keys.iter().take(MAX_JWKS_KEYS) {
        let name = jwk.get("kid").and_then(|kid| kid.as_str()).map_or_else(
            || "(no kid)".to_owned(),
            |kid| clip(kid, MAX_LOGGED_KID_BYTES),
        );
        match Key::from_jwk(jwk) {
            Ok((Some(kid), _)) if keys.by_kid.contains_key(&kid) => {
                ignored.push(format!("{name}: a second key with this kid"));
            }
            Ok((kid, key)) => {
                let key = Arc::new(key);
                if let Some(kid) = &kid {
                    keys.by_kid.insert(kid.clone(), key.clone());
                }
                keys.all.push((kid, key));
            }
            Err(why) => ignored.push(format!("{name}: {why}")),
        }
    }
    if keys.all.is_empty() {
        return Err(FetchError::NoUsableKey(ignored));
    }
    Ok(Fetched { keys, ignored })
}

/// An error and its sources, `: `-separated: reqwest's own message is only
/// "error sending request for url (…)"; the cause is further down.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
