//! Reloading the config while Herald runs (SIGHUP, `Herald::reload`):
//! routes, `[auth]` and `[limits]` apply to new connections, open streams
//! keep going with nothing lost or repeated, and a config that cannot be
//! applied is refused whole with the running one kept.

mod common;

use std::io::BufRead;

use common::*;
use serde_json::json;

const SECRET_1: &str = "the first secret, of at least thirty-two bytes";
const SECRET_2: &str = "the second secret, of at least thirty-two bytes";
const ADMIN_KEY: &str = "the-admin-key-of-this-test-0123";

fn token(secret: &str) -> String {
    hs256(
        secret,
        &json!({"sub": "u1", "exp": now_secs() + 600, "channels": ["a.*", "b.*"]}),
    )
}

/// A config over the shared broker: `[auth]` with `secret`, `extra` lines
/// after `[limits]`, and `(topic, channel)` routes.
fn config_text(secret: &str, limits: &str, routes: &[(&str, &str)], listen: &str) -> String {
    let mut text = format!(
        "[kafka]\nbrokers = \"{}\"\nmetadata_refresh = \"500ms\"\n\
         [http]\nlisten = \"{listen}\"\nshutdown_grace = \"5s\"\n\
         [auth]\nhmac_secret = \"{secret}\"\n\
         [limits]\n{limits}\n",
        bootstrap()
    );
    for (topic, channel) in routes {
        text.push_str(&format!(
            "[[route]]\ntopic = \"{topic}\"\nchannel = \"{channel}\"\n"
        ));
    }
    text
}

fn parse(text: &str) -> herald::config::Config {
    let config = herald::config::Config::parse(text, "test").expect("test config");
    config.validate().expect("a valid config");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_to_new_connections_and_open_streams_keep_going() {
    let (a, b) = (unique_topic("reloada"), unique_topic("reloadb"));
    create_topic(&a, 1).await;
    create_topic(&b, 1).await;
    let before = config_text(SECRET_1, "", &[(&a, "a.{key}")], "127.0.0.1:0");
    let herald = start(parse(&before), &[(&a, 1)]).await;
    let addr = herald.local_addr();
    let producer = Producer::new();
    let (t1, t2) = (token(SECRET_1), token(SECRET_2));

    let mut open = Sse::connect(addr, &format!("channel=a.k&token={t1}"), None).await;
    assert_eq!(open.status, 200);
    for n in 1..=3 {
        producer.send_n(&a, "k", n).await;
    }
    assert_eq!(ns(&open.messages(3).await), [1, 2, 3]);
    let refused = Sse::connect(addr, &format!("channel=b.k&token={t1}"), None).await;
    assert_eq!(
        refused.error_body().await["error"]["code"],
        "unknown_channel"
    );

    // New routes, a new signing secret, and one connection per address.
    let after = config_text(
        SECRET_2,
        "max_connections_per_ip = 1",
        &[(&a, "a.{key}"), (&b, "b.{key}")],
        "127.0.0.1:0",
    );
    herald.reload(parse(&after)).expect("reloaded");

    // The first connection from 127.0.0.1 counted under the new limit (the
    // open stream came before it, uncounted) …
    let mut new_route = Sse::connect(addr, &format!("channel=b.k&token={t2}"), None).await;
    assert_eq!(new_route.status, 200);
    // … so the next one from there is refused, …
    let (status, body) = poll(addr, &format!("channel=b.k&token={t2}")).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (429, &json!("too_many_connections_per_ip"))
    );
    // … and another address, its own count, finds the old secret refused.
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let old_token =
        Sse::connect_with(&elsewhere, addr, &format!("channel=a.k&token={t1}"), None).await;
    assert_eq!(old_token.status, 401);
    assert_eq!(
        old_token.error_body().await["error"]["code"],
        "invalid_token"
    );

    for n in 4..=6 {
        producer.send_n(&a, "k", n).await;
    }
    for n in 1..=2 {
        producer.send_n(&b, "k", n).await;
    }
    assert_eq!(ns(&open.messages(3).await), [4, 5, 6], "the open stream");
    assert_eq!(ns(&new_route.messages(2).await), [1, 2], "the new route");

    // Refused whole: a key that takes a restart, or routes that cannot be
    // built; the config in force stays.
    let restart = after.replace("metadata_refresh = \"500ms\"", "metadata_refresh = \"2s\"");
    let e = herald.reload(parse(&restart)).expect_err("needs a restart");
    assert_eq!(
        e.to_string(),
        "[kafka] changed, which takes a restart; nothing was reloaded (put it back, or restart the node)"
    );
    let mut bad = parse(&after);
    bad.routes[0].channel = "a.{nope}".into();
    let e = herald.reload(bad).expect_err("a bad template");
    assert!(e.to_string().contains("nope"), "{e}");
    let (status, _) = poll(addr, &format!("channel=b.k&token={t2}")).await;
    assert_eq!(status, 429, "the reloaded limits still hold");
    producer.send_n(&a, "k", 7).await;
    assert_eq!(ns(&open.messages(1).await), [7]);
    drop((open, new_route));
    herald.stop().await;
}

