//! In a real browser: Debian's Chromium, driven by playwright-core
//! (`tests/browser/driver.mjs`, a child process speaking line-based JSON),
//! against Herald started in-process on a real Kafka.
//!
//! - the browser's own `EventSource` survives a Herald restart by itself,
//!   resuming with `Last-Event-ID`, and ends with exactly the records
//!   produced;
//! - `herald.js` forced onto each transport receives exactly the records
//!   produced, across a restart;
//! - `herald.js` falls back from a refused WebSocket to SSE and resumes
//!   without loss or duplicates;
//! - a screenshot of the demo page with live messages, `docs/demo.png`.
//!
//! `scripts/test.sh` installs what these need (chromium, `npm ci` in
//! `tests/browser`); without them the tests fail and say so.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use herald::Herald;
use herald::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// One browser at a time: two cores, and each test's timing stays its own.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the page may take to receive everything produced.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Fails (never skips) with what to do when the browser setup is missing.
fn check_prerequisites() {
    let chromium = std::env::var("HERALD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: the browser tests need Debian's chromium package; \
         run scripts/test.sh, which installs it (apt-get install chromium)"
    );
    assert!(
        browser_dir()
            .join("node_modules/playwright-core/package.json")
            .exists(),
        "tests/browser/node_modules is missing: run scripts/test.sh, which runs `npm ci` there"
    );
}

/// A Chromium page behind `driver.mjs`.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    next_id: u64,
}

impl Browser {
    async fn launch() -> Browser {
        check_prerequisites();
        let mut child = Command::new("node")
            .arg("driver.mjs")
            .current_dir(browser_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // No kill on drop: when a test fails, its end of stdin closes
            // and the driver closes Chromium and removes its profile.
            .spawn()
            .expect("cannot run `node tests/browser/driver.mjs`: is Node.js installed? run scripts/test.sh");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut browser = Browser {
            child,
            stdin,
            lines,
            next_id: 1,
        };
        let hello = browser.line(TIMEOUT).await;
        assert_eq!(
            hello["ready"], true,
            "the driver could not start Chromium: {hello}"
        );
        browser
    }

    /// The driver's next answer line; its log lines go to stderr.
    async fn line(&mut self, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .expect("timed out waiting for the browser driver")
                .expect("reading the browser driver")
                .expect("the browser driver exited");
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("the browser driver printed {line:?}"));
            if let Some(text) = value.get("log") {
                eprintln!("browser: {}", text.as_str().unwrap_or_default());
                continue;
            }
            return value;
        }
    }

    async fn call(&mut self, op: &str, mut args: Value, timeout: Duration) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        args["id"] = id.into();
        args["op"] = op.into();
        let mut text = args.to_string();
        text.push('\n');
        self.stdin
            .write_all(text.as_bytes())
            .await
            .expect("writing to the browser driver");
        // The driver has its own deadline for `wait`; this one is a backstop.
        let answer = self.line(timeout + Duration::from_secs(10)).await;
        assert_eq!(answer["id"], id, "answer out of order: {answer}");
        assert_eq!(
            answer["ok"], true,
            "browser {op} failed: {}",
            answer["error"]
        );
        answer["value"].clone()
    }

    async fn goto(&mut self, url: &str) {
        self.call("goto", json!({ "url": url }), TIMEOUT).await;
    }

    /// Opens a plain document served by Herald (`/healthz`): its origin is
    /// Herald's, and Chromium knows it came from loopback, so the page may
    /// open loopback WebSockets (Chromium blocks those from pages of
    /// unknown address space).
    async fn open_herald_origin(&mut self, node: &Node) {
        self.goto(&format!("{}/healthz", node.url())).await;
    }

    /// Evaluates a JavaScript expression in the page (promises awaited).
    async fn eval(&mut self, js: &str) -> Value {
        self.call("eval", json!({"js": js}), TIMEOUT).await
    }

    /// Waits until a JavaScript expression is truthy in the page.
    async fn wait(&mut self, what: &str, js: &str, timeout: Duration) -> Value {
        let started = Instant::now();
        let args = json!({"js": js, "timeout_ms": timeout.as_millis() as u64});
        let id = self.next_id;
        let value = self.call("wait", args, timeout).await;
        eprintln!(
            "browser: {what} after {:?} (request {id})",
            started.elapsed()
        );
        value
    }

    async fn close(mut self) {
        let _ = self.call("close", json!({}), TIMEOUT).await;
        let _ = tokio::time::timeout(TIMEOUT, self.child.wait()).await;
    }
}

