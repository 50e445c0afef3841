//! `herald-bench suite SCENARIO`: the issue-6 scenarios (p1…p7), the
//! Web Push one of issue 12 (`push`, push.rs), the faults under load of
//! issue 13 (`f1`…`f4`, faults.rs) and Herald beside Centrifugo (`peer`,
//! peer.rs, issue 17), with Herald
//! as a separate process (the release `herald serve` beside this binary),
//! clients in worker processes (`herald-bench client`), and the floors in
//! the same run. Writes `OUT/<scenario>.json`; `report` turns every JSON in
//! OUT into `summary.md` and `chart.svg`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::client::{Done, unix_us};
use crate::hist::Hist;

/// At most this many sockets per client worker process (20k fds each).
const PER_WORKER: usize = 9000;

#[derive(Serialize, Deserialize, Clone)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    #[serde(deserialize_with = "nan_if_null")]
    pub measured: f64,
    /// "le" (measured ≤ target passes) or "ge".
    pub cmp: String,
    #[serde(deserialize_with = "nan_if_null")]
    pub target: f64,
    pub floor: Option<f64>,
    pub unit: String,
    pub pass: bool,
}

/// JSON has no NaN (serde_json writes null): read null back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

pub fn row(
    scenario: &str,
    metric: &str,
    measured: f64,
    cmp: &str,
    target: f64,
    floor: Option<f64>,
    unit: &str,
) -> Row {
    let pass = match cmp {
        "le" => measured <= target,
        _ => measured >= target,
    };
    Row {
        scenario: scenario.into(),
        metric: metric.into(),
        measured,
        cmp: cmp.into(),
        target,
        floor,
        unit: unit.into(),
        pass,
    }
}

// ---------------------------------------------------------------- processes

