//! HTTP polling: `GET /poll?channel=…[&cursor=…|&since=…][&limit=…][&wait=…]`.
//!
//! One request is one short-lived hub subscription: it starts where the
//! cursor says, takes what the hub can deliver now (up to `limit`), and
//! answers `{"messages":[envelope…],"cursor":"…"}` with the cursor after the
//! last message returned — the next poll resumes there, so nothing is lost
//! or repeated between polls. With `wait=` and nothing to deliver yet, it
//! waits (a long poll) until a first message arrives, `wait` runs out or
//! the server shuts down or drains (a revoked token's subject: `401
//! token_revoked`).
//!
//! `GET /poll?sub=CHANNEL[@CURSOR]&sub=…` polls several channels at once,
//! each a subscription of its own from its own cursor (the WebSocket's
//! table, `Multiplexed`): the answer is
//! `{"messages":[…],"cursors":{"CHANNEL":"…",…}}`, each envelope's
//! `cursor` its channel's, and `limit` counts the messages of all of them.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode, header};

use super::subscriptions::{Event, Multiplexed};
use super::{ConnectionGauge, observe_delivered};
use crate::app::App;
use crate::http::access;
use crate::http::error::{ApiError, replay_failed, token_revoked};
use crate::http::limits::ClientAddr;
use crate::http::query::{POLL_PARAMS, QueryLimits, StreamParams};
use crate::http::response::{Body, full};
use crate::hub::{CloseReason, Delivery, Gap, SubscriberKind, Subscription};
use crate::stream_ends::EndReason;

const TRANSPORT: &str = "poll";

pub async fn handle<B>(app: &Arc<App>, req: &Request<B>) -> Result<Response<Body>, ApiError> {
    let params = StreamParams::parse_for(
        req.uri().query(),
        &POLL_PARAMS,
        QueryLimits::of(&app.config()),
    )?;
    let reader = access::authenticate(app, req.headers(), params.token.as_deref()).await?;
    if params.subs.is_empty() {
        reader.authorize(app, &params.channels)?;
    } else {
        Multiplexed::authorize(app, &reader, &params.subs)?;
    }
    let config = &app.config().poll;
    let limit = match params.limit.as_deref() {
        None => config.default_limit,
        Some(v) => parse_limit(v, config.max_limit)?,
    };
    let wait = match params.wait.as_deref() {
        None => Duration::ZERO,
        Some(v) => parse_wait(v, config.max_wait)?,
    };
    // A long poll returns when its token expires; the next one is refused.
    let wait = reader.time_left().map_or(wait, |left| wait.min(left));
    // Checked before a place is taken, as `start` is below.
    let sub_starts = if params.subs.is_empty() {
        None
    } else {
        Some(params.sub_starts(None)?)
    };
    let start = if sub_starts.is_none() {
        params.start(None)?
    } else {
        crate::hub::Start::Live
    };
    // A long poll holds a place for as long as it waits.
    let _long_poll = if wait.is_zero() {
        None
    } else {
        Some(app.long_polls.try_take().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_long_polls",
                format!(
                    "{} long polls are waiting on this node (limits.max_long_polls); retry shortly, or poll without wait=",
                    app.long_polls.max()
                ),
            )
        })?)
    };
    if let Some(starts) = sub_starts {
        let many =
            Multiplexed::subscribe(app, starts, ClientAddr::of(req), SubscriberKind::Poll).await?;
        return poll_many(app, &reader, many, limit, wait).await;
    }
    let mut subscription = app
        .hub
        .subscribe_from(&params.channels, start, ClientAddr::of(req))
        .await?;
    subscription.count_as(SubscriberKind::Poll);
    // Counted once subscribed: from here on no record is missed.
    let _gauge = ConnectionGauge::new(&app.metrics, TRANSPORT);

    let mut taken = Taken::default();
    let mut closed = taken.ready(&mut subscription, limit).await;
    if taken.is_empty() && closed.is_none() && !wait.is_zero() {
        // Shutdown and a drain answer the poll now; a revoked token
        // refuses it.
        let end = app.ends.watch(reader.subject());
        tokio::select! {
            biased;
            reason = end.ended() => ended_early(reason)?,
            _ = tokio::time::sleep(wait) => {}
            got = subscription.next_batch(&mut taken.messages, limit) => {
                taken.gaps.extend(subscription.take_gaps());
                closed = match got {
                    // Also whatever else is there already, up to `limit`.
                    Ok(()) => taken.ready(&mut subscription, limit).await,
                    Err(reason) => Some(reason),
                };
            }
        }
    }
    if taken.is_empty()
        && let Some(CloseReason::ReplayFailed) = closed
    {
        return Err(replay_failed(subscription.failure()));
    }
    observe_delivered(&app.metrics, TRANSPORT, &taken.messages);
    Ok(answer(taken.encode(&subscription.cursor())))
}

