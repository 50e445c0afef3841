//! One cursor everywhere: a cursor taken from any transport resumes on any
//! other with exactly the records after it.

mod common;

use common::*;

/// Every record after `cursor` on channel `x`, read over WebSocket, then
/// over polling; both must be exactly `expected` (in partition order).
async fn resume_on_ws_and_poll(addr: std::net::SocketAddr, cursor: &str, expected: &[u64]) {
    let mut ws = Ws::connect(addr, "").await;
    ws.subscribe("x", Some(cursor)).await;
    let on_ws = ws.messages(expected.len()).await;
    assert_partition_order_json(&on_ws);
    let mut got = ns_json(&on_ws);
    got.sort_unstable();
    assert_eq!(got, expected, "WebSocket from the cursor");

    let mut on_poll = Vec::new();
    let mut at = cursor.to_owned();
    while on_poll.len() < expected.len() {
        let (messages, next) = poll_ok(addr, &format!("channel=x&cursor={at}&wait=5")).await;
        assert!(!messages.is_empty(), "poll stalled");
        on_poll.extend(messages);
        at = next;
    }
    assert_eq!(
        ns_json(&on_poll),
        ns_json(&on_ws),
        "polling from the cursor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_from_sse_resumes_on_websocket_and_polling() {
    let (topic, herald) = herald_with_topic("x-sse", 3, "x").await;
    let addr = herald.local_addr();
    let producer = Producer::new();
    let mut sse = Sse::connect(addr, "channel=x", None).await;
    producer.send_keyed(&topic, 0..60, 7).await;
    let seen = sse.messages(25).await;
    let cursor = sse.last_id.clone().unwrap();
    drop(sse);
    producer.send_keyed(&topic, 60..90, 7).await;

    let mut expected: Vec<u64> = (0..90).filter(|n| !ns(&seen).contains(n)).collect();
    expected.sort_unstable();
    assert_eq!(expected.len(), 65);
    resume_on_ws_and_poll(addr, &cursor, &expected).await;
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_from_websocket_and_polling_resume_on_the_others() {
    let (topic, herald) = herald_with_topic("x-ws", 3, "x").await;
    let addr = herald.local_addr();
    let producer = Producer::new();

    // A WebSocket cursor → SSE and polling.
    let mut ws = Ws::connect(addr, "channel=x").await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    producer.send_keyed(&topic, 0..50, 7).await;
    let seen = ws.messages(20).await;
    let ws_cursor = seen.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    drop(ws);
    producer.send_keyed(&topic, 50..70, 7).await;
    let seen = ns_json(&seen);
    let mut after_ws: Vec<u64> = (0..70).filter(|n| !seen.contains(n)).collect();
    after_ws.sort_unstable();

    let mut sse = Sse::connect(addr, "channel=x", Some(&ws_cursor)).await;
    let on_sse = sse.messages(after_ws.len()).await;
    let mut got = ns(&on_sse);
    got.sort_unstable();
    assert_eq!(got, after_ws, "SSE from a WebSocket cursor");
    drop(sse);
    let (on_poll, _) = poll_ok(addr, &format!("channel=x&cursor={ws_cursor}&limit=1000")).await;
    assert_eq!(
        ns_json(&on_poll),
        ns(&on_sse),
        "polling from a WebSocket cursor"
    );

    // A poll cursor (taken part-way, with limit) → SSE and WebSocket.
    let (first, poll_cursor) =
        poll_ok(addr, &format!("channel=x&cursor={ws_cursor}&limit=15")).await;
    assert_eq!(first.len(), 15);
    let after_poll: Vec<u64> = ns(&on_sse)[15..].to_vec();
    let mut sse = Sse::connect(addr, &format!("channel=x&cursor={poll_cursor}"), None).await;
    assert_eq!(
        ns(&sse.messages(after_poll.len()).await),
        after_poll,
        "SSE from a poll cursor"
    );
    let mut ws = Ws::connect(addr, "").await;
    ws.subscribe("x", Some(&poll_cursor)).await;
    assert_eq!(
        ns_json(&ws.messages(after_poll.len()).await),
        after_poll,
        "WebSocket from a poll cursor"
    );
    // And all of them then see the same next record, once.
    producer.send_n(&topic, "k0", 9999).await;
    assert_eq!(ns(&[sse.next_message().await]), [9999]);
    assert_eq!(ns_json(&ws.messages(1).await), [9999]);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_below_a_cursor_are_a_gap_on_websocket_and_polling() {
    let (topic, herald) =
        herald_with_topic_and("x-gap", 1, "x", |c| c.hub.history_messages = 5).await;
    let addr = herald.local_addr();
    let (_, opening) = poll_ok(addr, "channel=x").await;
    let producer = Producer::new();
    for n in 0..30 {
        producer.send_n(&topic, "k", n).await;
    }
    // Retention: everything below offset 20 goes.
    delete_records_below(&topic, 0, 20).await;
    let lost = serde_json::json!({"channel": "x",
        "partitions": [{"topic": topic, "partition": 0, "from": 0, "to": 20}]});

    // WebSocket: the gap first, with the cursor that steps over it.
    let mut ws = Ws::connect(addr, "").await;
    ws.subscribe("x", Some(&opening)).await;
    let mut gap = ws.next_json().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    let cursor = gap.as_object_mut().unwrap().remove("cursor").unwrap();
    let cursor = herald::hub::cursor::Cursor::decode(cursor.as_str().unwrap()).unwrap();
    assert_eq!(cursor.get(&topic, 0), Some(20));
    gap.as_object_mut().unwrap().remove("type");
    assert_eq!(gap, lost);
    assert_eq!(
        ns_json(&ws.messages(10).await),
        (20..30).collect::<Vec<_>>()
    );

    // Polling: the gap beside the messages after it.
    let (status, body) = poll(addr, &format!("channel=x&cursor={opening}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["gap"], serde_json::json!([lost]));
    assert_eq!(
        ns_json(body["messages"].as_array().unwrap()),
        (20..30).collect::<Vec<_>>()
    );
    herald.stop().await;
}
