//! The listener: the accept loop, each connection's first request head
//! (read under `http.head_timeout`, see [`head`](super::head)), its place
//! under the limits (see [`limits`](super::limits)), and hand-over to
//! hyper or, for a connection that opens with an event stream, to
//! [`stream_connection`](super::stream_connection).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::error::ApiError;
use super::head::{self, Head, Replayed};
use super::limits::{ClientAddr, ConnectionLimits, ConnectionPermit, PendingPlace};
use super::stream_connection;
use super::write_watch::{WatchedIo, WriteWatch};
use crate::app::App;
use crate::config::HttpConfig;

/// How long writing a refusal to a client that has sent its request may
/// take; past it the socket is dropped.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// Accepts connections until shutdown, then waits for them to drain
/// (under `http.shutdown_grace`).
pub async fn serve(app: Arc<App>, listener: TcpListener, limits: Arc<ConnectionLimits>) {
    let mut config = app.config();
    let http = hyper_builder(&config.http);
    loop {
        let Some((stream, peer)) = next_connection(&app, &listener, "accept").await else {
            break;
        };
        let accepted = Instant::now();
        let latest = app.config();
        if !Arc::ptr_eq(&config, &latest) {
            // Reloaded: `[limits]` from this connection on.
            limits.reconfigure(&latest.limits);
            config = latest;
        }
        let _ = stream.set_nodelay(true);
        if let Some(bytes) = config.http.send_buffer_bytes {
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(bytes);
        }
        let pending = match limits.await_head(peer.ip()) {
            Ok(place) => place,
            Err(error) => {
                // No task, no waiting: a flood of refusals costs a write each.
                stream_connection::refuse_now(&stream, error.into_response(&app.metrics));
                continue;
            }
        };
        let connection = Connection {
            app: app.clone(),
            limits: limits.clone(),
            stream,
            peer,
            http: http.clone(),
        };
        app.tasks
            .spawn(connection.run(pending, accepted + config.http.head_timeout));
    }
    drop(listener);
    app.tasks.close();
    let grace = app.config().http.shutdown_grace;
    tokio::select! {
        _ = app.tasks.wait() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "shutdown grace period ran out; dropping remaining connections");
        }
    }
}

/// hyper's settings for every connection. The first request head has been
/// read already; these bound the requests after it on a kept-alive
/// connection: `header_read_timeout` runs from the end of a response until
/// the next head is complete (so it is the keep-alive timeout, and a
/// client that trickles its next head gets no longer), and a head over
/// `http.max_head_bytes` or `http.max_headers` is hyper's own `431` (with
/// no body).
/// The next accepted connection, or `None` once shutdown has started. A
/// failed accept (usually EMFILE) is logged and retried after a pause
/// instead of spinning. Shared with the admin listener.
pub(super) async fn next_connection(
    app: &App,
    listener: &TcpListener,
    what: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            biased;
            _ = app.shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!("{what} failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

pub(super) fn hyper_builder(config: &HttpConfig) -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.keepalive_timeout)
        .max_header_size(config.max_head_bytes)
        .max_headers(config.max_headers);
    http
}

/// A connection that has been accepted, and what serving it takes.
struct Connection {
    app: Arc<App>,
    /// Where its places come from, and go back to.
    limits: Arc<ConnectionLimits>,
    stream: TcpStream,
    /// The client's address: its per-address limits, and the logs.
    peer: SocketAddr,
    /// A copy of the node's settings, which the connection may change for
    /// itself (no keep-alive for a probe answered without a place).
    http: hyper::server::conn::http1::Builder,
}

/// How waiting for the first request head ended.
enum FirstHead {
    Arrived(Head),
    Refused(ApiError),
    /// Past `http.head_timeout`.
    TimedOut,
    /// A newer connection took this one's place.
    PushedOut,
    /// The client went away, or the node is shutting down.
    Gone,
}

