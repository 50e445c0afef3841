//! In a real browser: Debian's Chromium, driven by playwright-core
//! (`tests/browser/driver.mjs`, a child process speaking line-based JSON),
//! and Debian's Firefox ESR for Web Push, against Herald started
//! in-process on a real Kafka.
//!
//! - the browser's own `EventSource` survives a Herald restart by itself,
//!   resuming with `Last-Event-ID`, and ends with exactly the records
//!   produced;
//! - `herald.js` forced onto each transport receives exactly the records
//!   produced, across a restart;
//! - `herald.js` falls back from a refused WebSocket to SSE and resumes
//!   without loss or duplicates;
//! - ten subscriptions of one `herald.js` share one connection on SSE and
//!   on polling, and adding or closing one loses or repeats nothing;
//! - a reload with `storage: sessionStorage` continues exactly, and coming
//!   back online reconnects at once;
//! - `herald.d.ts` passes `tsc --strict` on a typed example, and the
//!   `npm pack`ed package installs and works in a scratch project;
//! - `herald.js` with a token function handing out 3-second tokens (minted
//!   in the page with WebCrypto) renews them on every transport, records
//!   arriving exactly once across the renewals;
//! - a screenshot of the demo page with live messages, `docs/demo.png`;
//! - Chromium's own WebSocket negotiates permessage-deflate
//!   (`ws.extensions`), its compressed subscribe messages are understood,
//!   and every message arrives compressed (seen on the wire through a
//!   recording proxy), exactly the records produced, in order;
//! - in Firefox ESR (`tests/browser/firefox.mjs`, with a push service of
//!   the test's own, `autopush.mjs`): `herald.push` subscribes, each record
//!   is pushed once, a truncated one is read back from /poll, a renewed
//!   subscription is registered again, and unsubscribing ends it.
//!
//! `scripts/test.sh` installs what these need (chromium, firefox-esr, `npm
//! ci` in `tests/browser`); without them the tests fail and say so.

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
    /// The page's console and errors so far, for tests that check what
    /// the page wrote there.
    logs: Vec<String>,
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
            logs: Vec::new(),
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
                let text = text.as_str().unwrap_or_default();
                eprintln!("browser: {text}");
                self.logs.push(text.to_owned());
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

    // A cursor Kafka cannot serve (a partition the topic does not have) is
    // refused for good, and herald.js hands the cursor back rather than
    // dropping it.
    let mut forged = herald::hub::cursor::Cursor::new();
    forged.set(&topic, 9, 0);
    let forged = forged.encode();
    browser
        .eval(&format!(
            r#"(() => {{
  window.badCursor = [];
  window.badSub = herald.subscribe("key.k2", {{ cursor: {forged:?}, onError(e) {{ badCursor.push(e); }} }});
  return true;
}})()"#
        ))
        .await;
    let bad = browser
        .wait(
            "the cursor's refusal",
            "badCursor.length > 0 && badCursor",
            TIMEOUT,
        )
        .await;
    assert_eq!(bad[0]["code"], "invalid_cursor", "{bad}");
    assert_eq!(
        (&bad[0]["fatal"], &bad[0]["cursor"]),
        (&json!(true), &json!(forged)),
        "{bad}"
    );
    assert_eq!(browser.eval("badSub.cursor").await, json!(forged));

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

/// The HS256 secret Herald checks the page's tokens with.
const TOKEN_SECRET: &str = "a browser test secret of thirty-two bytes or more";

/// How many records the token test produces, one every
/// [`TOKEN_TEST_INTERVAL`]: 30 s of them.
const TOKEN_TEST_RECORDS: u64 = 300;
const TOKEN_TEST_INTERVAL: Duration = Duration::from_millis(100);

/// Herald with `[auth]` (HS256 with [`TOKEN_SECRET`], no leeway, no public
/// channel) and one topic routed to the channels `feed` and `other`.
fn secured_config(topic: &str) -> Config {
    let text = format!(
        "[kafka]\nbrokers = \"{}\"\nmetadata_refresh = \"500ms\"\nstats_interval = \"200ms\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n\
         [auth]\nhmac_secret = \"{TOKEN_SECRET}\"\nleeway = \"0s\"\n\
         [[route]]\ntopic = \"{topic}\"\nchannel = \"feed\"\n\
         [[route]]\ntopic = \"{topic}\"\nchannel = \"other\"\n",
        bootstrap()
    );
    Config::parse(&text, "test").expect("test config")
}

/// The Heralds of the token test's page, by name: one per transport with
/// 3-second tokens (renewed ahead of expiry), one per transport with
/// 1-second tokens (which expire before herald.js renews them, as a
/// token that lives under its 1 s minimum renewal interval does, so Herald
/// ends the connection: each is the expiry path), and two whose tokens
/// Herald refuses.
const RENEWING: [&str; 3] = ["ws", "sse", "poll"];
const EXPIRING: [&str; 3] = ["expiring-ws", "expiring-sse", "expiring-poll"];
const REFUSED: [&str; 2] = ["refused-ws", "refused-sse"];

/// Installs, in a page of Herald's origin, a token function per Herald
/// that mints HS256 JWTs with WebCrypto (an implementation independent of
/// the `jsonwebtoken` crate Herald verifies with) allowing `feed`, and
/// starts `window.t[name]` for every name above: a Herald forced onto one
/// transport, subscribed to `feed` (`received`, `over`: the transport of
/// each, `errors`) and, for the renewing ones, to `other`, which the token
/// does not allow (`refused`); `calls` counts the token function's calls.
/// The refused Heralds sign with the wrong secret.
///
/// `window.wire[name]` records what went over the wire, told apart by the
/// token's `sub` (the Herald's name): WebSockets opened, `auth` messages
/// and `authenticated` answers, close codes, requests by path and channel,
/// HTTP statuses, SSE streams Herald ended for `token_expired`, distinct
/// tokens used; `tokenInUrl` counts URLs that carried one.
fn token_page_js() -> String {
    let js = r#"(async () => {
  const { Herald } = await import("/herald.js");
  const enc = new TextEncoder();
  const b64url = (bytes) =>
    btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const json64 = (value) => b64url(enc.encode(JSON.stringify(value)));
  const hmacKey = (secret) =>
    crypto.subtle.importKey("raw", enc.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const good = await hmacKey(SECRET);
  const wrong = await hmacKey(SECRET + ", almost");
  const mint = async (key, claims) => {
    const signed = `${json64({ alg: "HS256", typ: "JWT" })}.${json64(claims)}`;
    const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, enc.encode(signed)));
    return `${signed}.${b64url(mac)}`;
  };
  const claimsOf = (token) => {
    try {
      return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    } catch {
      return {};
    }
  };
  const subOf = (token) => claimsOf(token).sub ?? "?";

  window.wire = {};
  window.tokenInUrl = 0;
  const wireOf = (name) =>
    (wire[name] ??= {
      sockets: 0, auths: 0, authenticated: 0, closes: [], requests: {}, statuses: {}, expiredStreams: 0,
      tokens: new Set(), minMarginMs: null, lastExp: null,
    });
  // A token's first use: how long the one before it had left then.
  const used = (w, token) => {
    if (w.tokens.has(token)) return;
    w.tokens.add(token);
    const now = Date.now();
    if (w.lastExp !== null) w.minMarginMs = Math.min(w.minMarginMs ?? Infinity, w.lastExp * 1000 - now);
    w.lastExp = claimsOf(token).exp;
  };
  const NativeWebSocket = WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(url, ...rest) {
      super(url, ...rest);
      if (String(url).includes("token=")) tokenInUrl++;
    }
    send(data) {
      const m = JSON.parse(data);
      if (m.type === "auth") {
        const w = wireOf(subOf(m.token));
        if (!this.counted) {
          this.counted = true;
          w.sockets++;
          this.addEventListener("message", (e) => {
            if (JSON.parse(e.data).type === "authenticated") w.authenticated++;
          });
          this.addEventListener("close", (e) => w.closes.push(e.code));
        }
        w.auths++;
        used(w, m.token);
      }
      super.send(data);
    }
  };
  const nativeFetch = fetch;
  window.fetch = async (url, init = {}) => {
    if (String(url).includes("token=")) tokenInUrl++;
    const bearer = init.headers && init.headers.authorization;
    const w = wireOf(bearer ? subOf(bearer.slice("Bearer ".length)) : "none");
    const u = new URL(url, location.href);
    // Each channel the request asks for (`sub=CHANNEL@…`, one request
    // for all of a Herald's subscriptions).
    for (const sub of u.searchParams.getAll("sub")) {
      const what = `${u.pathname}?${sub.slice(0, sub.lastIndexOf("@"))}`;
      w.requests[what] = (w.requests[what] || 0) + 1;
    }
    if (bearer) used(w, bearer.slice("Bearer ".length));
    const response = await nativeFetch(url, init);
    w.statuses[response.status] = (w.statuses[response.status] || 0) + 1;
    if (u.pathname !== "/sse" || !response.ok) return response;
    // Read a copy of the stream for how it ended.
    const [mine, copy] = response.body.tee();
    (async () => {
      let text = "";
      try {
        for await (const chunk of copy.pipeThrough(new TextDecoderStream())) text += chunk;
      } catch {}
      if (text.includes('event: reconnect\ndata: {"reason":"token_expired"}')) w.expiredStreams++;
    })();
    return new Response(mine, { status: response.status, statusText: response.statusText, headers: response.headers });
  };

  window.t = {};
  const start = (name, transport, { key = good, lifetime = 3, other = false } = {}) => {
    const s = (t[name] = { received: [], over: [], errors: [], refused: [], calls: 0 });
    s.herald = new Herald(location.origin, {
      transports: [transport],
      token: async () => {
        s.calls++;
        const now = Math.floor(Date.now() / 1000);
        return mint(key, { sub: name, iat: now, exp: now + lifetime, channels: ["feed"] });
      },
    });
    s.feed = s.herald.subscribe("feed", {
      onMessage(msg) {
        s.received.push(msg);
        s.over.push(s.herald.transport);
      },
      onGap(gap) {
        s.errors.push({ gap });
      },
      onError(err) {
        s.errors.push(err);
      },
    });
    if (other) {
      s.herald.subscribe("other", {
        onError(err) {
          s.refused.push(err);
        },
      });
    }
  };
  for (const transport of ["ws", "sse", "poll"]) {
    start(transport, transport, { other: true });
    start(`expiring-${transport}`, transport, { lifetime: 1 });
  }
  start("refused-ws", "ws", { key: wrong });
  start("refused-sse", "sse", { key: wrong });
  return true;
})()"#;
    js.replace("SECRET", &json!(TOKEN_SECRET).to_string())
}

