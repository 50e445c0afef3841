//! Centrifugo v6's unidirectional framing, for the client workers of the
//! `peer` scenario (peer.rs): `herald-bench client --framing centrifugo`
//! speaks `uni_websocket` and `uni_sse` instead of Herald's `/ws` and
//! `/sse`, and everything after the bytes arrive — the histogram, lost and
//! duplicated by `n` — is client.rs's, unchanged.
//!
//! What the server side does, read in Centrifugo v6.9.1's source
//! (`internal/uniws/handler.go`, `internal/unisse/handler.go`, and
//! centrifuge's `client.go` for the pushes):
//!
//! - **uni_websocket** (`/connection/uni_websocket`): after the upgrade the
//!   first client message is a `ConnectRequest` (JSON, not wrapped in a
//!   command); `subs` asks for server-side subscriptions, granted to an
//!   anonymous client when the channel allows it. The server then pushes a
//!   `{"connect":{…}}` frame and one `{"channel":"bench","pub":{"data":…}}`
//!   frame per publication, the record's JSON payload embedded as is. With
//!   `join_push_messages` (bench/peer/centrifugo.json) several pushes can
//!   share a frame, separated by `\n`. Pings are WebSocket ping frames
//!   (answered by client.rs) plus an empty `{}` push now and then.
//! - **uni_sse** (`/connection/uni_sse`): the same `ConnectRequest` as the
//!   `cf_connect` query parameter of a GET; each push is a `data: …\n\n`
//!   event. The body is chunk-coded (Go's `net/http` on HTTP/1.1) and a
//!   chunk may end inside an event, so [`Dechunk`] takes the coding off
//!   before client.rs scans the events.
//!
//! No history, so no resume: a client cut off reconnects at the live end
//! and what it missed is counted lost (`endings` says why it was cut off).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Which server's wire format a client worker speaks.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// Herald's `/ws`, `/sse`, `/poll` and the floor's raw stream.
    #[default]
    Herald,
    /// Centrifugo's `uni_websocket` and `uni_sse` (`--transport ws|sse`).
    Centrifugo,
}

/// An anonymous connect with one server-side subscription to `channel`
/// (channel names in the bench are plain words: nothing to escape).
pub fn connect_request(channel: &str) -> String {
    format!("{{\"subs\":{{\"{channel}\":{{}}}}}}")
}

/// The request that opens a connection of `transport` (ws or sse).
pub fn request(transport: &str, channel: &str) -> Vec<u8> {
    match transport {
        "ws" => "GET /connection/uni_websocket HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n\
                 connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 sec-websocket-version: 13\r\n\r\n"
            .to_owned(),
        "sse" => format!(
            "GET /connection/uni_sse?cf_connect={} HTTP/1.1\r\nhost: x\r\n\
             accept: text/event-stream\r\n\r\n",
            percent_encode(&connect_request(channel))
        ),
        t => panic!("--framing centrifugo speaks ws and sse, not {t}"),
    }
    .into_bytes()
}

/// Query-string encoding of everything but RFC 3986's unreserved bytes:
/// one fixed, ASCII connect request per run, not worth a crate in the
/// bench's dependencies.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The push that tells a connection is set up, its subscriptions made.
const CONNECT_PUSH: &[u8] = b"{\"connect\":";

/// After the upgrade: sends the connect request as a masked text frame
/// (zero key, so the payload goes as is) and reads until the connect push
/// has come, so a client counts as connected only once subscribed.
/// Returns the stream and the bytes after that frame.
pub async fn ws_connect(
    (mut s, mut acc): (tokio::net::TcpStream, Vec<u8>),
    channel: &str,
) -> Result<(tokio::net::TcpStream, Vec<u8>), String> {
    let connect = connect_request(channel);
    assert!(connect.len() < 126, "connect request needs a longer frame");
    let mut frame = vec![0x81, 0x80 | connect.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(connect.as_bytes());
    s.write_all(&frame)
        .await
        .map_err(|e| format!("write connect: {e}"))?;
    let mut buf = [0u8; 4096];
    loop {
        let mut pos = 0;
        while let Some((op, head, len)) = crate::client::frame_head(&acc[pos..]) {
            if acc.len() - pos < head + len {
                break;
            }
            let payload = &acc[pos + head..pos + head + len];
            pos += head + len;
            match op {
                0x1 if payload.starts_with(CONNECT_PUSH) => {
                    return Ok((s, acc.split_off(pos)));
                }
                0x8 => {
                    let code = payload
                        .get(..2)
                        .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                    return Err(format!("close {code} {reason} before the connect push"));
                }
                _ => {}
            }
        }
        acc.drain(..pos);
        match s.read(&mut buf).await {
            Ok(0) => return Err("closed before the connect push".into()),
            Err(e) => return Err(format!("read: {e}")),
            Ok(k) => acc.extend_from_slice(&buf[..k]),
        }
    }
}

/// After the `200` head of a uni_sse stream: reads (de-chunked) until the
/// connect push's event has come. Returns the stream, the decoder for the
/// rest of it and the decoded bytes after that event.
pub async fn sse_connect(
    (mut s, first): (tokio::net::TcpStream, Vec<u8>),
) -> Result<(tokio::net::TcpStream, Dechunk, Vec<u8>), String> {
    let mut dechunk = Dechunk::default();
    let mut acc = Vec::new();
    dechunk.feed(&first, &mut acc);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(i) = memchr::memmem::find(&acc, b"data: {\"connect\":")
            && let Some(end) = memchr::memmem::find(&acc[i..], b"\n\n")
        {
            return Ok((s, dechunk, acc.split_off(i + end + 2)));
        }
        match s.read(&mut buf).await {
            Ok(0) => return Err("closed before the connect push".into()),
            Err(e) => return Err(format!("read: {e}")),
            Ok(k) => dechunk.feed(&buf[..k], &mut acc),
        }
    }
}

