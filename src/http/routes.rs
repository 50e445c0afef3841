//! The request router: which handler answers which method and path, and
//! the small endpoints of Herald's own (`/metrics`, `/healthz`, `/readyz`,
//! `/herald.js`, the demo page). `POST /publish` is [`super::publish`]'s.

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::cors::finish_response;
use super::error::ApiError;
use super::publish;
use super::response::{Body, full};
use crate::app::App;
use crate::transport;

/// Answers one request.
pub async fn route(app: &Arc<App>, mut req: Request<Incoming>) -> Response<Body> {
    let result = match (req.method(), req.uri().path()) {
        (&Method::GET, "/sse") => transport::sse::handle(app, &req).await,
        (&Method::GET, "/ws") => transport::ws::handle(app, &mut req).await,
        (&Method::GET, "/poll") => transport::poll::handle(app, &req).await,
        // Every method on /publish, OPTIONS included: publishing is for
        // backends, which send no CORS preflight.
        (_, "/publish") if app.publishing.is_none() => Err(publish::not_enabled()),
        (&Method::POST, "/publish") => publish::handle(app, req).await,
        (method, "/publish") => Ok(publish::method_not_allowed(app, method)),
        (&Method::GET, "/metrics") => Ok(metrics(app)),
        (&Method::GET, "/herald.js") => Ok(herald_js()),
        (&Method::GET, "/healthz") => Ok(full(
            StatusCode::OK,
            "application/json",
            r#"{"status":"ok"}"#,
        )),
        (&Method::GET, "/readyz") => Ok(readyz(app)),
        (&Method::GET, "/") if app.config.http.demo_page => Ok(full(
            StatusCode::OK,
            "text/html; charset=utf-8",
            include_str!("../../static/index.html"),
        )),
        (&Method::GET, "/dev/info") if app.dev_info.is_some() => Ok(full(
            StatusCode::OK,
            "application/json",
            app.dev_info
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_default(),
        )),
        (&Method::OPTIONS, _) => Ok(full(StatusCode::NO_CONTENT, "text/plain", "")),
        (_, "/sse" | "/ws" | "/poll" | "/metrics" | "/healthz" | "/readyz") => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed on {}", req.method(), req.uri().path()),
        )),
        (_, path) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such endpoint: {path}"),
        )),
    };
    finish_response(app, result)
}

/// The browser client, `client/herald.js`, built into the binary.
fn herald_js() -> Response<Body> {
    let mut response = full(
        StatusCode::OK,
        "text/javascript; charset=utf-8",
        include_str!("../../client/herald.js"),
    );
    // Short enough that an upgraded Herald's client reaches browsers soon.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

fn readyz(app: &App) -> Response<Body> {
    if app.hub.is_ready() {
        full(StatusCode::OK, "application/json", r#"{"status":"ready"}"#)
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "Kafka partitions are not assigned or their positions are not known yet",
        )
        .into_response(&app.metrics)
    }
}

fn metrics(app: &App) -> Response<Body> {
    // Lag: the high watermark from librdkafka's latest statistics minus the
    // ingest's live position.
    for (topic, partition, position) in app.hub.positions().iter() {
        if let Some((_, high)) = app.watermarks.get(topic, partition) {
            app.metrics
                .partition_lag
                .with_label_values(&[&**topic, &partition.to_string()])
                .set((high - position).max(0));
        }
    }
    full(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        app.metrics.render(),
    )
}
