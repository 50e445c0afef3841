//! A connection's first request head, read by the listener before anything
//! else is decided: [`read`] bounds it in size (`http.max_head_bytes`) and
//! header count (`http.max_headers`), the listener bounds it in time
//! (`http.head_timeout`), and only then does the connection take a place
//! under `limits.max_connections` (or not, for a probe) and go to the
//! bare event-stream connection or to hyper. hyper gets the bytes already
//! read back first through [`Replayed`], and parses the head again (a few
//! microseconds, next to a network round trip); requests after the first
//! on a kept-alive connection are hyper's alone, under the same bounds.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BufMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::error::ApiError;
use crate::config::HttpConfig;

/// The first request head of a connection, parsed, and every byte read to
/// get it (the head and whatever the client sent after it).
pub struct Head {
    pub request: Request<()>,
    pub bytes: Vec<u8>,
}

/// What a connection's buffer starts with: most heads arrive whole in one
/// read of this much.
const FIRST_READ: usize = 1024;

/// Reads until the first request head is complete. `Ok(None)`: the client
/// closed (or the socket failed) first. A head over `http.max_head_bytes`
/// or with more than `http.max_headers` fields is `431 head_too_large`;
/// a malformed one `400 bad_request`. No deadline here: the caller has
/// one for the whole head.
///
/// At most `http.max_head_bytes` are read or allocated: a head not
/// complete within them is refused without reading on, and what the
/// client sent after a complete head stays in the socket past that.
pub async fn read(
    stream: &mut (impl AsyncRead + Unpin),
    config: &HttpConfig,
) -> Result<Option<Head>, ApiError> {
    let max = config.max_head_bytes;
    let mut buf = Vec::with_capacity(FIRST_READ.min(max));
    // Where the search for the blank line that ends the head goes on: each
    // byte is looked at about once, however the client slices its head.
    let mut searched: usize = 0;
    loop {
        if buf.len() >= max {
            return Err(too_large(format!(
                "the request head is larger than {max} bytes (http.max_head_bytes)"
            )));
        }
        if buf.len() == buf.capacity() {
            // Doubling, up to the limit and no further.
            let grown = (buf.len() * 2).max(FIRST_READ).min(max);
            buf.reserve_exact(grown - buf.len());
        }
        let room = max - buf.len();
        match stream.read_buf(&mut (&mut buf).limit(room)).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
        let from = searched.saturating_sub(2);
        searched = buf.len();
        if !ends_head(&buf[from..]) {
            continue;
        }
        if let Some((request, _)) = parse(&buf, config.max_headers)? {
            return Ok(Some(Head {
                request,
                bytes: buf,
            }));
        }
    }
}

/// Whether `bytes` hold the blank line that ends a head (`\r\n\r\n`, or
/// bare `\n` line ends, which parsers accept too).
fn ends_head(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

fn too_large(message: String) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "head_too_large",
        message,
    )
}

/// Parses a request head with `httparse` (hyper's parser): the request and
/// the head's length, or `None` while it is incomplete.
pub fn parse(buf: &[u8], max_headers: usize) -> Result<Option<(Request<()>, usize)>, ApiError> {
    let malformed = |what: String| ApiError::bad_request("bad_request", what);
    let mut headers = vec![httparse::EMPTY_HEADER; max_headers];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(too_large(format!(
                "the request has more than {max_headers} header fields (http.max_headers)"
            )));
        }
        Err(e) => return Err(malformed(format!("malformed HTTP request: {e}"))),
    };
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
    Ok(Some((req, len)))
}

/// A socket whose first bytes, already read by [`read`], are handed to
/// hyper again before anything more is read from the socket. The buffer
/// is freed once hyper has taken it.
pub struct Replayed<T> {
    head: Vec<u8>,
    /// How much of `head` hyper has taken.
    taken: usize,
    inner: T,
}

impl<T> Replayed<T> {
    pub fn new(head: Vec<u8>, inner: T) -> Self {
        Replayed {
            head,
            taken: 0,
            inner,
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Replayed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.taken < self.head.len() {
            let n = buf.remaining().min(self.head.len() - self.taken);
            let at = self.taken;
            buf.put_slice(&self.head[at..at + n]);
            self.taken += n;
            if self.taken == self.head.len() {
                self.head = Vec::new();
                self.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Replayed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_a_complete_head_only() {
        assert!(
            parse(b"GET /sse?channel=a HTTP/1.1\r\nHost: x\r\n", 64)
                .unwrap()
                .is_none()
        );
        let text = b"GET /sse?channel=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: abc\r\n\r\nrest";
        let (req, len) = parse(text, 64).unwrap().unwrap();
        assert_eq!(req.uri().query(), Some("channel=a"));
        assert_eq!(req.headers()["last-event-id"], "abc");
        assert_eq!(len, text.len() - 4);
    }

    #[test]
    fn malformed_heads_are_bad_requests() {
        let e = parse(b"GET /sse?channel=a HTTP/1.1\r\nBad Header: x\r\n\r\n", 64).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("malformed"), "{}", e.message);
    }

    #[test]
    fn too_many_headers_are_too_large() {
        let head = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            (0..5).map(|i| format!("x-{i}: v\r\n")).collect::<String>()
        );
        assert!(parse(head.as_bytes(), 5).unwrap().is_some());
        let e = parse(head.as_bytes(), 4).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "head_too_large"
            )
        );
    }