/// A Herald that can be stopped and started again on the same address.
struct Node {
    config: Config,
    topics: Vec<(String, i32)>,
    herald: Option<Herald>,
}

impl Node {
    async fn start(mut config: Config, topics: &[(&str, i32)]) -> Node {
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        let herald = start(config.clone(), topics).await;
        config.http.listen = herald.local_addr();
        Node {
            config,
            topics: topics.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            herald: Some(herald),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.config.http.listen
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    async fn stop(&mut self) {
        self.herald.take().expect("running").stop().await;
    }

    /// Starts a new Herald on the same port, waiting until it is ready.
    async fn restart(&mut self) {
        assert!(self.herald.is_none(), "stop first");
        let topics: Vec<(&str, i32)> = self.topics.iter().map(|(t, n)| (t.as_str(), *n)).collect();
        let herald = start(self.config.clone(), &topics).await;
        assert_eq!(herald.local_addr(), self.addr());
        self.herald = Some(herald);
    }

    async fn shutdown(mut self) {
        if let Some(h) = self.herald.take() {
            h.stop().await;
        }
    }
}

/// What the test produced: `n` → `(key, partition, offset)`.
#[derive(Default)]
struct Produced {
    records: BTreeMap<u64, (String, i32, i64)>,
}

impl Produced {
    async fn send(&mut self, producer: &Producer, topic: &str, ns: std::ops::Range<u64>) {
        for n in ns {
            let key = format!("k{}", n % 5);
            let (p, o) = producer.send_n(topic, &key, n).await;
            self.records.insert(n, (key, p, o));
        }
    }

    fn count_with_key(&self, key: &str) -> usize {
        self.records.values().filter(|(k, _, _)| k == key).count()
    }

    /// Asserts `received` (envelopes, in arrival order) is exactly the
    /// records with `key` (all when `None`): none missing, none twice, at
    /// their Kafka positions, each partition in offset order.
    fn assert_exact(&self, received: &[Value], key: Option<&str>, what: &str) {
        let mut got: Vec<u64> = received
            .iter()
            .map(|m| m["data"]["n"].as_u64().expect("n"))
            .collect();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            got.len(),
            "{what}: a record arrived twice: {got:?}"
        );
        let want: Vec<u64> = self
            .records
            .iter()
            .filter(|(_, (k, _, _))| key.is_none_or(|key| k == key))
            .map(|(n, _)| *n)
            .collect();
        got.sort_unstable();
        assert_eq!(got, want, "{what}: exactly the records produced");
        for m in received {
            let n = m["data"]["n"].as_u64().unwrap();
            let (_, p, o) = &self.records[&n];
            assert_eq!(
                (
                    m["partition"].as_i64().unwrap(),
                    m["offset"].as_i64().unwrap()
                ),
                (*p as i64, *o),
                "{what}: position of record {n}"
            );
            assert!(
                m["cursor"].as_str().is_some_and(|c| !c.is_empty()),
                "{what}: a cursor"
            );
        }
        assert_partition_order_json(received);
    }
}

/// Installs herald.js in the page: `window.herald`, `window.subs[channel]`,
/// `window.received[channel]` (envelopes), `window.seenOver` (the transport
/// each message arrived on), `window.gaps`, `window.errors`.
fn subscribe_js(transports: Option<&[&str]>, channels: &[&str]) -> String {
    let options = match transports {
        Some(t) => json!({ "transports": t }),
        None => json!({}),
    };
    format!(
        r#"(async () => {{
  const {{ Herald }} = await import("/herald.js");
  window.received = {{}}; window.subs = {{}}; window.seenOver = [];
  window.gaps = []; window.errors = [];
  window.herald = new Herald(location.origin, {options});
  for (const ch of {channels}) {{
    received[ch] = [];
    subs[ch] = herald.subscribe(ch, {{
      onMessage(msg) {{ received[ch].push(msg); seenOver.push(herald.transport); }},
      onGap(gap) {{ gaps.push(gap); }},
      onError(err) {{ errors.push(err); console.warn("onError", JSON.stringify(err)); }},
    }});
  }}
  return true;
}})()"#,
        channels = json!(channels),
    )
}

