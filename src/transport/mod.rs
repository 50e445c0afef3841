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
            return parse_since(since).map(Start::Since);
        }
        Ok(Start::Live)
    }
}

/// Parses `since=`: milliseconds since the epoch, or an RFC 3339 timestamp
/// (`2026-11-25T10:00:00Z`, `2026-11-25T11:00:00.5+01:00`).
pub fn parse_since(value: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = value.parse::<i64>() {
        if ms < 0 {
            return Err(ApiError::bad_request(
                "invalid_since",
                format!("since={value:?}: a timestamp cannot be negative"),
            ));
        }
        return Ok(ms);
    }
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_since",
                format!("since={value:?} is neither milliseconds since the epoch nor an RFC 3339 timestamp ({e})"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_epoch_ms_and_rfc3339() {
        assert_eq!(parse_since("1700000000123").unwrap(), 1_700_000_000_123);
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_since("2023-11-14T23:13:20.5+01:00").unwrap(),
            1_700_000_000_500
        );
        for bad in ["yesterday", "-5", "2023-11-14", ""] {
            let e = parse_since(bad).unwrap_err();
            assert_eq!(e.code, "invalid_since", "{bad}");
        }
    }
}