pub fn exe_dir() -> PathBuf {
    std::env::current_exe()
        .expect("current exe")
        .parent()
        .expect("exe dir")
        .to_path_buf()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub struct HeraldProc {
    child: Child,
    pub addr: String,
}

impl HeraldProc {
    /// Herald with one route, `topic` → channel `bench`.
    pub fn start(brokers: &str, topic: &str, start: &str, extra: &str) -> Self {
        Self::start_with(brokers, start, extra, &bench_route(topic))
    }

    /// Herald with `tables` (TOML: its routes, and `[push]` if any) after
    /// the generated `[kafka]`, `[http]` and `[limits]`.
    pub fn start_with(brokers: &str, start: &str, extra: &str, tables: &str) -> Self {
        Self::start_at(free_port(), brokers, start, extra, tables)
    }

    /// [`HeraldProc::start_with`] on a given port: a node restarted where
    /// its clients will look for it.
    pub fn start_at(port: u16, brokers: &str, start: &str, extra: &str, tables: &str) -> Self {
        let addr = format!("127.0.0.1:{port}");
        let text = format!(
            "[kafka]\nbrokers = \"{brokers}\"\nstart = \"{start}\"\n{extra_kafka}\
             [http]\nlisten = \"{addr}\"\ndemo_page = false\n\
             [limits]\nmax_connections = 19500\n{extra_limits}{env_extra}\n\
             {tables}",
            extra_kafka = section(extra, "kafka"),
            extra_limits = section(extra, "limits"),
            // BENCH_HERALD_CONFIG: more TOML tables (`\n`-separated), e.g.
            // "[replay]\nmax_concurrent = 10000", to try settings.
            env_extra = std::env::var("BENCH_HERALD_CONFIG")
                .unwrap_or_default()
                .replace("\\n", "\n"),
        );
        let path =
            std::env::temp_dir().join(format!("herald-bench-{}-{port}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write config");
        let child = Command::new(exe_dir().join("herald"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn herald (build it: cargo build --release --bin herald)");
        let h = Self { child, addr };
        let t0 = Instant::now();
        while !http_get(&h.addr, "/readyz").starts_with("HTTP/1.1 200") {
            assert!(t0.elapsed() < Duration::from_secs(60), "herald not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kib(&self) -> f64 {
        rss_kib(self.pid())
    }

    pub fn cpu_s(&self) -> f64 {
        cpu_s(self.pid())
    }

    pub fn metric(&self, prefix: &str) -> u64 {
        http_get(&self.addr, "/metrics")
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Open file descriptors (`/proc/PID/fd`): sockets, Kafka's, the log.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// SIGKILL: a crash, no goodbye to anyone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (SIGKILL after 15 s).
    pub fn stop(mut self) {
        stop_child(&mut self.child);
    }
}

/// SIGTERM to a server process, then wait for it (SIGKILL after 15 s).
pub fn stop_child(child: &mut Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The route of every fan-out scenario: `topic` to channel `bench`.
pub fn bench_route(topic: &str) -> String {
    format!("[[route]]\ntopic = \"{topic}\"\nchannel = \"bench\"\n")
}

/// Lines of `extra` (pairs `section.key = value`) for one section.
fn section(extra: &str, name: &str) -> String {
    extra
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}.")))
        .map(|l| format!("{l}\n"))
        .collect()
}

pub fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

pub fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime, stime are 14, 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

pub fn http_get(addr: &str, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    );
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// `POST path` with a JSON body: the status and the response body.
pub fn http_post(addr: &str, path: &str, body: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

pub struct Workers {
    children: Vec<(Child, BufReader<ChildStdout>)>,
    pub ready: Vec<Value>,
}

impl Workers {
    /// Spawns ceil(total / PER_WORKER) (at least `min_workers`) client
    /// processes and waits until every one has its sockets open.
    pub fn spawn(
        transport: &str,
        addr: &str,
        total: usize,
        expect: u64,
        duration: f64,
        extra: &[&str],
        min_workers: usize,
    ) -> Self {
        let n = total.div_ceil(PER_WORKER).max(min_workers).max(1);
        let mut children = Vec::new();
        for i in 0..n {
            let count = total / n + usize::from(i < total % n);
            let mut cmd = Command::new(std::env::current_exe().expect("exe"));
            cmd.args(["client", "--transport", transport, "--addr", addr])
                .args([
                    "--count",
                    &count.to_string(),
                    "--expect",
                    &expect.to_string(),
                ])
                .args(["--duration", &duration.to_string()]);
            cmd.args(extra);
            let mut child = cmd
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn client worker");
            let out = BufReader::new(child.stdout.take().expect("stdout"));
            children.push((child, out));
        }
        let mut ready = Vec::new();
        for (_, out) in &mut children {
            let mut line = String::new();
            out.read_line(&mut line).expect("worker ready line");
            ready.push(serde_json::from_str::<Value>(&line).unwrap_or(Value::Null));
        }
        Self { children, ready }
    }

    pub fn connected(&self) -> u64 {
        self.ready.iter().filter_map(|v| v["ready"].as_u64()).sum()
    }

    /// Seconds from the first connect to the last socket open, over workers.
    pub fn connect_span_s(&self) -> f64 {
        let start = self
            .ready
            .iter()
            .filter_map(|v| v["connect_start_us"].as_u64())
            .min()
            .unwrap_or(0);
        let end = self
            .ready
            .iter()
            .filter_map(|v| v["connect_end_us"].as_u64())
            .max()
            .unwrap_or(0);
        end.saturating_sub(start) as f64 / 1e6
    }

    pub fn finish(self) -> Vec<Done> {
        let mut all = Vec::new();
        for (mut child, mut out) in self.children {
            let mut line = String::new();
            let _ = out.read_line(&mut line);
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if let Ok(d) = serde_json::from_value::<Done>(v["done"].clone()) {
                all.push(d);
            } else {
                eprintln!("bench: a client worker reported nothing: {line}");
                all.push(Done::default());
            }
            let _ = child.wait();
        }
        all
    }
}

pub struct Totals {
    pub connected: usize,
    pub received: u64,
    pub distinct: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub complete: usize,
    pub hist: Hist,
    pub first_connect_us: u64,
    pub all_done_us: u64,
}

pub fn totals(done: &[Done]) -> Totals {
    let mut hist = Hist::default();
    for d in done {
        hist.merge(&d.hist);
    }
    Totals {
        connected: done.iter().map(|d| d.connected).sum(),
        received: done.iter().map(|d| d.received).sum(),
        distinct: done.iter().map(|d| d.distinct).sum(),
        duplicates: done.iter().map(|d| d.duplicates).sum(),
        // Workers that failed to report count all their clients' records lost.
        lost: done.iter().map(|d| d.lost).sum(),
        complete: done.iter().map(|d| d.complete).sum(),
        hist,
        first_connect_us: done
            .iter()
            .map(|d| d.connect_start_us)
            .filter(|v| *v > 0)
            .min()
            .unwrap_or(0),
        all_done_us: if done.iter().all(|d| d.all_done_us > 0) {
            done.iter().map(|d| d.all_done_us).max().unwrap_or(0)
        } else {
            0
        },
    }
}

// ---------------------------------------------------------------- Kafka

pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(crate::create_topic(brokers, topic, partitions));
}

/// Produces `n` timestamped 100-byte records at `rate` per second, with
/// the producer's default batching (`linger.ms` 5, as librdkafka and the
/// Java client since Kafka 4.0 default to): each record's latency includes
/// up to 5 ms of it. With `linger.ms` 1 the broker, on the same two cores,
/// spent ~80% of a core answering a produce and a fetch per record, and the
/// fan-out scenarios measured that instead of Herald.
pub fn produce_paced(brokers: &str, topic: &str, rate: u64, n: u64) -> f64 {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", LINGER_MS.to_string())
        .create()
        .expect("producer");
    // Warm up (metadata, connection) with a record clients ignore, so the
    // first timed records do not carry the producer's start-up.
    producer
        .send(BaseRecord::to(topic).payload("{\"warmup\":1}").key("k"))
        .map_err(|(e, _)| e)
        .expect("warm-up record");
    producer.flush(Duration::from_secs(30)).expect("flush");
    let started = Instant::now();
    paced(rate, n, |i| {
        let payload = crate::payload(i);
        crate::send_waiting(&producer, BaseRecord::to(topic).payload(&payload).key("k"));
    });
    producer.flush(Duration::from_secs(30)).expect("flush");
    started.elapsed().as_secs_f64()
}

/// Calls `send(i)` for `i` in `0..n`, the `i`-th at `i / rate` seconds
/// from now (at once when behind): the producers' schedule.
pub fn paced(rate: u64, n: u64, mut send: impl FnMut(u64)) {
    let started = Instant::now();
    for i in 0..n {
        let at = started + Duration::from_secs_f64(i as f64 / rate as f64);
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        send(i);
    }
}

// ---------------------------------------------------------------- scenarios

pub struct FanoutResult {
    pub json: Value,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub lost: u64,
    pub duplicates: u64,
    pub cut_off: u64,
    pub resumed: u64,
}

pub fn fanout_json(t: &Totals, publish_s: f64, done: &[Done], extra: Value) -> FanoutResult {
    let (cut_off, resumed) = cut_off_resumed(done);
    let (p50, p99, p999) = (
        t.hist.quantile_ms(0.5),
        t.hist.quantile_ms(0.99),
        t.hist.quantile_ms(0.999),
    );
    let mut json = json!({
        "clients": t.connected, "received": t.received, "distinct": t.distinct,
        "lost": t.lost, "duplicates": t.duplicates, "complete_clients": t.complete,
        "deliveries_per_s": t.received as f64 / publish_s.max(1e-9),
        "p50_ms": p50, "p99_ms": p99, "p999_ms": p999,
        "cut_off": cut_off, "resumed": resumed, "endings": endings(done),
        "refused": done.iter().map(|d| d.refused).sum::<u64>(),
        "last_error": done.iter().find_map(|d| d.last_error.clone()),
    });
    if let (Value::Object(a), Value::Object(b)) = (&mut json, extra) {
        a.extend(b);
    }
    FanoutResult {
        json,
        p50,
        p99,
        p999,
        lost: t.lost,
        duplicates: t.duplicates,
        cut_off,
        resumed,
    }
}

/// How the clients' connections ended, summed over the workers.
pub fn endings(done: &[Done]) -> std::collections::BTreeMap<String, u64> {
    let mut all = std::collections::BTreeMap::new();
    for (label, n) in done.iter().flat_map(|d| &d.endings) {
        *all.entry(label.clone()).or_insert(0) += n;
    }
    all
}

/// Connections the server ended before the client was done (a slow
/// consumer's close, an end of stream, a reset), and resumes: connections
/// opened again from the client's last cursor. Churn (a client's own
/// close) and going back to a home node are neither; failed attempts to
/// resume are counted by the attempt that then succeeded.
pub fn cut_off_resumed(done: &[Done]) -> (u64, u64) {
    let cut_off = done
        .iter()
        .flat_map(|d| &d.endings)
        .filter(|(label, _)| {
            !matches!(label.as_str(), "churn" | "home") && !label.starts_with("retry")
        })
        .map(|(_, n)| n)
        .sum();
    (cut_off, done.iter().map(|d| d.reconnects).sum())
}

/// Herald fan-out: `clients` on one channel over `transport`, `rate`
/// records/s for `duration` s.
pub fn herald_fanout(
    brokers: &str,
    transport: &str,
    clients: usize,
    rate: u64,
    duration: f64,
) -> FanoutResult {
    herald_fanout_with(
        brokers,
        transport,
        clients,
        rate,
        duration,
        &Opts::default(),
    )
}

/// [`herald_fanout`], with `push` (when given) pushing on the same Herald
/// while the records are produced: its `[push]` and route in Herald's
/// config, its subscriptions registered before the clients connect, and
/// what it measured under `"push"` in the result.
pub fn herald_fanout_beside(
    brokers: &str,
    transport: &str,
    clients: usize,
    rate: u64,
    duration: f64,
    push: Option<&crate::push::Beside>,
) -> FanoutResult {
    let opts = Opts {
        push,
        ..Opts::default()
    };
    herald_fanout_with(brokers, transport, clients, rate, duration, &opts)
}

/// What a fan-out run adds to the plain one.
#[derive(Default)]
pub struct Opts<'a> {
    /// More of Herald's config (TOML tables), e.g. `[ws]` with `write_delay`.
    pub config: String,
    /// More flags for every client worker.
    pub client_args: Vec<String>,
    /// Web Push beside the clients ([`herald_fanout_beside`]).
    pub push: Option<&'a crate::push::Beside>,
    /// A noisy neighbour: a CPU hog on one core for this many seconds,
    /// from the middle of the run ([`Hog`]).
    pub hog_s: f64,
    /// How long the clients may take, after the last record was produced,
    /// to have every record (0: 15 s).
    pub grace_s: f64,
}

/// [`herald_fanout`] with [`Opts`].
pub fn herald_fanout_with(
    brokers: &str,
    transport: &str,
    clients: usize,
    rate: u64,
    duration: f64,
    opts: &Opts,
) -> FanoutResult {
    let push = opts.push;
    let topic = crate::topic_name("fan");
    create_topic(brokers, &topic, 1);
    let tables = bench_route(&topic) + &opts.config + &push.map_or(String::new(), |p| p.tables());
    let herald = HeraldProc::start_with(brokers, "latest", "", &tables);
    if let Some(push) = push {
        push.ready(&herald);
    }
    let rss0 = herald.rss_kib();
    let records = (rate as f64 * duration).round() as u64;
    let client_args: Vec<&str> = opts.client_args.iter().map(String::as_str).collect();
    let workers = Workers::spawn(
        transport,
        &herald.addr,
        clients,
        records,
        duration
            + if opts.grace_s > 0.0 {
                opts.grace_s
            } else {
                15.0
            },
        &client_args,
        2,
    );
    let rss1 = herald.rss_kib();
    let c0 = Counters::read(herald.pid());
    eprintln!(
        "bench: {clients} {transport} clients connected to Herald ({:.1}s); producing {records} records at {rate}/s",
        workers.connect_span_s()
    );
    let pushing = push.map(|p| p.start(duration));
    let hog =
        (opts.hog_s > 0.0).then(|| Hog::start_after(duration / 2.0 - opts.hog_s / 2.0, opts.hog_s));
    let publish_s = produce_paced(brokers, &topic, rate, records);
    let pushed = pushing.map(|p| p.join().expect("push producer"));
    let done = workers.finish();
    let used = Counters::read(herald.pid()).since(&c0, segments(&done));
    let rss2 = herald.rss_kib();
    let push_json = push
        .zip(pushed)
        .map(|(p, records)| p.finish(&herald, records));
    herald.stop();
    let hogged = hog.map(Hog::finish);
    let t = totals(&done);
    let mut extra = json!({
        "transport": transport, "rate": rate, "records": records, "duration_s": duration,
        "herald_rss_kib_idle": rss0, "herald_rss_kib_connected": rss1, "herald_rss_kib_end": rss2,
        "rss_per_conn_kib": (rss1 - rss0) / clients as f64,
        "herald_cpu_s": used.cpu_s,
    });
    used.per_delivery(&mut extra, t.received);
    if let Some(push) = push_json {
        extra["push"] = push;
    }
    if let Some(s) = hogged {
        extra["hog_s"] = s.into();
    }
    fanout_json(&t, publish_s, &done, extra)
}

/// What a server process has used so far: CPU (`utime+stime`) and
/// context switches of all its threads; with [`Counters::since`], also
/// its writes as the clients' sockets saw them ([`segments`]).
#[derive(Clone, Copy, Default)]
pub struct Counters {
    pub cpu_s: f64,
    pub switches: u64,
    /// The server's writes: TCP data segments its clients received.
    pub writes: f64,
}

impl Counters {
    pub fn read(pid: u32) -> Counters {
        let mut switches = 0;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let status =
                    std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
                switches += status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum::<u64>();
            }
        }
        Counters {
            cpu_s: cpu_s(pid),
            switches,
            writes: f64::NAN,
        }
    }

    /// What was used between `earlier` and this reading (context switches
    /// of threads that ended meanwhile are not counted), with `writes`
    /// made over the same time.
    pub fn since(&self, earlier: &Counters, writes: f64) -> Counters {
        Counters {
            cpu_s: self.cpu_s - earlier.cpu_s,
            switches: self.switches.saturating_sub(earlier.switches),
            writes,
        }
    }

    /// Adds `cpu_us_per_delivery`, `writes_per_delivery` and
    /// `switches_per_delivery` to `json`.
    pub fn per_delivery(&self, json: &mut Value, deliveries: u64) {
        let d = deliveries.max(1) as f64;
        json["cpu_us_per_delivery"] = (1e6 * self.cpu_s / d).into();
        json["writes_per_delivery"] = (self.writes / d).into();
        json["switches_per_delivery"] = (self.switches as f64 / d).into();
    }
}

/// The server's writes to the clients, counted by the clients: the TCP
/// data segments their sockets received (`TCP_INFO`), the WebSocket or
/// HTTP response head's included. A write that fits a segment is one (on
/// loopback a segment holds 64 KiB); only writes queued behind a full
/// window leave in fewer. Counted on the clients' side so that nothing
/// traces the server: `perf stat` on the syscall tracepoints put every
/// system call of the server through the tracing path and doubled its CPU
/// per delivery, and `/proc/PID/io` counts no `send`.
fn segments(done: &[Done]) -> f64 {
    done.iter().map(|d| d.segs_in).sum::<u64>() as f64
}

/// A noisy neighbour: a process spinning on CPU 0 (`taskset`) for a while,
/// started after a delay, as another tenant's batch job would.
pub struct Hog {
    thread: std::thread::JoinHandle<f64>,
}

impl Hog {
    pub fn start_after(delay_s: f64, seconds: f64) -> Hog {
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(delay_s.max(0.0)));
            eprintln!("bench: noisy neighbour: a CPU hog on CPU 0 for {seconds} s");
            let started = Instant::now();
            let status = Command::new("taskset")
                .args(["-c", "0"])
                .arg(std::env::current_exe().expect("exe"))
                .args(["hog", "--seconds", &seconds.to_string()])
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "the CPU hog did not run (taskset, util-linux)"
            );
            started.elapsed().as_secs_f64()
        });
        Hog { thread }
    }

    /// Waits for the hog to end; how long it ran.
    pub fn finish(self) -> f64 {
        self.thread.join().expect("hog thread")
    }
}

