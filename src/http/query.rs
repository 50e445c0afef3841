//! Query parameters of the transports' URLs (`/sse`, `/ws`, `/poll`): which
//! each accepts, and where a subscription starts (`cursor=`, `since=`, or
//! the live end). Shared, so every transport refuses the same things the
//! same way, and bounded: a query longer than `http.max_query_bytes` is
//! refused before it is parsed, and parsing stops at the first channel
//! over `limits.max_channels_per_connection`, so one request costs work in
//! proportion to what it may ask for, not to what it sends.

use std::collections::HashSet;

use http::StatusCode;

use super::error::ApiError;
use crate::config::Config;
use crate::hub::Start;
use crate::hub::cursor::Cursor;

/// The query parameters a transport understands, and whether it needs a
/// channel in the query.
pub struct Accepts {
    pub names: &'static [&'static str],
    pub channel_required: bool,
}

/// `/sse`: a stream needs its channels up front (`channel=`, or `sub=`
/// for one cursor per channel).
pub const SSE_PARAMS: Accepts = Accepts {
    names: &["channel", "cursor", "since", "token", "sub"],
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
    names: &[
        "channel", "cursor", "since", "token", "limit", "wait", "sub",
    ],
    channel_required: true,
};

/// The bounds on a transport's query string.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// `http.max_query_bytes`.
    pub max_bytes: usize,
    /// `limits.max_channels_per_connection`.
    pub max_channels: usize,
}

impl QueryLimits {
    pub fn of(config: &Config) -> QueryLimits {
        QueryLimits {
            max_bytes: config.http.max_query_bytes,
            max_channels: config.limits.max_channels_per_connection,
        }
    }
}

/// The query parameters of the transports (see [`Accepts`] for which
/// takes what).
#[derive(Debug, Default)]
pub struct StreamParams {
    /// The `channel=` values, each once, in their first order.
    pub channels: Vec<String>,
    pub cursor: Option<String>,
    pub since: Option<String>,
    /// Accepted for the contract; checked once auth is configured.
    pub token: Option<String>,
    /// Polling: most messages in one response.
    pub limit: Option<String>,
    /// Polling: seconds to wait for a first message (a long poll).
    pub wait: Option<String>,
    /// The `sub=` values, in their order: one subscription each, with its
    /// own cursor (SSE and polling; see [`SubParam`]). Never given together
    /// with `channel=`, `cursor=` or `since=`.
    pub subs: Vec<SubParam>,
}

/// One `sub=CHANNEL[@CURSOR|@since:SINCE]` value: a channel, and where its
/// own subscription starts. The value is split at its last `@` (a cursor
/// never holds one); without an `@`, or with nothing after it, the
/// subscription starts at the live end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubParam {
    pub channel: String,
    pub cursor: Option<String>,
    pub since: Option<String>,
}

impl SubParam {
    fn parse(value: &str) -> SubParam {
        let (channel, position) = value.rsplit_once('@').unwrap_or((value, ""));
        let (cursor, since) = match position.strip_prefix("since:") {
            Some(since) => (None, Some(since.to_owned())),
            None if position.is_empty() => (None, None),
            None => (Some(position.to_owned()), None),
        };
        SubParam {
            channel: channel.to_owned(),
            cursor,
            since,
        }
    }
}

/// What separates the subscriptions' cursors in the position of a `sub=`
/// stream (its SSE `id:`, which `Last-Event-ID` brings back): a character
/// no cursor holds.
const POSITION_SEPARATOR: char = '.';

/// The position of a `sub=` stream: its subscriptions' cursors, in the
/// order of its `sub=` values, joined by `.`.
pub fn stream_position<'a>(cursors: impl IntoIterator<Item = &'a str>) -> String {
    let mut position = String::new();
    for (i, cursor) in cursors.into_iter().enumerate() {
        if i > 0 {
            position.push(POSITION_SEPARATOR);
        }
        position.push_str(cursor);
    }
    position
}

impl StreamParams {
    /// Parses an SSE query string (see [`StreamParams::parse_for`]).
    pub fn parse(query: Option<&str>, limits: QueryLimits) -> Result<StreamParams, ApiError> {
        Self::parse_for(query, &SSE_PARAMS, limits)
    }