/// Until every subscription has its starting cursor: from then on no
/// record produced is missed.
const SUBSCRIBED_JS: &str =
    "window.herald && herald.transport && Object.values(subs).every((s) => s.cursor)";

/// Produces `before` records and waits for the page to have them all;
/// restarts Herald mid-stream with `down` records produced while it is
/// down and `after` once it is back; waits for all of them; then produces
/// one last record that fences the streams (whatever arrived twice or out
/// of place would be there by the time it is), for the caller to await.
async fn across_a_restart(
    browser: &mut Browser,
    node: &mut Node,
    topic: &str,
    produced: &mut Produced,
    [before, down, after]: [u64; 3],
) {
    let producer = Producer::new();
    produced.send(&producer, topic, 0..before).await;
    let first = format!("the first {before}");
    browser
        .wait(
            &first,
            &received_at_least("all", before as usize),
            RECEIVE_TIMEOUT,
        )
        .await;
    node.stop().await;
    produced.send(&producer, topic, before..before + down).await;
    node.restart().await;
    let total = before + down + after;
    produced.send(&producer, topic, before + down..total).await;
    let all = format!("all {total}");
    browser
        .wait(
            &all,
            &received_at_least("all", total as usize),
            RECEIVE_TIMEOUT,
        )
        .await;
    produced.send(&producer, topic, total..total + 1).await;
}

fn received_at_least(channel: &str, n: usize) -> String {
    format!("received[{}].length >= {n}", json!(channel))
}

async fn received(browser: &mut Browser, channel: &str) -> Vec<Value> {
    let value = browser.eval(&format!("received[{}]", json!(channel))).await;
    value.as_array().expect("an array").clone()
}

/// The page saw no gap and no error that ended a subscription (errors
/// herald.js retried by itself, like `503 not_ready` from a Herald that is
/// still starting, are fine).
async fn assert_clean(browser: &mut Browser) {
    let problems = browser.eval("({gaps, errors})").await;
    assert_eq!(problems["gaps"], json!([]), "no gap expected");
    let errors = problems["errors"].as_array().unwrap();
    assert!(
        errors.iter().all(|e| e["fatal"] == false),
        "no subscription ended: {errors:?}"
    );
    if !errors.is_empty() {
        eprintln!("browser: retried after {errors:?}");
    }
}

