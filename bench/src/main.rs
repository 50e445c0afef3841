//! herald-bench: measures Herald against a real Kafka broker.
//!
//! ```text
//! herald-bench suite SCENARIO [--duration S] [--out DIR]   issue-6 scenarios (p1..p7, smoke, all), push, faults (f1..f4), peer (Centrifugo); see suite.rs
//! herald-bench report [--out DIR]                          summary.md + chart.svg from DIR/*.json
//! herald-bench client ...                                  a client worker process (spawned by suite)
//! herald-bench floor-server ...                            the bare tokio fan-out floor (spawned by suite)
//! herald-bench push-service                                 the push scenario's local push service (spawned by suite)
//! herald-bench ingest     [--records N] [--brokers ADDR]   ingest rate vs bare consumers
//! herald-bench sse-fanout [--clients C] [--records N]      SSE delivery rate to C subscribers of one channel
//! ```
//!
//! Herald runs in this process on its own runtime; clients are plain TCP
//! sockets that count events, so the client side stays cheap.

mod centrifugo;
mod client;
mod compression;
mod curve;
mod faults;
mod floor;
mod hist;
mod peer;
mod push;
mod push_service;
mod suite;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use herald::Herald;
use herald::config::Config;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Cli {
    /// Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP or 127.0.0.1:9092).
    #[arg(long, global = true)]
    brokers: Option<String>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Ingest only: 100-byte records, no clients; Herald beside a bare
    /// BaseConsumer and a bare StreamConsumer on the same topic.
    Ingest {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, default_value_t = 3)]
        partitions: i32,
    },
    /// SSE fan-out: C clients on one channel, N records produced at once.
    SseFanout {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 1000)]
        records: u64,
    },
    /// C clients resume N records behind after a restart (warmed history,
    /// then cold: every resume a replay from Kafka).
    ResumeStorm {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 1000)]
        behind: u64,
    },
    /// One client resumes N records behind on a cold node: replay throughput.
    Replay {
        #[arg(long, default_value_t = 200_000)]
        behind: u64,
    },
    /// The issue-6 scenarios p1 p2 p3 p4 p5 p6 p7, push (Web Push, issue
    /// 12), the faults under load f1 f2 f3 f4 (issue 13), peer (Herald
    /// beside Centrifugo, issue 17), smoke, or all (any case).
    Suite {
        scenario: String,
        /// Seconds of records (default 20; f1, f2 40, f3 1800, f4 60; peer
        /// 10 per fan-out point).
        #[arg(long)]
        duration: Option<f64>,
        #[arg(long, default_value = "bench/results")]
        out: std::path::PathBuf,
        /// Overrides the scenario's client count (smoke runs).
        #[arg(long)]
        clients: Option<usize>,
    },
    /// Writes summary.md and chart.svg from the results in OUT.
    Report {
        #[arg(long, default_value = "bench/results")]
        out: std::path::PathBuf,
    },
    /// A client worker process (spawned by `suite`).
    Client(client::ClientArgs),
    /// The fan-out floor server (spawned by `suite`).
    FloorServer(floor::FloorArgs),
    /// The push scenario's local push service (spawned by `suite`).
    PushService(push_service::PushServiceArgs),
    /// A noisy neighbour: spins one thread for `--seconds` (the suite runs
    /// it under `taskset -c 0`).
    Hog {
        #[arg(long)]
        seconds: f64,
    },
}