/// What every Herald of the token page received and `window.wire` (its
/// sets counted), in one evaluation.
const SNAPSHOT_JS: &str = "({
  page: Object.fromEntries(Object.entries(t).map(([name, s]) => [name, {
    received: s.received, over: [...new Set(s.over)], errors: s.errors, refused: s.refused, calls: s.calls,
  }])),
  wire: Object.fromEntries(Object.entries(wire).map(([name, w]) => [name, { ...w, tokens: w.tokens.size }])),
})";

/// Every Herald with good tokens has received at least `n` records.
fn all_received_js(n: u64) -> String {
    format!(
        "{}.every((name) => t[name].received.length >= {n})",
        json!([RENEWING, EXPIRING].concat())
    )
}

/// A count in the page's records, 0 when absent.
fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_js_renews_three_second_tokens_on_every_transport_and_delivers_exactly_once() {
    let _serial = SERIAL.lock().await;
    let topic = unique_topic("browser-token");
    create_topic(&topic, 3).await;
    let node = Node::start(secured_config(&topic), &[(&topic, 3)]).await;
    let mut browser = Browser::launch().await;
    browser.open_herald_origin(&node).await;
    let started = Instant::now();
    browser.eval(&token_page_js()).await;
    browser
        .wait(
            "subscribed on every transport, `other` refused",
            // A cursor once Herald answered: from then on nothing produced
            // is missed (the expiring ones are often between connections).
            &format!(
                "{}.every((name) => t[name].feed.cursor) && {}.every((name) => t[name].refused.length === 1)",
                json!([RENEWING, EXPIRING].concat()),
                json!(RENEWING),
            ),
            TIMEOUT,
        )
        .await;

    // 30 s of records, to every Herald at once: meanwhile the renewing ones
    // renew about every 2 s, the expiring ones are cut off every second.
    let producer = Producer::new();
    let mut produced = Produced::default();
    let mut every = tokio::time::interval(TOKEN_TEST_INTERVAL);
    let producing = Instant::now();
    for n in 0..TOKEN_TEST_RECORDS {
        every.tick().await;
        produced.send(&producer, &topic, n..n + 1).await;
    }
    let window = producing.elapsed();
    browser
        .wait(
            "every record everywhere",
            &all_received_js(TOKEN_TEST_RECORDS),
            RECEIVE_TIMEOUT,
        )
        .await;
    let fence = TOKEN_TEST_RECORDS;
    produced.send(&producer, &topic, fence..fence + 1).await;
    browser
        .wait(
            "the fence everywhere",
            &all_received_js(fence + 1),
            RECEIVE_TIMEOUT,
        )
        .await;
    let elapsed = started.elapsed();

    // One snapshot of both, taken at once: the Heralds are still renewing.
    let snapshot = browser.eval(SNAPSHOT_JS).await;
    let (page, wire) = (&snapshot["page"], &snapshot["wire"]);
    for name in [RENEWING, EXPIRING].concat() {
        let s = &page[name];
        let w = &wire[name];
        let transport = name.trim_start_matches("expiring-");
        produced.assert_exact(s["received"].as_array().unwrap(), None, name);
        assert_eq!(
            s["over"],
            json!([transport]),
            "{name}: every message over {transport}"
        );
        let calls = count(&s["calls"]);
        let tokens = count(&w["tokens"]);
        assert!(
            calls >= 8,
            "{name}: the token function was called {calls} times"
        );
        assert!(
            tokens >= 8 && tokens <= calls,
            "{name}: {tokens} tokens used of {calls} minted"
        );
        eprintln!(
            "token test, {name}: {} records, {calls} token calls, {tokens} tokens used, errors {}, wire {w}",
            TOKEN_TEST_RECORDS + 1,
            s["errors"]
        );
    }
    for name in RENEWING {
        let s = &page[name];
        let w = &wire[name];
        assert_eq!(s["errors"], json!([]), "{name}: no error, no gap");
        // A channel the token does not allow: refused once, for good.
        let refused = s["refused"].as_array().unwrap();
        assert_eq!(refused.len(), 1, "{name}: {refused:?}");
        assert_eq!(refused[0]["code"], "forbidden_channel", "{name}");
        assert_eq!(refused[0]["fatal"], true, "{name}");
        // Renewed ahead of expiry: Herald never had to end anything (the
        // test prints how far ahead: `minMarginMs`).
        assert!(w["minMarginMs"].as_f64().unwrap() > 0.0, "{name}: {w}");
        assert_eq!(w["expiredStreams"], 0, "{name}: {w}");
        assert_eq!(count(&w["statuses"]["401"]), 0, "{name}: {w}");
    }
    // In place on the WebSocket: one socket all along, each fresh token
    // answered `authenticated`.
    let ws = &wire["ws"];
    assert_eq!(ws["sockets"], 1, "the WebSocket was never replaced: {ws}");
    assert_eq!(ws["closes"], json!([]), "{ws}");
    assert_eq!(ws["authenticated"], ws["auths"], "{ws}");
    // SSE reopened its stream with each fresh token; both HTTP transports
    // asked for `other` once (in a request with `feed`, which went on
    // alone after `other` was refused).
    let sse = &wire["sse"]["requests"];
    assert!(count(&sse["/sse?feed"]) >= 8, "{sse}");
    assert_eq!(sse["/sse?other"], 1, "{sse}");
    assert_eq!(
        wire["poll"]["requests"]["/poll?other"], 1,
        "{}",
        wire["poll"]
    );

    // Expired before renewal, on each transport: Herald ended the
    // connection (close 4001; `reconnect` `token_expired`; a long poll
    // returned and the next was `401`) and herald.js came back with a
    // fresh token, from the cursor: the exact records above.
    let expiring_ws = &wire["expiring-ws"];
    let closed_4001 = expiring_ws["closes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| **c == 4001)
        .count();
    assert!(closed_4001 >= 8, "{expiring_ws}");
    assert!(
        count(&wire["expiring-sse"]["expiredStreams"]) >= 8,
        "{}",
        wire["expiring-sse"]
    );
    assert!(
        count(&wire["expiring-poll"]["statuses"]["401"]) >= 8,
        "{}",
        wire["expiring-poll"]
    );
    for name in EXPIRING {
        // An expiry is routine and not reported, unless the fresh token
        // was refused too (it may arrive expired when minted at the very
        // end of a second).
        for e in page[name]["errors"].as_array().unwrap() {
            assert_eq!(e["code"], "token_expired", "{name}: {e}");
            assert_eq!(e["fatal"], false, "{name}: {e}");
        }
    }

    assert!(
        wire.get("none").is_none(),
        "every request carried a token: {wire}"
    );
    assert_eq!(browser.eval("tokenInUrl").await, 0, "no token in a URL");

    // Tokens Herald refuses: retried with a fresh one, backing off, each
    // refusal after the first reported; never a record, never given up.
    for name in REFUSED {
        let s = &page[name];
        let calls = count(&s["calls"]);
        let errors = s["errors"].as_array().unwrap();
        eprintln!(
            "token test, {name}: {calls} token calls, {} errors reported in {elapsed:?}",
            errors.len()
        );
        assert_eq!(s["received"], json!([]), "{name}");
        assert!(
            (3..=25).contains(&calls),
            "{name}: {calls} token calls in {elapsed:?}: backing off"
        );
        // The first refusal in a row is not reported (an expiry is
        // routine); the last call's may still be on its way.
        let reported = errors.len() as u64;
        assert!(
            (calls - 2..=calls - 1).contains(&reported),
            "{name}: {reported} refusals reported of {calls}: {errors:?}"
        );
        for e in errors {
            assert_eq!(e["code"], "invalid_token", "{name}: {e}");
            assert_eq!(e["fatal"], false, "{name}: {e}");
        }
    }
    // herald.js never logs a token (a JWT starts `eyJ`, base64 of `{"`).
    assert!(
        !browser.logs.iter().any(|l| l.contains("eyJ")),
        "a token in the page's console: {:?}",
        browser.logs
    );
    eprintln!(
        "token test: {} records produced over {window:?}, {elapsed:?} from subscribing to the fence",
        TOKEN_TEST_RECORDS + 1
    );

    browser
        .eval("Object.values(t).forEach((s) => s.herald.close()), true")
        .await;
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
    let info = dev_info(addr.parse().unwrap()).await;
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
    // `herald dev` has Web Push on: the Notifications button is ready (it
    // is not pressed: Chromium's push service is out of reach here).
    let push = browser
        .wait("the Notifications box checked", PUSH_BOX_JS, TIMEOUT)
        .await;
    assert_eq!(push["disabled"], false, "{push}");
    assert!(
        push["reason"].as_str().unwrap().starts_with("Off."),
        "{push}"
    );

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/demo.png");
    browser
        .call("screenshot", json!({"path": path}), TIMEOUT)
        .await;
    let png = std::fs::read(&path).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot"
    );

    // A Herald without [push]: the button is disabled, saying why.
    let topic = unique_topic("browser-demo-nopush");
    create_topic(&topic, 1).await;
    let node = Node::start(config(&[(&topic, "news")]), &[(&topic, 1)]).await;
    browser.goto(&format!("{}/", node.url())).await;
    let push = browser
        .wait("the Notifications box checked", PUSH_BOX_JS, TIMEOUT)
        .await;
    assert_eq!(push["disabled"], true, "{push}");
    assert!(
        push["reason"].as_str().unwrap().contains("[push]"),
        "{push}"
    );
    browser.close().await;
    node.shutdown().await;
}

