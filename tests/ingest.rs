//! The ingest follows Kafka's topology: partitions added to a topic and
//! topics created after start (matching a `topic_regex` route) are read from
//! their beginning, so nothing produced to them is missed.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;

fn regex_config(prefix: &str) -> herald::config::Config {
    let text = format!(
        "[kafka]\nbrokers = \"{}\"\nmetadata_refresh = \"300ms\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [[route]]\ntopic_regex = \"^{prefix}\"\nchannel = \"{{topic}}\"\n",
        bootstrap()
    );
    herald::config::Config::parse(&text, "test").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_later_are_read_from_their_beginning() {
    let prefix = unique_topic("grow");
    let topic = format!("{prefix}-t");
    create_topic(&topic, 1).await;
    let herald = start(regex_config(&prefix), &[(&topic, 1)]).await;
    let mut sse = Sse::connect(herald.local_addr(), &format!("channel={topic}"), None).await;

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    admin
        .create_partitions(&[NewPartitions::new(&topic, 3)], &AdminOptions::new())
        .await
        .unwrap()
        .into_iter()
        .for_each(|r| r.map(|_| ()).unwrap());
    // Produced as soon as the producer knows the new partitions —
    // possibly before Herald has noticed them; it must still arrive.
    let producer = Producer::new();
    producer.wait_for_partitions(&topic, 3).await;
    producer
        .send(&topic, Some(2), Some(b"k"), Some(b"{\"n\":2}"), None)
        .await;
    producer
        .send(&topic, Some(1), Some(b"k"), Some(b"{\"n\":1}"), None)
        .await;
    producer
        .send(&topic, Some(0), Some(b"k"), Some(b"{\"n\":0}"), None)
        .await;
    let mut got = ns(&sse.messages(3).await);
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2]);
    // The cursor now names all three partitions.
    let cursor = herald::hub::cursor::Cursor::decode(sse.last_id.as_deref().unwrap()).unwrap();
    assert_eq!(cursor.iter().count(), 3, "{cursor}");
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_created_later_flow_to_channels_subscribed_before() {
    let prefix = unique_topic("late");
    let early = format!("{prefix}-early");
    create_topic(&early, 1).await;
    let herald = start(regex_config(&prefix), &[(&early, 1)]).await;
    let late = format!("{prefix}-late");
    // Subscribing before the topic exists is accepted: the route admits it.
    let mut sse = Sse::connect(herald.local_addr(), &format!("channel={late}"), None).await;
    assert_eq!(sse.status, 200);
    create_topic(&late, 2).await;
    let producer = Producer::new();
    // Kafka may take a moment to accept produce requests for a new topic.
    tokio::time::timeout(Duration::from_secs(30), async {
        producer.send_n(&late, "a", 1).await;
    })
    .await
    .expect("produce to the new topic");
    producer.send_n(&late, "b", 2).await;
    let mut got = ns(&sse.messages(2).await);
    got.sort_unstable();
    assert_eq!(got, [1, 2]);
    herald.stop().await;
}