    /// Parses a query string. Unknown parameters are refused (a typo such
    /// as `chanel=` must not silently subscribe to nothing), except names
    /// starting with `_`, which proxies and clients use as cache busters.
    /// A channel given twice counts once; more distinct channels than
    /// `limits.max_channels` is `400 too_many_channels`, found without
    /// reading past the first one too many. A query longer than
    /// `limits.max_bytes` is `414 uri_too_long`.
    pub fn parse_for(
        query: Option<&str>,
        accepts: &Accepts,
        limits: QueryLimits,
    ) -> Result<StreamParams, ApiError> {
        let query = query.unwrap_or("");
        if query.len() > limits.max_bytes {
            return Err(ApiError::new(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                format!(
                    "the query string is {} bytes; the limit is {} (http.max_query_bytes)",
                    query.len(),
                    limits.max_bytes
                ),
            ));
        }
        let mut params = StreamParams::default();
        let mut seen: HashSet<String> = HashSet::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if name.starts_with('_') {
                continue;
            }
            let slot = match &*name {
                n if !accepts.names.contains(&n) => None,
                "channel" => {
                    if seen.contains(&*value) {
                        continue;
                    }
                    if seen.len() == limits.max_channels {
                        return Err(ApiError::bad_request(
                            "too_many_channels",
                            format!(
                                "more than {} channels requested (limits.max_channels_per_connection)",
                                limits.max_channels
                            ),
                        ));
                    }
                    seen.insert(value.to_string());
                    params.channels.push(value.into_owned());
                    continue;
                }
                "sub" => {
                    let sub = SubParam::parse(&value);
                    if params.subs.iter().any(|s| s.channel == sub.channel) {
                        return Err(ApiError::bad_request(
                            "conflicting_parameters",
                            format!(
                                "sub= names the channel {:?} twice; give each channel once, with one cursor",
                                sub.channel
                            ),
                        )
                        .for_channel(&sub.channel));
                    }
                    if params.subs.len() == limits.max_channels {
                        return Err(ApiError::bad_request(
                            "too_many_channels",
                            format!(
                                "more than {} channels requested (limits.max_channels_per_connection)",
                                limits.max_channels
                            ),
                        ));
                    }
                    params.subs.push(sub);
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
            if slot.is_some() {
                // Which of two would be meant is anyone's guess.
                return Err(ApiError::bad_request(
                    "conflicting_parameters",
                    format!("{name}= is given more than once; give it once"),
                ));
            }
            *slot = Some(value.into_owned());
        }
        if !params.subs.is_empty()
            && (!params.channels.is_empty() || params.cursor.is_some() || params.since.is_some())
        {
            return Err(ApiError::bad_request(
                "conflicting_parameters",
                "sub= is given with channel=, cursor= or since=: give every channel as sub=CHANNEL[@CURSOR], each with its own cursor, or use channel= with one cursor for all",
            ));
        }
        if accepts.channel_required && params.channels.is_empty() && params.subs.is_empty() {
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

    /// Where each `sub=` subscription starts, in their order. `resume` (the
    /// `Last-Event-ID` header for SSE), when given, is a stream position
    /// (see [`stream_position`]) and wins over every `sub=` value's own:
    /// it must hold one cursor per `sub=`.
    pub fn sub_starts(&self, resume: Option<&str>) -> Result<Vec<(String, Start)>, ApiError> {
        if let Some(resume) = resume.filter(|c| !c.is_empty()) {
            let cursors: Vec<&str> = resume.split(POSITION_SEPARATOR).collect();
            if cursors.len() != self.subs.len() {
                return Err(ApiError::bad_request(
                    "invalid_cursor",
                    format!(
                        "Last-Event-ID holds {} cursors for {} sub= subscriptions: it must be the id: of an event of a stream with these sub= values",
                        cursors.len(),
                        self.subs.len()
                    ),
                ));
            }
            return self
                .subs
                .iter()
                .zip(cursors)
                .map(|(sub, cursor)| Ok((sub.channel.clone(), sub_start(sub, Some(cursor), None)?)))
                .collect();
        }
        self.subs
            .iter()
            .map(|sub| {
                let start = sub_start(sub, sub.cursor.as_deref(), sub.since.as_deref())?;
                Ok((sub.channel.clone(), start))
            })
            .collect()
    }
}

/// [`start_at`], with the channel named in a refusal.
fn sub_start(sub: &SubParam, cursor: Option<&str>, since: Option<&str>) -> Result<Start, ApiError> {
    start_at(cursor, since).map_err(|mut e| {
        e.message = format!("sub={:?}: {}", sub.channel, e.message);
        e.for_channel(&sub.channel)
    })
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
/// (`2026-11-25T10:00:00Z`, `2026-11-25T11:00:00.5+01:00`). Never
/// negative, either way: Kafka takes the times -1 and -2 to mean its
/// partitions' end and beginning, so a time before the epoch would start
/// a subscription somewhere else without a word.
pub fn parse_since(value: &str) -> Result<i64, ApiError> {
    let ms = match value.parse::<i64>() {
        Ok(ms) => ms,
        Err(_) => time::OffsetDateTime::parse(
            value,
            &time::format_description::well_known::Rfc3339,
        )
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_since",
                format!("since={value:?} is neither milliseconds since the epoch nor an RFC 3339 timestamp ({e})"),
            )
        })?,
    };
    if ms < 0 {
        return Err(ApiError::bad_request(
            "invalid_since",
            format!("since={value:?} is before the epoch (1970-01-01T00:00:00Z)"),
        ));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: QueryLimits = QueryLimits {
        max_bytes: 16 * 1024,
        max_channels: 4,
    };

    #[test]
    fn channels_are_deduplicated_and_counted_as_they_are_parsed() {
        let p =
            StreamParams::parse(Some("channel=a&channel=b&channel=a&channel=c"), LIMITS).unwrap();
        assert_eq!(p.channels, ["a", "b", "c"]);
        // The same channel however often is one.
        let same = vec!["channel=a"; 1000].join("&");
        assert_eq!(
            StreamParams::parse(Some(&same), LIMITS).unwrap().channels,
            ["a"]
        );
        // The fifth distinct one is refused, whatever follows it (even a
        // malformed parameter).
        let e = StreamParams::parse(
            Some("channel=a&channel=b&channel=c&channel=d&channel=e&chanel=x"),
            LIMITS,
        )
        .unwrap_err();
        assert_eq!(e.code, "too_many_channels");
        assert!(e.message.contains("more than 4"), "{}", e.message);
    }

    #[test]
    fn a_query_over_the_limit_is_refused_unread() {
        let long = format!("channel={}", "a".repeat(LIMITS.max_bytes));
        let e = StreamParams::parse(Some(&long), LIMITS).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::URI_TOO_LONG, "uri_too_long")
        );
        assert!(e.message.contains("http.max_query_bytes"), "{}", e.message);
    }

