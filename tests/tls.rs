//! The TLS listener (`[tls]`): a client that trusts the test's CA streams
//! SSE over HTTP/2 and over HTTP/1.1 (curl, a TLS stack other than
//! Herald's), and a reload picks up a new certificate.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::*;
use tokio::io::AsyncBufReadExt;

fn tls_config(topic: &str, cert: &Path, key: &Path) -> herald::config::Config {
    let text = format!(
        "[kafka]\nbrokers = \"{}\"\nmetadata_refresh = \"500ms\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n\
         [tls]\nlisten = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}\n\
         [[route]]\ntopic = \"{topic}\"\nchannel = \"c\"\n",
        bootstrap(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let config = herald::config::Config::parse(&text, "test").expect("test config");
    config.validate().expect("valid");
    config
}

/// `curl -N` on `/sse?channel=c` over TLS, trusting `ca`: the HTTP version
/// curl reports and the `n` of the first `count` messages, produced once
/// the stream is open.
async fn curl_sse(
    addr: std::net::SocketAddr,
    ca: &Path,
    version: &str,
    topic: &str,
    first: u64,
    count: u64,
) -> (String, Vec<u64>) {
    let mut curl = tokio::process::Command::new("curl")
        .args(["-sN", "-v", version, "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("herald.test:{}:127.0.0.1", addr.port()))
        .arg(format!("https://herald.test:{}/sse?channel=c", addr.port()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl");
    let mut out = tokio::io::BufReader::new(curl.stdout.take().unwrap()).lines();
    let mut err = tokio::io::BufReader::new(curl.stderr.take().unwrap()).lines();
    let found = tokio::time::timeout(TIMEOUT, async {
        let mut got = Vec::new();
        let producer = Producer::new();
        while let Some(line) = out.next_line().await.unwrap() {
            if line == "event: subscribed" {
                for n in first..first + count {
                    producer.send_n(topic, "k", n).await;
                }
            }
            if let Some(data) = line.strip_prefix("data: ")
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(data)
                && let Some(n) = v["data"]["n"].as_u64()
            {
                got.push(n);
                if got.len() as u64 == count {
                    return got;
                }
            }
        }
        panic!("curl's stream ended after {got:?}");
    })
    .await
    .expect("the messages over TLS");
    curl.kill().await.ok();
    let mut protocol = String::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(std::time::Duration::from_secs(5), err.next_line()).await
    {
        if let Some(status) = line.strip_prefix("< HTTP/") {
            protocol = format!("HTTP/{}", status.trim_end());
            break;
        }
    }
    (protocol, found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_over_tls_on_http2_and_http1_and_a_reload_takes_a_new_certificate() {
    let topic = unique_topic("tls");
    create_topic(&topic, 1).await;
    let dir = std::env::temp_dir().join(unique_topic("herald-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = test_certs(&dir, "first");
    let herald = start(tls_config(&topic, &cert, &key), &[(&topic, 1)]).await;
    let addr = herald.tls_addr().expect("a TLS listener");

    let (protocol, got) = curl_sse(addr, &ca, "--http2", &topic, 0, 3).await;
    assert_eq!((protocol.as_str(), got), ("HTTP/2 200", vec![0, 1, 2]));
    let (protocol, got) = curl_sse(addr, &ca, "--http1.1", &topic, 3, 2).await;
    assert_eq!((protocol.as_str(), got), ("HTTP/1.1 200 OK", vec![3, 4]));

    // A renewed certificate (another CA here, so that the test can tell):
    // new connections get it after a reload.
    let (ca2, cert2, key2) = test_certs(&dir, "second");
    herald
        .reload(tls_config(&topic, &cert2, &key2))
        .expect("reloaded");
    let (protocol, got) = curl_sse(addr, &ca2, "--http2", &topic, 5, 1).await;
    assert_eq!((protocol.as_str(), got), ("HTTP/2 200", vec![5]));
    let old_ca = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--cacert"])
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("herald.test:{}:127.0.0.1", addr.port()))
        .arg(format!("https://herald.test:{}/healthz", addr.port()))
        .status()
        .unwrap();
    assert_eq!(old_ca.code(), Some(60), "the old CA no longer verifies");
    herald.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}
