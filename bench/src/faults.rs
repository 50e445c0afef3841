//! `herald-bench suite f1…f4`: Herald under faults at load (issue 13).
//!
//! - **f1** broker restart: WebSocket clients on one node, the broker (one
//!   of this scenario's own, scripts/kafka.sh on a spare port, so the
//!   shared one stays up) stopped for 10 s and started again.
//! - **f2** SIGKILL: two nodes, clients spread over both; one node is
//!   killed, its clients resume on the other, the node is started again
//!   on its port and its clients go back to it.
//! - **f3** soak: clients that stay, clients that churn (connect, resume,
//!   leave, join), 1% slow readers; Herald's RSS and open files.
//! - **f4** slow readers: 1% of the clients stop reading for a while; the
//!   others' p99 against the same run with nobody stalling.
//!
//! Every client checks every record once, in order (one partition, so the
//! order is the producer's), across its reconnects: each one resumes with
//! `cursor=` of the last complete message it got (client.rs).

use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::{Done, unix_us};
use crate::suite::{HeraldProc, Row, Totals, Workers, bench_route, create_topic, row, totals};

/// Produces `n` timestamped 100-byte records at `rate` per second on its
/// own thread; returns each record's send time (unix µs, index `n`).
/// Idempotent: a broker restart makes the producer retry, and without
/// idempotence a retried batch can be written twice — Kafka's duplicate,
/// which the clients would count against Herald.
fn produce_timed(brokers: &str, topic: &str, rate: u64, n: u64) -> JoinHandle<Vec<u64>> {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        // Records produced while the broker is down wait (5 minutes).
        .set("message.timeout.ms", "300000")
        // Back on a restarted broker within a second: librdkafka's default
        // (up to 10 s between tries) made the producer, not Herald, the
        // slow part of F1's recovery.
        .set("reconnect.backoff.max.ms", "1000")
        .create()
        .expect("producer");
    let topic = topic.to_owned();
    std::thread::spawn(move || {
        let mut sent = Vec::with_capacity(n as usize);
        crate::suite::paced(rate, n, |i| {
            sent.push(unix_us());
            let payload = crate::payload(i);
            crate::send_waiting(&producer, BaseRecord::to(&topic).payload(&payload).key("k"));
        });
        producer.flush(Duration::from_secs(300)).expect("flush");
        sent
    })
}

/// When the last client had record `n`, over all workers (0: some never).
fn arrivals(done: &[Done], records: u64) -> Vec<u64> {
    (0..records as usize)
        .map(|n| {
            let at: Vec<u64> = done
                .iter()
                .filter(|d| d.connected > 0)
                .map(|d| d.arrivals.get(n).copied().unwrap_or(0))
                .collect();
            if at.contains(&0) {
                0
            } else {
                at.into_iter().max().unwrap_or(0)
            }
        })
        .collect()
}

/// Seconds from `event_us` until every client had every record sent up to
/// it (∞ when some client never did).
fn caught_up_s(arrived: &[u64], sent: &[u64], event_us: u64) -> f64 {
    let upto = sent.iter().take_while(|&&t| t <= event_us).count();
    if upto == 0 {
        return 0.0;
    }
    let last = &arrived[..upto];
    if last.contains(&0) {
        return f64::INFINITY;
    }
    last.iter()
        .max()
        .copied()
        .unwrap_or(0)
        .saturating_sub(event_us) as f64
        / 1e6
}

/// The worst time a record took to reach its last client (∞ if never).
fn worst_delay_s(arrived: &[u64], sent: &[u64]) -> f64 {
    arrived
        .iter()
        .zip(sent)
        .map(|(&a, &s)| {
            if a == 0 {
                f64::INFINITY
            } else {
                a.saturating_sub(s) as f64 / 1e6
            }
        })
        .fold(0.0, f64::max)
}

/// The exactness rows every fault scenario has.
fn exact_rows(name: &str, t: &Totals, done: &[Done], clients: usize) -> Vec<Row> {
    let out_of_order: u64 = done.iter().map(|d| d.out_of_order).sum();
    let refused: u64 = done.iter().map(|d| d.refused).sum();
    vec![
        row(
            name,
            "clients connected",
            t.connected as f64,
            "ge",
            clients as f64,
            None,
            "conns",
        ),
        row(name, "lost", t.lost as f64, "le", 0.0, None, "records"),
        row(
            name,
            "duplicated",
            t.duplicates as f64,
            "le",
            0.0,
            None,
            "records",
        ),
        row(
            name,
            "out of order",
            out_of_order as f64,
            "le",
            0.0,
            None,
            "records",
        ),
        row(
            name,
            "resumes refused",
            refused as f64,
            "le",
            0.0,
            None,
            "clients",
        ),
    ]
}