/// The fan-out floor: the same clients and rate against `floor-server`.
pub fn floor_fanout(clients: usize, rate: u64, duration: f64) -> FanoutResult {
    let records = (rate as f64 * duration).round() as u64;
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "floor-server",
            "--clients",
            &clients.to_string(),
            "--rate",
            &rate.to_string(),
        ])
        .args(["--records", &records.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn floor server");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("floor listen line");
    let v: Value = serde_json::from_str(&line).expect("floor json");
    let addr = v["listen"].as_str().expect("listen").to_owned();
    let pid = child.id();
    let workers = Workers::spawn("floor", &addr, clients, records, duration + 15.0, &[], 2);
    let c0 = Counters::read(pid);
    line.clear();
    out.read_line(&mut line).expect("floor publishing line");
    let started = Instant::now();
    let done = workers.finish();
    let publish_s = started.elapsed().as_secs_f64().min(duration + 1.0);
    let used = Counters::read(pid).since(&c0, segments(&done));
    let rss = rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    let t = totals(&done);
    let mut extra = json!({
        "rate": rate, "records": records, "floor_rss_kib": rss, "floor_cpu_s": used.cpu_s,
    });
    used.per_delivery(&mut extra, t.received);
    fanout_json(&t, publish_s, &done, extra)
}

fn fanout_rows(
    name: &str,
    h: &FanoutResult,
    clients: usize,
    p99_target: f64,
    floor: Option<&FanoutResult>,
) -> Vec<Row> {
    fanout_rows_p50(name, h, clients, f64::NAN, p99_target, floor)
}

/// [`fanout_rows`] with a target for the median too (NaN: none).
fn fanout_rows_p50(
    name: &str,
    h: &FanoutResult,
    clients: usize,
    p50_target: f64,
    p99_target: f64,
    floor: Option<&FanoutResult>,
) -> Vec<Row> {
    vec![
        row(
            name,
            "clients connected",
            h.json["clients"].as_f64().unwrap_or(0.0),
            "ge",
            clients as f64,
            floor.and_then(|f| f.json["clients"].as_f64()),
            "conns",
        ),
        row(
            name,
            "p50 ms",
            h.p50,
            if p50_target.is_nan() { "info" } else { "le" },
            p50_target,
            floor.map(|f| f.p50),
            "ms",
        ),
        row(
            name,
            "p99 ms",
            h.p99,
            "le",
            p99_target,
            floor.map(|f| f.p99),
            "ms",
        ),
        row(
            name,
            "p99.9 ms",
            h.p999,
            "info",
            f64::NAN,
            floor.map(|f| f.p999),
            "ms",
        ),
        row(
            name,
            "lost",
            h.lost as f64,
            "le",
            0.0,
            floor.map(|f| f.lost as f64),
            "records",
        ),
        row(
            name,
            "duplicated",
            h.duplicates as f64,
            "le",
            0.0,
            floor.map(|f| f.duplicates as f64),
            "records",
        ),
        row(
            name,
            "deliveries/s",
            h.json["deliveries_per_s"].as_f64().unwrap_or(0.0),
            "info",
            f64::NAN,
            floor.and_then(|f| f.json["deliveries_per_s"].as_f64()),
            "/s",
        ),
        row(
            name,
            "CPU µs per delivery",
            h.json["cpu_us_per_delivery"].as_f64().unwrap_or(0.0),
            "info",
            f64::NAN,
            floor.and_then(|f| f.json["cpu_us_per_delivery"].as_f64()),
            "µs",
        ),
        row(
            name,
            "cut off",
            h.cut_off as f64,
            "info",
            f64::NAN,
            floor.map(|f| f.cut_off as f64),
            "conns",
        ),
        row(
            name,
            "resumed",
            h.resumed as f64,
            "ge",
            h.cut_off as f64,
            floor.map(|f| f.resumed as f64),
            "conns",
        ),
    ]
}

// ---------------------------------------------------------------- names

/// A scenario `suite` runs; its name is its file name in OUT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    P1,
    P2,
    P3,
    P4,
    P5,
    P6,
    P7,
    Push,
    Peer,
    F1,
    F2,
    F3,
    F4,
    P2Noisy,
    P3Noisy,
    Curve,
    Delay,
    /// permessage-deflate against plain frames (compression.rs).
    Deflate,
    Smoke,
}

