//! Request bodies, read whole and bounded: the endpoints that take one
//! (`POST /publish`, `/push/subscriptions`) refuse a body that is too
//! large before reading it when `Content-Length` says so, as soon as too
//! many bytes arrived otherwise, and one that arrives too slowly.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::ApiError;

/// The limits of one endpoint, with the config keys that set them (named
/// in the refusals).
pub struct Bounds {
    pub max_bytes: usize,
    pub max_bytes_key: &'static str,
    pub timeout: Duration,
    pub timeout_key: &'static str,
}

/// The whole body: `413 body_too_large`, `408 body_timeout`, or `400
/// invalid_body` when the connection fails while it is read.
pub async fn read<B>(req: Request<B>, bounds: Bounds) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the body is larger than {} ({} bytes)",
                bounds.max_bytes_key, bounds.max_bytes
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > bounds.max_bytes as u64) {
        return Err(too_large());
    }
    let limited = Limited::new(req.into_body(), bounds.max_bytes);
    match tokio::time::timeout(bounds.timeout, limited.collect()).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive within {} ({})",
                bounds.timeout_key,
                humantime::format_duration(bounds.timeout)
            ),
        )),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(
            "invalid_body",
            format!("reading the body failed: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}
