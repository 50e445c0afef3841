//! `POST /publish`, black-box against the real broker: records published
//! through Herald reach SSE, WebSocket and poll subscribers exactly once,
//! resume from a cursor like records produced with a Kafka client (on this
//! node and a fresh one), land on the key the channel's route needs, and
//! every refusal has its status and code.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::kafka_proxy::{BROKERS_FORGOTTEN, KafkaProxy};
use common::*;
use herald::config::{Config, PublishConfig};
use herald::router::RouteSpec;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{Value, json};

const KEY: &str = "publish-test-key-0123456789";
/// A second configured key: both work while clients move from one to the
/// other.
const NEXT_KEY: &str = "publish-next-key-abcdefghij";

fn enable_publish(c: &mut Config) {
    c.publish = Some(PublishConfig {
        api_keys: vec![KEY.into(), NEXT_KEY.into()],
        ..PublishConfig::default()
    });
}

/// One answer of `/publish`.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// `method /publish` with an `Authorization` header value (if any).
async fn request(
    addr: std::net::SocketAddr,
    method: reqwest::Method,
    authorization: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> Answer {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{addr}/publish"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let response = tokio::time::timeout(TIMEOUT, req.send())
        .await
        .expect("publish timed out")
        .expect("publish request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("publish body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("a JSON answer ({e}): {}", String::from_utf8_lossy(&bytes)));
    Answer {
        status,
        headers,
        body,
    }
}

/// `POST /publish` with [`KEY`].
async fn publish_raw(addr: std::net::SocketAddr, body: impl Into<reqwest::Body>) -> Answer {
    request(
        addr,
        reqwest::Method::POST,
        Some(&format!("Bearer {KEY}")),
        body,
    )
    .await
}

/// Publishes `data` to `channel` (with `key`); asserts the `200` names
/// `topic` and returns the record's `(partition, offset)`.
async fn publish_ok(
    addr: std::net::SocketAddr,
    channel: &str,
    data: Value,
    key: Option<&str>,
    topic: &str,
) -> (i32, i64) {
    let mut body = json!({"channel": channel, "data": data});
    if let Some(k) = key {
        body["key"] = k.into();
    }
    let answer = publish_raw(addr, body.to_string()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let fields: Vec<&String> = answer.body.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["offset", "partition", "topic"], "{}", answer.body);
    assert_eq!(answer.body["topic"], topic);
    (
        answer.body["partition"].as_i64().unwrap() as i32,
        answer.body["offset"].as_i64().unwrap(),
    )
}

/// Publishes `{"n": n}` to `channel` for each `n`, keyed `k{n % 4}` so the
/// records spread over the partitions; returns `n` → position.
async fn publish_ns(
    addr: std::net::SocketAddr,
    channel: &str,
    topic: &str,
    ns: std::ops::Range<u64>,
) -> HashMap<u64, (i32, i64)> {
    let mut positions = HashMap::new();
    for n in ns {
        let key = format!("k{}", n % 4);
        let at = publish_ok(addr, channel, json!({"n": n}), Some(&key), topic).await;
        positions.insert(n, at);
    }
    positions
}

/// Polls from `cursor` until `n` messages came; returns them and the
/// cursor after them.
async fn poll_n(
    addr: std::net::SocketAddr,
    channel: &str,
    cursor: &str,
    n: usize,
) -> (Vec<Value>, String) {
    let mut got = Vec::new();
    let mut at = cursor.to_owned();
    while got.len() < n {
        let (messages, next) = poll_ok(
            addr,
            &format!(
                "channel={channel}&cursor={at}&wait=10&limit={}",
                n - got.len()
            ),
        )
        .await;
        assert!(!messages.is_empty(), "the long poll returned nothing");
        got.extend(messages);
        at = next;
    }
    (got, at)
}

fn sse_json(events: &[Event]) -> Vec<Value> {
    events.iter().map(Event::json).collect()
}

/// Records Kafka holds in `topic` (all partitions).
async fn records_in(topic: &str, partitions: i32) -> i64 {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .expect("consumer");
        (0..partitions)
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .expect("watermarks");
                high - low
            })
            .sum()
    })
    .await
    .unwrap()
}

