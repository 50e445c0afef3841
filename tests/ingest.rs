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
    // Produced right away — possibly before Herald has noticed the new
    // partitions; it must still arrive.
    let producer = Producer::new();
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
