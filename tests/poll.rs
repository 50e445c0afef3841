//! Polling end to end against a real Kafka broker: cursor continuity across
//! polls (exact), `limit`, per-key channels, long polls that return as soon
//! as a record arrives, the long-poll limit, shutdown, bad parameters.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use herald::hub::cursor::Cursor;

/// Polls from `cursor` with `limit` until `n` messages came back, checking
/// each response honours the limit and returns the cursor of its last
/// message. Returns the messages and the final cursor.
async fn poll_until(
    addr: std::net::SocketAddr,
    channel: &str,
    mut cursor: String,
    limit: usize,
    n: usize,
) -> (Vec<serde_json::Value>, String) {
    let mut all = Vec::new();
    while all.len() < n {
        // A long poll, so an empty answer means nothing came in 5 s.
        let query = format!("channel={channel}&cursor={cursor}&limit={limit}&wait=5");
        let (messages, next) = poll_ok(addr, &query).await;
        assert!(!messages.is_empty(), "stalled after {} of {n}", all.len());
        assert!(messages.len() <= limit, "limit {limit} honoured");
        assert_eq!(
            messages.last().unwrap()["cursor"].as_str().unwrap(),
            next,
            "the response cursor is the last message's"
        );
        cursor = next;
        all.extend(messages);
    }
    (all, cursor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_deliver_every_record_once_across_three_partitions() {
    let (topic, herald) = herald_with_topic("poll-exact", 3, "all").await;
    let addr = herald.local_addr();

    // No cursor: the live end, no messages, a cursor naming every partition.
    let (messages, start) = poll_ok(addr, "channel=all").await;
    assert!(messages.is_empty());
    assert_eq!(
        Cursor::decode(&start).unwrap().to_string(),
        format!("{topic}/0@0,{topic}/1@0,{topic}/2@0")
    );

    let producer = Producer::new();
    const N: u64 = 300;
    let produced: HashMap<u64, (i32, i64)> = (0..N)
        .zip(producer.send_keyed(&topic, 0..N, 10).await)
        .collect();
    let (messages, end) = poll_until(addr, "all", start.clone(), 50, N as usize).await;
    assert_eq!(messages.len(), N as usize, "nothing repeated");
    let mut got = ns_json(&messages);
    got.sort_unstable();
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "every record exactly once");
    assert_partition_order_json(&messages);
    for m in &messages {
        let n = m["data"]["n"].as_u64().unwrap();
        assert_eq!(
            (
                m["partition"].as_i64().unwrap() as i32,
                m["offset"].as_i64().unwrap()
            ),
            produced[&n]
        );
        assert_eq!(m["channel"], "all");
        assert!(m.get("type").is_none(), "a poll returns plain envelopes");
    }
    // Caught up: an empty answer with the cursor unchanged.
    let (messages, same) = poll_ok(addr, &format!("channel=all&cursor={end}")).await;
    assert!(messages.is_empty());
    assert_eq!(same, end);
    // The default limit is 100.
    let (messages, _) = poll_ok(addr, &format!("channel=all&cursor={start}")).await;
    assert_eq!(messages.len(), 100);
    assert!(metric(addr, "herald_messages_delivered_total{transport=\"poll\"}").await >= 400.0);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_a_poll_mid_stream_is_exact() {
    let (topic, herald) = herald_with_topic("poll-resume", 3, "feed").await;
    let addr = herald.local_addr();
    let producer = Producer::new();
    let (_, start) = poll_ok(addr, "channel=feed").await;
    producer.send_keyed(&topic, 0..100, 7).await;
    let (first, mid) = poll_until(addr, "feed", start, 40, 40).await;
    producer.send_keyed(&topic, 100..160, 7).await;
    let (rest, _) = poll_until(addr, "feed", mid.clone(), 7, 120).await;
    let mut all: Vec<u64> = ns_json(&first).into_iter().chain(ns_json(&rest)).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..160).collect::<Vec<_>>(),
        "none missing, none twice"
    );
    // The same cursor gives the same answer again: a poll changes nothing.
    let (again, _) = poll_until(addr, "feed", mid, 1000, 120).await;
    assert_eq!(ns_json(&again), ns_json(&rest));
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_channel_polls_only_its_key() {
    let (topic, herald) = herald_with_topic("poll-users", 3, "user.{key}").await;
    let addr = herald.local_addr();
    let (_, start) = poll_ok(addr, "channel=user.k7").await;
    let producer = Producer::new();
    producer.send_keyed(&topic, 0..200, 10).await;
    let (messages, cursor) = poll_until(addr, "user.k7", start, 1000, 20).await;
    assert_eq!(
        ns_json(&messages),
        (0..200).filter(|n| n % 10 == 7).collect::<Vec<_>>()
    );
    assert!(
        messages
            .iter()
            .all(|m| m["key"] == "k7" && m["channel"] == "user.k7")
    );
    assert_eq!(Cursor::decode(&cursor).unwrap().iter().count(), 3);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_as_soon_as_a_record_arrives() {
    let (topic, herald) = herald_with_topic("poll-long", 3, "l").await;
    let addr = herald.local_addr();
    let (_, cursor) = poll_ok(addr, "channel=l").await;

    for query in [
        format!("channel=l&cursor={cursor}&wait=25"),
        // Without a cursor a long poll waits at the live end.
        "channel=l&wait=25".to_owned(),
    ] {
        let started = Instant::now();
        let waiting = tokio::spawn(async move { poll_ok(addr, &query).await });
        // Produce once the poll is waiting.
        wait_until_metric(addr, "herald_connections{transport=\"poll\"}", 1.0).await;
        Producer::new().send_n(&topic, "k", 42).await;
        let (messages, _) = tokio::time::timeout(TIMEOUT, waiting)
            .await
            .expect("the long poll answered")
            .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(ns_json(&messages), [42]);
        assert!(
            elapsed < Duration::from_secs(10),
            "returned after {elapsed:?} of a 25 s wait"
        );
        wait_until_metric(addr, "herald_connections{transport=\"poll\"}", 0.0).await;
    }
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_are_limited_and_end_on_shutdown() {
    let (_topic, herald) =
        herald_with_topic_and("poll-limit", 1, "m", |c| c.limits.max_long_polls = 1).await;
    let addr = herald.local_addr();

    let started = Instant::now();
    let waiting = tokio::spawn(async move { poll(addr, "channel=m&wait=25").await });
    wait_until_metric(addr, "herald_connections{transport=\"poll\"}", 1.0).await;
    let (status, body) = poll(addr, "channel=m&wait=1").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "too_many_long_polls");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_long_polls")
    );
    // A short poll needs no place.
    poll_ok(addr, "channel=m").await;

    // Shutdown answers the waiting poll at once, with no messages.
    let stop = tokio::spawn(herald.stop());
    let (status, body) = tokio::time::timeout(TIMEOUT, waiting)
        .await
        .expect("the long poll answered")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"], serde_json::json!([]));
    assert!(started.elapsed() < Duration::from_secs(20));
    stop.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_get_400_naming_them() {
    let (_topic, herald) = herald_with_topic("poll-bad", 1, "b").await;
    let addr = herald.local_addr();
    for (query, code, needle) in [
        ("channel=b&limit=0", "invalid_limit", "limit=\"0\""),
        ("channel=b&limit=1001", "invalid_limit", "1000"),
        ("channel=b&limit=ten", "invalid_limit", "\"ten\""),
        ("channel=b&wait=31", "invalid_wait", "wait=\"31\""),
        ("channel=b&wait=-1", "invalid_wait", "\"-1\""),
        ("channel=b&wait=soon", "invalid_wait", "\"soon\""),
        (
            "channel=b&cursor=garbage",
            "invalid_cursor",
            "format marker",
        ),
        (
            "channel=b&cursor=hAA&since=5",
            "conflicting_parameters",
            "not both",
        ),
        ("channel=b&since=yesterday", "invalid_since", "yesterday"),
        ("channel=nope", "unknown_channel", "\"nope\""),
        ("", "missing_channel", "channel"),
        ("channel=b&wiat=5", "unknown_parameter", "\"wiat\""),
    ] {
        let (status, body) = poll(addr, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{query}: {message:?} lacks {needle}"
        );
    }
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_read_back_from_kafka_honour_limit_and_stay_exact() {
    // Memory holds 5 records: the rest is read back from Kafka.
    let (topic, herald) =
        herald_with_topic_and("poll-replay", 3, "r", |c| c.hub.history_messages = 5).await;
    let addr = herald.local_addr();
    let (_, start) = poll_ok(addr, "channel=r").await;
    let producer = Producer::new();
    producer.send_keyed(&topic, 0..120, 11).await;
    let (messages, _) = poll_until(addr, "r", start, 7, 120).await;
    assert_eq!(messages.len(), 120, "nothing repeated");
    let mut got = ns_json(&messages);
    got.sort_unstable();
    assert_eq!(
        got,
        (0..120).collect::<Vec<_>>(),
        "every record exactly once"
    );
    assert_partition_order_json(&messages);
    assert!(metric(addr, "herald_replay_records_total").await >= 100.0);
    herald.stop().await;
}

/// A `sub=` poll's messages and cursors, checked: at most `limit`
/// messages, each channel's cursor its last message's.
async fn poll_subs(
    addr: std::net::SocketAddr,
    query: &str,
    limit: usize,
) -> (Vec<serde_json::Value>, HashMap<String, String>) {
    let (status, body) = poll(addr, query).await;
    assert_eq!(status, 200, "{query}: {body}");
    assert!(
        body.get("cursor").is_none(),
        "one cursor per channel: {body}"
    );
    let messages = body["messages"].as_array().expect("messages").clone();
    assert!(messages.len() <= limit, "limit {limit}: {body}");
    let cursors: HashMap<String, String> = body["cursors"]
        .as_object()
        .expect("cursors")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("a cursor").to_owned()))
        .collect();
    for m in &messages {
        let channel = m["channel"].as_str().unwrap();
        let last = messages
            .iter()
            .rev()
            .find(|l| l["channel"] == channel)
            .unwrap();
        assert_eq!(cursors[channel], last["cursor"].as_str().unwrap(), "{body}");
    }
    (messages, cursors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_polls_keep_a_cursor_per_channel() {
    let (topic, herald) = herald_with_topic("poll-subs", 3, "user.{key}").await;
    let addr = herald.local_addr();
    let producer = Producer::new();

    // The live end: no messages, a cursor for each channel.
    let (messages, mut cursors) = poll_subs(addr, "sub=user.k1&sub=user.k2", 100).await;
    assert!(messages.is_empty());
    assert_eq!(cursors.len(), 2);
    for cursor in cursors.values() {
        assert_eq!(Cursor::decode(cursor).unwrap().iter().count(), 3);
    }
    producer.send_keyed(&topic, 0..100, 10).await;
    let mut got: HashMap<String, Vec<u64>> = HashMap::new();
    let mut polls = 0;
    while got.values().map(Vec::len).sum::<usize>() < 20 {
        let query = format!(
            "sub=user.k1@{}&sub=user.k2@{}&limit=7&wait=5",
            cursors["user.k1"], cursors["user.k2"]
        );
        let (messages, next) = poll_subs(addr, &query, 7).await;
        assert!(!messages.is_empty(), "stalled");
        for m in &messages {
            got.entry(m["channel"].as_str().unwrap().into())
                .or_default()
                .push(m["data"]["n"].as_u64().unwrap());
        }
        cursors = next;
        polls += 1;
    }
    assert_eq!(polls, 3, "7 + 7 + 6");
    assert_eq!(
        got["user.k1"],
        (0..100).filter(|n| n % 10 == 1).collect::<Vec<_>>()
    );
    assert_eq!(
        got["user.k2"],
        (0..100).filter(|n| n % 10 == 2).collect::<Vec<_>>()
    );

    // A third channel joins at the live end; a long poll returns as soon
    // as any of them has a record, with exactly the new ones.
    let query = format!(
        "sub=user.k1@{}&sub=user.k2@{}&sub=user.k3",
        cursors["user.k1"], cursors["user.k2"]
    );
    let (messages, joined) = poll_subs(addr, &query, 100).await;
    assert!(messages.is_empty(), "nothing new yet");
    let query = format!(
        "sub=user.k1@{}&sub=user.k2@{}&sub=user.k3@{}&wait=10",
        joined["user.k1"], joined["user.k2"], joined["user.k3"]
    );
    let waiting = tokio::spawn(async move { poll_subs(addr, &query, 100).await });
    // Waiting: counted once subscribed, so the record is the live one.
    wait_until_metric(addr, "herald_connections{transport=\"poll\"}", 1.0).await;
    let started = Instant::now();
    producer.send_n(&topic, "k3", 1003).await;
    let (messages, _) = waiting.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(ns_json(&messages), [1003]);
    assert_eq!(messages[0]["channel"], "user.k3");
    herald.stop().await;
}