impl Name {
    /// Every scenario, in the order an unknown name lists them.
    const EVERY: [Name; 19] = [
        Name::P1,
        Name::P2,
        Name::P3,
        Name::P4,
        Name::P5,
        Name::P6,
        Name::P7,
        Name::Push,
        Name::Peer,
        Name::F1,
        Name::F2,
        Name::F3,
        Name::F4,
        Name::P2Noisy,
        Name::P3Noisy,
        Name::Curve,
        Name::Delay,
        Name::Deflate,
        Name::Smoke,
    ];

    /// What `all` runs, in this order: every scenario but smoke.
    const ALL: [Name; 18] = [
        Name::Curve,
        Name::Delay,
        Name::P6,
        Name::P3,
        Name::P3Noisy,
        Name::P2,
        Name::P2Noisy,
        Name::P7,
        Name::P1,
        Name::P4,
        Name::P5,
        Name::Push,
        Name::Peer,
        Name::F1,
        Name::F2,
        Name::F4,
        Name::F3,
        Name::Deflate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Name::P1 => "p1",
            Name::P2 => "p2",
            Name::P3 => "p3",
            Name::P4 => "p4",
            Name::P5 => "p5",
            Name::P6 => "p6",
            Name::P7 => "p7",
            Name::Push => "push",
            Name::Peer => "peer",
            Name::F1 => "f1",
            Name::F2 => "f2",
            Name::F3 => "f3",
            Name::F4 => "f4",
            Name::P2Noisy => "p2-noisy",
            Name::P3Noisy => "p3-noisy",
            Name::Curve => "curve",
            Name::Delay => "delay",
            Name::Deflate => "deflate",
            Name::Smoke => "smoke",
        }
    }
}