async fn herald_js_receives_exactly_over(transport: &str) {
    let _serial = SERIAL.lock().await;
    let topic = unique_topic(&format!("browser-{transport}"));
    create_topic(&topic, 3).await;
    let mut node = Node::start(
        config(&[(&topic, "all"), (&topic, "key.{key}")]),
        &[(&topic, 3)],
    )
    .await;
    let mut browser = Browser::launch().await;
    browser.open_herald_origin(&node).await;
    browser
        .eval(&subscribe_js(Some(&[transport]), &["all", "key.k1"]))
        .await;
    browser.wait("subscribed", SUBSCRIBED_JS, TIMEOUT).await;
    assert_eq!(browser.eval("herald.transport").await, transport);

    // A channel no route produces is refused for good, and only it.
    browser
        .eval(
            r#"(() => {
  window.refused = [];
  herald.subscribe("no-such-channel", { onError(e) { refused.push(e); } });
  return true;
})()"#,
        )
        .await;
    let refused = browser
        .wait("the refusal", "refused.length > 0 && refused", TIMEOUT)
        .await;
    assert_eq!(refused[0]["code"], "unknown_channel", "{refused}");
    assert_eq!(refused[0]["fatal"], true, "{refused}");
    assert_eq!(browser.eval("herald.transport").await, transport);

    let mut produced = Produced::default();
    across_a_restart(&mut browser, &mut node, &topic, &mut produced, [40, 20, 20]).await;
    browser
        .wait(
            "the fence",
            &received_at_least("key.k1", produced.count_with_key("k1")),
            RECEIVE_TIMEOUT,
        )
        .await;
    browser
        .wait("the fence", &received_at_least("all", 81), RECEIVE_TIMEOUT)
        .await;

    produced.assert_exact(&received(&mut browser, "all").await, None, transport);
    produced.assert_exact(
        &received(&mut browser, "key.k1").await,
        Some("k1"),
        transport,
    );
    let over = browser.eval("[...new Set(seenOver)]").await;
    assert_eq!(over, json!([transport]), "every message over {transport}");
    assert_clean(&mut browser).await;

    // sub.cursor is the last message's cursor, and it resumes exactly:
    // nothing after it yet.
    let cursor = browser.eval("subs.all.cursor").await;
    let last = received(&mut browser, "all").await.last().unwrap()["cursor"].clone();
    assert_eq!(cursor, last);
    let (messages, _) = poll_ok(
        node.addr(),
        &format!("channel=all&cursor={}", cursor.as_str().unwrap()),
    )
    .await;
    assert!(
        messages.is_empty(),
        "nothing after sub.cursor: {messages:?}"
    );

    browser.eval("herald.close(), herald.transport").await;
    browser.close().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_js_over_websocket_receives_exactly_the_records_produced() {
    herald_js_receives_exactly_over("ws").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_js_over_sse_receives_exactly_the_records_produced() {
    herald_js_receives_exactly_over("sse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_js_over_long_polling_receives_exactly_the_records_produced() {
    herald_js_receives_exactly_over("poll").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_event_source_resumes_across_a_herald_restart_with_last_event_id() {
    let _serial = SERIAL.lock().await;
    let topic = unique_topic("browser-es");
    create_topic(&topic, 3).await;
    let mut node = Node::start(config(&[(&topic, "feed")]), &[(&topic, 3)]).await;
    let mut browser = Browser::launch().await;
    browser.open_herald_origin(&node).await;
    browser
        .eval(
            r#"(() => {
  window.got = []; window.opened = []; window.errors = 0; window.reconnects = [];
  const es = (window.es = new EventSource("/sse?channel=feed"));
  es.onmessage = (e) => got.push({ id: e.lastEventId, env: JSON.parse(e.data) });
  es.addEventListener("subscribed", (e) => opened.push(JSON.parse(e.data).cursor));
  es.addEventListener("reconnect", (e) => reconnects.push(JSON.parse(e.data).reason));
  es.onerror = () => { errors++; };
  return true;
})()"#,
        )
        .await;
    browser
        .wait("subscribed", "opened.length === 1", TIMEOUT)
        .await;

    let producer = Producer::new();
    let mut produced = Produced::default();
    produced.send(&producer, &topic, 0..30).await;
    browser
        .wait("the first 30", "got.length >= 30", RECEIVE_TIMEOUT)
        .await;
    let last_id = browser.eval("got[got.length - 1].id").await;

    // The browser's reconnect waits at the network layer until the new
    // Herald is ready: like a load balancer that sends traffic only to
    // ready nodes. (Herald answers `503 not_ready` while starting, and a
    // native EventSource gives up for good on any non-200.)
    browser
        .call("hold_requests", json!({"pattern": "/sse\\?"}), TIMEOUT)
        .await;
    node.stop().await;
    browser
        .wait(
            "the browser saw the stream end",
            "reconnects.length === 1 && errors >= 1",
            TIMEOUT,
        )
        .await;
    produced.send(&producer, &topic, 30..50).await;
    node.restart().await;
    browser.call("release_requests", json!({}), TIMEOUT).await;
    produced.send(&producer, &topic, 50..70).await;
    browser
        .wait("all 70", "got.length >= 70", RECEIVE_TIMEOUT)
        .await;
    produced.send(&producer, &topic, 70..71).await;
    browser
        .wait("the fence", "got.length >= 71", RECEIVE_TIMEOUT)
        .await;

    let got = browser.eval("got").await;
    let envelopes: Vec<Value> = got
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["id"], e["env"]["cursor"], "lastEventId is the cursor");
            e["env"].clone()
        })
        .collect();
    produced.assert_exact(&envelopes, None, "native EventSource");
    assert_eq!(browser.eval("reconnects").await, json!(["shutdown"]));
    assert_eq!(
        browser.eval("es.readyState").await,
        1,
        "EventSource is open again"
    );
    // It reconnected by itself to the same URL, which names no cursor, and
    // the new Herald opened the stream exactly at the last id the browser
    // had seen: the browser sent it as Last-Event-ID. (DevTools does not
    // show that header, which Chromium's loader adds.)
    let requests = browser.call("requests", json!({}), TIMEOUT).await;
    let urls: Vec<&str> = requests
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["url"].as_str().unwrap())
        .collect();
    assert!(!urls.is_empty(), "the browser reconnected");
    let url = format!("{}/sse?channel=feed", node.url());
    assert!(urls.iter().all(|u| *u == url), "{urls:?}");
    let opened = browser.eval("opened").await;
    assert_eq!(opened.as_array().unwrap().len(), 2, "{opened}");
    assert_eq!(opened[1], last_id, "resumed at the Last-Event-ID");

    browser.eval("es.close(), true").await;
    browser.close().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_js_falls_back_to_sse_when_websocket_is_refused_and_resumes_exactly() {
    let _serial = SERIAL.lock().await;
    let topic = unique_topic("browser-fallback");
    create_topic(&topic, 3).await;
    let mut node = Node::start(config(&[(&topic, "all")]), &[(&topic, 3)]).await;
    let mut browser = Browser::launch().await;
    browser.call("refuse_websockets", json!({}), TIMEOUT).await;
    browser.open_herald_origin(&node).await;
    let started = Instant::now();
    browser.eval(&subscribe_js(None, &["all"])).await;
    browser.wait("subscribed", SUBSCRIBED_JS, TIMEOUT).await;
    eprintln!("fell back in {:?}", started.elapsed());
    assert_eq!(browser.eval("herald.transport").await, "sse");

    // The SSE connection dies with Herald; records keep coming meanwhile.
    let mut produced = Produced::default();
    across_a_restart(&mut browser, &mut node, &topic, &mut produced, [30, 20, 20]).await;
    browser
        .wait("the fence", &received_at_least("all", 71), RECEIVE_TIMEOUT)
        .await;

    produced.assert_exact(&received(&mut browser, "all").await, None, "after fallback");
    let over = browser.eval("[...new Set(seenOver)]").await;
    assert!(
        !over.as_array().unwrap().contains(&json!("ws")),
        "nothing over the refused WebSocket: {over}"
    );
    assert_eq!(
        browser.eval("seenOver.slice(0, 30)").await,
        json!(vec!["sse"; 30]),
        "before the restart, over SSE"
    );
    assert_clean(&mut browser).await;
    browser.eval("herald.close(), true").await;
    browser.close().await;
    node.shutdown().await;
}

