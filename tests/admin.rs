//! The admin API on `http.admin_listen`: channel counts per transport,
//! disconnecting a token subject on every transport, draining the node;
//! behind `[admin]` keys. One Herald for the whole scenario.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{Value, json};

const SECRET: &str = "a test secret of at least thirty-two bytes!";
const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

fn token(sub: &str) -> String {
    hs256(
        SECRET,
        &json!({"sub": sub, "exp": now_secs() + 600, "channels": ["room.*"]}),
    )
}

/// An admin request: the status and the JSON body.
async fn admin(addr: SocketAddr, method: &str, path: &str, key: Option<&str>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), format!("http://{addr}{path}"));
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let response = tokio::time::timeout(TIMEOUT, req.send())
        .await
        .expect("admin request timed out")
        .expect("admin request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn counts(addr: SocketAddr, channel: &str) -> Value {
    let (status, body) = admin(addr, "GET", "/admin/channels", Some(ADMIN_KEY)).await;
    assert_eq!(status, 200, "{body}");
    body["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == channel)
        .map_or(json!(null), |c| c["subscribers"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_counts_disconnects_a_subject_and_drains() {
    let topic = unique_topic("admin");
    create_topic(&topic, 1).await;
    let text = format!(
        "[kafka]\nbrokers = \"{}\"\nmetadata_refresh = \"500ms\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\n\
         [auth]\nhmac_secret = \"{SECRET}\"\n\
         [admin]\napi_keys = [\"{ADMIN_KEY}\"]\n\
         [[route]]\ntopic = \"{topic}\"\nchannel = \"room.{{key}}\"\n",
        bootstrap()
    );
    let config = herald::config::Config::parse(&text, "test").unwrap();
    let herald = start(config, &[(&topic, 1)]).await;
    let addr = herald.local_addr();
    let admin_addr = herald.admin_addr().unwrap();

    // The key: missing, wrong, in the wrong scheme: 401 naming the key.
    for key in [None, Some("wrong-key-0123456789abcdef"), Some("")] {
        let (status, body) = admin(admin_addr, "GET", "/admin/channels", key).await;
        assert_eq!(status, 401, "{key:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("admin.api_keys"),
            "{body}"
        );
    }
    // The admin API is not on the client listener.
    let (status, _) = admin(addr, "GET", "/admin/channels", Some(ADMIN_KEY)).await;
    assert_eq!(status, 404);

    let (alice, bob) = (token("alice"), token("bob"));
    let mut alice_sse = Sse::connect(addr, &format!("channel=room.1&token={alice}"), None).await;
    let mut bob_sse = Sse::connect(addr, &format!("channel=room.1&token={bob}"), None).await;
    let mut alice_ws = Ws::connect(addr, &format!("token={alice}")).await;
    alice_ws.subscribe("room.1", None).await;
    let mut bob_ws = Ws::connect(addr, &format!("token={bob}")).await;
    bob_ws.subscribe("room.1", None).await;
    bob_ws.subscribe("room.2", None).await;
    let query = format!("channel=room.1&wait=25&token={alice}");
    let alice_poll = tokio::spawn(async move { poll(addr, &query).await });

    // Counted per transport, the long poll once it waits.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut seen = counts(admin_addr, "room.1").await;
    while seen["poll"] != 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        seen = counts(admin_addr, "room.1").await;
    }
    assert_eq!(seen, json!({"sse": 2, "ws": 2, "poll": 1, "other": 0}));
    assert_eq!(
        counts(admin_addr, "room.2").await,
        json!({"sse": 0, "ws": 1, "poll": 0, "other": 0})
    );

    // Disconnecting alice ends her three streams, each with its signal.
    let (status, body) = admin(
        admin_addr,
        "POST",
        "/admin/disconnect?sub=alice",
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(
        (status, &body),
        (200, &json!({"sub": "alice", "disconnected": 3}))
    );
    let end = alice_sse.next_raw().await.expect("a reconnect event");
    assert_eq!(end.event.as_deref(), Some("reconnect"), "{end:?}");
    assert_eq!(end.json()["reason"], "token_revoked");
    assert!(alice_sse.next_raw().await.is_none(), "the stream ended");
    let error = alice_ws.next_json().await;
    assert_eq!(error["code"], "token_revoked", "{error}");
    let close = alice_ws.close_frame().await.expect("a close frame");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (4003, "token revoked")
    );
    let (status, body) = alice_poll.await.unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_revoked"))
    );

    // Bob goes on receiving on both transports: a record produced now.
    Producer::new()
        .send(&topic, None, Some(b"1"), Some(b"\"after\""), None)
        .await;
    assert_eq!(bob_sse.next_message().await.json()["data"], "after");
    let message = bob_ws.next_json().await;
    assert_eq!(
        (message["type"].as_str(), message["data"].as_str()),
        (Some("message"), Some("after"))
    );
    assert_eq!(
        counts(admin_addr, "room.1").await,
        json!({"sse": 1, "ws": 1, "poll": 0, "other": 0})
    );

    // Draining: every stream told to reconnect elsewhere, new ones
    // refused, /readyz 503, /metrics still served.
    let query = format!("channel=room.1&wait=25&token={bob}");
    let bob_poll = tokio::spawn(async move { poll(addr, &query).await });
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while counts(admin_addr, "room.1").await["poll"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the long poll never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, body) = admin(admin_addr, "POST", "/admin/drain", Some(ADMIN_KEY)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("draining")));
    let end = bob_sse.next_raw().await.expect("a reconnect event");
    assert_eq!(
        (end.event.as_deref(), end.json()["reason"].as_str()),
        (Some("reconnect"), Some("draining"))
    );
    let close = bob_ws.close_frame().await.expect("a close frame");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1001, "draining")
    );
    // The long poll is answered at once, empty, with its cursor to resume.
    let (status, body) = bob_poll.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body["messages"].as_array().unwrap().is_empty() && body["cursor"].is_string());
    let refused = Sse::connect(addr, &format!("channel=room.1&token={bob}"), None).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.error_body().await["error"]["code"], "draining");
    let (status, body) = admin(admin_addr, "GET", "/readyz", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("draining"))
    );
    let metrics = reqwest::get(format!("http://{admin_addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("herald_connections"), "{text}");

    herald.stop().await;
}
