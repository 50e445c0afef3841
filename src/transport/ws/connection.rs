//! The loop of one upgraded connection: it owns the socket, drains the
//! subscriptions' deliveries into write rounds before it reads the
//! client's frames (`biased`), answers the client's messages, pings, and
//! closes with a documented code.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::TRANSPORT;
use super::frame::{message_frame, text_frame, truncate};
use super::inflate::{Inbound, InflateError};
use super::protocol::{ClientMessage, error_json};
use crate::app::App;
use crate::http::access::{self, Reader};
use crate::http::access_log::AccessEntry;
use crate::http::error::replay_failed;
use crate::http::query::start_at;
use crate::hub::{CloseReason, SubscriberKind};
use crate::stream_ends::{EndReason, EndSignal};
use crate::transport::gate::Gate;
use crate::transport::subscriptions::{EntryState, Event, Outbound, Subscribing, Subscriptions};
use crate::transport::{ConnectionGauge, observe_delivered};

/// The output buffer keeps its allocation between rounds up to this size,
/// so a steady stream of small rounds does not allocate each time; a
/// bigger one (a burst) is freed once written.
const OUT_KEEP: usize = 4 * 1024;

/// Batches taken from the subscriptions in one write round, before the
/// flush: bounds a round's size and how long inbound frames wait.
const MAX_ROUND: usize = 64;

/// Write rounds in a row before the client's frames, the ping timer and
/// shutdown get a look even though more deliveries are ready, so a busy
/// connection still answers (un)subscribe messages and pings.
const MAX_STREAK: u32 = 8;

/// How long closing may take: sending the close frame and waiting for the
/// client's close in return (or draining what it still sends). Past it
/// the socket is dropped.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Close code: no pong (nor any other frame) within `ws.pong_timeout`.
const CLOSE_PONG_TIMEOUT: u16 = 4000;

/// Close code: the connection's token expired and no `auth` message
/// brought a fresh one in time.
const CLOSE_TOKEN_EXPIRED: u16 = 4001;

/// Close code: the token's subject was disconnected by the operator
/// (`POST /admin/disconnect`); an `error` message `token_revoked` comes
/// first. Reconnect only with a fresh token.
const CLOSE_TOKEN_REVOKED: u16 = 4003;

/// Close code: the client read too slowly and a subscription's queue
/// (`hub.subscriber_queue`) overflowed. Nothing is lost: it resubscribes
/// from its cursors.
const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// The socket of an upgraded connection.
pub(super) type Socket = WebSocketStream<Inbound<TokioIo<Upgraded>>>;

/// How a connection ends.
enum Ending {
    /// Send a close frame with this code and reason, then wait for the
    /// client's close.
    Close(CloseCode, String),
    /// As `Close`, after a read error: tungstenite reads no more, so the
    /// rest of the client's input is drained raw.
    CloseAfterReadError(CloseCode, String),
    /// The client closed (its close was answered) or went away.
    Closed,
    /// The socket is unusable or stalled: drop it.
    Drop,
}

/// Whether the last ping was answered.
enum Keepalive {
    /// The timer is the next ping.
    Idle,
    /// The timer is the pong deadline.
    AwaitingPong,
}

pub(super) struct Connection {
    app: Arc<App>,
    socket: Socket,
    /// The connection negotiated permessage-deflate: `message` frames go
    /// compressed.
    deflate: bool,
    pub(super) subscriptions: Subscriptions,
    /// The client's address, for the hub's limits per address.
    client: IpAddr,
    /// Who is reading: the token of the upgrade request or of the last
    /// `auth` message.
    reader: Reader,
    /// When `reader`'s token expires; the connection is closed then
    /// (`4001`) unless an `auth` message brought a fresh one.
    expires: Option<Instant>,
    /// Text frames encoded by Herald, written together at the end of a
    /// round.
    out: Vec<u8>,
    /// Shutdown, a drain, or `reader`'s subject disconnected; replaced
    /// (and `end_changes` bumped) when an `auth` message brings a token.
    end: EndSignal,
    end_changes: u32,
    /// The access-log line (`log.access`), counting the bytes Herald's own
    /// frames took; boxed, so a connection without one holds a pointer.
    access: Option<Box<AccessEntry>>,
    /// The socket's read side is polled only after it woke the task, and
    /// the subscriptions only after theirs did ([`Gate`]).
    read_gate: Gate,
    deliveries: Gate,
    /// A frame was read since tungstenite last flushed: it may hold a
    /// reply (a pong, a close) that must go out before Herald's own
    /// frames. Nothing else queues output in tungstenite.
    tungstenite_may_hold: bool,
    _gauge: ConnectionGauge,
}

