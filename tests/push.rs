//! Web Push against a real broker and a push service written in the test
//! (tests/push/push_service.py), which decrypts every message with Python's
//! `http_ece` — not the crate Herald encrypts with — and checks the VAPID
//! signature, `k` and `aud` (with the port) of each one.
//!
//! - three subscriptions, 100 records: each gets each record of its
//!   channels exactly once, the plaintext the record's envelope; a channel
//!   nobody registered is pushed to nobody;
//! - `410` removes a subscription (a tombstone in the topic: gone after a
//!   restart too, no further POSTs); `429` + `Retry-After: 1` delivers
//!   after the pause; a hanging service times out and is retried while
//!   the others are served;
//! - two nodes in one group push each record once; SIGKILL one mid-stream
//!   and nothing is lost, duplicates only of records the dead node had
//!   pushed and not yet committed; both restarted, the subscriptions are
//!   back from the compacted topic;
//! - registrations refused: 401/403 by the token, `400
//!   endpoint_not_allowed`, bad keys, limits, and none of them stored;
//! - each of Web Push's Kafka clients, after a metadata answer that lists
//!   no broker (through a proxy), is created again and goes on.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::kafka_proxy::{BROKERS_FORGOTTEN, KafkaProxy};
use common::push_service::{PushService, Received};
use common::*;
use herald::Herald;
use herald::config::Config;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

const ARRIVAL: Duration = Duration::from_secs(60);
const SECRET: &str = "push-test-secret-0123456789abcdef";

/// One deployment's names: the routed topic, the subscriptions topic, the
/// group and the VAPID key, shared by every node of the test.
struct Deployment {
    topic: String,
    partitions: i32,
    subscriptions_topic: String,
    group: String,
    key_file: PathBuf,
    public_key: String,
    /// Extra `[push]` keys, and sections after it.
    extra: String,
    request_timeout: &'static str,
    /// `kafka.brokers` (the test broker by default).
    brokers: String,
}

