//! WebSocket: `GET /ws[?channel=…[&cursor=…|&since=…]]`, JSON text frames.
//!
//! A connection holds up to `limits.max_channels_per_connection`
//! subscriptions, one per channel, each a hub [`Subscription`] with its own
//! cursor. The client sends `subscribe` / `unsubscribe`; Herald answers
//! `subscribed` (with the starting cursor), then `message` and `gap` frames
//! for that channel, `unsubscribed`, and `error` for anything it refuses —
//! the connection stays open after an error message. Channels in the query
//! are subscribed before the upgrade, for one-way clients (a refusal is then
//! an HTTP `400`, like SSE). See `docs/protocol.md` for the close codes.
//!
//! One task per connection owns the socket. Each subscription is a stream
//! of events polled inside that task (no task, no channel per
//! subscription), and a `biased` select drains them before it reads the
//! client's frames. Herald frames its own data frames: every ready delivery
//! of every subscription is encoded straight into the connection's output
//! buffer (frame header, then the shared envelope around this subscriber's
//! cursor: no allocation and no copy per message beyond that one) and the
//! round goes out in one write. tungstenite reads the client's frames and
//! sends pings, pongs and the close; it is flushed before each round, so
//! its frames and Herald's never interleave.
//!
//! **Memory.** tungstenite's defaults (128 KiB read buffer) would cost
//! ~133 KB per connection. Here its read buffer is `READ_BUFFER` (256 B);
//! the output buffer grows only while a round is written and is kept only
//! up to `OUT_KEEP`; what an idle connection costs is measured in
//! `docs/protocol.md`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::{ConnectionGauge, StreamParams, WS_PARAMS, observe_delivered, replay_failed, start_at};
use crate::hub::{CloseReason, Delivery, Gap, SubscribeError, Subscription};
use crate::server::{ApiError, App, Body, ConnectionSlot};

const TRANSPORT: &str = "ws";

/// tungstenite's read buffer, allocated up front for every connection, and
/// zeroed by every read: it is resident memory, all of it. A client's
/// messages are small (subscribe, unsubscribe); a bigger one grows the
/// buffer as it is read.
const READ_BUFFER: usize = 256;

/// tungstenite's write buffer: it only ever holds control frames (pings,
/// pongs, the close), which it writes at once.
const WRITE_BUFFER: usize = 1024;

/// The output buffer keeps its allocation between rounds up to this size,
/// so a steady stream of small rounds does not allocate each time; a
/// bigger one (a burst) is freed once written.
const OUT_KEEP: usize = 4 * 1024;

/// Messages one subscription hands over per batch.
const MAX_BATCH: usize = 256;

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

/// Close code: the client read too slowly and a subscription's queue
/// (`hub.subscriber_queue`) overflowed. Nothing is lost: it resubscribes
/// from its cursors.
const CLOSE_SLOW_CONSUMER: u16 = 4008;

type Socket = WebSocketStream<TokioIo<Upgraded>>;

