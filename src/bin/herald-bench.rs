//! herald-bench: measures Herald against a real Kafka broker.
//!
//! ```text
//! herald-bench ingest     [--records N] [--brokers ADDR]   ingest rate vs bare consumers
//! herald-bench sse-fanout [--clients C] [--records N]      SSE delivery rate to C subscribers of one channel
//! ```
//!
//! Herald runs in this process on its own runtime; clients are plain TCP
//! sockets that count events, so the client side stays cheap.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use herald::config::Config;
use herald::server::Herald;
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
}

fn main() {
    let cli = Cli::parse();
    let brokers = cli
        .brokers
        .or_else(|| std::env::var("KAFKA_BOOTSTRAP").ok())
        .unwrap_or_else(|| "127.0.0.1:9092".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match cli.scenario {
        Scenario::Ingest {
            records,
            partitions,
        } => rt.block_on(ingest(&brokers, records, partitions)),
        Scenario::SseFanout { clients, records } => {
            rt.block_on(sse_fanout(&brokers, clients, records))
        }
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
        let payload = format!("{{\"n\":{i:>10},\"pad\":\"{}\"}}", "x".repeat(72));
        debug_assert_eq!(payload.len(), 100);
        let key = format!("k{}", i % 1000);
        let mut record = BaseRecord::to(topic).payload(&payload).key(&key);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
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
        .set("enable.auto.commit", "false");
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
    let mut tasks = Vec::new();
    let connected = Arc::new(tokio::sync::Barrier::new(clients + 1));
    for _ in 0..clients {
        let received = received.clone();
        let connected = connected.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /sse?channel=bench HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .expect("write");
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            let mut opened = false;
            // Counts "\ndata: " occurrences; a marker split across reads is
            // caught by keeping the last 6 bytes.
            let mut tail: Vec<u8> = Vec::new();
            while got < n {
                let k = s.read(&mut buf).await.expect("read");
                assert!(k > 0, "stream ended early");
                if !opened {
                    opened = true;
                    connected.wait().await;
                }
                tail.extend_from_slice(&buf[..k]);
                let count = tail.windows(7).filter(|w| w == b"\ndata: ").count() as u64;
                got += count;
                received.fetch_add(count, Ordering::Relaxed);
                let keep = tail.len().saturating_sub(6);
                tail.drain(..keep);
            }
        }));
    }
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
