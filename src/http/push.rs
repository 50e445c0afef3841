//! `POST`/`DELETE /push/subscriptions` and `GET /push/vapid-public-key`:
//! a page registers its browser's push subscription for channels.
//!
//! Registering needs the same right as subscribing: the origin check and
//! the token (`Authorization: Bearer`, or `token=`) for every channel
//! listed. Then, each refusing before the next step costs anything: the
//! body bounded (`push.max_body_bytes`, `push.body_timeout`), its shape,
//! the channels (known to a route, at most
//! `push.max_channels_per_subscription`), the endpoint against
//! `push.allowed_endpoint_hosts`, the keys, the table's limits — and only
//! then the write to the subscriptions topic, answered once Kafka has it.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde::Deserialize;

use super::access::authenticate;
use super::body;
use super::error::ApiError;
use super::response::{Body, full};
use crate::app::App;
use crate::push::Push;
use crate::push::endpoint::{self, EndpointError};
use crate::push::store::{Keys, StoredSubscription, Subscription, SubscriptionId};
use crate::router::is_valid_channel;

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a JSON object {\"subscription\": {\"endpoint\", \"keys\": {\"p256dh\", \"auth\"}}, \"channels\": [string]}"
)]
struct RegisterBody {
    subscription: BrowserSubscription,
    channels: Vec<String>,
}

/// A browser's `PushSubscription.toJSON()`; `expirationTime` (and whatever
/// a browser adds) is accepted and not kept.
#[derive(Deserialize)]
struct BrowserSubscription {
    endpoint: String,
    keys: Keys,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a JSON object {\"endpoint\": string}"
)]
struct DeleteBody {
    endpoint: String,
}

fn enabled(app: &App) -> Result<&Push, ApiError> {
    app.push.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Web Push is not enabled on this node (no [push] section)",
        )
    })
}

/// `{"key"}`: the VAPID public key a page passes to
/// `pushManager.subscribe` as its `applicationServerKey`.
pub fn vapid_public_key(app: &App) -> Result<Response<Body>, ApiError> {
    let push = enabled(app)?;
    let body = serde_json::json!({"key": push.keys.public_key_base64()}).to_string();
    Ok(full(StatusCode::OK, "application/json", body))
}

/// `POST /push/subscriptions` → `201 {"id"}`.
pub async fn register<B>(app: &App, req: Request<B>) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let push = enabled(app)?;
    let token = token_param(req.uri().query())?;
    let reader = authenticate(app, req.headers(), token.as_deref()).await?;
    let config = &push.config;
    let body = read_body(req, push).await?;
    let request: RegisterBody = parse(&body)?;
    let channels = check_channels(app, push, request.channels)?;
    reader.authorize(app, &channels)?;
    let endpoint = endpoint::check(
        &request.subscription.endpoint,
        &config.allowed_endpoint_hosts,
        config.allow_http_endpoints,
    )
    .map_err(endpoint_refused)?;
    let (p256dh, auth) = request.subscription.keys.decode().map_err(|e| {
        ApiError::bad_request("invalid_subscription", format!("invalid subscription: {e}"))
    })?;
    let id = SubscriptionId::of_endpoint(&request.subscription.endpoint);
    push.store
        .check_room(
            id,
            &channels,
            config.max_subscriptions_per_channel,
            config.max_subscriptions,
        )
        .map_err(|full| {
            ApiError::new(
                StatusCode::CONFLICT,
                "too_many_subscriptions",
                full.to_string(),
            )
        })?;
    let stored = StoredSubscription {
        endpoint: request.subscription.endpoint,
        keys: request.subscription.keys,
        channels: channels.clone(),
        registered_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64,
    };
    push.registry
        .write(id, &stored)
        .await
        .map_err(kafka_unavailable)?;
    // In this node's table at once; the other nodes have it when they
    // read it from the topic (and this node reads it again, harmlessly).
    push.store.insert(Subscription {
        id,
        endpoint,
        p256dh,
        auth,
        channels: channels.into_iter().map(String::into_boxed_str).collect(),
    });
    let answer = serde_json::json!({"id": id.to_hex()}).to_string();
    Ok(full(StatusCode::CREATED, "application/json", answer))
}