    #[test]
    fn each_transport_takes_its_own_parameters() {
        let e = StreamParams::parse(Some("channel=a&limit=5"), LIMITS).unwrap_err();
        assert_eq!(e.code, "unknown_parameter");
        assert!(e.message.contains("\"limit\""), "{}", e.message);
        let p =
            StreamParams::parse_for(Some("channel=a&limit=5&wait=1.5&_=9"), &POLL_PARAMS, LIMITS)
                .unwrap();
        assert_eq!(
            (p.limit.as_deref(), p.wait.as_deref()),
            (Some("5"), Some("1.5"))
        );
        assert!(StreamParams::parse_for(None, &WS_PARAMS, LIMITS).is_ok());
        let e = StreamParams::parse_for(None, &POLL_PARAMS, LIMITS).unwrap_err();
        assert_eq!(e.code, "missing_channel");
    }

    #[test]
    fn a_parameter_given_twice_is_refused_naming_it() {
        for name in ["cursor", "since", "token", "limit", "wait"] {
            let query = format!("channel=a&{name}=1&{name}=2");
            let e = StreamParams::parse_for(Some(&query), &POLL_PARAMS, LIMITS).unwrap_err();
            assert_eq!(e.code, "conflicting_parameters", "{name}");
            assert!(e.message.starts_with(&format!("{name}=")), "{}", e.message);
        }
    }

