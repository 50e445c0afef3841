//! The HTTP edge under abuse: connections that send nothing or trickle
//! their head, a node full of streams, a query full of channels, and a
//! burst of `since=` requests from one address. Clients that misbehave
//! come from their own loopback addresses (127.0.0.3 and up), the
//! well-behaved ones from 127.0.0.2, so per-address limits tell them
//! apart. What each test measured is printed (`--nocapture`).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use herald::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The address well-behaved clients connect from.
const GOOD: &str = "127.0.0.2";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A socket to `addr` from `from` (any port).
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip(from), 0)).unwrap();
    tokio::time::timeout(TIMEOUT, socket.connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// Reads until the server closes the connection (or it fails); what it
/// sent before that. Fails the test after [`TIMEOUT`].
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
            .await
            .expect("the server never closed the connection")
        {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A response read off a raw socket.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// The response head at the start of `bytes`, once complete (no body
/// yet), and where the body starts.
fn parse_head(bytes: &[u8]) -> Option<(Answer, usize)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let answer = Answer {
        status,
        head,
        body: Vec::new(),
    };
    Some((answer, end + 4))
}

/// Parses a response in `bytes` once its head and (with a
/// `content-length`) its body are complete.
fn parse_answer(bytes: &[u8]) -> Option<Answer> {
    let (mut answer, at) = parse_head(bytes)?;
    let body = &bytes[at..];
    match answer.header("content-length") {
        Some(len) => {
            let len: usize = len.parse().ok()?;
            if body.len() < len {
                return None;
            }
            answer.body = body[..len].to_vec();
        }
        None => answer.body = body.to_vec(),
    }
    Some(answer)
}

/// Reads one response from `stream`: its head and (with a
/// `content-length`) its body; the connection may stay open.
async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(answer) = parse_answer(&got) {
            return answer;
        }
        let n = tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
            .await
            .expect("timed out waiting for a response")
            .expect("read");
        assert!(
            n > 0,
            "connection closed before a whole response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// Sends `request` on a new connection from `from` and reads the answer;
/// also how long that took.
async fn ask(from: &str, addr: SocketAddr, request: &[u8]) -> (Answer, Duration) {
    let mut stream = connect_from(from, addr).await;
    let t = Instant::now();
    stream.write_all(request).await.unwrap();
    let answer = read_answer(&mut stream).await;
    (answer, t.elapsed())
}

/// A reqwest client whose connections come from `from`.
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip(from))
        .build()
        .unwrap()
}

/// `GET {path}` from [`GOOD`] on a new connection: the status.
async fn get(addr: SocketAddr, path: &str) -> reqwest::Response {
    tokio::time::timeout(
        TIMEOUT,
        client_from(GOOD).get(format!("http://{addr}{path}")).send(),
    )
    .await
    .expect("request timed out")
    .expect("request")
}

/// `herald_http_errors_total` for `status` and `code`.
async fn errors_counted(addr: SocketAddr, status: u16, code: &str) -> f64 {
    let text = get(addr, "/metrics").await.text().await.unwrap();
    parse_metrics(&text)
        .into_iter()
        .filter(|(series, _)| {
            series.starts_with("herald_http_errors_total{")
                && series.contains(&format!("status=\"{status}\""))
                && series.contains(&format!("code=\"{code}\""))
        })
        .map(|(_, v)| v)
        .sum()
}

fn short_head_timeout(cfg: &mut Config) {
    cfg.http.head_timeout = Duration::from_secs(1);
}

