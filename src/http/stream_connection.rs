//! HTTP/1.1 for a connection whose first request is `GET /sse`, without
//! hyper.
//!
//! An event stream is the one response that lives as long as its
//! connection, and hyper keeps an 8 KiB read buffer and an 8 KiB write
//! buffer for a connection's whole life: most of what an idle SSE client
//! cost (about 15 KiB in `herald-bench` P1). Such a connection needs no
//! keep-alive, no pipelining and no request body, so Herald reads the
//! request head itself (into a buffer freed once parsed, with `httparse`,
//! the parser hyper uses), answers through the same handler as the hyper
//! path ([`transport::sse::handle`](crate::transport::sse::handle)), writes
//! the response head, then the event stream's chunks as they come (chunked
//! transfer coding, as hyper would: a client can tell a stream that ended
//! from a connection that dropped), and closes the connection when the
//! stream ends.
//!
//! Every other connection (and one whose first nine bytes do not arrive
//! together) is served by hyper: [`is_sse_request`] only peeks at the
//! socket.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::ReadHalf;

use super::cors::finish_response;
use super::error::ApiError;
use super::limits::ConnectionPermit;
use super::response::Body;
use crate::app::App;
use crate::transport;

/// A request head larger than this is refused (`431`).
const MAX_HEAD: usize = 16 * 1024;

/// Headers a request may carry.
const MAX_HEADERS: usize = 64;

/// How long the client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the connection's first bytes are `GET /sse?` or `GET /sse `.
/// Only peeks: nothing is consumed, so hyper can take any other request.
pub async fn is_sse_request(stream: &TcpStream) -> bool {
    let mut first = [0u8; 9];
    match tokio::time::timeout(HEAD_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(9)) => &first == b"GET /sse?" || &first == b"GET /sse ",
        _ => false,
    }
}

/// Serves one SSE request on `stream`, then closes it. `slot` is the
/// connection's place under the limits, held until the stream ends.
pub async fn serve(app: Arc<App>, mut stream: TcpStream, slot: ConnectionPermit) {
    let response = match read_request(&mut stream).await {
        Ok(Some(req)) => {
            let result = transport::sse::handle(&app, &req).await;
            finish_response(&app, req.headers(), result)
        }
        Ok(None) => return,
        Err(e) => finish_response(&app, &http::HeaderMap::new(), Err(e)),
    };
    write_response(&mut stream, response, app.config.http.write_timeout).await;
    drop(slot);
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
    loop {
        let frame = tokio::select! {
            biased;
            () = &mut gone => return,
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

/// Reads and parses the request head. `Ok(None)`: the client went away.
async fn read_request(stream: &mut TcpStream) -> Result<Option<Request<()>>, ApiError> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        loop {
            if buf.len() >= MAX_HEAD {
                return Err(ApiError::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request_too_large",
                    format!("the request head is larger than {MAX_HEAD} bytes"),
                ));
            }
            buf.reserve(1024);
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
            if let Some(req) = parse(&buf)? {
                return Ok(Some(req));
            }
        }
    };
    match tokio::time::timeout(HEAD_TIMEOUT, read).await {
        Ok(result) => result,
        Err(_) => Ok(None),
    }
}

/// Parses a complete request head; `None` while it is incomplete.
fn parse(buf: &[u8]) -> Result<Option<Request<()>>, ApiError> {
    let malformed = |what: String| ApiError::bad_request("bad_request", what);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(_)) => {}
        Err(e) => return Err(malformed(format!("malformed HTTP request: {e}"))),
    }
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Ok(None);
    };
    let mut map = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| malformed(format!("bad header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| malformed(format!("bad value for header {:?}", h.name)))?;
        map.append(name, value);
    }
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).map_err(|_| malformed("bad method".into()))?)
        .uri(path)
        .body(())
        .map_err(|e| malformed(format!("bad request target {path:?}: {e}")))?;
    *req.headers_mut() = map;
    Ok(Some(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_complete_head_only() {
        assert!(
            parse(b"GET /sse?channel=a HTTP/1.1\r\nHost: x\r\n")
                .unwrap()
                .is_none()
        );
        let req = parse(b"GET /sse?channel=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: abc\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.uri().query(), Some("channel=a"));
        assert_eq!(req.headers()["last-event-id"], "abc");
    }

    #[test]
    fn malformed_heads_are_bad_requests() {
        let e = parse(b"GET /sse?channel=a HTTP/1.1\r\nBad Header: x\r\n\r\n").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("malformed"), "{}", e.message);
    }
}