    #[test]
    fn a_sub_is_split_at_its_last_at_sign() {
        let sub = |channel: &str, cursor: Option<&str>, since: Option<&str>| SubParam {
            channel: channel.into(),
            cursor: cursor.map(Into::into),
            since: since.map(Into::into),
        };
        let p = StreamParams::parse(
            Some("sub=a&sub=b@hAA&sub=c@&sub=d@since:5&sub=e%40x@hBB&sub=f@g@"),
            QueryLimits {
                max_channels: 8,
                ..LIMITS
            },
        )
        .unwrap();
        assert_eq!(
            p.subs,
            [
                sub("a", None, None),
                sub("b", Some("hAA"), None),
                sub("c", None, None),
                sub("d", None, Some("5")),
                sub("e@x", Some("hBB"), None),
                sub("f@g", None, None),
            ]
        );
        assert!(p.channels.is_empty());
        // A stream position holds one cursor per `sub=`, in order.
        let starts = p.sub_starts(Some("hAA.hAA.hAA.hAA.hAA.hAA")).unwrap();
        assert!(starts.iter().all(|(_, s)| matches!(s, Start::Cursor(_))));
        assert_eq!(stream_position(["hA", "hB"]), "hA.hB");
        let e = p.sub_starts(Some("hAA.hAA")).unwrap_err();
        assert_eq!(e.code, "invalid_cursor");
        assert!(e.message.contains("2 cursors for 6"), "{}", e.message);
    }

    #[test]
    fn resume_header_wins_over_cursor_and_since() {
        let p = StreamParams::parse(Some("channel=a&since=5&cursor=hAA"), LIMITS).unwrap();
        assert_eq!(p.start(None).unwrap_err().code, "conflicting_parameters");
        assert!(matches!(p.start(Some("hAA")), Ok(Start::Cursor(_))));
        let p = StreamParams::parse(Some("channel=a&since=5"), LIMITS).unwrap();
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
        assert_eq!(parse_since("1970-01-01T00:00:00Z").unwrap(), 0);
        for bad in [
            "yesterday",
            "-5",
            "2023-11-14",
            "",
            // -1 and -2, Kafka's "end" and "beginning".
            "1969-12-31T23:59:59.999Z",
            "1969-12-31T23:59:59.998Z",
            "1970-01-01T00:30:00+01:00",
        ] {
            let e = parse_since(bad).unwrap_err();
            assert_eq!(e.code, "invalid_since", "{bad}");
        }
    }

    /// The codes docs/protocol.md names for a transport's query string.
    const QUERY_CODES: [&str; 5] = [
        "uri_too_long",
        "too_many_channels",
        "unknown_parameter",
        "missing_channel",
        "conflicting_parameters",
    ];