impl Connection {
    pub(super) fn new(
        app: Arc<App>,
        socket: Socket,
        deflate: bool,
        reader: Reader,
        client: IpAddr,
        access: Option<Box<AccessEntry>>,
    ) -> Self {
        let gauge = ConnectionGauge::new(&app.metrics, TRANSPORT);
        let end = app.ends.watch(reader.subject());
        Connection {
            end,
            end_changes: 0,
            access,
            app,
            socket,
            deflate,
            subscriptions: Subscriptions::default(),
            client,
            expires: reader.time_left().map(|left| Instant::now() + left),
            reader,
            out: Vec::new(),
            read_gate: Gate::new(),
            deliveries: Gate::new(),
            tungstenite_may_hold: false,
            _gauge: gauge,
        }
    }

    /// Serves the connection until it ends. Not an `async fn`: an async
    /// fn's argument used after an await is stored twice in its state
    /// (rust-lang/rust#62958), and an idle connection is mostly this
    /// state (P1).
    #[allow(clippy::manual_async_fn)] // the argument-size note above
    pub(super) fn run(mut self) -> impl Future<Output = ()> + Send {
        async move {
            let ping_interval = self.app.config().ws.ping_interval;
            let pong_timeout = self.app.config().ws.pong_timeout;
            // Registered with the signal once, not on every turn of the loop
            // (again only when an `auth` message changed it).
            let mut stopping = std::pin::pin!(self.end.ended_owned());
            let mut stopping_for = self.end_changes;
            // Shutdown and the ping timer wake the task when they fire; polled
            // through gates, a wake for a delivery does not poll them too.
            let stop_gate = Gate::new();
            let timer_gate = Gate::new();
            let mut keepalive = Keepalive::Idle;
            let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(ping_interval));
            let mut streak = 0u32;
            // `ws.write_delay`: frames wait in `out` until the hold ends, and
            // the subscriptions are not drained meanwhile (what arrives stays
            // in the inboxes, waking no one), then go out in one write.
            let write_delay = self.app.config().ws.write_delay;
            let mut hold: Option<Pin<Box<Sleep>>> = None;
            let mut holding = false;
            // The token's expiry, re-armed when an `auth` message moves it;
            // only a connection with an expiring token pays for the timer.
            let mut expiry: Option<Pin<Box<Sleep>>> = None;
            let mut armed_for = None;
            let ending = loop {
                if self.end_changes != stopping_for {
                    stopping.set(self.end.ended_owned());
                    stopping_for = self.end_changes;
                    stop_gate.open();
                }
                if self.expires != armed_for {
                    armed_for = self.expires;
                    expiry = self
                        .expires
                        .map(|at| Box::pin(tokio::time::sleep_until(at)));
                }
                let expired = async {
                    match expiry.as_mut() {
                        Some(at) => at.as_mut().await,
                        None => std::future::pending().await,
                    }
                };
                let held = async {
                    match hold.as_mut() {
                        Some(until) if holding => until.as_mut().await,
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    () = std::future::poll_fn(|cx| stop_gate.poll(cx, |cx| stopping.as_mut().poll(cx))) => match self.end.reason() {
                        EndReason::Revoked => {
                            break Box::pin(self.end_for_token(
                                "token_revoked",
                                "the token's subject was disconnected by the operator; reconnect only with a fresh token",
                                CLOSE_TOKEN_REVOKED,
                            ))
                            .await;
                        }
                        // Reconnect elsewhere.
                        reason => break Ending::Close(CloseCode::Away, reason.as_str().into()),
                    },
                    _ = expired => {
                        break Box::pin(self.end_for_token(
                            "token_expired",
                            "the token expired; reconnect with a fresh one, or send {\"type\":\"auth\"} before it expires",
                            CLOSE_TOKEN_EXPIRED,
                        ))
                        .await;
                    }
                    () = held => {
                        holding = false;
                        if let Err(ending) = Box::pin(self.write_round(None)).await {
                            break ending;
                        }
                    }
                    first = std::future::poll_fn(|cx| self.deliveries.poll(cx, |cx| self.subscriptions.poll_next(cx))),
                        if !self.subscriptions.is_empty() && streak < MAX_STREAK && !holding =>
                    {
                        streak += 1;
                        if write_delay.is_zero() {
                            if let Err(ending) = Box::pin(self.write_round(Some(first))).await {
                                break ending;
                            }
                        } else {
                            if let Err(ending) = self.encode_event(first) {
                                let deadline = Instant::now() + self.app.config().ws.pong_timeout;
                                let _ = Box::pin(self.write_out(deadline)).await;
                                break ending;
                            }
                            let until = Instant::now() + write_delay;
                            match hold.as_mut() {
                                Some(sleep) => sleep.as_mut().reset(until),
                                None => hold = Some(Box::pin(tokio::time::sleep_until(until))),
                            }
                            holding = true;
                        }
                    }
                    frame = std::future::poll_fn(|cx| self.read_gate.poll(cx, |cx| self.socket.poll_next_unpin(cx))) => {
                        streak = 0;
                        // Any frame shows the client is alive.
                        keepalive = Keepalive::Idle;
                        timer.as_mut().reset(Instant::now() + ping_interval);
                        timer_gate.open();
                        if let Err(ending) = Box::pin(self.on_frame(frame)).await {
                            break ending;
                        }
                    }
                    () = std::future::poll_fn(|cx| timer_gate.poll(cx, |cx| timer.as_mut().poll(cx))) => {
                        streak = 0;
                        match keepalive {
                            Keepalive::Idle => {
                                if let Err(ending) = Box::pin(self.ping()).await {
                                    break ending;
                                }
                                keepalive = Keepalive::AwaitingPong;
                                timer.as_mut().reset(Instant::now() + pong_timeout);
                                timer_gate.open();
                            }
                            Keepalive::AwaitingPong => {
                                break Ending::Close(
                                    CloseCode::Library(CLOSE_PONG_TIMEOUT),
                                    format!("no pong within {pong_timeout:?} (ws.pong_timeout)"),
                                );
                            }
                        }
                    }
                    _ = std::future::ready(()), if streak >= MAX_STREAK => streak = 0,
                }
            };
            Box::pin(self.finish(ending)).await;
        }
    }

