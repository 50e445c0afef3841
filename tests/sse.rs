//! SSE end to end against a real Kafka broker: exact delivery, exact resume,
//! per-key channels, payload encodings and refused requests.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use herald::hub::cursor::Cursor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_over_three_partitions_arrive_exactly_once_in_order() {
    let (topic, herald) = herald_with_topic("exact", 3, "all").await;
    let mut sse = Sse::connect(herald.local_addr(), "channel=all", None).await;

    let producer = Producer::new();
    const N: u64 = 300;
    let produced: HashMap<u64, (i32, i64)> = (0..N)
        .zip(producer.send_keyed(&topic, 0..N, 10).await)
        .collect();
    let events = sse.messages(N as usize).await;
    let messages: Vec<serde_json::Value> = events.iter().map(Event::json).collect();
    assert_exactly_produced(&messages, &produced, &topic, "all");
    for (e, m) in events.iter().zip(&messages) {
        assert_eq!(
            e.id.as_deref(),
            m["cursor"].as_str(),
            "id: is the envelope's cursor"
        );
    }
    // Nothing else is pending: the next message is the next record.
    producer.send_n(&topic, "k0", 9999).await;
    assert_eq!(ns(&[sse.next_message().await]), [9999]);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_last_event_id_gets_exactly_the_rest() {
    let (topic, herald) = herald_with_topic("resume", 3, "feed").await;
    let addr = herald.local_addr();
    let producer = Producer::new();

    let mut first = Sse::connect(addr, "channel=feed", None).await;
    producer.send_keyed(&topic, 0..100, 7).await;
    let seen = first.messages(40).await;
    let last_id = first.last_id.clone().expect("an id");
    drop(first);
    producer.send_keyed(&topic, 100..160, 7).await;

    let mut second = Sse::connect(addr, "channel=feed", Some(&last_id)).await;
    let rest = second.messages(120).await;
    let mut all: Vec<u64> = ns(&seen).into_iter().chain(ns(&rest)).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..160).collect::<Vec<_>>(),
        "none missing, none twice"
    );
    assert_partition_order(&seen.iter().chain(&rest).cloned().collect::<Vec<_>>());
    producer.send_n(&topic, "k0", 9999).await;
    assert_eq!(ns(&[second.next_message().await]), [9999]);

    // `cursor=` resumes the same way, and the header wins over the query.
    let query = format!("channel=feed&cursor={last_id}");
    let mut by_query = Sse::connect(addr, &query, None).await;
    let again = by_query.messages(121).await;
    assert_eq!(
        ns(&again),
        ns(&rest).into_iter().chain([9999]).collect::<Vec<_>>()
    );
    let mut header_wins = Sse::connect(addr, "channel=feed&cursor=hAAAA", Some(&last_id)).await;
    assert_eq!(ns(&header_wins.messages(121).await), ns(&again));
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_saw_nothing_still_resumes_from_its_opening_cursor() {
    let (topic, herald) = herald_with_topic("quiet", 3, "q").await;
    let addr = herald.local_addr();
    let first = Sse::connect(addr, "channel=q", None).await;
    let opening = first.last_id.clone().expect("opening id");
    // The opening cursor names every partition, each with a concrete offset.
    assert_eq!(
        Cursor::decode(&opening).unwrap().to_string(),
        format!("{topic}/0@0,{topic}/1@0,{topic}/2@0")
    );
    drop(first);
    let producer = Producer::new();
    for n in 0..10 {
        producer.send_n(&topic, &format!("k{n}"), n).await;
    }
    let mut back = Sse::connect(addr, "channel=q", Some(&opening)).await;
    let mut got = ns(&back.messages(10).await);
    got.sort_unstable();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_channel_receives_only_its_key() {
    let (topic, herald) = herald_with_topic("users", 3, "user.{key}").await;
    let mut k7 = Sse::connect(herald.local_addr(), "channel=user.k7", None).await;
    let producer = Producer::new();
    producer.send_keyed(&topic, 0..200, 10).await;
    let events = k7.messages(20).await;
    assert_eq!(
        ns(&events),
        (0..200).filter(|n| n % 10 == 7).collect::<Vec<_>>()
    );
    for e in &events {
        let v = e.json();
        assert_eq!(v["key"], "k7");
        assert_eq!(v["channel"], "user.k7");
    }
    producer.send_n(&topic, "k7", 9999).await;
    assert_eq!(ns(&[k7.next_message().await]), [9999]);
    // The cursor of a per-key stream still names all three partitions.
    let cursor = Cursor::decode(k7.last_id.as_deref().unwrap()).unwrap();
    assert_eq!(cursor.iter().count(), 3);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_come_out_as_the_contract_says() {
    let (topic, herald) = herald_with_topic("payloads", 1, "p").await;
    let mut sse = Sse::connect(herald.local_addr(), "channel=p", None).await;
    let producer = Producer::new();
    let ts = 1_700_000_000_123;
    let json = b"{\"user\": {\"id\": 42},\n \"tags\": [\"a\", \"b\"]}";
    let text = "plain text with \"quotes\" and ünïcode".as_bytes();
    let binary: &[u8] = &[0xff, 0xfe, 0x00, 0x80, 0x41];
    producer
        .send(&topic, Some(0), Some(b"j"), Some(json), Some(ts))
        .await;
    producer
        .send(&topic, Some(0), None, Some(text), Some(ts + 1))
        .await;
    producer
        .send(&topic, Some(0), Some(b"b"), Some(binary), Some(ts + 2))
        .await;
    producer
        .send(&topic, Some(0), Some(b"t"), None, Some(ts + 3))
        .await;
    let events = sse.messages(4).await;
    let v: Vec<serde_json::Value> = events.iter().map(Event::json).collect();
    let without_cursor = |mut v: serde_json::Value| {
        assert!(v["cursor"].as_str().is_some_and(|c| c.starts_with('h')));
        v.as_object_mut().unwrap().remove("cursor");
        v
    };
    assert_eq!(
        without_cursor(v[0].clone()),
        serde_json::json!({"channel": "p", "topic": topic, "partition": 0, "offset": 0,
            "ts": ts, "key": "j", "data": {"user": {"id": 42}, "tags": ["a", "b"]}})
    );
    assert_eq!(
        without_cursor(v[1].clone()),
        serde_json::json!({"channel": "p", "topic": topic, "partition": 0, "offset": 1,
            "ts": ts + 1, "key": null, "data": "plain text with \"quotes\" and ünïcode"})
    );
    assert_eq!(
        without_cursor(v[2].clone()),
        serde_json::json!({"channel": "p", "topic": topic, "partition": 0, "offset": 2,
            "ts": ts + 2, "key": "b", "data": "//4AgEE=", "encoding": "base64"})
    );
    assert_eq!(
        without_cursor(v[3].clone()),
        serde_json::json!({"channel": "p", "topic": topic, "partition": 0, "offset": 3,
            "ts": ts + 3, "key": "t", "data": null})
    );
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400_naming_the_problem() {
    let (topic, herald) = herald_with_topic("bad", 3, "b").await;
    let addr = herald.local_addr();

    let mut other_topic = Cursor::new();
    other_topic.set("not-a-feed", 0, 5);
    let mut bad_partition = Cursor::new();
    bad_partition.set(&topic, 7, 0);
    let cases: Vec<(String, &str, String)> = vec![
        (
            "channel=b&cursor=garbage".into(),
            "invalid_cursor",
            "format marker".into(),
        ),
        (
            "channel=b&cursor=h%21%21".into(),
            "invalid_cursor",
            "base64url".into(),
        ),
        (
            format!("channel=b&cursor={}", other_topic.encode()),
            "invalid_cursor",
            "\"not-a-feed\"".into(),
        ),
        (
            format!("channel=b&cursor={}", bad_partition.encode()),
            "invalid_cursor",
            "partition 7".into(),
        ),
        ("".into(), "missing_channel", "channel".into()),
        ("channel=nope".into(), "unknown_channel", "\"nope\"".into()),
        (
            "channel=b&chanel=x".into(),
            "unknown_parameter",
            "\"chanel\"".into(),
        ),
        (
            "channel=b&since=yesterday".into(),
            "invalid_since",
            "yesterday".into(),
        ),
        (
            "channel=b&since=5&cursor=hAA".into(),
            "conflicting_parameters",
            "not both".into(),
        ),
    ];
    for (query, code, needle) in cases {
        let sse = Sse::connect(addr, &query, None).await;
        assert_eq!(sse.status, 400, "{query}");
        let body = sse.error_body().await;
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&needle),
            "{query}: {message:?} should mention {needle}"
        );
    }
    // A malformed Last-Event-ID is refused too, not ignored.
    let sse = Sse::connect(addr, "channel=b", Some("h@@")).await;
    assert_eq!(sse.status, 400);

    // A refused request leaves the server healthy and streaming.
    let mut ok = Sse::connect(addr, "channel=b", None).await;
    Producer::new().send_n(&topic, "k", 1).await;
    assert_eq!(ns(&[ok.next_message().await]), [1]);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_channels_share_one_stream_and_one_cursor() {
    let (news, users, herald) = herald_with_news_and_users("").await;
    let addr = herald.local_addr();
    let producer = Producer::new();
    let mut sse = Sse::connect(addr, "channel=news&channel=user.k1", None).await;
    for n in 0..30 {
        if n % 2 == 0 {
            producer.send_n(&news, "x", n).await;
        } else {
            producer.send_n(&users, &format!("k{}", n % 3), n).await;
        }
    }
    let expected: Vec<u64> = (0..30).filter(|n| n % 2 == 0 || n % 3 == 1).collect();
    let first = sse.messages(10).await;
    let cursor = sse.last_id.clone().unwrap();
    assert_eq!(
        Cursor::decode(&cursor).unwrap().iter().count(),
        5,
        "2 + 3 partitions"
    );
    drop(sse);
    let mut back = Sse::connect(addr, "channel=news&channel=user.k1", Some(&cursor)).await;
    let rest = back.messages(expected.len() - 10).await;
    let mut got: Vec<u64> = ns(&first).into_iter().chain(ns(&rest)).collect();
    got.sort_unstable();
    assert_eq!(got, expected);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_streams_to_reconnect() {
    let (_topic, herald) = herald_with_topic("shutdown", 1, "s").await;
    let mut sse = Sse::connect(herald.local_addr(), "channel=s", None).await;
    let stop = tokio::spawn(herald.stop());
    let ev = sse.next_raw().await.expect("a reconnect event");
    assert_eq!(ev.event.as_deref(), Some("reconnect"));
    assert_eq!(ev.json()["reason"], "shutdown");
    assert!(sse.next_raw().await.is_none(), "stream ends");
    stop.await.unwrap();
}

/// A connection whose first request is an event stream is served without
/// hyper; one that asked for something else first keeps hyper's. Both
/// stream the same thing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_a_kept_alive_connection_is_the_same_stream() {
    let (topic, herald) = herald_with_topic("kept", 1, "k").await;
    let addr = herald.local_addr();
    let client = reqwest::Client::new();
    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    health.bytes().await.unwrap();
    let mut kept = Sse::connect_with(&client, addr, "channel=k", None).await;
    let mut fresh = Sse::connect(addr, "channel=k", None).await;
    let producer = Producer::new();
    for n in 0..5 {
        producer.send_n(&topic, "k", n).await;
    }
    let expected: Vec<u64> = (0..5).collect();
    assert_eq!(ns(&kept.messages(5).await), expected);
    assert_eq!(ns(&fresh.messages(5).await), expected);
    herald.stop().await;
}

/// What the stream's own request reader refuses, it refuses with a status
/// and a JSON error, like hyper's path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_huge_stream_request_is_refused_with_a_reason() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_topic, herald) = herald_with_topic("malformed", 1, "m").await;
    let addr = herald.local_addr();
    let huge = format!(
        "GET /sse?channel=m HTTP/1.1\r\nx-filler: {}\r\n\r\n",
        "y".repeat(herald::config::HttpConfig::default().max_head_bytes)
    );
    for (request, status, needle) in [
        (
            "GET /sse?channel=m HTTP/1.1\r\nbad header: x\r\n\r\n".to_owned(),
            "400",
            "malformed HTTP request",
        ),
        (huge, "431", "larger than"),
    ] {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(TIMEOUT, socket.read_to_end(&mut response))
            .await
            .expect("answered and closed")
            .unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        assert!(text.contains(needle), "{text}");
    }
    // The server streams on.
    let sse = Sse::connect(addr, "channel=m", None).await;
    assert_eq!(sse.status, 200);
    herald.stop().await;
}

/// The `n`s of `events` on `channel`, in the order they came.
fn ns_on(events: &[Event], channel: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.json()["channel"] == channel)
        .map(|e| e.json()["data"]["n"].as_u64().expect("n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_streams_resume_each_channel_from_its_own_cursor() {
    let (topic, herald) = herald_with_topic("subs", 3, "user.{key}").await;
    let addr = herald.local_addr();
    let producer = Producer::new();

    let mut first = Sse::connect(addr, "sub=user.k1&sub=user.k2", None).await;
    let opening = first.last_id.clone().expect("the opening position");
    producer.send_keyed(&topic, 0..100, 10).await;
    let seen = first.messages(20).await;
    assert_eq!(
        ns_on(&seen, "user.k1"),
        (0..100).filter(|n| n % 10 == 1).collect::<Vec<_>>()
    );
    assert_eq!(
        ns_on(&seen, "user.k2"),
        (0..100).filter(|n| n % 10 == 2).collect::<Vec<_>>()
    );
    // Each envelope's cursor is its own channel's; `id:` is the stream's
    // position: both subscriptions' cursors, in `sub=` order.
    let opening = opening.split('.').map(str::to_owned).collect::<Vec<_>>();
    let mut at: HashMap<String, String> = [
        ("user.k1".to_owned(), opening[0].clone()),
        ("user.k2".to_owned(), opening[1].clone()),
    ]
    .into();
    for e in &seen {
        let v = e.json();
        at.insert(
            v["channel"].as_str().unwrap().into(),
            v["cursor"].as_str().unwrap().into(),
        );
        let id = e.id.as_deref().unwrap();
        assert_eq!(id, format!("{}.{}", at["user.k1"], at["user.k2"]));
    }
    // Resume mid-way by Last-Event-ID: after the 7th event, exactly the rest.
    let mid = seen[6].id.clone().unwrap();
    assert_eq!(mid.split('.').count(), 2, "{mid}");
    drop(first);
    let mut by_id = Sse::connect(addr, "sub=user.k1&sub=user.k2", Some(&mid)).await;
    let rest = by_id.messages(13).await;
    for channel in ["user.k1", "user.k2"] {
        assert_eq!(
            ns_on(&seen[7..], channel),
            ns_on(&rest, channel),
            "{channel} resumes exactly"
        );
    }
    drop(by_id);

    // Each from its own cursor: k1 from its fifth message, k2 from its last,
    // k3 (new) from the live end.
    let k1_fifth = seen
        .iter()
        .filter(|e| e.json()["channel"] == "user.k1")
        .nth(4)
        .unwrap()
        .json();
    let query = format!(
        "sub=user.k1@{}&sub=user.k2@{}&sub=user.k3",
        k1_fifth["cursor"].as_str().unwrap(),
        at["user.k2"]
    );
    let mut own = Sse::connect(addr, &query, None).await;
    let k1_rest: Vec<u64> = (0..100).filter(|n| n % 10 == 1).skip(5).collect();
    let caught_up = own.messages(k1_rest.len()).await;
    assert_eq!(ns_on(&caught_up, "user.k1"), k1_rest);
    producer.send_keyed(&topic, 100..200, 10).await;
    let live = own.messages(30).await;
    for (channel, key) in [("user.k1", 1), ("user.k2", 2), ("user.k3", 3)] {
        assert_eq!(
            ns_on(&live, channel),
            (100..200).filter(|n| n % 10 == key).collect::<Vec<_>>(),
            "{channel}"
        );
    }
    assert_eq!(own.last_id.as_deref().unwrap().split('.').count(), 3);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sub_requests_get_400_naming_the_problem() {
    let (_topic, herald) = herald_with_topic("subbad", 3, "user.{key}").await;
    let addr = herald.local_addr();
    let many: Vec<String> = (0..65).map(|k| format!("sub=user.k{k}")).collect();
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "sub=user.k1&channel=user.k2".into(),
            "conflicting_parameters",
            "channel=",
        ),
        (
            "sub=user.k1&cursor=hAA".into(),
            "conflicting_parameters",
            "cursor=",
        ),
        (
            "sub=user.k1&since=5".into(),
            "conflicting_parameters",
            "since=",
        ),
        (
            "sub=user.k1&sub=user.k1@hAA".into(),
            "conflicting_parameters",
            "\"user.k1\" twice",
        ),
        (
            "sub=user.k1@garbage".into(),
            "invalid_cursor",
            "sub=\"user.k1\"",
        ),
        (
            "sub=user.k2@since:yesterday".into(),
            "invalid_since",
            "sub=\"user.k2\"",
        ),
        ("sub=nope".into(), "unknown_channel", "\"nope\""),
        (
            many.join("&"),
            "too_many_channels",
            "limits.max_channels_per_connection",
        ),
    ];
    for (query, code, needle) in cases {
        let sse = Sse::connect(addr, &query, None).await;
        assert_eq!(sse.status, 400, "{query}");
        let body = sse.error_body().await;
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{query}: {message:?} should mention {needle}"
        );
    }
    // A refusal of one `sub=` names its channel, for the client to tell
    // which subscription is refused.
    for (query, channel) in [
        ("sub=user.k0&sub=user.k1@garbage", "user.k1"),
        ("sub=user.k0&sub=nope", "nope"),
    ] {
        let body = Sse::connect(addr, query, None).await.error_body().await;
        assert_eq!(body["error"]["channel"], channel, "{query}: {body}");
    }
    // A Last-Event-ID must hold one cursor per `sub=`.
    let opened = Sse::connect(addr, "sub=user.k1", None).await;
    let one = opened.last_id.clone().unwrap();
    let sse = Sse::connect(addr, "sub=user.k1&sub=user.k2", Some(&one)).await;
    assert_eq!(sse.status, 400);
    let body = sse.error_body().await;
    assert_eq!(body["error"]["code"], "invalid_cursor", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 cursors for 2"),
        "{body}"
    );
    // A poll refuses the same way.
    let (status, body) = poll(addr, "sub=user.k1&sub=user.k1").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("conflicting_parameters"))
    );
    herald.stop().await;
}

/// `sse.write_delay`, as `ws.write_delay`: held, then sent together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_delay_holds_events_and_sends_them_together() {
    const DELAY: Duration = Duration::from_millis(1500);
    let (topic, herald) = herald_with_topic_and("sse-delay", 1, "feed", |c| {
        c.sse.write_delay = DELAY;
    })
    .await;
    let mut sse = Sse::connect(herald.local_addr(), "channel=feed", None).await;
    let producer = Producer::new();
    let produced = std::time::Instant::now();
    for n in 0..5 {
        producer.send_n(&topic, "k", n).await;
    }
    let first = sse.messages(1).await;
    let first_at = produced.elapsed();
    let rest = sse.messages(4).await;
    let rest_at = produced.elapsed();
    assert_eq!(
        ns(&first.into_iter().chain(rest).collect::<Vec<_>>()),
        [0, 1, 2, 3, 4]
    );
    assert!(
        first_at >= DELAY,
        "held for sse.write_delay ({DELAY:?}), came after {first_at:?}"
    );
    assert!(
        rest_at - first_at < DELAY / 2,
        "the other four came with the first ({:?} after it)",
        rest_at - first_at
    );
    herald.stop().await;
}