/// Median and extremes, for the printout.
fn spread(mut times: Vec<Duration>) -> String {
    times.sort();
    format!(
        "min {:?}, median {:?}, max {:?}",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_nothing_are_closed_at_the_deadline_and_keep_no_one_out() {
    let head_timeout = Duration::from_secs(2);
    let (topic, herald) = herald_with_topic_and("silent", 1, "s", |cfg| {
        cfg.http.head_timeout = head_timeout;
        // As when this was measured from outside: 200 silent sockets filled
        // the node and /healthz answered 503.
        cfg.limits.max_connections = 200;
        cfg.limits.max_pending_connections = 1000;
    })
    .await;
    let addr = herald.local_addr();

    // 500 connections from five addresses that send nothing; each waits
    // for its close in a task of its own.
    let closed = Arc::new(AtomicUsize::new(0));
    let mut silent = Vec::new();
    for i in 0..500 {
        let mut stream = connect_from(&format!("127.0.0.{}", 3 + i % 5), addr).await;
        let opened = Instant::now();
        let closed = closed.clone();
        silent.push(tokio::spawn(async move {
            let got = until_closed(&mut stream).await;
            closed.fetch_add(1, Ordering::SeqCst);
            (opened.elapsed(), got)
        }));
    }

    // Meanwhile a stream and the probes from another address get in.
    let mut sse = Sse::connect_with(&client_from(GOOD), addr, "channel=s", None).await;
    assert_eq!(sse.status, 200);
    assert_eq!(get(addr, "/healthz").await.status(), 200);
    assert_eq!(get(addr, "/readyz").await.status(), 200);
    assert_eq!(
        closed.load(Ordering::SeqCst),
        0,
        "the stream and the probes were served while all 500 were open"
    );

    let mut times = Vec::new();
    for task in silent {
        let (after, got) = task.await.unwrap();
        let answer = parse_answer(&got).expect("a 408 before the close");
        assert_eq!((answer.status, answer.code()), (408, "head_timeout".into()));
        assert!(
            after >= head_timeout - Duration::from_millis(50),
            "{after:?}"
        );
        times.push(after);
    }
    eprintln!(
        "500 silent connections, http.head_timeout {head_timeout:?}: closed after {}",
        spread(times)
    );
    assert_eq!(errors_counted(addr, 408, "head_timeout").await, 500.0);
    // The stream was not disturbed.
    let producer = Producer::new();
    producer.send_n(&topic, "k", 1).await;
    assert_eq!(ns(&sse.messages(1).await), [1]);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_line_and_then_nothing_is_closed_at_the_deadline() {
    let keepalive = Duration::from_millis(1500);
    let (_topic, herald) = herald_with_topic_and("line", 1, "s", |cfg| {
        short_head_timeout(cfg);
        cfg.http.keepalive_timeout = keepalive;
    })
    .await;
    let addr = herald.local_addr();
    let head_timeout = Duration::from_secs(1);

    for line in [
        "GET /healthz HTTP/1.1\r\n",
        "GET /sse?channel=s HTTP/1.1\r\n",
        "GET /poll?channel=s HTTP/1.1\r\nHost: x\r\n",
    ] {
        let mut stream = connect_from("127.0.0.3", addr).await;
        let t = Instant::now();
        stream.write_all(line.as_bytes()).await.unwrap();
        let got = until_closed(&mut stream).await;
        let after = t.elapsed();
        let answer = parse_answer(&got).expect("a 408 before the close");
        assert_eq!((answer.status, answer.code()), (408, "head_timeout".into()));
        assert!(
            after >= head_timeout - Duration::from_millis(50),
            "{after:?}"
        );
        eprintln!(
            "{:?} and then nothing: closed after {after:?}",
            line.trim_end()
        );
    }

    // A head trickled a byte at a time gets no longer: the deadline runs
    // from the accept, not from the last byte.
    let mut stream = connect_from("127.0.0.3", addr).await;
    let t = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        loop {
            ticks.tick().await;
            if writer.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    tokio::time::timeout(TIMEOUT, reader.read_to_end(&mut got))
        .await
        .expect("the trickled head was never cut off")
        .ok();
    let after = t.elapsed();
    trickle.abort();
    assert_eq!(parse_answer(&got).map(|a| a.status), Some(408));
    assert!(after < head_timeout + Duration::from_secs(5), "{after:?}");
    eprintln!("a head trickled a byte every 100 ms: closed after {after:?}");

    // Kept alive: after a response, idle (or a partial next head) for
    // http.keepalive_timeout closes the connection.
    for next in ["", "GET /healthz HTTP/1.1\r\n"] {
        let mut stream = connect_from("127.0.0.3", addr).await;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_answer(&mut stream).await.status, 200);
        let t = Instant::now();
        stream.write_all(next.as_bytes()).await.unwrap();
        let got = until_closed(&mut stream).await;
        let after = t.elapsed();
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
        assert!(after >= keepalive - Duration::from_millis(50), "{after:?}");
        assert!(after < keepalive + Duration::from_secs(5), "{after:?}");
        eprintln!(
            "kept alive after a response, then {:?}: closed after {after:?} (http.keepalive_timeout {keepalive:?})",
            if next.is_empty() {
                "nothing"
            } else {
                "a request line"
            }
        );
    }
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_while_the_node_holds_max_connections_streams() {
    let (_topic, herald) = herald_with_topic_and("full", 1, "f", |cfg| {
        cfg.limits.max_connections = 20;
    })
    .await;
    let addr = herald.local_addr();
    let mut streams = Vec::new();
    for _ in 0..20 {
        let sse = Sse::connect(addr, "channel=f", None).await;
        assert_eq!(sse.status, 200);
        streams.push(sse);
    }
    let refused = Sse::connect(addr, "channel=f", None).await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.error_body().await["error"]["code"],
        "too_many_connections"
    );
    let (status, body) = poll(addr, "channel=f").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &"too_many_connections".into())
    );
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let response = get(addr, probe).await;
        assert_eq!(response.status(), 200, "{probe}");
        // Answered without a place: its connection is not kept.
        assert_eq!(response.headers()["connection"], "close", "{probe}");
    }
    assert_eq!(errors_counted(addr, 503, "too_many_connections").await, 2.0);
    herald.stop().await;
}