    /// Writes `first` (or, after a write delay, what is already encoded)
    /// and whatever else the subscriptions have ready (up to
    /// [`MAX_ROUND`] batches), then flushes once.
    async fn write_round(&mut self, first: Option<Outbound>) -> Result<(), Ending> {
        let mut next = match first {
            Some(first) => Some(first),
            None => self.ready_now().await,
        };
        let mut taken = 0;
        let mut ended = Ok(());
        while let Some(outbound) = next.take() {
            ended = self.encode_event(outbound);
            taken += 1;
            if ended.is_ok() && taken < MAX_ROUND {
                next = self.ready_now().await;
            }
        }
        // What was encoded before an ending (say, the messages before a
        // slow-consumer close) still goes out.
        let deadline = Instant::now() + self.app.config().ws.pong_timeout;
        self.write_out(deadline).await?;
        ended
    }

    /// The subscriptions' next event if one is ready now (through the
    /// gate, whose waker stays with them when none is).
    async fn ready_now(&mut self) -> Option<Outbound> {
        std::future::poll_fn(|cx| {
            match self
                .deliveries
                .poll(cx, |cx| self.subscriptions.poll_next(cx))
            {
                std::task::Poll::Ready(outbound) => std::task::Poll::Ready(Some(outbound)),
                std::task::Poll::Pending => std::task::Poll::Ready(None),
            }
        })
        .await
    }

