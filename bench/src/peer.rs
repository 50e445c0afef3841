//! `herald-bench suite peer` (issue 17, item 4): Herald beside its peer,
//! Centrifugo v6.9.1, measured by the same client workers on the same kind
//! of topic, each server alone (one is stopped before the other starts).
//!
//! - **Idle memory**: 10,000 WebSocket, then 10,000 SSE connections to
//!   each; RSS (`VmRSS`) before and after, per connection, as P1 reads it.
//! - **Fan-out**: 10,000 WebSocket clients at 5, 20 and 50 records/s and
//!   2,000 at 50 and 250 records/s (50k–500k deliveries/s), `--duration`
//!   seconds of records each (default 10): CPU µs per delivery (the
//!   server's `utime+stime` ÷ deliveries), p50/p99, lost, duplicated,
//!   deliveries/s, and the WebSocket frame one 100-byte record becomes;
//!   the points alternate Herald, Centrifugo. `BENCH_PEER_TRANSPORT=sse`
//!   runs them over SSE; `BENCH_PEER_POINTS=2000x100,…` runs those points
//!   (clients × records/s) alone, without the idle memory.
//!
//! Centrifugo reads the topic with its own Kafka consumer in publication
//! data mode (`internal/consuming/kafka.go`, `processPublicationDataRecord`:
//! the record's value is the publication's data, the channels are the
//! comma-separated `centrifugo-channels` header). So every record is
//! produced with that header, for both servers: Herald does not read
//! headers unless a route's channel template names one (`Router::
//! needs_headers`), and its envelope carries none, so the bytes it sends
//! are the same with or without it. Its config is bench/peer/centrifugo.json
//! with the broker, topic, consumer group and port of the run put in.
//!
//! The install is scripts/bench.sh's (`go install
//! github.com/centrifugal/centrifugo/v6@v6.9.1` into `target/peer/bin`);
//! `BENCH_CENTRIFUGO` names another binary, `BENCH_CENTRIFUGO_CONFIG`
//! another config file.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::{Value, json};

use crate::suite::{
    FanoutResult, HeraldProc, Row, Workers, cpu_s, create_topic, exe_dir, fanout_json, free_port,
    http_get, row, rss_kib, totals,
};

/// The version scripts/bench.sh installs and the scenario checks for.
pub const CENTRIFUGO_VERSION: &str = "6.9.1";

/// Centrifugo's config as checked in; [`CentrifugoProc::start`] sets the
/// run's broker, topic, consumer group and port in a copy.
const CENTRIFUGO_CONFIG: &str = include_str!("../peer/centrifugo.json");

/// The Kafka header Centrifugo's publication data mode takes the channels
/// from (`publication_data_mode.channels_header` in the config, which is
/// also Centrifugo's default name).
const CHANNELS_HEADER: &str = "centrifugo-channels";

/// Every scenario's channel (suite.rs `bench_route`).
const CHANNEL: &str = "bench";

/// The fan-out points: (clients, records/s).
const POINTS: [(usize, u64); 5] = [
    (10_000, 5),
    (10_000, 20),
    (10_000, 50),
    (2_000, 50),
    (2_000, 250),
];

/// Idle connections per transport and server.
const IDLE: usize = 10_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    Herald,
    Centrifugo,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Herald => "herald",
            Peer::Centrifugo => "centrifugo",
        }
    }

    /// The client workers' `--framing`.
    fn framing(self) -> &'static [&'static str] {
        match self {
            Peer::Herald => &["--framing", "herald"],
            Peer::Centrifugo => &["--framing", "centrifugo"],
        }
    }
}

// ---------------------------------------------------------------- Centrifugo

fn centrifugo_bin() -> std::path::PathBuf {
    std::env::var_os("BENCH_CENTRIFUGO").map_or_else(
        || exe_dir().join("../peer/bin/centrifugo"),
        std::path::PathBuf::from,
    )
}

