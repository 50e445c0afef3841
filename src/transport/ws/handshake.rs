//! The opening handshake (RFC 6455 §4.2): checking the upgrade request
//! and answering `101 Switching Protocols`.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::http::error::ApiError;
use crate::http::response::Body;

/// Checks the upgrade request (RFC 6455 §4.2.1) and returns the
/// `Sec-WebSocket-Accept` value.
pub(super) fn accept_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let refuse = |message: String| ApiError::bad_request("bad_handshake", message);
    if !has_token(header::UPGRADE, "websocket") {
        return Err(refuse(
            "/ws is the WebSocket endpoint: the request needs `Upgrade: websocket` (for plain HTTP use /sse or /poll)".into(),
        ));
    }
    if !has_token(header::CONNECTION, "upgrade") {
        return Err(refuse(
            "a WebSocket handshake needs `Connection: Upgrade`".into(),
        ));
    }
    match headers.get(header::SEC_WEBSOCKET_VERSION) {
        Some(v) if v == "13" => {}
        other => {
            return Err(refuse(format!(
                "Sec-WebSocket-Version is {:?}; Herald speaks version 13",
                other.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            )));
        }
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| refuse("Sec-WebSocket-Key is missing".into()))?;
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.as_bytes());
    if !decoded.is_ok_and(|k| k.len() == 16) {
        return Err(refuse(format!(
            "Sec-WebSocket-Key {:?} is not 16 bytes in base64",
            String::from_utf8_lossy(key.as_bytes())
        )));
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// The `101` answer to a valid upgrade request, with the
/// `Sec-WebSocket-Extensions` answer when an extension was negotiated.
pub(super) fn switching_protocols(accept: &str, extensions: Option<&str>) -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|e| match e {}).boxed_unsync());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(accept).expect("base64 is a valid header value"),
    );
    if let Some(extensions) = extensions {
        headers.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_str(extensions).expect("Herald's own answer is a valid header value"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_is_checked() {
        let mut h = HeaderMap::new();
        assert!(accept_key(&h).unwrap_err().message.contains("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert!(accept_key(&h).unwrap_err().message.contains("version 13"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        assert!(accept_key(&h).unwrap_err().message.contains("missing"));
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("short"));
        assert_eq!(accept_key(&h).unwrap_err().code, "bad_handshake");
        // RFC 6455's example.
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(accept_key(&h).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