    /// Encodes an event's frames into the output buffer; `Err` when it
    /// ends the connection.
    fn encode_event(&mut self, outbound: Outbound) -> Result<(), Ending> {
        let Outbound { channel, event } = outbound;
        match event {
            Event::Subscribed(cursor) => {
                let frame = serde_json::json!({
                    "type": "subscribed", "channel": &*channel, "cursor": cursor,
                });
                text_frame(&mut self.out, &[frame.to_string().as_bytes()]);
                Ok(())
            }
            Event::Refused(error) => {
                let frame = error_json(error.code, &error.message, Some(&channel));
                text_frame(&mut self.out, &[frame.as_bytes()]);
                Ok(())
            }
            Event::Batch { gaps, cursor } => {
                for gap in gaps {
                    // {"type":"gap","cursor":…,"channel":…,"partitions":…}
                    let body = gap.to_json().to_string();
                    let head = format!("{{\"type\":\"gap\",\"cursor\":\"{cursor}\",");
                    text_frame(&mut self.out, &[head.as_bytes(), &body.as_bytes()[1..]]);
                }
                let messages = &self.subscriptions.batch;
                observe_delivered(&self.app.metrics, TRANSPORT, messages);
                for d in messages {
                    message_frame(&mut self.out, d, self.deflate);
                }
                Ok(())
            }
            Event::Ended { reason, failure } => match reason {
                CloseReason::Slow => {
                    self.app
                        .metrics
                        .slow_disconnects
                        .with_label_values(&[TRANSPORT])
                        .inc();
                    Err(Ending::Close(
                        CloseCode::Library(CLOSE_SLOW_CONSUMER),
                        format!("slow consumer: channel {channel:?} fell too far behind"),
                    ))
                }
                CloseReason::ReplayFailed => {
                    let e = replay_failed(failure.as_deref());
                    let message = format!("{}; subscribe again from the last cursor", e.message);
                    let frame = error_json(e.code, &message, Some(&channel));
                    text_frame(&mut self.out, &[frame.as_bytes()]);
                    Ok(())
                }
                CloseReason::Gone => Ok(()),
            },
        }
    }

    async fn on_frame(&mut self, frame: Option<Result<Message, WsError>>) -> Result<(), Ending> {
        self.tungstenite_may_hold = true;
        let message = match frame {
            None => return Err(Ending::Closed),
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(read_error(e, self.app.config().limits.max_message_size)),
        };
        match message {
            Message::Text(text) => match self.on_text(&text).await {
                Some(reply) => self.reply(&reply).await,
                None => Ok(()),
            },
            Message::Binary(_) => {
                let reply = error_json(
                    "bad_message",
                    "binary frames are not accepted: send JSON text frames",
                    None,
                );
                self.reply(&reply).await
            }
            // tungstenite answers pings itself (the pong goes out with the
            // next read or write).
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
            Message::Close(_) => {
                // tungstenite queued the reply; send it.
                let _ = tokio::time::timeout(CLOSE_LINGER, self.socket.flush()).await;
                Err(Ending::Closed)
            }
        }
    }

