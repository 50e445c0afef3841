//! The client's address behind a trusted proxy: `X-Forwarded-For` and the
//! PROXY protocol from a peer in `http.trusted_proxies` decide which
//! address the per-address limits count; from any other peer they are
//! ignored (a PROXY header is refused). The test client speaks from
//! 127.0.0.1 (trusted) and 127.0.0.2 (not), both loopback.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TRUSTED: &str = "127.0.0.1";
const UNTRUSTED: &str = "127.0.0.2";

async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    tokio::time::timeout(TIMEOUT, socket.connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// Sends `preface` then a `GET /sse` head (with `X-Forwarded-For: xff`);
/// the status, and for a refusal its body. A stream that was accepted is
/// kept open in `held`.
async fn sse_from(
    source: &str,
    addr: SocketAddr,
    preface: &[u8],
    xff: Option<&str>,
    held: &mut Vec<TcpStream>,
) -> (u16, String) {
    let mut stream = connect_from(source, addr).await;
    let mut head = String::from("GET /sse?channel=c HTTP/1.1\r\nHost: herald\r\n");
    if let Some(xff) = xff {
        head.push_str(&format!("X-Forwarded-For: {xff}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(&[preface, head.as_bytes()].concat())
        .await
        .unwrap();
    let (status, rest) = response_of(&mut stream).await;
    if status == 200 {
        held.push(stream);
    }
    (status, rest)
}

/// The status of the response on `stream`, and (for a refusal, which
/// closes) everything after the status line.
async fn response_of(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        if status != 200 {
            let _ = stream.read_to_end(&mut buf).await;
        }
        (status, String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .expect("timed out waiting for a response")
}

fn proxy_v1(source: &str) -> Vec<u8> {
    format!("PROXY TCP4 {source} 127.0.0.1 40000 8080\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_limits_count_the_address_a_trusted_proxy_forwards() {
    let (_topic, herald) = herald_with_topic_and("fwd", 1, "c", |c| {
        c.limits.max_connections_per_ip = 1;
        c.limits.max_pending_connections_per_ip = 1;
        c.http.trusted_proxies = vec![format!("{TRUSTED}/32")];
        c.http.proxy_protocol = true;
        c.http.head_timeout = Duration::from_secs(5);
    })
    .await;
    let addr = herald.local_addr();
    let mut held = Vec::new();

    // X-Forwarded-For from the trusted proxy: each client its own count,
    // the right-most untrusted address (the first one is made up).
    let (s, _) = sse_from(TRUSTED, addr, b"", Some("6.6.6.6, 203.0.113.1"), &mut held).await;
    assert_eq!(s, 200);
    let (s, _) = sse_from(TRUSTED, addr, b"", Some("203.0.113.2"), &mut held).await;
    assert_eq!(s, 200, "another forwarded client is not held back");
    let (s, body) = sse_from(TRUSTED, addr, b"", Some("7.7.7.7, 203.0.113.1"), &mut held).await;
    assert_eq!(s, 429, "{body}");
    assert!(
        body.contains("too_many_connections_per_ip") && body.contains("203.0.113.1"),
        "{body}"
    );

    // From an untrusted peer the header is ignored: its own address counts.
    let (s, _) = sse_from(UNTRUSTED, addr, b"", Some("198.51.100.1"), &mut held).await;
    assert_eq!(s, 200);
    let (s, body) = sse_from(UNTRUSTED, addr, b"", Some("198.51.100.2"), &mut held).await;
    assert_eq!(s, 429, "{body}");
    assert!(body.contains(UNTRUSTED), "{body}");

    // PROXY protocol v1 from the trusted proxy: the header's source counts.
    let (s, _) = sse_from(TRUSTED, addr, &proxy_v1("192.0.2.1"), None, &mut held).await;
    assert_eq!(s, 200);
    let (s, _) = sse_from(TRUSTED, addr, &proxy_v1("192.0.2.2"), None, &mut held).await;
    assert_eq!(s, 200);
    let (s, body) = sse_from(TRUSTED, addr, &proxy_v1("192.0.2.1"), None, &mut held).await;
    assert_eq!(s, 429, "{body}");
    assert!(body.contains("192.0.2.1"), "{body}");

    // From an untrusted peer a PROXY header is refused by name.
    let (s, body) = sse_from(UNTRUSTED, addr, &proxy_v1("192.0.2.3"), None, &mut held).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body.contains("PROXY") && body.contains("http.trusted_proxies"),
        "{body}"
    );

    // Before the head: the proxy's own address is not counted (two
    // connections wait), the PROXY header's source is.
    let mut first = connect_from(TRUSTED, addr).await;
    let mut second = connect_from(TRUSTED, addr).await;
    first.write_all(&proxy_v1("192.0.2.9")).await.unwrap();
    second.write_all(&proxy_v1("192.0.2.9")).await.unwrap();
    let refused = tokio::select! {
        r = response_of(&mut first) => r,
        r = response_of(&mut second) => r,
    };
    assert_eq!(refused.0, 429, "{}", refused.1);
    assert!(
        refused.1.contains("too_many_pending_connections_per_ip")
            && refused.1.contains("192.0.2.9"),
        "{}",
        refused.1
    );
    drop((first, second, held));
    herald.stop().await;
}