/// A `suite` argument that names no scenario; says which names exist.
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownScenario(String);

impl std::fmt::Display for UnknownScenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown scenario {:?}; the scenarios are", self.0)?;
        for name in Name::EVERY {
            write!(f, " {}", name.as_str())?;
        }
        write!(
            f,
            ", and all (every one but smoke); names are case-insensitive"
        )
    }
}

/// The scenarios `suite ARG` runs: the one ARG names, or those of `all`.
/// Names are case-insensitive (`P3` is `p3`).
pub fn scenarios(arg: &str) -> Result<Vec<Name>, UnknownScenario> {
    if arg.eq_ignore_ascii_case("all") {
        return Ok(Name::ALL.to_vec());
    }
    Name::EVERY
        .into_iter()
        .find(|name| arg.eq_ignore_ascii_case(name.as_str()))
        .map(|name| vec![name])
        .ok_or_else(|| UnknownScenario(arg.to_owned()))
}

// ---------------------------------------------------------------- the run

pub fn run(
    brokers: &str,
    names: &[Name],
    duration_override: Option<f64>,
    out: &Path,
    clients_override: Option<usize>,
) {
    std::fs::create_dir_all(out).expect("results dir");
    let mut inexact = false;
    for &scenario in names {
        let name = scenario.as_str();
        let duration = duration_override.unwrap_or(match scenario {
            Name::F1 | Name::F2 => 40.0,
            Name::F3 => 1800.0,
            Name::F4 => 60.0,
            Name::Peer => 10.0,
            _ => 20.0,
        });
        eprintln!("bench: ---- {name} ({duration} s) ----");
        let started = unix_us();
        let load_start = load_average();
        let (rows, details) = match scenario {
            Name::P1 => p1(brokers, clients_override.unwrap_or(19_000)),
            Name::P2 => p2_p4(
                brokers,
                "ws",
                clients_override.unwrap_or(10_000),
                duration,
                None,
            ),
            Name::P2Noisy => noisy(
                brokers,
                name,
                clients_override.unwrap_or(10_000),
                50,
                duration,
            ),
            Name::P3 | Name::P3Noisy | Name::Smoke => {
                let (c, d) = if scenario == Name::Smoke {
                    (clients_override.unwrap_or(50), duration.min(3.0))
                } else {
                    (clients_override.unwrap_or(1000), duration)
                };
                if scenario == Name::P3Noisy {
                    noisy(brokers, name, c, 1000, d)
                } else {
                    let h = herald_fanout(brokers, "ws", c, 1000, d);
                    let f = floor_fanout(c, 1000, d);
                    // Targets as ratios of the floor in the same run: the
                    // p99 at most the floor's, the median at most the
                    // floor's plus the producer's linger (Kafka's part).
                    (
                        fanout_rows_p50(name, &h, c, f.p50 + LINGER_MS, f.p99, Some(&f)),
                        json!({"herald": h.json, "floor": f.json, "linger_ms": LINGER_MS}),
                    )
                }
            }
            Name::Curve => crate::curve::curve(brokers, duration_override.unwrap_or(10.0)),
            Name::Delay => crate::curve::delay(brokers, duration_override.unwrap_or(10.0)),
            Name::P4 => {
                let c = clients_override.unwrap_or(10_000);
                let ws = herald_fanout(brokers, "ws", c, 50, duration);
                p2_p4(brokers, "sse", c, duration, Some(ws))
            }
            Name::P5 => {
                let c = clients_override.unwrap_or(5000);
                let h = herald_fanout(brokers, "poll", c, 20, duration);
                (
                    fanout_rows("p5", &h, c, 250.0, None),
                    json!({"herald": h.json}),
                )
            }
            Name::P6 => p6(brokers, 1_000_000),
            Name::P7 => p7(brokers, clients_override.unwrap_or(10_000), 1000),
            Name::Push => crate::push::run(brokers, duration),
            Name::Peer => crate::peer::run(brokers, duration, clients_override),
            Name::F1 => crate::faults::f1(clients_override.unwrap_or(5000), 20, duration.max(25.0)),
            Name::F2 => crate::faults::f2(
                brokers,
                clients_override.unwrap_or(5000),
                20,
                duration.max(25.0),
            ),
            Name::F3 => crate::faults::f3(brokers, clients_override.unwrap_or(2000), 20, duration),
            Name::F4 => {
                crate::faults::f4(brokers, clients_override.unwrap_or(10_000), 20, duration)
            }
            Name::Deflate => {
                crate::compression::run(brokers, clients_override.unwrap_or(10_000), duration)
            }
        };
        for r in &rows {
            eprintln!(
                "bench: {name:<5} {:<24} {:>12.3} {} target {:?} floor {:?} {}",
                r.metric,
                r.measured,
                r.cmp,
                r.target,
                r.floor,
                if r.cmp == "info" {
                    ""
                } else if r.pass {
                    "PASS"
                } else {
                    "MISS"
                }
            );
        }
        if scenario == Name::Smoke {
            inexact |= rows
                .iter()
                .any(|r| (r.metric == "lost" || r.metric == "duplicated") && r.measured != 0.0);
        }
        // The machine's load when the scenario started and ended: on shared
        // cores the figures are read against it.
        let load = load_average();
        let doc = json!({"scenario": name, "started_unix_us": started, "duration_s": duration,
            "load_average": {"start": load_start, "end": load}, "rows": rows, "details": details});
        std::fs::write(
            out.join(format!("{name}.json")),
            serde_json::to_string_pretty(&doc).expect("json"),
        )
        .expect("write result");
    }
    report(out);
    if inexact {
        eprintln!("bench: smoke run lost or duplicated messages");
        std::process::exit(1);
    }
}