    /// Acts on a client message; returns the reply to send now, if any
    /// (`subscribed` comes later, from the subscription itself).
    async fn on_text(&mut self, input: &str) -> Option<String> {
        let request = match ClientMessage::parse(input) {
            Ok(request) => request,
            Err(refusal) => {
                return Some(error_json(
                    refusal.code,
                    &refusal.message,
                    refusal.channel.as_deref(),
                ));
            }
        };
        match request {
            ClientMessage::Subscribe {
                channel,
                cursor,
                since,
            } => {
                if self.subscriptions.contains(&channel) {
                    return Some(error_json(
                        "already_subscribed",
                        &format!(
                            "channel {channel:?} is already subscribed on this connection; unsubscribe first to start it again"
                        ),
                        Some(&channel),
                    ));
                }
                let max = self.app.config().limits.max_channels_per_connection;
                if self.subscriptions.len() >= max {
                    return Some(error_json(
                        "too_many_channels",
                        &format!(
                            "this connection holds {max} subscriptions, the limit (limits.max_channels_per_connection)"
                        ),
                        Some(&channel),
                    ));
                }
                if let Err(denied) = self.reader.authorize_one(&self.app, &channel) {
                    let e = access::denied(denied);
                    return Some(error_json(e.code, &e.message, Some(&channel)));
                }
                let start = match start_at(cursor.as_deref(), since.as_deref()) {
                    Ok(start) => start,
                    Err(e) => return Some(error_json(e.code, &e.message, Some(&channel))),
                };
                let hub = self.app.hub.clone();
                let names = [channel.clone()];
                let client = self.client;
                let answer: Subscribing = Box::pin(async move {
                    let subscription = hub.subscribe_from(&names, start, client).await?;
                    subscription.count_as(SubscriberKind::Ws);
                    Ok(subscription)
                });
                self.subscriptions
                    .add(Arc::from(channel), EntryState::Subscribing(answer));
                // Polled at the next turn, though nothing woke the gate.
                self.deliveries.open();
                None
            }
            ClientMessage::Auth { token } => Some(self.on_auth(&token).await),
            ClientMessage::Unsubscribe { channel } => match self.subscriptions.remove(&channel) {
                true => {
                    // The subscription has left the hub; nothing more of it
                    // is sent.
                    let frame = serde_json::json!({"type": "unsubscribed", "channel": channel});
                    Some(frame.to_string())
                }
                false => Some(error_json(
                    "not_subscribed",
                    &format!("channel {channel:?} is not subscribed on this connection"),
                    Some(&channel),
                )),
            },
        }
    }

    /// A fresh token: verified, it replaces the connection's token (and
    /// its expiry) at once, without touching a subscription the new token
    /// still allows; one it does not allow is ended with an `error`. A token
    /// refused leaves the old one in force, until it expires.
    async fn on_auth(&mut self, token: &str) -> String {
        let reader = match access::verify(&self.app, token).await {
            Ok(reader) => reader,
            Err(e) => return error_json(e.code, &e.message, None),
        };
        let refused: Vec<(Arc<str>, String)> = self
            .subscriptions
            .channels()
            .filter_map(|channel| {
                let denied = reader.authorize_one(&self.app, channel).err()?;
                Some((channel.clone(), access::denied(denied).message))
            })
            .collect();
        for (channel, message) in &refused {
            self.subscriptions.remove(channel);
            let frame = error_json(
                "forbidden_channel",
                &format!("{message}; the subscription has ended"),
                Some(channel),
            );
            text_frame(&mut self.out, &[frame.as_bytes()]);
        }
        self.expires = reader.time_left().map(|left| Instant::now() + left);
        if reader.subject() != self.reader.subject() {
            self.end = self.app.ends.watch(reader.subject());
            self.end_changes = self.end_changes.wrapping_add(1);
        }
        let reply = serde_json::json!({"type": "authenticated", "exp": reader.expires_at_unix()});
        self.reader = reader;
        reply.to_string()
    }

