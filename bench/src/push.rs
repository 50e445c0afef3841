//! The `push` scenario (issue 12): Web Push from Herald to a local push
//! service (`herald-bench push-service`, a process of its own).
//!
//! - **memory**: Herald's RSS with 100,000 subscriptions in its table minus
//!   its RSS with none, the subscriptions written straight to the compacted
//!   subscriptions topic as `StoredSubscription` records;
//! - **one node, saturated**: 1,000 subscriptions over [`CHANNELS`]
//!   channels, registered through `POST /push/subscriptions`, and records
//!   produced so that [`BACKLOG`] pushes are always waiting: pushes/s,
//!   Herald's CPU per push, the push service's own;
//! - **one node, paced** at [`PACED_RATE`] pushes/s: latency from the
//!   record's send time to the push service receiving the push, and CPU
//!   per push at that rate;
//! - **two nodes** in one `push.group_id`, saturated: pushes/s in all, and
//!   that each (record, subscription) is pushed exactly once;
//! - **P2 beside push**: P2 (10,000 WebSocket clients, 50 records/s) as
//!   is, then on a Herald that also pushes [`PACED_RATE`] pushes/s from a
//!   second routed topic: Herald's CPU per WebSocket delivery both ways.
//!
//! Every push is matched to its record by the `Topic` header, which Herald
//! derives from the record's topic, partition and offset: the records are
//! read back from Kafka after each run and the header recomputed, so the
//! push service never decrypts (the tests' push service does).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::elliptic_curve::rand_core::{OsRng, RngCore};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::hist::Hist;
use crate::suite::{
    HeraldProc, Row, cpu_s, create_topic, exe_dir, herald_fanout, herald_fanout_beside, http_get,
    http_post, rss_kib,
};

/// Subscriptions of the throughput runs.
const SUBSCRIPTIONS: usize = 1000;
/// Channels they are spread over (`push.c0` …), one per partition of the
/// push topic, so each node of two holds half the channels. Each record
/// is pushed to `SUBSCRIPTIONS / CHANNELS` = 250 subscriptions.
const CHANNELS: usize = 4;
const PARTITIONS: i32 = CHANNELS as i32;
const PER_RECORD: u64 = (SUBSCRIPTIONS / CHANNELS) as u64;
/// Subscriptions of the memory figure.
const MEMORY_SUBSCRIPTIONS: usize = 100_000;
/// Endpoint length: an FCM endpoint is ~190 bytes
/// (`https://fcm.googleapis.com/fcm/send/` and a 152-character token), so
/// the table holds what a real one would.
const ENDPOINT_BYTES: usize = 190;
/// Pushes produced and not yet accepted, kept this high in the saturated
/// runs: 80 records, seconds of work for Herald, so it never waits for
/// Kafka; below `push.max_pending` (100,000), so it never stops reading,
/// and below `max_queued_per_service` as configured here (100,000; the
/// default 10,000 would drop pushes, since every subscription here shares
/// one push service).
const BACKLOG: u64 = 20_000;
/// The paced runs, alone and beside P2: 2 records/s of 250 pushes each,
/// about a third of a core at Herald's ~550 µs per push, so that beside
/// P2 (1.2 cores of Herald's) the two shared cores are not overcommitted.
const PACED_RATE: u64 = 500;
/// The saturated runs' rate is read after this share of their duration.
const WARM_UP: f64 = 0.25;
/// Longest wait for Herald to push everything produced.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- the push service

/// A running `herald-bench push-service`; killed when dropped.
struct Service {
    child: Child,
    /// The service exits when this closes, also when the suite dies.
    _stdin: ChildStdin,
    addr: String,
}

struct Arrivals {
    topics: Vec<String>,
    /// (subscription, index into `topics`, unix µs).
    arrivals: Vec<(u32, u32, u64)>,
}

