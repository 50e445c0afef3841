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
//!
//! **Compression.** With `ws.compression` on, a client that offers
//! `permessage-deflate` gets it ([`extension`]): each `message` frame is
//! the publication's payload compressed once for every such connection
//! (`hub::deflated`), around this subscriber's cursor; other frames go
//! plain. The client's compressed messages are inflated by [`inflate`]
//! before tungstenite reads them.
//!
//! The module's parts: [`handshake`] checks the upgrade request,
//! [`extension`] negotiates permessage-deflate, [`protocol`] parses the
//! client's messages, the transports' shared
//! [`subscriptions`](super::subscriptions) table holds the connection's
//! subscriptions, [`connection`] the loop that owns
//! the socket, [`frame`] encodes Herald's own frames, and [`inflate`]
//! inflates the client's.

mod connection;
mod extension;
mod frame;
mod handshake;
mod inflate;
mod protocol;

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use self::connection::Connection;
use self::inflate::Inbound;
use super::subscriptions::EntryState;
use crate::app::App;
use crate::http::access::{self, Reader};
use crate::http::access_log::{AccessEntry, AccessHandover};
use crate::http::error::ApiError;
use crate::http::limits::{ClientAddr, ConnectionPermit};
use crate::http::query::{QueryLimits, StreamParams, WS_PARAMS};
use crate::http::response::Body;
use crate::hub::{SubscriberKind, Subscription};

/// The `transport` label of this transport's metrics.
const TRANSPORT: &str = "ws";

/// tungstenite's read buffer, allocated up front for every connection, and
/// zeroed by every read: it is resident memory, all of it. A client's
/// messages are small (subscribe, unsubscribe); a bigger one grows the
/// buffer as it is read.
const READ_BUFFER: usize = 256;

/// tungstenite's write buffer: it only ever holds control frames (pings,
/// pongs, the close), which it writes at once.
const WRITE_BUFFER: usize = 1024;

pub async fn handle<B>(app: &Arc<App>, req: &mut Request<B>) -> Result<Response<Body>, ApiError> {
    let accept = handshake::accept_key(req.headers())?;
    let extensions = match app.config().ws.compression {
        true => extension::negotiate(req.headers()),
        false => None,
    };
    let deflate = extensions.is_some();
    let params = StreamParams::parse_for(
        req.uri().query(),
        &WS_PARAMS,
        QueryLimits::of(&app.config()),
    )?;
    let reader = access::authenticate(app, req.headers(), params.token.as_deref()).await?;
    reader.authorize(app, &params.channels)?;
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
    // Each channel is a subscription of its own: the query's bound on
    // channels (distinct ones, `limits.max_channels_per_connection`) is the
    // connection's.
    let channels = params.channels;
    let client = ClientAddr::of(req);
    // One-way clients: subscribed before the upgrade, so a refusal is a
    // plain HTTP error.
    let mut initial = Vec::with_capacity(channels.len());
    for channel in channels {
        let subscription = app
            .hub
            .subscribe_from(std::slice::from_ref(&channel), start.clone(), client)
            .await?;
        subscription.count_as(SubscriberKind::Ws);
        initial.push((Arc::<str>::from(channel), subscription));
    }

    let slot = req.extensions().get::<ConnectionPermit>().cloned();
    // The access-log line (when on) is the connection's: written when it
    // closes, with its whole duration.
    let access = AccessHandover::take_from(req).map(|entry| Box::new(entry.upgraded()));
    let upgrade = hyper::upgrade::on(req);
    let app = app.clone();
    let tasks = app.tasks.clone();
    // The task itself holds only what waiting for the upgrade needs.
    // Setting the connection up is a box freed before it runs, and the
    // running connection is another: an idle connection keeps only its
    // own state (P1: an async fn's state is as large as its largest await).
    tasks.spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!("WebSocket upgrade failed: {e}");
                return;
            }
        };
        let running = Box::pin(connect(
            app, upgraded, deflate, reader, client, initial, access,
        ))
        .await;
        running.await;
        // The place under `limits.max_connections` is freed only now.
        drop(slot);
    });

    Ok(handshake::switching_protocols(
        &accept,
        extensions.as_deref(),
    ))
}

/// An upgraded connection of `reader`, from `client`, with its
/// subscriptions from the URL, compressed when it negotiated `deflate`
/// (`access` is its access-log line, written when it closes): the
/// connection's run, in a box of its own size.
async fn connect(
    app: Arc<App>,
    upgraded: Upgraded,
    deflate: bool,
    reader: Reader,
    client: IpAddr,
    initial: Vec<(Arc<str>, Subscription)>,
    access: Option<Box<AccessEntry>>,
) -> Pin<Box<impl Future<Output = ()> + Send>> {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(app.config().limits.max_message_size))
        .max_frame_size(Some(app.config().limits.max_message_size));
    let limit = app.config().limits.max_message_size;
    let io = Inbound::new(TokioIo::new(upgraded), deflate, limit);
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let mut connection = Connection::new(app, socket, deflate, reader, client, access);
    for (channel, subscription) in initial {
        connection.subscriptions.add(
            channel,
            EntryState::Live {
                subscription,
                announced: false,
            },
        );
    }
    Box::pin(connection.run())
}
