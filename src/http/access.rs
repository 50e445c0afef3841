//! Who may read what, at the edge: every transport request passes the
//! origin check and has its token verified here, once, into a [`Reader`];
//! the transport then asks the reader about each channel it subscribes.
//!
//! The token comes from `Authorization: Bearer <jwt>` or, for browsers'
//! `EventSource` and `WebSocket` (which cannot set headers), from the
//! `token=` query parameter; the header wins. A token that is given is
//! always verified, even when every channel asked for is public: a client
//! that sends a bad token is told so rather than served as anonymous.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode, header};

use super::cors::check_origin;
use super::error::ApiError;
use crate::app::App;
use crate::auth::{Denied, Grant, TokenError};

/// A verified reader: the grant of its token, or none (public channels
/// only).
#[derive(Debug, Clone, Default)]
pub struct Reader {
    grant: Option<Grant>,
}

impl Reader {
    /// Checks every channel; the first refused one is the error.
    pub fn authorize<S: AsRef<str>>(&self, app: &App, channels: &[S]) -> Result<(), ApiError> {
        for channel in channels {
            app.auth()
                .authorize(self.grant.as_ref(), channel.as_ref())
                .map_err(denied)?;
        }
        Ok(())
    }

    /// Whether `channel` may be read, as the refusal to send if not.
    pub fn authorize_one(&self, app: &App, channel: &str) -> Result<(), Denied> {
        app.auth().authorize(self.grant.as_ref(), channel)
    }

    /// How long until the token expires (zero once past); `None` when it
    /// never does (no token, no `exp`, or no `[auth]`). A stream opened
    /// with it ends then.
    pub fn time_left(&self) -> Option<Duration> {
        self.grant
            .as_ref()
            .and_then(|g| g.time_left(SystemTime::now()))
    }

    /// The token's `sub`, if it had one: what `POST /admin/disconnect`
    /// ends streams by.
    pub fn subject(&self) -> Option<&str> {
        self.grant.as_ref()?.subject()
    }

    /// The token's expiry as seconds since the epoch, for the client.
    pub fn expires_at_unix(&self) -> Option<u64> {
        let at = self.grant.as_ref()?.expires_at()?;
        at.duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    }
}

/// The origin check, then the token of a request (header or `token=`).
pub async fn authenticate(
    app: &App,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Reader, ApiError> {
    check_origin(app, headers)?;
    let token = match bearer(headers)? {
        Some(token) => Some(token),
        None => query_token.filter(|t| !t.is_empty()),
    };
    match token {
        None => Ok(Reader::default()),
        Some(token) => verify(app, token).await,
    }
}

/// A token sent after the connection opened (a WebSocket `auth` message).
/// Without `[auth]` any token is accepted (a client configured for a
/// secured node is not an error) and reads every channel.
pub async fn verify(app: &App, token: &str) -> Result<Reader, ApiError> {
    match app.auth().verify(token).await {
        Ok(grant) => Ok(Reader { grant: Some(grant) }),
        Err(e) => Err(token_error(e)),
    }
}

/// The token of `Authorization: Bearer …`, if the header is there.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let refuse = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the Authorization header must be `Bearer <token>`",
        )
    };
    let value = value.to_str().map_err(|_| refuse())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(refuse)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(refuse());
    }
    Ok(Some(token.trim()))
}

/// A token refused: `401` (`invalid_token`, `token_expired`), or `503
/// auth_unavailable` when no key could be had from the JWKS yet.
pub fn token_error(e: TokenError) -> ApiError {
    let status = match e.code() {
        "auth_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    };
    ApiError::new(status, e.code(), format!("token refused: {e}"))
}

/// A channel refused: `401 invalid_token` without a token, `401
/// token_expired`, `403 forbidden_channel`.
pub fn denied(e: Denied) -> ApiError {
    let status = match e {
        Denied::Forbidden { .. } => StatusCode::FORBIDDEN,
        Denied::TokenRequired { .. } | Denied::TokenExpired { .. } => StatusCode::UNAUTHORIZED,
    };
    ApiError::new(status, e.code(), e.to_string())
}
