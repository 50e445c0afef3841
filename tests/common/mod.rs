//! Shared test harness: a real Kafka broker (from `KAFKA_BOOTSTRAP`, which
//! `scripts/test.sh` sets), one fresh topic per test, Herald started
//! in-process on port 0, and a small SSE client.

#![allow(dead_code)]

pub mod kafka_proxy;
pub mod push_service;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use herald::Herald;
use herald::config::Config;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// How long any single awaited event may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Starts `herald serve --config <path>` as a process of its own (warnings
/// logged, stdout dropped), for tests that kill it.
pub fn spawn_serve(config: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--config", config.to_str().expect("a UTF-8 path")])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start herald")
}

/// Runs the `herald` binary with `args` (errors-only logging): its exit
/// code, stdout and stderr.
pub fn run_herald(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run herald");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").expect(
        "KAFKA_BOOTSTRAP is not set: these tests need a real Kafka broker; run them with scripts/test.sh",
    )
}

/// A topic name no other test (or earlier run) uses.
pub fn unique_topic(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000
    )
}

pub async fn create_topic(name: &str, partitions: i32) {
    create_topic_on(&bootstrap(), name, partitions).await;
}

/// [`create_topic`] on the broker at `brokers` rather than the shared one.
pub async fn create_topic_on(brokers: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .expect("create_topics request");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// Deletes every record of `topic/partition` below `offset`, as retention
/// would (the Admin API's delete-records).
pub async fn delete_records_below(topic: &str, partition: i32, offset: i64) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let mut below = rdkafka::TopicPartitionList::new();
    below
        .add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))
        .expect("partition list");
    admin
        .delete_records(&below, &AdminOptions::new())
        .await
        .expect("delete records");
}

#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
}

impl Producer {
    pub fn new() -> Producer {
        Producer::with_brokers(&bootstrap())
    }

    /// A producer to the broker at `brokers` rather than the shared one.
    pub fn with_brokers(brokers: &str) -> Producer {
        let inner = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "0")
            .create()
            .expect("producer");
        Producer { inner }
    }

    /// Waits until the brokers tell this producer that `topic` has
    /// `partitions` partitions: right after CreatePartitions a producer's
    /// metadata may still have the old count, and a record sent to a new
    /// partition fails with UnknownPartition.
    pub async fn wait_for_partitions(&self, topic: &str, partitions: usize) {
        use rdkafka::producer::Producer as _;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (inner, name) = (self.inner.clone(), topic.to_owned());
            let known = tokio::task::spawn_blocking(move || {
                inner
                    .client()
                    .fetch_metadata(Some(&name), Duration::from_secs(5))
                    .ok()
                    .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
            })
            .await
            .unwrap();
            if known == Some(partitions) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{topic} still has {known:?} partitions, not {partitions}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Produces one record and returns its `(partition, offset)`.
    pub async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        timestamp: Option<i64>,
    ) -> (i32, i64) {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = payload {
            record = record.payload(v);
        }
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        let delivery = self
            .inner
            .send(record, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
        (delivery.partition, delivery.offset)
    }

    /// Produces `{"n": n}` with the record headers `headers` (name, value).
    pub async fn send_n_with_headers(&self, topic: &str, n: u64, headers: &[(&str, &str)]) {
        let payload = format!("{{\"n\":{n}}}");
        let mut owned = rdkafka::message::OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(rdkafka::message::Header {
                key: name,
                value: Some(*value),
            });
        }
        let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .payload(payload.as_bytes())
            .headers(owned);
        self.inner
            .send(record, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    }

    /// Produces a JSON record `{"n": n}` with the given key.
    pub async fn send_n(&self, topic: &str, key: &str, n: u64) -> (i32, i64) {
        let payload = format!("{{\"n\":{n}}}");
        self.send(
            topic,
            None,
            Some(key.as_bytes()),
            Some(payload.as_bytes()),
            None,
        )
        .await
    }

    /// Produces `{"n": n}` for every `n` in `range`, keyed `k{n % keys}` so
    /// the records spread over the partitions; returns each one's
    /// `(partition, offset)`, in `range` order.
    pub async fn send_keyed(
        &self,
        topic: &str,
        range: std::ops::Range<u64>,
        keys: u64,
    ) -> Vec<(i32, i64)> {
        let mut positions = Vec::with_capacity(range.clone().count());
        for n in range {
            positions.push(self.send_n(topic, &format!("k{}", n % keys), n).await);
        }
        positions
    }
}

