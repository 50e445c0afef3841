//! Server-Sent Events: `GET /sse?channel=…[&cursor=…]`.
//!
//! The stream opens with `retry:` and a `subscribed` event carrying the
//! starting cursor as its `id:` (so a browser that reconnects before any
//! message still resumes where it was), then one event per message: `id:` is the cursor
//! after it, `data:` the envelope on one line. A `: heartbeat` comment keeps
//! idle streams alive. When Herald shuts down or drains, the client falls
//! too far behind, or the operator disconnects its token's subject, a
//! final `event: reconnect` says why and the stream ends; the browser
//! reconnects by itself with `Last-Event-ID`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::time::{Interval, MissedTickBehavior, Sleep};

use super::{ConnectionGauge, observe_delivered};
use crate::app::App;
use crate::http::access;
use crate::http::error::ApiError;
use crate::http::limits::ClientAddr;
use crate::http::query::{QueryLimits, StreamParams};
use crate::http::response::Body;
use crate::hub::{CloseReason, Delivery, SubscriberKind, Subscription};
use crate::metrics::Metrics;
use crate::stream_ends::EndSignal;

/// Messages encoded into one write. Coalescing a burst into one chunk
/// saves a syscall per message; the cap bounds the chunk size.
const MAX_BATCH: usize = 256;

const TRANSPORT: &str = "sse";

pub async fn handle<B>(app: &Arc<App>, req: &Request<B>) -> Result<Response<Body>, ApiError> {
    let params = StreamParams::parse(req.uri().query(), QueryLimits::of(&app.config()))?;
    let reader = access::authenticate(app, req.headers(), params.token.as_deref()).await?;
    reader.authorize(app, &params.channels)?;
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("invalid_cursor", "Last-Event-ID is not ASCII"))
        })
        .transpose()?;
    let start = params.start(last_event_id)?;
    let subscription = app
        .hub
        .subscribe_from(&params.channels, start, ClientAddr::of(req))
        .await?;
    subscription.count_as(SubscriberKind::Sse);

    let mut heartbeat = tokio::time::interval(app.config().sse.heartbeat);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    heartbeat.reset();
    let stream = SseStream {
        opening: Some(opening(
            app.config().sse.retry.as_millis(),
            subscription.channels(),
            &subscription.cursor(),
        )),
        subscription,
        heartbeat,
        expiry: reader.time_left().map(|d| Box::pin(tokio::time::sleep(d))),
        end: app.ends.watch(reader.subject()),
        batch: Vec::new(),
        done: false,
        metrics: app.metrics.clone(),
        _connection: ConnectionGauge::new(&app.metrics, TRANSPORT),
    };
    let body = StreamBody::new(futures_util::stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), s))
    }))
    .boxed_unsync();

    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    // Tells nginx-style proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// `retry:`, then a `subscribed` event whose `id:` is the starting cursor:
/// a named event fires no `onmessage`, but it sets the browser's
/// `lastEventId`, so a reconnect before any message still resumes exactly.
fn opening(retry_ms: u128, channels: &[Arc<str>], cursor: &str) -> Bytes {
    let data = serde_json::json!({
        "channels": channels.iter().map(|c| &**c).collect::<Vec<_>>(),
        "cursor": cursor,
    });
    Bytes::from(format!(
        "retry: {retry_ms}\nevent: subscribed\nid: {cursor}\ndata: {data}\n\n"
    ))
}

struct SseStream {
    subscription: Subscription,
    opening: Option<Bytes>,
    heartbeat: Interval,
    /// When the token the stream was opened with expires; only a stream
    /// with such a token pays for the timer.
    expiry: Option<Pin<Box<Sleep>>>,
    /// Shutdown, a drain, or the token's subject disconnected.
    end: EndSignal,
    batch: Vec<Delivery>,
    done: bool,
    metrics: Arc<Metrics>,
    _connection: ConnectionGauge,
}

impl SseStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(opening) = self.opening.take() {
            return Some(opening);
        }
        if self.done {
            return None;
        }
        self.batch.clear();
        let expiry = &mut self.expiry;
        let expired = async {
            match expiry {
                Some(at) => at.as_mut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            reason = self.end.ended() => {
                self.done = true;
                Some(Bytes::from(format!(
                    "event: reconnect\ndata: {{\"reason\":\"{}\"}}\n\n",
                    reason.as_str()
                )))
            }
            _ = expired => {
                self.done = true;
                Some(Bytes::from_static(b"event: reconnect\ndata: {\"reason\":\"token_expired\"}\n\n"))
            }
            closed = self.subscription.next_batch(&mut self.batch, MAX_BATCH) => match closed {
                Ok(()) => Some(self.encode_batch()),
                Err(CloseReason::Slow) => {
                    self.done = true;
                    Some(Bytes::from_static(b"event: reconnect\ndata: {\"reason\":\"slow_consumer\"}\n\n"))
                }
                Err(CloseReason::ReplayFailed) => {
                    self.done = true;
                    let data = serde_json::json!({
                        "reason": "replay_failed",
                        "message": self.subscription.failure().unwrap_or_default(),
                    });
                    Some(Bytes::from(format!("event: reconnect\ndata: {data}\n\n")))
                }
                Err(CloseReason::Gone) => None,
            },
            _ = self.heartbeat.tick() => Some(Bytes::from_static(b": heartbeat\n\n")),
        }
    }

    fn encode_batch(&mut self) -> Bytes {
        let mut buf = BytesMut::new();
        // Gaps come before the messages after them, with the cursor that
        // steps over the lost offsets.
        let gaps = self.subscription.take_gaps();
        if !gaps.is_empty() {
            let cursor = self.subscription.cursor();
            for gap in gaps {
                buf.put_slice(
                    format!("event: gap\nid: {cursor}\ndata: {}\n\n", gap.to_json()).as_bytes(),
                );
            }
        }
        for d in &self.batch {
            let env = d.publication.envelope();
            buf.reserve(2 * d.cursor.len() + env.head.len() + env.tail.len() + 16);
            buf.put_slice(b"id: ");
            buf.put_slice(d.cursor.as_bytes());
            buf.put_slice(b"\ndata: ");
            buf.put_slice(&env.head);
            buf.put_slice(d.cursor.as_bytes());
            buf.put_slice(&env.tail);
            buf.put_slice(b"\n\n");
        }
        observe_delivered(&self.metrics, TRANSPORT, &self.batch);
        buf.freeze()
    }
}

/// A stream whose subscriber the hub cut off as slow is counted once, when it
/// goes: whether it could still tell the client (`slow_consumer`) or its
/// connection was closed for taking no data at all (`http.write_timeout`).
impl Drop for SseStream {
    fn drop(&mut self) {
        if self.subscription.is_cut_off_as_slow() {
            self.metrics
                .slow_disconnects
                .with_label_values(&[TRANSPORT])
                .inc();
        }
    }
}