/// The demo page's Notifications box once it has checked for Web Push:
/// whether its button is disabled, and what it says.
const PUSH_BOX_JS: &str = r#"!document.getElementById("push-result").textContent.startsWith("Checking") && {
  disabled: document.getElementById("push-on").disabled,
  reason: document.getElementById("push-result").textContent,
}"#;

// ---- Web Push in Firefox ESR --------------------------------------------

/// Firefox ESR, the one browser that takes a push subscription here: its
/// push service is the test's own (`tests/browser/autopush.mjs`), as
/// Chromium's is Google's and cannot be reached.
fn firefox_binary() -> String {
    std::env::var("HERALD_FIREFOX").unwrap_or_else(|_| "/usr/bin/firefox-esr".into())
}

/// Fails (never skips) with what to do when Firefox or `ws` is missing.
fn check_firefox_prerequisites() {
    let firefox = firefox_binary();
    assert!(
        Path::new(&firefox).exists(),
        "{firefox} is missing: the Web Push browser test needs Debian's firefox-esr package; \
         run scripts/test.sh, which installs it (apt-get install firefox-esr)"
    );
    assert!(
        browser_dir().join("node_modules/ws/package.json").exists(),
        "tests/browser/node_modules is missing or old: run scripts/test.sh, which runs `npm ci` there"
    );
}

/// Firefox behind `firefox.mjs`, with the push service and the test page
/// it serves. Events (the push service's, the page's reports) are kept in
/// arrival order for the test to read.
struct Firefox {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    /// `http://127.0.0.1:PORT` of the push service (its endpoints).
    push_origin: String,
    /// `http://127.0.0.1:PORT` of the test page and its service worker.
    pages_origin: String,
    /// What the push service saw: `hello`, `register`, `delivery`, `ack`,
    /// `refused`, `unregister`, … (see autopush.mjs).
    push: Vec<Value>,
    /// What the page reported: `{"type":"sw","message":…}` for each message
    /// its service worker posted, `{"type":"error"}` for its errors.
    reports: Vec<Value>,
}

impl Firefox {
    async fn start() -> Firefox {
        check_firefox_prerequisites();
        let mut child = Command::new("node")
            .arg("firefox.mjs")
            .current_dir(browser_dir())
            .env("HERALD_FIREFOX", firefox_binary())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // No kill on drop: when a test fails, its end of stdin closes
            // and the driver ends Firefox and removes its profile.
            .spawn()
            .expect("cannot run `node tests/browser/firefox.mjs`: is Node.js installed? run scripts/test.sh");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut firefox = Firefox {
            child,
            stdin,
            lines,
            next_id: 1,
            push_origin: String::new(),
            pages_origin: String::new(),
            push: Vec::new(),
            reports: Vec::new(),
        };
        let hello = firefox.line(TIMEOUT).await;
        assert_eq!(
            hello["ready"], true,
            "the Firefox driver did not start: {hello}"
        );
        firefox.push_origin = hello["push_service"].as_str().unwrap().to_owned();
        firefox.pages_origin = hello["pages"].as_str().unwrap().to_owned();
        firefox
    }

    /// The driver's next answer line; events are kept, logs go to stderr.
    async fn line(&mut self, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = self
                .next_line(deadline)
                .await
                .expect("timed out waiting for the Firefox driver");
            if let Some(answer) = self.keep_event(line) {
                return answer;
            }
        }
    }

    /// The driver's next line, or `None` at `deadline`.
    async fn next_line(&mut self, deadline: tokio::time::Instant) -> Option<Value> {
        let line = tokio::time::timeout_at(deadline, self.lines.next_line())
            .await
            .ok()?
            .expect("reading the Firefox driver")
            .expect("the Firefox driver exited");
        let value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("the Firefox driver printed {line:?}"));
        Some(value)
    }

    /// Keeps `line` if it is an event (logs go to stderr); else it is an
    /// answer, returned.
    fn keep_event(&mut self, line: Value) -> Option<Value> {
        if let Some(text) = line.get("log") {
            eprintln!("firefox: {}", text.as_str().unwrap_or_default());
        } else if let Some(event) = line.get("push") {
            eprintln!("push service: {event}");
            self.push.push(event.clone());
        } else if let Some(report) = line.get("report") {
            eprintln!("page: {}", abbreviated(report));
            self.reports.push(report.clone());
        } else {
            return Some(line);
        }
        None
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
            .expect("writing to the Firefox driver");
        let answer = self.line(timeout + Duration::from_secs(10)).await;
        assert_eq!(answer["id"], id, "answer out of order: {answer}");
        assert_eq!(
            answer["ok"], true,
            "firefox {op} failed: {}",
            answer["error"]
        );
        answer["value"].clone()
    }

    /// Launches Firefox on a page of the driver's (launched again once
    /// when a new profile's first launch does not load it).
    async fn open(&mut self, path: &str) {
        let launches = self
            .call("open", json!({ "path": path }), Duration::from_secs(120))
            .await;
        eprintln!("firefox: the page loaded: {launches}");
    }

    /// Evaluates a JavaScript expression in the page (promises awaited).
    async fn eval(&mut self, js: &str) -> Value {
        let timeout = Duration::from_secs(60);
        let args = json!({"js": js, "timeout_ms": timeout.as_millis() as u64});
        self.call("eval", args, timeout).await
    }

    /// Reads events until `done` holds for them, or fails after `timeout`.
    async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl FnMut(&Firefox) -> bool,
    ) {
        let started = Instant::now();
        assert!(
            self.try_wait_for(what, timeout, done).await,
            "timed out after {timeout:?} waiting for {what}"
        );
        eprintln!("firefox: {what} after {:?}", started.elapsed());
    }

    /// Reads events until `done` holds for them (true) or `timeout` has
    /// passed (false).
    async fn try_wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Firefox) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(self) {
            let Some(line) = self.next_line(deadline).await else {
                return false;
            };
            if let Some(answer) = self.keep_event(line) {
                panic!("an answer nobody asked for while waiting for {what}: {answer}");
            }
        }
        true
    }

    /// The envelopes the service worker forwarded to the page, in order.
    fn envelopes(&self) -> Vec<Value> {
        self.reports
            .iter()
            .filter(|r| r["type"] == "sw" && r["message"]["type"] == "herald.push")
            .map(|r| r["message"]["envelope"].clone())
            .collect()
    }

    /// The push service's events of one type.
    fn push_events(&self, kind: &str) -> Vec<Value> {
        self.push
            .iter()
            .filter(|e| e["type"] == kind)
            .cloned()
            .collect()
    }

    /// The endpoints of the subscriptions made at the push service, in
    /// order. Firefox may send a `register` again (same channel id) when it
    /// reconnects before the answer came: one subscription.
    fn endpoints_registered(&self) -> Vec<String> {
        let mut endpoints: Vec<String> = Vec::new();
        for e in self.push_events("register") {
            let endpoint = e["endpoint"].as_str().unwrap().to_owned();
            if !endpoints.contains(&endpoint) {
                endpoints.push(endpoint);
            }
        }
        endpoints
    }

    async fn close(mut self) {
        let _ = self.call("close", json!({}), TIMEOUT).await;
        let _ = tokio::time::timeout(TIMEOUT, self.child.wait()).await;
    }
}

