//! The one error type of the HTTP edge, [`ApiError`]: a status, a stable
//! code (listed in `docs/protocol.md`) and a message naming what was wrong,
//! rendered as `{"error":{"code","message"}}`.

use http::{HeaderValue, Response, StatusCode, header};

use super::response::{Body, full};
use crate::hub::SubscribeError;
use crate::metrics::Metrics;

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
