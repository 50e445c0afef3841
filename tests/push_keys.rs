//! Web Push keys: `herald push keygen` writes a VAPID key pair, `herald
//! check` and `serve` refuse a `[push]` whose key file is missing or not a
//! key (exit 64, naming the key), and a node serves the public key at `GET
//! /push/vapid-public-key` — checked against the PEM as read by an
//! independent implementation (jwt-simple's ES256 key parser).

mod common;

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::run_herald as herald;
use common::*;

/// A fresh directory of this test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-push-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The public key of a PKCS#8 PEM, as jwt-simple reads it: base64url of
/// the uncompressed point.
fn independent_public_key(pem: &str) -> String {
    use jwt_simple::prelude::*;
    let pair = ES256KeyPair::from_pem(pem).expect("jwt-simple reads the key");
    URL_SAFE_NO_PAD.encode(pair.public_key().public_key().to_bytes_uncompressed())
}

#[test]
fn keygen_writes_a_key_once_and_check_refuses_a_missing_or_bad_one() {
    let dir = scratch("cli");
    let key = dir.join("vapid.pem");
    let key_s = key.to_str().unwrap();
    let (code, out, err) = herald(&["push", "keygen", "--out", key_s]);
    assert_eq!(code, 0, "{out}{err}");
    let pem = std::fs::read_to_string(&key).unwrap();
    let printed = out
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .expect("the public key is printed");
    assert_eq!(printed, independent_public_key(&pem));
    // A second keygen to the same path refuses and leaves the key alone.
    let (code, _, err) = herald(&["push", "keygen", "--out", key_s]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), pem);

    let config = |key_file: &str, subject: &str| {
        let path = dir.join(format!("c{}.toml", key_file.len() + subject.len()));
        std::fs::write(
            &path,
            format!(
                "[kafka]\nbrokers = \"127.0.0.1:9092\"\n[push]\nvapid_private_key_file = \"{key_file}\"\n\
                 vapid_subject = \"{subject}\"\n[[route]]\ntopic = \"news\"\nchannel = \"news\"\n"
            ),
        )
        .unwrap();
        path
    };
    let good = config(key_s, "mailto:ops@example.com");
    assert_eq!(herald(&["check", "--config", good.to_str().unwrap()]).0, 0);
    let not_a_key = dir.join("not-a-key.pem");
    std::fs::write(&not_a_key, "hello\n").unwrap();
    for (file, subject, needle) in [
        (
            "/nonexistent/vapid.pem",
            "mailto:ops@example.com",
            "push.vapid_private_key_file",
        ),
        (
            not_a_key.to_str().unwrap(),
            "mailto:ops@example.com",
            "push.vapid_private_key_file",
        ),
        (key_s, "ops@example.com", "push.vapid_subject"),
    ] {
        let path = config(file, subject);
        for command in ["check", "serve"] {
            let (code, _, err) = herald(&[command, "--config", path.to_str().unwrap()]);
            assert_eq!(code, 64, "{command} {file} {subject}: {err}");
            assert!(err.contains(needle), "{command}: {err}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_node_serves_its_vapid_public_key() {
    let dir = scratch("serve");
    let key = dir.join("vapid.pem");
    let (code, _, err) = herald(&["push", "keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let pem = std::fs::read_to_string(&key).unwrap();

    let (_topic, herald) = herald_with_topic_and("pushkey", 1, "news", |c| {
        let mut push = herald::config::PushConfig::new(&key, "mailto:ops@example.com");
        push.subscriptions_topic = unique_topic("pushkey-subs");
        push.group_id = unique_topic("pushkey-group");
        c.push = Some(push);
    })
    .await;
    let addr = herald.local_addr();
    let response = reqwest::get(format!("http://{addr}/push/vapid-public-key"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"key": independent_public_key(&pem)})
    );
    herald.stop().await;

    // Without [push] the endpoint says Web Push is off.
    let (_topic, herald) = herald_with_topic("nopush", 1, "news").await;
    let (status, body) = {
        let r = reqwest::get(format!(
            "http://{}/push/vapid-public-key",
            herald.local_addr()
        ))
        .await
        .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap())
    };
    assert_eq!(status, 404);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[push]")
    );
    herald.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