/// `value` as JSON, long strings cut short (a record too large for a push
/// is 5,000 characters).
fn abbreviated(value: &Value) -> String {
    let text = value.to_string();
    if text.len() <= 600 {
        return text;
    }
    let cut = (0..=600)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}… ({} bytes)", &text[..cut], text.len())
}

/// The HS256 secret of the Web Push test's Herald.
const PUSH_TOKEN_SECRET: &str = "the web push browser test's secret, thirty-two bytes or more";

/// A token for `channels`, valid for an hour, minted with jwt-simple (not
/// the crate Herald verifies with).
fn push_token(channels: &[&str]) -> String {
    use jwt_simple::prelude::*;
    let key = HS256Key::from_bytes(PUSH_TOKEN_SECRET.as_bytes());
    let claims =
        Claims::with_custom_claims(json!({ "channels": channels }), Duration::from_hours(1))
            .with_subject("push-test");
    key.authenticate(claims).expect("sign the token")
}

/// Herald with `[auth]` (no public channel), `[push]` sending to the test's
/// push service on 127.0.0.1 over plain HTTP, the test page's origin
/// allowed, and `topic` routed to the channels `alerts` and `secret`.
fn push_config(topic: &str, vapid_key: &Path, pages_origin: &str) -> Config {
    let text = format!(
        "[kafka]\nbrokers = \"{}\"\nmetadata_refresh = \"500ms\"\nstats_interval = \"200ms\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\nallowed_origins = [\"{pages_origin}\"]\n\
         [auth]\nhmac_secret = \"{PUSH_TOKEN_SECRET}\"\n\
         [push]\nvapid_private_key_file = \"{}\"\nvapid_subject = \"mailto:push-test@herald.invalid\"\n\
         subscriptions_topic = \"{topic}-subscriptions\"\ngroup_id = \"{topic}-push\"\n\
         allowed_endpoint_hosts = [\"127.0.0.1\"]\nallow_http_endpoints = true\n\
         [[route]]\ntopic = \"{topic}\"\nchannel = \"alerts\"\n\
         [[route]]\ntopic = \"{topic}\"\nchannel = \"secret\"\n",
        bootstrap(),
        vapid_key.display(),
    );
    Config::parse(&text, "test").expect("test config")
}

/// herald.js from Herald, a Herald with the page's token, and
/// `window.sw`: the test's service worker (`push/sw.js`, which imports
/// herald-sw.js from Herald; title and body from the query).
fn push_page_js(herald: &str, token: &str) -> String {
    format!(
        r#"(async () => {{
  const {{ Herald, HeraldPushError }} = await import("{herald}/herald.js");
  window.HeraldPushError = HeraldPushError;
  window.herald = new Herald("{herald}", {{ token: {token} }});
  window.sw = "/sw.js?herald=" + encodeURIComponent("{herald}") + "&title=/title&body=/body";
  return herald.push.supported;
}})()"#,
        token = json!(token),
    )
}

/// What herald.js stored for the service worker of the page's scope.
const STORED_JS: &str = r#"new Promise((resolve, reject) => {
  const open = indexedDB.open("herald-push", 1);
  open.onerror = () => reject(open.error);
  open.onsuccess = () => {
    const get = open.result.transaction("subscriptions").objectStore("subscriptions").get(location.origin + "/");
    get.onsuccess = () => resolve(get.result ?? null);
    get.onerror = () => reject(get.error);
  };
})"#;

/// The records of the Web Push test, `{"n", "title", "body"}`; the last
/// one's body is too large for a push (4 KiB), so Herald sends it without
/// `data` and the service worker reads it back from /poll.
const PUSH_RECORDS: u64 = 6;
/// How long a warm-up record may take before another is produced.
const WARM_UP_EVERY: Duration = Duration::from_secs(3);
const LARGE_BODY_BYTES: usize = 5000;

fn push_payload(n: u64) -> String {
    let body = if n == PUSH_RECORDS - 1 {
        "x".repeat(LARGE_BODY_BYTES)
    } else {
        format!("record {n} in the browser")
    };
    json!({"n": n, "title": format!("Alert {n}"), "body": body}).to_string()
}

/// Envelopes carrying `data.n` (the test's records, not the warm-up ones).
fn numbered(envelopes: &[Value]) -> Vec<&Value> {
    envelopes
        .iter()
        .filter(|e| e["data"]["n"].is_u64())
        .collect()
}

