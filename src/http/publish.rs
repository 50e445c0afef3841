//! `POST /publish`: a backend without a Kafka client produces a record
//! through Herald. It is an HTTP endpoint, not a transport: the record goes
//! to Kafka and reaches subscribers from there, like any other, so every
//! node sees it and cursors and resume work as for records produced with a
//! Kafka client.
//!
//! In order, each step refusing before the next costs anything: publishing
//! configured (else `404`), the API key (`401`, compared in constant time
//! before the body is read), the body bounded by `publish.max_body_bytes`
//! and `publish.body_timeout` (`413`, `408`), its shape (`400
//! invalid_body`), the channel inverted to a topic and key by the router
//! (`400 unpublishable_channel`), then the produce, answered once Kafka
//! acknowledged it (`503`/`502` when it did not).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::body;
use super::error::ApiError;
use super::response::{Body, full};
use crate::app::{App, Publishing};
use crate::config::PublishConfig;
use crate::kafka::producer::ProduceError;
use crate::router::{PublishRefusal, is_valid_channel};

/// The request body: exactly these fields.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a JSON object {\"channel\": string, \"data\": any JSON, \"key\": string (optional)}"
)]
struct PublishBody {
    #[serde(deserialize_with = "channel_field")]
    channel: String,
    data: Box<RawValue>,
    #[serde(default, deserialize_with = "key_field")]
    key: Option<String>,
}

/// serde's own type errors do not name the field; these do.
fn channel_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d)
        .map_err(|e| serde::de::Error::custom(format!("`channel` must be a string: {e}")))
}

fn key_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
        .map_err(|e| serde::de::Error::custom(format!("`key` must be a string or null: {e}")))
}

/// Answers `POST /publish` (`404 not_found` when `[publish]` is not
/// configured).
pub async fn handle<B>(app: &Arc<App>, req: Request<B>) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (Some(publishing), Some(config)) = (&app.publishing, &app.config().publish) else {
        return Err(not_enabled());
    };
    if let Err(refusal) = authorize(publishing, req.headers()) {
        return Ok(refusal.into_response(app));
    }
    let body = read_body(req, config).await?;
    let request = parse_body(&body)?;
    if !is_valid_channel(&request.channel) {
        return Err(ApiError::bad_request(
            "invalid_channel",
            format!(
                "invalid channel {:?}: a channel name is 1 to 255 bytes with no control characters",
                request.channel
            ),
        ));
    }
    let target = app
        .hub
        .router()
        .produce_target(&request.channel, request.key.as_deref())
        .map_err(|refusal| {
            let code = match refusal {
                PublishRefusal::KeyMismatch { .. } => "key_mismatch",
                PublishRefusal::NoRoute { .. } | PublishRefusal::NotInvertible { .. } => {
                    "unpublishable_channel"
                }
            };
            ApiError::bad_request(code, refusal.to_string())
        })?;
    // `data` is produced as the JSON text it was sent as, byte for byte:
    // subscribers get it embedded as JSON, like any JSON record.
    let produced = publishing
        .publisher
        .produce(&target, request.data.get().as_bytes())
        .await
        .map_err(|e| {
            let (status, code) = match &e {
                ProduceError::TimedOut { .. } | ProduceError::Unavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "kafka_unavailable")
                }
                ProduceError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
                ProduceError::Refused(_) => (StatusCode::BAD_GATEWAY, "kafka_refused"),
            };
            tracing::warn!(channel = %request.channel, topic = %target.topic, "publish failed: {e}");
            ApiError::new(status, code, e.to_string())
        })?;
    tracing::debug!(
        channel = %request.channel,
        topic = %produced.topic,
        partition = produced.partition,
        offset = produced.offset,
        "published"
    );
    let answer = serde_json::json!({
        "topic": produced.topic,
        "partition": produced.partition,
        "offset": produced.offset,
    });
    Ok(full(StatusCode::OK, "application/json", answer.to_string()))
}

/// The body as a [`PublishBody`]. serde would also take a struct from a
/// JSON array (fields in order), so anything but an object is refused
/// first.
fn parse_body(body: &[u8]) -> Result<PublishBody, ApiError> {
    let invalid =
        |why: String| ApiError::bad_request("invalid_body", format!("invalid publish body: {why}"));
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => return Err(invalid("the body is empty".into())),
        Some(_) => {
            return Err(invalid(
                "expected a JSON object {\"channel\": string, \"data\": any JSON, \"key\": string (optional)}"
                    .into(),
            ));
        }
    }
    serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))
}

/// The answer on `/publish` when `[publish]` is not configured.
pub fn not_enabled() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "publishing is not enabled on this node: POST /publish needs a [publish] section with API keys in the config",
    )
}

/// The answer to another method than `POST` on an enabled `/publish`.
pub fn method_not_allowed(app: &App, method: &http::Method) -> Response<Body> {
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on /publish: use POST"),
    )
    .into_response(&app.metrics);
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// A `401`: its `WWW-Authenticate` says a Bearer credential is expected
/// (with RFC 6750's `invalid_token` when one was given and is wrong).
struct Unauthorized {
    message: &'static str,
    challenge: &'static str,
}

impl Unauthorized {
    fn into_response(self, app: &App) -> Response<Body> {
        let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", self.message)
            .into_response(&app.metrics);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(self.challenge),
        );
        response
    }
}

/// Checks `Authorization: Bearer <api key>`. The key is compared with
/// every configured key in constant time, and never logged or echoed.
fn authorize(publishing: &Publishing, headers: &http::HeaderMap) -> Result<(), Unauthorized> {
    let missing = Unauthorized {
        message: "POST /publish needs an API key: Authorization: Bearer <api key>",
        challenge: "Bearer realm=\"herald\"",
    };
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(missing);
    };
    let value = value.as_bytes();
    let Some(space) = value.iter().position(|b| *b == b' ') else {
        return Err(missing);
    };
    if !value[..space].eq_ignore_ascii_case(b"bearer") {
        return Err(missing);
    }
    let presented = value[space..].trim_ascii();
    if publishing.keys.admits(presented) {
        Ok(())
    } else {
        Err(Unauthorized {
            message: "the API key is not valid",
            challenge: "Bearer realm=\"herald\", error=\"invalid_token\"",
        })
    }
}

/// The body, bounded by `publish.max_body_bytes` and
/// `publish.body_timeout`.
async fn read_body<B>(req: Request<B>, config: &PublishConfig) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    body::read(
        req,
        body::Bounds {
            max_bytes: config.max_body_bytes,
            max_bytes_key: "publish.max_body_bytes",
            timeout: config.body_timeout,
            timeout_key: "publish.body_timeout",
        },
    )
    .await
}
