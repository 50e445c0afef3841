//! Logs for operators, from the `herald` binary itself: with
//! `log.format = "json"` every stderr line is a JSON object, and with
//! `log.access = true` each request (a stream's at its end) has a line
//! with method, path, status, duration and the client's address (the
//! forwarded one, from a trusted proxy) — and never a token or a key.

mod common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::*;
use serde_json::Value;

const SECRET_QUERY: &str = "SECRETQUERYTOKEN0123456789";
const SECRET_BEARER: &str = "SECRETBEARERTOKEN0123456789";
const SECRET_KEY: &str = "SECRETPUBLISHKEY0123456789";

/// The next stderr line that is an event with `message`, every line
/// before it checked to be JSON; `seen` keeps them all.
fn line_with(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>, message: &str) -> Value {
    loop {
        let line = lines.recv_timeout(TIMEOUT).unwrap_or_else(|_| {
            panic!("no log line {message:?} in time; got:\n{}", seen.join("\n"))
        });
        seen.push(line.clone());
        let event: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        if event["message"]
            .as_str()
            .is_some_and(|m| m.contains(message))
        {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_an_access_log_without_secrets() {
    let topic = unique_topic("logs");
    create_topic(&topic, 1).await;
    let dir = std::env::temp_dir().join(unique_topic("herald-logs"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\ntrusted_proxies = [\"127.0.0.1\"]\n\
             [log]\nformat = \"json\"\naccess = true\n\
             [publish]\napi_keys = [\"{SECRET_KEY}\"]\n\
             [[route]]\ntopic = \"{topic}\"\nchannel = \"c\"\n",
            bootstrap()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start herald");
    let (tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let listening = line_with(&lines, &mut seen, "listening");
    assert_eq!(listening["level"], "INFO", "{listening}");
    assert!(listening["timestamp"].is_string() && listening["target"].is_string());
    let addr: SocketAddr = listening["local_addr"].as_str().unwrap().parse().unwrap();

    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "Herald never became ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A stream with a token in its query and in its header, from a
    // forwarded client; logged when it ends.
    let sse = client
        .get(format!("http://{addr}/sse?channel=c&token={SECRET_QUERY}"))
        .header("authorization", format!("Bearer {SECRET_BEARER}"))
        .header("x-forwarded-for", "203.0.113.50")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    // A refused publish with the key in its header, and a poll.
    let publish = client
        .post(format!("http://{addr}/publish"))
        .header("authorization", format!("Bearer {SECRET_KEY}"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status(), 400);
    let poll = client
        .get(format!(
            "http://{addr}/poll?channel=c&to%6Ben={SECRET_QUERY}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 200);
    drop(sse);
    // A WebSocket, logged when it closes.
    let mut ws = Ws::connect(addr, &format!("channel=c&token={SECRET_QUERY}")).await;
    let subscribed = ws.next_json().await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    ws.send(WsMessage::Close(None)).await;
    let _ = ws.close_frame().await;

    let mut access: Vec<Value> = Vec::new();
    let logged = |access: &Vec<Value>, prefix: &str| {
        access
            .iter()
            .any(|l| l["path"].as_str().unwrap().starts_with(prefix))
    };
    while !["/sse", "/publish", "/poll", "/ws"]
        .iter()
        .all(|p| logged(&access, p))
    {
        let line = line_with(&lines, &mut seen, "");
        if line["target"] == "herald::access" {
            access.push(line);
        }
    }
    let by_path = |prefix: &str| {
        access
            .iter()
            .find(|l| l["path"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no access line for {prefix}: {access:?}"))
            .clone()
    };
    let stream = by_path("/sse");
    assert_eq!(stream["method"], "GET");
    assert_eq!(stream["path"], "/sse?channel=c&token=REDACTED");
    assert_eq!(stream["status"], 200);
    assert_eq!(
        stream["client"], "203.0.113.50",
        "the forwarded address: {stream}"
    );
    assert!(stream["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(stream["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(
        stream["bytes"].as_u64().unwrap() > 0,
        "the opening was sent: {stream}"
    );
    let publish = by_path("/publish");
    assert_eq!(
        (publish["method"].as_str(), publish["status"].as_u64()),
        (Some("POST"), Some(400))
    );
    assert_eq!(publish["client"], "127.0.0.1");
    assert_eq!(by_path("/poll")["path"], "/poll?channel=c&to%6Ben=REDACTED");
    let websocket = by_path("/ws");
    assert_eq!(websocket["path"], "/ws?channel=c&token=REDACTED");
    assert_eq!(websocket["status"], 101);
    assert!(
        websocket["bytes"].as_u64().unwrap() > 0,
        "the subscribed frame: {websocket}"
    );

    child.kill().unwrap();
    let _ = child.wait();
    let all = seen.join("\n");
    for secret in [SECRET_QUERY, SECRET_BEARER, SECRET_KEY] {
        assert!(!all.contains(secret), "{secret} in the logs:\n{all}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