/// Spins for `seconds`: all the CPU one thread can take.
fn hog(seconds: f64) {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut x = 0u64;
    while Instant::now() < until {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
}

/// A 100-byte JSON record carrying its send time (unix micros) and sequence.
fn payload(n: u64) -> String {
    let head = format!("{{\"t\":{},\"n\":{n},\"p\":\"", client::unix_us());
    let pad = 100usize.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// Sends `record`, polling while the producer's local queue is full.
pub fn send_waiting<K, P>(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut record: BaseRecord<'_, K, P>,
) where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, r)) => {
                record = r;
                producer.poll(Duration::from_millis(5));
            }
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let brokers = cli
        .brokers
        .or_else(|| std::env::var("KAFKA_BOOTSTRAP").ok())
        .unwrap_or_else(|| "127.0.0.1:9092".into());
    let rt = match cli.scenario {
        Scenario::Client(args) => return client::run(args),
        Scenario::FloorServer(args) => return floor::run(args),
        Scenario::PushService(args) => return push_service::run(args),
        Scenario::Hog { seconds } => return hog(seconds),
        Scenario::Suite {
            scenario,
            duration,
            out,
            clients,
        } => {
            // Before any work (the results directory, Kafka): a mistyped
            // name costs nothing and is told as a usage error.
            let scenarios = suite::scenarios(&scenario).unwrap_or_else(|unknown| {
                eprintln!("herald-bench: {unknown}");
                std::process::exit(64) // EX_USAGE, as scripts/bench.sh without a name
            });
            return suite::run(&brokers, &scenarios, duration, &out, clients);
        }
        Scenario::Report { out } => return suite::report(&out),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime"),
    };
    match cli.scenario {
        Scenario::Ingest {
            records,
            partitions,
        } => rt.block_on(ingest(&brokers, records, partitions)),
        Scenario::ResumeStorm { clients, behind } => rt.block_on(async {
            resume_storm(&brokers, clients, behind, behind).await;
            resume_storm(&brokers, clients, behind, 0).await;
        }),
        Scenario::Replay { behind } => rt.block_on(replay_one(&brokers, behind)),
        Scenario::SseFanout { clients, records } => {
            rt.block_on(sse_fanout(&brokers, clients, records))
        }
        Scenario::Suite { .. }
        | Scenario::Report { .. }
        | Scenario::Client(_)
        | Scenario::FloorServer(_)
        | Scenario::PushService(_)
        | Scenario::Hog { .. } => unreachable!(),
    }
}

fn topic_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("bench-{prefix}-{}", nanos % 1_000_000_000_000)
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin");
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic")
    {
        r.expect("topic created");
    }
}

/// Produces `n` records of 100 bytes as fast as the producer allows.
fn produce(brokers: &str, topic: &str, n: u64) -> Duration {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4")
        .create()
        .expect("producer");
    let started = Instant::now();
    for i in 0..n {
        let payload = format!("{{\"n\":{i:>10},\"pad\":\"{}\"}}", "x".repeat(75));
        debug_assert_eq!(payload.len(), 100);
        let key = format!("k{}", i % 1000);
        crate::send_waiting(&producer, BaseRecord::to(topic).payload(&payload).key(&key));
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    started.elapsed()
}

fn assignment(topic: &str, partitions: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    tpl
}

fn consumer_config(brokers: &str) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", brokers)
        .set("group.id", "herald-bench")
        .set("enable.auto.commit", "false")
        // The fetch settings of Herald's ingest (src/kafka/ingest.rs), so the
        // floor is what librdkafka can do, not what its defaults do.
        .set("fetch.wait.max.ms", "20")
        .set("max.partition.fetch.bytes", "10485760")
        .set("fetch.max.bytes", "104857600")
        .set("queued.min.messages", "1000000");
    // BENCH_CONSUMER_OPTS="k=v,k=v" tries librdkafka settings on the floors.
    for kv in std::env::var("BENCH_CONSUMER_OPTS")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((k, v)) = kv.split_once('=') {
            cc.set(k, v);
        }
    }
    cc
}

fn bare_base_consumer(brokers: &str, topic: &str, partitions: i32, n: u64) -> f64 {
    let consumer: BaseConsumer = consumer_config(brokers).create().expect("consumer");
    consumer
        .assign(&assignment(topic, partitions))
        .expect("assign");
    let started = Instant::now();
    let mut seen = 0u64;
    let mut bytes = 0usize;
    while seen < n {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            // Copy out, as the ingest does, so the comparison is fair.
            bytes += bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()).len();
            seen += 1;
        }
    }
    std::hint::black_box(bytes);
    n as f64 / started.elapsed().as_secs_f64()
}