/// The module version the binary was built from, as Go's build info in it
/// says (what `go version -m` prints): `go install …@v6.9.1` sets no
/// ldflags, so the binary's own `centrifugo version` says `v0.0.0`.
/// Panics when the binary is missing or of another version.
fn centrifugo_version() -> String {
    let bin = centrifugo_bin();
    let bytes = std::fs::read(&bin).unwrap_or_else(|e| {
        panic!(
            "read {} (scripts/bench.sh peer installs it): {e}",
            bin.display()
        )
    });
    let module = format!("mod\tgithub.com/centrifugal/centrifugo/v6\tv{CENTRIFUGO_VERSION}\t");
    assert!(
        memchr::memmem::find(&bytes, module.as_bytes()).is_some(),
        "{} is not built from github.com/centrifugal/centrifugo/v6 v{CENTRIFUGO_VERSION}",
        bin.display()
    );
    format!("github.com/centrifugal/centrifugo/v6 v{CENTRIFUGO_VERSION}")
}

/// The config a run starts from: the checked-in one, or the file
/// `BENCH_CENTRIFUGO_CONFIG` names (to try settings, as
/// `BENCH_HERALD_CONFIG` does for Herald).
fn base_config() -> Value {
    match std::env::var_os("BENCH_CENTRIFUGO_CONFIG") {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("BENCH_CENTRIFUGO_CONFIG {path:?}: {e}"));
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("BENCH_CENTRIFUGO_CONFIG {path:?}: {e}"))
        }
        None => serde_json::from_str(CENTRIFUGO_CONFIG).expect("bench/peer/centrifugo.json"),
    }
}

/// The base config with this run's broker, topic, group and port.
fn centrifugo_config(mut c: Value, brokers: &str, topic: &str, port: u16) -> Value {
    c["http_server"]["port"] = json!(port);
    let kafka = &mut c["consumers"][0]["kafka"];
    kafka["brokers"] = json!(brokers.split(',').collect::<Vec<_>>());
    kafka["topics"] = json!([topic]);
    // A new group per run: it starts at the topic's beginning (franz-go's
    // default reset offset), which on a new topic is the first record.
    kafka["consumer_group"] = json!(format!("herald-bench-peer-{topic}"));
    c
}

/// A `centrifugo` process of its own, as `HeraldProc` is Herald's.
struct CentrifugoProc {
    /// Its pid is the one RSS and CPU are read from.
    child: Child,
    /// `127.0.0.1:PORT`, a free port per start.
    addr: String,
    /// The run's config file in the temp directory, removed at the stop.
    config: std::path::PathBuf,
}

