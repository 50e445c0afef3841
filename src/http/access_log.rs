//! The access log (`log.access = true`): one line per request at `info`
//! under the target `herald::access`, written when the request is over —
//! for an SSE stream or a long poll when its body ends, for a WebSocket
//! when the connection closes — with the method, the path and query
//! without the value of `token=`, the status, the duration, the bytes of
//! the body (of a WebSocket's data frames) and the client's address
//! (behind a trusted proxy, the one it forwarded; `peer` is the socket's).
//!
//! Nothing else of the request is logged: no header (so never an
//! `Authorization` header, a token or an API key), no body. Off, nothing
//! is allocated for it.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};

use super::response::Body;

/// The target of access-log lines, for `RUST_LOG` filters
/// (`RUST_LOG=warn,herald::access=info` keeps them alone at `info`).
pub const TARGET: &str = "herald::access";

/// Longest path and query logged, in bytes; a longer one is cut (and
/// ends with `…`), so one request cannot make a line of the whole head.
const MAX_LOGGED_TARGET: usize = 2048;

/// What the query's `token=` value is logged as.
const REDACTED: &str = "REDACTED";

/// One request's line, written when it is dropped: at the end of the
/// response body or of the upgraded connection that holds it.
pub struct AccessEntry {
    started: Instant,
    method: Method,
    target: String,
    client: IpAddr,
    peer: Option<SocketAddr>,
    status: u16,
    bytes: u64,
}

impl AccessEntry {
    /// A line for `req`, from `client` (the forwarded address) over the
    /// socket of `peer`, timed from now.
    pub fn begin<B>(req: &Request<B>, client: IpAddr, peer: Option<SocketAddr>) -> AccessEntry {
        AccessEntry {
            started: Instant::now(),
            method: req.method().clone(),
            target: without_token(req.uri()),
            client,
            peer,
            status: 0,
            bytes: 0,
        }
    }

    /// A line for a connection refused before (or as) its head was read:
    /// `req` when the head had arrived.
    pub fn refused(req: Option<&Request<()>>, client: IpAddr, peer: SocketAddr, status: u16) {
        let mut entry = match req {
            Some(req) => AccessEntry::begin(req, client, Some(peer)),
            None => AccessEntry {
                started: Instant::now(),
                method: Method::from_bytes(b"-").unwrap_or_default(),
                target: "-".into(),
                client,
                peer: Some(peer),
                status: 0,
                bytes: 0,
            },
        };
        entry.status = status;
    }

    /// Sets the status, wraps `response`'s body so that its bytes are
    /// counted, and writes the line when the body ends or is dropped.
    pub fn finish(mut self, response: Response<Body>) -> Response<Body> {
        self.status = response.status().as_u16();
        response.map(|body| {
            LoggedBody {
                inner: body,
                entry: self,
            }
            .boxed_unsync()
        })
    }

    /// The line of a WebSocket: `101`, written when the connection closes.
    pub fn upgraded(mut self) -> AccessEntry {
        self.status = 101;
        self
    }

    /// Counts `n` bytes sent: a WebSocket's frames (Herald's own, not
    /// pings, pongs and the close).
    pub fn add_bytes(&mut self, n: usize) {
        self.bytes += n as u64;
    }
}

impl Drop for AccessEntry {
    fn drop(&mut self) {
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let peer = self.peer.map_or_else(|| "-".to_owned(), |p| p.to_string());
        tracing::info!(
            target: TARGET,
            method = %self.method,
            path = %self.target,
            status = self.status,
            duration_ms = (duration_ms * 1000.0).round() / 1000.0,
            bytes = self.bytes,
            client = %self.client,
            peer = %peer,
            "{} {} {}",
            self.method,
            self.target,
            self.status
        );
    }
}

/// Hands a request's line from the request router to the WebSocket
/// handler, which keeps it for the connection's life; a response that
/// still has it when the router returns gets it.
#[derive(Clone, Default)]
pub struct AccessHandover(Arc<parking_lot::Mutex<Option<AccessEntry>>>);

impl AccessHandover {
    pub fn new(entry: AccessEntry) -> Self {
        AccessHandover(Arc::new(parking_lot::Mutex::new(Some(entry))))
    }

    /// The line, if nobody took it yet.
    pub fn take(&self) -> Option<AccessEntry> {
        self.0.lock().take()
    }

    /// The line of `req`, for a handler that takes over the connection.
    pub fn take_from<B>(req: &Request<B>) -> Option<AccessEntry> {
        req.extensions().get::<AccessHandover>()?.take()
    }
}

/// A response body that counts what it yields into its line.
struct LoggedBody {
    inner: Body,
    entry: AccessEntry,
}

impl hyper::body::Body for LoggedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.entry.bytes += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request's path and query with the value of every `token=`
/// parameter (by its decoded name, however it is percent-encoded)
/// replaced, cut at [`MAX_LOGGED_TARGET`] bytes.
pub fn without_token(uri: &Uri) -> String {
    let mut out = String::from(uri.path());
    if let Some(query) = uri.query() {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let name = pair.split('=').next().unwrap_or_default();
            let decoded = form_urlencoded::parse(name.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if decoded == "token" {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            } else {
                out.push_str(pair);
            }
        }
    }
    if out.len() > MAX_LOGGED_TARGET {
        let mut end = MAX_LOGGED_TARGET;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(target: &str) -> String {
        without_token(&target.parse::<Uri>().unwrap())
    }

    #[test]
    fn token_values_are_never_logged() {
        assert_eq!(
            clean("/sse?channel=a&token=SECRET&cursor=c"),
            "/sse?channel=a&token=REDACTED&cursor=c"
        );
        // However the name is spelled on the wire, if Herald reads it as
        // `token`, its value is not logged.
        assert_eq!(clean("/poll?to%6Ben=SECRET"), "/poll?to%6Ben=REDACTED");
        assert_eq!(
            clean("/ws?token=A&token=B"),
            "/ws?token=REDACTED&token=REDACTED"
        );
        assert_eq!(clean("/sse?token"), "/sse?token=REDACTED");
        assert_eq!(clean("/metrics"), "/metrics");
        assert_eq!(clean("/sse?tokens=x&x_token=y"), "/sse?tokens=x&x_token=y");
        let long = clean(&format!("/sse?channel={}", "a".repeat(5000)));
        assert!(long.len() <= MAX_LOGGED_TARGET + 3 && long.ends_with('…'));
    }
}