/// Firefox ESR subscribed through herald.push gets, through a push
/// service of the test's own, exactly the records produced to its channel:
/// each pushed once, encrypted (Firefox decrypts it) and VAPID-signed for
/// the endpoint's origin and port, shown as a notification titled from
/// the record; a record too large for a push is read back from /poll by
/// the service worker with the token herald.js stored for it. When the
/// push service forgets the subscription, the service worker subscribes
/// again and registers the new one, and records keep coming; unsubscribe
/// ends it at Herald and at the push service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_push_in_firefox_delivers_each_record_once_reads_truncated_ones_back_and_survives_rotation()
 {
    let _serial = SERIAL.lock().await;
    let topic = unique_topic("browser-push");
    create_topic(&topic, 3).await;
    let dir = std::env::temp_dir().join(format!("herald-browser-push-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let vapid_key = dir.join("vapid.pem");
    let (code, _, err) = run_herald(&["push", "keygen", "--out", vapid_key.to_str().unwrap()]);
    assert_eq!(code, 0, "herald push keygen: {err}");

    let mut firefox = Firefox::start().await;
    let node = Node::start(
        push_config(&topic, &vapid_key, &firefox.pages_origin),
        &[(&topic, 3)],
    )
    .await;
    let herald = node.url();

    // The service worker Herald serves is the file in the repo.
    let sw = reqwest::get(format!("{herald}/herald-sw.js"))
        .await
        .unwrap();
    assert_eq!(sw.status(), 200);
    assert!(
        sw.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(
        sw.text().await.unwrap(),
        include_str!("../client/herald-sw.js")
    );

    firefox.open("/page.html").await;
    let token = push_token(&["alerts"]);
    assert_eq!(
        firefox.eval(&push_page_js(&herald, &token)).await,
        true,
        "push supported"
    );

    // A channel the token does not allow: Herald's refusal, with its code.
    let refused = firefox
        .eval(
            r#"herald.push.subscribe(["alerts", "secret"], { serviceWorker: sw }).then(
  () => "subscribed",
  (e) => ({ name: e.name, code: e.code, status: e.status, isError: e instanceof HeraldPushError }))"#,
        )
        .await;
    assert_eq!(
        refused,
        json!({"name": "HeraldPushError", "code": "forbidden_channel", "status": 403, "isError": true})
    );
    let subscribed = firefox
        .eval("herald.push.subscribe(['alerts'], { serviceWorker: sw }).then(({ id, endpoint, channels }) => ({ id, endpoint, channels }))")
        .await;
    let endpoint = subscribed["endpoint"].as_str().unwrap().to_owned();
    assert!(
        endpoint.starts_with(&format!("{}/wpush/", firefox.push_origin)),
        "an endpoint of the test's push service: {subscribed}"
    );
    assert_eq!(subscribed["channels"], json!(["alerts"]));
    assert!(
        subscribed["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{subscribed}"
    );
    // The refused attempt's browser subscription was reused, not replaced.
    let registered = firefox.endpoints_registered();
    assert_eq!(
        registered,
        vec![endpoint.clone()],
        "one subscription at the push service"
    );
    let stored = firefox.eval(STORED_JS).await;
    assert_eq!(stored["url"], herald.as_str(), "{stored}");
    assert_eq!(stored["channels"], json!(["alerts"]), "{stored}");
    assert_eq!(stored["endpoint"], endpoint.as_str(), "{stored}");
    assert_eq!(
        stored["token"],
        token.as_str(),
        "the service worker's token"
    );
    let status = firefox
        .eval("herald.push.subscription({ serviceWorker: sw }).then((s) => s && { endpoint: s.endpoint, channels: s.channels })")
        .await;
    assert_eq!(
        status,
        json!({"endpoint": endpoint, "channels": ["alerts"]})
    );

    // Herald's push consumer group starts at the live end once it has its
    // partitions: a warm-up record, again until one arrives, says it has.
    let producer = Producer::new();
    let warmed = Instant::now();
    for w in 0.. {
        assert!(w < 30, "no warm-up record reached the page");
        let payload = json!({"warmup": w}).to_string();
        producer
            .send(
                &topic,
                None,
                Some(b"warmup"),
                Some(payload.as_bytes()),
                None,
            )
            .await;
        let arrived = firefox
            .try_wait_for("a warm-up record", WARM_UP_EVERY, |f| {
                !f.envelopes().is_empty()
            })
            .await;
        if arrived {
            break;
        }
    }
    eprintln!("push: the sender is live after {:?}", warmed.elapsed());

    let mut produced = BTreeMap::new();
    for n in 0..PUSH_RECORDS {
        let key = format!("k{}", n % 3);
        let position = producer
            .send(
                &topic,
                None,
                Some(key.as_bytes()),
                Some(push_payload(n).as_bytes()),
                None,
            )
            .await;
        produced.insert(n, (key, position));
    }
    firefox
        .wait_for("every record in the page", RECEIVE_TIMEOUT, |f| {
            numbered(&f.envelopes()).len() >= PUSH_RECORDS as usize
        })
        .await;
    let check = |envelopes: &[Value], produced: &BTreeMap<u64, (String, (i32, i64))>| {
        let got = numbered(envelopes);
        let mut ns: Vec<u64> = got
            .iter()
            .map(|e| e["data"]["n"].as_u64().unwrap())
            .collect();
        ns.sort_unstable();
        assert_eq!(
            ns,
            produced.keys().copied().collect::<Vec<_>>(),
            "each record once"
        );
        for e in got {
            let n = e["data"]["n"].as_u64().unwrap();
            let (key, (partition, offset)) = &produced[&n];
            assert_eq!(e["channel"], "alerts", "{e}");
            assert_eq!(e["topic"], topic.as_str(), "{e}");
            assert_eq!(
                (
                    e["partition"].as_i64().unwrap(),
                    e["offset"].as_i64().unwrap()
                ),
                (*partition as i64, *offset),
                "{e}"
            );
            assert_eq!(e["key"], key.as_str(), "{e}");
            assert!(e["cursor"].as_str().is_some_and(|c| !c.is_empty()), "{e}");
            assert!(e.get("readBackError").is_none(), "{e}");
            let expected: Value = serde_json::from_str(&push_payload(n)).unwrap();
            assert_eq!(e["data"], expected, "record {n}'s data");
            // Only the large one came without data and was read back.
            assert_eq!(
                e["truncated"] == true,
                n == PUSH_RECORDS - 1,
                "record {n}: {e}"
            );
        }
    };
    check(&firefox.envelopes(), &produced);

    // The push service: each push VAPID-signed for its origin with the
    // port, none refused, each acked by Firefox as delivered.
    let deliveries = firefox.push_events("delivery");
    assert!(
        firefox.push_events("refused").is_empty(),
        "{:?}",
        firefox.push_events("refused")
    );
    for d in &deliveries {
        assert_eq!(d["vapid"]["aud"], firefox.push_origin.as_str(), "{d}");
        assert_eq!(d["vapid"]["sub"], "mailto:push-test@herald.invalid", "{d}");
        assert!(d["bytes"].as_u64().unwrap() <= 4096, "{d}");
    }
    firefox
        .wait_for("every push acked", TIMEOUT, |f| {
            f.push_events("ack").len() >= f.push_events("delivery").len()
        })
        .await;
    for ack in firefox.push_events("ack") {
        assert_eq!(ack["code"], 100, "delivered and decrypted: {ack}");
    }

    // One notification per channel: each replaced the one before.
    let shown = firefox
        .eval(
            r#"navigator.serviceWorker.getRegistration("/").then((r) => r.getNotifications()).then((all) =>
  all.map((n) => ({ title: n.title, body: n.body, tag: n.tag, data: n.data })))"#,
        )
        .await;
    let shown = shown.as_array().unwrap();
    assert_eq!(shown.len(), 1, "{shown:?}");
    let last = &shown[0];
    assert_eq!(last["tag"], "alerts", "{last}");
    if let Some(n) = last["data"]["data"]["n"].as_u64() {
        assert_eq!(last["title"], format!("Alert {n}"), "{last}");
        assert_eq!(
            last["body"].as_str().unwrap().chars().next(),
            Some(if n == PUSH_RECORDS - 1 { 'x' } else { 'r' })
        );
    } else {
        assert_eq!(
            last["title"], "alerts",
            "a warm-up record has no title: {last}"
        );
    }

    // The push service forgets the subscription (Firefox gets a new user
    // agent id): the service worker subscribes again and registers the new
    // endpoint with the stored channels and token, and drops the old one.
    firefox.call("rotate", json!({}), TIMEOUT).await;
    firefox
        .wait_for("the renewed subscription", RECEIVE_TIMEOUT, |f| {
            f.reports
                .iter()
                .any(|r| r["message"]["type"] == "herald.pushsubscriptionchange")
        })
        .await;
    let change = firefox
        .reports
        .iter()
        .find(|r| r["message"]["type"] == "herald.pushsubscriptionchange")
        .unwrap()["message"]
        .clone();
    assert!(change.get("error").is_none(), "{change}");
    let renewed = change["endpoint"].as_str().unwrap().to_owned();
    assert_ne!(renewed, endpoint);
    assert_eq!(change["previous"], endpoint.as_str(), "{change}");
    assert_eq!(
        firefox.endpoints_registered(),
        [endpoint.clone(), renewed.clone()]
    );
    wait_until_metric(node.addr(), "herald_push_subscriptions", 1.0).await;
    let stored = firefox.eval(STORED_JS).await;
    assert_eq!(stored["endpoint"], renewed.as_str(), "{stored}");

    let before = firefox.envelopes().len();
    let n = PUSH_RECORDS;
    let position = producer
        .send(
            &topic,
            None,
            Some(b"k0"),
            Some(push_payload(n).as_bytes()),
            None,
        )
        .await;
    produced.insert(n, ("k0".to_owned(), position));
    firefox
        .wait_for("a record at the renewed endpoint", RECEIVE_TIMEOUT, |f| {
            numbered(&f.envelopes()).len() > PUSH_RECORDS as usize
        })
        .await;
    check(&firefox.envelopes(), &produced);
    let renewed_id = renewed.rsplit('/').next().unwrap();
    let last_delivery = firefox.push_events("delivery").last().unwrap().clone();
    assert_eq!(last_delivery["channelID"], renewed_id, "{last_delivery}");
    assert!(firefox.envelopes().len() > before);

    // Unsubscribing ends it at Herald and at the push service.
    assert_eq!(
        firefox
            .eval("herald.push.unsubscribe({ serviceWorker: sw })")
            .await,
        true
    );
    // (A request Firefox may send again, as `register`.)
    let unregistered = firefox.push_events("unregister");
    assert!(
        !unregistered.is_empty() && unregistered.iter().all(|u| u["channelID"] == renewed_id),
        "{unregistered:?}"
    );
    wait_until_metric(node.addr(), "herald_push_subscriptions", 0.0).await;
    assert_eq!(firefox.eval(STORED_JS).await, Value::Null);
    assert_eq!(
        firefox
            .eval("herald.push.subscription({ serviceWorker: sw })")
            .await,
        Value::Null
    );
    assert!(
        !firefox.reports.iter().any(|r| r["type"] == "error"),
        "the page had errors: {:?}",
        firefox.reports
    );

    firefox.close().await;
    node.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Installs herald.js for the page-lifecycle tests: `window.herald` with
/// `options` (and `storage: sessionStorage` when `persist`),
/// `track(channel)` subscribing into `subs[channel]` and
/// `received[channel]`, and each of `channels` tracked. With `persist`
/// the envelopes received are kept in sessionStorage too, so a reloaded
/// page still has what it received before. `firstAfterOnline` is when the
/// first message came after the last `online` event (`onlineAt`), and
/// `firstAfterShown` after the test last made the tab visible (`shownAt`).
fn page_js(options: Value, persist: bool, channels: &[&str]) -> String {
    format!(
        r#"(async () => {{
  const {{ Herald }} = await import("/herald.js");
  const persist = {persist};
  window.received = {{}}; window.subs = {{}}; window.gaps = []; window.errors = [];
  const kept = (ch) => (persist ? JSON.parse(sessionStorage.getItem("test:" + ch) || "[]") : []);
  window.herald = new Herald(location.origin, {{ ...{options}, storage: persist ? sessionStorage : null }});
  addEventListener("online", () => {{ window.onlineAt = performance.now(); window.firstAfterOnline = null; }});
  window.track = (ch) => {{
    received[ch] = kept(ch);
    subs[ch] = herald.subscribe(ch, {{
      onMessage(msg) {{
        received[ch].push(msg);
        if (persist) sessionStorage.setItem("test:" + ch, JSON.stringify(received[ch]));
        if (window.onlineAt && !window.firstAfterOnline) window.firstAfterOnline = performance.now();
        if (window.shownAt && !window.firstAfterShown) window.firstAfterShown = performance.now();
      }},
      onGap(gap) {{ gaps.push(gap); }},
      onError(err) {{ errors.push(err); console.warn("onError", JSON.stringify(err)); }},
    }});
  }};
  for (const ch of {channels}) track(ch);
  return true;
}})()"#,
        channels = json!(channels),
    )
}

