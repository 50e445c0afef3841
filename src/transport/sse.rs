//! Server-Sent Events: `GET /sse?channel=…[&cursor=…]`, or
//! `GET /sse?sub=CHANNEL[@CURSOR]&sub=…` for one cursor per channel.
//!
//! The stream opens with `retry:` and a `subscribed` event carrying the
//! starting cursor as its `id:` (so a browser that reconnects before any
//! message still resumes where it was), then one event per message: `id:` is the cursor
//! after it, `data:` the envelope on one line. A `: heartbeat` comment keeps
//! idle streams alive. When Herald shuts down or drains, the client falls
//! too far behind, or the operator disconnects its token's subject, a
//! final `event: reconnect` says why and the stream ends; the browser
//! reconnects by itself with `Last-Event-ID`.
//!
//! In the `sub=` form each channel is a hub subscription of its own (the
//! WebSocket's table of subscriptions, `Multiplexed`), so a page shares
//! one stream between subscriptions that each keep their own cursor: an
//! envelope's `cursor` is its channel's, and `id:` is the stream's
//! position, every subscription's cursor in `sub=` order (see
//! `docs/protocol.md`).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::time::{Interval, MissedTickBehavior, Sleep};

use super::subscriptions::{Event, Multiplexed};
use super::{ConnectionGauge, observe_delivered};
use crate::app::App;
use crate::http::access;
use crate::http::error::ApiError;
use crate::http::limits::ClientAddr;
use crate::http::query::{QueryLimits, StreamParams};
use crate::http::response::Body;
use crate::hub::{CloseReason, Delivery, Gap, SubscriberKind, Subscription};
use crate::metrics::Metrics;
use crate::stream_ends::EndSignal;

/// Messages encoded into one write. Coalescing a burst into one chunk
/// saves a syscall per message; the cap bounds the chunk size.
const MAX_BATCH: usize = 256;

const TRANSPORT: &str = "sse";

/// A write delay gathers batches into one chunk up to about this size.
const MAX_GATHER_BYTES: usize = crate::hub::subscription::MAX_BATCH_BYTES;

