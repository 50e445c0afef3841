//! The listener: the accept loop, each connection's PROXY header (with
//! `http.proxy_protocol`) and first request head (read under
//! `http.head_timeout`, see [`head`](super::head)), the client's address
//! (see [`forwarded`](super::forwarded)), its place under the limits (see
//! [`limits`](super::limits)), and hand-over to hyper or, for a
//! connection that opens with an event stream, to
//! [`stream_connection`](super::stream_connection). With `log.access`,
//! each request's line ([`access_log`](super::access_log)).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::access_log::{AccessEntry, AccessHandover};
use super::error::ApiError;
use super::forwarded::{self, TrustedProxies};
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
    let trusted = Arc::new(TrustedProxies::new(&config.http));
    let http = hyper_builder(&config.http);
    loop {
        let Some((stream, peer)) = next_connection(&app, &listener, "accept").await else {
            break;
        };
        let accepted = Instant::now();
        config = app.config();
        limits.follow(&config);
        tune_client_socket(&stream, &config.http);
        // A trusted proxy's own address is shared by all its clients: it
        // is not counted per address until a PROXY header names the client.
        let counted = (!trusted.trusts(peer.ip())).then_some(peer.ip());
        let pending = match limits.await_head(counted) {
            Ok(place) => place,
            Err(error) => {
                if app.config().log.access {
                    AccessEntry::refused(None, peer.ip(), peer, error.status.as_u16());
                }
                // No task, no waiting: a flood of refusals costs a write each.
                stream_connection::refuse_now(&stream, error.into_response(&app.metrics));
                continue;
            }
        };
        let connection = Connection {
            app: app.clone(),
            limits: limits.clone(),
            trusted: trusted.clone(),
            stream,
            peer,
            hop: peer.ip(),
            http: http.clone(),
        };
        app.tasks
            .spawn(connection.run(pending, accepted + app.config().http.head_timeout));
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

/// The socket options of an accepted client connection: no Nagle delay,
/// and the kernel's send queue bounded (`http.send_buffer_bytes`,
/// `http.notsent_lowat_bytes`). Shared with the TLS listener.
pub(super) fn tune_client_socket(stream: &TcpStream, http: &HttpConfig) {
    let _ = stream.set_nodelay(true);
    let socket = socket2::SockRef::from(stream);
    if let Some(bytes) = http.send_buffer_bytes {
        let _ = socket.set_send_buffer_size(bytes);
    }
    if http.notsent_lowat_bytes > 0 {
        // At most i32::MAX, the largest the option takes (config check).
        let lowat = u32::try_from(http.notsent_lowat_bytes).unwrap_or(u32::MAX);
        if let Err(e) = socket.set_tcp_notsent_lowat(lowat) {
            tracing::debug!("TCP_NOTSENT_LOWAT not set: {e}");
        }
    }
}

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

/// hyper's settings for every connection. The first request head has been
/// read already; these bound the requests after it on a kept-alive
/// connection: `header_read_timeout` runs from the end of a response until
/// the next head is complete (so it is the keep-alive timeout, and a
/// client that trickles its next head gets no longer), and a head over
/// `http.max_head_bytes` or `http.max_headers` is hyper's own `431` (with
/// no body).
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
    /// Whose word on the client's address is taken.
    trusted: Arc<TrustedProxies>,
    stream: TcpStream,
    /// The socket's peer, for the logs.
    peer: SocketAddr,
    /// Where the requests come from: the peer, or the source its PROXY
    /// header named. Each request's client is this, or the address it
    /// forwarded when this is a trusted proxy.
    hop: IpAddr,
    /// A copy of the node's settings, which the connection may change for
    /// itself (no keep-alive for a probe answered without a place).
    http: hyper::server::conn::http1::Builder,
}

/// How waiting for the first request head (or the PROXY header before
/// it) ended.
enum FirstHead<T> {
    Arrived(T),
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
    ///
    /// The task holds two pointers and no more: reading the first head
    /// (the PROXY header's and the head's reads, the parser, a refusal's
    /// write) is a box freed once the head is in, and serving is another,
    /// the size of its own path. An idle event stream keeps only its
    /// stream's box (P1: an async fn's state is as large as its largest
    /// await).
    async fn run(self, pending: PendingPlace, deadline: Instant) {
        if let Some(serving) = Box::pin(self.first_head(pending, deadline)).await {
            serving.await;
        }
    }