/// Herald config for tests: port 0, fast metadata and stats, given routes
/// (`(topic, channel)` pairs).
pub fn config(routes: &[(&str, &str)]) -> Config {
    let mut text = format!(
        "[kafka]\nbrokers = \"{}\"\nmetadata_refresh = \"500ms\"\nstats_interval = \"200ms\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n",
        bootstrap()
    );
    for (topic, channel) in routes {
        text.push_str(&format!(
            "[[route]]\ntopic = \"{topic}\"\nchannel = \"{channel}\"\n"
        ));
    }
    Config::parse(&text, "test").expect("test config")
}

/// Starts Herald and waits until it has assigned every partition of `topics`.
pub async fn start(config: Config, topics: &[(&str, i32)]) -> Herald {
    let herald = Herald::start(config).await.expect("herald starts");
    wait_until("Herald assigns the test topics", || {
        let positions = herald.hub().positions();
        herald.hub().is_ready()
            && topics.iter().all(|(t, n)| {
                positions
                    .topic(t)
                    .is_some_and(|p| p.len() == *n as usize && p.iter().all(|o| *o >= 0))
            })
    })
    .await;
    herald
}

/// Creates a fresh topic named after `prefix` with `partitions` partitions
/// and starts Herald with the one route topic → `channel`.
pub async fn herald_with_topic(prefix: &str, partitions: i32, channel: &str) -> (String, Herald) {
    herald_with_topic_and(prefix, partitions, channel, |_| {}).await
}

/// As [`herald_with_topic`], with `tweak` applied to the config first.
pub async fn herald_with_topic_and(
    prefix: &str,
    partitions: i32,
    channel: &str,
    tweak: impl FnOnce(&mut Config),
) -> (String, Herald) {
    let topic = unique_topic(prefix);
    create_topic(&topic, partitions).await;
    let mut cfg = config(&[(&topic, channel)]);
    tweak(&mut cfg);
    let herald = start(cfg, &[(&topic, partitions)]).await;
    (topic, herald)
}

/// Two fresh topics, `news` (2 partitions, channel `news`) and `users`
/// (3 partitions, channels `user.{key}`), and Herald routing both. Returns
/// `(news, users, herald)`.
pub async fn herald_with_news_and_users(prefix: &str) -> (String, String, Herald) {
    let news = unique_topic(&format!("{prefix}news"));
    let users = unique_topic(&format!("{prefix}users"));
    create_topic(&news, 2).await;
    create_topic(&users, 3).await;
    let herald = start(
        config(&[(&news, "news"), (&users, "user.{key}")]),
        &[(&news, 2), (&users, 3)],
    )
    .await;
    (news, users, herald)
}

/// Polls `condition` until it holds; fails the test after [`TIMEOUT`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One parsed server-sent event.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
}

impl Event {
    /// The JSON `data`, for message events.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.data.as_deref().expect("event has data")).expect("data is JSON")
    }
}

/// A minimal EventSource: parses the stream into events (comments skipped).
pub struct Sse {
    pub status: u16,
    body: Option<futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    buf: Vec<u8>,
    /// The last `id:` seen, as a browser's `lastEventId`.
    pub last_id: Option<String>,
    pub retry: Option<u64>,
}