/// `DELETE /push/subscriptions` `{"endpoint"}` → `204`, whether or not it
/// was registered. No token: the endpoint is the capability (an
/// unguessable URL that only the browser and the push service know, as
/// with the push service itself).
pub async fn unregister<B>(app: &App, req: Request<B>) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let push = enabled(app)?;
    token_param(req.uri().query())?;
    super::cors::check_origin(app, req.headers())?;
    let body = read_body(req, push).await?;
    let request: DeleteBody = parse(&body)?;
    if request.endpoint.len() > endpoint::MAX_ENDPOINT_BYTES {
        return Err(endpoint_refused(EndpointError::TooLong));
    }
    let id = SubscriptionId::of_endpoint(&request.endpoint);
    push.registry.remove(id).await.map_err(kafka_unavailable)?;
    push.store.remove(id);
    Ok(full(StatusCode::NO_CONTENT, "application/json", ""))
}

/// The query takes `token=` only (and `_…` cache busters).
fn token_param(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let mut token = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*name {
            "token" => token = Some(value.into_owned()),
            n if n.starts_with('_') => {}
            n => {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!("unknown query parameter {n:?} (this endpoint takes token=)"),
                ));
            }
        }
    }
    Ok(token)
}

async fn read_body<B>(req: Request<B>, push: &Push) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    body::read(
        req,
        body::Bounds {
            max_bytes: push.config.max_body_bytes,
            max_bytes_key: "push.max_body_bytes",
            timeout: push.config.body_timeout,
            timeout_key: "push.body_timeout",
        },
    )
    .await
}

/// serde would take a struct from a JSON array too; only an object is
/// accepted.
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let invalid =
        |why: String| ApiError::bad_request("invalid_body", format!("invalid body: {why}"));
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(body).map_err(|e| invalid(e.to_string())),
        None => Err(invalid("the body is empty".into())),
        Some(_) => Err(invalid("expected a JSON object".into())),
    }
}

/// Distinct, valid channels that some route produces, within the limit.
fn check_channels(app: &App, push: &Push, channels: Vec<String>) -> Result<Vec<String>, ApiError> {
    let limit = push.config.max_channels_per_subscription;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for channel in channels {
        if !is_valid_channel(&channel) {
            return Err(ApiError::bad_request(
                "invalid_channel",
                format!(
                    "invalid channel {channel:?}: a channel name is 1 to 255 bytes with no control characters"
                ),
            ));
        }
        if !seen.insert(channel.clone()) {
            continue;
        }
        if out.len() == limit {
            return Err(ApiError::bad_request(
                "too_many_channels",
                format!("more than push.max_channels_per_subscription ({limit}) channels"),
            ));
        }
        let positions = app.hub.positions();
        if app
            .hub
            .router()
            .topics_for_channel(&channel, positions.topics())
            .is_none()
        {
            return Err(ApiError::bad_request(
                "unknown_channel",
                format!("no route produces channel {channel:?}"),
            ));
        }
        out.push(channel);
    }
    if out.is_empty() {
        return Err(ApiError::bad_request(
            "missing_channel",
            "`channels` lists no channel",
        ));
    }
    Ok(out)
}

fn endpoint_refused(e: EndpointError) -> ApiError {
    let code = match e {
        EndpointError::HostNotAllowed(_) | EndpointError::Scheme => "endpoint_not_allowed",
        EndpointError::Malformed | EndpointError::TooLong => "invalid_subscription",
    };
    ApiError::bad_request(code, e.to_string())
}

fn kafka_unavailable(e: crate::push::registry::WriteError) -> ApiError {
    tracing::warn!("push subscriptions: {e}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "kafka_unavailable",
        e.to_string(),
    )
}