impl CentrifugoProc {
    fn start(brokers: &str, topic: &str) -> Self {
        let port = free_port();
        let config = std::env::temp_dir().join(format!(
            "herald-bench-centrifugo-{}-{port}.json",
            std::process::id()
        ));
        let text =
            serde_json::to_string_pretty(&centrifugo_config(base_config(), brokers, topic, port))
                .expect("config json");
        std::fs::write(&config, text).expect("write centrifugo config");
        let child = Command::new(centrifugo_bin())
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn centrifugo (scripts/bench.sh peer installs it)");
        let p = Self {
            child,
            addr: format!("127.0.0.1:{port}"),
            config,
        };
        let t0 = Instant::now();
        while !http_get(&p.addr, "/health").starts_with("HTTP/1.1 200") {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "centrifugo not healthy"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// SIGTERM, then wait (SIGKILL after 15 s).
    fn stop(mut self) {
        crate::suite::stop_child(&mut self.child);
        let _ = std::fs::remove_file(&self.config);
    }
}

/// One of the two servers, started on its own.
enum Server {
    Herald(HeraldProc),
    Centrifugo(CentrifugoProc),
}

impl Server {
    fn start(peer: Peer, brokers: &str, topic: &str) -> Self {
        match peer {
            Peer::Herald => Server::Herald(HeraldProc::start(brokers, topic, "latest", "")),
            Peer::Centrifugo => Server::Centrifugo(CentrifugoProc::start(brokers, topic)),
        }
    }

    fn addr(&self) -> &str {
        match self {
            Server::Herald(h) => &h.addr,
            Server::Centrifugo(c) => &c.addr,
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Server::Herald(h) => h.pid(),
            Server::Centrifugo(c) => c.child.id(),
        }
    }

    fn stop(self) {
        match self {
            Server::Herald(h) => h.stop(),
            Server::Centrifugo(c) => c.stop(),
        }
    }
}

// ---------------------------------------------------------------- Kafka

/// The bench's producer (suite.rs `produce_paced`: `linger.ms` 5, a
/// warm-up record first), every record carrying [`CHANNELS_HEADER`].
struct HeaderProducer {
    producer: ThreadedProducer<DefaultProducerContext>,
    /// `centrifugo-channels: bench`, cloned onto every record.
    headers: OwnedHeaders,
}

impl HeaderProducer {
    fn new(brokers: &str, topic: &str) -> Self {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        let headers = OwnedHeaders::new().insert(Header {
            key: CHANNELS_HEADER,
            value: Some(CHANNEL),
        });
        let p = Self { producer, headers };
        p.send(topic, "{\"warmup\":1}");
        p.producer.flush(Duration::from_secs(30)).expect("flush");
        p
    }

    fn send(&self, topic: &str, payload: &str) {
        crate::send_waiting(
            &self.producer,
            BaseRecord::to(topic)
                .payload(payload)
                .key("k")
                .headers(self.headers.clone()),
        );
    }

    /// `n` records of `crate::payload` at `rate` per second; seconds taken.
    fn paced(&self, topic: &str, rate: u64, n: u64) -> f64 {
        let started = Instant::now();
        crate::suite::paced(rate, n, |i| self.send(topic, &crate::payload(i)));
        self.producer.flush(Duration::from_secs(30)).expect("flush");
        started.elapsed().as_secs_f64()
    }
}

/// A 100-byte record clients do not count (no `{"t":`): the probe's.
fn probe_payload(k: u64) -> String {
    let head = format!("{{\"probe\":{k},\"p\":\"");
    format!("{head}{}\"}}", "x".repeat(100 - head.len() - 2))
}

/// Waits until `server` delivers records of `topic` on a WebSocket of its
/// own (Centrifugo's consumer joins its group seconds after the start;
/// Herald is assigned before `/readyz`), then measures the frame one
/// 100-byte record becomes. Returns that frame's size in bytes.
fn probe(server: &Server, peer: Peer, producer: &HeaderProducer, topic: &str) -> usize {
    let mut s = std::net::TcpStream::connect(server.addr()).expect("probe connect");
    let request = match peer {
        Peer::Herald => format!(
            "GET /ws?channel={CHANNEL} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n\
             connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             sec-websocket-version: 13\r\n\r\n"
        )
        .into_bytes(),
        Peer::Centrifugo => crate::centrifugo::request("ws", CHANNEL),
    };
    s.write_all(&request).expect("probe request");
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut acc = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        match s.read(&mut buf) {
            Ok(0) => panic!("probe: closed before the upgrade"),
            Ok(k) => acc.extend_from_slice(&buf[..k]),
            Err(_) => {}
        }
        if let Some(i) = memchr::memmem::find(&acc, b"\r\n\r\n") {
            break i + 4;
        }
    };
    assert!(
        acc.starts_with(b"HTTP/1.1 101"),
        "probe: {}",
        String::from_utf8_lossy(&acc[..head_end])
    );
    acc.drain(..head_end);
    if peer == Peer::Centrifugo {
        let connect = crate::centrifugo::connect_request(CHANNEL);
        let mut frame = vec![0x81, 0x80 | connect.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(connect.as_bytes());
        s.write_all(&frame).expect("probe connect frame");
    }
    // Frames (total size, holds a probe record) read within `wait`.
    let mut read_frames = |wait: Duration| -> Vec<(usize, bool)> {
        let until = Instant::now() + wait;
        let mut frames = Vec::new();
        while Instant::now() < until {
            if let Ok(k) = s.read(&mut buf) {
                assert!(k > 0, "probe: connection closed");
                acc.extend_from_slice(&buf[..k]);
            }
            let mut pos = 0;
            while let Some((_, head, len)) = crate::client::frame_head(&acc[pos..]) {
                if acc.len() - pos < head + len {
                    break;
                }
                let payload = &acc[pos + head..pos + head + len];
                frames.push((
                    head + len,
                    memchr::memmem::find(payload, b"\"probe\":").is_some(),
                ));
                pos += head + len;
            }
            acc.drain(..pos);
        }
        frames
    };
    let t0 = Instant::now();
    let mut k = 0;
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{} delivered no record of {topic} in 60 s",
            peer.name()
        );
        producer.send(topic, &probe_payload(k));
        k += 1;
        if read_frames(Duration::from_millis(250)).iter().any(|f| f.1) {
            break;
        }
    }
    // Fed: drain what is still coming, then one record alone.
    read_frames(Duration::from_millis(500));
    producer.send(topic, &probe_payload(k));
    let frames = read_frames(Duration::from_millis(1000));
    frames.iter().find(|f| f.1).map_or(0, |f| f.0)
}

