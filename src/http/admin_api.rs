//! The admin API, `/admin/…` on the admin listener (`http.admin_listen`)
//! only, behind the keys of `[admin]` (`Authorization: Bearer <key>`,
//! compared in constant time with every key, as the publish keys are):
//!
//! - `GET /admin/channels[?prefix=…][&limit=…]`: the channels that have
//!   subscribers, each with how many per transport;
//! - `POST /admin/disconnect?sub=…`: ends every stream opened with a token
//!   of that subject (SSE `event: reconnect` with reason `token_revoked`,
//!   WebSocket close `4003`, a waiting long poll `401 token_revoked`);
//! - `POST /admin/reload`: re-reads the config file, as SIGHUP does;
//! - `POST /admin/drain`: ends every stream with "reconnect elsewhere" as
//!   at shutdown, refuses new subscriptions (`503 draining`) and makes
//!   `/readyz` answer `503 draining`, without stopping the node.
//!
//! Without `[admin]` every `/admin/…` path is `404`: nothing is open by
//! default.

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use super::error::ApiError;
use super::response::{Body, full};
use crate::app::App;
use crate::hub::SubscriberKind;

/// Channels `GET /admin/channels` lists when no `limit=` is given.
const DEFAULT_CHANNEL_LIMIT: usize = 1000;

/// The largest `limit=`: bounds one answer (about 100 bytes a channel).
const MAX_CHANNEL_LIMIT: usize = 100_000;

/// Longest `sub=` taken: a subject is an identifier, and this bounds what
/// a request makes Herald hash and compare.
const MAX_SUBJECT_LEN: usize = 1024;

/// Answers one request to `/admin/…`.
pub fn handle<B>(app: &App, req: &Request<B>) -> Response<Body> {
    let result = authorize(app, req).and_then(|()| {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/admin/channels") => channels(app, req),
            (&Method::POST, "/admin/disconnect") => disconnect(app, req),
            (&Method::POST, "/admin/drain") => Ok(drain(app)),
            (&Method::POST, "/admin/reload") => reload(app),
            (_, "/admin/channels") => Err(wrong_method(req, "GET")),
            (_, "/admin/disconnect" | "/admin/drain" | "/admin/reload") => {
                Err(wrong_method(req, "POST"))
            }
            (_, path) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no such admin endpoint: {path} (there are GET /admin/channels, POST /admin/disconnect, POST /admin/drain, POST /admin/reload)"
                ),
            )),
        }
    });
    let mut response = result.unwrap_or_else(|e| e.into_response(&app.metrics));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The presented key must be one of `[admin]`'s. Never echoed, never
/// logged.
fn authorize<B>(app: &App, req: &Request<B>) -> Result<(), ApiError> {
    let Some(keys) = &app.admin_keys else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the admin API is off on this node: it needs an [admin] section with api_keys (and http.admin_listen)",
        ));
    };
    let refuse = |message: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            message.to_owned(),
        )
    };
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(refuse(
            "the admin API needs an admin key: Authorization: Bearer <key of admin.api_keys>",
        ));
    };
    let value = value.as_bytes();
    let presented = match value.iter().position(|b| *b == b' ') {
        Some(space) if value[..space].eq_ignore_ascii_case(b"bearer") => &value[space + 1..],
        _ => {
            return Err(refuse(
                "the Authorization header must be `Bearer <key of admin.api_keys>`",
            ));
        }
    };
    if keys.admits(presented.trim_ascii()) {
        Ok(())
    } else {
        Err(refuse("the key is not one of admin.api_keys"))
    }
}

fn wrong_method<B>(req: &Request<B>, allowed: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}: use {allowed}",
            req.method(),
            req.uri().path()
        ),
    )
}