impl Service {
    fn start() -> Service {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .arg("push-service")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn push service");
        let stdin = child.stdin.take().expect("stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("push service listen line");
        let v: Value = serde_json::from_str(&line).expect("push service json");
        let addr = v["listen"].as_str().expect("listen").to_owned();
        Service {
            child,
            _stdin: stdin,
            addr,
        }
    }

    fn stats(&self) -> Value {
        let text = http_get(&self.addr, "/stats");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or(Value::Null)
    }

    fn accepted(&self) -> u64 {
        self.stats()["accepted"].as_u64().unwrap_or(0)
    }

    fn reset(&self) {
        assert_eq!(
            http_post(&self.addr, "/reset", "").0,
            204,
            "push service reset"
        );
    }

    fn arrivals(&self) -> Arrivals {
        let text = http_get(&self.addr, "/arrivals");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: Value = serde_json::from_str(body).expect("arrivals json");
        Arrivals {
            topics: serde_json::from_value(v["topics"].clone()).expect("topics"),
            arrivals: serde_json::from_value(v["arrivals"].clone()).expect("arrivals"),
        }
    }

    fn cpu_s(&self) -> f64 {
        cpu_s(self.child.id())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- deployment

/// One deployment's names and key: the push topic (routed to
/// `push.{key}`), the subscriptions topic, the group, the VAPID key.
struct Deployment {
    topic: String,
    subscriptions_topic: String,
    group: String,
    key_file: PathBuf,
}

impl Deployment {
    fn new(brokers: &str, prefix: &str) -> Deployment {
        let topic = crate::topic_name(prefix);
        create_topic(brokers, &topic, PARTITIONS);
        let dir = std::env::temp_dir().join(crate::topic_name("herald-bench-push"));
        std::fs::create_dir_all(&dir).expect("key dir");
        let key_file = dir.join("vapid.pem");
        let out = Command::new(exe_dir().join("herald"))
            .args(["push", "keygen", "--out"])
            .arg(&key_file)
            .output()
            .expect("run herald push keygen");
        assert!(
            out.status.success(),
            "herald push keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Deployment {
            subscriptions_topic: crate::topic_name(&format!("{prefix}-subs")),
            group: crate::topic_name(&format!("{prefix}-group")),
            topic,
            key_file,
        }
    }

    /// `[push]` and the push topic's route.
    fn tables(&self) -> String {
        format!(
            "[push]\nvapid_private_key_file = \"{key}\"\nvapid_subject = \"mailto:bench@herald.invalid\"\n\
             subscriptions_topic = \"{subs}\"\ngroup_id = \"{group}\"\n\
             allowed_endpoint_hosts = [\"127.0.0.1\"]\nallow_http_endpoints = true\n\
             max_queued_per_service = 100000\n\n\
             [[route]]\ntopic = \"{topic}\"\nchannel = \"push.{{key}}\"\n",
            key = self.key_file.display(),
            subs = self.subscriptions_topic,
            group = self.group,
            topic = self.topic,
        )
    }

    fn start(&self, brokers: &str) -> HeraldProc {
        HeraldProc::start_with(brokers, "latest", "", &self.tables())
    }
}

/// One subscription as a browser would send it.
struct BrowserSub {
    endpoint: String,
    p256dh: String,
    auth: String,
}

/// Subscription `i` is on channel `push.c{i % CHANNELS}`.
fn channel_of(i: usize) -> usize {
    i % CHANNELS
}

/// `n` subscriptions with endpoints at `service` (`/push/<i>/<token>`,
/// [`ENDPOINT_BYTES`] long), each with its own P-256 key pair and auth
/// secret; made on two threads (a key pair is ~100 µs).
fn browser_subs(service: &str, n: usize) -> Vec<BrowserSub> {
    let make = |range: std::ops::Range<usize>| {
        range
            .map(|i| {
                let mut endpoint = format!("http://{service}/push/{i}/");
                let token = URL_SAFE_NO_PAD.encode(Sha256::digest(i.to_le_bytes()));
                while endpoint.len() < ENDPOINT_BYTES {
                    endpoint.push_str(&token);
                }
                endpoint.truncate(ENDPOINT_BYTES);
                let secret = p256::SecretKey::random(&mut OsRng);
                let point = secret.public_key().to_encoded_point(false);
                let mut auth = [0u8; 16];
                OsRng.fill_bytes(&mut auth);
                BrowserSub {
                    endpoint,
                    p256dh: URL_SAFE_NO_PAD.encode(point.as_bytes()),
                    auth: URL_SAFE_NO_PAD.encode(auth),
                }
            })
            .collect::<Vec<_>>()
    };
    let half = n / 2;
    std::thread::scope(|s| {
        let first = s.spawn(|| make(0..half));
        let mut second = make(half..n);
        let mut all = first.join().expect("key pairs");
        all.append(&mut second);
        all
    })
}

/// Registers every subscription through `POST /push/subscriptions`, eight
/// at a time (each waits for Kafka's acknowledgement).
fn register(herald: &HeraldProc, subs: &[BrowserSub]) {
    std::thread::scope(|s| {
        for (k, chunk) in subs.chunks(subs.len().div_ceil(8)).enumerate() {
            let base = k * subs.len().div_ceil(8);
            s.spawn(move || {
                for (j, sub) in chunk.iter().enumerate() {
                    let body = json!({
                        "subscription": {"endpoint": sub.endpoint,
                            "keys": {"p256dh": sub.p256dh, "auth": sub.auth}},
                        "channels": [format!("push.c{}", channel_of(base + j))],
                    });
                    let (status, answer) =
                        http_post(&herald.addr, "/push/subscriptions", &body.to_string());
                    assert_eq!(status, 201, "registering a subscription: {answer}");
                }
            });
        }
    });
}

/// Waits until `nodes` hold `subscriptions` each and share the
/// `partitions` of the routed topics, every node holding some.
fn wait_push_ready(nodes: &[&HeraldProc], subscriptions: usize, partitions: u64) {
    let started = Instant::now();
    loop {
        let assigned: Vec<u64> = nodes
            .iter()
            .map(|h| h.metric("herald_push_assigned_partitions"))
            .collect();
        let loaded = nodes
            .iter()
            .all(|h| h.metric("herald_push_subscriptions ") == subscriptions as u64);
        if loaded && assigned.iter().sum::<u64>() == partitions && !assigned.contains(&0) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "push not ready: partitions {assigned:?}, subscriptions {:?}",
            nodes
                .iter()
                .map(|h| h.metric("herald_push_subscriptions "))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `herald_push_sent_total` by `result`.
fn sent_by_result(herald: &HeraldProc) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in http_get(&herald.addr, "/metrics").lines() {
        if let Some(rest) = line.strip_prefix("herald_push_sent_total{")
            && let Some(result) = rest.split("result=\"").nth(1)
            && let Some(result) = result.split('"').next()
            && let Some(v) = line
                .rsplit_once(' ')
                .and_then(|(_, v)| v.parse::<f64>().ok())
        {
            *out.entry(result.to_owned()).or_default() += v as u64;
        }
    }
    out
}

fn minus(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    a.iter()
        .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0)))
        .collect()
}

// ---------------------------------------------------------------- records

/// Produces the push topic's records: number `n` keyed `c{n % CHANNELS}`
/// (channel `push.c…`) to partition `n % CHANNELS`, the 100-byte payload
/// of the other scenarios with its send time `t`.
struct PushProducer {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
    next: u64,
}

impl PushProducer {
    fn new(brokers: &str, topic: &str) -> PushProducer {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        // Metadata and connection before the first timed record; its
        // channel (`push.warmup`) has no subscriptions.
        producer
            .send(
                BaseRecord::to(topic)
                    .payload("{\"warmup\":1}")
                    .key("warmup"),
            )
            .map_err(|(e, _)| e)
            .expect("warm-up record");
        producer.flush(Duration::from_secs(30)).expect("flush");
        PushProducer {
            producer,
            topic: topic.to_owned(),
            next: 0,
        }
    }