pub async fn handle<B>(app: &Arc<App>, req: &Request<B>) -> Result<Response<Body>, ApiError> {
    let params = StreamParams::parse(req.uri().query(), QueryLimits::of(&app.config()))?;
    let reader = access::authenticate(app, req.headers(), params.token.as_deref()).await?;
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("invalid_cursor", "Last-Event-ID is not ASCII"))
        })
        .transpose()?;
    let retry_ms = app.config().sse.retry.as_millis();
    let (source, opening) = if params.subs.is_empty() {
        reader.authorize(app, &params.channels)?;
        let start = params.start(last_event_id)?;
        let subscription = app
            .hub
            .subscribe_from(&params.channels, start, ClientAddr::of(req))
            .await?;
        subscription.count_as(SubscriberKind::Sse);
        let opening = opening(retry_ms, subscription.channels(), &subscription.cursor());
        (Source::One(subscription), opening)
    } else {
        Multiplexed::authorize(app, &reader, &params.subs)?;
        let starts = params.sub_starts(last_event_id)?;
        let many =
            Multiplexed::subscribe(app, starts, ClientAddr::of(req), SubscriberKind::Sse).await?;
        let opening = opening_many(retry_ms, &many);
        (Source::Many(many), opening)
    };

    let mut heartbeat = tokio::time::interval(app.config().sse.heartbeat);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    heartbeat.reset();
    let stream = SseStream {
        opening: Some(opening),
        source,
        heartbeat,
        expiry: reader.time_left().map(|d| Box::pin(tokio::time::sleep(d))),
        end: app.ends.watch(reader.subject()),
        batch: Vec::new(),
        done: false,
        write_delay: app.config().sse.write_delay,
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

/// The `sub=` form's opening: as [`opening`], with the stream's position
/// as `id:` and `cursor`, and each subscription's own cursor in `cursors`.
fn opening_many(retry_ms: u128, many: &Multiplexed) -> Bytes {
    let position = many.position();
    let data = serde_json::json!({
        "channels": many.channels().collect::<Vec<_>>(),
        "cursor": position,
        "cursors": many.cursors_json(),
    });
    Bytes::from(format!(
        "retry: {retry_ms}\nevent: subscribed\nid: {position}\ndata: {data}\n\n"
    ))
}

/// What a stream delivers from: one subscription for all its channels
/// (`channel=`), or one per channel (`sub=`).
// Most streams are `One`: boxing it would add an allocation per stream
// to save a `Many` stream a few hundred bytes.
#[allow(clippy::large_enum_variant)]
enum Source {
    One(Subscription),
    Many(Multiplexed),
}

/// How a source's next batch went.
enum Next {
    /// A chunk to write.
    Chunk(Bytes),
    /// The stream ends, after this last chunk if any.
    End(Option<Bytes>),
}

struct SseStream {
    source: Source,
    opening: Option<Bytes>,
    heartbeat: Interval,
    /// When the token the stream was opened with expires; only a stream
    /// with such a token pays for the timer.
    expiry: Option<Pin<Box<Sleep>>>,
    /// Shutdown, a drain, or the token's subject disconnected.
    end: EndSignal,
    batch: Vec<Delivery>,
    done: bool,
    /// `sse.write_delay`: how long a first batch waits for more, so they
    /// go out in one write.
    write_delay: Duration,
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
            next = Self::next_batch(&mut self.source, &mut self.batch, &self.metrics) => match next {
                Next::Chunk(chunk) if self.write_delay.is_zero() || chunk.is_empty() => Some(chunk),
                Next::Chunk(chunk) => Some(self.gather(chunk).await),
                Next::End(last) => {
                    self.done = true;
                    last
                }
            },
            _ = self.heartbeat.tick() => Some(Bytes::from_static(b": heartbeat\n\n")),
        }
    }

    /// `sse.write_delay`: waits that long after `first`, then appends
    /// every batch ready by then (up to [`MAX_GATHER_BYTES`]), so they
    /// leave in one write. What arrives meanwhile stays in the inboxes,
    /// waking no one.
    async fn gather(&mut self, first: Bytes) -> Bytes {
        // Boxed: a stream without a write delay does not carry the timer.
        Box::pin(tokio::time::sleep(self.write_delay)).await;
        let mut buf = BytesMut::from(first);
        while buf.len() < MAX_GATHER_BYTES && !self.done {
            self.batch.clear();
            let ready = std::future::poll_fn(|cx| {
                let next = Self::next_batch(&mut self.source, &mut self.batch, &self.metrics);
                match std::pin::pin!(next).poll(cx) {
                    Poll::Ready(next) => Poll::Ready(Some(next)),
                    Poll::Pending => Poll::Ready(None),
                }
            })
            .await;
            match ready {
                None => break,
                Some(Next::Chunk(chunk)) => buf.put_slice(&chunk),
                Some(Next::End(last)) => {
                    self.done = true;
                    if let Some(last) = last {
                        buf.put_slice(&last);
                    }
                }
            }
        }
        buf.freeze()
    }

    /// Waits for the source's next batch and encodes it.
    async fn next_batch(source: &mut Source, batch: &mut Vec<Delivery>, metrics: &Metrics) -> Next {
        match source {
            Source::One(subscription) => match subscription.next_batch(batch, MAX_BATCH).await {
                Ok(()) => Next::Chunk(encode_one(subscription, batch, metrics)),
                Err(reason) => Next::End(ended(reason, subscription.failure(), None)),
            },
            Source::Many(many) => {
                let outbound = std::future::poll_fn(|cx| many.table.poll_next(cx)).await;
                match outbound.event {
                    Event::Batch { gaps, cursor } => {
                        let batch = std::mem::take(&mut many.table.batch);
                        let chunk = encode_many(many, &outbound.channel, gaps, &cursor, &batch);
                        observe_delivered(metrics, TRANSPORT, &batch);
                        many.table.batch = batch;
                        Next::Chunk(chunk)
                    }
                    Event::Ended { reason, failure } => {
                        many.ended_slow |= reason == CloseReason::Slow;
                        Next::End(ended(reason, failure.as_deref(), Some(&outbound.channel)))
                    }
                    // Every subscription is made before the stream opens,
                    // and announced by its opening.
                    Event::Subscribed(_) | Event::Refused(_) => Next::Chunk(Bytes::new()),
                }
            }
        }
    }
}