impl Deployment {
    async fn new(prefix: &str, partitions: i32) -> Deployment {
        let topic = unique_topic(prefix);
        create_topic(&topic, partitions).await;
        let dir = std::env::temp_dir().join(unique_topic("herald-push-test"));
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("vapid.pem");
        let (code, out, err) = run_herald(&["push", "keygen", "--out", key_file.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        let public_key = out
            .lines()
            .find_map(|l| l.strip_prefix("public key: "))
            .unwrap_or_else(|| panic!("keygen prints the public key: {out}"))
            .trim()
            .to_owned();
        Deployment {
            subscriptions_topic: unique_topic(&format!("{prefix}-subs")),
            group: unique_topic(&format!("{prefix}-group")),
            topic,
            partitions,
            key_file,
            public_key,
            extra: String::new(),
            request_timeout: "10s",
            brokers: bootstrap(),
        }
    }

    fn toml(&self, listen: &str) -> String {
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\nmetadata_refresh = \"500ms\"\nstats_interval = \"200ms\"\n\
             [http]\nlisten = \"{listen}\"\nshutdown_grace = \"2s\"\n\
             [push]\nvapid_private_key_file = \"{key}\"\nvapid_subject = \"mailto:push-tests@herald.invalid\"\n\
             subscriptions_topic = \"{subs}\"\ngroup_id = \"{group}\"\n\
             allowed_endpoint_hosts = [\"127.0.0.1\"]\nallow_http_endpoints = true\n\
             request_timeout = \"{timeout}\"\nretry_backoff = \"200ms\"\nmax_attempts = 30\nretry_deadline = \"60s\"\n\
             {extra}\n\
             [[route]]\ntopic = \"{topic}\"\nchannel = \"feed.{{key}}\"\n",
            brokers = self.brokers,
            key = self.key_file.display(),
            subs = self.subscriptions_topic,
            group = self.group,
            topic = self.topic,
            extra = self.extra,
            timeout = self.request_timeout,
        )
    }

    async fn start(&self) -> Herald {
        let config = Config::parse(&self.toml("127.0.0.1:0"), "test").expect("test config");
        start(config, &[(&self.topic, self.partitions)]).await
    }
}

/// Registers `subscription` for `channels`; the status and body.
async fn register(
    addr: SocketAddr,
    subscription: &Value,
    channels: &[&str],
    token: Option<&str>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}/push/subscriptions"))
        .header("content-type", "application/json")
        .body(json!({"subscription": subscription, "channels": channels}).to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn register_ok(addr: SocketAddr, subscription: &Value, channels: &[&str]) {
    let (status, body) = register(addr, subscription, channels, None).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"].as_str().map(str::len), Some(32), "{body}");
}

/// Waits until the node's sender holds `partitions` partitions and its
/// table `subscriptions` subscriptions.
async fn wait_push_ready(addr: SocketAddr, partitions: i32, subscriptions: usize) {
    wait_until_metric(addr, "herald_push_assigned_partitions", partitions as f64).await;
    wait_until_metric(addr, "herald_push_subscriptions", subscriptions as f64).await;
}

/// `(partition, offset)` of each push, in arrival order.
fn positions(received: &[Received]) -> Vec<(i64, i64)> {
    received
        .iter()
        .map(|r| {
            (
                r.plaintext["partition"].as_i64().unwrap(),
                r.plaintext["offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Each partition's offsets arrive in increasing order.
fn assert_in_partition_order(received: &[Received]) {
    let mut last: HashMap<i64, i64> = HashMap::new();
    for (p, o) in positions(received) {
        if let Some(prev) = last.insert(p, o) {
            assert!(o > prev, "partition {p}: offset {o} after {prev}");
        }
    }
}

async fn assert_no_failures(service: &PushService) {
    let failures = service.failures().await;
    assert!(
        failures.is_empty(),
        "the push service saw protocol violations: {failures:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscription_gets_each_record_of_its_channels_once() {
    let deployment = Deployment::new("push-once", 3).await;
    let herald = deployment.start().await;
    let addr = herald.local_addr();
    let service = PushService::start(2, &deployment.public_key);
    let (a, sub_a) = service.subscribe(0).await;
    let (b, sub_b) = service.subscribe(1).await;
    let (c, sub_c) = service.subscribe(1).await;
    register_ok(addr, &sub_a, &["feed.a"]).await;
    register_ok(addr, &sub_b, &["feed.a", "feed.b"]).await;
    register_ok(addr, &sub_c, &["feed.b"]).await;
    wait_push_ready(addr, 3, 3).await;

    let producer = Producer::new();
    // key → the (partition, offset) of each record, in production order.
    let mut produced: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
    for n in 0..100u64 {
        let key = ["a", "b", "nobody"][(n % 3) as usize];
        let (p, o) = producer.send_n(&deployment.topic, key, n).await;
        produced.entry(key).or_default().push((p as i64, o));
    }
    let sorted = |v: &[(i64, i64)]| v.iter().copied().collect::<BTreeSet<_>>();
    let a_want = sorted(&produced["a"]);
    let b_want: BTreeSet<_> = a_want.union(&sorted(&produced["b"])).copied().collect();
    let c_want = sorted(&produced["b"]);

    let got_a = service.wait_received(&a, a_want.len(), ARRIVAL).await;
    let got_b = service.wait_received(&b, b_want.len(), ARRIVAL).await;
    let got_c = service.wait_received(&c, c_want.len(), ARRIVAL).await;
    for (got, want, name) in [
        (&got_a, &a_want, "a"),
        (&got_b, &b_want, "b"),
        (&got_c, &c_want, "c"),
    ] {
        let positions = positions(got);
        assert_eq!(
            positions.len(),
            want.len(),
            "subscription {name}: one push per record"
        );
        assert_eq!(
            &positions.iter().copied().collect::<BTreeSet<_>>(),
            want,
            "subscription {name}"
        );
        assert_in_partition_order(got);
    }
    // The plaintext is the record's envelope, on the first of the
    // subscription's channels the record maps to.
    for r in got_b.iter() {
        let e = &r.plaintext;
        let key = e["key"].as_str().unwrap();
        assert_eq!(e["channel"], format!("feed.{key}"));
        assert_eq!(e["topic"], deployment.topic.as_str());
        assert!(e["ts"].as_i64().unwrap() > 0);
        assert!(e["data"]["n"].as_u64().is_some(), "{e}");
        assert!(e.get("truncated").is_none());
        assert_eq!(r.ttl, 24 * 3600);
        assert_eq!(r.urgency.as_deref(), Some("normal"));
        let topic = r.topic.as_deref().expect("a Topic header");
        assert!(
            topic.len() <= 32
                && topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
    // The same record has the same Topic on every subscription, and
    // different records different ones.
    let topic_of = |got: &[Received]| -> HashMap<(i64, i64), String> {
        got.iter()
            .map(|r| {
                (
                    (
                        r.plaintext["partition"].as_i64().unwrap(),
                        r.plaintext["offset"].as_i64().unwrap(),
                    ),
                    r.topic.clone().unwrap(),
                )
            })
            .collect()
    };
    let (topics_a, topics_b) = (topic_of(&got_a), topic_of(&got_b));
    for (pos, t) in &topics_a {
        assert_eq!(topics_b.get(pos), Some(t));
    }
    assert_eq!(
        topics_b.values().collect::<BTreeSet<_>>().len(),
        topics_b.len()
    );

    // The pushed cursor is the position at the record: /poll from it
    // starts with that very record on its partition.
    for r in got_a.iter().take(3) {
        let e = &r.plaintext;
        let (messages, _) = poll_ok(
            addr,
            &format!(
                "channel=feed.a&cursor={}&limit=100",
                e["cursor"].as_str().unwrap()
            ),
        )
        .await;
        let first_on_partition = messages
            .iter()
            .find(|m| m["partition"] == e["partition"])
            .expect("the record is in the poll");
        for field in [
            "channel",
            "topic",
            "partition",
            "offset",
            "ts",
            "key",
            "data",
        ] {
            assert_eq!(first_on_partition[field], e[field], "{field}");
        }
    }

    let metrics = parse_metrics(
        &reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let delivered: f64 = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("herald_push_sent_total{result=\"delivered\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        delivered as usize,
        a_want.len() + b_want.len() + c_want.len()
    );
    assert!(metrics.contains_key(&format!(
        "herald_push_latency_seconds_count{{service=\"{}\"}}",
        service.origin(0)
    )));
    assert_no_failures(&service).await;
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_subscription_is_removed_for_good_and_a_throttled_one_waits() {
    let deployment = Deployment::new("push-gone", 1).await;
    let herald = deployment.start().await;
    let addr = herald.local_addr();
    let service = PushService::start(2, &deployment.public_key);
    let (gone, sub_gone) = service.subscribe(0).await;
    let (slow, sub_slow) = service.subscribe(1).await;
    register_ok(addr, &sub_gone, &["feed.x"]).await;
    register_ok(addr, &sub_slow, &["feed.x"]).await;
    wait_push_ready(addr, 1, 2).await;
    service.set_mode(&gone, "gone").await;
    service.set_mode(&slow, "throttle_once").await;

    let producer = Producer::new();
    producer.send_n(&deployment.topic, "x", 0).await;
    let got = service.wait_received(&slow, 1, ARRIVAL).await;
    assert_eq!(got[0].plaintext["data"]["n"], 0);
    let attempts = service.attempts(&slow).await;
    assert_eq!(
        attempts.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![429, 201]
    );
    assert!(
        attempts[1].1 - attempts[0].1 >= 1000,
        "Retry-After: 1 honoured: {attempts:?}"
    );
    wait_until_metric(addr, "herald_push_subscriptions", 1.0).await;
    assert_eq!(
        service
            .attempts(&gone)
            .await
            .iter()
            .map(|a| a.0)
            .collect::<Vec<_>>(),
        vec![410]
    );
    let sent = |result: &str, i: usize| {
        format!(
            "herald_push_sent_total{{result=\"{result}\",service=\"{}\"}}",
            service.origin(i)
        )
    };
    assert_eq!(metric(addr, &sent("expired", 0)).await, 1.0);
    assert_eq!(metric(addr, &sent("retried", 1)).await, 1.0);
    herald.stop().await;

    // Herald created the subscriptions topic compacted.
    assert_eq!(
        cleanup_policy(&deployment.subscriptions_topic).await,
        "compact"
    );
    // The tombstone is in the topic: a restarted node does not have it.
    let herald = deployment.start().await;
    let addr = herald.local_addr();
    wait_push_ready(addr, 1, 1).await;
    producer.send_n(&deployment.topic, "x", 1).await;
    let got = service.wait_received(&slow, 2, ARRIVAL).await;
    assert_eq!(got[1].plaintext["data"]["n"], 1);
    assert_eq!(
        service.attempts(&gone).await.len(),
        1,
        "no POST after the 410"
    );
    assert_no_failures(&service).await;
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_push_service_is_retried_and_holds_up_no_other() {
    let mut deployment = Deployment::new("push-hang", 1).await;
    deployment.request_timeout = "1s";
    let herald = deployment.start().await;
    let addr = herald.local_addr();
    let service = PushService::start(2, &deployment.public_key);
    let (hung, sub_hung) = service.subscribe(0).await;
    let (fine, sub_fine) = service.subscribe(1).await;
    register_ok(addr, &sub_hung, &["feed.h"]).await;
    register_ok(addr, &sub_fine, &["feed.h"]).await;
    wait_push_ready(addr, 1, 2).await;
    service.set_service_mode(0, "hang").await;

    let producer = Producer::new();
    for n in 0..10 {
        producer.send_n(&deployment.topic, "h", n).await;
    }
    let got = service.wait_received(&fine, 10, ARRIVAL).await;
    assert_eq!(
        got.iter()
            .map(|r| r.plaintext["data"]["n"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    // The hanging service got its requests, which timed out and were
    // retried (request_timeout = 1s).
    let retried = format!(
        "herald_push_sent_total{{result=\"retried\",service=\"{}\"}}",
        service.origin(0)
    );
    wait_until_metric_at_least(addr, &retried, 3.0).await;
    assert!(service.received(&hung).await.is_empty());
    // It recovers: every record arrives, once each.
    service.set_service_mode(0, "ok").await;
    let got = service.wait_received(&hung, 10, ARRIVAL).await;
    let mut ns: Vec<u64> = got
        .iter()
        .map(|r| r.plaintext["data"]["n"].as_u64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, (0..10).collect::<Vec<_>>());
    assert_no_failures(&service).await;
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_record_is_pushed_truncated_with_a_cursor_to_fetch_it() {
    let deployment = Deployment::new("push-big", 1).await;
    let herald = deployment.start().await;
    let addr = herald.local_addr();
    let service = PushService::start(1, &deployment.public_key);
    let (id, sub) = service.subscribe(0).await;
    register_ok(addr, &sub, &["feed.big"]).await;
    wait_push_ready(addr, 1, 1).await;
    let big = json!({"text": "x".repeat(5000)}).to_string();
    let producer = Producer::new();
    producer
        .send(
            &deployment.topic,
            None,
            Some(b"big"),
            Some(big.as_bytes()),
            None,
        )
        .await;
    let got = service.wait_received(&id, 1, ARRIVAL).await;
    let e = &got[0].plaintext;
    assert_eq!(e["truncated"], true);
    assert!(e.get("data").is_none(), "{e}");
    assert_eq!(e["key"], "big");
    let (messages, _) = poll_ok(
        addr,
        &format!(
            "channel=feed.big&cursor={}&limit=1",
            e["cursor"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(messages[0]["offset"], e["offset"]);
    assert_eq!(messages[0]["data"]["text"].as_str().unwrap().len(), 5000);
    assert_no_failures(&service).await;
    herald.stop().await;
}

/// The topic's `cleanup.policy`, as the broker reports it.
async fn cleanup_policy(topic: &str) -> String {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = described.into_iter().next().unwrap().unwrap();
    resource
        .get("cleanup.policy")
        .and_then(|e| e.value.clone())
        .unwrap()
}

fn hs256(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_checked_before_anything_is_stored() {
    let mut deployment = Deployment::new("push-refuse", 1).await;
    deployment.extra = format!(
        "max_channels_per_subscription = 2\nmax_subscriptions_per_channel = 1\nmax_body_bytes = 1024\n\
         [auth]\nhmac_secret = \"{SECRET}\"\npublic_channels = [\"feed.public*\"]"
    );
    let herald = deployment.start().await;
    let addr = herald.local_addr();
    let service = PushService::start(1, &deployment.public_key);
    let (_, sub) = service.subscribe(0).await;
    let token =
        hs256(json!({"sub": "u1", "exp": now() + 600, "channels": ["feed.u1", "feed.shared"]}));

    let code = |body: &Value| {
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let (s, b) = register(addr, &sub, &["feed.u1"], None).await;
    assert_eq!((s, code(&b).as_str()), (401, "invalid_token"), "{b}");
    let (s, b) = register(addr, &sub, &["feed.u1", "feed.u2"], Some(&token)).await;
    assert_eq!((s, code(&b).as_str()), (403, "forbidden_channel"), "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("feed.u2"),
        "{b}"
    );
    let (s, b) = register(addr, &sub, &["feed.u1"], Some("not.a.jwt")).await;
    assert_eq!((s, code(&b).as_str()), (401, "invalid_token"), "{b}");

    let mut foreign = sub.clone();
    foreign["endpoint"] = json!("https://push.attacker.example/x");
    let (s, b) = register(addr, &foreign, &["feed.u1"], Some(&token)).await;
    assert_eq!((s, code(&b).as_str()), (400, "endpoint_not_allowed"), "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("push.attacker.example"),
        "{b}"
    );
    let mut metadata = sub.clone();
    metadata["endpoint"] = json!("http://169.254.169.254/latest/meta-data");
    let (s, b) = register(addr, &metadata, &["feed.u1"], Some(&token)).await;
    assert_eq!((s, code(&b).as_str()), (400, "endpoint_not_allowed"), "{b}");
    let mut bad_keys = sub.clone();
    bad_keys["keys"]["p256dh"] = json!("AAAA");
    let (s, b) = register(addr, &bad_keys, &["feed.u1"], Some(&token)).await;
    assert_eq!((s, code(&b).as_str()), (400, "invalid_subscription"), "{b}");
    let (s, b) = register(
        addr,
        &sub,
        &["feed.public1", "feed.public2", "feed.public3"],
        None,
    )
    .await;
    assert_eq!((s, code(&b).as_str()), (400, "too_many_channels"), "{b}");
    let (s, b) = register(addr, &sub, &[], None).await;
    assert_eq!((s, code(&b).as_str()), (400, "missing_channel"), "{b}");
    let mut padded = sub.clone();
    padded["padding"] = json!("p".repeat(2000));
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/push/subscriptions"))
        .header("content-type", "application/json")
        .body(json!({"subscription": padded, "channels": ["feed.public"]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/push/subscriptions"))
        .body("[1,2]")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Nothing of that was stored.
    assert_eq!(metric(addr, "herald_push_subscriptions").await, 0.0);

    // Allowed: a private channel with its token, and a public one without.
    let (s, b) = register(addr, &sub, &["feed.u1", "feed.public"], Some(&token)).await;
    assert_eq!(s, 201, "{b}");
    // Re-registering the same endpoint replaces it (same id), and the
    // per-channel limit (1) does not count the entry being replaced.
    let (s, again) = register(addr, &sub, &["feed.shared"], Some(&token)).await;
    assert_eq!(s, 201, "{again}");
    assert_eq!(again["id"], b["id"]);
    assert_eq!(metric(addr, "herald_push_subscriptions").await, 1.0);
    let (_, other) = service.subscribe(0).await;
    let (s, b) = register(addr, &other, &["feed.shared"], Some(&token)).await;
    assert_eq!(
        (s, code(&b).as_str()),
        (409, "too_many_subscriptions"),
        "{b}"
    );

    // DELETE removes it; the same DELETE again is still 204.
    for _ in 0..2 {
        let response = reqwest::Client::new()
            .delete(format!("http://{addr}/push/subscriptions"))
            .header("content-type", "application/json")
            .body(json!({"endpoint": sub["endpoint"]}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
    }
    assert_eq!(metric(addr, "herald_push_subscriptions").await, 0.0);
    herald.stop().await;
}

/// A node as its own process, so that it can be SIGKILLed.
struct Node {
    child: Child,
    addr: SocketAddr,
    _config: PathBuf,
}

impl Node {
    async fn spawn(deployment: &Deployment) -> Node {
        let addr = free_addr();
        let path = std::env::temp_dir().join(format!("{}.toml", unique_topic("herald-push-node")));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(deployment.toml(&addr.to_string()).as_bytes())
            .unwrap();
        let child = spawn_serve(&path);
        wait_readyz(addr, 200, Duration::from_secs(60)).await;
        Node {
            child,
            addr,
            _config: path,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn wait_assigned(nodes: &[&Node], partitions: i32, each_at_least: f64) {
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let mut each = Vec::new();
        for n in nodes {
            each.push(metric(n.addr, "herald_push_assigned_partitions").await);
        }
        if each.iter().sum::<f64>() == partitions as f64 && each.iter().all(|e| *e >= each_at_least)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not settle: {each:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops a node with SIGTERM (a clean stop: it commits what it pushed).
fn terminate(node: &mut Node) {
    let status = Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    node.child.wait().unwrap();
}

const KEYS: [&str; 7] = ["k0", "k1", "k2", "k3", "k4", "k5", "k6"];

/// `(partition, offset)` → how many times it arrived, and when first.
fn tally(received: &[Received]) -> BTreeMap<(i64, i64), (usize, u64)> {
    let mut out = BTreeMap::new();
    for (r, pos) in received.iter().zip(positions(received)) {
        let entry = out.entry(pos).or_insert((0, r.at_ms));
        entry.0 += 1;
    }
    out
}

/// Waits until `id` has received every one of `want` at least once.
async fn wait_all(service: &PushService, id: &str, want: &BTreeSet<(i64, i64)>) -> Vec<Received> {
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let got = service.received(id).await;
        let have: BTreeSet<_> = positions(&got).into_iter().collect();
        if want.is_subset(&have) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: {} of {} records arrived; missing {:?}",
            want.intersection(&have).count(),
            want.len(),
            want.difference(&have).take(10).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_push_once_and_a_killed_one_loses_nothing() {
    let deployment = Deployment::new("push-two", 4).await;
    let service = PushService::start(2, &deployment.public_key);
    let mut first = Node::spawn(&deployment).await;
    let mut second = Node::spawn(&deployment).await;
    let (a, sub_a) = service.subscribe(0).await;
    let (b, sub_b) = service.subscribe(1).await;
    let channels: Vec<String> = KEYS.iter().map(|k| format!("feed.{k}")).collect();
    let channels: Vec<&str> = channels.iter().map(String::as_str).collect();
    register_ok(first.addr, &sub_a, &channels).await;
    register_ok(second.addr, &sub_b, &channels).await;
    for node in [&first, &second] {
        wait_until_metric(node.addr, "herald_push_subscriptions", 2.0).await;
    }
    wait_assigned(&[&first, &second], 4, 1.0).await;

    // Both nodes push, each its partitions: every record exactly once.
    let producer = Producer::new();
    let mut want = BTreeSet::new();
    for n in 0..100u64 {
        let (p, o) = producer
            .send_n(&deployment.topic, KEYS[n as usize % 7], n)
            .await;
        want.insert((p as i64, o));
    }
    for id in [&a, &b] {
        let got = wait_all(&service, id, &want).await;
        assert_eq!(got.len(), 100, "{id}: exactly once with two nodes");
        assert_in_partition_order(&got);
    }
    assert!(metric(first.addr, "herald_push_assigned_partitions").await >= 1.0);
    assert!(metric(second.addr, "herald_push_assigned_partitions").await >= 1.0);

    // SIGKILL the first node while records keep coming.
    let topic = deployment.topic.clone();
    let pacing = tokio::spawn(async move {
        let producer = Producer::new();
        let mut sent = BTreeSet::new();
        for n in 100..300u64 {
            let (p, o) = producer.send_n(&topic, KEYS[n as usize % 7], n).await;
            sent.insert((p as i64, o));
            // A steady stream, so the kill lands mid-stream.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent
    });
    let deadline = Instant::now() + ARRIVAL;
    while service.received(&a).await.len() < 150 {
        assert!(Instant::now() < deadline, "pushes stopped before the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    let killed_at = now_ms();
    want.extend(pacing.await.unwrap());
    wait_assigned(&[&second], 4, 4.0).await;
    for id in [&a, &b] {
        let got = wait_all(&service, id, &want).await;
        let tally = tally(&got);
        assert_eq!(
            tally.keys().copied().collect::<BTreeSet<_>>(),
            want,
            "{id}: nothing lost, nothing else"
        );
        let duplicates: Vec<_> = tally.iter().filter(|(_, (n, _))| *n > 1).collect();
        // At-least-once, precisely: a record arrives twice only if the
        // killed node pushed it and had not committed it, which it does
        // every second — so its first arrival was shortly before the kill.
        for (pos, (n, first_at)) in &duplicates {
            assert_eq!(*n, 2, "{id}: {pos:?} arrived {n} times");
            assert!(
                *first_at <= killed_at && killed_at - first_at < 3000,
                "{id}: duplicate {pos:?} first arrived {} ms before the kill",
                killed_at as i64 - *first_at as i64
            );
        }
        println!(
            "{id}: {} records, {} pushed twice after the SIGKILL",
            want.len(),
            duplicates.len()
        );
    }

    // Both restarted (a new first, then the second replaced): the
    // subscriptions come back from the compacted topic.
    let third = Node::spawn(&deployment).await;
    terminate(&mut second);
    let fourth = Node::spawn(&deployment).await;
    for node in [&third, &fourth] {
        wait_until_metric(node.addr, "herald_push_subscriptions", 2.0).await;
    }
    wait_assigned(&[&third, &fourth], 4, 1.0).await;
    let before_a = service.received(&a).await.len();
    let before_b = service.received(&b).await.len();
    let mut last = BTreeSet::new();
    for n in 300..320u64 {
        let (p, o) = producer
            .send_n(&deployment.topic, KEYS[n as usize % 7], n)
            .await;
        last.insert((p as i64, o));
    }
    for (id, before) in [(&a, before_a), (&b, before_b)] {
        let got = wait_all(&service, id, &last).await;
        let new: Vec<_> = positions(&got[before..])
            .into_iter()
            .filter(|p| last.contains(p))
            .collect();
        assert_eq!(new.len(), 20, "{id}: once each after the restart");
    }
    assert_no_failures(&service).await;
}

/// A healthy push service with more pushes waiting than
/// `push.max_queued_per_service` slows the sending down and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_healthy_push_service_gets_every_push() {
    let mut deployment = Deployment::new("push-busy", 1).await;
    deployment.extra = "max_queued_per_service = 2".into();
    let herald = deployment.start().await;
    let addr = herald.local_addr();
    let service = PushService::start(1, &deployment.public_key);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (id, sub) = service.subscribe(0).await;
        register_ok(addr, &sub, &["feed.busy"]).await;
        ids.push(id);
    }
    wait_push_ready(addr, 1, 5).await;
    let producer = Producer::new();
    for n in 0..4 {
        producer.send_n(&deployment.topic, "busy", n).await;
    }
    for id in &ids {
        let got = service.wait_received(id, 4, ARRIVAL).await;
        let ns: Vec<u64> = got
            .iter()
            .map(|r| r.plaintext["data"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, vec![0, 1, 2, 3], "{id}");
    }
    let dropped = format!(
        "herald_push_sent_total{{result=\"dropped\",service=\"{}\"}}",
        service.origin(0)
    );
    assert_eq!(metric(addr, &dropped).await, 0.0);
    assert_no_failures(&service).await;
    herald.stop().await;
}

/// Web Push after librdkafka dropped every broker it knew (the answer a
/// broker in controlled shutdown can give, replayed by a proxy, with
/// librdkafka's re-bootstrap off so that its race cannot decide the
/// outcome; tests/outage.rs has the ingest's side). Each of Web Push's
/// three clients is created again and goes on: the sender's group
/// consumer joins the group again and pushes, the follower of the
/// subscriptions topic hears a registration made on another node, and the
/// registry's producer takes the next registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_push_goes_on_after_a_metadata_answer_that_lists_no_broker() {
    let proxy = KafkaProxy::start(&bootstrap()).await;
    let mut deployment = Deployment::new("push-nobroker", 1).await;
    deployment.brokers = proxy.brokers();
    // The registry's producer asks for its topic's metadata this often
    // (librdkafka's default: every 5 minutes); the group drops a member
    // that sends no heartbeat after 6 s (the broker's minimum).
    deployment.extra = "[kafka.options]\n\
                        \"metadata.recovery.strategy\" = \"none\"\n\
                        \"topic.metadata.refresh.interval.ms\" = \"200\"\n\
                        \"session.timeout.ms\" = \"6000\"\n\
                        \"heartbeat.interval.ms\" = \"500\"\n"
        .into();
    let herald = deployment.start().await;
    let addr = herald.local_addr();
    // Another node, straight to the broker, with the same subscriptions
    // topic and a group and routed topic of its own: it pushes nothing
    // of this test's records.
    let elsewhere = Deployment {
        topic: unique_topic("push-nobroker-other"),
        partitions: 1,
        subscriptions_topic: deployment.subscriptions_topic.clone(),
        group: unique_topic("push-nobroker-other-group"),
        key_file: deployment.key_file.clone(),
        public_key: deployment.public_key.clone(),
        extra: String::new(),
        request_timeout: "10s",
        brokers: bootstrap(),
    };
    create_topic(&elsewhere.topic, 1).await;
    let other = elsewhere.start().await;

    let service = PushService::start(1, &deployment.public_key);
    let (first, sub_first) = service.subscribe(0).await;
    let (second, sub_second) = service.subscribe(0).await;
    let (third, sub_third) = service.subscribe(0).await;
    register_ok(addr, &sub_first, &["feed.x"]).await;
    wait_push_ready(addr, 1, 1).await;

    // The sender's consumer and the follower; their client.ids are
    // kafka.client_id with -push and -push-follower.
    proxy.answer_metadata_with_no_broker("herald-push").await;
    proxy
        .answer_metadata_with_no_broker("herald-push-follower")
        .await;
    wait_until_metric(addr, BROKERS_FORGOTTEN, 2.0).await;

    // The registry's producer: it is created again at the next
    // registration that finds it knowing no broker. One sent before it
    // knows may still be acknowledged (201), or be refused 503 ("may or
    // may not have been written"), at most once; either way the
    // subscription is registered again until the producer is new.
    proxy
        .answer_metadata_with_no_broker("herald-push-registry")
        .await;
    let deadline = Instant::now() + TIMEOUT;
    let mut refused = 0;
    while metric(addr, BROKERS_FORGOTTEN).await < 3.0 {
        assert!(
            Instant::now() < deadline,
            "the registry's producer was not created again"
        );
        let (status, body) = register(addr, &sub_second, &["feed.x"], None).await;
        if status != 201 {
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (503, Some("kafka_unavailable")),
                "{body}"
            );
            refused += 1;
            assert!(refused <= 1, "refused twice: {body}");
        }
    }
    // Registered on the other node: reaches this one through the follower.
    register_ok(other.local_addr(), &sub_third, &["feed.x"]).await;
    // The new group consumer has the partition (once the group dropped
    // the old one), and the table all three subscriptions.
    wait_push_ready(addr, 1, 3).await;

    let producer = Producer::new();
    for n in 0..10 {
        producer.send_n(&deployment.topic, "x", n).await;
    }
    for id in [&first, &second, &third] {
        let got = service.wait_received(id, 10, ARRIVAL).await;
        assert_eq!(
            got.iter()
                .map(|r| r.plaintext["data"]["n"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>(),
            "{id}: each record once, in order"
        );
    }
    assert_eq!(
        metric(addr, BROKERS_FORGOTTEN).await,
        3.0,
        "three clients created again, once each"
    );
    assert_no_failures(&service).await;
    other.stop().await;
    herald.stop().await;
}
