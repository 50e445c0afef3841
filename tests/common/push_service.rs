//! The test push service (`tests/push/push_service.py`) seen from a test:
//! the peer Herald's Web Push transport POSTs to, which decrypts and checks
//! every message with Python libraries independent of Herald's crates, and
//! tells the test what arrived and what broke a rule.
//!
//! The Python comes from `HERALD_PUSH_PYTHON` (which `scripts/test.sh` sets
//! after making `target/push-venv`), else from `target/push-venv` itself.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long one control request may take: they are local and small, so
/// running out means the service is stuck, not slow.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`PushService::wait_received`] asks: often enough that a test
/// waits little past the arrival, rarely enough to leave the service's CPU
/// to the POSTs it waits for.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// One running push service process with `services` push service listeners.
/// Dropping it ends the process.
pub struct PushService {
    child: Child,
    /// Held open for the process's life: it exits when this closes, so it
    /// also ends when the test process dies without running `Drop`.
    _stdin: ChildStdin,
    control: String,
    service_ports: Vec<u16>,
    http: reqwest::Client,
}

/// One push message the service accepted (answered 201) and decrypted.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The decrypted body, parsed: the service refuses any that is not a
    /// JSON object.
    pub plaintext: Value,
    /// The `TTL` header, in seconds.
    pub ttl: u64,
    /// The `Urgency` header, `None` when absent.
    pub urgency: Option<String>,
    /// The `Topic` header, `None` when absent.
    pub topic: Option<String>,
    /// When the POST arrived, Unix epoch milliseconds.
    pub at_ms: u64,
}

