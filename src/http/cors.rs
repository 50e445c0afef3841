//! Which web pages may use Herald: the `Origin` check and CORS headers
//! (`http.allowed_origins`).
//!
//! A browser names the page's origin in `Origin` on every WebSocket
//! upgrade and every cross-origin request. A streaming or polling request
//! whose `Origin` is neither listed nor Herald's own (the `Host` it was sent
//! to) is refused with `403 origin_not_allowed`, so that no other web site
//! can read a channel through its visitors' browsers (their tokens, their
//! network position). A request without `Origin` (curl, a backend) is not a
//! browser's cross-origin request and passes. CORS headers name only a
//! listed origin, echoed back with `Vary: Origin`; Herald's admin endpoints
//! (`/metrics`, `/healthz`, `/readyz`) never carry them.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::error::ApiError;
use super::response::{Body, full};
use crate::app::App;

/// Whether a request from the origin in `headers` may go on.
pub fn check_origin(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    if is_listed(app, origin) || is_same_origin(origin, headers) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        format!(
            "requests from origin {:?} are not allowed (http.allowed_origins)",
            String::from_utf8_lossy(origin.as_bytes())
        ),
    ))
}

fn is_listed(app: &App, origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    app.config()
        .http
        .allowed_origins
        .iter()
        .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
}

/// `Origin`'s host and port are the `Host` the request was sent to: a page
/// Herald served itself (the demo page).
fn is_same_origin(origin: &HeaderValue, headers: &HeaderMap) -> bool {
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(HeaderValue::to_str),
    ) else {
        return false;
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

/// A handler's result as the response to send: errors rendered as JSON
/// (and counted), CORS headers added for a listed origin.
pub fn finish_response(
    app: &App,
    request: &HeaderMap,
    result: Result<Response<Body>, ApiError>,
) -> Response<Body> {
    let mut response = result.unwrap_or_else(|e| e.into_response(&app.metrics));
    add_cors(app, request, &mut response);
    response
}

/// CORS headers on `response` when the request came from a listed origin.
fn add_cors(app: &App, request: &HeaderMap, response: &mut Response<Body>) {
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    let Some(origin) = request.get(header::ORIGIN).filter(|o| is_listed(app, o)) else {
        return;
    };
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("retry-after"),
    );
}

/// The answer to a CORS preflight (`OPTIONS` with
/// `Access-Control-Request-Method`): what a listed origin may send.
pub fn preflight(app: &App, request: &HeaderMap) -> Response<Body> {
    let listed = request
        .get(header::ORIGIN)
        .is_some_and(|o| is_listed(app, o));
    if !listed {
        let e = ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "CORS preflight from an origin not in http.allowed_origins",
        );
        return finish_response(app, request, Err(e));
    }
    let mut response = full(StatusCode::NO_CONTENT, "text/plain", "");
    add_cors(app, request, &mut response);
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, last-event-id"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}