    fn send(&mut self) {
        let n = self.next;
        self.next += 1;
        let channel = n as usize % CHANNELS;
        let payload = crate::payload(n);
        let key = format!("c{channel}");
        let mut record = BaseRecord::to(&self.topic)
            .partition(channel as i32)
            .payload(&payload)
            .key(&key);
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((_, r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(5));
                }
            }
        }
    }

    fn flush(&self) {
        self.producer.flush(Duration::from_secs(30)).expect("flush");
    }

    /// `rate` pushes/s (`rate / PER_RECORD` records/s) for `duration` s.
    fn paced(&mut self, rate: u64, duration: f64) {
        let records = (rate as f64 * duration / PER_RECORD as f64).round() as u64;
        let every = Duration::from_secs_f64(PER_RECORD as f64 / rate as f64);
        let started = Instant::now();
        for i in 0..records {
            let at = started + every * i as u32;
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            self.send();
        }
        self.flush();
    }
}

/// A record read back from the push topic.
struct Sent {
    n: u64,
    t_us: u64,
    channel: usize,
}

/// Every record of `topic`, by the `Topic` header Herald sends with its
/// pushes (base64url of the first 24 bytes of SHA-256 of
/// `topic/partition/offset`, src/push/sender.rs).
fn read_back(brokers: &str, topic: &str) -> HashMap<String, Sent> {
    let consumer: BaseConsumer = crate::consumer_config(brokers).create().expect("consumer");
    consumer
        .assign(&crate::assignment(topic, PARTITIONS))
        .expect("assign");
    let mut left: HashMap<i32, i64> = (0..PARTITIONS)
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (p, high)
        })
        .filter(|(_, high)| *high > 0)
        .collect();
    let mut out = HashMap::new();
    let started = Instant::now();
    while !left.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "reading back {topic}"
        );
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        if left
            .get(&m.partition())
            .is_some_and(|h| m.offset() + 1 >= *h)
        {
            left.remove(&m.partition());
        }
        let v: Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
        let (Some(n), Some(t_us)) = (v["n"].as_u64(), v["t"].as_u64()) else {
            continue; // the warm-up record
        };
        let header = Sha256::digest(format!("{topic}/{}/{}", m.partition(), m.offset()));
        out.insert(
            URL_SAFE_NO_PAD.encode(&header[..24]),
            Sent {
                n,
                t_us,
                channel: n as usize % CHANNELS,
            },
        );
    }
    out
}

