//! Resuming beyond the hub's memory: replay from Kafka, gaps for records
//! Kafka deleted, `since=`, another node, and the replay bounds.

mod common;

use common::*;

/// Memory holds 5 records per channel: older ones are read back from Kafka.
fn small_history(cfg: &mut herald::config::Config) {
    cfg.hub.history_messages = 5;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_memory_is_replayed_from_kafka_exactly() {
    let (topic, herald) = herald_with_topic_and("replay", 3, "r", small_history).await;
    let addr = herald.local_addr();
    let opening = Sse::connect(addr, "channel=r", None).await.last_id.unwrap();
    let producer = Producer::new();
    producer.send_keyed(&topic, 0..120, 11).await;
    // Memory holds 5 of them; the rest come back from Kafka, then live
    // records follow with no seam.
    let mut sse = Sse::connect(addr, "channel=r", Some(&opening)).await;
    let live = tokio::spawn(async move {
        let producer = Producer::new();
        producer.send_keyed(&topic, 120..160, 11).await;
    });
    let events = sse.messages(160).await;
    live.await.unwrap();
    let mut got = ns(&events);
    got.sort_unstable();
    assert_eq!(
        got,
        (0..160).collect::<Vec<_>>(),
        "none missing, none twice"
    );
    assert_partition_order(&events);
    assert!(metric(addr, "herald_replay_records_total").await >= 100.0);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_below_the_cursor_are_reported_as_a_gap_first() {
    let (topic, herald) = herald_with_topic_and("gap", 1, "g", small_history).await;
    let addr = herald.local_addr();
    let opening = Sse::connect(addr, "channel=g", None).await.last_id.unwrap();
    let producer = Producer::new();
    for n in 0..30 {
        producer.send_n(&topic, "k", n).await;
    }
    // Retention: everything below offset 20 goes.
    delete_records_below(&topic, 0, 20).await;

    let mut sse = Sse::connect(addr, "channel=g", Some(&opening)).await;
    let gap = sse.next_raw().await.unwrap();
    assert_eq!(gap.event.as_deref(), Some("gap"), "{gap:?}");
    assert_eq!(
        gap.json(),
        serde_json::json!({"channel": "g", "partitions": [{"topic": topic, "partition": 0, "from": 0, "to": 20}]})
    );
    // The gap's id steps over the lost offsets.
    let after_gap = herald::hub::cursor::Cursor::decode(gap.id.as_deref().unwrap()).unwrap();
    assert_eq!(after_gap.get(&topic, 0), Some(20));
    let events = sse.messages(10).await;
    assert_eq!(ns(&events), (20..30).collect::<Vec<_>>());
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_returns_the_records_from_that_time_on() {
    let topic = unique_topic("since");
    create_topic(&topic, 2).await;
    let producer = Producer::new();
    let t0 = 1_700_000_000_000i64;
    for i in 0..20i64 {
        let payload = format!("{{\"n\":{i}}}");
        producer
            .send(
                &topic,
                Some((i % 2) as i32),
                Some(b"k"),
                Some(payload.as_bytes()),
                Some(t0 + i * 1000),
            )
            .await;
    }
    // Started after the records: they are only in Kafka.
    let herald = start(config(&[(&topic, "s")]), &[(&topic, 2)]).await;
    let addr = herald.local_addr();
    for since in [
        format!("{}", t0 + 10_000),
        "2023-11-14T22:13:30Z".to_owned(),
    ] {
        let mut sse = Sse::connect(addr, &format!("channel=s&since={since}"), None).await;
        assert_eq!(sse.status, 200, "since={since}");
        let mut got = ns(&sse.messages(10).await);
        got.sort_unstable();
        assert_eq!(got, (10..20).collect::<Vec<_>>(), "since={since}");
    }
    // The same on WebSocket (subscribe message) and polling.
    let mut ws = Ws::connect(addr, "").await;
    ws.send_json(serde_json::json!({"type": "subscribe", "channel": "s", "since": t0 + 10_000}))
        .await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    let mut got = ns_json(&ws.messages(10).await);
    got.sort_unstable();
    assert_eq!(got, (10..20).collect::<Vec<_>>(), "WebSocket since");
    let (polled, _) = poll_ok(addr, &format!("channel=s&since={}&limit=100", t0 + 10_000)).await;
    let mut got = ns_json(&polled);
    got.sort_unstable();
    assert_eq!(got, (10..20).collect::<Vec<_>>(), "polling since");

    let bad = Sse::connect(addr, "channel=s&since=yesterday", None).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error_body().await["error"]["code"], "invalid_since");
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_node_exactly() {
    let topic = unique_topic("nodes");
    create_topic(&topic, 3).await;
    let a = start(config(&[(&topic, "n")]), &[(&topic, 3)]).await;
    let mut on_a = Sse::connect(a.local_addr(), "channel=n", None).await;
    let producer = Producer::new();
    for n in 0..60 {
        producer.send_n(&topic, &format!("k{n}"), n).await;
    }
    let seen = on_a.messages(25).await;
    let cursor = on_a.last_id.clone().unwrap();
    drop(on_a);
    // Node B shares nothing with A but Kafka, and starts after the records.
    let b = start(config(&[(&topic, "n")]), &[(&topic, 3)]).await;
    let mut on_b = Sse::connect(b.local_addr(), "channel=n", Some(&cursor)).await;
    let rest = on_b.messages(35).await;
    let mut all: Vec<u64> = ns(&seen).into_iter().chain(ns(&rest)).collect();
    all.sort_unstable();
    assert_eq!(all, (0..60).collect::<Vec<_>>());
    producer.send_n(&topic, "k", 60).await;
    assert_eq!(ns(&[on_b.next_message().await]), [60]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_beyond_its_bounds_is_refused_with_the_documented_error() {
    let (topic, herald) = herald_with_topic_and("bounds", 1, "b", |c| {
        small_history(c);
        c.replay.max_records = 10;
    })
    .await;
    let addr = herald.local_addr();
    let opening = Sse::connect(addr, "channel=b", None).await.last_id.unwrap();
    let producer = Producer::new();
    for n in 0..50 {
        producer.send_n(&topic, "k", n).await;
    }
    let mut sse = Sse::connect(addr, "channel=b", None).await;
    // Wait until every record is in: the live stream reaches the next one.
    producer.send_n(&topic, "k", 50).await;
    while ns(&[sse.next_message().await]) != [50] {}
    let refused = Sse::connect(addr, "channel=b", Some(&opening)).await;
    assert_eq!(refused.status, 409);
    let body = refused.error_body().await;
    assert_eq!(body["error"]["code"], "replay_too_large");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("46"),
        "{body}"
    );
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resuming_the_same_range_together_share_one_kafka_read() {
    let topic = unique_topic("shared");
    create_topic(&topic, 3).await;
    let a = start(config(&[(&topic, "s")]), &[(&topic, 3)]).await;
    let cursor = Sse::connect(a.local_addr(), "channel=s", None)
        .await
        .last_id
        .unwrap();
    a.stop().await;
    let producer = Producer::new();
    const N: u64 = 300;
    for n in 0..N {
        producer.send_n(&topic, &format!("k{n}"), n).await;
    }
    // A cold node: nothing in memory, so every resume is a replay.
    let mut cfg = config(&[(&topic, "s")]);
    small_history(&mut cfg);
    cfg.kafka.warm_history = 0;
    let b = start(cfg, &[(&topic, 3)]).await;
    let addr = b.local_addr();
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let cursor = cursor.clone();
            tokio::spawn(async move {
                let mut sse = Sse::connect(addr, "channel=s", Some(&cursor)).await;
                let mut got = ns(&sse.messages(N as usize).await);
                got.sort_unstable();
                got
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.await.unwrap(), (0..N).collect::<Vec<_>>());
    }
    let read = metric(addr, "herald_replay_records_total").await;
    assert!(
        read <= 2.0 * N as f64,
        "20 clients resuming {N} records read {read} records from Kafka"
    );
    b.stop().await;
}

/// A cursor past the partition's end (another cluster, a recreated topic,
/// a forged cursor) is refused, naming the position and the end; one at
/// the end resumes there and misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_beyond_the_partition_end_is_refused() {
    let (topic, herald) = herald_with_topic("ahead", 1, "c").await;
    let addr = herald.local_addr();
    let producer = Producer::new();
    for n in 0..3 {
        producer.send_n(&topic, "k", n).await;
    }
    let at = |offset: i64| {
        let mut cursor = herald::hub::cursor::Cursor::new();
        cursor.set(&topic, 0, offset);
        cursor.encode()
    };
    for transport in ["sse", "poll"] {
        let (status, body) = match transport {
            "sse" => {
                let sse = Sse::connect(addr, &format!("channel=c&cursor={}", at(20)), None).await;
                (sse.status, sse.error_body().await)
            }
            _ => poll(addr, &format!("channel=c&cursor={}", at(20))).await,
        };
        assert_eq!(status, 400, "{transport}: {body}");
        assert_eq!(body["error"]["code"], "cursor_ahead", "{transport}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("{topic}/0@20")) && message.contains("(3)"),
            "{message}"
        );
    }
    // On a WebSocket: an error for that subscription, the connection open.
    let mut ws = Ws::connect(addr, "").await;
    ws.send_json(serde_json::json!({"type": "subscribe", "channel": "c", "cursor": at(20)}))
        .await;
    let error = ws.next_json().await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "cursor_ahead", "{error}");
    assert_eq!(error["channel"], "c", "{error}");
    // Still open: a subscribe from the end is answered `subscribed`.
    ws.subscribe("c", Some(&at(3))).await;
    // At the end: accepted, and the next record arrives.
    let mut sse = Sse::connect(addr, "channel=c", Some(&at(3))).await;
    producer.send_n(&topic, "k", 3).await;
    assert_eq!(ns(&sse.messages(1).await), vec![3]);
    herald.stop().await;
}

/// Edge 4 of issue 13: while a resuming subscriber reads back from Kafka, the
/// live records that arrive meanwhile overflow its queue. That backlog is the
/// server's doing: the subscriber catches up again internally and hands over
/// to live, never cut off as slow (which would make it resume, replay and
/// overflow again: a loop).
///
/// The client does not read while the live records arrive, so the replay is
/// stuck on a full socket (16 MB of records, more than the kernel buffers)
/// for certain while they overflow the 50-record queue; then it reads
/// everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_records_that_overflow_the_queue_during_a_replay_do_not_cut_the_client_off() {
    let (topic, herald) = herald_with_topic_and("catchup", 1, "r", |cfg| {
        cfg.hub.history_messages = 5;
        cfg.hub.subscriber_queue = 50;
    })
    .await;
    let addr = herald.local_addr();
    let (_, opening) = poll_ok(addr, "channel=r").await;
    let producer = Producer::new();
    let pad = "x".repeat(16_000);
    let send = |n: u64| {
        let producer = producer.clone();
        let topic = topic.clone();
        let payload = format!("{{\"n\":{n},\"pad\":\"{pad}\"}}");
        async move {
            producer
                .send(&topic, Some(0), Some(b"k"), Some(payload.as_bytes()), None)
                .await
        }
    };
    for n in 0..1_000 {
        send(n).await;
    }
    let mut ws = Ws::connect(addr, &format!("channel=r&cursor={opening}")).await;
    for n in 1_000..1_200 {
        send(n).await;
    }
    let consumed = format!("herald_messages_consumed_total{{partition=\"0\",topic=\"{topic}\"}}");
    wait_until_metric(addr, &consumed, 1_200.0).await;

    assert_eq!(ws.next_json().await["type"], "subscribed");
    let messages = ws.messages(1_200).await;
    assert_eq!(ns_json(&messages), (0..1_200).collect::<Vec<_>>());
    send(1_200).await;
    let last = ws.next_json().await;
    assert_eq!(
        (last["type"].as_str(), last["data"]["n"].as_u64()),
        (Some("message"), Some(1_200))
    );
    assert_eq!(
        metric(
            addr,
            "herald_slow_client_disconnects_total{transport=\"ws\"}"
        )
        .await,
        0.0
    );
    herald.stop().await;
}

/// Issue 13, edge 6's second half: a cursor that does not name a whole topic
/// feeding the channel (a route, or a topic matching `topic_regex`, added
/// after the cursor was made) reads that topic from its beginning, like a
/// partition the cursor does not name — within `replay.max_records`, beyond
/// which it is refused with the documented error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_the_cursor_does_not_name_is_read_from_its_beginning_within_the_bounds() {
    let old = unique_topic("named");
    let new = unique_topic("unnamed");
    create_topic(&old, 1).await;
    create_topic(&new, 1).await;
    let mut cfg = config(&[(&old, "c"), (&new, "c")]);
    cfg.hub.history_messages = 1;
    cfg.replay.max_records = 5;
    let herald = start(cfg, &[(&old, 1), (&new, 1)]).await;
    let addr = herald.local_addr();
    let producer = Producer::new();
    for n in 0..3 {
        producer.send_n(&new, "k", n).await;
    }
    producer.send_n(&old, "k", 100).await;
    let consumed = format!("herald_messages_consumed_total{{partition=\"0\",topic=\"{old}\"}}");
    wait_until_metric(addr, &consumed, 1.0).await;
    // Made before `new` fed the channel: it names `old` only.
    let mut before = herald::hub::cursor::Cursor::new();
    before.set(&old, 0, 1);
    let (messages, cursor) = poll_ok(addr, &format!("channel=c&cursor={}", before.encode())).await;
    assert_eq!(ns_json(&messages), [0, 1, 2]);
    let cursor = herald::hub::cursor::Cursor::decode(&cursor).unwrap();
    assert_eq!(
        (cursor.get(&old, 0), cursor.get(&new, 0)),
        (Some(1), Some(3))
    );

    for n in 3..10 {
        producer.send_n(&new, "k", n).await;
    }
    let consumed = format!("herald_messages_consumed_total{{partition=\"0\",topic=\"{new}\"}}");
    wait_until_metric(addr, &consumed, 10.0).await;
    let (status, body) = poll(addr, &format!("channel=c&cursor={}", before.encode())).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "replay_too_large", "{body}");
    herald.stop().await;
}

