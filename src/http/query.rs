//! Query parameters of the transports' URLs (`/sse`, `/ws`, `/poll`): which
//! each accepts, and where a subscription starts (`cursor=`, `since=`, or
//! the live end). Shared, so every transport refuses the same things the
//! same way.

use super::error::ApiError;
use crate::hub::Start;
use crate::hub::cursor::Cursor;

/// The query parameters a transport understands, and whether it needs a
/// channel in the query.
pub struct Accepts {
    pub names: &'static [&'static str],
    pub channel_required: bool,
}

/// `/sse`: a stream needs its channels up front.
pub const SSE_PARAMS: Accepts = Accepts {
    names: &["channel", "cursor", "since", "token"],
    channel_required: true,
};

/// `/ws`: channels in the query are optional (a two-way client subscribes
/// with messages).
pub const WS_PARAMS: Accepts = Accepts {
    names: &["channel", "cursor", "since", "token"],
    channel_required: false,
};

/// `/poll`: as SSE, plus `limit` and `wait`.
pub const POLL_PARAMS: Accepts = Accepts {
    names: &["channel", "cursor", "since", "token", "limit", "wait"],
    channel_required: true,
};

/// The query parameters of the transports (see [`Accepts`] for which
/// takes what).
#[derive(Debug, Default)]
pub struct StreamParams {
    pub channels: Vec<String>,
    pub cursor: Option<String>,
    pub since: Option<String>,
    /// Accepted for the contract; checked once auth is configured.
    pub token: Option<String>,
    /// Polling: most messages in one response.
    pub limit: Option<String>,
    /// Polling: seconds to wait for a first message (a long poll).
    pub wait: Option<String>,
}

impl StreamParams {
    /// Parses an SSE query string (see [`StreamParams::parse_for`]).
    pub fn parse(query: Option<&str>) -> Result<StreamParams, ApiError> {
        Self::parse_for(query, &SSE_PARAMS)
    }

    /// Parses a query string. Unknown parameters are refused (a typo such
    /// as `chanel=` must not silently subscribe to nothing), except names
    /// starting with `_`, which proxies and clients use as cache busters.
    pub fn parse_for(query: Option<&str>, accepts: &Accepts) -> Result<StreamParams, ApiError> {
        let mut params = StreamParams::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if name.starts_with('_') {
                continue;
            }
            let slot = match &*name {
                n if !accepts.names.contains(&n) => None,
                "channel" => {
                    params.channels.push(value.into_owned());
                    continue;
                }
                "cursor" => Some(&mut params.cursor),
                "since" => Some(&mut params.since),
                "token" => Some(&mut params.token),
                "limit" => Some(&mut params.limit),
                "wait" => Some(&mut params.wait),
                _ => None,
            };
            let Some(slot) = slot else {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!(
                        "unknown query parameter {name:?} (expected {})",
                        accepts.names.join(", ")
                    ),
                ));
            };
            *slot = Some(value.into_owned());
        }
        if accepts.channel_required && params.channels.is_empty() {
            return Err(ApiError::bad_request(
                "missing_channel",
                "at least one channel= parameter is required",
            ));
        }
        Ok(params)
    }

    /// Where the subscription starts. `resume` (the `Last-Event-ID` header
    /// for SSE) wins over `cursor=`, and over `since=`.
    pub fn start(&self, resume: Option<&str>) -> Result<Start, ApiError> {
        if let Some(resume) = resume.filter(|c| !c.is_empty()) {
            return start_at(Some(resume), None);
        }
        start_at(self.cursor.as_deref(), self.since.as_deref())
    }
}

/// Where a subscription starts, from a cursor or a `since` (at most one
/// of them); neither is the live end. Shared by every transport, so they
/// all refuse the same things the same way.
pub fn start_at(cursor: Option<&str>, since: Option<&str>) -> Result<Start, ApiError> {
    match (cursor, since) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "conflicting_parameters",
            "give either cursor= or since=, not both",
        )),
        (Some(c), None) => Cursor::decode(c)
            .map(Start::Cursor)
            .map_err(|e| ApiError::bad_request("invalid_cursor", format!("invalid cursor: {e}"))),
        (None, Some(since)) => parse_since(since).map(Start::Since),
        (None, None) => Ok(Start::Live),
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
    fn each_transport_takes_its_own_parameters() {
        let e = StreamParams::parse(Some("channel=a&limit=5")).unwrap_err();
        assert_eq!(e.code, "unknown_parameter");
        assert!(e.message.contains("\"limit\""), "{}", e.message);
        let p =
            StreamParams::parse_for(Some("channel=a&limit=5&wait=1.5&_=9"), &POLL_PARAMS).unwrap();
        assert_eq!(
            (p.limit.as_deref(), p.wait.as_deref()),
            (Some("5"), Some("1.5"))
        );
        assert!(StreamParams::parse_for(None, &WS_PARAMS).is_ok());
        let e = StreamParams::parse_for(None, &POLL_PARAMS).unwrap_err();
        assert_eq!(e.code, "missing_channel");
    }

    #[test]
    fn resume_header_wins_over_cursor_and_since() {
        let p = StreamParams::parse(Some("channel=a&since=5&cursor=hAA")).unwrap();
        assert_eq!(p.start(None).unwrap_err().code, "conflicting_parameters");
        assert!(matches!(p.start(Some("hAA")), Ok(Start::Cursor(_))));
        let p = StreamParams::parse(Some("channel=a&since=5")).unwrap();
        assert!(matches!(p.start(None), Ok(Start::Since(5))));
        assert!(matches!(p.start(Some("")), Ok(Start::Since(5))));
    }

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
