//! WebSocket end to end against a real Kafka broker: exact delivery, exact
//! resume, per-key channels, several subscriptions per connection, every
//! documented answer to a bad message, close codes, pings.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use herald::hub::cursor::Cursor;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_over_three_partitions_arrive_exactly_once_in_order() {
    let (topic, herald) = herald_with_topic("ws-exact", 3, "all").await;
    let addr = herald.local_addr();
    let mut ws = Ws::connect(addr, "").await;
    let opening = ws.subscribe("all", None).await;
    assert_eq!(
        Cursor::decode(&opening).unwrap().to_string(),
        format!("{topic}/0@0,{topic}/1@0,{topic}/2@0"),
        "the subscribed cursor names every partition"
    );
    assert_eq!(
        metric(addr, "herald_connections{transport=\"ws\"}").await,
        1.0
    );

    let producer = Producer::new();
    const N: u64 = 300;
    let produced: HashMap<u64, (i32, i64)> = (0..N)
        .zip(producer.send_keyed(&topic, 0..N, 10).await)
        .collect();
    let messages = ws.messages(N as usize).await;
    assert_exactly_produced(&messages, &produced, &topic, "all");
    producer.send_n(&topic, "k0", 9999).await;
    assert_eq!(ns_json(&ws.messages(1).await), [9999]);
    assert!(metric(addr, "herald_messages_delivered_total{transport=\"ws\"}").await >= 301.0);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_the_last_cursor_gets_exactly_the_rest() {
    let (topic, herald) = herald_with_topic("ws-resume", 3, "feed").await;
    let addr = herald.local_addr();
    let producer = Producer::new();

    let mut first = Ws::connect(addr, "").await;
    first.subscribe("feed", None).await;
    producer.send_keyed(&topic, 0..100, 7).await;
    let seen = first.messages(40).await;
    let last = seen.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    drop(first);
    producer.send_keyed(&topic, 100..160, 7).await;

    // By a subscribe message …
    let mut second = Ws::connect(addr, "").await;
    let resumed_at = second.subscribe("feed", Some(&last)).await;
    assert_eq!(resumed_at, last, "subscribed echoes where it resumes");
    let rest = second.messages(120).await;
    let mut all: Vec<u64> = ns_json(&seen).into_iter().chain(ns_json(&rest)).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..160).collect::<Vec<_>>(),
        "none missing, none twice"
    );
    assert_partition_order_json(&seen.iter().chain(&rest).cloned().collect::<Vec<_>>());

    // … and by the URL, for a one-way client: the same messages.
    let mut one_way = Ws::connect(addr, &format!("channel=feed&cursor={last}")).await;
    let subscribed = one_way.next_json().await;
    assert_eq!(
        subscribed,
        json!({"type": "subscribed", "channel": "feed", "cursor": last})
    );
    assert_eq!(ns_json(&one_way.messages(120).await), ns_json(&rest));
    producer.send_n(&topic, "k0", 9999).await;
    assert_eq!(ns_json(&one_way.messages(1).await), [9999]);
    assert_eq!(ns_json(&second.messages(1).await), [9999]);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_channel_receives_only_its_key() {
    let (topic, herald) = herald_with_topic("ws-users", 3, "user.{key}").await;
    let mut ws = Ws::connect(herald.local_addr(), "channel=user.k7").await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    let producer = Producer::new();
    producer.send_keyed(&topic, 0..200, 10).await;
    let messages = ws.messages(20).await;
    assert_eq!(
        ns_json(&messages),
        (0..200).filter(|n| n % 10 == 7).collect::<Vec<_>>()
    );
    for m in &messages {
        assert_eq!(m["key"], "k7");
        assert_eq!(m["channel"], "user.k7");
    }
    producer.send_n(&topic, "k7", 9999).await;
    let last = ws.messages(1).await;
    assert_eq!(ns_json(&last), [9999]);
    let cursor = Cursor::decode(last[0]["cursor"].as_str().unwrap()).unwrap();
    assert_eq!(
        cursor.iter().count(),
        3,
        "a per-key cursor names all partitions"
    );
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscription_has_its_own_cursor_and_unsubscribe_stops_it() {
    let (news, users, herald) = herald_with_news_and_users("ws-").await;
    let addr = herald.local_addr();
    let producer = Producer::new();
    let mut ws = Ws::connect(addr, "channel=news").await;
    let news_start = ws.next_json().await["cursor"].as_str().unwrap().to_owned();
    let user_start = ws.subscribe("user.k1", None).await;
    assert_eq!(Cursor::decode(&news_start).unwrap().iter().count(), 2);
    assert_eq!(Cursor::decode(&user_start).unwrap().iter().count(), 3);

    for n in 0..20 {
        producer.send_n(&news, "x", n).await;
        producer.send_n(&users, "k1", 100 + n).await;
    }
    let messages = ws.messages(40).await;
    let (on_news, on_user): (Vec<_>, Vec<_>) =
        messages.into_iter().partition(|m| m["channel"] == "news");
    assert_eq!(ns_json(&on_news), (0..20).collect::<Vec<_>>());
    assert_eq!(ns_json(&on_user), (100..120).collect::<Vec<_>>());
    for m in &on_news {
        let c = Cursor::decode(m["cursor"].as_str().unwrap()).unwrap();
        assert!(c.iter().all(|(t, _, _)| t == news), "news cursor: {c}");
    }

    ws.send_json(json!({"type": "unsubscribe", "channel": "news"}))
        .await;
    assert_eq!(
        ws.next_json().await,
        json!({"type": "unsubscribed", "channel": "news"})
    );
    producer.send_n(&news, "x", 50).await;
    producer.send_n(&users, "k1", 150).await;
    let next = ws.messages(1).await;
    assert_eq!(
        (ns_json(&next), next[0]["channel"].clone()),
        (vec![150], json!("user.k1")),
        "nothing more on news"
    );

    // Resubscribing with news' last cursor picks up exactly what it missed.
    let last_news = on_news.last().unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    ws.subscribe("news", Some(&last_news)).await;
    assert_eq!(ns_json(&ws.messages(1).await), [50]);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_their_documented_error_and_the_connection_goes_on() {
    let topic = unique_topic("ws-bad");
    create_topic(&topic, 3).await;
    let mut cfg = config(&[(&topic, "b"), (&topic, "c"), (&topic, "d")]);
    cfg.limits.max_channels_per_connection = 2;
    let herald = start(cfg, &[(&topic, 3)]).await;
    let addr = herald.local_addr();
    let producer = Producer::new();
    let mut ws = Ws::connect(addr, "").await;
    ws.subscribe("b", None).await;

    let mut other_topic = Cursor::new();
    other_topic.set("not-a-feed", 0, 5);
    let cases: Vec<(WsMessage, &str, Option<&str>, &str)> = vec![
        (
            WsMessage::text("{not json"),
            "bad_message",
            None,
            "not valid JSON",
        ),
        (WsMessage::text("[]"), "bad_message", None, "JSON object"),
        (
            WsMessage::text(r#"{"type":"hello","channel":"b"}"#),
            "bad_message",
            None,
            "unknown message type \"hello\"",
        ),
        (
            WsMessage::text(r#"{"type":"subscribe"}"#),
            "bad_message",
            None,
            "needs a \"channel\"",
        ),
        (
            WsMessage::text(r#"{"type":"subscribe","channel":"b"}"#),
            "already_subscribed",
            Some("b"),
            "already subscribed",
        ),
        (
            WsMessage::text(r#"{"type":"unsubscribe","channel":"c"}"#),
            "not_subscribed",
            Some("c"),
            "not subscribed",
        ),
        (
            WsMessage::text(r#"{"type":"subscribe","channel":"nope"}"#),
            "unknown_channel",
            Some("nope"),
            "\"nope\"",
        ),
        (
            WsMessage::text(r#"{"type":"subscribe","channel":"c","cursor":"garbage"}"#),
            "invalid_cursor",
            Some("c"),
            "format marker",
        ),
        (
            WsMessage::text(
                json!({"type": "subscribe", "channel": "c", "cursor": other_topic.encode()})
                    .to_string(),
            ),
            "invalid_cursor",
            Some("c"),
            "\"not-a-feed\"",
        ),
        (
            WsMessage::text(r#"{"type":"subscribe","channel":"c","cursor":"hAA","since":5}"#),
            "conflicting_parameters",
            Some("c"),
            "not both",
        ),
        (
            WsMessage::binary(b"{\"type\":\"subscribe\"}".to_vec()),
            "bad_message",
            None,
            "binary",
        ),
    ];
    for (i, (frame, code, channel, needle)) in cases.into_iter().enumerate() {
        ws.send(frame).await;
        let error = ws.next_json().await;
        assert_eq!(error["type"], "error", "case {i}: {error}");
        assert_eq!(error["code"], code, "case {i}: {error}");
        assert_eq!(error["channel"].as_str(), channel, "case {i}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "case {i}: {message:?} lacks {needle}"
        );
        // The connection still works, and `b` is untouched.
        producer.send_n(&topic, "k", i as u64).await;
        assert_eq!(ns_json(&ws.messages(1).await), [i as u64], "case {i}");
    }

    // The limit: b and c fit, d does not.
    ws.subscribe("c", None).await;
    ws.send_json(json!({"type": "subscribe", "channel": "d"}))
        .await;
    let error = ws.next_json().await;
    assert_eq!(
        (error["code"].as_str(), error["channel"].as_str()),
        (Some("too_many_channels"), Some("d")),
        "{error}"
    );
    // A refused subscription left no trace: unsubscribing makes room.
    ws.send_json(json!({"type": "unsubscribe", "channel": "c"}))
        .await;
    assert_eq!(ws.next_json().await["type"], "unsubscribed");
    ws.subscribe("d", None).await;
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrades_are_json_400s() {
    let topic = unique_topic("ws-refused");
    create_topic(&topic, 1).await;
    let herald = start(config(&[(&topic, "r"), (&topic, "s")]), &[(&topic, 1)]).await;
    let addr = herald.local_addr();
    for (query, code, needle) in [
        ("channel=nope", "unknown_channel", "\"nope\""),
        (
            "channel=r&cursor=garbage",
            "invalid_cursor",
            "format marker",
        ),
        (
            "channel=r&channel=s&cursor=hAA",
            "conflicting_parameters",
            "exactly one",
        ),
        ("chanel=r", "unknown_parameter", "\"chanel\""),
    ] {
        let (status, body) = Ws::try_connect(addr, query).await.err().unwrap();
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{query}: {message}");
    }
    // Not a WebSocket handshake at all.
    let response = reqwest::get(format!("http://{addr}/ws")).await.unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "bad_handshake");
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/ws"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("13"));
    // Several channels and since= are fine for a one-way client.
    let mut ws = Ws::connect(addr, "channel=r&channel=s&since=0").await;
    let a = ws.next_json().await;
    let b = ws.next_json().await;
    assert_eq!(
        (a["type"].as_str(), b["type"].as_str()),
        (Some("subscribed"), Some("subscribed"))
    );
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_closes_with_1009() {
    let (_topic, herald) = herald_with_topic("ws-big", 1, "big").await;
    let mut ws = Ws::connect(herald.local_addr(), "").await;
    ws.subscribe("big", None).await;
    // Just under the limit is fine (an ordinary bad message) …
    let padding = "x".repeat(60 * 1024);
    ws.send_json(json!({"type": "hello", "pad": padding})).await;
    assert_eq!(ws.next_json().await["code"], "bad_message");
    // … over it closes.
    let padding = "x".repeat(65 * 1024);
    ws.send_json(json!({"type": "subscribe", "channel": "big", "pad": padding}))
        .await;
    let close = ws.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1009);
    assert!(close.reason.contains("65536"), "{}", close.reason);
    assert!(ws.next_frame().await.is_none(), "then the connection ends");
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_with_1001() {
    let (_topic, herald) = herald_with_topic("ws-shutdown", 1, "s").await;
    let mut ws = Ws::connect(herald.local_addr(), "channel=s").await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    let stop = tokio::spawn(herald.stop());
    let close = ws.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(close.reason.as_str(), "shutdown");
    tokio::time::timeout(TIMEOUT, stop)
        .await
        .expect("shutdown finishes")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pings_and_closes_a_client_that_never_answers() {
    let topic = unique_topic("ws-ping");
    create_topic(&topic, 1).await;
    let mut cfg = config(&[(&topic, "p")]);
    cfg.ws.ping_interval = Duration::from_secs(1);
    cfg.ws.pong_timeout = Duration::from_millis(500);
    let herald = start(cfg, &[(&topic, 1)]).await;
    let addr = herald.local_addr();

    // A client that reads answers pings (tungstenite pongs as it reads)
    // and stays connected across several ping intervals.
    let mut alive = Ws::connect(addr, "").await;
    let mut pings = 0;
    while pings < 3 {
        match alive.next_frame().await.expect("still open") {
            WsMessage::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    alive.subscribe("p", None).await;

    // A client that reads nothing sends no pong: after the ping interval
    // and the pong timeout it is closed with 4000. Not reading is the
    // point here, so this waits on the clock.
    let mut silent = Ws::connect(addr, "").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    match silent.next_frame().await {
        Some(WsMessage::Ping(_)) => {}
        other => panic!("expected the unanswered ping, got {other:?}"),
    }
    let close = silent.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4000);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_resumes_exactly() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let topic = unique_topic("ws-slow");
    create_topic(&topic, 3).await;
    let mut cfg = config(&[(&topic, "s")]);
    cfg.hub.subscriber_queue = 8;
    cfg.ws.pong_timeout = Duration::from_secs(1);
    cfg.http.send_buffer_bytes = Some(4096);
    let herald = start(cfg, &[(&topic, 3)]).await;
    let addr = herald.local_addr();

    // A client with a small receive buffer, which stops reading.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let request = format!("ws://{addr}/ws?channel=s")
        .into_client_request()
        .unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    let opening = match slow.next().await {
        Some(Ok(WsMessage::Text(t))) => serde_json::from_str::<serde_json::Value>(&t).unwrap(),
        other => panic!("expected subscribed, got {other:?}"),
    };
    let producer = Producer::new();
    let pad = "x".repeat(2000);
    const N: u64 = 300;
    for n in 0..N {
        let payload = format!("{{\"n\":{n},\"pad\":\"{pad}\"}}");
        producer
            .send(
                &topic,
                None,
                Some(format!("k{}", n % 5).as_bytes()),
                Some(payload.as_bytes()),
                None,
            )
            .await;
    }
    wait_until_metric_at_least(
        addr,
        "herald_slow_client_disconnects_total{transport=\"ws\"}",
        1.0,
    )
    .await;

    // What it got before the cut, then a resume from its last cursor.
    let mut got = Vec::new();
    let mut cursor = opening["cursor"].as_str().unwrap().to_owned();
    loop {
        let frame = tokio::time::timeout(TIMEOUT, slow.next())
            .await
            .expect("the connection ends");
        match frame {
            Some(Ok(WsMessage::Text(t))) => {
                let m: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_eq!(m["type"], "message");
                cursor = m["cursor"].as_str().unwrap().to_owned();
                got.push(m);
            }
            Some(Ok(WsMessage::Close(frame))) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(4008));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    assert!((got.len() as u64) < N, "cut off before the end");
    let mut ws = Ws::connect(addr, "").await;
    ws.subscribe("s", Some(&cursor)).await;
    let rest = ws.messages(N as usize - got.len()).await;
    let mut all: Vec<u64> = ns_json(&got).into_iter().chain(ns_json(&rest)).collect();
    all.sort_unstable();
    assert_eq!(all, (0..N).collect::<Vec<_>>(), "none missing, none twice");
    herald.stop().await;
}

/// `ws.write_delay`: a message waits that long for company, and what
/// arrives meanwhile goes out with it, in order, none missing: the
/// first message comes no sooner than the delay after it was produced,
/// and the rest right behind it, not one delay each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_delay_holds_messages_and_sends_them_together() {
    const DELAY: Duration = Duration::from_millis(1500);
    let (topic, herald) = herald_with_topic_and("ws-delay", 1, "feed", |c| {
        c.ws.write_delay = DELAY;
    })
    .await;
    let mut ws = Ws::connect(herald.local_addr(), "").await;
    ws.subscribe("feed", None).await;
    let producer = Producer::new();
    let produced = std::time::Instant::now();
    for n in 0..5 {
        producer.send_n(&topic, "k", n).await;
    }
    let first = ws.messages(1).await;
    let first_at = produced.elapsed();
    let rest = ws.messages(4).await;
    let rest_at = produced.elapsed();
    assert_eq!(
        ns_json(&first.iter().chain(&rest).cloned().collect::<Vec<_>>()),
        [0, 1, 2, 3, 4]
    );
    assert!(
        first_at >= DELAY,
        "the first message was held for ws.write_delay ({DELAY:?}), came after {first_at:?}"
    );
    assert!(
        rest_at - first_at < DELAY / 2,
        "the other four came with the first, not a delay later ({:?} after it)",
        rest_at - first_at
    );
    herald.stop().await;
}

// ------------------------------------------------------ permessage-deflate

/// A WebSocket client on a bare socket, to see what the frames are (RSV1,
/// the bytes themselves) and to send compressed ones; compresses and
/// inflates with flate2, the crate Herald uses. Python's zlib checks its
/// bytes independently in the test.
struct RawWs {
    stream: tokio::net::TcpStream,
    input: Vec<u8>,
}

/// What Chromium offers.
const CHROMIUM_OFFER: &str = "permessage-deflate; client_max_window_bits";

impl RawWs {
    /// Upgrades `/ws?{query}` offering `extensions`; returns the client and
    /// the response's `Sec-WebSocket-Extensions`.
    async fn connect(
        addr: std::net::SocketAddr,
        query: &str,
        extensions: Option<&str>,
    ) -> (RawWs, Option<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let offer = extensions.map_or(String::new(), |e| {
            format!("Sec-WebSocket-Extensions: {e}\r\n")
        });
        let request = format!(
            "GET /ws?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut input = Vec::new();
        let end = loop {
            if let Some(i) = input.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
                .await
                .expect("the response head")
                .unwrap();
            assert!(n > 0, "closed before the response head");
            input.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8(input[..end].to_vec()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let answer = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        input.drain(..end + 4);
        (RawWs { stream, input }, answer)
    }

    /// Sends one masked frame: `b0` (FIN, RSV1, opcode) and `payload`.
    async fn send_frame(&mut self, b0: u8, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![b0];
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The next frame: its first byte and its payload; `None` at the end.
    async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        loop {
            let b = &self.input;
            if b.len() >= 2 {
                let (head, len) = match b[1] & 0x7F {
                    126 if b.len() >= 4 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
                    127 if b.len() >= 10 => (
                        10,
                        u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (2, n as usize),
                };
                if head != usize::MAX && b.len() >= head + len {
                    assert_eq!(b[1] & 0x80, 0, "server frames are unmasked");
                    let frame = (b[0], b[head..head + len].to_vec());
                    self.input.drain(..head + len);
                    return Some(frame);
                }
            }
            let mut buf = [0u8; 16 * 1024];
            let n = tokio::time::timeout(TIMEOUT, self.stream.read(&mut buf))
                .await
                .expect("timed out waiting for a frame")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.input.extend_from_slice(&buf[..n]);
        }
    }

    /// The next text frame (pings skipped): whether RSV1 was set, and its
    /// payload as sent.
    async fn next_text(&mut self) -> (bool, Vec<u8>) {
        loop {
            let (b0, payload) = self.next_frame().await.expect("a frame");
            match b0 & 0x0F {
                0x1 => {
                    assert_ne!(b0 & 0x80, 0, "Herald does not fragment");
                    return (b0 & 0x40 != 0, payload);
                }
                0x9 | 0xA => continue,
                op => panic!("expected a text frame, got opcode {op}: {payload:?}"),
            }
        }
    }

    /// The server's close: code and reason.
    async fn close(&mut self) -> (u16, String) {
        loop {
            let (b0, payload) = self.next_frame().await.expect("a close frame");
            if b0 & 0x0F == 0x8 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (code, String::from_utf8(payload[2..].to_vec()).unwrap());
            }
        }
    }
}

/// `bytes` compressed as one permessage-deflate message: raw DEFLATE, sync
/// flushed, without the trailing `00 00 ff ff`.
fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(bytes.len() + 1024);
    c.compress_vec(bytes, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    assert_eq!(c.total_in() as usize, bytes.len());
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A compressed message inflated: the trailer appended again (RFC 7692
/// §7.2.2), a fresh inflater (no context takeover).
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(64 * 1024);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .unwrap();
    assert_eq!(d.total_in() as usize, input.len());
    out
}

/// The same payloads inflated by Python's zlib (another implementation
/// than Herald's zlib-rs): one hex payload a line in, one out.
fn inflate_with_python(payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
    use std::io::Write;
    let python = std::env::var("HERALD_PUSH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import sys, zlib\n\
        for line in sys.stdin:\n\
        \x20   d = zlib.decompressobj(-15)\n\
        \x20   out = d.decompress(bytes.fromhex(line.strip()) + b'\\x00\\x00\\xff\\xff')\n\
        \x20   print(out.hex())\n";
    let mut child = std::process::Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e} (the test needs Python 3)"));
    let mut stdin = child.stdin.take().unwrap();
    for p in payloads {
        let hex: String = p.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(stdin, "{hex}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python's zlib failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_sends_the_same_compressed_bytes_to_every_client_that_offered_it() {
    let (topic, herald) =
        herald_with_topic_and("ws-deflate", 1, "z", |c| c.ws.compression = true).await;
    let addr = herald.local_addr();
    let answer = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    let (mut a, a_answer) = RawWs::connect(addr, "", Some(CHROMIUM_OFFER)).await;
    let (mut b, b_answer) = RawWs::connect(
        addr,
        "",
        Some("permessage-deflate; server_max_window_bits=10, permessage-deflate"),
    )
    .await;
    let (mut plain, plain_answer) = RawWs::connect(addr, "", None).await;
    assert_eq!(a_answer.as_deref(), Some(answer));
    assert_eq!(b_answer.as_deref(), Some(answer), "the second offer taken");
    assert_eq!(plain_answer, None, "nothing offered, nothing taken");

    // a subscribes with one compressed frame; b with a compressed message
    // in two fragments and a ping between them; the plain client plainly.
    let subscribe = br#"{"type":"subscribe","channel":"z"}"#;
    a.send_frame(0xC1, &deflate(subscribe)).await;
    let compressed = deflate(subscribe);
    let (first, second) = compressed.split_at(compressed.len() / 2);
    b.send_frame(0x41, first).await;
    b.send_frame(0x89, b"between").await;
    b.send_frame(0x80, second).await;
    plain.send_frame(0x81, subscribe).await;
    for client in [&mut a, &mut b, &mut plain] {
        let (rsv1, payload) = client.next_text().await;
        assert!(!rsv1, "only messages are compressed");
        let reply: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }

    let producer = Producer::new();
    const N: u64 = 30;
    let produced: HashMap<u64, (i32, i64)> = (0..N)
        .zip(producer.send_keyed(&topic, 0..N, 1).await)
        .collect();
    let mut compressed = Vec::new();
    let mut plain_frames = Vec::new();
    for _ in 0..N {
        let (rsv1, from_a) = a.next_text().await;
        let (b_rsv1, from_b) = b.next_text().await;
        let (plain_rsv1, from_plain) = plain.next_text().await;
        assert!(rsv1 && b_rsv1, "messages go compressed");
        assert!(!plain_rsv1, "and plain to a client that did not offer it");
        assert_eq!(from_a, from_b, "the same compressed bytes to both");
        assert!(from_a.len() < from_plain.len(), "and fewer of them");
        assert_eq!(inflate(&from_a), from_plain);
        compressed.push(from_a);
        plain_frames.push(from_plain);
    }
    assert_eq!(
        inflate_with_python(&compressed),
        plain_frames,
        "Python's zlib reads them alike"
    );
    let messages: Vec<serde_json::Value> = plain_frames
        .iter()
        .map(|f| serde_json::from_slice(f).unwrap())
        .collect();
    assert_exactly_produced(&messages, &produced, &topic, "z");
    let (sum_z, sum_plain): (usize, usize) = (
        compressed.iter().map(Vec::len).sum(),
        plain_frames.iter().map(Vec::len).sum(),
    );
    eprintln!(
        "permessage-deflate: {} bytes a message compressed, {} plain",
        sum_z / N as usize,
        sum_plain / N as usize
    );

    // Compressed requests keep being understood after the first.
    a.send_frame(0xC1, &deflate(br#"{"type":"unsubscribe","channel":"z"}"#))
        .await;
    let (_, reply) = a.next_text().await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&reply).unwrap(),
        json!({"type": "unsubscribed", "channel": "z"})
    );
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_is_not_negotiated_when_compression_is_off() {
    let (_topic, herald) = herald_with_topic("ws-deflate-off", 1, "z").await;
    let (mut ws, answer) = RawWs::connect(herald.local_addr(), "", Some(CHROMIUM_OFFER)).await;
    assert_eq!(answer, None, "ws.compression is off by default");
    // A compressed frame is then a protocol error.
    ws.send_frame(0xC1, &deflate(br#"{"type":"subscribe","channel":"z"}"#))
        .await;
    assert_eq!(ws.close().await.0, 1002);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deflate_bomb_closes_with_1009_and_bad_deflate_with_1007() {
    let (_topic, herald) =
        herald_with_topic_and("ws-bomb", 1, "z", |c| c.ws.compression = true).await;
    let addr = herald.local_addr();
    // 4 MiB of spaces in a JSON string: about 4 KB compressed, far under
    // the 64 KiB limit; inflated, 64 times over it. (Bigger only makes the
    // test slower to compress in a debug build.)
    let mut bomb = b"{\"type\":\"subscribe\",\"channel\":\"".to_vec();
    bomb.resize(4 << 20, b' ');
    let bomb = deflate(&bomb);
    assert!(bomb.len() < 65536, "{} bytes compressed", bomb.len());
    let (mut ws, _) = RawWs::connect(addr, "", Some(CHROMIUM_OFFER)).await;
    ws.send_frame(0xC1, &bomb).await;
    let (code, reason) = ws.close().await;
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("65536 bytes once inflated"), "{reason}");
    assert!(ws.next_frame().await.is_none(), "then the connection ends");

    // Not DEFLATE at all (a reserved block type).
    let (mut ws, _) = RawWs::connect(addr, "", Some(CHROMIUM_OFFER)).await;
    ws.send_frame(0xC1, &[0xff, 0xff, 0xff, 0xff]).await;
    let (code, reason) = ws.close().await;
    assert_eq!(code, 1007, "{reason}");
    assert!(reason.contains("not valid DEFLATE"), "{reason}");

    // The node is fine: a compressed subscribe on a new connection works.
    let (mut ws, _) = RawWs::connect(addr, "", Some(CHROMIUM_OFFER)).await;
    ws.send_frame(0xC1, &deflate(br#"{"type":"subscribe","channel":"z"}"#))
        .await;
    let (_, reply) = ws.next_text().await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&reply).unwrap()["type"],
        "subscribed"
    );
    herald.stop().await;
}