/// How long the noisy neighbour of `p2-noisy` and `p3-noisy` spins.
const HOG_S: f64 = 10.0;

/// After a noisy neighbour, the clients cut off meanwhile resume and catch
/// up from their cursors: they get this long after the last record.
const HOG_GRACE_S: f64 = 90.0;

/// The producer's `linger.ms` ([`produce_paced`]): part of every record's
/// latency that is Kafka's batching, not Herald's.
pub const LINGER_MS: f64 = 5.0;

/// A noisy-neighbour run (`p2-noisy`, `p3-noisy`): WebSocket fan-out
/// with a CPU hog on one core mid-run. Nothing may be lost or duplicated
/// while a core is taken away; the latency is reported, not judged.
fn noisy(brokers: &str, name: &str, clients: usize, rate: u64, duration: f64) -> (Vec<Row>, Value) {
    let opts = Opts {
        hog_s: HOG_S,
        grace_s: HOG_GRACE_S,
        ..Opts::default()
    };
    let h = herald_fanout_with(brokers, "ws", clients, rate, duration, &opts);
    (
        fanout_rows(name, &h, clients, f64::INFINITY, None),
        json!({"herald": h.json, "hog_s": HOG_S}),
    )
}

/// `/proc/loadavg`'s 1-minute figure (NaN off Linux).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn p2_p4(
    brokers: &str,
    transport: &str,
    clients: usize,
    duration: f64,
    ws: Option<FanoutResult>,
) -> (Vec<Row>, Value) {
    let h = herald_fanout(brokers, transport, clients, 50, duration);
    if let Some(ws) = ws {
        let mut rows = fanout_rows("p4", &h, clients, 1.1 * ws.p99, None);
        rows[2].floor = Some(ws.p99);
        rows[2].metric = "p99 ms (target 1.1× WS p99)".into();
        (rows, json!({"herald_sse": h.json, "herald_ws": ws.json}))
    } else {
        let f = floor_fanout(clients, 50, duration);
        let rows = fanout_rows("p2", &h, clients, 1.2 * f.p99, Some(&f));
        (rows, json!({"herald": h.json, "floor": f.json}))
    }
}