/// The record at `topic/partition@offset`, read with a Kafka client:
/// `(key, payload, headers)`.
async fn read_back(
    topic: &str,
    partition: i32,
    offset: i64,
) -> (Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>) {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", "herald-publish-test")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut at = TopicPartitionList::new();
        at.add_partition_offset(&topic, partition, Offset::Offset(offset))
            .unwrap();
        consumer.assign(&at).expect("assign");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "the record never came back");
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = message.expect("consume");
            assert_eq!(
                (m.topic(), m.partition(), m.offset()),
                (&*topic, partition, offset)
            );
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            return (
                m.key().map(<[u8]>::to_vec),
                m.payload().expect("a payload").to_vec(),
                headers,
            );
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_records_reach_every_transport_exactly_once() {
    let (topic, herald) = herald_with_topic_and("pub-all", 3, "news", enable_publish).await;
    let addr = herald.local_addr();
    let mut sse = Sse::connect(addr, "channel=news", None).await;
    let mut ws = Ws::connect(addr, "channel=news").await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    let (_, poll_start) = poll_ok(addr, "channel=news").await;

    let produced = publish_ns(addr, "news", &topic, 0..12).await;
    assert_exactly_produced(
        &sse_json(&sse.messages(12).await),
        &produced,
        &topic,
        "news",
    );
    assert_exactly_produced(&ws.messages(12).await, &produced, &topic, "news");
    let (polled, poll_cursor) = poll_n(addr, "news", &poll_start, 12).await;
    assert_exactly_produced(&polled, &produced, &topic, "news");

    // None twice: the next thing each one gets is the next record.
    let last = publish_ns(addr, "news", &topic, 12..13).await;
    assert_exactly_produced(&[sse.next_message().await.json()], &last, &topic, "news");
    assert_exactly_produced(&ws.messages(1).await, &last, &topic, "news");
    let (polled, _) = poll_ok(addr, &format!("channel=news&cursor={poll_cursor}&wait=10")).await;
    assert_exactly_produced(&polled, &last, &topic, "news");
    assert_eq!(
        metric(
            addr,
            &format!("herald_published_records_total{{topic=\"{topic}\"}}")
        )
        .await,
        13.0
    );

    // Any JSON value arrives as the JSON it was sent as; without `key` the
    // record has none.
    for data in [
        json!("a string"),
        json!([1, "two", {"three": 3}]),
        json!(null),
        json!(12.5),
        json!({"nested": {"list": [true, false]}, "text": "line\nbreak"}),
    ] {
        publish_ok(addr, "news", data.clone(), None, &topic).await;
        let m = sse.next_message().await.json();
        assert_eq!(m["data"], data);
        assert_eq!(m["key"], Value::Null);
        assert!(m.get("encoding").is_none(), "{m}");
    }
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_resumes_published_records_like_produced_ones_on_any_node() {
    let (topic, herald) = herald_with_topic_and("pub-resume", 3, "news", enable_publish).await;
    let addr = herald.local_addr();
    let producer = Producer::new();
    let mut sse = Sse::connect(addr, "channel=news", None).await;
    let mut ws = Ws::connect(addr, "").await;
    ws.subscribe("news", None).await;
    let (_, poll_start) = poll_ok(addr, "channel=news").await;

    let seen = publish_ns(addr, "news", &topic, 0..6).await;
    assert_exactly_produced(&sse_json(&sse.messages(6).await), &seen, &topic, "news");
    let on_ws = ws.messages(6).await;
    assert_exactly_produced(&on_ws, &seen, &topic, "news");
    let (polled, poll_cursor) = poll_n(addr, "news", &poll_start, 6).await;
    assert_exactly_produced(&polled, &seen, &topic, "news");
    let sse_cursor = sse.last_id.clone().unwrap();
    let ws_cursor = on_ws.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    drop(sse);
    drop(ws);

    // While they are away: published and produced records, interleaved.
    let mut missed = publish_ns(addr, "news", &topic, 6..10).await;
    // Keys of their own: the test producer's partitioner is librdkafka's
    // default, not the one Herald's producer uses (see below).
    for n in 10..13 {
        missed.insert(
            n,
            producer.send_n(&topic, &format!("kafka{}", n % 2), n).await,
        );
    }
    missed.extend(publish_ns(addr, "news", &topic, 13..16).await);

    let mut sse = Sse::connect(addr, "channel=news", Some(&sse_cursor)).await;
    assert_exactly_produced(&sse_json(&sse.messages(10).await), &missed, &topic, "news");
    let mut ws = Ws::connect(addr, "").await;
    ws.subscribe("news", Some(&ws_cursor)).await;
    assert_exactly_produced(&ws.messages(10).await, &missed, &topic, "news");
    let (polled, _) = poll_n(addr, "news", &poll_cursor, 10).await;
    assert_exactly_produced(&polled, &missed, &topic, "news");
    let next = publish_ns(addr, "news", &topic, 16..17).await;
    assert_exactly_produced(&[sse.next_message().await.json()], &next, &topic, "news");
    assert_exactly_produced(&ws.messages(1).await, &next, &topic, "news");

    // A node started afterwards, with nothing in memory: the same cursor
    // reads the same records back from Kafka.
    let mut cfg = config(&[(&topic, "news")]);
    cfg.kafka.warm_history = 0;
    let fresh = start(cfg, &[(&topic, 3)]).await;
    missed.extend(next);
    let mut sse = Sse::connect(fresh.local_addr(), "channel=news", Some(&sse_cursor)).await;
    assert_exactly_produced(&sse_json(&sse.messages(11).await), &missed, &topic, "news");
    fresh.stop().await;
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_channel_publishes_with_its_key() {
    let news = unique_topic("pub-news");
    let users = unique_topic("pub-users");
    create_topic(&news, 2).await;
    create_topic(&users, 3).await;
    let mut cfg = config(&[(&news, "news"), (&users, "user.{key}")]);
    enable_publish(&mut cfg);
    let herald = start(cfg, &[(&news, 2), (&users, 3)]).await;
    let addr = herald.local_addr();
    let mut sse = Sse::connect(addr, "channel=user.k7&channel=user.k8", None).await;

    // Sent with spaces: that text, byte for byte, is the record's value.
    let data = r#"{"n": 1, "text": "hello k7"}"#;
    let answer = publish_raw(addr, format!(r#"{{"channel": "user.k7", "data": {data}}}"#)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["topic"], users.as_str());
    let partition = answer.body["partition"].as_i64().unwrap() as i32;
    let offset = answer.body["offset"].as_i64().unwrap();
    let (key, payload, headers) = read_back(&users, partition, offset).await;
    assert_eq!(key.as_deref(), Some(&b"k7"[..]));
    assert_eq!(String::from_utf8(payload).unwrap(), data);
    assert!(headers.is_empty(), "{headers:?}");

    let m = sse.next_message().await.json();
    assert_eq!(
        (
            &m["channel"],
            &m["key"],
            &m["topic"],
            &m["partition"],
            &m["offset"]
        ),
        (
            &json!("user.k7"),
            &json!("k7"),
            &json!(users),
            &json!(partition),
            &json!(offset)
        )
    );
    assert_eq!(m["data"], json!({"n": 1, "text": "hello k7"}));

    // A key that agrees with the channel's is fine; one that does not is
    // refused naming both, and nothing is produced.
    let (p, o) = publish_ok(addr, "user.k8", json!({"n": 2}), Some("k8"), &users).await;
    let m = sse.next_message().await.json();
    assert_eq!(
        (&m["channel"], &m["key"]),
        (&json!("user.k8"), &json!("k8"))
    );
    assert_eq!(
        (m["partition"].as_i64(), m["offset"].as_i64()),
        (Some(p as i64), Some(o))
    );
    let before = records_in(&users, 3).await;
    let body = json!({"channel": "user.k7", "data": 3, "key": "k8"}).to_string();
    let refused = publish_raw(addr, body).await;
    assert_eq!(
        (refused.status, refused.code()),
        (400, "key_mismatch"),
        "{}",
        refused.body
    );
    assert!(
        refused.message().contains("\"k7\"") && refused.message().contains("\"k8\""),
        "{}",
        refused.message()
    );
    assert_eq!(records_in(&users, 3).await, before);

    // Herald partitions keys as the Java client does (murmur2), so a key
    // lands on the same partition whoever produced it: here against
    // librdkafka's implementation of that partitioner.
    let java_like: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    for k in ["a", "k7", "user-42", "ключ", "0123456789"] {
        let record = rdkafka::producer::FutureRecord::to(&users)
            .key(k)
            .payload("{}");
        let produced = java_like
            .send(record, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        let (published, _) = publish_ok(addr, &format!("user.{k}"), json!({}), None, &users).await;
        assert_eq!(published, produced.partition, "key {k:?}");
    }
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_api_key_is_401_and_produces_nothing() {
    let (topic, herald) = herald_with_topic_and("pub-auth", 1, "news", enable_publish).await;
    let addr = herald.local_addr();
    let body = json!({"channel": "news", "data": {"n": 1}}).to_string();
    let wrong = format!("Bearer {}", KEY.replace('0', "1"));
    let longer = format!("Bearer {KEY}x");
    for authorization in [
        None,
        Some(""),
        Some("Bearer"),
        Some("Bearer "),
        Some(wrong.as_str()),
        Some(longer.as_str()),
        Some(&format!("Basic {KEY}")[..]),
        Some(KEY),
    ] {
        let answer = request(addr, reqwest::Method::POST, authorization, body.clone()).await;
        assert_eq!(
            (answer.status, answer.code()),
            (401, "invalid_api_key"),
            "{authorization:?}: {}",
            answer.body
        );
        assert!(
            answer.header("www-authenticate").starts_with("Bearer"),
            "{authorization:?}: {:?}",
            answer.headers
        );
        assert!(!answer.message().contains(KEY), "{}", answer.message());
    }
    assert_eq!(
        records_in(&topic, 1).await,
        0,
        "a refused publish produced a record"
    );

    // Either configured key works, with the scheme in any case.
    let mut sse = Sse::connect(addr, "channel=news", None).await;
    for (n, authorization) in [
        (1, format!("Bearer {NEXT_KEY}")),
        (2, format!("bearer  {KEY}")),
    ] {
        let body = json!({"channel": "news", "data": {"n": n}}).to_string();
        let answer = request(addr, reqwest::Method::POST, Some(&authorization), body).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    assert_eq!(ns(&sse.messages(2).await), [1, 2]);
    assert_eq!(records_in(&topic, 1).await, 2);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_no_route_can_be_inverted_to_are_400_unpublishable() {
    let news = unique_topic("pub-inv");
    create_topic(&news, 1).await;
    let mut cfg = config(&[
        (&news, "news"),
        (&news, "u.{json./user}"),
        (&news, "p{partition}.x"),
    ]);
    cfg.routes.push(RouteSpec {
        topic: None,
        topic_regex: Some(format!("^{news}-events\\.")),
        channel: "{topic}".into(),
    });
    enable_publish(&mut cfg);
    let herald = start(cfg, &[(&news, 1)]).await;
    let addr = herald.local_addr();
    for (channel, why) in [
        (format!("{news}-events.clicks"), "topic_regex"),
        ("u.42".to_owned(), "{json./…}"),
        ("p0.x".to_owned(), "{partition}"),
        ("nothing.routes.this".to_owned(), "no route produces"),
    ] {
        let body = json!({"channel": channel, "data": {}}).to_string();
        let answer = publish_raw(addr, body).await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, "unpublishable_channel"),
            "{channel}: {}",
            answer.body
        );
        assert!(
            answer.message().contains(why) && answer.message().contains(&channel),
            "{channel}: {}",
            answer.message()
        );
    }
    for channel in ["", "bad\u{1}name"] {
        let answer = publish_raw(addr, json!({"channel": channel, "data": 1}).to_string()).await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, "invalid_channel"),
            "{}",
            answer.body
        );
    }
    assert_eq!(records_in(&news, 1).await, 0);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413_and_malformed_ones_400() {
    let (topic, herald) = herald_with_topic_and("pub-body", 1, "news", enable_publish).await;
    let addr = herald.local_addr();
    let limit = 64 * 1024;
    let body_of = |len: usize| {
        let frame = r#"{"channel":"news","data":""}"#;
        format!(
            r#"{{"channel":"news","data":"{}"}}"#,
            "x".repeat(len - frame.len())
        )
    };
    // Declared too long: refused without reading it.
    let answer = publish_raw(addr, body_of(limit + 1)).await;
    assert_eq!(
        (answer.status, answer.code()),
        (413, "body_too_large"),
        "{}",
        answer.body
    );
    assert!(answer.message().contains("65536"), "{}", answer.message());
    // Chunked, no length: refused once the limit is passed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body_of(limit + 1000)
        .into_bytes()
        .chunks(8192)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let stream = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let answer = publish_raw(addr, stream).await;
    assert_eq!(
        (answer.status, answer.code()),
        (413, "body_too_large"),
        "{}",
        answer.body
    );
    // Exactly at the limit: published.
    let answer = publish_raw(addr, body_of(limit)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    for (body, names) in [
        ("", "empty"),
        (" \n", "empty"),
        ("not json", "JSON object"),
        ("[1, 2]", "JSON object"),
        (r#""news""#, "JSON object"),
        (r#"{"channel": "news"}"#, "missing field `data`"),
        (r#"{"data": 1}"#, "missing field `channel`"),
        (r#"{"channel": 5, "data": 1}"#, "`channel` must be a string"),
        (
            r#"{"channel": "news", "data": 1, "key": 7}"#,
            "`key` must be a string",
        ),
        (
            r#"{"channel": "news", "data": 1, "extra": 2}"#,
            "unknown field `extra`",
        ),
        (
            r#"{"channel": "news", "data": 1, "channel": "x"}"#,
            "duplicate field `channel`",
        ),
        (r#"{"channel": "news", "data": 1} trailing"#, "trailing"),
        (r#"{"channel": "news", "data": {"open": 1}"#, "EOF"),
    ] {
        let answer = publish_raw(addr, body).await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, "invalid_body"),
            "{body:?}: {}",
            answer.body
        );
        assert!(
            answer.message().contains(names),
            "{body:?}: {}",
            answer.message()
        );
    }
    assert_eq!(records_in(&topic, 1).await, 1, "only the body at the limit");
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_404_when_not_configured_and_405_for_other_methods() {
    let (_topic, plain) = herald_with_topic("pub-off", 1, "news").await;
    for method in [reqwest::Method::POST, reqwest::Method::GET] {
        let answer = request(
            plain.local_addr(),
            method,
            Some(&format!("Bearer {KEY}")),
            "{}",
        )
        .await;
        assert_eq!(
            (answer.status, answer.code()),
            (404, "not_found"),
            "{}",
            answer.body
        );
        assert!(
            answer.message().contains("not enabled"),
            "{}",
            answer.message()
        );
    }
    plain.stop().await;

    let (_topic, herald) = herald_with_topic_and("pub-methods", 1, "news", enable_publish).await;
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::OPTIONS,
    ] {
        let answer = request(herald.local_addr(), method.clone(), None, "").await;
        assert_eq!(
            (answer.status, answer.code()),
            (405, "method_not_allowed"),
            "{method}: {}",
            answer.body
        );
        assert_eq!(answer.header("allow"), "POST", "{method}");
    }
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_not_acknowledging_in_time_is_503_kafka_unavailable() {
    // A route to a topic that does not exist (the broker creates none by
    // itself): the record can never be acknowledged.
    let news = unique_topic("pub-slow");
    let missing = unique_topic("pub-missing");
    create_topic(&news, 1).await;
    let mut cfg = config(&[(&news, "news"), (&missing, "gone")]);
    enable_publish(&mut cfg);
    cfg.publish.as_mut().unwrap().timeout = Duration::from_secs(1);
    let herald = start(cfg, &[(&news, 1)]).await;
    let started = Instant::now();
    let answer = publish_raw(herald.local_addr(), r#"{"channel":"gone","data":1}"#).await;
    let took = started.elapsed();
    assert_eq!(
        (answer.status, answer.code()),
        (503, "kafka_unavailable"),
        "{}",
        answer.body
    );
    assert!(
        answer.message().contains("publish.timeout"),
        "{}",
        answer.message()
    );
    assert_eq!(answer.header("retry-after"), "1");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
    herald.stop().await;
}

/// The publish producer after librdkafka dropped every broker it knew (the
/// answer a broker in controlled shutdown can give, replayed by a proxy;
/// tests/outage.rs has the ingest's side): Herald creates a new producer,
/// and publishing goes on. A publish caught in the moment it takes is
/// refused `503` ("may or may not have been written"), never answered `200`
/// for a record Kafka does not hold; every `200` reaches subscribers
/// exactly once, a refused record at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_goes_on_after_a_metadata_answer_that_lists_no_broker() {
    let proxy = KafkaProxy::start(&bootstrap()).await;
    let topic = unique_topic("pub-nobroker");
    create_topic(&topic, 2).await;
    let mut cfg = proxy.config(&[(&topic, "nb")]);
    // The producer asks for its topics' metadata this often (librdkafka's
    // default: every 5 minutes).
    cfg.kafka
        .options
        .insert("topic.metadata.refresh.interval.ms".into(), "200".into());
    enable_publish(&mut cfg);
    cfg.publish.as_mut().unwrap().timeout = Duration::from_secs(1);
    let herald = start(cfg, &[(&topic, 2)]).await;
    let addr = herald.local_addr();
    let mut sse = Sse::connect(addr, "channel=nb", None).await;
    let mut ok = publish_ns(addr, "nb", &topic, 0..5).await;

    proxy.answer_metadata_with_no_broker("herald-publish").await;
    let mut refused = Vec::new();
    let mut n = 5;
    while ok.len() < 10 {
        let body = json!({"channel": "nb", "data": {"n": n}, "key": format!("k{}", n % 4)});
        let answer = publish_raw(addr, body.to_string()).await;
        if answer.status == 200 {
            let at = (
                answer.body["partition"].as_i64().unwrap() as i32,
                answer.body["offset"].as_i64().unwrap(),
            );
            ok.insert(n, at);
        } else {
            assert_eq!(
                (answer.status, answer.code()),
                (503, "kafka_unavailable"),
                "{}",
                answer.body
            );
            refused.push(n);
            assert!(refused.len() <= 2, "refused {refused:?}: {}", answer.body);
        }
        n += 1;
    }
    // The last record published is the last one received: what came
    // before it is everything that will.
    let mut events = Vec::new();
    while ns(&events).last() != Some(&(n - 1)) {
        events.push(sse.next_message().await);
    }
    assert_partition_order(&events);
    let got = ns(&events);
    let mut unique = got.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "nothing twice: {got:?}");
    for n in ok.keys() {
        assert!(
            got.contains(n),
            "{n} was published (200) and not received: {got:?}"
        );
    }
    for n in &got {
        assert!(
            ok.contains_key(n) || refused.contains(n),
            "{n} was never published: {got:?}"
        );
    }
    assert_eq!(
        metric(addr, BROKERS_FORGOTTEN).await,
        1.0,
        "one new producer"
    );
    herald.stop().await;
}

/// `herald dev`: the curl line its banner prints, run as pasted, publishes
/// a record a subscriber receives. (The documented examples are run by
/// tests/docs.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_dev_publishes_with_the_printed_key() {
    use tokio::io::AsyncBufReadExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut dev = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["dev", "--listen", &addr.to_string(), "--ticker", "0s"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start herald dev");
    let mut lines = tokio::io::BufReader::new(dev.stdout.take().unwrap()).lines();
    let curl_line = tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("banner") {
            if line.contains("/publish") && line.contains("\"channel\":\"news\"") {
                return line.trim().to_owned();
            }
        }
        panic!("the banner has no curl line for /publish");
    })
    .await
    .expect("the banner");
    let info = dev_info(addr).await;
    let key = info["publish"]["api_key"]
        .as_str()
        .expect("the key in /dev/info");
    assert!(curl_line.contains(key), "{curl_line}");

    let mut sse = Sse::connect(addr, "channel=news&channel=user.k7", None).await;
    let run = |script: String| async move {
        let out = tokio::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .await
            .expect("sh");
        assert!(out.status.success(), "{script}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let printed = run(curl_line).await;
    let answer: Value = serde_json::from_str(&printed).expect("a JSON answer");
    assert_eq!(answer["topic"], "news", "{printed}");
    let m = sse.next_message().await.json();
    assert_eq!(
        (&m["channel"], &m["data"]),
        (&json!("news"), &json!({"hello": "world"}))
    );
    assert_eq!(
        (&m["partition"], &m["offset"]),
        (&answer["partition"], &answer["offset"])
    );

    dev.kill().await.ok();
}
