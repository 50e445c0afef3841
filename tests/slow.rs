//! A subscriber that stops reading never slows the others: it is cut off
//! once its queue overflows, and later resumes with nothing lost.

mod common;

use common::*;

/// These tests flood sockets on purpose; run one at a time so the "fast"
/// readers of one are not starved of CPU by the other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_cut_off_and_resumes_without_loss() {
    let _serial = SERIAL.lock().await;
    let topic = unique_topic("slow");
    create_topic(&topic, 1).await;
    let mut cfg = config(&[(&topic, "s")]);
    cfg.hub.subscriber_queue = 256;
    cfg.http.send_buffer_bytes = Some(64 * 1024);
    let herald = start(cfg, &[(&topic, 1)]).await;
    let addr = herald.local_addr();

    // The stalled client: a socket with a small receive buffer that is not read.
    let mut stalled = stalled_sse_client(addr).await;

    let mut fast: Vec<Sse> = Vec::new();
    for _ in 0..50 {
        fast.push(Sse::connect(addr, "channel=s", None).await);
    }
    // 800 records of 4 KiB: far more than the stalled socket's buffers
    // (64 KiB), the chunk being written (up to 64 KiB) and its queue (256)
    // hold. They go out in
    // windows of 50 that every fast reader takes before the next window, so
    // the 50 keep up by construction (however loaded the machine) while the
    // stalled one falls ever further behind.
    const N: u64 = 800;
    const WINDOW: u64 = 50;
    let pad = "x".repeat(4 * 1024);
    let producer = Producer::new();
    let mut received: Vec<Vec<u64>> = vec![Vec::new(); fast.len()];
    for window in (0..N).step_by(WINDOW as usize) {
        for n in window..window + WINDOW {
            let payload = format!("{{\"n\":{n},\"pad\":\"{pad}\"}}");
            producer
                .send(&topic, None, None, Some(payload.as_bytes()), None)
                .await;
        }
        for (sse, got) in fast.iter_mut().zip(&mut received) {
            got.extend(ns(&sse.messages(WINDOW as usize).await));
        }
    }
    for got in &received {
        assert_eq!(got, &(0..N).collect::<Vec<_>>());
    }
    // The stalled client reads what it had, ending with the reason…
    // (The response ends with the last chunk, then Herald closes the
    // connection.)
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, async {
        let mut buf = vec![0u8; 64 * 1024];
        while !raw.ends_with(b"\r\n0\r\n\r\n") {
            let n = stalled.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before the response ended");
            raw.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the stalled stream ends once it reads");
    let body = sse_body(&raw);
    assert!(
        body.contains("event: reconnect\ndata: {\"reason\":\"slow_consumer\"}"),
        "{}",
        &body[body.len().saturating_sub(300)..]
    );
    let (mut got, last_id) = parse_complete_events(&body);
    assert!((got.len() as u64) < N, "it was cut off before the end");
    assert_eq!(
        metric(
            addr,
            "herald_slow_client_disconnects_total{transport=\"sse\"}"
        )
        .await,
        1.0
    );
    // …then resumes from its last id with exactly the rest.
    let mut back = Sse::connect(addr, "channel=s", last_id.as_deref()).await;
    got.extend(ns(&back.messages((N as usize) - got.len()).await));
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    herald.stop().await;
}

/// Opens `GET /sse?channel=s` on a socket with a small receive buffer and
/// returns it unread: a client that has stalled.
async fn stalled_sse_client(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /sse?channel=s HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    stalled
}

/// The SSE body of a raw HTTP/1.1 response: headers cut, chunks joined.
fn sse_body(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    dechunk(&text[text.find("\r\n\r\n").unwrap() + 4..])
}

/// The `n` of every complete event (one ended by a blank line) in an SSE
/// body, and the last `id:` among them; a cut-off last event is ignored.
fn parse_complete_events(body: &str) -> (Vec<u64>, Option<String>) {
    let complete = &body[..body.rfind("\n\n").map_or(0, |i| i + 2)];
    let mut last_id = None;
    let mut got = Vec::new();
    for block in complete.split("\n\n") {
        for line in block.lines() {
            if let Some(id) = line.strip_prefix("id: ") {
                last_id = Some(id.to_owned());
            }
            if let Some(data) = line.strip_prefix("data: ")
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(data)
                && let Some(n) = v["data"]["n"].as_u64()
            {
                got.push(n);
            }
        }
    }
    (got, last_id)
}

/// Removes HTTP/1.1 chunked framing.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            out.push_str(&rest[..size.min(rest.len())]);
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size..];
        body = body.strip_prefix("\r\n").unwrap_or(body);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_again_is_closed_after_the_write_timeout() {
    let _serial = SERIAL.lock().await;
    let topic = unique_topic("stalled");
    create_topic(&topic, 1).await;
    let mut cfg = config(&[(&topic, "s")]);
    cfg.hub.subscriber_queue = 64;
    cfg.http.send_buffer_bytes = Some(64 * 1024);
    cfg.http.write_timeout = std::time::Duration::from_secs(1);
    let herald = start(cfg, &[(&topic, 1)]).await;
    let addr = herald.local_addr();

    let mut stalled = stalled_sse_client(addr).await;
    // Wait until the stream is registered, then flood it.
    wait_until_metric(addr, "herald_connections{transport=\"sse\"}", 1.0).await;
    const N: u64 = 300;
    let pad = "x".repeat(16 * 1024);
    let producer = Producer::new();
    for n in 0..N {
        let payload = format!("{{\"n\":{n},\"pad\":\"{pad}\"}}");
        producer
            .send(&topic, None, None, Some(payload.as_bytes()), None)
            .await;
    }
    // Herald gives up on it without the client doing anything.
    wait_until_metric(
        addr,
        "herald_slow_client_disconnects_total{transport=\"sse\"}",
        1.0,
    )
    .await;
    wait_until_metric(addr, "herald_connections{transport=\"sse\"}", 0.0).await;

    // What reached the client is an exact prefix; it resumes from the last
    // complete event with exactly the rest.
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, stalled.read_to_end(&mut raw))
        .await
        .expect("the connection was closed")
        .ok();
    let (mut got, last_id) = parse_complete_events(&sse_body(&raw));
    assert!((got.len() as u64) < N);
    assert_eq!(
        got,
        (0..got.len() as u64).collect::<Vec<_>>(),
        "an exact prefix"
    );
    let mut back = Sse::connect(addr, "channel=s", last_id.as_deref()).await;
    got.extend(ns(&back.messages((N as usize) - got.len()).await));
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    herald.stop().await;
}