/// `GET {path}?channel=0&channel=1&…` with distinct channels, the query as
/// long as `bytes` allows; and the number of channels in it.
fn channel_flood(path: &str, bytes: usize) -> (Vec<u8>, usize) {
    let mut query = String::new();
    let mut n = 0;
    loop {
        let param = format!("channel={n:x}");
        let sep = usize::from(!query.is_empty());
        if query.len() + sep + param.len() > bytes {
            break;
        }
        if sep == 1 {
            query.push('&');
        }
        query.push_str(&param);
        n += 1;
    }
    // Fill up to the exact length with a cache buster.
    while query.len() + 3 > bytes {
        query.truncate(query.rfind('&').unwrap());
        n -= 1;
    }
    query.push_str("&_=");
    query.push_str(&"0".repeat(bytes - query.len()));
    let request = format!(
        "GET {path}?{query} HTTP/1.1\r\nHost: x\r\n{}\r\n",
        upgrade_headers(path)
    );
    (request.into_bytes(), n)
}

/// The headers of a WebSocket handshake, for `/ws`.
fn upgrade_headers(path: &str) -> &'static str {
    if path == "/ws" {
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    } else {
        ""
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_at_the_uri_limit_full_of_channels_is_refused_before_any_work() {
    let (_topic, herald) = herald_with_topic("flood", 1, "{key}").await;
    let addr = herald.local_addr();
    let limit = herald::config::HttpConfig::default().max_query_bytes;
    for path in ["/sse", "/poll", "/ws"] {
        // For comparison: a small request refused as early.
        let small = format!(
            "GET {path}?chanel=x HTTP/1.1\r\nHost: x\r\n{}\r\n",
            upgrade_headers(path)
        );
        let mut times = Vec::new();
        for _ in 0..5 {
            let (answer, took) = ask("127.0.0.3", addr, small.as_bytes()).await;
            assert_eq!(answer.code(), "unknown_parameter");
            times.push(took);
        }
        eprintln!(
            "{path}: a small request refused (400 unknown_parameter) in {}",
            spread(times)
        );
        let (request, n) = channel_flood(path, limit);
        let mut times = Vec::new();
        for _ in 0..5 {
            let (answer, took) = ask("127.0.0.3", addr, &request).await;
            assert_eq!(
                (answer.status, answer.code()),
                (400, "too_many_channels".into()),
                "{path}"
            );
            times.push(took);
        }
        eprintln!(
            "{path}: a {limit}-byte query with {n} distinct channel= refused (400 too_many_channels) in {}",
            spread(times.clone())
        );
        // Not a timing test: bounded, generously.
        assert!(
            times.iter().all(|t| *t < Duration::from_secs(5)),
            "{times:?}"
        );

        // One byte more is refused unread.
        let (request, _) = channel_flood(path, limit + 1);
        let (answer, took) = ask("127.0.0.3", addr, &request).await;
        assert_eq!(
            (answer.status, answer.code()),
            (414, "uri_too_long".into()),
            "{path}"
        );
        eprintln!(
            "{path}: a {}-byte query refused (414 uri_too_long) in {took:?}",
            limit + 1
        );
    }
    // The same channel however often is one channel.
    let same = vec!["channel=a"; limit / 10].join("&");
    let (messages, _) = poll_ok(addr, &same).await;
    assert!(messages.is_empty());
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_connections_are_bounded_per_address_and_the_oldest_gives_way() {
    let (_topic, herald) = herald_with_topic_and("pending", 1, "p", |cfg| {
        cfg.http.head_timeout = Duration::from_secs(60);
        cfg.limits.max_pending_connections = 50;
        cfg.limits.max_pending_connections_per_ip = 10;
    })
    .await;
    let addr = herald.local_addr();
    // 50 silent connections, 10 from each of five addresses: the node's
    // queue is full.
    let mut silent = Vec::new();
    for i in 0..50 {
        silent.push(connect_from(&format!("127.0.0.{}", 3 + i / 10), addr).await);
    }
    // An 11th from one of those addresses is refused at once.
    let mut eleventh = connect_from("127.0.0.3", addr).await;
    let t = Instant::now();
    let got = until_closed(&mut eleventh).await;
    let answer = parse_answer(&got).expect("a refusal");
    assert_eq!(
        (answer.status, answer.code()),
        (429, "too_many_pending_connections_per_ip".into())
    );
    eprintln!(
        "an address over limits.max_pending_connections_per_ip: refused in {:?}",
        t.elapsed()
    );

    // A probe from elsewhere still gets in: the connection that has
    // waited longest makes room.
    assert_eq!(get(addr, "/healthz").await.status(), 200);
    let t = Instant::now();
    let got = until_closed(&mut silent[0]).await;
    let answer = parse_answer(&got).expect("a refusal");
    assert_eq!(
        (answer.status, answer.code()),
        (503, "too_many_pending_connections".into())
    );
    eprintln!(
        "the oldest silent connection was pushed out within {:?}",
        t.elapsed()
    );
    // The others wait on.
    let mut buf = [0u8; 16];
    for stream in &silent[1..] {
        assert!(matches!(
            stream.try_read(&mut buf),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        ));
    }
    assert_eq!(
        errors_counted(addr, 429, "too_many_pending_connections_per_ip").await,
        1.0
    );
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_requests_from_one_address_are_bounded() {
    const PER_IP: usize = 5;
    // Records older than the node's memory: every since= needs a replay.
    let topic = unique_topic("since");
    create_topic(&topic, 1).await;
    let producer = Producer::new();
    futures_util::future::join_all((0..5000).map(|n| producer.send_n(&topic, "k", n))).await;
    let mut cfg = config(&[(&topic, "s")]);
    cfg.kafka.warm_history = 0;
    // Streams that their clients do not read stall at once, and hold
    // their replay (and its place) for as long as the test needs.
    cfg.http.send_buffer_bytes = Some(4096);
    cfg.replay.max_concurrent_per_ip = PER_IP;
    let herald = start(cfg, &[(&topic, 1)]).await;
    let addr = herald.local_addr();

    /// An SSE request from `from` that reads the response head only.
    async fn since_stream(from: &'static str, addr: SocketAddr) -> (Answer, TcpStream) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(ip(from), 0)).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        stream
            .write_all(b"GET /sse?channel=s&since=0 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(TIMEOUT, stream.read(&mut byte))
                .await
                .expect("a since= request hung")
                .unwrap();
            assert_eq!(n, 1, "closed before a response head");
            got.push(byte[0]);
        }
        let (mut answer, _) = parse_head(&got).unwrap();
        if answer.status != 200 {
            answer = read_answer_rest(answer, &mut stream).await;
        }
        (answer, stream)
    }

    /// The body of a refusal whose head was read already.
    async fn read_answer_rest(mut answer: Answer, stream: &mut TcpStream) -> Answer {
        let len: usize = answer
            .header("content-length")
            .unwrap_or_else(|| panic!("no content-length in {}", answer.head))
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.unwrap();
        answer.body = body;
        answer
    }

    let t = Instant::now();
    let requests: Vec<_> = (0..100)
        .map(|_| tokio::spawn(since_stream("127.0.0.4", addr)))
        .collect();
    let mut admitted = Vec::new();
    let mut refused = 0;
    for request in requests {
        let (answer, stream) = request.await.unwrap();
        match answer.status {
            200 => admitted.push(stream),
            429 => {
                assert_eq!(answer.code(), "too_many_replays_per_ip");
                assert_eq!(answer.header("retry-after").as_deref(), Some("1"));
                refused += 1;
            }
            other => panic!(
                "unexpected {other}: {}",
                String::from_utf8_lossy(&answer.body)
            ),
        }
    }
    eprintln!(
        "100 concurrent since= from one address: {} admitted, {refused} refused (429 too_many_replays_per_ip), all answered within {:?}",
        admitted.len(),
        t.elapsed()
    );
    assert_eq!(
        admitted.len(),
        PER_IP,
        "exactly replay.max_concurrent_per_ip at once"
    );
    assert_eq!(refused, 100 - PER_IP);

    // Another address is not held back, and a poll from the busy one is
    // refused the same way.
    let (other, _other_stream) = since_stream("127.0.0.5", addr).await;
    assert_eq!(other.status, 200);
    let (status, body) = poll(addr, "channel=s&since=0").await;
    assert_eq!(status, 200, "127.0.0.1 has its own places: {body}");
    let poll_request =
        b"GET /poll?channel=s&since=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (answer, _) = ask("127.0.0.4", addr, poll_request).await;
    assert_eq!(
        (answer.status, answer.code()),
        (429, "too_many_replays_per_ip".into())
    );

    // Places come back once the replays end.
    drop(admitted);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (answer, _) = ask("127.0.0.4", addr, poll_request).await;
        if answer.status == 200 {
            break;
        }
        assert_eq!(answer.code(), "too_many_replays_per_ip");
        assert!(Instant::now() < deadline, "the places never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    herald.stop().await;
}
