//! CORS: the headers a handler's response carries for browsers on other
//! origins (`http.cors_allow_origin`).

use http::{HeaderValue, Response, header};

use super::error::ApiError;
use super::response::Body;
use crate::app::App;

/// A handler's result as the response to send: errors rendered as JSON
/// (and counted), CORS headers added.
pub fn finish_response(app: &App, result: Result<Response<Body>, ApiError>) -> Response<Body> {
    let mut response = result.unwrap_or_else(|e| e.into_response(&app.metrics));
    let origin = &app.config.http.cors_allow_origin;
    if !origin.is_empty()
        && let Ok(value) = HeaderValue::from_str(origin)
    {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("last-event-id, authorization, content-type"),
        );
    }
    response
}