fn p1(brokers: &str, clients: usize) -> (Vec<Row>, Value) {
    let topic = crate::topic_name("idle");
    create_topic(brokers, &topic, 1);
    let mut rows = Vec::new();
    let mut details = serde_json::Map::new();
    for transport in ["ws", "sse"] {
        let herald = HeraldProc::start(brokers, &topic, "latest", "");
        let rss0 = herald.rss_kib();
        let workers = Workers::spawn(transport, &herald.addr, clients, 0, 3.0, &[], 3);
        std::thread::sleep(Duration::from_millis(500));
        let rss1 = herald.rss_kib();
        let connected = workers.connected();
        let span = workers.connect_span_s();
        let _ = workers.finish();
        herald.stop();
        let per_conn = (rss1 - rss0) / connected.max(1) as f64;
        let accepts = connected as f64 / span.max(1e-9);
        rows.push(row(
            "p1",
            &format!("{transport}: connected"),
            connected as f64,
            "ge",
            clients as f64,
            None,
            "conns",
        ));
        rows.push(row(
            "p1",
            &format!("{transport}: RSS KiB per conn"),
            per_conn,
            "le",
            4.0,
            None,
            "KiB",
        ));
        rows.push(row(
            "p1",
            &format!("{transport}: accepts/s"),
            accepts,
            "ge",
            5000.0,
            None,
            "/s",
        ));
        details.insert(transport.into(), json!({"connected": connected, "rss_kib_idle": rss0, "rss_kib_connected": rss1, "connect_span_s": span}));
    }
    (rows, Value::Object(details))
}