/// The query's parameters, each at most once; one not in `known` is
/// `400 unknown_parameter`.
fn params<B>(req: &Request<B>, known: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let mut found: Vec<(String, String)> = Vec::new();
    for (name, value) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        if !known.contains(&&*name) {
            return Err(ApiError::bad_request(
                "unknown_parameter",
                format!(
                    "unknown parameter {name:?} on {} (known: {})",
                    req.uri().path(),
                    known.join(", ")
                ),
            ));
        }
        if found.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::bad_request(
                "conflicting_parameters",
                format!("{name}= given twice"),
            ));
        }
        found.push((name.into_owned(), value.into_owned()));
    }
    Ok(found)
}

fn param<'a>(found: &'a [(String, String)], name: &str) -> Option<&'a str> {
    found
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `GET /admin/channels`: `{"channels":[{"channel","subscribers":{"sse",
/// "ws","poll","other"},"total"}…],"count","truncated"}`, sorted by name.
fn channels<B>(app: &App, req: &Request<B>) -> Result<Response<Body>, ApiError> {
    let found = params(req, &["prefix", "limit"])?;
    let prefix = param(&found, "prefix").unwrap_or("");
    let limit = match param(&found, "limit") {
        None => DEFAULT_CHANNEL_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_CHANNEL_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_limit",
                    format!("limit={v:?}: must be a whole number from 1 to {MAX_CHANNEL_LIMIT}"),
                ));
            }
        },
    };
    let (listed, count) = app.hub.channel_counts(prefix, limit);
    let channels: Vec<serde_json::Value> = listed
        .iter()
        .map(|c| {
            let mut subscribers = serde_json::Map::new();
            for (kind, n) in SubscriberKind::ALL.iter().zip(c.counts) {
                subscribers.insert(kind.name().to_owned(), n.into());
            }
            serde_json::json!({
                "channel": &*c.channel,
                "subscribers": subscribers,
                "total": c.counts.iter().sum::<usize>(),
            })
        })
        .collect();
    let body = serde_json::json!({
        "channels": channels,
        "count": count,
        "truncated": count > listed.len(),
    });
    Ok(full(StatusCode::OK, "application/json", body.to_string()))
}

/// `POST /admin/disconnect?sub=…`: `{"sub","disconnected"}`, the number
/// of streams told to end.
fn disconnect<B>(app: &App, req: &Request<B>) -> Result<Response<Body>, ApiError> {
    let found = params(req, &["sub"])?;
    let sub = match param(&found, "sub") {
        Some(sub) if !sub.is_empty() && sub.len() <= MAX_SUBJECT_LEN => sub,
        Some(sub) => {
            return Err(ApiError::bad_request(
                "bad_request",
                format!(
                    "sub= is {} bytes: a token subject is 1 to {MAX_SUBJECT_LEN} bytes",
                    sub.len()
                ),
            ));
        }
        None => {
            return Err(ApiError::bad_request(
                "bad_request",
                "POST /admin/disconnect needs sub=<the token subject (sub claim) to disconnect>",
            ));
        }
    };
    let disconnected = app.ends.revoke(sub);
    tracing::info!(sub, disconnected, "admin: disconnected a token subject");
    let body = serde_json::json!({"sub": sub, "disconnected": disconnected});
    Ok(full(StatusCode::OK, "application/json", body.to_string()))
}

/// `POST /admin/drain`: `{"status":"draining","already"}`.
/// Re-reads the config file as SIGHUP does; a refusal says why, and the
/// running config stays.
fn reload(app: &App) -> Result<Response<Body>, ApiError> {
    app.reload_from_source()
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "reload_refused", e.to_string()))?;
    let body = serde_json::json!({"status": "reloaded"});
    Ok(full(StatusCode::OK, "application/json", body.to_string()))
}

fn drain(app: &App) -> Response<Body> {
    app.hub.drain();
    let already = app.ends.drain();
    if !already {
        tracing::warn!(
            "admin: draining; streams told to reconnect elsewhere, new subscriptions refused, /readyz 503 (restart to serve again)"
        );
    }
    let body = serde_json::json!({"status": "draining", "already": already});
    full(StatusCode::OK, "application/json", body.to_string())
}