/// Produces the records `ns` with the keys `k0`…`k9` (`n % 10`), noting
/// each one's `n` under the channels it maps to (`key.kN`, and `all`).
async fn produce_keyed(
    producer: &Producer,
    topic: &str,
    ns: std::ops::Range<u64>,
    expected: &mut BTreeMap<String, Vec<u64>>,
) {
    for n in ns {
        let key = format!("k{}", n % 10);
        producer.send_n(topic, &key, n).await;
        expected.entry(format!("key.{key}")).or_default().push(n);
        expected.entry("all".into()).or_default().push(n);
    }
}

/// The page's connections to Herald now and the most at once since the
/// last reset, from the browser's network log; resets the count.
async fn streams(browser: &mut Browser) -> (usize, u64) {
    let s = browser
        .call("streams", json!({"reset": true}), TIMEOUT)
        .await;
    (
        s["open"].as_array().unwrap().len(),
        s["max"].as_u64().unwrap(),
    )
}

/// Until `received[channel]` holds as many records as `expected` has for
/// it.
async fn wait_for_expected(
    browser: &mut Browser,
    expected: &BTreeMap<String, Vec<u64>>,
    what: &str,
) {
    let js = expected
        .iter()
        .map(|(ch, ns)| format!("(received[{}]?.length ?? 0) >= {}", json!(ch), ns.len()))
        .collect::<Vec<_>>()
        .join(" && ");
    browser.wait(what, &js, RECEIVE_TIMEOUT).await;
}

/// The `n`s each tracked channel received, in arrival order.
async fn received_ns(browser: &mut Browser) -> BTreeMap<String, Vec<u64>> {
    let value = browser
        .eval("Object.fromEntries(Object.entries(received).map(([c, ms]) => [c, ms.map((m) => m.data.n)]))")
        .await;
    serde_json::from_value(value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_js_holds_one_connection_for_ten_subscriptions_on_sse_and_polling() {
    let _serial = SERIAL.lock().await;
    let topic = unique_topic("browser-shared");
    create_topic(&topic, 3).await;
    let node = Node::start(
        config(&[(&topic, "all"), (&topic, "key.{key}")]),
        &[(&topic, 3)],
    )
    .await;
    let mut browser = Browser::launch().await;
    browser.open_herald_origin(&node).await;
    let producer = Producer::new();
    let keys: Vec<String> = (0..10).map(|k| format!("key.k{k}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut next = 0u64;
    for transport in ["sse", "poll"] {
        let gauge = format!("herald_connections{{transport=\"{transport}\"}}");
        browser
            .eval(&page_js(json!({ "transports": [transport] }), false, &keys))
            .await;
        browser.wait("ten subscribed", SUBSCRIBED_JS, TIMEOUT).await;
        streams(&mut browser).await;
        let mut expected: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        produce_keyed(&producer, &topic, next..next + 50, &mut expected).await;
        expected.remove("all");
        wait_for_expected(&mut browser, &expected, "ten subscriptions, 50 records").await;
        // One connection: as Herald counts it, and in the browser's log.
        wait_until_metric(node.addr(), &gauge, 1.0).await;
        let (open, max) = streams(&mut browser).await;
        assert!(
            open <= 1 && max <= 1,
            "{transport}: {open} open, {max} at once"
        );

        // An eleventh subscription, added mid-stream, gets its records from
        // its start; the other ten lose and repeat none.
        browser.eval("track('all'), true").await;
        browser.wait("the eleventh", SUBSCRIBED_JS, TIMEOUT).await;
        let mut from_all = BTreeMap::new();
        produce_keyed(&producer, &topic, next + 50..next + 100, &mut from_all).await;
        for (ch, ns) in from_all {
            expected.entry(ch).or_default().extend(ns);
        }
        wait_for_expected(&mut browser, &expected, "eleven subscriptions").await;
        assert!(
            metric(node.addr(), &gauge).await <= 1.0,
            "{transport}: one connection"
        );

        // One removed: the others go on exactly, and it gets no more.
        browser.eval("subs['key.k9'].close(), true").await;
        let k9 = expected["key.k9"].clone();
        let mut rest = BTreeMap::new();
        produce_keyed(&producer, &topic, next + 100..next + 150, &mut rest).await;
        rest.remove("key.k9");
        for (ch, ns) in rest {
            expected.entry(ch).or_default().extend(ns);
        }
        // A fence: the last record for every channel left.
        produce_keyed(&producer, &topic, next + 150..next + 159, &mut expected).await;
        expected.insert("key.k9".into(), k9);
        wait_for_expected(&mut browser, &expected, "after one was removed").await;
        let (open, _) = streams(&mut browser).await;
        assert!(open <= 1, "{transport}: {open} open");
        assert!(
            metric(node.addr(), &gauge).await <= 1.0,
            "{transport}: one connection"
        );

        let got = received_ns(&mut browser).await;
        for (ch, want) in &expected {
            let mut got = got[ch].clone();
            let mut want = want.clone();
            if ch == "all" {
                // Three partitions: in order within each, not across.
                got.sort_unstable();
                want.sort_unstable();
            }
            assert_eq!(got, want, "{transport}: {ch} exactly, in order");
        }
        assert_eq!(browser.eval("errors.length + gaps.length").await, 0);
        assert_eq!(browser.eval("herald.transport").await, transport);
        browser.eval("herald.close(), true").await;
        wait_until_metric(node.addr(), &gauge, 0.0).await;
        next += 159;
    }
    browser.close().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_js_resumes_across_a_reload_and_reconnects_when_back_online() {
    let _serial = SERIAL.lock().await;
    let topic = unique_topic("browser-lifecycle");
    create_topic(&topic, 3).await;
    let mut node = Node::start(
        config(&[(&topic, "all"), (&topic, "key.{key}")]),
        &[(&topic, 3)],
    )
    .await;
    let mut browser = Browser::launch().await;
    browser.open_herald_origin(&node).await;
    let producer = Producer::new();
    let channels = ["all", "key.k1"];

    // A reload with `storage: sessionStorage`: the records produced while
    // the page reloads arrive after it, each once.
    let install = page_js(json!({ "transports": ["sse"] }), true, &channels);
    browser.eval(&install).await;
    browser.wait("subscribed", SUBSCRIBED_JS, TIMEOUT).await;
    let mut expected = BTreeMap::new();
    produce_keyed(&producer, &topic, 0..20, &mut expected).await;
    expected.retain(|ch, _| channels.contains(&ch.as_str()));
    wait_for_expected(&mut browser, &expected, "before the reload").await;
    let during = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut during = BTreeMap::new();
            produce_keyed(&Producer::new(), &topic, 20..40, &mut during).await;
            during
        })
    };
    browser.call("reload", json!({}), TIMEOUT).await;
    browser.eval(&install).await;
    for (ch, ns) in during.await.unwrap() {
        expected.entry(ch).or_default().extend(ns);
    }
    let mut after = BTreeMap::new();
    produce_keyed(&producer, &topic, 40..60, &mut after).await;
    for (ch, ns) in after {
        expected.entry(ch).or_default().extend(ns);
    }
    expected.retain(|ch, _| channels.contains(&ch.as_str()));
    wait_for_expected(&mut browser, &expected, "after the reload").await;
    let got = received_ns(&mut browser).await;
    let mut all = got["all"].clone();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..60).collect::<Vec<_>>(),
        "all: every record once across the reload"
    );
    assert_eq!(
        got["key.k1"], expected["key.k1"],
        "key.k1: exactly, in order"
    );
    browser
        .eval("herald.close(), sessionStorage.clear(), true")
        .await;

    // Offline, then online: reconnected at once, on the same transport,
    // nothing lost. (Chromium's emulation stalls an open WebSocket rather
    // than closing it; herald.js drops it at `offline` and connects anew at
    // `online`.) Offline for 2 s: time for failed attempts, which must not
    // move herald.js off its WebSocket.
    browser.eval(&page_js(json!({}), false, &["all"])).await;
    browser.wait("subscribed", SUBSCRIBED_JS, TIMEOUT).await;
    assert_eq!(browser.eval("herald.transport").await, "ws");
    let mut expected = BTreeMap::new();
    produce_keyed(&producer, &topic, 100..110, &mut expected).await;
    expected.retain(|ch, _| ch == "all");
    wait_for_expected(&mut browser, &expected, "before going offline").await;
    browser
        .call("offline", json!({"offline": true}), TIMEOUT)
        .await;
    produce_keyed(&producer, &topic, 110..130, &mut expected).await;
    expected.retain(|ch, _| ch == "all");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        browser.eval("received.all.length").await,
        10,
        "nothing while offline"
    );
    streams(&mut browser).await;
    browser
        .call("offline", json!({"offline": false}), TIMEOUT)
        .await;
    wait_for_expected(&mut browser, &expected, "back online").await;
    // On a new connection: the one from before may have died with the
    // network it went over (a page moving from Wi-Fi to a phone's network)
    // without the browser knowing for minutes.
    let back = browser
        .call("streams", json!({"reset": true}), TIMEOUT)
        .await;
    assert!(back["opened"].as_u64().unwrap() >= 1, "reconnected: {back}");
    let took = browser
        .eval("firstAfterOnline === null ? null : firstAfterOnline - onlineAt")
        .await
        .as_f64()
        .expect("a record after the `online` event");
    eprintln!("browser: first record {took:.0} ms after `online`");
    assert!(
        (0.0..1000.0).contains(&took),
        "reconnected {took} ms after online"
    );
    assert_eq!(browser.eval("herald.transport").await, "ws");
    let mut all = received_ns(&mut browser).await["all"].clone();
    all.sort_unstable();
    assert_eq!(all, (100..130).collect::<Vec<_>>());

    // A hidden tab whose Herald restarts waits at least 5 s to reconnect (a
    // visible one would within a second); shown again, it reconnects at
    // once, nothing lost.
    const VISIBILITY: &str = r#"(state) => {
  Object.defineProperty(document, "visibilityState", { configurable: true, get: () => state });
  if (state === "visible") {
    window.shownAt = performance.now();
    window.firstAfterShown = null;
  }
  document.dispatchEvent(new Event("visibilitychange"));
  return true;
}"#;
    browser.eval(&format!("({VISIBILITY})('hidden')")).await;
    node.stop().await;
    node.restart().await;
    streams(&mut browser).await;
    produce_keyed(&producer, &topic, 130..140, &mut expected).await;
    expected.retain(|ch, _| ch == "all");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hidden = browser
        .call("streams", json!({"reset": true}), TIMEOUT)
        .await;
    assert_eq!(hidden["opened"], 0, "a hidden tab waits: {hidden}");
    assert_eq!(browser.eval("herald.transport").await, Value::Null);
    browser.eval(&format!("({VISIBILITY})('visible')")).await;
    wait_for_expected(&mut browser, &expected, "shown again").await;
    let took = browser
        .eval("firstAfterShown === null ? null : firstAfterShown - shownAt")
        .await
        .as_f64()
        .expect("a record after the tab was shown");
    eprintln!("browser: first record {took:.0} ms after the tab was shown");
    assert!(
        (0.0..1000.0).contains(&took),
        "reconnected {took} ms after shown"
    );
    let mut all = received_ns(&mut browser).await["all"].clone();
    all.sort_unstable();
    assert_eq!(all, (100..140).collect::<Vec<_>>());
    browser.close().await;
    node.shutdown().await;
}

