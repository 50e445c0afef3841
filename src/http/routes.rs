//! The request router: which handler answers which method and path, and
//! the small endpoints of Herald's own (`/metrics`, `/healthz`, `/readyz`,
//! `/herald.js`, `/herald-sw.js`, the demo page). `POST /publish` is [`super::publish`]'s.

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::cors::{finish_response, preflight};
use super::error::ApiError;
use super::response::{Body, full};
use super::{admin_api, publish, push};
use crate::app::App;
use crate::transport;

/// Which listener a request came in on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Surface {
    /// `http.listen`: clients.
    Public,
    /// `http.admin_listen`: `/metrics`, `/healthz`, `/readyz`, and the
    /// admin API (`/admin/…`, with `[admin]`).
    Admin,
}

/// Answers one request that came in on `surface`.
pub async fn route(app: &Arc<App>, mut req: Request<Incoming>, surface: Surface) -> Response<Body> {
    if let Some(response) = probe(app, &req, surface) {
        return response;
    }
    if surface == Surface::Admin {
        let path = req.uri().path();
        if path == "/admin" || path.starts_with("/admin/") {
            return admin_api::handle(app, &req);
        }
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "the admin listener serves /metrics, /healthz, /readyz and /admin/…, not {path}"
            ),
        )
        .into_response(&app.metrics);
    }
    let result = match (req.method(), req.uri().path()) {
        (&Method::GET, "/sse") => transport::sse::handle(app, &req).await,
        (&Method::GET, "/ws") => transport::ws::handle(app, &mut req).await,
        (&Method::GET, "/poll") => transport::poll::handle(app, &req).await,
        // Every method on /publish, OPTIONS included: publishing is for
        // backends, which send no CORS preflight.
        (_, "/publish") if app.publishing.is_none() => Err(publish::not_enabled()),
        // Publishing is for backends: no CORS headers.
        (&Method::POST, "/publish") => {
            let result = publish::handle(app, req).await;
            return result.unwrap_or_else(|e| e.into_response(&app.metrics));
        }
        (method, "/publish") => Ok(publish::method_not_allowed(app, method)),
        (&Method::GET, "/herald.js") => Ok(herald_js()),
        (&Method::GET, "/herald-sw.js") => Ok(herald_sw_js()),
        (&Method::GET, "/push/vapid-public-key") => push::vapid_public_key(app),
        // Registrations come from pages: CORS headers, from the request
        // head kept aside (the handlers take the body).
        (&Method::POST, "/push/subscriptions") => {
            let headers = req.headers().clone();
            return finish_response(app, &headers, push::register(app, req).await);
        }
        (&Method::DELETE, "/push/subscriptions") => {
            let headers = req.headers().clone();
            return finish_response(app, &headers, push::unregister(app, req).await);
        }
        (&Method::GET, "/") if app.config().http.demo_page => Ok(full(
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
        (&Method::OPTIONS, _) => return preflight(app, req.headers()),
        (_, "/sse" | "/ws" | "/poll" | "/push/subscriptions" | "/push/vapid-public-key") => {
            Err(method_not_allowed(&req))
        }
        (_, path) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such endpoint: {path}"),
        )),
    };
    finish_response(app, req.headers(), result)
}

/// Herald's own endpoints for its operators, `/metrics`, `/healthz` and
/// `/readyz`: never CORS headers, never an origin check. With
/// `http.admin_listen` set, `/metrics` is served only there.
fn probe<B>(app: &App, req: &Request<B>, surface: Surface) -> Option<Response<Body>> {
    let path = req.uri().path();
    let metrics_here = surface == Surface::Admin || app.config().http.admin_listen.is_none();
    let response = match path {
        "/metrics" if !metrics_here => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "/metrics is served on the admin listener (http.admin_listen)",
        )
        .into_response(&app.metrics),
        "/metrics" | "/healthz" | "/readyz" if req.method() != Method::GET => {
            method_not_allowed(req).into_response(&app.metrics)
        }
        "/metrics" => metrics(app),
        "/healthz" => full(StatusCode::OK, "application/json", r#"{"status":"ok"}"#),
        "/readyz" => readyz(app),
        _ => return None,
    };
    Some(response)
}

fn method_not_allowed<B>(req: &Request<B>) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Whether `req` is a probe: health, readiness or metrics. A probe is
/// answered even when the node holds `limits.max_connections` (see
/// [`limits`](super::limits)): a node full of clients is alive and ready,
/// and must be able to say so.
pub fn is_probe<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET && matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics")
}

/// The browser client, `client/herald.js`, built into the binary.
fn herald_js() -> Response<Body> {
    client_script(include_str!("../../client/herald.js"))
}

/// The Web Push service worker, `client/herald-sw.js`, built into the
/// binary.
fn herald_sw_js() -> Response<Body> {
    client_script(include_str!("../../client/herald-sw.js"))
}

fn client_script(source: &'static str) -> Response<Body> {
    let mut response = full(StatusCode::OK, "text/javascript; charset=utf-8", source);
    // Short enough that an upgraded Herald's client reaches browsers soon.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

fn readyz(app: &App) -> Response<Body> {
    if app.ends.is_draining() {
        // The load balancer takes the node out; it goes on serving what
        // it is asked for (`/metrics` included) until it is stopped.
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this node is draining (POST /admin/drain): it takes no new subscriptions",
        )
        .into_response(&app.metrics)
    } else if app.hub.is_ready() {
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
    app.metrics.ready.set(i64::from(app.hub.is_ready()));
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