/// A `sub=` poll: what its subscriptions can deliver now, up to `limit`
/// messages in all; with `wait` and nothing yet, what the first of them
/// to get something delivers, then what the others have by then.
/// A waiting long poll the node ended: answered at once (shutdown, a
/// drain), or refused when its token's subject was disconnected.
fn ended_early(reason: EndReason) -> Result<(), ApiError> {
    match reason {
        EndReason::Revoked => Err(token_revoked()),
        _ => Ok(()),
    }
}

async fn poll_many(
    app: &Arc<App>,
    reader: &access::Reader,
    mut many: Multiplexed,
    limit: usize,
    wait: Duration,
) -> Result<Response<Body>, ApiError> {
    let _gauge = ConnectionGauge::new(&app.metrics, TRANSPORT);
    let mut taken = Taken::default();
    let mut closed = taken.ready_many(&mut many, limit).await;
    if taken.is_empty() && closed.is_none() && !wait.is_zero() {
        // As for one channel: shutdown and a drain answer the poll now; a
        // revoked token refuses it.
        let end = app.ends.watch(reader.subject());
        tokio::select! {
            biased;
            reason = end.ended() => ended_early(reason)?,
            _ = tokio::time::sleep(wait) => {}
            outbound = std::future::poll_fn(|cx| many.table.poll_next_up_to(cx, limit)) => {
                match outbound.event {
                    Event::Batch { gaps, .. } => {
                        taken.gaps.extend(gaps);
                        taken.messages.append(&mut many.table.batch);
                        closed = taken.ready_many(&mut many, limit).await;
                    }
                    Event::Ended { reason, failure } => {
                        closed = Some((reason, failure.map(|f| format!("sub={:?}: {f}", outbound.channel))));
                    }
                    // Every subscription was made before the poll began.
                    Event::Subscribed(_) | Event::Refused(_) => {}
                }
            }
        }
    }
    if taken.is_empty()
        && let Some((CloseReason::ReplayFailed, failure)) = closed
    {
        return Err(replay_failed(failure.as_deref()));
    }
    observe_delivered(&app.metrics, TRANSPORT, &taken.messages);
    // Every subscription's cursor now, which covers exactly what was taken.
    let live: Vec<(Arc<str>, String)> = many
        .table
        .live_mut()
        .map(|(channel, subscription)| (channel.clone(), subscription.cursor()))
        .collect();
    for (channel, cursor) in &live {
        many.advance(channel, cursor);
    }
    Ok(answer(taken.encode_many(&many.cursors_json())))
}