/// Runs `program args` in `dir`, asserting it succeeds; its stdout.
async fn run_in(dir: &Path, program: &str, args: &[&str]) -> String {
    let output = tokio::time::timeout(
        RECEIVE_TIMEOUT,
        Command::new(program).args(args).current_dir(dir).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} {args:?} timed out"))
    .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} in {}: {}\n{stdout}\n{}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The package as a user installs it: `npm pack` of `client/`, installed
/// from the tarball into a scratch project with no registry; the typed
/// example (`tests/browser/typed/example.ts`) passes `tsc --strict`
/// against it; and Node imports it by its name and receives a record from
/// Herald through it over SSE and polling (herald.js touches no browser
/// global at import, and Node has fetch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_js_types_check_and_its_package_installs_and_works() {
    let tsc = browser_dir().join("node_modules/typescript/bin/tsc");
    assert!(
        tsc.exists(),
        "typescript is missing from tests/browser/node_modules: run scripts/test.sh, which runs `npm ci` there"
    );
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("client");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(client.join("package.json")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["version"],
        env!("CARGO_PKG_VERSION"),
        "client/package.json has Herald's version"
    );
    let scratch = std::env::temp_dir().join(unique_topic("herald-package"));
    std::fs::create_dir_all(&scratch).unwrap();
    let scratch_arg = scratch.to_str().unwrap();
    let packed: Value = serde_json::from_str(
        &run_in(
            &client,
            "npm",
            &["pack", "--json", "--pack-destination", scratch_arg],
        )
        .await,
    )
    .unwrap();
    let mut files: Vec<&str> = packed[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    files.sort_unstable();
    assert_eq!(
        files,
        ["herald-sw.js", "herald.d.ts", "herald.js", "package.json"],
        "the package holds the client, its types and the service worker"
    );
    let tarball = format!("./{}", packed[0]["filename"].as_str().unwrap());
    std::fs::write(
        scratch.join("package.json"),
        r#"{"name":"scratch","private":true,"type":"module"}"#,
    )
    .unwrap();
    run_in(
        &scratch,
        "npm",
        &["install", "--offline", "--no-audit", "--no-fund", &tarball],
    )
    .await;

    std::fs::copy(
        browser_dir().join("typed/example.ts"),
        scratch.join("example.ts"),
    )
    .unwrap();
    let tsc = tsc.to_str().unwrap();
    run_in(
        &scratch,
        "node",
        &[
            tsc,
            "--strict",
            "--noEmit",
            "--target",
            "es2022",
            "--module",
            "nodenext",
            "--moduleResolution",
            "nodenext",
            "--lib",
            "es2022,dom",
            "example.ts",
        ],
    )
    .await;

    let topic = unique_topic("browser-package");
    create_topic(&topic, 1).await;
    let node = Node::start(config(&[(&topic, "feed")]), &[(&topic, 1)]).await;
    let script = format!(
        r#"import {{ Herald }} from "herald-client";
const got = {{}};
for (const transport of ["sse", "poll"]) {{
  const herald = new Herald({url:?}, {{ transports: [transport], pollWait: 5 }});
  got[transport] = await new Promise((resolve) => {{
    const sub = herald.subscribe("feed", {{ since: 0, onMessage: (m) => resolve(m.data) }});
    herald.subscribe("other", {{ onError: () => {{}} }});
  }});
  herald.close();
}}
console.log(JSON.stringify(got));"#,
        url = node.url(),
    );
    std::fs::write(scratch.join("use.mjs"), script).unwrap();
    Producer::new().send_n(&topic, "k", 7).await;
    let out = run_in(&scratch, "node", &["use.mjs"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(out.trim()).unwrap(),
        json!({"sse": {"n": 7}, "poll": {"n": 7}}),
        "{out}"
    );
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Established TCP connections whose local port is `port`, from the
/// kernel's table (`/proc/net/tcp`): the server side of each client
/// connection to a listener of this process.
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "01"
        })
        .count()
}