// ---------------------------------------------------------------- measures

/// RSS per connection of `clients` idle connections over `transport`.
fn idle(brokers: &str, peer: Peer, transport: &str, clients: usize) -> Value {
    let topic = crate::topic_name("peer-idle");
    create_topic(brokers, &topic, 1);
    let server = Server::start(peer, brokers, &topic);
    let rss0 = rss_kib(server.pid());
    let workers = Workers::spawn(transport, server.addr(), clients, 0, 3.0, peer.framing(), 3);
    // A second for both: Go's collector and Herald's allocator settle.
    std::thread::sleep(Duration::from_secs(1));
    let rss1 = rss_kib(server.pid());
    let connected = workers.connected();
    let first_error = workers
        .ready
        .iter()
        .find_map(|v| v["first_error"].as_str().map(str::to_owned));
    let _ = workers.finish();
    server.stop();
    let per_conn = (rss1 - rss0) / connected.max(1) as f64;
    eprintln!(
        "bench: peer {} idle {transport}: {connected} connected, {per_conn:.1} KiB each",
        peer.name()
    );
    json!({"server": peer.name(), "transport": transport, "clients": clients, "connected": connected,
        "rss_kib_idle": rss0, "rss_kib_connected": rss1, "rss_kib_per_conn": per_conn,
        "first_error": first_error})
}

/// `clients` clients of `peer` over `transport` at `rate` records/s for
/// `duration` s (herald_fanout's measure, the producer setting the header).
fn fanout(
    brokers: &str,
    peer: Peer,
    transport: &str,
    clients: usize,
    rate: u64,
    duration: f64,
) -> (FanoutResult, Value) {
    let topic = crate::topic_name("peer-fan");
    create_topic(brokers, &topic, 1);
    let server = Server::start(peer, brokers, &topic);
    let producer = HeaderProducer::new(brokers, &topic);
    let frame_bytes = probe(&server, peer, &producer, &topic);
    let pid = server.pid();
    let rss0 = rss_kib(pid);
    let records = (rate as f64 * duration).round() as u64;
    let workers = Workers::spawn(
        transport,
        server.addr(),
        clients,
        records,
        duration + 15.0,
        peer.framing(),
        2,
    );
    let rss1 = rss_kib(pid);
    let cpu0 = cpu_s(pid);
    eprintln!(
        "bench: {clients} {transport} clients connected to {} ({:.1}s); producing {records} records at {rate}/s",
        peer.name(),
        workers.connect_span_s()
    );
    let publish_s = producer.paced(&topic, rate, records);
    let done = workers.finish();
    let cpu = cpu_s(pid) - cpu0;
    let rss2 = rss_kib(pid);
    server.stop();
    let t = totals(&done);
    let mut endings = std::collections::BTreeMap::<String, u64>::new();
    for d in &done {
        for (k, v) in &d.endings {
            *endings.entry(k.clone()).or_default() += v;
        }
    }
    let reconnects: u64 = done.iter().map(|d| d.reconnects).sum();
    let failed: usize = done.iter().map(|d| d.failed).sum();
    let out_of_order: u64 = done.iter().map(|d| d.out_of_order).sum();
    let extra = json!({
        "server": peer.name(), "transport": transport, "rate": rate, "records": records, "duration_s": duration,
        "ws_frame_bytes_per_record": frame_bytes,
        "rss_kib_idle": rss0, "rss_kib_connected": rss1, "rss_kib_end": rss2,
        "cpu_s": cpu, "cpu_us_per_delivery": 1e6 * cpu / t.received.max(1) as f64,
        "failed": failed, "reconnects": reconnects, "endings": endings, "out_of_order": out_of_order,
    });
    let r = fanout_json(&t, publish_s, &done, extra);
    let json = r.json.clone();
    (r, json)
}

