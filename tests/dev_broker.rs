//! Herald on librdkafka's mock cluster, the broker `herald dev` embeds:
//! what it does not implement must not turn into a silent live end.

mod common;

use common::*;
use rdkafka::mocking::MockCluster;

/// The mock cluster answers every offsets-for-times with "no such
/// record"; `since=` still starts at the first record at or after the
/// time, found by reading the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_works_on_the_embedded_broker() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("t", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let producer = Producer::with_brokers(&brokers);
    let base = 1_700_000_000_000i64;
    for n in 0..10u64 {
        let payload = serde_json::json!({ "n": n }).to_string();
        producer
            .send(
                "t",
                Some(0),
                Some(b"k"),
                Some(payload.as_bytes()),
                Some(base + 1000 * n as i64),
            )
            .await;
    }
    let mut cfg = config(&[("t", "c")]);
    cfg.kafka.brokers = brokers.clone();
    let herald = start(cfg, &[("t", 1)]).await;
    let addr = herald.local_addr();

    let mut sse = Sse::connect(addr, &format!("channel=c&since={}", base + 5000), None).await;
    assert_eq!(ns(&sse.messages(5).await), vec![5, 6, 7, 8, 9]);
    // And a time after every record: the live end, then the next record.
    let (_, body) = poll(addr, &format!("channel=c&since={}", base + 60_000)).await;
    assert_eq!(body["messages"], serde_json::json!([]), "{body}");
    herald.stop().await;
    drop(cluster);
}

/// `herald dev`'s `users` route takes the channel from the key: a record
/// without one reaches no channel, and the log says so once, with why,
/// rather than letting it vanish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_dev_says_why_a_record_reaches_no_channel() {
    use tokio::io::AsyncBufReadExt;
    let addr: std::net::SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut dev = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["dev", "--listen", &addr.to_string(), "--ticker", "0s"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start herald dev");
    let mut log = tokio::io::BufReader::new(dev.stderr.take().unwrap()).lines();
    let info = dev_info(addr).await;
    let producer = Producer::with_brokers(info["brokers"].as_str().unwrap());
    for _ in 0..3 {
        producer
            .send("users", Some(1), None, Some(b"{\"n\":1}"), None)
            .await;
    }
    let line = tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = log.next_line().await.expect("stderr") {
            if line.contains("maps to no channel") {
                return line;
            }
        }
        panic!("herald dev ended without a word on the keyless record");
    })
    .await
    .expect("a log line on the keyless record");
    assert!(
        line.contains("topic=\"users\"")
            && line.contains("channel = \"user.{key}\": the record has no key"),
        "{line}"
    );
    dev.kill().await.ok();
}
