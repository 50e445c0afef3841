//! Transports: thin adapters from a hub [`Subscription`](crate::hub::Subscription)
//! to a wire format. Cursor rules, history and resume live in the hub.

pub mod sse;

use crate::hub::Start;
use crate::hub::cursor::Cursor;
use crate::server::ApiError;

/// The query parameters every streaming transport understands.
#[derive(Debug, Default)]
pub struct StreamParams {
    pub channels: Vec<String>,
    pub cursor: Option<String>,
    pub since: Option<String>,
    /// Accepted for the contract; checked once auth is configured.
    pub token: Option<String>,
}

impl StreamParams {
    /// Parses a query string. Unknown parameters are refused (a typo such
    /// as `chanel=` must not silently subscribe to nothing), except names
    /// starting with `_`, which proxies and clients use as cache busters.
    pub fn parse(query: Option<&str>) -> Result<StreamParams, ApiError> {
        let mut params = StreamParams::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*name {
                "channel" => params.channels.push(value.into_owned()),
                "cursor" => params.cursor = Some(value.into_owned()),
                "since" => params.since = Some(value.into_owned()),
                "token" => params.token = Some(value.into_owned()),
                n if n.starts_with('_') => {}
                n => {
                    return Err(ApiError::bad_request(
                        "unknown_parameter",
                        format!(
                            "unknown query parameter {n:?} (expected channel, cursor, since, token)"
                        ),
                    ));
                }
            }
        }
        if params.channels.is_empty() {
            return Err(ApiError::bad_request(
                "missing_channel",
                "at least one channel= parameter is required",
            ));
        }
        Ok(params)
    }

    /// Where the subscription starts. `resume` (the `Last-Event-ID` header
    /// for SSE) wins over `cursor=`.
    pub fn start(&self, resume: Option<&str>) -> Result<Start, ApiError> {
        let cursor = resume.filter(|c| !c.is_empty()).or(self.cursor.as_deref());
        if cursor.is_some() && self.since.is_some() && resume.is_none() {
            return Err(ApiError::bad_request(
                "conflicting_parameters",
                "give either cursor= or since=, not both",
            ));
        }
        if let Some(c) = cursor {
            let cursor = Cursor::decode(c).map_err(|e| {
                ApiError::bad_request("invalid_cursor", format!("invalid cursor: {e}"))
            })?;
            return Ok(Start::Cursor(cursor));
        }
        if let Some(since) = &self.since {
            return Err(ApiError::bad_request(
                "since_unsupported",
                format!(
                    "since={since:?}: resuming from a timestamp is not supported by this version yet; use cursor="
                ),
            ));
        }
        Ok(Start::Live)
    }
}