// ---------------------------------------------------------------- the scenario

/// Runs the scenario: `duration` seconds of records per fan-out point;
/// `clients` (a smaller run) replaces 10,000, and a fifth of it 2,000.
pub fn run(brokers: &str, duration: f64, clients: Option<usize>) -> (Vec<Row>, Value) {
    let version = centrifugo_version();
    eprintln!("bench: peer: {version}");
    let scale = |n: usize| clients.map_or(n, |c| (c * n / 10_000).max(1));
    // BENCH_PEER_POINTS=2000x100,10000x20: these fan-out points instead,
    // and no idle memory (to measure one point again).
    let chosen: Option<Vec<(usize, u64)>> = std::env::var("BENCH_PEER_POINTS").ok().map(|v| {
        v.split(',')
            .map(|p| {
                p.split_once('x')
                    .and_then(|(c, r)| Some((c.trim().parse().ok()?, r.trim().parse().ok()?)))
                    .unwrap_or_else(|| panic!("BENCH_PEER_POINTS: {p:?} is not CLIENTSxRATE"))
            })
            .collect()
    });
    let mut rows = Vec::new();
    let mut idle_json = Vec::new();
    let idle_transports: &[&str] = if chosen.is_some() {
        &[]
    } else {
        &["ws", "sse"]
    };
    for &transport in idle_transports {
        let h = idle(brokers, Peer::Herald, transport, scale(IDLE));
        let c = idle(brokers, Peer::Centrifugo, transport, scale(IDLE));
        let (hk, ck) = (
            h["rss_kib_per_conn"].as_f64().unwrap_or(f64::NAN),
            c["rss_kib_per_conn"].as_f64().unwrap_or(f64::NAN),
        );
        let n = scale(IDLE);
        rows.push(pair(
            &format!("{n} idle {transport}: connected"),
            h["connected"].as_f64().unwrap_or(0.0),
            c["connected"].as_f64().unwrap_or(0.0),
            ("ge", n as f64),
            "conns",
        ));
        rows.push(pair(
            &format!("{n} idle {transport}: RSS KiB per conn"),
            hk,
            ck,
            ("info", f64::NAN),
            "KiB",
        ));
        rows.push(ratio(
            &format!("{n} idle {transport}: RSS per conn"),
            hk,
            ck,
        ));
        idle_json.push(json!({"transport": transport, "herald": h, "centrifugo": c}));
    }
    // BENCH_PEER_TRANSPORT=sse: the fan-out points over SSE instead.
    let transport = std::env::var("BENCH_PEER_TRANSPORT").unwrap_or_else(|_| "ws".into());
    let mut points = Vec::new();
    for (n, rate) in chosen.unwrap_or_else(|| POINTS.to_vec()) {
        let n = scale(n);
        let (h, hj) = fanout(brokers, Peer::Herald, &transport, n, rate, duration);
        let (c, cj) = fanout(brokers, Peer::Centrifugo, &transport, n, rate, duration);
        let at = format!("{n} {transport} × {rate}/s");
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        rows.push(pair(
            &format!("{at}: clients connected"),
            f(&hj, "clients"),
            f(&cj, "clients"),
            ("ge", n as f64),
            "conns",
        ));
        rows.push(pair(
            &format!("{at}: deliveries/s"),
            f(&hj, "deliveries_per_s"),
            f(&cj, "deliveries_per_s"),
            ("info", f64::NAN),
            "/s",
        ));
        let (hc, cc) = (f(&hj, "cpu_us_per_delivery"), f(&cj, "cpu_us_per_delivery"));
        rows.push(pair(
            &format!("{at}: CPU µs per delivery"),
            hc,
            cc,
            ("info", f64::NAN),
            "µs",
        ));
        rows.push(ratio(&format!("{at}: CPU per delivery"), hc, cc));
        rows.push(pair(
            &format!("{at}: p50 ms"),
            h.p50,
            c.p50,
            ("info", f64::NAN),
            "ms",
        ));
        rows.push(pair(
            &format!("{at}: p99 ms"),
            h.p99,
            c.p99,
            ("info", f64::NAN),
            "ms",
        ));
        rows.push(ratio(&format!("{at}: p99"), h.p99, c.p99));
        rows.push(pair(
            &format!("{at}: lost"),
            h.lost as f64,
            c.lost as f64,
            ("le", 0.0),
            "records",
        ));
        rows.push(pair(
            &format!("{at}: duplicated"),
            h.duplicates as f64,
            c.duplicates as f64,
            ("le", 0.0),
            "records",
        ));
        points.push(json!({"clients": n, "rate": rate, "herald": hj, "centrifugo": cj}));
    }
    let details = json!({
        "centrifugo_version": version,
        "centrifugo_config": base_config(),
        "centrifugo_config_file": std::env::var("BENCH_CENTRIFUGO_CONFIG").unwrap_or_else(|_| "bench/peer/centrifugo.json".into()),
        "centrifugo_config_note": "bench/peer/centrifugo.json; per run: http_server.port, consumers[0].kafka.brokers, .topics and .consumer_group",
        "herald_config": "suite.rs HeraldProc: [kafka] start = \"latest\", [limits] max_connections = 19500, one route (topic → channel bench), every other key its default (history on: 1000 messages per channel)",
        "kafka_header": {CHANNELS_HEADER: CHANNEL},
        "idle": idle_json,
        "fanout": points,
    });
    (rows, details)
}