/// A replay that fails ends the stream with `reconnect`/`replay_failed`
/// after an unbroken prefix of the records, and is counted in
/// `herald_replay_failures_total` (a stream's failure is no HTTP error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_replay_ends_the_stream_plainly_and_is_counted() {
    let (topic, herald) = herald_with_topic_and("replayfail", 1, "f", |cfg| {
        small_history(cfg);
        // Not even a Kafka round trip fits in it.
        cfg.replay.timeout = std::time::Duration::from_millis(1);
    })
    .await;
    let addr = herald.local_addr();
    let opening = Sse::connect(addr, "channel=f", None).await.last_id.unwrap();
    let producer = Producer::new();
    for n in 0..30 {
        producer.send_n(&topic, "k", n).await;
    }
    let consumed = format!("herald_messages_consumed_total{{partition=\"0\",topic=\"{topic}\"}}");
    wait_until_metric(addr, &consumed, 30.0).await;
    assert_eq!(metric(addr, "herald_replay_failures_total").await, 0.0);
    let mut sse = Sse::connect(addr, "channel=f", Some(&opening)).await;
    let mut got = Vec::new();
    let end = loop {
        let event = sse
            .next_raw()
            .await
            .expect("an event before the stream ends");
        match event.event.as_deref() {
            None => got.push(event.json()["data"]["n"].as_u64().unwrap()),
            Some("reconnect") => break event.json(),
            other => panic!("unexpected {other:?}: {event:?}"),
        }
    };
    assert_eq!(end["reason"], "replay_failed", "{end}");
    assert!(
        end["message"].as_str().unwrap().contains("replay.timeout"),
        "{end}"
    );
    assert_eq!(
        got,
        (0..got.len() as u64).collect::<Vec<_>>(),
        "a prefix, in order"
    );
    assert_eq!(metric(addr, "herald_replay_failures_total").await, 1.0);
    herald.stop().await;
}