pub async fn handle<B>(app: &Arc<App>, req: &mut Request<B>) -> Result<Response<Body>, ApiError> {
    let accept = accept_key(req.headers())?;
    let params = StreamParams::parse_for(req.uri().query(), &WS_PARAMS)?;
    if params.cursor.is_some() && params.channels.len() != 1 {
        return Err(ApiError::bad_request(
            "conflicting_parameters",
            format!(
                "cursor= in the /ws URL needs exactly one channel= ({} given): each WebSocket subscription has its own cursor; subscribe to the others with messages",
                params.channels.len()
            ),
        ));
    }
    let start = params.start(None)?;
    let mut channels: Vec<String> = Vec::new();
    for c in params.channels {
        if !channels.contains(&c) {
            channels.push(c);
        }
    }
    // Each channel is a subscription of its own, so the hub's per-subscription
    // limit is checked here for the connection as a whole.
    let max = app.config.limits.max_channels_per_connection;
    if channels.len() > max {
        return Err(SubscribeError::TooManyChannels {
            given: channels.len(),
            max,
        }
        .into());
    }
    // One-way clients: subscribed before the upgrade, so a refusal is a
    // plain HTTP error.
    let mut initial = Vec::with_capacity(channels.len());
    for channel in channels {
        let subscription = app
            .hub
            .subscribe_from(std::slice::from_ref(&channel), start.clone())
            .await?;
        initial.push((Arc::<str>::from(channel), subscription));
    }

    let slot = req.extensions().get::<ConnectionSlot>().cloned();
    let upgrade = hyper::upgrade::on(req);
    let app = app.clone();
    let tasks = app.tasks.clone();
    // The task itself holds only what waiting for the upgrade needs; the
    // connection, built once upgraded, lives in one box: an idle connection
    // costs less.
    tasks.spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!("WebSocket upgrade failed: {e}");
                return;
            }
        };
        Box::pin(serve(app, upgraded, initial)).await;
        // The place under `limits.max_connections` is freed only now.
        drop(slot);
    });

    let mut response = Response::new(Empty::new().map_err(|e| match e {}).boxed_unsync());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    Ok(response)
}

/// Runs an upgraded connection with its subscriptions from the URL.
async fn serve(app: Arc<App>, upgraded: Upgraded, initial: Vec<(Arc<str>, Subscription)>) {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(app.config.limits.max_message_size))
        .max_frame_size(Some(app.config.limits.max_message_size));
    let socket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let mut connection = Connection::new(app, socket);
    for (channel, subscription) in initial {
        connection.subscriptions.add(
            channel,
            SlotState::Live {
                subscription,
                announced: false,
            },
        );
    }
    connection.run().await;
}

/// Checks the upgrade request (RFC 6455 §4.2.1) and returns the
/// `Sec-WebSocket-Accept` value.
fn accept_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let refuse = |message: String| ApiError::bad_request("bad_handshake", message);
    if !has_token(header::UPGRADE, "websocket") {
        return Err(refuse(
            "/ws is the WebSocket endpoint: the request needs `Upgrade: websocket` (for plain HTTP use /sse or /poll)".into(),
        ));
    }
    if !has_token(header::CONNECTION, "upgrade") {
        return Err(refuse(
            "a WebSocket handshake needs `Connection: Upgrade`".into(),
        ));
    }
    match headers.get(header::SEC_WEBSOCKET_VERSION) {
        Some(v) if v == "13" => {}
        other => {
            return Err(refuse(format!(
                "Sec-WebSocket-Version is {:?}; Herald speaks version 13",
                other.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            )));
        }
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| refuse("Sec-WebSocket-Key is missing".into()))?;
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.as_bytes());
    if !decoded.is_ok_and(|k| k.len() == 16) {
        return Err(refuse(format!(
            "Sec-WebSocket-Key {:?} is not 16 bytes in base64",
            String::from_utf8_lossy(key.as_bytes())
        )));
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// A subscription's answer to the hub, while `subscribe` is in progress.
type Subscribing = Pin<Box<dyn Future<Output = Result<Subscription, SubscribeError>> + Send>>;

/// One subscription of a connection.
struct Slot {
    channel: Arc<str>,
    state: SlotState,
}

enum SlotState {
    /// Subscribing (from a `subscribe` message). Boxed: only a subscribing
    /// slot pays for the future.
    Subscribing(Subscribing),
    /// Subscribed; `announced` once `subscribed` has been sent.
    Live {
        subscription: Subscription,
        announced: bool,
    },
}

/// What a subscription hands to its connection.
struct Outbound {
    channel: Arc<str>,
    event: Event,
}

enum Event {
    /// Subscribed: the starting cursor.
    Subscribed(String),
    /// The hub refused the subscription; the slot is gone.
    Refused(ApiError),
    /// Gaps (with the cursor that steps over them), then the messages in
    /// [`Subscriptions::batch`].
    Batch { gaps: Vec<Gap>, cursor: String },
    /// The subscription ended (`failure` says why a replay failed); the
    /// slot is gone.
    Ended {
        reason: CloseReason,
        failure: Option<String>,
    },
}

impl Slot {
    /// The next event, appending a batch's messages to `batch`; `true`
    /// with it when the slot is finished.
    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Delivery>,
    ) -> Poll<(Event, bool)> {
        match &mut self.state {
            SlotState::Subscribing(answer) => match ready!(answer.as_mut().poll(cx)) {
                Ok(subscription) => {
                    let cursor = subscription.cursor();
                    self.state = SlotState::Live {
                        subscription,
                        announced: true,
                    };
                    Poll::Ready((Event::Subscribed(cursor), false))
                }
                Err(e) => Poll::Ready((Event::Refused(e.into()), true)),
            },
            SlotState::Live {
                subscription,
                announced,
            } => {
                if !*announced {
                    *announced = true;
                    return Poll::Ready((Event::Subscribed(subscription.cursor()), false));
                }
                match ready!(subscription.poll_batch(cx, batch, MAX_BATCH, true)) {
                    Ok(()) => {
                        let gaps = subscription.take_gaps();
                        let cursor = if gaps.is_empty() {
                            String::new()
                        } else {
                            subscription.cursor()
                        };
                        Poll::Ready((Event::Batch { gaps, cursor }, false))
                    }
                    Err(reason) => {
                        let failure = subscription.failure().map(str::to_owned);
                        Poll::Ready((Event::Ended { reason, failure }, true))
                    }
                }
            }
        }
    }
}