/// How the workers' connections ended, summed, and their reconnects.
fn endings(done: &[Done]) -> Value {
    let mut all = std::collections::BTreeMap::<String, u64>::new();
    for d in done {
        for (k, v) in &d.endings {
            *all.entry(k.clone()).or_default() += v;
        }
    }
    json!({"endings": all, "reconnects": done.iter().map(|d| d.reconnects).sum::<u64>(),
        "gaps": done.iter().map(|d| d.gaps).sum::<u64>(),
        "last_errors": done.iter().filter_map(|d| d.last_error.clone()).collect::<Vec<_>>()})
}

// ---------------------------------------------------------------- f1

/// A Kafka broker of this scenario's own (scripts/kafka.sh on a spare
/// port and state directory), stopped and removed on drop.
struct OwnBroker {
    port: u16,
    state: std::path::PathBuf,
}

impl OwnBroker {
    fn start() -> Self {
        // Away from 9092 (the shared broker) and tests/outage.rs's 19000–19799.
        let port = 29_100 + (std::process::id() % 200) as u16 * 2;
        let b = Self {
            port,
            state: std::env::temp_dir().join(format!("herald-bench-f1-{}", std::process::id())),
        };
        b.kafka_sh("start");
        b
    }

    fn kafka_sh(&self, cmd: &str) {
        let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka.sh"))
            .arg(cmd)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", (self.port + 1).to_string())
            .env("KAFKA_STATE_DIR", &self.state)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run scripts/kafka.sh");
        assert!(status.success(), "scripts/kafka.sh {cmd} failed");
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka.sh"))
            .arg("stop")
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_STATE_DIR", &self.state)
            .stdout(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// Seconds of production before a fault, and how long the broker is down.
const BEFORE_FAULT_S: f64 = 10.0;
const OUTAGE_S: f64 = 10.0;

/// F1: `clients` WebSocket clients at `rate` records/s for `duration` s;
/// at 10 s the broker stops, 10 s later it starts again.
/// A figure in seconds, reported with no target to pass or fail.
fn seconds(scenario: &str, metric: &str, measured: f64) -> Row {
    row(scenario, metric, measured, "info", f64::NAN, None, "s")
}

pub fn f1(clients: usize, rate: u64, duration: f64) -> (Vec<Row>, Value) {
    let broker = OwnBroker::start();
    let brokers = broker.bootstrap();
    let topic = crate::topic_name("f1");
    create_topic(&brokers, &topic, 1);
    let herald = HeraldProc::start(&brokers, &topic, "latest", "");
    let records = (rate as f64 * duration).round() as u64;
    let workers = Workers::spawn(
        "ws",
        &herald.addr,
        clients,
        records,
        duration + 120.0,
        &["--arrivals"],
        1,
    );
    eprintln!(
        "bench: f1: {clients} ws clients on Herald ({:.1}s); {records} records at {rate}/s, broker down {BEFORE_FAULT_S}–{} s",
        workers.connect_span_s(),
        BEFORE_FAULT_S + OUTAGE_S
    );
    let t0 = Instant::now();
    let producing = produce_timed(&brokers, &topic, rate, records);
    sleep_until(t0 + Duration::from_secs_f64(BEFORE_FAULT_S));
    let stop_us = unix_us();
    broker.kafka_sh("stop");
    let stopped_us = unix_us();
    sleep_until(t0 + Duration::from_secs_f64(BEFORE_FAULT_S + OUTAGE_S));
    let restart_us = unix_us();
    let upto = (((restart_us - stop_us) as f64 / 1e6 + BEFORE_FAULT_S) * rate as f64) as u64;
    broker.kafka_sh("start");
    let broker_ready_us = unix_us();
    let in_kafka = watermark_reaches(&brokers, &topic, upto.min(records));
    let ingested = consumed_reaches(&herald.addr, upto.min(records));
    let sent = producing.join().expect("producer");
    let in_kafka_us = in_kafka.join().expect("watermark");
    let ingested_us = ingested.join().expect("ingest metric");
    let done = workers.finish();
    let rss = herald.rss_kib();
    herald.stop();
    drop(broker);
    let t = totals(&done);
    let arrived = arrivals(&done, records);
    let recovery = caught_up_s(&arrived, &sent, restart_us);
    let worst = worst_delay_s(&arrived, &sent);
    let during = sent
        .iter()
        .filter(|&&s| s > stop_us && s <= restart_us)
        .count();
    let mut rows = exact_rows("f1", &t, &done, clients);
    rows.push(seconds(
        "f1",
        "broker start s (start → ready)",
        (broker_ready_us - restart_us) as f64 / 1e6,
    ));
    rows.push(seconds(
        "f1",
        "producer s (broker start → records in Kafka)",
        in_kafka_us.saturating_sub(restart_us) as f64 / 1e6,
    ));
    rows.push(seconds(
        "f1",
        "ingest s (broker start → Herald read them)",
        ingested_us.saturating_sub(restart_us) as f64 / 1e6,
    ));
    rows.push(seconds(
        "f1",
        "recovery s (broker start → all caught up)",
        recovery,
    ));
    rows.push(seconds("f1", "worst record delay s", worst));
    let details = json!({
        "clients": t.connected, "rate": rate, "records": records, "duration_s": duration,
        "records_sent_while_down": during, "broker_stop_s": (stopped_us - stop_us) as f64 / 1e6,
        "broker_start_s": (broker_ready_us - restart_us) as f64 / 1e6, "recovery_s": recovery,
        "records_in_kafka_s": in_kafka_us.saturating_sub(restart_us) as f64 / 1e6,
        "herald_ingested_s": ingested_us.saturating_sub(restart_us) as f64 / 1e6,
        "records_before_restart": upto,
        "worst_record_delay_s": worst, "received": t.received, "distinct": t.distinct,
        "complete_clients": t.complete, "herald_rss_kib_end": rss,
        "p50_ms": t.hist.quantile_ms(0.5), "p99_ms": t.hist.quantile_ms(0.99),
        "connections": endings(&done),
    });
    (rows, details)
}

/// On a thread: unix µs when the partition's high watermark reaches `n`
/// (every record produced up to then is in Kafka), 0 if not in 5 minutes.
fn watermark_reaches(brokers: &str, topic: &str, n: u64) -> JoinHandle<u64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    let topic = topic.to_owned();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(300) {
            if let Ok((_, high)) = consumer.fetch_watermarks(&topic, 0, Duration::from_secs(1))
                && high >= n as i64
            {
                return unix_us();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        0
    })
}

/// On a thread: unix µs when Herald's `herald_messages_consumed_total`
/// reaches `n` (it has read every record produced up to then), 0 if not in
/// 5 minutes.
fn consumed_reaches(addr: &str, n: u64) -> JoinHandle<u64> {
    let addr = addr.to_owned();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(300) {
            let consumed: f64 = crate::suite::http_get(&addr, "/metrics")
                .lines()
                .filter(|l| l.starts_with("herald_messages_consumed_total"))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum();
            if consumed >= n as f64 {
                return unix_us();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        0
    })
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

// ---------------------------------------------------------------- f2

/// F2: two nodes, `clients` spread over both at `rate` records/s for
/// `duration` s; at 10 s node A is SIGKILLed, 10 s later started again on
/// its port. A's clients resume on B, then go back to A.
pub fn f2(brokers: &str, clients: usize, rate: u64, duration: f64) -> (Vec<Row>, Value) {
    let topic = crate::topic_name("f2");
    create_topic(brokers, &topic, 1);
    let route = bench_route(&topic);
    let port_a = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let a = HeraldProc::start_at(port_a, brokers, "latest", "", &route);
    let b = HeraldProc::start_with(brokers, "latest", "", &route);
    let records = (rate as f64 * duration).round() as u64;
    let on_a = clients / 2;
    let extra = ["--arrivals", "--home"];
    let (ab, ba) = (
        format!("{},{}", a.addr, b.addr),
        format!("{},{}", b.addr, a.addr),
    );
    let workers_a = Workers::spawn("ws", &ab, on_a, records, duration + 120.0, &extra, 1);
    let workers_b = Workers::spawn(
        "ws",
        &ba,
        clients - on_a,
        records,
        duration + 120.0,
        &extra,
        1,
    );
    eprintln!(
        "bench: f2: {clients} ws clients over two nodes; {records} records at {rate}/s, node A killed at {BEFORE_FAULT_S} s, started again at {} s",
        BEFORE_FAULT_S + OUTAGE_S
    );
    let t0 = Instant::now();
    let producing = produce_timed(brokers, &topic, rate, records);
    sleep_until(t0 + Duration::from_secs_f64(BEFORE_FAULT_S));
    let kill_us = unix_us();
    a.kill();
    sleep_until(t0 + Duration::from_secs_f64(BEFORE_FAULT_S + OUTAGE_S));
    let restart_us = unix_us();
    let a = HeraldProc::start_at(port_a, brokers, "latest", "", &route);
    let a_ready_us = unix_us();
    let sent = producing.join().expect("producer");
    let done_a = workers_a.finish();
    let done_b = workers_b.finish();
    a.stop();
    b.stop();
    let mut done = done_a.clone();
    done.extend(done_b.iter().cloned());
    let t = totals(&done);
    let arrived = arrivals(&done, records);
    // A's clients have all resumed on B; from the kill until every client
    // has every record sent by then.
    let resumed_us = done_a.iter().map(|d| d.all_resumed_us).max().unwrap_or(0);
    let failover = resumed_us.saturating_sub(kill_us) as f64 / 1e6;
    let recovery = caught_up_s(&arrived, &sent, resumed_us) + failover;
    let worst = worst_delay_s(&arrived, &sent);
    let back_home = done_a
        .iter()
        .map(|d| d.last_reconnect_us)
        .max()
        .unwrap_or(0)
        .saturating_sub(a_ready_us) as f64
        / 1e6;
    let mut rows = exact_rows("f2", &t, &done, clients);
    rows.push(seconds(
        "f2",
        "failover s (kill → A's last client resumed on B)",
        failover,
    ));
    rows.push(seconds("f2", "recovery s (kill → all caught up)", recovery));
    rows.push(seconds(
        "f2",
        "back home s (A ready → last client back)",
        back_home,
    ));
    rows.push(seconds("f2", "worst record delay s", worst));
    let details = json!({
        "clients": t.connected, "clients_on_a": on_a, "rate": rate, "records": records,
        "duration_s": duration, "failover_s": failover, "recovery_s": recovery, "back_home_s": back_home,
        "a_start_s": (a_ready_us - restart_us) as f64 / 1e6, "worst_record_delay_s": worst,
        "received": t.received, "distinct": t.distinct, "complete_clients": t.complete,
        "p50_ms": t.hist.quantile_ms(0.5), "p99_ms": t.hist.quantile_ms(0.99),
        "connections_a": endings(&done_a), "connections_b": endings(&done_b),
    });
    (rows, details)
}

// ---------------------------------------------------------------- f3

/// F3: `clients` that stay (1% of them slow readers, stalling 40 s every
/// 5 minutes) and half as many that churn, at `rate` records/s for
/// `duration` s; RSS at 1/6, 1/2 and the end of it (5, 15 and 30 minutes
/// of 30), open files before, during and after.
pub fn f3(brokers: &str, clients: usize, rate: u64, duration: f64) -> (Vec<Row>, Value) {
    let topic = crate::topic_name("f3");
    create_topic(brokers, &topic, 1);
    let herald = HeraldProc::start(brokers, &topic, "latest", "");
    std::thread::sleep(Duration::from_secs(1));
    let (rss0, fds0) = (herald.rss_kib(), herald.fds());
    let records = (rate as f64 * duration).round() as u64;
    let slow = (clients / 100).max(1);
    let steady = clients - slow;
    let churners = clients / 2;
    let window = duration + 60.0;
    let stall = [
        "--stall-at",
        "30",
        "--stall-for",
        "40",
        "--stall-every",
        "300",
    ];
    let churn = [
        "--churn-min",
        "5",
        "--churn-max",
        "60",
        "--churn-resume",
        "0.5",
    ];
    let w_steady = Workers::spawn("ws", &herald.addr, steady, records, window, &[], 1);
    let w_slow = Workers::spawn("ws", &herald.addr, slow, records, window, &stall, 1);
    let w_churn = Workers::spawn("ws", &herald.addr, churners, records, duration, &churn, 1);
    eprintln!(
        "bench: f3: {steady} steady + {slow} slow + {churners} churning ws clients; {records} records at {rate}/s over {duration} s"
    );
    let t0 = Instant::now();
    let producing = produce_timed(brokers, &topic, rate, records);
    let mut samples = Vec::new();
    for frac in [1.0 / 6.0, 0.5, 1.0] {
        sleep_until(t0 + Duration::from_secs_f64(duration * frac));
        let s = json!({"at_s": t0.elapsed().as_secs_f64(), "rss_kib": herald.rss_kib(),
            "fds": herald.fds(), "cpu_s": herald.cpu_s()});
        eprintln!("bench: f3: {s}");
        samples.push(s);
    }
    let _sent = producing.join().expect("producer");
    let done_steady = w_steady.finish();
    let done_slow = w_slow.finish();
    let done_churn = w_churn.finish();
    // Every client is gone: the sockets must be too (a closed connection
    // leaves Herald at once; give the last ones a few seconds).
    let settle = Instant::now();
    let mut fds_end = herald.fds();
    while fds_end > fds0 && settle.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        fds_end = herald.fds();
    }
    let rss_end = herald.rss_kib();
    herald.stop();
    let mut stayed = done_steady.clone();
    stayed.extend(done_slow.iter().cloned());
    let t = totals(&stayed);
    let tc = totals(&done_churn);
    let tslow = totals(&done_slow);
    let rss = |i: usize| samples[i]["rss_kib"].as_f64().unwrap_or(f64::NAN);
    let growth = 100.0 * (rss(2) - rss(0)) / rss(0);
    let mut rows = exact_rows("f3", &t, &stayed, steady + slow);
    for r in &mut rows {
        r.metric = format!("stayed: {}", r.metric);
    }
    let minutes = |frac: f64| {
        let at = duration * frac;
        if duration >= 600.0 {
            format!("{:.0} min", at / 60.0)
        } else {
            format!("{at:.0} s")
        }
    };
    rows.extend([
        row(
            "f3",
            "slow readers: lost",
            tslow.lost as f64,
            "le",
            0.0,
            None,
            "records",
        ),
        row(
            "f3",
            "churning: lost within each client's range",
            tc.lost as f64,
            "le",
            0.0,
            None,
            "records",
        ),
        row(
            "f3",
            "churning: duplicated",
            tc.duplicates as f64,
            "le",
            0.0,
            None,
            "records",
        ),
        row(
            "f3",
            &format!("RSS MiB at {}", minutes(1.0 / 6.0)),
            rss(0) / 1024.0,
            "info",
            f64::NAN,
            None,
            "MiB",
        ),
        row(
            "f3",
            &format!("RSS MiB at {}", minutes(0.5)),
            rss(1) / 1024.0,
            "info",
            f64::NAN,
            None,
            "MiB",
        ),
        row(
            "f3",
            &format!("RSS MiB at {}", minutes(1.0)),
            rss(2) / 1024.0,
            "info",
            f64::NAN,
            None,
            "MiB",
        ),
        row(
            "f3",
            &format!("RSS growth {} → {} %", minutes(1.0 / 6.0), minutes(1.0)),
            growth,
            "le",
            10.0,
            None,
            "%",
        ),
        row(
            "f3",
            "open fds at the end − before clients",
            fds_end as f64 - fds0 as f64,
            "le",
            0.0,
            None,
            "fds",
        ),
    ]);
    let churned: u64 = done_churn.iter().map(|d| d.left).sum();
    let details = json!({
        "steady": steady, "slow": slow, "churning": churners, "rate": rate, "records": records,
        "duration_s": duration, "herald_rss_kib_idle": rss0, "herald_rss_kib_end": rss_end,
        "fds_before_clients": fds0, "fds_end": fds_end, "samples": samples,
        "stayed": {"received": t.received, "complete": t.complete, "p99_ms": t.hist.quantile_ms(0.99),
            "connections": endings(&stayed)},
        "slow_readers": {"lost": tslow.lost, "duplicates": tslow.duplicates, "complete": tslow.complete,
            "connections": endings(&done_slow)},
        "churning": {"received": tc.received, "left_and_replaced": churned, "lost": tc.lost,
            "duplicates": tc.duplicates, "connections": endings(&done_churn)},
    });
    (rows, details)
}

// ---------------------------------------------------------------- f4

/// One F4 run: the others' latency, the slow ones' tallies, Herald's peak RSS.
struct SlowRun {
    others: Totals,
    slow: Totals,
    slow_done: Vec<Done>,
    others_done: Vec<Done>,
    rss_idle: f64,
    rss_peak: f64,
}

/// `clients` on one node at `rate` records/s for `duration` s; 1% of them
/// (their own worker process either way) stop reading at 5 s for `stall`
/// seconds when `stall` > 0, then read again.
fn slow_run(brokers: &str, clients: usize, rate: u64, duration: f64, stall: f64) -> SlowRun {
    let topic = crate::topic_name("f4");
    create_topic(brokers, &topic, 1);
    let herald = HeraldProc::start(brokers, &topic, "latest", "");
    let rss_idle = herald.rss_kib();
    let records = (rate as f64 * duration).round() as u64;
    let slow = (clients / 100).max(1);
    let stall_args = ["--stall-at", "5", "--stall-for", &stall.to_string()];
    let others = Workers::spawn(
        "ws",
        &herald.addr,
        clients - slow,
        records,
        duration + 60.0,
        &[],
        2,
    );
    let slow_w = Workers::spawn(
        "ws",
        &herald.addr,
        slow,
        records,
        duration + 60.0,
        if stall > 0.0 { &stall_args[..] } else { &[] },
        1,
    );
    eprintln!(
        "bench: f4: {} + {slow} ws clients ({}); {records} records at {rate}/s",
        clients - slow,
        if stall > 0.0 {
            format!("the {slow} stop reading at 5 s for {stall} s")
        } else {
            "nobody stalls".into()
        }
    );
    let producing = produce_timed(brokers, &topic, rate, records);
    let mut rss_peak = herald.rss_kib();
    while !producing.is_finished() {
        std::thread::sleep(Duration::from_millis(250));
        rss_peak = rss_peak.max(herald.rss_kib());
    }
    let _ = producing.join();
    let others_done = others.finish();
    let slow_done = slow_w.finish();
    rss_peak = rss_peak.max(herald.rss_kib());
    herald.stop();
    SlowRun {
        others: totals(&others_done),
        slow: totals(&slow_done),
        slow_done,
        others_done,
        rss_idle,
        rss_peak,
    }
}

/// F4: the run without slow readers, then with them.
pub fn f4(brokers: &str, clients: usize, rate: u64, duration: f64) -> (Vec<Row>, Value) {
    // Longer than `ws.ping_interval` + `ws.pong_timeout` (35 s), so a
    // stalled client is cut off and must resume; shorter in shorter runs.
    let stall = (duration - 15.0).clamp(5.0, 40.0);
    let base = slow_run(brokers, clients, rate, duration, 0.0);
    let with = slow_run(brokers, clients, rate, duration, stall);
    let (p99_base, p99_with) = (
        base.others.hist.quantile_ms(0.99),
        with.others.hist.quantile_ms(0.99),
    );
    let slow = with.slow_done.iter().map(|d| d.clients).sum::<usize>();
    let mut all = with.others_done.clone();
    all.extend(with.slow_done.iter().cloned());
    let mut rows = exact_rows("f4", &totals(&all), &all, clients);
    rows.extend([
        row(
            "f4",
            "others' p99 ms (target 1.1× without slow)",
            p99_with,
            "le",
            1.1 * p99_base,
            Some(p99_base),
            "ms",
        ),
        row(
            "f4",
            "slow readers: lost",
            with.slow.lost as f64,
            "le",
            0.0,
            None,
            "records",
        ),
        row(
            "f4",
            "slow readers: complete",
            with.slow.complete as f64,
            "ge",
            slow as f64,
            None,
            "clients",
        ),
        row(
            "f4",
            "peak RSS MiB (without slow)",
            with.rss_peak / 1024.0,
            "info",
            f64::NAN,
            Some(base.rss_peak / 1024.0),
            "MiB",
        ),
    ]);
    let run = |r: &SlowRun| {
        json!({"others_p50_ms": r.others.hist.quantile_ms(0.5), "others_p99_ms": r.others.hist.quantile_ms(0.99),
            "others_p999_ms": r.others.hist.quantile_ms(0.999), "others_lost": r.others.lost,
            "others_duplicates": r.others.duplicates, "slow_lost": r.slow.lost,
            "slow_duplicates": r.slow.duplicates, "slow_complete": r.slow.complete,
            "herald_rss_kib_idle": r.rss_idle, "herald_rss_kib_peak": r.rss_peak,
            "slow_connections": endings(&r.slow_done)})
    };
    let details = json!({"clients": clients, "slow": slow, "rate": rate, "duration_s": duration,
        "stall_s": stall, "without_slow": run(&base), "with_slow": run(&with)});
    (rows, details)
}