impl Sse {
    pub async fn connect(
        addr: std::net::SocketAddr,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Sse {
        Self::connect_with(&reqwest::Client::new(), addr, query, last_event_id).await
    }

    /// As [`Sse::connect`] through `client`, whose pool may hold a
    /// kept-alive connection for the request.
    pub async fn connect_with(
        client: &reqwest::Client,
        addr: std::net::SocketAddr,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Sse {
        let mut req = client.get(format!("http://{addr}/sse?{query}"));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = tokio::time::timeout(TIMEOUT, req.send())
            .await
            .expect("SSE connect timed out")
            .expect("SSE request");
        let status = resp.status().as_u16();
        if status == 200 {
            assert_eq!(
                resp.headers()["content-type"],
                "text/event-stream",
                "SSE content type"
            );
        }
        let mut sse = Sse {
            status,
            body: Some(resp.bytes_stream().boxed()),
            buf: Vec::new(),
            last_id: None,
            retry: None,
        };
        if status == 200 {
            // The stream opens with retry: and a `subscribed` event whose
            // id is the starting cursor.
            let opening = sse.next_raw().await.expect("opening event");
            assert_eq!(opening.event.as_deref(), Some("subscribed"), "{opening:?}");
            assert_eq!(
                opening.json()["cursor"].as_str(),
                opening.id.as_deref(),
                "{opening:?}"
            );
            assert!(sse.retry.is_some(), "retry: sent first");
        }
        sse
    }

    /// The error body of a refused request.
    pub async fn error_body(mut self) -> serde_json::Value {
        let mut text = Vec::new();
        if let Some(mut body) = self.body.take() {
            while let Some(chunk) = body.next().await {
                text.extend_from_slice(&chunk.expect("body"));
            }
        }
        serde_json::from_slice(&text).expect("JSON error body")
    }

    /// The next event, including id-only ones; `None` when the stream ends.
    pub async fn next_raw(&mut self) -> Option<Event> {
        // A deadline for the event, not per chunk: heartbeats must not keep
        // a test waiting forever.
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(pos) = find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(block).expect("UTF-8 stream");
                let mut ev = Event::default();
                let mut any = false;
                for line in text.lines() {
                    if line.is_empty() || line.starts_with(':') {
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    any = true;
                    match field {
                        "id" => ev.id = Some(value.to_owned()),
                        "event" => ev.event = Some(value.to_owned()),
                        "data" => {
                            let d = ev.data.get_or_insert_with(String::new);
                            if !d.is_empty() {
                                d.push('\n');
                            }
                            d.push_str(value);
                        }
                        "retry" => self.retry = value.parse().ok(),
                        other => panic!("unexpected SSE field {other:?}"),
                    }
                }
                if let Some(id) = &ev.id {
                    self.last_id = Some(id.clone());
                }
                if any && (ev.id.is_some() || ev.data.is_some() || ev.event.is_some()) {
                    return Some(ev);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.as_mut()?.next())
                .await
                .expect("timed out waiting for an SSE event");
            match chunk {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next message event (skips id-only events); panics on other events.
    pub async fn next_message(&mut self) -> Event {
        loop {
            let ev = self
                .next_raw()
                .await
                .expect("stream ended while waiting for a message");
            if ev.data.is_none() && ev.event.is_none() {
                continue;
            }
            assert!(ev.event.is_none(), "unexpected event {ev:?}");
            return ev;
        }
    }

    /// The next `n` messages.
    pub async fn messages(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_message().await);
        }
        out
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `n` values of `{"n": …}` payloads, in order received.
pub fn ns(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.json()["data"]["n"].as_u64().expect("n"))
        .collect()
}

/// Asserts every partition's offsets strictly increase in `events`.
pub fn assert_partition_order(events: &[Event]) {
    let mut last: HashMap<i64, i64> = HashMap::new();
    for e in events {
        let v = e.json();
        let p = v["partition"].as_i64().unwrap();
        let o = v["offset"].as_i64().unwrap();
        if let Some(prev) = last.insert(p, o) {
            assert!(o > prev, "partition {p}: offset {o} after {prev}");
        }
    }
}

/// Prometheus text into `name{labels}` → value, checking every line parses.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            assert!(
                line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        out.insert(series.to_owned(), value);
    }
    out
}

/// `n` values of `{"n": …}` payloads of JSON envelopes (WebSocket, poll).
pub fn ns_json(messages: &[serde_json::Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["data"]["n"].as_u64().expect("n"))
        .collect()
}

/// Asserts every partition's offsets strictly increase in `messages`.
pub fn assert_partition_order_json(messages: &[serde_json::Value]) {
    let mut last: HashMap<i64, i64> = HashMap::new();
    for m in messages {
        let p = m["partition"].as_i64().unwrap();
        let o = m["offset"].as_i64().unwrap();
        if let Some(prev) = last.insert(p, o) {
            assert!(o > prev, "partition {p}: offset {o} after {prev}");
        }
    }
}

pub use tokio_tungstenite::tungstenite::Message as WsMessage;
pub use tokio_tungstenite::tungstenite::protocol::CloseFrame;

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client speaking Herald's JSON messages.
pub struct Ws {
    inner: WsStream,
}

impl Ws {
    /// Connects to `/ws?{query}`; panics unless the upgrade succeeds.
    pub async fn connect(addr: std::net::SocketAddr, query: &str) -> Ws {
        match Self::try_connect(addr, query).await {
            Ok(ws) => ws,
            Err((status, body)) => panic!("WebSocket refused: {status} {body}"),
        }
    }

    /// Connects, or returns the refusal's status and JSON body.
    pub async fn try_connect(
        addr: std::net::SocketAddr,
        query: &str,
    ) -> Result<Ws, (u16, serde_json::Value)> {
        let url = format!("ws://{addr}/ws?{query}");
        let connecting = tokio_tungstenite::connect_async(url);
        match tokio::time::timeout(TIMEOUT, connecting)
            .await
            .expect("WebSocket connect timed out")
        {
            Ok((inner, _)) => Ok(Ws { inner }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().clone().unwrap_or_default();
                Err((
                    response.status().as_u16(),
                    serde_json::from_slice(&body).expect("JSON error body"),
                ))
            }
            Err(e) => panic!("WebSocket connect: {e}"),
        }
    }

    pub async fn send(&mut self, message: WsMessage) {
        use futures_util::SinkExt;
        tokio::time::timeout(TIMEOUT, self.inner.send(message))
            .await
            .expect("WebSocket send timed out")
            .expect("WebSocket send");
    }

    pub async fn send_json(&mut self, value: serde_json::Value) {
        self.send(WsMessage::text(value.to_string())).await;
    }

    /// The next frame (pings included); `None` once the connection ended.
    pub async fn next_frame(&mut self) -> Option<WsMessage> {
        match tokio::time::timeout(TIMEOUT, self.inner.next())
            .await
            .expect("timed out waiting for a WebSocket frame")
        {
            Some(Ok(m)) => Some(m),
            Some(Err(_)) | None => None,
        }
    }

    /// The next JSON message (pings and pongs skipped, within one
    /// [`TIMEOUT`] for all of them); panics on a close.
    pub async fn next_json(&mut self) -> serde_json::Value {
        let next = async {
            loop {
                match self.next_frame().await {
                    Some(WsMessage::Text(t)) => {
                        return serde_json::from_str(&t).expect("a JSON text frame");
                    }
                    Some(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
                    other => panic!("expected a JSON message, got {other:?}"),
                }
            }
        };
        tokio::time::timeout(TIMEOUT, next)
            .await
            .expect("timed out waiting for a JSON message (pings only)")
    }

    /// The next `n` messages of type `message`; panics on anything else.
    pub async fn messages(&mut self, n: usize) -> Vec<serde_json::Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let m = self.next_json().await;
            assert_eq!(m["type"], "message", "unexpected {m}");
            out.push(m);
        }
        out
    }

    /// Subscribes and returns the `subscribed` cursor.
    pub async fn subscribe(&mut self, channel: &str, cursor: Option<&str>) -> String {
        let mut request = serde_json::json!({"type": "subscribe", "channel": channel});
        if let Some(c) = cursor {
            request["cursor"] = c.into();
        }
        self.send_json(request).await;
        let reply = self.next_json().await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        assert_eq!(reply["channel"], channel, "{reply}");
        reply["cursor"].as_str().expect("a cursor").to_owned()
    }

    /// Reads until the server's close frame; `None` if the connection ended
    /// without one.
    pub async fn close_frame(&mut self) -> Option<CloseFrame> {
        loop {
            match self.next_frame().await? {
                WsMessage::Close(frame) => return frame,
                _ => continue,
            }
        }
    }
}

/// `GET /poll?{query}`: the status and the JSON body.
pub async fn poll(addr: std::net::SocketAddr, query: &str) -> (u16, serde_json::Value) {
    let request = reqwest::get(format!("http://{addr}/poll?{query}"));
    let response = tokio::time::timeout(TIMEOUT, request)
        .await
        .expect("poll timed out")
        .expect("poll request");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("poll body");
    (
        status,
        serde_json::from_slice(&body).expect("a JSON poll body"),
    )
}

/// A `200` poll's messages and cursor.
pub async fn poll_ok(addr: std::net::SocketAddr, query: &str) -> (Vec<serde_json::Value>, String) {
    let (status, body) = poll(addr, query).await;
    assert_eq!(status, 200, "{query}: {body}");
    let messages = body["messages"].as_array().expect("messages").clone();
    let cursor = body["cursor"].as_str().expect("cursor").to_owned();
    (messages, cursor)
}

/// One metric's value, 0 when absent.
pub async fn metric(addr: std::net::SocketAddr, series: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    parse_metrics(&text).get(series).copied().unwrap_or(0.0)
}

/// Polls `/metrics` until `series` is exactly `value` (absent counts as 0);
/// fails the test after [`TIMEOUT`].
pub async fn wait_until_metric(addr: std::net::SocketAddr, series: &str, value: f64) {
    wait_until_metric_is(addr, series, &format!("= {value}"), |v| v == value).await;
}

/// Polls `/metrics` until `series` is at least `min`; fails the test after
/// [`TIMEOUT`].
pub async fn wait_until_metric_at_least(addr: std::net::SocketAddr, series: &str, min: f64) {
    wait_until_metric_is(addr, series, &format!(">= {min}"), |v| v >= min).await;
}

async fn wait_until_metric_is(
    addr: std::net::SocketAddr,
    series: &str,
    what: &str,
    holds: impl Fn(f64) -> bool,
) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let v = metric(addr, series).await;
        if holds(v) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {series} {what} (last {v})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `/readyz`'s status, 0 when nothing answers.
pub async fn readyz(addr: std::net::SocketAddr) -> u16 {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Polls `/readyz` until it answers `want`; fails the test after `within`.
pub async fn wait_readyz(addr: std::net::SocketAddr, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while readyz(addr).await != want {
        assert!(Instant::now() < deadline, "/readyz never answered {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts `messages` are exactly the records `produced` (`n` → partition
/// and offset) of `topic` on `channel`: each once, at its Kafka position,
/// each partition and each key in order, each with a cursor.
pub fn assert_exactly_produced(
    messages: &[serde_json::Value],
    produced: &HashMap<u64, (i32, i64)>,
    topic: &str,
    channel: &str,
) {
    let mut got = ns_json(messages);
    got.sort_unstable();
    let mut want: Vec<u64> = produced.keys().copied().collect();
    want.sort_unstable();
    assert_eq!(got, want, "every record exactly once");
    assert_partition_order_json(messages);
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for m in messages {
        let n = m["data"]["n"].as_u64().unwrap();
        assert_eq!(
            (
                m["partition"].as_i64().unwrap() as i32,
                m["offset"].as_i64().unwrap()
            ),
            produced[&n],
            "position of record {n}"
        );
        assert_eq!(m["topic"], topic);
        assert_eq!(m["channel"], channel);
        assert!(m["cursor"].as_str().unwrap().starts_with('h'), "{m}");
        per_key
            .entry(m["key"].as_str().unwrap().to_owned())
            .or_default()
            .push(n);
    }
    // Per key (one partition each), production order is kept.
    for (key, ns) in per_key {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order: {ns:?}"
        );
    }
}

/// `herald dev` on `addr` once ready (its `/readyz` answers 200): its
/// `/dev/info` (brokers, topics, the publish key).
pub async fn dev_info(addr: std::net::SocketAddr) -> serde_json::Value {
    wait_readyz(addr, 200, TIMEOUT).await;
    let body = reqwest::get(format!("http://{addr}/dev/info"))
        .await
        .expect("/dev/info")
        .bytes()
        .await
        .expect("/dev/info body");
    serde_json::from_slice(&body).expect("/dev/info is JSON")
}

/// An HS256 JWT over `claims` with `secret`, made by jsonwebtoken (not
/// Herald's own code).
pub fn hs256(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Seconds since the epoch, for token claims.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A CA and a server certificate for `herald.test` it signed, as PEM files
/// in `dir`: (ca.pem, cert.pem, key.pem).
pub fn test_certs(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("Herald test CA {name}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["herald.test".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}