/// What the push service received in one run, against what was produced.
struct Check {
    /// Pushes of a (record, subscription) already pushed.
    duplicates: u64,
    /// (record, subscription) pairs of the run never pushed.
    lost: u64,
    /// Pushes to a subscription not on the record's channel, or of a
    /// record that is not in the topic or not of this run.
    stray: u64,
    /// Record send time → push received.
    hist: Hist,
}

/// Matches `arrivals` to the records numbered `records` of `topic`.
fn check(brokers: &str, topic: &str, records: std::ops::Range<u64>, arrivals: &Arrivals) -> Check {
    let sent = read_back(brokers, topic);
    let mut seen: HashSet<(u32, u64)> = HashSet::new();
    let mut c = Check {
        duplicates: 0,
        lost: 0,
        stray: 0,
        hist: Hist::default(),
    };
    for &(sub, topic_index, at_us) in &arrivals.arrivals {
        let record = sent.get(&arrivals.topics[topic_index as usize]);
        let Some(record) =
            record.filter(|r| records.contains(&r.n) && channel_of(sub as usize) == r.channel)
        else {
            c.stray += 1;
            continue;
        };
        if !seen.insert((sub, record.n)) {
            c.duplicates += 1;
            continue;
        }
        c.hist.record(at_us.saturating_sub(record.t_us));
    }
    c.lost = (records.end - records.start) * PER_RECORD - seen.len() as u64;
    c
}

// ---------------------------------------------------------------- runs

/// CPU seconds and pushes accepted at one instant of a run.
struct Sample {
    at: Instant,
    accepted: u64,
    herald_cpu: Vec<f64>,
    service_cpu: f64,
    machine_cpu: f64,
}

/// CPU seconds every process of the machine has used (`/proc/stat`):
/// what others took from the two cores shows in how much more it is than
/// Herald's and the service's.
fn machine_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle, iowait.
    let busy: f64 =
        ticks.iter().sum::<f64>() - ticks.get(3).unwrap_or(&0.0) - ticks.get(4).unwrap_or(&0.0);
    busy / 100.0
}

/// The 1-minute load average, for telling a disturbed run.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

impl Sample {
    fn take(service: &Service, nodes: &[&HeraldProc]) -> Sample {
        Sample {
            at: Instant::now(),
            accepted: service.accepted(),
            herald_cpu: nodes.iter().map(|h| h.cpu_s()).collect(),
            service_cpu: service.cpu_s(),
            machine_cpu: machine_cpu_s(),
        }
    }

    /// Pushes/s and CPU µs per push (Herald's, every node; the service's)
    /// from `self` to `later`.
    fn to(&self, later: &Sample) -> Value {
        let pushes = (later.accepted - self.accepted).max(1) as f64;
        let herald: Vec<f64> = later
            .herald_cpu
            .iter()
            .zip(&self.herald_cpu)
            .map(|(b, a)| b - a)
            .collect();
        let total: f64 = herald.iter().sum();
        let seconds = (later.at - self.at).as_secs_f64();
        json!({
            "seconds": seconds,
            "pushes": later.accepted - self.accepted,
            "pushes_per_s": pushes / seconds,
            "herald_cpu_s": herald,
            "herald_cores": total / seconds,
            "herald_cpu_us_per_push": 1e6 * total / pushes,
            "service_cpu_us_per_push": 1e6 * (later.service_cpu - self.service_cpu) / pushes,
            "service_cores": (later.service_cpu - self.service_cpu) / seconds,
            "machine_cores": (later.machine_cpu - self.machine_cpu) / seconds,
            "load_average": load_average(),
        })
    }
}