/// A figure for both: Herald's in `measured`, Centrifugo's in the summary's
/// floor column; `target` (cmp, value) holds for Herald.
fn pair(metric: &str, herald: f64, centrifugo: f64, target: (&str, f64), unit: &str) -> Row {
    row(
        "peer",
        &format!("{metric} (Herald; floor column: Centrifugo)"),
        herald,
        target.0,
        target.1,
        Some(centrifugo),
        unit,
    )
}

/// Herald's figure ÷ Centrifugo's (below 1: Herald's is smaller).
fn ratio(metric: &str, herald: f64, centrifugo: f64) -> Row {
    row(
        "peer",
        &format!("{metric}, Herald ÷ Centrifugo"),
        herald / centrifugo,
        "info",
        f64::NAN,
        None,
        "×",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_config_keeps_the_checked_in_one_but_broker_topic_group_port() {
        let base: Value = serde_json::from_str(CENTRIFUGO_CONFIG).unwrap();
        let mut c = centrifugo_config(base.clone(), "127.0.0.1:19092", "bench-peer-fan-1", 40123);
        assert_eq!(c["http_server"]["port"], 40123);
        let kafka = &c["consumers"][0]["kafka"];
        assert_eq!(kafka["brokers"], json!(["127.0.0.1:19092"]));
        assert_eq!(kafka["topics"], json!(["bench-peer-fan-1"]));
        assert_eq!(
            kafka["consumer_group"],
            json!("herald-bench-peer-bench-peer-fan-1")
        );
        assert_eq!(
            kafka["publication_data_mode"],
            json!({"enabled": true, "channels_header": CHANNELS_HEADER})
        );
        // Everything else as checked in.
        c["http_server"] = base["http_server"].clone();
        c["consumers"] = base["consumers"].clone();
        assert_eq!(c, base);
        assert_eq!(base["channel"]["without_namespace"]["history_size"], 0);
        assert_eq!(base["uni_websocket"]["enabled"], true);
        assert_eq!(base["uni_sse"]["enabled"], true);
    }

    #[test]
    fn probe_records_are_100_bytes_and_never_counted() {
        for k in [0, 7, 123_456] {
            let p = probe_payload(k);
            assert_eq!(p.len(), 100, "{p}");
            assert!(!p.contains("{\"t\":"));
            serde_json::from_str::<Value>(&p).unwrap();
        }
        assert_eq!(crate::payload(1).len(), 100);
    }
}