fn p6(brokers: &str, n: u64) -> (Vec<Row>, Value) {
    let topic = crate::topic_name("ingest");
    create_topic(brokers, &topic, 3);
    let took = crate::produce(brokers, &topic, n);
    eprintln!("bench: produced {n} records in {:.1}s", took.as_secs_f64());
    let floor = crate::bare_base_consumer(brokers, &topic, 3, n);
    // Timed from the spawn, as the floor is timed from the consumer's creation.
    let started = Instant::now();
    let herald = HeraldProc::start(brokers, &topic, "earliest", "");
    let cpu0 = 0.0;
    while herald.metric("herald_messages_consumed_total") < n {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "herald ingest stalled"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let cpu = herald.cpu_s() - cpu0;
    herald.stop();
    let rows = vec![
        row(
            "p6",
            "ingest records/s",
            rate,
            "ge",
            500_000.0,
            Some(floor),
            "/s",
        ),
        row(
            "p6",
            "ingest % of floor",
            100.0 * rate / floor,
            "ge",
            80.0,
            Some(100.0),
            "%",
        ),
    ];
    (
        rows,
        json!({"records": n, "herald_records_per_s": rate, "floor_base_consumer_per_s": floor, "herald_cpu_s": cpu}),
    )
}

/// One P7 round: Herald restarts while its clients are `behind` records
/// behind, then `clients` resume from the old cursor with `rcvbuf`-byte
/// kernel receive buffers ("0": the kernel's autotuned default).
struct Resume {
    caught_up_s: f64,
    reads_per_record: f64,
    totals: Totals,
    details: Value,
}

fn resume_round(brokers: &str, clients: usize, behind: u64, rcvbuf: &str) -> Resume {
    let topic = crate::topic_name("resume");
    create_topic(brokers, &topic, 1);
    let first = HeraldProc::start(brokers, &topic, "latest", "");
    let body = http_get(&first.addr, "/poll?channel=bench");
    let cursor = body
        .split("\"cursor\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("cursor from /poll")
        .to_owned();
    first.stop();
    produce_paced(brokers, &topic, 1_000_000, behind);
    let second = HeraldProc::start(brokers, &topic, "latest", "");
    let extra = ["--cursor", &cursor, "--rcvbuf", rcvbuf];
    let workers = Workers::spawn("ws", &second.addr, clients, behind, 60.0, &extra, 2);
    let span = workers.connect_span_s();
    let ready = workers.ready.clone();
    let done = workers.finish();
    let t = totals(&done);
    let caught_up_s = if t.all_done_us > 0 {
        (t.all_done_us - t.first_connect_us) as f64 / 1e6
    } else {
        f64::INFINITY
    };
    let consumed = second.metric("herald_messages_consumed_total");
    let replayed = second.metric("herald_replay_records_total");
    second.stop();
    let details = json!({"clients": t.connected, "behind": behind, "rcvbuf": rcvbuf, "connect_span_s": span,
        "caught_up_s": caught_up_s, "consumed": consumed, "replayed": replayed,
        "complete_clients": t.complete, "received": t.received, "workers_ready": ready});
    Resume {
        caught_up_s,
        reads_per_record: (consumed + replayed) as f64 / behind as f64,
        totals: t,
        details,
    }
}

/// P7 with browser-like sockets (the kernel's default, autotuned receive
/// buffer), and again with the 16 KiB buffers of the other scenarios: on
/// loopback a 16 KiB window makes the clients' kernel, not Herald, the
/// bottleneck of pushing 10,000 × 1,000 messages (most of its time is TCP
/// transmit work done inside the clients' reads).
fn p7(brokers: &str, clients: usize, behind: u64) -> (Vec<Row>, Value) {
    let r = resume_round(brokers, clients, behind, "0");
    let small = resume_round(brokers, clients, behind, "16384");
    let t = &r.totals;
    let rows = vec![
        row(
            "p7",
            "clients connected",
            t.connected as f64,
            "ge",
            clients as f64,
            None,
            "conns",
        ),
        row("p7", "all caught up s", r.caught_up_s, "le", 5.0, None, "s"),
        row(
            "p7",
            "all caught up s, 16 KiB client buffers",
            small.caught_up_s,
            "info",
            f64::NAN,
            None,
            "s",
        ),
        row(
            "p7",
            "Kafka reads per record",
            r.reads_per_record.max(small.reads_per_record),
            "le",
            2.0,
            None,
            "reads",
        ),
        row(
            "p7",
            "lost",
            (t.lost + small.totals.lost) as f64,
            "le",
            0.0,
            None,
            "records",
        ),
        row(
            "p7",
            "duplicated",
            (t.duplicates + small.totals.duplicates) as f64,
            "le",
            0.0,
            None,
            "records",
        ),
    ];
    (
        rows,
        json!({"default_buffers": r.details, "small_buffers": small.details}),
    )
}

// ---------------------------------------------------------------- report

pub fn report(dir: &Path) {
    let mut rows: Vec<Row> = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        if f.extension().is_some_and(|e| e == "json")
            && let Ok(text) = std::fs::read_to_string(&f)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
            && let Ok(r) = serde_json::from_value::<Vec<Row>>(v["rows"].clone())
        {
            rows.extend(r);
        }
    }
    let mut md = String::from(
        "| scenario | figure | measured | target | floor | |\n|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        let target = match r.cmp.as_str() {
            "le" => format!("≤ {}", fmt(r.target)),
            "ge" => format!("≥ {}", fmt(r.target)),
            _ => "—".into(),
        };
        let verdict = match (r.cmp.as_str(), r.pass) {
            ("info", _) => "",
            (_, true) => "met",
            _ => "**missed**",
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.metric,
            fmt(r.measured),
            target,
            r.floor.map_or("—".into(), fmt),
            verdict
        ));
    }
    std::fs::write(dir.join("summary.md"), &md).expect("summary.md");
    std::fs::write(dir.join("chart.svg"), svg(&rows)).expect("chart.svg");
    crate::curve::plot(dir);
    print!("{md}");
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else if v.is_infinite() {
        "∞".into()
    } else if v.abs() >= 1000.0 {
        format!("{:.0}", v)
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Horizontal bars: each figure as a ratio of its target (the target is the
/// dashed line at 1×; a floor, when there is one, a black tick).
fn svg(rows: &[Row]) -> String {
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.cmp != "info" && r.target > 0.0)
        .collect();
    let (left, width, h) = (300.0, 500.0, 22.0);
    let max_ratio = 3.0;
    let height = 50.0 + h * rows.len() as f64;
    let x = |ratio: f64| left + width * (ratio.clamp(0.0, max_ratio) / max_ratio);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"10\" y=\"18\" font-weight=\"bold\">herald-bench: measured ÷ target (dashed line = target; black tick = floor; green met, red missed)</text>\n",
        left + width + 120.0
    );
    for (i, r) in rows.iter().enumerate() {
        let y = 35.0 + h * i as f64;
        let ratio = r.measured / r.target;
        let color = if r.pass { "#3a3" } else { "#c33" };
        s.push_str(&format!(
            "<text x=\"10\" y=\"{}\">{} {}</text>\n",
            y + 14.0,
            r.scenario,
            xml(&r.metric)
        ));
        s.push_str(&format!(
            "<rect x=\"{left}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"{color}\"/>\n",
            y + 3.0,
            x(ratio) - left,
            h - 6.0
        ));
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\">{}</text>\n",
            x(ratio) + 4.0,
            y + 14.0,
            xml(&fmt(r.measured))
        ));
        if let Some(f) = r.floor {
            let fx = x(f / r.target);
            s.push_str(&format!("<line x1=\"{fx:.1}\" x2=\"{fx:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"black\" stroke-width=\"2\"/>\n", y + 1.0, y + h - 1.0));
        }
    }
    let tx = x(1.0);
    s.push_str(&format!("<line x1=\"{tx}\" x2=\"{tx}\" y1=\"28\" y2=\"{height}\" stroke=\"#555\" stroke-dasharray=\"4 3\"/>\n"));
    s.push_str("</svg>\n");
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_are_case_insensitive() {
        assert_eq!(scenarios("p3"), Ok(vec![Name::P3]));
        assert_eq!(scenarios("P3"), Ok(vec![Name::P3]));
        assert_eq!(scenarios("SMOKE"), Ok(vec![Name::Smoke]));
        assert_eq!(scenarios("Smoke"), Ok(vec![Name::Smoke]));
        for name in Name::EVERY {
            assert_eq!(scenarios(name.as_str()), Ok(vec![name]));
            assert_eq!(scenarios(&name.as_str().to_uppercase()), Ok(vec![name]));
        }
    }

    #[test]
    fn all_runs_every_scenario_but_smoke() {
        let all = scenarios("all").unwrap();
        assert_eq!(scenarios("ALL"), Ok(all.clone()));
        assert_eq!(scenarios("All"), Ok(all.clone()));
        assert_eq!(all.len(), Name::EVERY.len() - 1);
        assert!(!all.contains(&Name::Smoke));
        for name in Name::EVERY.into_iter().filter(|n| *n != Name::Smoke) {
            assert_eq!(all.iter().filter(|n| **n == name).count(), 1, "{name:?}");
        }
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_names_that_exist() {
        for arg in ["NOPE", "p9", "P0", "", " p3", "p3 ", "smokes", "al"] {
            let err = scenarios(arg).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(&format!("{arg:?}")), "{text}");
            for name in [
                "p1", "p2", "p3", "p4", "p5", "p6", "p7", "push", "peer", "f1", "f2", "f3", "f4",
                "smoke", "all",
            ] {
                assert!(text.contains(name), "{name} missing from: {text}");
            }
        }
    }
}