/// Decodes HTTP/1.1 chunked transfer coding as it streams in: chunk
/// sizes, extensions and the CRLFs around them are dropped, chunk data is
/// passed on. A malformed size line is not an error here: its hex digits
/// count as far as they go, and what is passed on then is scanned for
/// records like any other bytes (a record it garbles is counted lost).
#[derive(Default)]
pub struct Dechunk {
    state: ChunkState,
    size: usize,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of the next chunk's size.
    #[default]
    Size,
    /// After the size: an extension, up to the LF.
    SizeLine,
    /// This many data bytes still to pass on (in `size`).
    Data,
    /// The CRLF after a chunk's data, up to its LF.
    DataEnd,
}

impl Dechunk {
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match self.state {
                ChunkState::Size => {
                    let b = input[0];
                    input = &input[1..];
                    match (b as char).to_digit(16) {
                        Some(d) => self.size = self.size * 16 + d as usize,
                        None if b == b'\n' => self.end_size_line(),
                        None => self.state = ChunkState::SizeLine,
                    }
                }
                ChunkState::SizeLine => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        self.end_size_line();
                    }
                }
                ChunkState::Data => {
                    let k = self.size.min(input.len());
                    out.extend_from_slice(&input[..k]);
                    input = &input[k..];
                    self.size -= k;
                    if self.size == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                }
                ChunkState::DataEnd => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        self.state = ChunkState::Size;
                    }
                }
            }
        }
    }

    fn end_size_line(&mut self) {
        // A zero-size chunk is the last: what follows (trailers) is skipped
        // as a size line would be.
        self.state = if self.size > 0 {
            ChunkState::Data
        } else {
            ChunkState::Size
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connect_request_subscribes_to_the_channel() {
        assert_eq!(connect_request("bench"), r#"{"subs":{"bench":{}}}"#);
        let sse = String::from_utf8(request("sse", "bench")).unwrap();
        assert!(
            sse.starts_with(
                "GET /connection/uni_sse?cf_connect=%7B%22subs%22%3A%7B%22bench%22%3A%7B%7D%7D%7D HTTP/1.1\r\n"
            ),
            "{sse}"
        );
        let ws = String::from_utf8(request("ws", "bench")).unwrap();
        assert!(ws.starts_with("GET /connection/uni_websocket HTTP/1.1\r\n"));
    }

    #[test]
    fn chunks_split_anywhere_decode_to_the_events() {
        let events = "data: {\"connect\":{}}\n\ndata: {\"channel\":\"bench\",\"pub\":{\"data\":{\"t\":1,\"n\":2}}}\n\n";
        // Two chunks, the second starting inside an event, one with an
        // extension, then the last chunk.
        let (a, b) = events.split_at(30);
        let wire = format!(
            "{:x}\r\n{a}\r\n{:X};ext=1\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        // Fed one byte at a time, and all at once.
        let mut one = Vec::new();
        let mut d = Dechunk::default();
        for byte in wire.as_bytes() {
            d.feed(std::slice::from_ref(byte), &mut one);
        }
        let mut all = Vec::new();
        Dechunk::default().feed(wire.as_bytes(), &mut all);
        assert_eq!(String::from_utf8(one).unwrap(), events);
        assert_eq!(String::from_utf8(all).unwrap(), events);
    }
}