/// `herald dev` (its embedded Kafka, the demo page at `/`) with records
/// arriving live: the screenshot the README shows, `docs/demo.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_shows_live_messages_and_is_screenshotted() {
    let _serial = SERIAL.lock().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let _dev = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["dev", "--listen", &addr, "--ticker", "0s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start herald dev");
    let info = dev_info(&addr).await;
    let brokers = info["brokers"].as_str().expect("brokers").to_owned();

    // The client the page imports: the file in the repo, as a module
    // browsers may cache for a while.
    let js = reqwest::get(format!("http://{addr}/herald.js"))
        .await
        .expect("/herald.js");
    assert_eq!(js.status(), 200);
    let header = |name: &str| {
        js.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/javascript"));
    assert!(header("cache-control").contains("max-age="));
    assert_eq!(
        js.text().await.unwrap(),
        include_str!("../client/herald.js")
    );

    let mut browser = Browser::launch().await;
    browser
        .call("viewport", json!({"width": 1280, "height": 860}), TIMEOUT)
        .await;
    browser
        .goto(&format!("http://{addr}/?channel=news&channel=user.k7"))
        .await;
    browser
        .wait(
            "the demo page subscribed",
            r##"document.getElementById("status").dataset.state === "live"
               && document.querySelectorAll("#subs code").length === 2
               && ![...document.querySelectorAll("#subs code")].some((c) => c.textContent.startsWith("waiting"))
               && document.querySelectorAll("#produce .cmd").length > 0"##,
            TIMEOUT,
        )
        .await;

    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let records: &[(&str, &str, &str)] = &[
        (
            "news",
            "deploy",
            r#"{"headline":"Checkout v2.14 rolled out to 100% of traffic","team":"payments"}"#,
        ),
        (
            "users",
            "k7",
            r#"{"event":"order_shipped","order":"A-10427","carrier":"DHL"}"#,
        ),
        (
            "news",
            "incident",
            r#"{"headline":"Search latency back under 120 ms (p99)","status":"resolved"}"#,
        ),
        (
            "news",
            "release",
            r#"{"headline":"Herald 0.1 ships WebSocket, SSE and long polling","link":"/herald.js"}"#,
        ),
        (
            "users",
            "k7",
            r#"{"event":"payment_captured","amount":{"value":4990,"currency":"EUR"}}"#,
        ),
        (
            "news",
            "ops",
            r#"{"headline":"Kafka cluster upgraded to 4.4 with zero downtime"}"#,
        ),
        (
            "news",
            "deploy",
            r#"{"headline":"Recommendations model refreshed","version":"2026-11-25"}"#,
        ),
        (
            "users",
            "k7",
            r#"{"event":"message_received","from":"support","unread":2}"#,
        ),
        (
            "news",
            "market",
            r#"{"headline":"EU storefront opens in Portugal and Ireland","regions":["pt","ie"]}"#,
        ),
        (
            "news",
            "ops",
            r#"{"headline":"Nightly backfill finished: 1,204,331 rows"}"#,
        ),
    ];
    for (topic, key, payload) in records {
        let record = rdkafka::producer::FutureRecord::to(topic)
            .key(*key)
            .payload(*payload);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
        // Spread out a little, as live traffic is (for the picture only).
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    browser
        .wait(
            "every record on the page",
            &format!(
                "document.querySelectorAll('#list .row.msg').length >= {}",
                records.len()
            ),
            RECEIVE_TIMEOUT,
        )
        .await;
    let shown = browser
        .eval(
            "({ rows: document.querySelectorAll('#list .row.msg').length, \
                count: document.getElementById('count').textContent, \
                transport: document.getElementById('transport-now').textContent })",
        )
        .await;
    assert_eq!(shown["rows"], records.len(), "{shown}");
    assert_eq!(shown["transport"], "WebSocket", "{shown}");

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/demo.png");
    browser
        .call("screenshot", json!({"path": path}), TIMEOUT)
        .await;
    let png = std::fs::read(&path).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot"
    );
    browser.close().await;
}

/// Waits for `herald dev` on `addr` to be ready; returns its `/dev/info`.
async fn dev_info(addr: &str) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(r) = reqwest::get(format!("http://{addr}/readyz")).await
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "herald dev never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = reqwest::get(format!("http://{addr}/dev/info"))
        .await
        .expect("/dev/info")
        .bytes()
        .await
        .expect("/dev/info body");
    serde_json::from_slice(&body).expect("/dev/info is JSON")
}