    /// A query parameter: a known name or not, a value of any text.
    fn param() -> impl Strategy<Value = (String, String)> {
        let name = prop_oneof![
            4 => Just("channel"), 1 => Just("cursor"), 1 => Just("since"), 1 => Just("token"),
            1 => Just("limit"), 1 => Just("wait"), 1 => Just("_"), 1 => Just("chanel"),
        ];
        let value = prop_oneof![3 => "[abc]", 1 => "\\PC{0,8}"];
        (name.prop_map(str::to_owned), value)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any query string is parameters or a documented refusal; never a
        /// panic. Accepted channels are distinct and within the limit.
        #[test]
        fn any_query_is_parameters_or_a_documented_refusal(
            query in "[a-z_=&%+0-9]{0,80}|\\PC{0,80}",
            transport in 0usize..3,
        ) {
            let accepts = [&SSE_PARAMS, &WS_PARAMS, &POLL_PARAMS][transport];
            match StreamParams::parse_for(Some(&query), accepts, LIMITS) {
                Ok(p) => {
                    prop_assert!(p.channels.len() <= LIMITS.max_channels);
                    let distinct: HashSet<&String> = p.channels.iter().collect();
                    prop_assert_eq!(distinct.len(), p.channels.len());
                }
                Err(e) => prop_assert!(QUERY_CODES.contains(&e.code), "{}: {}", query, e.code),
            }
        }

        /// Parameters as a client encodes them come back as they were: the
        /// channels each once in their first order, the other values as
        /// given. One distinct channel too many is refused, naming the
        /// limit, as is an unknown name and a value given twice.
        #[test]
        fn encoded_parameters_come_back_or_are_refused_by_name(
            params in proptest::collection::vec(param(), 0..12),
        ) {
            let query = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&params)
                .finish();
            let result = StreamParams::parse_for(Some(&query), &POLL_PARAMS, LIMITS);
            let mut channels: Vec<&str> = Vec::new();
            let mut singles: HashSet<&str> = HashSet::new();
            let mut refusal = None;
            for (name, value) in &params {
                match name.as_str() {
                    "cursor" | "since" | "token" | "limit" | "wait" if !singles.insert(name) => {
                        refusal = Some("conflicting_parameters");
                        break;
                    }
                    "channel" if !channels.contains(&value.as_str()) => {
                        if channels.len() == LIMITS.max_channels {
                            refusal = Some("too_many_channels");
                            break;
                        }
                        channels.push(value);
                    }
                    "chanel" => {
                        refusal = Some("unknown_parameter");
                        break;
                    }
                    _ => {}
                }
            }
            if refusal.is_none() && channels.is_empty() {
                refusal = Some("missing_channel");
            }
            match (result, refusal) {
                (Ok(p), None) => {
                    prop_assert_eq!(&p.channels, &channels);
                    let last = |n: &str| params.iter().rev().find(|(m, _)| m == n).map(|(_, v)| v.clone());
                    prop_assert_eq!(p.cursor, last("cursor"));
                    prop_assert_eq!(p.since, last("since"));
                    prop_assert_eq!(p.wait, last("wait"));
                }
                (Err(e), Some(code)) => {
                    prop_assert_eq!(e.code, code);
                    if code == "too_many_channels" {
                        prop_assert!(e.message.contains("limits.max_channels_per_connection"), "{}", e.message);
                    }
                }
                (got, want) => prop_assert!(false, "{query}: got {:?}, want {want:?}", got.map(|p| p.channels)),
            }
        }

        /// A query longer than `http.max_query_bytes` is `414
        /// uri_too_long` naming the limit, and only such a query is.
        #[test]
        fn only_a_query_over_the_limit_is_too_long(len in 0usize..130) {
            let limits = QueryLimits { max_bytes: 64, max_channels: 4 };
            let query = format!("channel={}", "a".repeat(len));
            match StreamParams::parse(Some(&query), limits) {
                Err(e) if query.len() > limits.max_bytes => {
                    prop_assert_eq!((e.status, e.code), (StatusCode::URI_TOO_LONG, "uri_too_long"));
                    prop_assert!(e.message.contains("http.max_query_bytes"), "{}", e.message);
                }
                Ok(_) if query.len() <= limits.max_bytes => {}
                other => prop_assert!(false, "{} bytes: {:?}", query.len(), other.map(|p| p.channels)),
            }
        }

        /// Any `since=` is a time at or after the epoch or `400
        /// invalid_since`. A negative one must never pass: Kafka reads the
        /// times -1 and -2 as "the end" and "the beginning".
        #[test]
        fn any_since_is_a_time_from_the_epoch_or_invalid_since(
            text in "\\PC{0,30}|[0-9+-]{1,20}|[0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9](\\.[0-9]{1,9})?(Z|[+-][01][0-9]:[0-5][0-9])",
        ) {
            match parse_since(&text) {
                Ok(ms) => prop_assert!(ms >= 0, "since={} gave {}", text, ms),
                Err(e) => {
                    prop_assert_eq!(e.code, "invalid_since");
                    prop_assert!(e.message.contains(&format!("{text:?}")), "{}", e.message);
                }
            }
        }

        /// Any cursor text is a cursor or `400 invalid_cursor`.
        #[test]
        fn any_cursor_is_a_position_or_invalid_cursor(text in "h[A-Za-z0-9_-]{0,20}|\\PC{0,20}") {
            if let Err(e) = start_at(Some(&text), None) {
                prop_assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_cursor"));
            }
        }
    }
}