    #[test]
    fn the_end_of_a_head_is_found_across_reads() {
        assert!(ends_head(b"Host: x\r\n\r\n"));
        assert!(ends_head(b"Host: x\n\n"));
        assert!(!ends_head(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        // `read` searches from two bytes before the new ones.
        let whole = b"GET / HTTP/1.1\r\n\r\n";
        assert!(ends_head(&whole[whole.len() - 1 - 2..]));
    }

    /// A client that sends `data` in pieces cut at `cuts`, and counts what
    /// Herald read of it.
    struct Sliced {
        data: Vec<u8>,
        cuts: Vec<usize>,
        at: usize,
    }

    impl AsyncRead for Sliced {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let at = self.at;
            let piece = self
                .cuts
                .iter()
                .copied()
                .find(|c| *c > at)
                .unwrap_or(usize::MAX);
            let end = piece.min(self.data.len()).min(at + buf.remaining());
            buf.put_slice(&self.data[at..end]);
            self.at = end;
            Poll::Ready(Ok(()))
        }
    }

    fn read_sliced(
        data: &[u8],
        cuts: &[usize],
        config: &HttpConfig,
    ) -> (Result<Option<Head>, ApiError>, usize) {
        let mut client = Sliced {
            data: data.to_vec(),
            cuts: cuts.to_vec(),
            at: 0,
        };
        let result = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(read(&mut client, config));
        (result, client.at)
    }

    fn limits(max_head_bytes: usize, max_headers: usize) -> HttpConfig {
        HttpConfig {
            max_head_bytes,
            max_headers,
            ..HttpConfig::default()
        }
    }

    /// A request head with `fields` header fields and a path of `path`
    /// bytes.
    fn head_text(path: usize, fields: &[(String, String)]) -> Vec<u8> {
        let mut text = format!("GET /sse?channel={} HTTP/1.1\r\n", "a".repeat(path));
        for (name, value) in fields {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        text.into_bytes()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// A head within `http.max_head_bytes` and `http.max_headers` is
        /// read whole however the client cuts it; one past either limit is
        /// `431 head_too_large` naming that limit. Herald never reads more
        /// than `http.max_head_bytes` before it knows.
        #[test]
        fn heads_are_read_within_their_limits(
            path in 0usize..1500,
            fields in proptest::collection::vec(("x-[a-z]{1,8}", "[ -~]{0,40}"), 0..12),
            cuts in proptest::collection::vec(1usize..3000, 0..8),
            max_head_bytes in 1024usize..2048,
            max_headers in 4usize..10,
            body in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let config = limits(max_head_bytes, max_headers);
            let head = head_text(path, &fields);
            let sent = [head.as_slice(), &body].concat();
            let (result, read) = read_sliced(&sent, &cuts, &config);
            prop_assert!(read <= max_head_bytes, "read {} bytes; the limit is {}", read, max_head_bytes);
            match result {
                Ok(Some(got)) => {
                    prop_assert!(head.len() <= max_head_bytes && fields.len() <= max_headers);
                    prop_assert_eq!(got.request.headers().len(), fields.len());
                    prop_assert_eq!(got.request.uri().path(), "/sse");
                    prop_assert_eq!(&got.bytes[..], &sent[..read]);
                    prop_assert!(got.bytes.capacity() <= max_head_bytes);
                }
                Err(e) => {
                    prop_assert_eq!((e.status, e.code), (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "head_too_large"));
                    if head.len() > max_head_bytes {
                        prop_assert!(e.message.contains("http.max_head_bytes"), "{}", e.message);
                    } else {
                        prop_assert!(fields.len() > max_headers);
                        prop_assert!(e.message.contains("http.max_headers"), "{}", e.message);
                    }
                }
                Ok(None) => prop_assert!(false, "a whole head read as a closed connection"),
            }
        }

        /// Any bytes are a head, a closed connection, or `400 bad_request`
        /// / `431 head_too_large`; never a panic, and never more read than
        /// the limit.
        #[test]
        fn any_bytes_are_a_head_or_a_documented_refusal(
            data in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..3000),
                "(GET|POST|G\\x00T) [ -~]{0,20} HTTP/1\\.[01]\r?\n([ -~]{0,30}\r?\n){0,5}\r?\n".prop_map(String::into_bytes),
            ],
            cuts in proptest::collection::vec(1usize..3000, 0..4),
        ) {
            let config = limits(1024, 4);
            let (result, read) = read_sliced(&data, &cuts, &config);
            prop_assert!(read <= config.max_head_bytes);
            if let Err(e) = result {
                prop_assert!(["bad_request", "head_too_large"].contains(&e.code), "{}", e.code);
            }
        }
    }
}