/// Over the TLS listener Chromium negotiates HTTP/2 and holds ten SSE
/// streams to one origin on one connection; over HTTP/1.1 it would open
/// six and leave four waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_holds_ten_sse_streams_over_one_http2_connection() {
    let _serial = SERIAL.lock().await;
    let topic = unique_topic("browserh2");
    create_topic(&topic, 1).await;
    let dir = std::env::temp_dir().join(unique_topic("herald-h2"));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, cert, key) = test_certs(&dir, "browser");
    let mut config = common::config(&[(&topic, "c")]);
    config.tls = Some(herald::config::TlsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert_file: cert,
        key_file: key,
    });
    let herald = start(config, &[(&topic, 1)]).await;
    let tls = herald.tls_addr().expect("a TLS listener");
    let mut browser = Browser::launch().await;
    browser
        .goto(&format!("https://127.0.0.1:{}/healthz", tls.port()))
        .await;
    let protocol = browser
        .eval("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        .await;
    assert_eq!(protocol, "h2", "the page itself came over HTTP/2");
    browser
        .eval(
            "window.got = Array.from({ length: 10 }, () => []); window.opened = 0; \
             window.streams = got.map((g, i) => { \
               const es = new EventSource(`/sse?channel=c&_=${i}`); \
               es.onopen = () => { opened += 1; }; \
               es.onmessage = (m) => g.push(JSON.parse(m.data).data.n); \
               return es; }); true",
        )
        .await;
    browser
        .wait("ten streams open", "opened === 10", TIMEOUT)
        .await;
    let producer = Producer::new();
    for n in 0..3 {
        producer.send_n(&topic, "k", n).await;
    }
    browser
        .wait(
            "every stream has the three records",
            "got.every((g) => g.length >= 3)",
            TIMEOUT,
        )
        .await;
    let got = browser.eval("got").await;
    assert_eq!(got, json!(vec![vec![0, 1, 2]; 10]), "each stream, exactly");
    assert_eq!(
        metric(herald.local_addr(), "herald_connections{transport=\"sse\"}").await,
        10.0
    );
    assert_eq!(
        established_to(tls.port()),
        1,
        "one connection for the page and its ten streams"
    );
    browser
        .eval("streams.forEach((s) => s.close()), true")
        .await;
    browser.close().await;
    herald.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// Every byte of each connection through [`Recorder`], per direction.
#[derive(Default)]
struct Recorded {
    from_client: Vec<u8>,
    from_server: Vec<u8>,
}

/// A TCP proxy in front of Herald that keeps what each connection sent
/// either way, to see the WebSocket frames themselves: Chromium shows a
/// page neither RSV1 nor the compressed bytes.
struct Recorder {
    addr: SocketAddr,
    connections: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::Mutex<Recorded>>>>>,
}

impl Recorder {
    async fn start(upstream: SocketAddr) -> Recorder {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let all = connections.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let recorded = std::sync::Arc::new(std::sync::Mutex::new(Recorded::default()));
                all.lock().unwrap().push(recorded.clone());
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                let up = recorded.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = client_rx.read(&mut buf).await {
                        up.lock().unwrap().from_client.extend_from_slice(&buf[..n]);
                        if server_tx.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = server_tx.shutdown().await;
                });
                tokio::spawn(async move {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = server_rx.read(&mut buf).await {
                        recorded
                            .lock()
                            .unwrap()
                            .from_server
                            .extend_from_slice(&buf[..n]);
                        if client_tx.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = client_tx.shutdown().await;
                });
            }
        });
        Recorder { addr, connections }
    }

    /// The WebSocket connection's bytes: (client's, server's), each after
    /// its HTTP head, and the response head.
    fn websocket(&self) -> (Vec<u8>, Vec<u8>, String) {
        let all = self.connections.lock().unwrap();
        let ws = all
            .iter()
            .find(|c| c.lock().unwrap().from_client.starts_with(b"GET /ws"))
            .expect("a WebSocket connection through the recorder");
        let ws = ws.lock().unwrap();
        let after_head = |b: &[u8]| {
            let end = b.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
            (
                String::from_utf8_lossy(&b[..end]).into_owned(),
                b[end..].to_vec(),
            )
        };
        let (_, client) = after_head(&ws.from_client);
        let (head, server) = after_head(&ws.from_server);
        (client, server, head)
    }
}

/// WebSocket frames off a byte stream: (first byte, payload unmasked).
fn ws_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while b.len() >= 2 {
        let (mut at, len) = match b[1] & 0x7F {
            126 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
            127 => (
                10,
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
            ),
            n => (2, n as usize),
        };
        let key = (b[1] & 0x80 != 0).then(|| {
            at += 4;
            [b[at - 4], b[at - 3], b[at - 2], b[at - 1]]
        });
        if b.len() < at + len {
            break;
        }
        let mut payload = b[at..at + len].to_vec();
        if let Some(key) = key {
            payload
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x ^= key[i % 4]);
        }
        frames.push((b[0], payload));
        b = &b[at + len..];
    }
    frames
}

/// A permessage-deflate message inflated (RFC 7692 §7.2.2).
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(64 * 1024);
    flate2::Decompress::new(false)
        .decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .expect("valid DEFLATE");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_negotiates_permessage_deflate_and_gets_exactly_the_records_compressed() {
    let _serial = SERIAL.lock().await;
    let topic = unique_topic("browser-deflate");
    create_topic(&topic, 3).await;
    let mut config = config(&[(&topic, "all"), (&topic, "key.{key}")]);
    config.ws.compression = true;
    let node = Node::start(config, &[(&topic, 3)]).await;
    let recorder = Recorder::start(node.addr()).await;
    let mut browser = Browser::launch().await;
    // The page's origin is the recorder's, so its WebSocket is same-origin.
    browser
        .goto(&format!("http://{}/healthz", recorder.addr))
        .await;
    browser
        .eval(
            r#"(() => {
  window.texts = []; window.received = [];
  const ws = new WebSocket(`ws://${location.host}/ws`);
  window.ws = ws;
  ws.onopen = () => {
    for (const channel of ["all", "key.k1"]) ws.send(JSON.stringify({ type: "subscribe", channel }));
  };
  ws.onmessage = (e) => {
    texts.push(e.data);
    const m = JSON.parse(e.data);
    if (m.type === "message") received.push(m);
  };
  return true;
})()"#,
        )
        .await;
    let subscribed = r#"texts.filter((t) => JSON.parse(t).type === "subscribed").length === 2"#;
    browser.wait("subscribed", subscribed, TIMEOUT).await;
    assert_eq!(
        browser.eval("ws.extensions").await,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );

    let producer = Producer::new();
    let mut produced = Produced::default();
    produced.send(&producer, &topic, 0..60).await;
    let all = 60 + produced.count_with_key("k1");
    browser
        .wait(
            "every record on both channels",
            &format!("received.length >= {all}"),
            RECEIVE_TIMEOUT,
        )
        .await;
    let received: Vec<Value> = browser.eval("received").await.as_array().unwrap().clone();
    let on = |channel: &str| -> Vec<Value> {
        let mine = received.iter().filter(|m| m["channel"] == channel);
        mine.cloned().collect()
    };
    produced.assert_exact(&on("all"), None, "all, compressed");
    produced.assert_exact(&on("key.k1"), Some("k1"), "key.k1, compressed");
    let texts: Vec<String> = serde_json::from_value(browser.eval("texts").await).unwrap();
    browser.eval("ws.close(), true").await;
    browser.close().await;

    // On the wire: Herald's answer, the browser's subscribe messages
    // compressed, and every message frame compressed, inflating to what
    // the page got, in its order.
    let (client, server, head) = recorder.websocket();
    assert!(
        head.to_ascii_lowercase().contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ),
        "{head}"
    );
    let sent: Vec<(u8, Vec<u8>)> = ws_frames(&client)
        .into_iter()
        .filter(|(b0, _)| b0 & 0x0F == 0x1)
        .collect();
    assert_eq!(sent.len(), 2, "the two subscribe messages");
    for (b0, payload) in &sent {
        assert_ne!(b0 & 0x40, 0, "Chromium compressed its message (RSV1)");
        let m: Value = serde_json::from_slice(&inflate(payload)).unwrap();
        assert_eq!(m["type"], "subscribe", "{m}");
    }
    let frames: Vec<(u8, Vec<u8>)> = ws_frames(&server)
        .into_iter()
        .filter(|(b0, _)| b0 & 0x0F == 0x1)
        .collect();
    let mut wire = Vec::new();
    let (mut compressed, mut inflated) = (0, 0);
    for (b0, payload) in &frames {
        let text = match b0 & 0x40 != 0 {
            true => {
                let text = inflate(payload);
                compressed += payload.len();
                inflated += text.len();
                text
            }
            false => payload.clone(),
        };
        let text = String::from_utf8(text).unwrap();
        let m: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            b0 & 0x40 != 0,
            m["type"] == "message",
            "messages compressed, the rest plain: {m}"
        );
        wire.push(text);
    }
    assert_eq!(wire, texts, "the page got what Herald sent, in order");
    eprintln!(
        "browser: {} message bytes compressed to {compressed}",
        inflated
    );
    node.shutdown().await;
}
