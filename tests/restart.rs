//! Herald killed with SIGKILL mid-stream and started again: clients resume
//! from their cursor with exact results — from the warmed history, or from
//! Kafka when warming is off.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::Child;

use common::*;

struct Process {
    child: Child,
    addr: SocketAddr,
    _config: std::path::PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self._config);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the `herald` binary and waits for `/readyz`.
async fn spawn(topic: &str, warm_history: u64) -> Process {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = std::env::temp_dir().join(format!("{topic}-{}.toml", addr.port()));
    let text = format!(
        "[kafka]\nbrokers = \"{}\"\nwarm_history = {warm_history}\nmetadata_refresh = \"500ms\"\n\
         [http]\nlisten = \"{addr}\"\n[[route]]\ntopic = \"{topic}\"\nchannel = \"c\"\n",
        bootstrap()
    );
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let child = spawn_serve(&path);
    wait_readyz(addr, 200, TIMEOUT).await;
    Process {
        child,
        addr,
        _config: path,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_clients_resume_exactly_after_sigkill() {
    let topic = unique_topic("restart");
    create_topic(&topic, 3).await;
    let producer = Producer::new();

    let mut first = spawn(&topic, 1000).await;
    let mut sse = Sse::connect(first.addr, "channel=c", None).await;
    for n in 0..60 {
        producer.send_n(&topic, &format!("k{n}"), n).await;
    }
    let mut seen = ns(&sse.messages(25).await);
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    let cursor = sse.last_id.clone().unwrap();
    drop(sse);
    for n in 60..100 {
        producer.send_n(&topic, &format!("k{n}"), n).await;
    }

    // Restarted with warm history: served from memory.
    let second = spawn(&topic, 1000).await;
    let mut sse = Sse::connect(second.addr, "channel=c", Some(&cursor)).await;
    let rest = sse.messages(75).await;
    assert_partition_order(&rest);
    seen.extend(ns(&rest));
    let mut all = seen.clone();
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<_>>());
    assert_eq!(
        metric(second.addr, "herald_replay_records_total").await,
        0.0,
        "served from warmed memory"
    );

    // Killed again, restarted cold: the same cursor is served from Kafka.
    drop(sse);
    drop(second);
    let third = spawn(&topic, 0).await;
    let mut sse = Sse::connect(third.addr, "channel=c", Some(&cursor)).await;
    let again = sse.messages(75).await;
    // The same records, each partition in offset order; across partitions
    // there is no order (Kafka has none: memory has them in the order the
    // ingest read them, a replay partition by partition).
    assert_partition_order(&again);
    let (mut a, mut b) = (ns(&again), ns(&rest));
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b, "the same records");
    assert!(metric(third.addr, "herald_replay_records_total").await >= 75.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_polling_clients_resume_exactly_after_sigkill() {
    let topic = unique_topic("restart-ws-poll");
    create_topic(&topic, 3).await;
    let producer = Producer::new();

    let mut first = spawn(&topic, 1000).await;
    let mut ws = Ws::connect(first.addr, "").await;
    ws.subscribe("c", None).await;
    let (_, mut poll_cursor) = poll_ok(first.addr, "channel=c").await;
    for n in 0..40 {
        producer.send_n(&topic, &format!("k{n}"), n).await;
    }
    let ws_seen = ws.messages(15).await;
    let ws_cursor = ws_seen.last().unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let (polled, cursor) = poll_ok(
        first.addr,
        &format!("channel=c&cursor={poll_cursor}&limit=10&wait=5"),
    )
    .await;
    assert_eq!(polled.len(), 10);
    poll_cursor = cursor;
    let mut poll_seen = ns_json(&polled);

    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    drop(ws);
    for n in 40..60 {
        producer.send_n(&topic, &format!("k{n}"), n).await;
    }

    let second = spawn(&topic, 1000).await;
    let mut ws = Ws::connect(second.addr, "").await;
    ws.subscribe("c", Some(&ws_cursor)).await;
    let rest = ws.messages(45).await;
    assert_partition_order_json(&rest);
    let mut all: Vec<u64> = ns_json(&ws_seen)
        .into_iter()
        .chain(ns_json(&rest))
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..60).collect::<Vec<_>>(),
        "WebSocket: none missing, none twice"
    );

    while poll_seen.len() < 60 {
        let (messages, cursor) = poll_ok(
            second.addr,
            &format!("channel=c&cursor={poll_cursor}&limit=100&wait=5"),
        )
        .await;
        assert!(
            !messages.is_empty(),
            "a long poll with records pending returned none"
        );
        poll_seen.extend(ns_json(&messages));
        poll_cursor = cursor;
    }
    poll_seen.sort_unstable();
    assert_eq!(
        poll_seen,
        (0..60).collect::<Vec<_>>(),
        "polling: none missing, none twice"
    );
}
