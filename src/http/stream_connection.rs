//! HTTP/1.1 for a connection whose first request is `GET /sse`, without
//! hyper.
//!
//! An event stream is the one response that lives as long as its
//! connection, and hyper keeps an 8 KiB read buffer and an 8 KiB write
//! buffer for a connection's whole life: most of what an idle SSE client
//! cost (about 15 KiB in `herald-bench` P1). Such a connection needs no
//! keep-alive, no pipelining and no request body, so Herald serves it
//! itself: the request head, read by the listener into a buffer freed once
//! parsed (with `httparse`, the parser hyper uses), is answered through the
//! same handler as the hyper
//! path ([`transport::sse::handle`](crate::transport::sse::handle)), writes
//! the response head, then the event stream's chunks as they come (chunked
//! transfer coding, as hyper would: a client can tell a stream that ended
//! from a connection that dropped), and closes the connection when the
//! stream ends.
//!
//! The listener has read and parsed the request head already
//! ([`head`](super::head)), under the same bounds as every other request,
//! and chose this path for a connection whose first request is `GET /sse`
//! ([`takes`]); every other connection is served by hyper.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use http_body_util::BodyExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::ReadHalf;

use super::access_log::AccessEntry;
use super::cors::finish_response;
use super::limits::{ClientAddr, ConnectionPermit};
use super::response::Body;
use crate::app::App;
use crate::transport;
use crate::transport::gate::Gate;

/// Whether a connection whose first request is `req` is served here.
pub fn takes<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET && req.uri().path() == "/sse"
}

/// Serves the SSE request `req` (the connection's first) on `stream`,
/// then closes it. `slot` is the connection's place under the limits,
/// held until the stream ends; `client` its address (the forwarded one
/// behind a trusted proxy), `peer` the socket's.
///
/// Answering (the subscription, its refusal) is a box of its own, freed
/// before the stream starts: what stays for the stream's life is the
/// response's body and the writing of it. Not an `async fn`, whose
/// arguments are stored twice (see `ws::Connection::run`).
#[allow(clippy::manual_async_fn)] // the argument-size note above
pub fn serve(
    app: Arc<App>,
    mut stream: TcpStream,
    req: Request<()>,
    slot: ConnectionPermit,
    client: ClientAddr,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    async move {
        let response = Box::pin(respond(&app, req, client, peer)).await;
        write_response(&mut stream, response, app.config().http.write_timeout).await;
        drop(slot);
    }
}

/// The response to the SSE request `req` from `client`: the event stream,
/// or a refusal; access-logged when `log.access` is on.
async fn respond(
    app: &Arc<App>,
    mut req: Request<()>,
    client: ClientAddr,
    peer: SocketAddr,
) -> http::Response<Body> {
    req.extensions_mut().insert(client);
    let access = app
        .config()
        .log
        .access
        .then(|| AccessEntry::begin(&req, client.0, Some(peer)));
    let result = transport::sse::handle(app, &req).await;
    let response = finish_response(app, req.headers(), result);
    match access {
        Some(entry) => entry.finish(response),
        None => response,
    }
}

/// Writes a small, complete `response` (a refusal) if the socket takes it
/// at once, and waits for nothing: the caller then drops the socket. What
/// the client has sent is read and dropped first, so that closing does not
/// reset the connection before the client reads the answer.
pub(crate) fn refuse_now(stream: &TcpStream, response: http::Response<Body>) {
    let mut discard = [0u8; 4096];
    while let Ok(n) = stream.try_read(&mut discard) {
        if n == 0 {
            break;
        }
    }
    let (mut bytes, mut body, _) = response_head(response);
    if let Some(Some(Ok(frame))) = futures_util::FutureExt::now_or_never(body.frame())
        && let Ok(data) = frame.into_data()
    {
        bytes.extend_from_slice(&data);
    }
    let _ = stream.try_write(&bytes);
}

/// Writes `response` on a socket hyper does not hold (a stream, or the
/// accept loop's refusals), then closes the connection. A write that makes
/// no progress for `write_timeout` gives up.
pub(crate) async fn write_response(
    stream: &mut TcpStream,
    response: http::Response<Body>,
    write_timeout: Duration,
) {
    let (head, body, chunked) = response_head(response);
    let sent = write_all(stream, &head, write_timeout).await;
    // Only the body stays for the stream's life; the head and the
    // response's header map are freed now.
    drop(head);
    if sent.is_ok() {
        send_body(stream, body, chunked, write_timeout).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
}

/// The response's status line and headers, its body, and whether the body
/// goes chunk-coded (a stream) rather than with a `content-length`.
fn response_head(response: http::Response<Body>) -> (Vec<u8>, Body, bool) {
    let (parts, body) = response.into_parts();
    let length = hyper::body::Body::size_hint(&body).exact();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    match length {
        Some(length) => head.push_str(&format!("content-length: {length}\r\n")),
        None => head.push_str("transfer-encoding: chunked\r\n"),
    }
    head.push_str("connection: close\r\n\r\n");
    (head.into_bytes(), body, length.is_none())
}

/// Writes the body's chunks as the stream yields them (each in one write,
/// chunk-coded when `chunked`), until it ends, the client stops taking
/// data, or the client closes the connection: that is noticed at once (as
/// hyper would), not at the next heartbeat, so its place under the limits
/// and its subscription are freed.
async fn send_body(stream: &mut TcpStream, mut body: Body, chunked: bool, write_timeout: Duration) {
    let (reader, mut stream) = stream.split();
    let mut gone = std::pin::pin!(closed(reader));
    // The read side is polled only after it woke the task, not on every
    // chunk (each poll takes the I/O driver's per-socket lock).
    let read_gate = Gate::new();
    loop {
        let frame = tokio::select! {
            biased;
            () = std::future::poll_fn(|cx| read_gate.poll(cx, |cx| gone.as_mut().poll(cx))) => return,
            frame = body.frame() => frame,
        };
        let Some(Ok(frame)) = frame else {
            break;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let sent = if chunked {
            let mut coded = Vec::with_capacity(data.len() + 16);
            coded.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            coded.extend_from_slice(&data);
            coded.extend_from_slice(b"\r\n");
            write_all(&mut stream, &coded, write_timeout).await
        } else {
            write_all(&mut stream, &data, write_timeout).await
        };
        if sent.is_err() {
            return;
        }
    }
    if chunked {
        let _ = write_all(&mut stream, b"0\r\n\r\n", write_timeout).await;
    }
}

/// Resolves when the client has closed its side of the connection (or it
/// failed). Anything it sends meanwhile is read and dropped.
async fn closed(reader: ReadHalf<'_>) {
    loop {
        if reader.readable().await.is_err() {
            return;
        }
        let mut discard = [0u8; 64];
        match reader.try_read(&mut discard) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Writes `bytes`, giving up when one write makes no progress for
/// `http.write_timeout` (a client that takes no data), as the hyper path
/// does.
async fn write_all(
    stream: &mut (impl AsyncWrite + Unpin),
    mut bytes: &[u8],
    limit: Duration,
) -> Result<(), ()> {
    while !bytes.is_empty() {
        match tokio::time::timeout(limit, stream.write(bytes)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(()),
            Ok(Ok(n)) => bytes = &bytes[n..],
            Err(_) => {
                tracing::debug!("closing an SSE connection that took no data for {limit:?}");
                return Err(());
            }
        }
    }
    Ok(())
}