/// A connection's subscriptions, polled by its task: no task, no channel,
/// no stream combinator per subscription. Each inbox holds the task's
/// waker; on a wake the slots are polled in turn, starting after the last
/// one served, so a busy channel cannot starve the others.
#[derive(Default)]
struct Subscriptions {
    slots: Vec<Slot>,
    turn: usize,
    /// The messages of the last `Batch` event.
    batch: Vec<Delivery>,
}

impl Subscriptions {
    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn contains(&self, channel: &str) -> bool {
        self.slots.iter().any(|s| &*s.channel == channel)
    }

    fn add(&mut self, channel: Arc<str>, state: SlotState) {
        // A slot is a few hundred bytes and most connections hold one:
        // grow one at a time, not to four at once.
        self.slots.reserve_exact(1);
        self.slots.push(Slot { channel, state });
    }

    /// Drops a subscription (it leaves the hub now); whether there was one.
    fn remove(&mut self, channel: &str) -> bool {
        let before = self.slots.len();
        self.slots.retain(|s| &*s.channel != channel);
        self.slots.len() < before
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Outbound> {
        self.batch.clear();
        let n = self.slots.len();
        for k in 0..n {
            let i = (self.turn + k) % n;
            if let Poll::Ready((event, finished)) = self.slots[i].poll_event(cx, &mut self.batch) {
                let channel = if finished {
                    self.turn = i;
                    self.slots.remove(i).channel
                } else {
                    self.turn = i + 1;
                    self.slots[i].channel.clone()
                };
                return Poll::Ready(Outbound { channel, event });
            }
        }
        Poll::Pending
    }

    /// The next event if one is ready, registering the task's waker
    /// otherwise (unlike `now_or_never`, which would leave a no-op waker
    /// in the inboxes).
    async fn ready_now(&mut self) -> Option<Outbound> {
        std::future::poll_fn(|cx| match self.poll_next(cx) {
            Poll::Ready(outbound) => Poll::Ready(Some(outbound)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }
}

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

struct Connection {
    app: Arc<App>,
    socket: Socket,
    subscriptions: Subscriptions,
    /// Text frames encoded by Herald, written together at the end of a
    /// round.
    out: Vec<u8>,
    _gauge: ConnectionGauge,
}

impl Connection {
    fn new(app: Arc<App>, socket: Socket) -> Self {
        let gauge = ConnectionGauge::new(&app.metrics, TRANSPORT);
        Connection {
            app,
            socket,
            subscriptions: Subscriptions::default(),
            out: Vec::new(),
            _gauge: gauge,
        }
    }

    async fn run(mut self) {
        let ping_interval = self.app.config.ws.ping_interval;
        let pong_timeout = self.app.config.ws.pong_timeout;
        let shutdown = self.app.shutdown.clone();
        // Registered with the token once, not on every turn of the loop.
        let mut stopping = std::pin::pin!(shutdown.cancelled());
        let mut keepalive = Keepalive::Idle;
        let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(ping_interval));
        let mut streak = 0u32;
        let ending = loop {
            tokio::select! {
                biased;
                _ = &mut stopping => {
                    break Ending::Close(CloseCode::Away, "shutdown".into());
                }
                first = std::future::poll_fn(|cx| self.subscriptions.poll_next(cx)),
                    if !self.subscriptions.is_empty() && streak < MAX_STREAK =>
                {
                    streak += 1;
                    if let Err(ending) = Box::pin(self.write_round(first)).await {
                        break ending;
                    }
                }
                frame = self.socket.next() => {
                    streak = 0;
                    // Any frame shows the client is alive.
                    keepalive = Keepalive::Idle;
                    timer.as_mut().reset(Instant::now() + ping_interval);
                    if let Err(ending) = Box::pin(self.on_frame(frame)).await {
                        break ending;
                    }
                }
                _ = timer.as_mut() => {
                    streak = 0;
                    match keepalive {
                        Keepalive::Idle => {
                            if let Err(ending) = Box::pin(self.ping()).await {
                                break ending;
                            }
                            keepalive = Keepalive::AwaitingPong;
                            timer.as_mut().reset(Instant::now() + pong_timeout);
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

    /// Writes `first` and whatever else the subscriptions have ready (up to
    /// [`MAX_ROUND`] batches), then flushes once.
    async fn write_round(&mut self, first: Outbound) -> Result<(), Ending> {
        let mut next = Some(first);
        let mut taken = 0;
        let mut ended = Ok(());
        while let Some(outbound) = next.take() {
            ended = self.encode_event(outbound);
            taken += 1;
            if ended.is_ok() && taken < MAX_ROUND {
                next = self.subscriptions.ready_now().await;
            }
        }
        // What was encoded before an ending (say, the messages before a
        // slow-consumer close) still goes out.
        let deadline = Instant::now() + self.app.config.ws.pong_timeout;
        self.write_out(deadline).await?;
        ended
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
                    message_frame(&mut self.out, d);
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
        let message = match frame {
            None => return Err(Ending::Closed),
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(read_error(e, self.app.config.limits.max_message_size)),
        };
        match message {
            Message::Text(text) => match self.on_text(&text) {
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
    fn on_text(&mut self, input: &str) -> Option<String> {
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
                let max = self.app.config.limits.max_channels_per_connection;
                if self.subscriptions.len() >= max {
                    return Some(error_json(
                        "too_many_channels",
                        &format!(
                            "this connection holds {max} subscriptions, the limit (limits.max_channels_per_connection)"
                        ),
                        Some(&channel),
                    ));
                }
                let start = match start_at(cursor.as_deref(), since.as_deref()) {
                    Ok(start) => start,
                    Err(e) => return Some(error_json(e.code, &e.message, Some(&channel))),
                };
                let hub = self.app.hub.clone();
                let names = [channel.clone()];
                let answer: Subscribing =
                    Box::pin(async move { hub.subscribe_from(&names, start).await });
                self.subscriptions
                    .add(Arc::from(channel), SlotState::Subscribing(answer));
                None
            }
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

    /// Writes the output buffer, after anything tungstenite still holds
    /// (a pong queued while reading), so frames never interleave.
    async fn write_out(&mut self, deadline: Instant) -> Result<(), Ending> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.flush_by(deadline).await?;
        let io = self.socket.get_mut();
        let written = within(deadline, io.write_all(&self.out)).await;
        self.written(written)?;
        if self.out.capacity() > OUT_KEEP {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        Ok(())
    }

    /// Sends one text frame (a reply to the client) now.
    async fn reply(&mut self, json: &str) -> Result<(), Ending> {
        text_frame(&mut self.out, &[json.as_bytes()]);
        let deadline = Instant::now() + self.app.config.ws.pong_timeout;
        self.write_out(deadline).await
    }

    async fn flush_by(&mut self, deadline: Instant) -> Result<(), Ending> {
        let flushed = within(deadline, self.socket.flush()).await;
        self.written(flushed)
    }

    /// Sends a ping now.
    async fn ping(&mut self) -> Result<(), Ending> {
        let deadline = Instant::now() + self.app.config.ws.pong_timeout;
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
        e => {
            tracing::debug!("WebSocket read failed: {e}");
            Ending::Drop
        }
    }
}

/// Appends one unmasked, unfragmented text frame whose payload is `parts`
/// in order. Every part is UTF-8 (JSON Herald wrote, or the envelope,
/// which the hub encodes as UTF-8), so the frame is valid text.
fn text_frame(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    out.reserve(header.len(len as u64) + len);
    header
        .format(len as u64, out)
        .expect("writing to a Vec cannot fail");
    for part in parts {
        debug_assert!(std::str::from_utf8(part).is_ok());
        out.extend_from_slice(part);
    }
}

/// `{"type":"message",…envelope}`: the shared envelope around this
/// subscriber's cursor.
fn message_frame(out: &mut Vec<u8>, d: &Delivery) {
    const TYPE: &[u8] = b"{\"type\":\"message\",";
    let e = d.publication.envelope();
    // The envelope's head opens with `{`.
    text_frame(out, &[TYPE, &e.head[1..], d.cursor.as_bytes(), &e.tail]);
}

/// `{"type":"error","code","message"[,"channel"]}`.
fn error_json(code: &str, message: &str, channel: Option<&str>) -> String {
    let mut frame = serde_json::json!({"type": "error", "code": code, "message": message});
    if let Some(channel) = channel {
        frame["channel"] = channel.into();
    }
    frame.to_string()
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A message from the client.
#[derive(Debug, PartialEq)]
enum ClientMessage {
    Subscribe {
        channel: String,
        cursor: Option<String>,
        since: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
}

/// Why a client message was refused: the `error` message's fields.
#[derive(Debug)]
struct Refusal {
    code: &'static str,
    message: String,
    channel: Option<String>,
}

impl ClientMessage {
    fn parse(text: &str) -> Result<ClientMessage, Refusal> {
        let bad = |message: String, channel: Option<&str>| Refusal {
            code: "bad_message",
            message,
            channel: channel.map(str::to_owned),
        };
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| bad(format!("message is not valid JSON: {e}"), None))?;
        let serde_json::Value::Object(fields) = value else {
            return Err(bad(
                "a message must be a JSON object with a \"type\"".into(),
                None,
            ));
        };
        let kind = match fields.get("type") {
            Some(serde_json::Value::String(kind)) => kind.as_str(),
            Some(other) => {
                return Err(bad(format!("\"type\" must be a string, not {other}"), None));
            }
            None => return Err(bad("the message has no \"type\"".into(), None)),
        };
        let allowed: &[&str] = match kind {
            "subscribe" => &["type", "channel", "cursor", "since"],
            "unsubscribe" => &["type", "channel"],
            other => {
                return Err(bad(
                    format!(
                        "unknown message type {other:?} (expected \"subscribe\" or \"unsubscribe\")"
                    ),
                    None,
                ));
            }
        };
        let channel = match fields.get("channel") {
            Some(serde_json::Value::String(c)) => c.clone(),
            Some(other) => {
                return Err(bad(
                    format!("\"channel\" must be a string, not {other}"),
                    None,
                ));
            }
            None => return Err(bad(format!("{kind} needs a \"channel\""), None)),
        };
        if let Some(field) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(
                format!(
                    "unknown field {field:?} in {kind} (expected {})",
                    allowed[1..].join(", ")
                ),
                Some(&channel),
            ));
        }
        if kind == "unsubscribe" {
            return Ok(ClientMessage::Unsubscribe { channel });
        }
        let cursor = match fields.get("cursor") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(c)) => Some(c.clone()),
            Some(other) => {
                return Err(Refusal {
                    code: "invalid_cursor",
                    message: format!("\"cursor\" must be a string, not {other}"),
                    channel: Some(channel),
                });
            }
        };
        let since = match fields.get("since") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                return Err(Refusal {
                    code: "invalid_since",
                    message: format!(
                        "\"since\" must be milliseconds since the epoch or an RFC 3339 string, not {other}"
                    ),
                    channel: Some(channel),
                });
            }
        };
        Ok(ClientMessage::Subscribe {
            channel,
            cursor,
            since,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> Refusal {
        ClientMessage::parse(text).unwrap_err()
    }

    #[test]
    fn client_messages_parse() {
        assert_eq!(
            ClientMessage::parse(r#"{"type":"subscribe","channel":"news"}"#).unwrap(),
            ClientMessage::Subscribe {
                channel: "news".into(),
                cursor: None,
                since: None
            }
        );
        assert_eq!(
            ClientMessage::parse(
                r#"{"type":"subscribe","channel":"a","cursor":"hAA","since":null}"#
            )
            .unwrap(),
            ClientMessage::Subscribe {
                channel: "a".into(),
                cursor: Some("hAA".into()),
                since: None
            }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"subscribe","channel":"a","since":1700000000000}"#)
                .unwrap(),
            ClientMessage::Subscribe {
                channel: "a".into(),
                cursor: None,
                since: Some("1700000000000".into())
            }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"channel":"a","type":"unsubscribe"}"#).unwrap(),
            ClientMessage::Unsubscribe {
                channel: "a".into()
            }
        );
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        for (text, needle) in [
            ("{nope", "not valid JSON"),
            ("[1]", "JSON object"),
            (r#"{"channel":"a"}"#, "no \"type\""),
            (r#"{"type":7}"#, "must be a string"),
            (r#"{"type":"hello"}"#, "unknown message type \"hello\""),
            (r#"{"type":"subscribe"}"#, "subscribe needs a \"channel\""),
            (
                r#"{"type":"unsubscribe","channel":5}"#,
                "\"channel\" must be",
            ),
            (
                r#"{"type":"subscribe","channel":"a","curser":"x"}"#,
                "unknown field \"curser\"",
            ),
        ] {
            let r = refused(text);
            assert_eq!(r.code, "bad_message", "{text}");
            assert!(r.message.contains(needle), "{text}: {}", r.message);
        }
        let r = refused(r#"{"type":"subscribe","channel":"a","cursor":5}"#);
        assert_eq!(
            (r.code, r.channel.as_deref()),
            ("invalid_cursor", Some("a"))
        );
    }

    #[test]
    fn handshake_is_checked() {
        let mut h = HeaderMap::new();
        assert!(accept_key(&h).unwrap_err().message.contains("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert!(accept_key(&h).unwrap_err().message.contains("version 13"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        assert!(accept_key(&h).unwrap_err().message.contains("missing"));
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("short"));
        assert_eq!(accept_key(&h).unwrap_err().code, "bad_handshake");
        // RFC 6455's example.
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(accept_key(&h).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        assert_eq!(truncate("é".repeat(100), 123).len(), 122);
        assert_eq!(truncate("ok".into(), 123), "ok");
    }
}