/// A poll's `200`, never cached.
fn answer(body: bytes::Bytes) -> Response<Body> {
    let mut response = full(StatusCode::OK, "application/json", body);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What one poll hands back.
#[derive(Default)]
struct Taken {
    messages: Vec<Delivery>,
    gaps: Vec<Gap>,
}

impl Taken {
    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.gaps.is_empty()
    }

    /// Takes what the subscription can deliver without waiting for a live
    /// record, up to `limit` messages. Returns why the subscription ended,
    /// if it did: what it delivered before that is kept, and the cursor
    /// covers exactly that.
    async fn ready(
        &mut self,
        subscription: &mut Subscription,
        limit: usize,
    ) -> Option<CloseReason> {
        while self.messages.len() < limit {
            let before = self.messages.len();
            let ended = subscription
                .ready_batch(&mut self.messages, limit - before)
                .await
                .err();
            let gaps = subscription.take_gaps();
            let progress = self.messages.len() > before || !gaps.is_empty();
            self.gaps.extend(gaps);
            if ended.is_some() {
                return ended;
            }
            if !progress {
                break;
            }
        }
        None
    }

    /// [`Taken::ready`] for each of a `sub=` poll's subscriptions in turn,
    /// up to `limit` messages in all. Returns why one ended, if one did (and
    /// the failure, naming its channel).
    async fn ready_many(
        &mut self,
        many: &mut Multiplexed,
        limit: usize,
    ) -> Option<(CloseReason, Option<String>)> {
        for (channel, subscription) in many.table.live_mut() {
            if self.messages.len() >= limit {
                break;
            }
            if let Some(reason) = self.ready(subscription, limit).await {
                let failure = subscription
                    .failure()
                    .map(|f| format!("sub={channel:?}: {f}"));
                return Some((reason, failure));
            }
        }
        None
    }

    /// `{"messages":[…],"cursors":{…}[,"gap":[…]]}`, a `sub=` poll's answer.
    fn encode_many(&self, cursors: &serde_json::Value) -> bytes::Bytes {
        let mut buf = BytesMut::from(&self.encode_messages()[..]);
        buf.put_slice(b",\"cursors\":");
        buf.put_slice(cursors.to_string().as_bytes());
        self.put_gaps(&mut buf);
        buf.put_u8(b'}');
        buf.freeze()
    }

    /// `{"messages":[…],"cursor":"…"[,"gap":[…]]}`, the envelopes copied
    /// from their shared encoding.
    fn encode(&self, cursor: &str) -> bytes::Bytes {
        let mut buf = self.encode_messages();
        buf.put_slice(b",\"cursor\":\"");
        // Cursors are URL-safe ASCII: nothing to escape.
        buf.put_slice(cursor.as_bytes());
        buf.put_u8(b'"');
        self.put_gaps(&mut buf);
        buf.put_u8(b'}');
        buf.freeze()
    }

    fn put_gaps(&self, buf: &mut BytesMut) {
        if !self.gaps.is_empty() {
            let gaps: Vec<serde_json::Value> = self.gaps.iter().map(Gap::to_json).collect();
            buf.put_slice(b",\"gap\":");
            buf.put_slice(serde_json::Value::from(gaps).to_string().as_bytes());
        }
    }

    /// `{"messages":[…]`, the envelopes copied from their shared encoding.
    fn encode_messages(&self) -> BytesMut {
        let size: usize = self
            .messages
            .iter()
            .map(|d| {
                let e = d.publication.envelope();
                e.head.len() + d.cursor.len() + e.tail.len() + 1
            })
            .sum();
        let mut buf = BytesMut::with_capacity(size + 128);
        buf.put_slice(b"{\"messages\":[");
        for (i, d) in self.messages.iter().enumerate() {
            if i > 0 {
                buf.put_u8(b',');
            }
            let e = d.publication.envelope();
            buf.put_slice(&e.head);
            buf.put_slice(d.cursor.as_bytes());
            buf.put_slice(&e.tail);
        }
        buf.put_u8(b']');
        buf
    }
}

/// `limit=`: a whole number from 1 to `max`.
fn parse_limit(value: &str, max: usize) -> Result<usize, ApiError> {
    match value.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit={value:?}: must be a whole number from 1 to {max} (poll.max_limit)"),
        )),
    }
}

/// `wait=`: seconds, whole or decimal (`25`, `0.5`), from 0 to `max`.
fn parse_wait(value: &str, max: Duration) -> Result<Duration, ApiError> {
    let plain = !value.is_empty()
        && value.chars().all(|c| c.is_ascii_digit() || c == '.')
        && value.chars().filter(|&c| c == '.').count() <= 1
        && value != ".";
    let seconds = plain.then(|| value.parse::<f64>().ok()).flatten();
    match seconds.and_then(|s| Duration::try_from_secs_f64(s).ok()) {
        Some(d) if d <= max => Ok(d),
        _ => Err(ApiError::bad_request(
            "invalid_wait",
            format!(
                "wait={value:?}: must be seconds from 0 to {} (poll.max_wait), like 25 or 0.5",
                max.as_secs_f64()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_a_bounded_whole_number() {
        assert_eq!(parse_limit("1", 1000).unwrap(), 1);
        assert_eq!(parse_limit("1000", 1000).unwrap(), 1000);
        for bad in ["0", "1001", "-1", "ten", "", "1.5"] {
            let e = parse_limit(bad, 1000).unwrap_err();
            assert_eq!(e.code, "invalid_limit", "{bad}");
            assert!(e.message.contains(&format!("{bad:?}")), "{}", e.message);
        }
    }

    #[test]
    fn wait_is_bounded_seconds() {
        let max = Duration::from_secs(30);
        assert_eq!(parse_wait("0", max).unwrap(), Duration::ZERO);
        assert_eq!(parse_wait("25", max).unwrap(), Duration::from_secs(25));
        assert_eq!(parse_wait("0.5", max).unwrap(), Duration::from_millis(500));
        assert_eq!(parse_wait("30", max).unwrap(), max);
        for bad in ["31", "-1", "1e3", "inf", "NaN", "", ".", "1.2.3", "5s"] {
            let e = parse_wait(bad, max).unwrap_err();
            assert_eq!(e.code, "invalid_wait", "{bad}");
            assert!(e.message.contains("30"), "{}", e.message);
        }
    }
}