/// Waits until the service has accepted `expected` pushes since its reset.
fn drain(service: &Service, expected: u64) -> bool {
    let started = Instant::now();
    while started.elapsed() < DRAIN_TIMEOUT {
        if service.accepted() >= expected {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// What a run's pushes came to: the service's tally, Herald's
/// `herald_push_sent_total` by result per node, and the check.
fn outcome(
    brokers: &str,
    topic: &str,
    service: &Service,
    nodes: &[&HeraldProc],
    sent_before: &[BTreeMap<String, u64>],
    records: std::ops::Range<u64>,
    drained: bool,
) -> (Check, Value) {
    let arrivals = service.arrivals();
    let c = check(brokers, topic, records.clone(), &arrivals);
    let sent: Vec<_> = nodes
        .iter()
        .zip(sent_before)
        .map(|(h, before)| minus(&sent_by_result(h), before))
        .collect();
    let json = json!({
        "records": records.end - records.start,
        "expected_pushes": (records.end - records.start) * PER_RECORD,
        "service": service.stats(),
        "drained": drained,
        "herald_push_sent_total_by_node": sent,
        "duplicates": c.duplicates, "lost": c.lost, "stray": c.stray,
        "latency_ms": {"p50": c.hist.quantile_ms(0.5), "p99": c.hist.quantile_ms(0.99),
            "p999": c.hist.quantile_ms(0.999), "max": c.hist.quantile_ms(1.0)},
    });
    (c, json)
}

/// Records produced so that [`BACKLOG`] pushes are always waiting, for
/// `duration` s; the rate and CPU are read from [`WARM_UP`] on, then
/// everything is left to drain and checked.
fn saturated(
    brokers: &str,
    d: &Deployment,
    service: &Service,
    nodes: &[&HeraldProc],
    producer: &mut PushProducer,
    duration: f64,
) -> (Check, Value) {
    service.reset();
    let sent_before: Vec<_> = nodes.iter().map(|h| sent_by_result(h)).collect();
    let first = producer.next;
    let started = Instant::now();
    let mut warm: Option<Sample> = None;
    loop {
        let elapsed = started.elapsed().as_secs_f64();
        if elapsed >= duration {
            break;
        }
        if warm.is_none() && elapsed >= WARM_UP * duration {
            warm = Some(Sample::take(service, nodes));
        }
        let accepted = service.accepted();
        while (producer.next - first) * PER_RECORD < accepted + BACKLOG {
            producer.send();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let end = Sample::take(service, nodes);
    let steady = warm.expect("a warm-up sample").to(&end);
    producer.flush();
    let records = first..producer.next;
    let drained = drain(service, (records.end - records.start) * PER_RECORD);
    let (c, mut json) = outcome(
        brokers,
        &d.topic,
        service,
        nodes,
        &sent_before,
        records,
        drained,
    );
    json["steady"] = steady;
    json["note"] = "latency is bounded by the backlog kept waiting, not Herald's".into();
    (c, json)
}

/// [`PACED_RATE`] pushes/s for `duration` s, drained and checked; CPU from
/// the first record to the last push.
fn paced(
    brokers: &str,
    d: &Deployment,
    service: &Service,
    herald: &HeraldProc,
    producer: &mut PushProducer,
    duration: f64,
) -> (Check, Value) {
    service.reset();
    // What Herald costs doing nothing (metadata, statistics, polls), to
    // weigh the CPU per push below, which includes it.
    let idle = Sample::take(service, &[herald]);
    std::thread::sleep(Duration::from_secs(3));
    let idle = idle.to(&Sample::take(service, &[herald]));
    let sent_before = [sent_by_result(herald)];
    let first = producer.next;
    let start = Sample::take(service, &[herald]);
    producer.paced(PACED_RATE, duration);
    let records = first..producer.next;
    let drained = drain(service, (records.end - records.start) * PER_RECORD);
    let end = Sample::take(service, &[herald]);
    let (c, mut json) = outcome(
        brokers,
        &d.topic,
        service,
        &[herald],
        &sent_before,
        records,
        drained,
    );
    json["rate"] = PACED_RATE.into();
    json["run"] = start.to(&end);
    json["herald_idle_cores"] = idle["herald_cores"].clone();
    (c, json)
}

/// Herald's RSS with [`MEMORY_SUBSCRIPTIONS`] subscriptions in its table
/// and with none, twice each, alternating.
fn memory(brokers: &str) -> Value {
    let mut d = Deployment::new(brokers, "pushmem");
    let full_topic = d.subscriptions_topic.clone();
    let made = Instant::now();
    let subs = browser_subs("127.0.0.1:9", MEMORY_SUBSCRIPTIONS);
    write_subscriptions(brokers, &full_topic, &subs);
    eprintln!(
        "bench: {MEMORY_SUBSCRIPTIONS} subscriptions written to {full_topic} ({:.1}s)",
        made.elapsed().as_secs_f64()
    );
    let mut rounds = Vec::new();
    for _ in 0..2 {
        let mut round = serde_json::Map::new();
        for (name, count) in [("empty", 0), ("full", MEMORY_SUBSCRIPTIONS)] {
            d.subscriptions_topic = if count == 0 {
                crate::topic_name("pushmem-none")
            } else {
                full_topic.clone()
            };
            d.group = crate::topic_name("pushmem-group");
            let herald = d.start(brokers);
            let loading = Instant::now();
            wait_push_ready(&[&herald], count, PARTITIONS as u64);
            let loaded_s = loading.elapsed().as_secs_f64();
            // Whatever the load left in flight settles first.
            std::thread::sleep(Duration::from_secs(2));
            let rss = rss_kib(herald.pid());
            herald.stop();
            eprintln!("bench: push memory: {count} subscriptions: RSS {rss} KiB");
            round.insert(
                name.into(),
                json!({"subscriptions": count, "rss_kib": rss, "loaded_s": loaded_s}),
            );
        }
        let bytes = 1024.0
            * (round["full"]["rss_kib"].as_f64().unwrap_or(f64::NAN)
                - round["empty"]["rss_kib"].as_f64().unwrap_or(f64::NAN))
            / MEMORY_SUBSCRIPTIONS as f64;
        round.insert("bytes_per_subscription".into(), bytes.into());
        rounds.push(Value::Object(round));
    }
    json!({"endpoint_bytes": ENDPOINT_BYTES, "rounds": rounds})
}

/// Writes `subs` to a new compacted `topic` as Herald's registrations do:
/// key the hex of the first 16 bytes of SHA-256 of the endpoint, value the
/// `StoredSubscription` JSON (src/push/store.rs).
fn write_subscriptions(brokers: &str, topic: &str, subs: &[BrowserSub]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .expect("admin");
        let new =
            NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
        for r in admin
            .create_topics(&[new], &AdminOptions::new())
            .await
            .expect("create topic")
        {
            r.expect("subscriptions topic created");
        }
    });
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let now_ms = crate::client::unix_us() / 1000;
    for (i, sub) in subs.iter().enumerate() {
        let digest = Sha256::digest(sub.endpoint.as_bytes());
        let key: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let value = json!({
            "endpoint": sub.endpoint,
            "keys": {"p256dh": sub.p256dh, "auth": sub.auth},
            "channels": [format!("push.c{}", channel_of(i))],
            "registered_ms": now_ms,
        })
        .to_string();
        crate::send_waiting(&producer, BaseRecord::to(topic).payload(&value).key(&key));
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// Web Push beside another scenario on the same Herald
/// ([`herald_fanout_beside`]): its own push topic, push service and
/// [`SUBSCRIPTIONS`] subscriptions, pushed at [`PACED_RATE`].
pub struct Beside {
    brokers: String,
    d: Deployment,
    service: Service,
    subs: Vec<BrowserSub>,
}

impl Beside {
    fn new(brokers: &str) -> Beside {
        let d = Deployment::new(brokers, "pushbeside");
        let service = Service::start();
        let subs = browser_subs(&service.addr, SUBSCRIPTIONS);
        Beside {
            brokers: brokers.to_owned(),
            d,
            service,
            subs,
        }
    }

    pub fn tables(&self) -> String {
        self.d.tables()
    }

    /// Registers the subscriptions on `herald` and waits until it pushes.
    pub fn ready(&self, herald: &HeraldProc) {
        register(herald, &self.subs);
        // The push topic's partitions and the other scenario's one.
        wait_push_ready(&[herald], SUBSCRIPTIONS, PARTITIONS as u64 + 1);
        self.service.reset();
    }

    /// Produces for `duration` s on a thread; it returns the records'
    /// numbers.
    pub fn start(&self, duration: f64) -> std::thread::JoinHandle<std::ops::Range<u64>> {
        let (brokers, topic) = (self.brokers.clone(), self.d.topic.clone());
        std::thread::spawn(move || {
            let mut producer = PushProducer::new(&brokers, &topic);
            producer.paced(PACED_RATE, duration);
            0..producer.next
        })
    }

    /// Waits for the pushes of `records` and checks them.
    pub fn finish(&self, herald: &HeraldProc, records: std::ops::Range<u64>) -> Value {
        let drained = drain(&self.service, (records.end - records.start) * PER_RECORD);
        let (_, mut json) = outcome(
            &self.brokers,
            &self.d.topic,
            &self.service,
            &[herald],
            &[BTreeMap::new()],
            records,
            drained,
        );
        json["rate"] = PACED_RATE.into();
        json
    }
}

fn info(metric: &str, measured: f64, unit: &str) -> Row {
    crate::suite::row("push", metric, measured, "info", f64::NAN, None, unit)
}

fn exact(metric: &str, measured: u64) -> Row {
    crate::suite::row("push", metric, measured as f64, "le", 0.0, None, "pushes")
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The whole scenario.
pub fn run(brokers: &str, duration: f64) -> (Vec<Row>, Value) {
    let mut rows = Vec::new();

    // Memory first: nothing else of the run is in the broker's page cache
    // or the machine's memory yet.
    let mem = memory(brokers);
    for (i, round) in mem["rounds"].as_array().into_iter().flatten().enumerate() {
        rows.push(info(
            &format!("RSS bytes per subscription (100k), round {}", i + 1),
            f(&round["bytes_per_subscription"]),
            "B",
        ));
    }

    // One node: saturated, then paced.
    let d = Deployment::new(brokers, "push1");
    let service = Service::start();
    let herald = d.start(brokers);
    let subs = browser_subs(&service.addr, SUBSCRIPTIONS);
    let registering = Instant::now();
    register(&herald, &subs);
    let register_s = registering.elapsed().as_secs_f64();
    wait_push_ready(&[&herald], SUBSCRIPTIONS, PARTITIONS as u64);
    eprintln!(
        "bench: push: {SUBSCRIPTIONS} subscriptions registered ({register_s:.1}s); saturating one node"
    );
    let mut producer = PushProducer::new(brokers, &d.topic);
    let (sat1, sat1_json) = saturated(brokers, &d, &service, &[&herald], &mut producer, duration);
    eprintln!("bench: push: one node saturated: {}", sat1_json["steady"]);
    let (paced1, paced1_json) = paced(brokers, &d, &service, &herald, &mut producer, duration);
    eprintln!(
        "bench: push: one node at {PACED_RATE}/s: {}",
        paced1_json["latency_ms"]
    );
    herald.stop();
    drop(service);

    // Two nodes in one group.
    let d2 = Deployment::new(brokers, "push2");
    let service2 = Service::start();
    let a = d2.start(brokers);
    let b = d2.start(brokers);
    let subs2 = browser_subs(&service2.addr, SUBSCRIPTIONS);
    register(&a, &subs2);
    wait_push_ready(&[&a, &b], SUBSCRIPTIONS, PARTITIONS as u64);
    eprintln!("bench: push: saturating two nodes");
    let mut producer2 = PushProducer::new(brokers, &d2.topic);
    let (sat2, sat2_json) = saturated(brokers, &d2, &service2, &[&a, &b], &mut producer2, duration);
    eprintln!("bench: push: two nodes saturated: {}", sat2_json["steady"]);
    a.stop();
    b.stop();
    drop(service2);

    // P2 as is, then beside push.
    eprintln!("bench: push: P2 as is");
    let (m0, t0) = (machine_cpu_s(), Instant::now());
    let mut p2 = herald_fanout(brokers, "ws", 10_000, 50, duration);
    p2.json["machine_cores"] = ((machine_cpu_s() - m0) / t0.elapsed().as_secs_f64()).into();
    p2.json["load_average"] = load_average().into();
    eprintln!("bench: push: P2 beside {PACED_RATE} pushes/s");
    let beside = Beside::new(brokers);
    let (m0, t0) = (machine_cpu_s(), Instant::now());
    let mut p2_push = herald_fanout_beside(brokers, "ws", 10_000, 50, duration, Some(&beside));
    p2_push.json["machine_cores"] = ((machine_cpu_s() - m0) / t0.elapsed().as_secs_f64()).into();
    p2_push.json["load_average"] = load_average().into();
    drop(beside);

    let s1 = &sat1_json["steady"];
    let s2 = &sat2_json["steady"];
    let run1 = &paced1_json["run"];
    let p2_cpu = f(&p2.json["cpu_us_per_delivery"]);
    let p2p_cpu = f(&p2_push.json["cpu_us_per_delivery"]);
    // Herald's CPU beside P2 less what the same pushes cost it alone (the
    // paced run, same rate): what is left for the WebSocket path. Not
    // additive on two shared cores: a fan-out that runs later coalesces
    // more records per write and costs less per delivery.
    let beside_push = &p2_push.json["push"];
    let beside_count = |k: &str| beside_push[k].as_u64().unwrap_or(u64::MAX);
    let pushes_beside = p2_push.json["push"]["service"]["accepted"]
        .as_f64()
        .unwrap_or(0.0);
    let p2p_less = 1e6
        * (f(&p2_push.json["herald_cpu_s"])
            - pushes_beside * f(&run1["herald_cpu_us_per_push"]) / 1e6)
        / p2_push.json["received"].as_f64().unwrap_or(1.0);
    rows.extend([
        info("1 node: pushes/s (saturated)", f(&s1["pushes_per_s"]), "/s"),
        info(
            "1 node: Herald CPU µs per push (saturated)",
            f(&s1["herald_cpu_us_per_push"]),
            "µs",
        ),
        info(
            "1 node: Herald cores used (saturated)",
            f(&s1["herald_cores"]),
            "cores",
        ),
        info(
            "1 node: push service CPU µs per push",
            f(&s1["service_cpu_us_per_push"]),
            "µs",
        ),
        info(
            &format!("1 node: Herald CPU µs per push at {PACED_RATE}/s"),
            f(&run1["herald_cpu_us_per_push"]),
            "µs",
        ),
        info(
            &format!("1 node: p50 ms at {PACED_RATE}/s"),
            paced1.hist.quantile_ms(0.5),
            "ms",
        ),
        info(
            &format!("1 node: p99 ms at {PACED_RATE}/s"),
            paced1.hist.quantile_ms(0.99),
            "ms",
        ),
        info(
            "2 nodes: pushes/s (saturated)",
            f(&s2["pushes_per_s"]),
            "/s",
        ),
        info(
            "2 nodes: Herald CPU µs per push",
            f(&s2["herald_cpu_us_per_push"]),
            "µs",
        ),
        info(
            "2 nodes: Herald cores used, both",
            f(&s2["herald_cores"]),
            "cores",
        ),
        exact(
            "lost (every run)",
            sat1.lost + paced1.lost + sat2.lost + beside_count("lost"),
        ),
        exact(
            "duplicated (every run)",
            sat1.duplicates + paced1.duplicates + sat2.duplicates + beside_count("duplicates"),
        ),
        exact(
            "stray (every run)",
            sat1.stray + paced1.stray + sat2.stray + beside_count("stray"),
        ),
        info("P2: CPU µs per delivery", p2_cpu, "µs"),
        info(
            &format!("P2 beside {PACED_RATE} pushes/s: CPU µs per delivery"),
            p2p_cpu,
            "µs",
        ),
        info(
            "P2 beside push: CPU µs per delivery less the pushes' paced cost",
            p2p_less,
            "µs",
        ),
        info("P2: p99 ms", p2.p99, "ms"),
        info("P2 beside push: p99 ms", p2_push.p99, "ms"),
        info(
            "P2 beside push: push p50 ms",
            f(&beside_push["latency_ms"]["p50"]),
            "ms",
        ),
        info(
            "P2 beside push: push p99 ms",
            f(&beside_push["latency_ms"]["p99"]),
            "ms",
        ),
    ]);
    let details = json!({
        "subscriptions": SUBSCRIPTIONS, "channels": CHANNELS, "partitions": PARTITIONS,
        "pushes_per_record": PER_RECORD, "backlog": BACKLOG, "endpoint_bytes": ENDPOINT_BYTES,
        "register_s": register_s,
        "memory": mem,
        "one_node_saturated": sat1_json, "one_node_paced": paced1_json,
        "two_nodes_saturated": sat2_json,
        "p2": p2.json, "p2_beside_push": p2_push.json,
        "p2_cpu_us_per_delivery_less_push": p2p_less,
    });
    (rows, details)
}