impl Connection {
    /// Waits for the first request head (until `deadline`), takes a place
    /// under `limits.max_connections`, and serves the connection.
    async fn run(mut self, pending: PendingPlace, deadline: Instant) {
        let app = self.app.clone();
        let config = app.config();
        let first = tokio::select! {
            biased;
            // A connection that has not sent its request yet is simply
            // closed on shutdown (browsers open spare ones in advance).
            _ = app.shutdown.cancelled() => FirstHead::Gone,
            () = pending.pushed_out() => FirstHead::PushedOut,
            read = tokio::time::timeout_at(deadline, head::read(&mut self.stream, &config.http)) => {
                match read {
                    Err(_) => FirstHead::TimedOut,
                    Ok(Ok(Some(head))) => FirstHead::Arrived(head),
                    Ok(Ok(None)) => FirstHead::Gone,
                    Ok(Err(error)) => FirstHead::Refused(error),
                }
            }
        };
        let head = match first {
            FirstHead::Arrived(head) => head,
            FirstHead::Gone => return,
            FirstHead::PushedOut => {
                let refusal = self.limits.pushed_out_error();
                return self.refuse_now(refusal);
            }
            FirstHead::TimedOut => {
                let timeout = app.config().http.head_timeout;
                let refusal = ApiError::new(
                    http::StatusCode::REQUEST_TIMEOUT,
                    "head_timeout",
                    format!(
                        "the request head did not arrive within {timeout:?} of connecting (http.head_timeout)"
                    ),
                );
                return self.refuse_now(refusal);
            }
            FirstHead::Refused(error) => return self.refuse(error).await,
        };
        // The request is here: the connection leaves the queue of those
        // waiting, and takes a place under `limits.max_connections`. A
        // probe over the limit is answered all the same, without a place.
        let permit = match self.limits.admit(self.peer.ip()) {
            Ok(permit) => Some(permit),
            Err(_) if super::routes::is_probe(&head.request) => None,
            Err(error) => return self.refuse(error).await,
        };
        drop(pending);
        let client = ClientAddr(self.peer.ip());
        match permit {
            Some(permit) if stream_connection::takes(&head.request) => {
                let request = head.request;
                // Each path in its own box: the task holds only the one it takes.
                Box::pin(stream_connection::serve(
                    self.app,
                    self.stream,
                    request,
                    permit,
                    client,
                ))
                .await;
            }
            permit => Box::pin(self.serve_http(head.bytes, permit)).await,
        }
    }

    /// Writes `error` if the socket takes it at once, and closes: for a
    /// client that has not sent its request, nothing is worth waiting for.
    fn refuse_now(self, error: ApiError) {
        let response = error.into_response(&self.app.metrics);
        stream_connection::refuse_now(&self.stream, response);
    }

    /// Answers the first request with `error` and closes.
    async fn refuse(mut self, error: ApiError) {
        let response = error.into_response(&self.app.metrics);
        stream_connection::write_response(&mut self.stream, response, REFUSAL_WRITE).await;
    }

    /// Serves the connection with hyper, `read` (the first head and what
    /// came after it) first: any request, keep-alive, upgrades. Without a
    /// `permit` (a probe answered over the limit), the connection closes
    /// after its first response.
    async fn serve_http(self, read: Vec<u8>, permit: Option<ConnectionPermit>) {
        let Connection {
            app,
            stream,
            peer,
            mut http,
            ..
        } = self;
        if permit.is_none() {
            http.keep_alive(false);
        }
        let app2 = app.clone();
        let client = ClientAddr(peer.ip());
        let service = service_fn(move |mut req: Request<Incoming>| {
            let app = app2.clone();
            req.extensions_mut().insert(client);
            if let Some(permit) = &permit {
                req.extensions_mut().insert(permit.clone());
            }
            async move {
                Ok::<_, Infallible>(
                    super::routes::route(&app, req, super::routes::Surface::Public).await,
                )
            }
        });
        let writes = Arc::new(WriteWatch::default());
        let io = WatchedIo {
            inner: Replayed::new(read, TokioIo::new(stream)),
            watch: writes.clone(),
        };
        let conn = http.serve_connection(io, service).with_upgrades();
        let mut conn = std::pin::pin!(conn);
        let write_timeout = app.config().http.write_timeout;
        // On shutdown, finish the request in flight (streams end themselves)
        // and close; an upgraded socket lives on in its own task (with its own
        // ping timeout).
        let ended = tokio::select! {
            ended = conn.as_mut() => ended,
            _ = writes.stalled_for(write_timeout) => {
                tracing::debug!(%peer, "closing a connection that took no data for {write_timeout:?}");
                return;
            }
            _ = app.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = ended {
            tracing::debug!(%peer, "connection ended: {e}");
        }
    }
}