    /// [`Connection::run`] until the first head is in and the connection
    /// has its place: how it is then served, or `None` once it has been
    /// refused or has gone.
    async fn first_head(
        mut self,
        mut pending: PendingPlace,
        deadline: Instant,
    ) -> Option<BoxFuture<'static, ()>> {
        let app = self.app.clone();
        // A PROXY header first, when they are taken: it says who the
        // client is before the request head is read, so the pending
        // connection counts under the client's address from then on.
        let mut read = Vec::new();
        if self.trusted.reads_proxy_header() {
            let proxy_read = forwarded::read_proxy_header(&mut self.stream);
            let preface = match Self::until_head_of(&app, &pending, deadline, proxy_read).await {
                FirstHead::Arrived(preface) => preface,
                ended => {
                    self.end_early(ended, None).await;
                    return None;
                }
            };
            let from_trusted = self.trusted.trusts(self.peer.ip());
            if !from_trusted && preface.present {
                let refusal = forwarded::untrusted_proxy_header(self.peer.ip());
                self.end_early(FirstHead::<()>::Refused(refusal), None)
                    .await;
                return None;
            }
            if let (true, Some(source)) = (from_trusted, preface.source) {
                self.hop = source;
                if let Err(refusal) = pending.count_client(source) {
                    self.refuse_now(refusal, None);
                    return None;
                }
            }
            read = preface.rest;
        }
        let head_read = async {
            // What the PROXY header's read took past it comes first.
            let mut chained = std::io::Cursor::new(read).chain(&mut self.stream);
            head::read(&mut chained, &app.config().http).await
        };
        let head = match Self::until_head_of(&app, &pending, deadline, head_read).await {
            FirstHead::Arrived(head) => head,
            ended => {
                self.end_early(ended, None).await;
                return None;
            }
        };
        // The request is here: the connection leaves the queue of those
        // waiting, and takes a place under `limits.max_connections` for
        // its client. A probe over the limit is answered all the same,
        // without a place.
        let client = self.trusted.client_of(self.hop, head.request.headers());
        let permit = match self.limits.admit(client) {
            Ok(permit) => Some(permit),
            Err(_) if super::routes::is_probe(&head.request) => None,
            Err(error) => {
                self.end_early(FirstHead::<()>::Refused(error), Some(&head.request))
                    .await;
                return None;
            }
        };
        drop(pending);
        let client = ClientAddr(client);
        Some(match permit {
            Some(permit) if stream_connection::takes(&head.request) => {
                // The head's bytes (a 1 KiB buffer) are not kept for the
                // stream's life: the parsed request has all of it.
                let Head { request, bytes } = head;
                drop(bytes);
                Box::pin(stream_connection::serve(
                    self.app,
                    self.stream,
                    request,
                    permit,
                    client,
                    self.peer,
                ))
            }
            permit => Box::pin(self.serve_http(head.bytes, permit)),
        })
    }

    /// `read` under the first head's bounds: until `deadline`, unless a
    /// newer connection pushes this one out or the node shuts down.
    async fn until_head_of<T>(
        app: &App,
        pending: &PendingPlace,
        deadline: Instant,
        read: impl Future<Output = Result<Option<T>, ApiError>>,
    ) -> FirstHead<T> {
        tokio::select! {
            biased;
            // A connection that has not sent its request yet is simply
            // closed on shutdown (browsers open spare ones in advance).
            _ = app.shutdown.cancelled() => FirstHead::Gone,
            () = pending.pushed_out() => FirstHead::PushedOut,
            read = tokio::time::timeout_at(deadline, read) => {
                match read {
                    Err(_) => FirstHead::TimedOut,
                    Ok(Ok(Some(got))) => FirstHead::Arrived(got),
                    Ok(Ok(None)) => FirstHead::Gone,
                    Ok(Err(error)) => FirstHead::Refused(error),
                }
            }
        }
    }

    /// Ends a connection whose first head did not arrive, or was refused
    /// (`request`, when it had arrived).
    async fn end_early<T>(self, ended: FirstHead<T>, request: Option<&Request<()>>) {
        match ended {
            FirstHead::Arrived(_) | FirstHead::Gone => {}
            FirstHead::PushedOut => {
                let refusal = self.limits.pushed_out_error();
                self.refuse_now(refusal, None);
            }
            FirstHead::TimedOut => {
                let timeout = self.app.config().http.head_timeout;
                let refusal = ApiError::new(
                    http::StatusCode::REQUEST_TIMEOUT,
                    "head_timeout",
                    format!(
                        "the request head did not arrive within {timeout:?} of connecting (http.head_timeout)"
                    ),
                );
                self.refuse_now(refusal, None);
            }
            FirstHead::Refused(error) => self.refuse(error, request).await,
        }
    }

    /// Writes `error` if the socket takes it at once, and closes: for a
    /// client that has not sent its request, nothing is worth waiting for.
    fn refuse_now(self, error: ApiError, request: Option<&Request<()>>) {
        self.log_refusal(&error, request);
        let response = error.into_response(&self.app.metrics);
        stream_connection::refuse_now(&self.stream, response);
    }

    /// Answers the first request with `error` and closes.
    async fn refuse(mut self, error: ApiError, request: Option<&Request<()>>) {
        self.log_refusal(&error, request);
        let response = error.into_response(&self.app.metrics);
        stream_connection::write_response(&mut self.stream, response, REFUSAL_WRITE).await;
    }

    fn log_refusal(&self, error: &ApiError, request: Option<&Request<()>>) {
        if self.app.config().log.access {
            let client = match request {
                Some(req) => self.trusted.client_of(self.hop, req.headers()),
                None => self.hop,
            };
            AccessEntry::refused(request, client, self.peer, error.status.as_u16());
        }
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
            hop,
            trusted,
            mut http,
            ..
        } = self;
        if permit.is_none() {
            http.keep_alive(false);
        }
        let service = service(app.clone(), trusted, hop, peer, permit);
        let writes = Arc::new(WriteWatch::default());
        let io = WatchedIo {
            inner: Replayed::new(read, TokioIo::new(stream)),
            watch: writes.clone(),
        };
        let conn = http.serve_connection(io, service).with_upgrades();
        // An upgraded socket lives on in its own task (with its own ping
        // timeout).
        drive!(&app, conn, &writes, peer);
    }
}