    /// Writes the output buffer, after anything tungstenite still holds
    /// (a pong queued while reading), so frames never interleave.
    async fn write_out(&mut self, deadline: Instant) -> Result<(), Ending> {
        if self.out.is_empty() {
            return Ok(());
        }
        if self.tungstenite_may_hold {
            self.flush_by(deadline).await?;
        }
        let io = self.socket.get_mut();
        let written = within(deadline, io.write_all(&self.out)).await;
        self.written(written)?;
        if let Some(access) = &mut self.access {
            access.add_bytes(self.out.len());
        }
        if self.out.capacity() > OUT_KEEP {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        Ok(())
    }

    /// Ends the connection for its token: the `error` message `code`
    /// with `message`, then a close with `close` (reason: the code's
    /// words, `token expired`); a failed write drops the socket instead.
    async fn end_for_token(&mut self, code: &str, message: &str, close: u16) -> Ending {
        if let Err(ending) = self.reply(&error_json(code, message, None)).await {
            return ending;
        }
        Ending::Close(CloseCode::Library(close), code.replace('_', " "))
    }

    /// Sends one text frame (a reply to the client) now.
    async fn reply(&mut self, json: &str) -> Result<(), Ending> {
        text_frame(&mut self.out, &[json.as_bytes()]);
        let deadline = Instant::now() + self.app.config().ws.pong_timeout;
        self.write_out(deadline).await
    }

    async fn flush_by(&mut self, deadline: Instant) -> Result<(), Ending> {
        let flushed = within(deadline, self.socket.flush()).await;
        self.written(flushed)?;
        self.tungstenite_may_hold = false;
        Ok(())
    }

    /// Sends a ping now.
    async fn ping(&mut self) -> Result<(), Ending> {
        let deadline = Instant::now() + self.app.config().ws.pong_timeout;
        let fed = within(deadline, self.socket.feed(Message::Ping(Bytes::new()))).await;
        self.written(fed)?;
        self.flush_by(deadline).await
    }

    /// How a write within its deadline went (`None`: past it). A failed
    /// write drops the socket; a client that takes no data for
    /// `ws.pong_timeout` while frames wait is dropped as slow (it cannot be
    /// sent a close frame).
    fn written<E: std::fmt::Display>(&self, result: Option<Result<(), E>>) -> Result<(), Ending> {
        match result {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => {
                tracing::debug!("WebSocket write failed: {e}");
                Err(Ending::Drop)
            }
            None => {
                self.app
                    .metrics
                    .slow_disconnects
                    .with_label_values(&[TRANSPORT])
                    .inc();
                tracing::debug!("WebSocket client took no data for ws.pong_timeout; dropped");
                Err(Ending::Drop)
            }
        }
    }

    async fn finish(mut self, ending: Ending) {
        // The subscriptions leave the hub now, not after the close
        // handshake: nothing more is sent, and a closing connection is no
        // longer counted as a subscriber (`GET /admin/channels`).
        self.subscriptions = Subscriptions::default();
        let deadline = Instant::now() + CLOSE_LINGER;
        let (code, reason, drain_raw) = match ending {
            Ending::Closed | Ending::Drop => return,
            Ending::Close(code, reason) => (code, reason, false),
            Ending::CloseAfterReadError(code, reason) => (code, reason, true),
        };
        tracing::debug!(code = u16::from(code), reason, "closing WebSocket");
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(truncate(reason, 123)),
        };
        let sent = tokio::time::timeout_at(deadline, self.socket.send(Message::Close(Some(frame))))
            .await
            .is_ok_and(|r| r.is_ok());
        if !sent {
            return;
        }
        if drain_raw {
            // Let the client read the close before the socket goes: end
            // our side, then discard what it still sends until it closes.
            let io = self.socket.get_mut();
            let _ = tokio::time::timeout_at(deadline, io.shutdown()).await;
            let mut sink = [0u8; 1024];
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, io.read(&mut sink)).await {
                if n == 0 {
                    break;
                }
            }
        } else {
            // The close handshake: wait for the client's close.
            while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.socket.next()).await
            {
            }
        }
    }
}

/// `future`'s output, or `None` past `deadline`. A write that completes at
/// once (nearly every one) never builds a timer: that cost a runtime-handle
/// lookup and a timer entry per write.
async fn within<F: Future>(deadline: Instant, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    if let Some(output) = futures_util::FutureExt::now_or_never(future.as_mut()) {
        return Some(output);
    }
    tokio::time::timeout_at(deadline, future).await.ok()
}

/// The close for a read error.
fn read_error(e: WsError, max_message_size: usize) -> Ending {
    match e {
        WsError::Capacity(_) => Ending::CloseAfterReadError(
            CloseCode::Size,
            format!("message too big: the limit is {max_message_size} bytes"),
        ),
        WsError::Utf8(_) => {
            Ending::CloseAfterReadError(CloseCode::Invalid, "text frame is not UTF-8".into())
        }
        WsError::Protocol(p) => Ending::CloseAfterReadError(CloseCode::Protocol, p.to_string()),
        // A compressed message refused by the inflater (`super::inflate`).
        WsError::Io(e) if e.get_ref().is_some_and(|e| e.is::<InflateError>()) => {
            let e = e
                .into_inner()
                .and_then(|e| e.downcast::<InflateError>().ok())
                .expect("checked above");
            Ending::CloseAfterReadError(CloseCode::from(e.close_code()), e.to_string())
        }
        e => {
            tracing::debug!("WebSocket read failed: {e}");
            Ending::Drop
        }
    }
}
