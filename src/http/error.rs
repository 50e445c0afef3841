//! The one error type of the HTTP edge, [`ApiError`]: a status, a stable
//! code (listed in `docs/protocol.md`) and a message naming what was wrong,
//! rendered as `{"error":{"code","message"}}`.

use http::{HeaderValue, Response, StatusCode, header};

use super::response::{Body, full};
use crate::hub::SubscribeError;
use crate::metrics::Metrics;

/// Every `(status, code)` Herald answers with, as listed in the error
/// tables of `docs/protocol.md` (tests/metrics.rs holds the two equal).
/// Each pair's `herald_http_errors_total` series exists from the start, so
/// dashboards and alerts see zeros rather than no data.
pub const CODES: &[(u16, &str)] = &[
    (400, "bad_handshake"),
    (400, "bad_request"),
    (400, "conflicting_parameters"),
    (400, "cursor_ahead"),
    (400, "endpoint_not_allowed"),
    (400, "invalid_body"),
    (400, "invalid_channel"),
    (400, "invalid_cursor"),
    (400, "invalid_limit"),
    (400, "invalid_since"),
    (400, "invalid_subscription"),
    (400, "invalid_wait"),
    (400, "key_mismatch"),
    (400, "missing_channel"),
    (400, "since_unsupported"),
    (400, "too_many_channels"),
    (400, "unknown_channel"),
    (400, "unknown_parameter"),
    (400, "unpublishable_channel"),
    (401, "invalid_api_key"),
    (401, "invalid_token"),
    (401, "token_expired"),
    (401, "token_revoked"),
    (403, "forbidden_channel"),
    (403, "origin_not_allowed"),
    (404, "not_found"),
    (405, "method_not_allowed"),
    (408, "body_timeout"),
    (408, "head_timeout"),
    (409, "cursor_expired"),
    (409, "reload_refused"),
    (409, "replay_too_large"),
    (409, "too_many_subscriptions"),
    (413, "body_too_large"),
    (414, "uri_too_long"),
    (429, "too_many_connections_per_ip"),
    (429, "too_many_pending_connections_per_ip"),
    (429, "too_many_replays_per_ip"),
    (431, "head_too_large"),
    (502, "kafka_refused"),
    (503, "auth_unavailable"),
    (503, "draining"),
    (503, "kafka_unavailable"),
    (503, "not_ready"),
    (503, "replay_busy"),
    (503, "replay_failed"),
    (503, "too_many_connections"),
    (503, "too_many_long_polls"),
    (503, "too_many_pending_connections"),
];

/// Creates every series of [`CODES`] in `herald_http_errors_total`.
pub fn seed_metrics(metrics: &Metrics) {
    for (status, code) in CODES {
        metrics
            .http_errors
            .with_label_values(&[status.to_string().as_str(), code]);
    }
}

/// A request Herald refuses, rendered as `{"error":{"code","message"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The channel the refusal is about, in a request for several channels
    /// each on its own (`sub=`): rendered as `"channel"` beside `code`, so
    /// a client can tell which of its subscriptions is refused.
    pub channel: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        debug_assert!(
            CODES.contains(&(status.as_u16(), code)),
            "{status} {code} is not in CODES (nor, then, in docs/protocol.md)"
        );
        ApiError {
            status,
            code,
            message: message.into(),
            channel: None,
        }
    }

    /// This refusal, about `channel` (see [`ApiError::channel`]).
    pub fn for_channel(mut self, channel: &str) -> Self {
        self.channel = Some(channel.to_owned());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// The JSON error response, counted in `herald_http_errors_total`; the
    /// refusals a client should retry carry `Retry-After`.
    pub fn into_response(self, metrics: &Metrics) -> Response<Body> {
        metrics
            .http_errors
            .with_label_values(&[self.status.as_str(), self.code])
            .inc();
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(channel) = self.channel {
            error["channel"] = channel.into();
        }
        let body = serde_json::json!({ "error": error }).to_string();
        let mut response = full(self.status, "application/json", body);
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<SubscribeError> for ApiError {
    fn from(e: SubscribeError) -> Self {
        let (status, code) = match &e {
            SubscribeError::NoChannels => (StatusCode::BAD_REQUEST, "missing_channel"),
            SubscribeError::TooManyChannels { .. } => {
                (StatusCode::BAD_REQUEST, "too_many_channels")
            }
            SubscribeError::InvalidChannel(_) => (StatusCode::BAD_REQUEST, "invalid_channel"),
            SubscribeError::UnknownChannel(_) => (StatusCode::BAD_REQUEST, "unknown_channel"),
            SubscribeError::CursorTopic { .. } => (StatusCode::BAD_REQUEST, "invalid_cursor"),
            SubscribeError::CursorPartition { .. } => (StatusCode::BAD_REQUEST, "invalid_cursor"),
            SubscribeError::CursorTooOld { .. } => (StatusCode::CONFLICT, "cursor_expired"),
            SubscribeError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            SubscribeError::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
            SubscribeError::ReplayTooLarge { .. } => (StatusCode::CONFLICT, "replay_too_large"),
            SubscribeError::ReplayBusy { .. } | SubscribeError::LookupsBusy { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "replay_busy")
            }
            SubscribeError::ReplaysPerClient { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_replays_per_ip")
            }
            SubscribeError::Kafka(_) => (StatusCode::SERVICE_UNAVAILABLE, "kafka_unavailable"),
            SubscribeError::CursorAhead { .. } => (StatusCode::BAD_REQUEST, "cursor_ahead"),
            SubscribeError::SinceNeedsKafka | SubscribeError::SinceUnanswered { .. } => {
                (StatusCode::BAD_REQUEST, "since_unsupported")
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// The refusal for a subscription that ended with
/// [`CloseReason::ReplayFailed`](crate::hub::CloseReason): reading older
/// records back from Kafka failed (`failure` says why) or timed out.
pub fn replay_failed(failure: Option<&str>) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "replay_failed",
        format!(
            "reading older records back from Kafka failed: {}",
            failure.unwrap_or("unknown error")
        ),
    )
}

/// The refusal of a long poll whose token's subject was disconnected
/// while it waited (`POST /admin/disconnect`).
pub fn token_revoked() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "token_revoked",
        "the token's subject was disconnected by the operator (POST /admin/disconnect): get a fresh token before polling again",
    )
}