/// The last event of a stream whose subscription (of `channel`, in the
/// `sub=` form) ended for `reason`; `None` when the hub is gone.
fn ended(reason: CloseReason, failure: Option<&str>, channel: Option<&str>) -> Option<Bytes> {
    match reason {
        CloseReason::Slow => Some(Bytes::from_static(
            b"event: reconnect\ndata: {\"reason\":\"slow_consumer\"}\n\n",
        )),
        CloseReason::ReplayFailed => {
            let failure = failure.unwrap_or_default();
            let message = match channel {
                Some(channel) => format!("sub={channel:?}: {failure}"),
                None => failure.to_owned(),
            };
            let data = serde_json::json!({"reason": "replay_failed", "message": message});
            Some(Bytes::from(format!("event: reconnect\ndata: {data}\n\n")))
        }
        CloseReason::Gone => None,
    }
}

/// A `channel=` stream's batch: gaps first, with the cursor that steps
/// over the lost offsets, then each message with its cursor as `id:`.
fn encode_one(subscription: &mut Subscription, batch: &[Delivery], metrics: &Metrics) -> Bytes {
    let mut buf = BytesMut::new();
    let gaps = subscription.take_gaps();
    if !gaps.is_empty() {
        let cursor = subscription.cursor();
        for gap in gaps {
            buf.put_slice(
                format!("event: gap\nid: {cursor}\ndata: {}\n\n", gap.to_json()).as_bytes(),
            );
        }
    }
    for d in batch {
        put_message(&mut buf, d.cursor.as_bytes(), d);
    }
    observe_delivered(metrics, TRANSPORT, batch);
    buf.freeze()
}

/// A `sub=` stream's batch for `channel`: gaps first (their data carrying
/// the channel's cursor after them), then each message; every event's
/// `id:` is the stream's position after it.
fn encode_many(
    many: &mut Multiplexed,
    channel: &str,
    gaps: Vec<Gap>,
    gap_cursor: &str,
    batch: &[Delivery],
) -> Bytes {
    let mut buf = BytesMut::new();
    if !gaps.is_empty() {
        many.advance(channel, gap_cursor);
        let position = many.position();
        for gap in gaps {
            let mut data = gap.to_json();
            data["cursor"] = gap_cursor.into();
            buf.put_slice(format!("event: gap\nid: {position}\ndata: {data}\n\n").as_bytes());
        }
    }
    for d in batch {
        many.advance(channel, &d.cursor);
        put_message(&mut buf, many.position().as_bytes(), d);
    }
    buf.freeze()
}

/// `id: ID`, then the envelope with this subscriber's cursor as `data:`.
fn put_message(buf: &mut BytesMut, id: &[u8], d: &Delivery) {
    let env = d.publication.envelope();
    buf.reserve(id.len() + d.cursor.len() + env.head.len() + env.tail.len() + 16);
    buf.put_slice(b"id: ");
    buf.put_slice(id);
    buf.put_slice(b"\ndata: ");
    buf.put_slice(&env.head);
    buf.put_slice(d.cursor.as_bytes());
    buf.put_slice(&env.tail);
    buf.put_slice(b"\n\n");
}

/// A stream whose subscriber the hub cut off as slow is counted once, when it
/// goes: whether it could still tell the client (`slow_consumer`) or its
/// connection was closed for taking no data at all (`http.write_timeout`).
impl Drop for SseStream {
    fn drop(&mut self) {
        let slow = match &self.source {
            Source::One(subscription) => subscription.is_cut_off_as_slow(),
            Source::Many(many) => many.is_cut_off_as_slow(),
        };
        if slow {
            self.metrics
                .slow_disconnects
                .with_label_values(&[TRANSPORT])
                .inc();
        }
    }
}