/// Lines of a child's stderr, read on a thread of their own.
struct Lines(std::sync::mpsc::Receiver<String>);

impl Lines {
    fn of(stderr: std::process::ChildStderr) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines(rx)
    }

    /// The next line containing `needle`.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }
}

fn hang_up(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_the_admin_api_reread_the_file_and_a_broken_file_keeps_the_running_config() {
    let (a, b) = (unique_topic("huppa"), unique_topic("huppb"));
    create_topic(&a, 1).await;
    create_topic(&b, 1).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let admin_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // With the admin API, for POST /admin/reload.
    let file = |routes: &[(&str, &str)]| {
        config_text(SECRET_1, "", routes, &listen).replace(
            "[auth]",
            &format!("admin_listen = \"{admin_addr}\"\n[auth]"),
        ) + &format!("[admin]\napi_keys = [\"{ADMIN_KEY}\"]\n")
    };
    let dir = std::env::temp_dir().join(unique_topic("herald-reload"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("herald.toml");
    std::fs::write(&path, file(&[(&a, "a.{key}")])).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start herald");
    let lines = Lines::of(child.stderr.take().unwrap());
    wait_readyz(addr, 200, TIMEOUT).await;
    let t1 = token(SECRET_1);
    let b_query = format!("channel=b.k&token={t1}");
    let (status, body) = poll(addr, &b_query).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("unknown_channel"))
    );

    std::fs::write(&path, file(&[(&a, "a.{key}"), (&b, "b.{key}")])).unwrap();
    hang_up(&child);
    lines.wait_for("config reloaded");
    assert_eq!(poll(addr, &b_query).await.0, 200, "the new route");

    std::fs::write(&path, "[kafka\nbrokers = ").unwrap();
    hang_up(&child);
    let refused = lines.wait_for("config reload refused");
    assert!(refused.contains("herald.toml"), "names the file: {refused}");
    assert_eq!(
        poll(addr, &b_query).await.0,
        200,
        "the running config stays"
    );

    // The admin API does the same, and answers with the outcome.
    let admin_reload = || async {
        let response = reqwest::Client::new()
            .post(format!("http://{admin_addr}/admin/reload"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        (status, body)
    };
    let (status, body) = admin_reload().await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("reload_refused")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("herald.toml"),
        "{body}"
    );
    std::fs::write(&path, file(&[(&a, "a.{key}")])).unwrap();
    let (status, body) = admin_reload().await;
    assert_eq!((status, &body), (200, &json!({"status": "reloaded"})));
    let (status, body) = poll(addr, &b_query).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("unknown_channel")),
        "the route is gone again"
    );
    child.kill().ok();
    child.wait().ok();
    std::fs::remove_dir_all(&dir).ok();
}