/// What serves each request of a connection from `peer`: its client
/// address (`hop`, or whom a trusted proxy's header names) and `permit` in
/// its extensions, routed, and access-logged when `log.access` is on. The
/// plain and the TLS listener alike.
pub(super) fn service(
    app: Arc<App>,
    trusted: Arc<TrustedProxies>,
    hop: IpAddr,
    peer: SocketAddr,
    permit: Option<ConnectionPermit>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = http::Response<super::response::Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<super::response::Body>, Infallible>> + Send,
> + Clone {
    service_fn(move |mut req: Request<Incoming>| {
        let app = app.clone();
        // Each request's own: a proxy may send several clients'
        // requests over one connection.
        let client = trusted.client_of(hop, req.headers());
        req.extensions_mut().insert(ClientAddr(client));
        if let Some(permit) = &permit {
            req.extensions_mut().insert(permit.clone());
        }
        let access = app.config().log.access.then(|| {
            let handover = AccessHandover::new(AccessEntry::begin(&req, client, Some(peer)));
            req.extensions_mut().insert(handover.clone());
            handover
        });
        async move {
            let response = super::routes::route(&app, req, super::routes::Surface::Public).await;
            // Unless a WebSocket took its line for the connection's life.
            let entry = access.as_ref().and_then(AccessHandover::take);
            Ok::<_, Infallible>(match entry {
                Some(entry) => entry.finish(response),
                None => response,
            })
        }
    })
}

/// Runs a hyper connection (`conn`, HTTP/1.1 with upgrades or HTTP/2)
/// to its end: closed when its socket takes no data for
/// `http.write_timeout` while Herald has some to send; on shutdown, the
/// request in flight is finished (streams end themselves) and the
/// connection closed (HTTP/2: GOAWAY). A macro: hyper's two connection
/// types share the methods, not a trait.
macro_rules! drive {
    ($app:expr, $conn:expr, $writes:expr, $peer:expr) => {{
        let (app, writes, peer) = ($app, $writes, $peer);
        let mut conn = std::pin::pin!($conn);
        let write_timeout = app.config().http.write_timeout;
        let ended = tokio::select! {
            ended = conn.as_mut() => Some(ended),
            _ = writes.stalled_for(write_timeout) => {
                tracing::debug!(%peer, "closing a connection that took no data for {write_timeout:?}");
                None
            }
            _ = app.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                Some(conn.await)
            }
        };
        if let Some(Err(e)) = ended {
            tracing::debug!(%peer, "connection ended: {e}");
        }
    }};
}
pub(super) use drive;

#[cfg(test)]
mod tests {
    use super::*;

    /// An accepted socket, tuned with `http`; its `TCP_NOTSENT_LOWAT`.
    async fn lowat_after_tuning(http: &HttpConfig) -> u32 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (stream, _) = accepted.unwrap();
        let untuned = socket2::SockRef::from(&stream).tcp_notsent_lowat().unwrap();
        tune_client_socket(&stream, http);
        let tuned = socket2::SockRef::from(&stream).tcp_notsent_lowat().unwrap();
        if http.notsent_lowat_bytes == 0 {
            assert_eq!(tuned, untuned, "0 leaves the kernel's default");
        }
        tuned
    }

    #[tokio::test]
    async fn a_client_socket_holds_at_most_the_configured_unsent_bytes() {
        let http = HttpConfig::default();
        assert_eq!(lowat_after_tuning(&http).await, 128 * 1024, "the default");
        let http = HttpConfig {
            notsent_lowat_bytes: 16 * 1024,
            ..HttpConfig::default()
        };
        assert_eq!(lowat_after_tuning(&http).await, 16 * 1024);
        let http = HttpConfig {
            notsent_lowat_bytes: 0,
            ..HttpConfig::default()
        };
        lowat_after_tuning(&http).await;
    }
}