async fn bare_stream_consumer(brokers: &str, topic: &str, partitions: i32, n: u64) -> f64 {
    let consumer: StreamConsumer = consumer_config(brokers).create().expect("consumer");
    consumer
        .assign(&assignment(topic, partitions))
        .expect("assign");
    let started = Instant::now();
    let mut seen = 0u64;
    while seen < n {
        let m = consumer.recv().await.expect("message");
        std::hint::black_box(bytes::Bytes::copy_from_slice(
            m.payload().unwrap_or_default(),
        ));
        seen += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn herald_config(brokers: &str, topic: &str, start: &str) -> Config {
    let text = format!(
        "[kafka]\nbrokers = \"{brokers}\"\nstart = \"{start}\"\n[http]\nlisten = \"127.0.0.1:0\"\ndemo_page = false\n\
         [hub]\nsubscriber_queue = 65536\n[limits]\nmax_connections = 19000\n\
         [[route]]\ntopic = \"{topic}\"\nchannel = \"bench\"\n"
    );
    Config::parse(&text, "bench").expect("bench config")
}

async fn ingest(brokers: &str, n: u64, partitions: i32) {
    let topic = topic_name("ingest");
    create_topic(brokers, &topic, partitions).await;
    let took = produce(brokers, &topic, n);
    println!(
        "produced {n} records of 100 B to {topic} in {:.2}s",
        took.as_secs_f64()
    );

    let base = tokio::task::block_in_place(|| bare_base_consumer(brokers, &topic, partitions, n));
    println!("floor: bare BaseConsumer    {base:>12.0} records/s");
    let stream = bare_stream_consumer(brokers, &topic, partitions, n).await;
    println!("floor: bare StreamConsumer  {stream:>12.0} records/s");

    let herald = Herald::start(herald_config(brokers, &topic, "earliest"))
        .await
        .expect("herald");
    let addr = herald.local_addr();
    let started = Instant::now();
    loop {
        let consumed = consumed_total(addr, &topic).await;
        if consumed >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "herald ingest               {rate:>12.0} records/s  ({:.0}% of the BaseConsumer floor)",
        100.0 * rate / base
    );
    herald.stop().await;
}

async fn consumed_total(addr: std::net::SocketAddr, topic: &str) -> u64 {
    let text = http_get(addr, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with("herald_messages_consumed_total") && l.contains(topic))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    String::from_utf8_lossy(&buf).into_owned()
}

async fn sse_fanout(brokers: &str, clients: usize, n: u64) {
    let topic = topic_name("fanout");
    create_topic(brokers, &topic, 3).await;
    let herald = Herald::start(herald_config(brokers, &topic, "latest"))
        .await
        .expect("herald");
    let addr = herald.local_addr();
    while !herald.hub().is_ready() || herald.hub().positions().topic(&topic).is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(sse_client(
                addr,
                None,
                n,
                received.clone(),
                connected.clone(),
            ))
        })
        .collect();
    connected.wait().await;
    println!("{clients} SSE clients connected to channel `bench`");
    let brokers2 = brokers.to_owned();
    let topic2 = topic.clone();
    let started = Instant::now();
    let producing = tokio::task::spawn_blocking(move || produce(&brokers2, &topic2, n));
    for t in tasks {
        t.await.expect("client");
    }
    let elapsed = started.elapsed();
    producing.await.expect("producer");
    let total = received.load(Ordering::Relaxed);
    println!(
        "delivered {total} messages ({clients} clients x {n} records) in {:.2}s: {:.0} deliveries/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    herald.stop().await;
}

/// The marker of a message event's data line (the opening `subscribed`
/// event's data starts with `{"channels"`, so it is not counted).
const MESSAGE_MARKER: &[u8] = b"\ndata: {\"channel\":";

/// One SSE client on channel `bench` that reads until it has `n` messages,
/// counting them into `received`. Waits on `connected` once the stream is
/// open. Returns the last `id:` it saw.
async fn sse_client(
    addr: std::net::SocketAddr,
    last_event_id: Option<String>,
    n: u64,
    received: Arc<AtomicU64>,
    connected: Arc<tokio::sync::Barrier>,
) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let resume = last_event_id.map_or(String::new(), |id| format!("last-event-id: {id}\r\n"));
    s.write_all(format!("GET /sse?channel=bench HTTP/1.1\r\nhost: x\r\n{resume}\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    let mut opened = false;
    // A marker split across reads is caught by keeping the last bytes.
    let mut tail: Vec<u8> = Vec::new();
    while got < n {
        let k = s.read(&mut buf).await.expect("read");
        assert!(k > 0, "stream ended early");
        if !opened {
            opened = true;
            connected.wait().await;
        }
        tail.extend_from_slice(&buf[..k]);
        let count = tail
            .windows(MESSAGE_MARKER.len())
            .filter(|w| *w == MESSAGE_MARKER)
            .count() as u64;
        got += count;
        received.fetch_add(count, Ordering::Relaxed);
        let keep = tail.len().saturating_sub(MESSAGE_MARKER.len() - 1);
        tail.drain(..keep);
    }
}

/// The opening cursor of an SSE stream on channel `bench`.
async fn opening_cursor(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /sse?channel=bench HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 8192];
    let mut text = String::new();
    loop {
        let k = s.read(&mut buf).await.expect("read");
        text.push_str(&String::from_utf8_lossy(&buf[..k]));
        if let Some(i) = text.find("\nid: ")
            && let Some(end) = text[i + 5..].find('\n')
        {
            return text[i + 5..i + 5 + end].to_owned();
        }
    }
}

async fn metric_sum(addr: std::net::SocketAddr, prefix: &str) -> u64 {
    let text = http_get(addr, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn wait_ready(herald: &Herald, topic: &str) {
    while !herald.hub().is_ready() || herald.hub().positions().topic(topic).is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a node, takes the opening cursor of channel `bench`, stops the
/// node and produces `behind` records while it is down. Returns the topic,
/// the cursor and how long producing took.
async fn cursor_behind(brokers: &str, prefix: &str, behind: u64) -> (String, String, Duration) {
    let topic = topic_name(prefix);
    create_topic(brokers, &topic, 3).await;
    let first = Herald::start(herald_config(brokers, &topic, "latest"))
        .await
        .expect("herald");
    wait_ready(&first, &topic).await;
    let cursor = opening_cursor(first.local_addr()).await;
    first.stop().await;
    let took = produce(brokers, &topic, behind);
    (topic, cursor, took)
}

/// Starts a node with `config` and resumes `clients` SSE clients from
/// `cursor` until each has `behind` messages. Returns the node, how long it
/// took to be ready, and how long the clients took to catch up.
async fn resume_clients(
    config: Config,
    topic: &str,
    cursor: &str,
    clients: usize,
    behind: u64,
) -> (Herald, Duration, Duration) {
    let started = Instant::now();
    let node = Herald::start(config).await.expect("herald");
    wait_ready(&node, topic).await;
    let ready = started.elapsed();
    let received = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(sse_client(
                node.local_addr(),
                Some(cursor.to_owned()),
                behind,
                received.clone(),
                connected.clone(),
            ))
        })
        .collect();
    let resumed = Instant::now();
    connected.wait().await;
    for t in tasks {
        t.await.expect("client");
    }
    (node, ready, resumed.elapsed())
}

/// `clients` SSE clients resume `behind` records back after a restart, with
/// the restarted node's history warmed (`warm_history`) or cold (0, so every
/// client's resume is a replay from Kafka).
async fn resume_storm(brokers: &str, clients: usize, behind: u64, warm_history: u64) {
    let (topic, cursor, took) = cursor_behind(brokers, "storm", behind).await;
    println!(
        "{behind} records produced while the node was down ({:.2}s)",
        took.as_secs_f64()
    );
    let mut config = herald_config(brokers, &topic, "latest");
    config.kafka.warm_history = warm_history;
    config.replay.max_concurrent = clients.max(1);
    let (node, ready, caught_up) = resume_clients(config, &topic, &cursor, clients, behind).await;
    let addr = node.local_addr();
    let consumed = metric_sum(addr, "herald_messages_consumed_total").await;
    let replayed = metric_sum(addr, "herald_replay_records_total").await;
    println!(
        "restart (warm_history = {warm_history}): ready in {:.2}s; {clients} clients x {behind} records caught up in {:.2}s ({:.0} deliveries/s)",
        ready.as_secs_f64(),
        caught_up.as_secs_f64(),
        (clients as u64 * behind) as f64 / caught_up.as_secs_f64()
    );
    println!(
        "reads from Kafka: ingest {consumed} + replay {replayed} = {:.2} per record",
        (consumed + replayed) as f64 / behind as f64
    );
    node.stop().await;
}

/// One client resumes `behind` records back from a cold node: replay
/// throughput from Kafka.
async fn replay_one(brokers: &str, behind: u64) {
    let (topic, cursor, _) = cursor_behind(brokers, "replay", behind).await;
    let mut config = herald_config(brokers, &topic, "latest");
    config.kafka.warm_history = 0;
    config.replay.max_records = behind + 1;
    let (node, _, took) = resume_clients(config, &topic, &cursor, 1, behind).await;
    println!(
        "one client replayed {behind} records from Kafka in {:.2}s: {:.0} records/s",
        took.as_secs_f64(),
        behind as f64 / took.as_secs_f64()
    );
    node.stop().await;
}