/// Edge 1 of issue 13: Kafka deletes records the ingest has not read yet (as
/// retention does while a node is behind or stopped). librdkafka's default
/// would jump to the partition's end without a word; Herald tells the live
/// subscriber exactly what was lost, counts it, and goes on from the low
/// watermark.
///
/// The ingest is held behind deterministically: with `fetch.min.bytes` far
/// above what the first ten records weigh and a long `fetch.wait.max.ms`,
/// the broker parks its first fetch; the records are deleted meanwhile, and
/// a large record produced after them releases the fetch, which then finds
/// its offset gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_before_the_ingest_reads_them_are_a_gap_for_live_subscribers() {
    let topic = unique_topic("deleted-unread");
    create_topic(&topic, 1).await;
    let producer = Producer::new();
    for n in 0..10 {
        producer.send_n(&topic, "k", n).await;
    }
    let mut cfg = config(&[(&topic, "c")]);
    cfg.kafka.start = herald::config::StartAt::Earliest;
    cfg.kafka
        .options
        .insert("fetch.min.bytes".into(), "50000".into());
    cfg.kafka
        .options
        .insert("fetch.wait.max.ms".into(), "20000".into());
    let herald = start(cfg, &[(&topic, 1)]).await;
    let mut ws = Ws::connect(herald.local_addr(), "").await;
    let subscribed_at = ws.subscribe("c", None).await;
    assert_eq!(herald.hub().positions().get(&topic, 0), Some(0));

    delete_records_below(&topic, 0, 10).await;
    // 60 kB: enough to release the parked fetch.
    let big = format!("{{\"n\":10,\"pad\":\"{}\"}}", "x".repeat(60_000));
    producer
        .send(&topic, Some(0), Some(b"k"), Some(big.as_bytes()), None)
        .await;

    let gap = ws.next_json().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["channel"], "c");
    assert_eq!(
        gap["partitions"],
        serde_json::json!([{"topic": topic, "partition": 0, "from": 0, "to": 10}])
    );
    let message = ws.next_json().await;
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(
        (message["offset"].as_i64(), message["data"]["n"].as_u64()),
        (Some(10), Some(10))
    );

    let series = format!("herald_ingest_resets_total{{partition=\"0\",topic=\"{topic}\"}}");
    assert_eq!(metric(herald.local_addr(), &series).await, 1.0);

    // A client resuming from before the loss (the cursor it got at
    // subscribe) is told the same, and then gets record 10.
    let (status, body) = poll(
        herald.local_addr(),
        &format!("channel=c&cursor={subscribed_at}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["gap"][0]["partitions"],
        serde_json::json!([{"topic": topic, "partition": 0, "from": 0, "to": 10}]),
        "{body}"
    );
    assert_eq!(ns_json(body["messages"].as_array().unwrap()), vec![10]);
    herald.stop().await;
}

/// Edge 3 of issue 13: a cursor made by a node that already sees a partition
/// added a moment ago, brought to a node whose metadata refresh has not run
/// yet (here: not for an hour). The node re-reads the metadata before it
/// judges the cursor, and serves it; only a partition Kafka itself lacks is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_naming_a_partition_added_a_moment_ago_is_served_on_a_node_not_yet_aware() {
    let topic = unique_topic("aware");
    create_topic(&topic, 1).await;
    let mut cfg = config(&[(&topic, "c")]);
    cfg.kafka.metadata_refresh = Duration::from_secs(3600);
    let herald = start(cfg, &[(&topic, 1)]).await;
    let addr = herald.local_addr();

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    admin
        .create_partitions(&[NewPartitions::new(&topic, 2)], &AdminOptions::new())
        .await
        .unwrap()
        .into_iter()
        .for_each(|r| r.map(|_| ()).unwrap());
    let producer = Producer::new();
    producer.wait_for_partitions(&topic, 2).await;
    for n in 0..3 {
        producer
            .send(
                &topic,
                Some(1),
                Some(b"k"),
                Some(format!("{{\"n\":{n}}}").as_bytes()),
                None,
            )
            .await;
    }
    // What the other node's cursor says: both partitions, record 0 of the
    // new one delivered.
    let mut other_node = herald::hub::cursor::Cursor::new();
    other_node.set(&topic, 0, 0);
    other_node.set(&topic, 1, 1);
    assert_eq!(
        herald.hub().positions().topic(&topic).map(<[i64]>::len),
        Some(1)
    );

    // A stream, not a short poll: the node has yet to read the partition.
    let mut sse = Sse::connect(addr, "channel=c", Some(&other_node.encode())).await;
    assert_eq!(sse.status, 200);
    assert_eq!(ns(&sse.messages(2).await), [1, 2]);

    // A partition Kafka does not have is still refused, naming it.
    let mut forged = herald::hub::cursor::Cursor::new();
    forged.set(&topic, 7, 0);
    let (status, body) = poll(addr, &format!("channel=c&cursor={}", forged.encode())).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_cursor", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("partition 7") && message.contains("2 partition(s)"),
        "{message}"
    );
    herald.stop().await;
}