impl Received {
    fn from_json(m: &Value) -> Received {
        let text = m["plaintext"].as_str().expect("plaintext");
        Received {
            plaintext: serde_json::from_str(text).expect("the service checked it is JSON"),
            ttl: m["ttl"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("the service checked TTL is a number"),
            urgency: m["urgency"].as_str().map(str::to_owned),
            topic: m["topic"].as_str().map(str::to_owned),
            at_ms: m["at_ms"].as_u64().expect("at_ms"),
        }
    }
}

impl PushService {
    /// Starts the service with `services` push services, accepting only
    /// messages signed by the VAPID key `vapid_public_key` (base64url of the
    /// uncompressed P-256 point), and waits until it listens.
    pub fn start(services: usize, vapid_public_key: &str) -> PushService {
        let python = python();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/push/push_service.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--services", &services.to_string()])
            .args(["--vapid-key", vapid_public_key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {} {}: {e} (run scripts/test.sh, which creates target/push-venv)",
                    python.display(),
                    script.display()
                )
            });
        let stdin = child.stdin.take().expect("piped stdin");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("reading the push service's ports");
        let ports: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("the push service printed {line:?}, not its ports ({e}); its stderr is above")
        });
        let port = |v: &Value| u16::try_from(v.as_u64().expect("a port")).expect("a port");
        let service_ports: Vec<u16> = ports["services"]
            .as_array()
            .expect("services")
            .iter()
            .map(port)
            .collect();
        assert_eq!(service_ports.len(), services, "{line}");
        PushService {
            child,
            _stdin: stdin,
            control: format!("http://127.0.0.1:{}", port(&ports["control"])),
            service_ports,
            http: reqwest::Client::builder()
                .timeout(CONTROL_TIMEOUT)
                .build()
                .expect("HTTP client"),
        }
    }

    /// The port push service `service` (0-based) listens on.
    pub fn service_port(&self, service: usize) -> u16 {
        self.service_ports[service]
    }

    /// The origin of push service `service`'s endpoints: what a VAPID
    /// JWT's `aud` must be.
    pub fn origin(&self, service: usize) -> String {
        format!("http://127.0.0.1:{}", self.service_port(service))
    }

    /// A new subscription on push service `service`: its id and what a
    /// browser's `PushSubscription.toJSON()` gives (`endpoint`,
    /// `expirationTime`, `keys.p256dh`, `keys.auth`).
    pub async fn subscribe(&self, service: usize) -> (String, Value) {
        let reply = self
            .post("/subscriptions", json!({ "service": service }))
            .await;
        let id = reply["id"].as_str().expect("id").to_owned();
        (id, reply["subscription"].clone())
    }

    /// How POSTs to subscription `id` are answered from now on: `"ok"`
    /// (201), `"gone"` (410), `"not_found"` (404), `"throttle_once"` (one
    /// 429 with `Retry-After: 1`), `"error_once"` (one 503) or `"hang"` (no
    /// answer while the mode lasts; when it changes, the held connection is
    /// closed unanswered).
    pub async fn set_mode(&self, id: &str, mode: &str) {
        self.post("/behaviour", json!({ "id": id, "mode": mode }))
            .await;
    }

    /// [`PushService::set_mode`] for every subscription of push service
    /// `service`; a mode other than `"ok"` set here wins over a
    /// subscription's own.
    pub async fn set_service_mode(&self, service: usize, mode: &str) {
        self.post("/behaviour", json!({ "service": service, "mode": mode }))
            .await;
    }

    /// The messages subscription `id` accepted, in arrival order.
    pub async fn received(&self, id: &str) -> Vec<Received> {
        let reply = self.get(&format!("/received?id={id}")).await;
        reply["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(Received::from_json)
            .collect()
    }

    /// Every accepted message of every subscription, in arrival order, each
    /// with its subscription's id.
    pub async fn received_all(&self) -> Vec<(String, Received)> {
        let reply = self.get("/received").await;
        reply["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                let id = m["id"].as_str().expect("id").to_owned();
                (id, Received::from_json(m))
            })
            .collect()
    }

    /// Every POST that reached subscription `id`: the status it was
    /// answered with (0 for one held by `"hang"`, never answered) and when
    /// it arrived (Unix epoch ms), in arrival order.
    pub async fn attempts(&self, id: &str) -> Vec<(u16, u64)> {
        let reply = self.get(&format!("/attempts?id={id}")).await;
        reply
            .as_array()
            .expect("a list of attempts")
            .iter()
            .map(|a| {
                let status = a["status"].as_u64().map_or(0, |s| s as u16);
                (status, a["at_ms"].as_u64().expect("at_ms"))
            })
            .collect()
    }

    /// Every protocol violation the service saw, each naming the POST's
    /// path and port; a test of a correct sender asserts this is empty.
    pub async fn failures(&self) -> Vec<String> {
        let reply = self.get("/failures").await;
        reply
            .as_array()
            .expect("a list of failures")
            .iter()
            .map(|f| f.as_str().expect("a failure").to_owned())
            .collect()
    }

    /// Waits until subscription `id` has accepted at least `n` messages and
    /// returns them all; panics after `timeout` with what had arrived (and
    /// any failures, which usually say why the rest did not).
    pub async fn wait_received(&self, id: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received(id).await;
            if got.len() >= n {
                return got;
            }
            if Instant::now() >= deadline {
                panic!(
                    "subscription {id}: {} of {n} push messages within {timeout:?}: {got:#?}\n\
                     failures: {:#?}",
                    got.len(),
                    self.failures().await
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.control))
            .send()
            .await;
        Self::reply(path, response).await
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.control))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        Self::reply(path, response).await
    }

    async fn reply(path: &str, response: reqwest::Result<reqwest::Response>) -> Value {
        let response = response.unwrap_or_else(|e| panic!("push service control {path}: {e}"));
        let status = response.status();
        let text = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("push service control {path}: {e}"));
        assert!(
            status.is_success(),
            "push service control {path}: {status} {text}"
        );
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("push service control {path}: {e}: {text}"))
    }
}

impl Drop for PushService {
    fn drop(&mut self) {
        // Closing stdin would end it too, but only once `_stdin` drops,
        // after this; kill and reap now so no process outlives the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The venv's Python: `HERALD_PUSH_PYTHON`, else `target/push-venv`.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("HERALD_PUSH_PYTHON") {
        return PathBuf::from(python);
    }
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/push-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh, which creates target/push-venv",
        python.display()
    );
    python
}