/// Edge 2 of issue 13: a topic deleted and created again under the same name
/// while Herald reads it. Its offsets start over below Herald's position;
/// the old position applied to the new topic would take the new records for
/// ones already delivered. The live subscriber is told with a gap marked
/// `reset` (from its old position to where the new offsets are read from)
/// and gets the new topic's records; a cursor from the old topic beyond the
/// new one's end is refused as `cursor_ahead`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_and_created_again_is_a_reset_then_its_new_records() {
    let topic = unique_topic("recreated");
    create_topic(&topic, 1).await;
    let herald = start(config(&[(&topic, "c")]), &[(&topic, 1)]).await;
    let addr = herald.local_addr();
    let mut ws = Ws::connect(addr, "").await;
    ws.subscribe("c", None).await;
    let producer = Producer::new();
    for n in 0..5 {
        producer.send_n(&topic, "k", n).await;
    }
    assert_eq!(ns_json(&ws.messages(5).await), [0, 1, 2, 3, 4]);
    let old_cursor = {
        let mut c = herald::hub::cursor::Cursor::new();
        c.set(&topic, 0, 5);
        c.encode()
    };

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    for r in admin.delete_topics(&[&topic], &options).await.unwrap() {
        r.unwrap();
    }
    // Kafka finishes a deletion in the background: create until it takes.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let new =
            rdkafka::admin::NewTopic::new(&topic, 1, rdkafka::admin::TopicReplication::Fixed(1));
        match admin
            .create_topics(&[new], &options)
            .await
            .unwrap()
            .remove(0)
        {
            Ok(_) => break,
            Err((_, e)) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "creating {topic} again: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    for n in 100..102 {
        producer.send_n(&topic, "k", n).await;
    }

    let gap = ws.next_json().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(
        gap["partitions"],
        serde_json::json!([{"topic": topic, "partition": 0, "from": 5, "to": 0, "reset": true}])
    );
    let after = ws.messages(2).await;
    assert_eq!(ns_json(&after), [100, 101]);
    assert_eq!(
        after
            .iter()
            .map(|m| m["offset"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1]
    );
    let series = format!("herald_ingest_resets_total{{partition=\"0\",topic=\"{topic}\"}}");
    assert_eq!(metric(addr, &series).await, 1.0);

    let (status, body) = poll(addr, &format!("channel=c&cursor={old_cursor}")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("cursor_ahead")),
        "{body}"
    );
    herald.stop().await;
}

/// A route that names a header takes the channel from each record's own
/// header, and a record without it reaches no channel (counted unrouted);
/// the headers are read from Kafka only for such a route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_in_the_route_maps_each_record_by_its_own_header() {
    let topic = unique_topic("tenants");
    create_topic(&topic, 1).await;
    let herald = start(
        config(&[(&topic, "tenant.{header.tenant}")]),
        &[(&topic, 1)],
    )
    .await;
    let mut acme = Sse::connect(herald.local_addr(), "channel=tenant.acme", None).await;
    let mut other = Sse::connect(herald.local_addr(), "channel=tenant.other", None).await;
    let producer = Producer::new();
    let records: [(u64, &[(&str, &str)]); 5] = [
        (0, &[("region", "eu"), ("tenant", "acme")]),
        (1, &[("tenant", "other")]),
        (2, &[("region", "eu")]),
        (3, &[("tenant", "acme")]),
        (4, &[("tenant", "other")]),
    ];
    for (n, headers) in records {
        producer.send_n_with_headers(&topic, n, headers).await;
    }
    assert_eq!(ns(&acme.messages(2).await), [0, 3]);
    assert_eq!(ns(&other.messages(2).await), [1, 4]);
    let unrouted = format!("herald_unrouted_records_total{{topic=\"{topic}\"}}");
    wait_until_metric(herald.local_addr(), &unrouted, 1.0).await;
    // Nothing else came to either channel: the next message of each is
    // the next record produced for it.
    for (n, tenant) in [(5, "acme"), (6, "other")] {
        producer
            .send_n_with_headers(&topic, n, &[("tenant", tenant)])
            .await;
    }
    assert_eq!(ns(&acme.messages(1).await), [5]);
    assert_eq!(ns(&other.messages(1).await), [6]);
    herald.stop().await;
}
