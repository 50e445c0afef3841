//! The test push service (tests/push/push_service.py) is a real, strict
//! peer, checked without Herald: messages encrypted by web-push-native and
//! signed with jwt-simple are decrypted and accepted, and each broken rule
//! — `aud` without the port, a foreign `k`, a bad signature, a tampered
//! ciphertext, a missing TTL, a plaintext that is no JSON object, the wrong
//! service's port — is refused and recorded. Its modes answer as a
//! struggling push service would.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::push_service::PushService;
use jwt_simple::prelude::{Claims, ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair};
use serde_json::{Value, json};

/// How long a test waits for the service to have accepted a message.
const ARRIVAL: Duration = Duration::from_secs(5);

/// An application server's VAPID key pair and its public key as `k=`.
struct Vapid {
    pair: ES256KeyPair,
    k: String,
}

impl Vapid {
    fn new() -> Vapid {
        let pair = ES256KeyPair::generate();
        let k = URL_SAFE_NO_PAD.encode(pair.public_key().public_key().to_bytes_uncompressed());
        Vapid { pair, k }
    }

    /// A JWT for `aud`, valid for `valid_for`, signed by this key.
    fn jwt(&self, aud: &str, valid_for: jwt_simple::prelude::Duration) -> String {
        let claims = Claims::create(valid_for)
            .with_audience(aud)
            .with_subject("mailto:push-tests@herald.invalid");
        self.pair.sign(claims).expect("sign the VAPID JWT")
    }

    /// `Authorization` for `aud`: a 12 h JWT by this key, and this key as `k`.
    fn authorization(&self, aud: &str) -> String {
        let t = self.jwt(aud, jwt_simple::prelude::Duration::from_hours(12));
        format!("vapid t={t}, k={}", self.k)
    }
}

/// `plaintext` encrypted for `subscription` (a `PushSubscription.toJSON()`)
/// by web-push-native, RFC 8291's aes128gcm.
fn encrypt(subscription: &Value, plaintext: &[u8]) -> Vec<u8> {
    let key = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(subscription["keys"][name].as_str().expect("a key"))
            .expect("base64url")
    };
    let ua_public = web_push_native::p256::PublicKey::from_sec1_bytes(&key("p256dh"))
        .expect("p256dh is a P-256 point");
    let auth = web_push_native::Auth::clone_from_slice(&key("auth"));
    web_push_native::encrypt(plaintext.to_vec(), &ua_public, &auth).expect("encrypt")
}

fn endpoint(subscription: &Value) -> &str {
    subscription["endpoint"].as_str().expect("endpoint")
}

/// POSTs `body` as a push message with TTL 60, Urgency high and Topic
/// `news`, and the given `Authorization`; the status.
async fn push(
    client: &reqwest::Client,
    url: &str,
    authorization: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    client
        .post(url)
        .header("TTL", "60")
        .header("Urgency", "high")
        .header("Topic", "news")
        .header("Content-Encoding", "aes128gcm")
        .header("Content-Type", "application/octet-stream")
        .header("Authorization", authorization)
        .body(body)
        .send()
        .await
        .expect("POST to the push service")
}

/// Asserts the service recorded exactly one failure, containing `needle`.
async fn assert_one_failure(service: &PushService, needle: &str) {
    let failures = service.failures().await;
    assert_eq!(failures.len(), 1, "{failures:#?}");
    assert!(
        failures[0].contains(needle),
        "{failures:#?} lacks {needle:?}"
    );
}

fn statuses(attempts: &[(u16, u64)]) -> Vec<u16> {
    attempts.iter().map(|&(status, _)| status).collect()
}

#[tokio::test]
async fn accepts_messages_from_an_independent_sender_on_one_connection() {
    let vapid = Vapid::new();
    let service = PushService::start(2, &vapid.k);
    let (id, subscription) = service.subscribe(1).await;
    assert_eq!(
        endpoint(&subscription),
        format!("{}/push/{id}", service.origin(1))
    );
    assert_eq!(subscription["expirationTime"], Value::Null);
    let client = reqwest::Client::new();
    let authorization = vapid.authorization(&service.origin(1));
    let envelopes = [json!({"n": 1, "data": "first"}), json!({"n": 2})];
    for envelope in &envelopes {
        let body = encrypt(&subscription, envelope.to_string().as_bytes());
        let response = push(&client, endpoint(&subscription), &authorization, body).await;
        assert_eq!(response.status(), 201);
        assert!(response.headers().contains_key("location"));
    }

    let received = service.wait_received(&id, 2, ARRIVAL).await;
    let plaintexts: Vec<&Value> = received.iter().map(|r| &r.plaintext).collect();
    assert_eq!(plaintexts, envelopes.iter().collect::<Vec<_>>());
    assert_eq!(received[0].ttl, 60);
    assert_eq!(received[0].urgency.as_deref(), Some("high"));
    assert_eq!(received[0].topic.as_deref(), Some("news"));
    assert!(received[0].at_ms <= received[1].at_ms);
    assert_eq!(statuses(&service.attempts(&id).await), [201, 201]);
    let all = service.received_all().await;
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|(of, _)| *of == id));
    assert_eq!(service.failures().await, Vec::<String>::new());
}

#[tokio::test]
async fn refuses_an_aud_without_the_port() {
    let vapid = Vapid::new();
    let service = PushService::start(1, &vapid.k);
    let (id, subscription) = service.subscribe(0).await;
    let body = encrypt(&subscription, br#"{"n":1}"#);
    let authorization = vapid.authorization("http://127.0.0.1");
    let response = push(
        &reqwest::Client::new(),
        endpoint(&subscription),
        &authorization,
        body,
    )
    .await;
    assert!(
        [401, 403].contains(&response.status().as_u16()),
        "{}",
        response.status()
    );
    assert_one_failure(
        &service,
        &format!(
            "vapid aud http://127.0.0.1 lacks the port {}",
            service.service_port(0)
        ),
    )
    .await;
    assert!(service.received(&id).await.is_empty());
}

#[tokio::test]
async fn refuses_a_foreign_key_and_a_signature_by_another_key() {
    let vapid = Vapid::new();
    let other = Vapid::new();
    let service = PushService::start(1, &vapid.k);
    let (id, subscription) = service.subscribe(0).await;
    let client = reqwest::Client::new();
    let origin = service.origin(0);

    // Well signed, but by a key the subscription was not made with.
    let body = encrypt(&subscription, br#"{"n":1}"#);
    let response = push(
        &client,
        endpoint(&subscription),
        &other.authorization(&origin),
        body,
    )
    .await;
    assert_eq!(response.status(), 403);
    assert_one_failure(&service, "k is not the configured VAPID key").await;

    // The configured key as k, but the JWT signed by another.
    let t = other.jwt(&origin, jwt_simple::prelude::Duration::from_hours(1));
    let forged = format!("vapid t={t}, k={}", vapid.k);
    let body = encrypt(&subscription, br#"{"n":2}"#);
    let response = push(&client, endpoint(&subscription), &forged, body).await;
    assert_eq!(response.status(), 401);
    let failures = service.failures().await;
    assert!(
        failures[1].contains("JWT signature invalid"),
        "{failures:#?}"
    );
    assert!(service.received(&id).await.is_empty());
    assert_eq!(statuses(&service.attempts(&id).await), [403, 401]);
}

#[tokio::test]
async fn refuses_a_tampered_ciphertext() {
    let vapid = Vapid::new();
    let service = PushService::start(1, &vapid.k);
    let (id, subscription) = service.subscribe(0).await;
    let mut body = encrypt(&subscription, br#"{"n":1}"#);
    *body.last_mut().unwrap() ^= 1;
    let authorization = vapid.authorization(&service.origin(0));
    let response = push(
        &reqwest::Client::new(),
        endpoint(&subscription),
        &authorization,
        body,
    )
    .await;
    assert_eq!(response.status(), 400);
    assert_one_failure(&service, "decryption failed").await;
    assert!(service.received(&id).await.is_empty());
}

#[tokio::test]
async fn refuses_a_missing_ttl_a_non_object_plaintext_and_the_wrong_port() {
    let vapid = Vapid::new();
    let service = PushService::start(2, &vapid.k);
    let (id, subscription) = service.subscribe(0).await;
    let client = reqwest::Client::new();
    let authorization = vapid.authorization(&service.origin(0));

    let response = client
        .post(endpoint(&subscription))
        .header("Content-Encoding", "aes128gcm")
        .header("Authorization", &authorization)
        .body(encrypt(&subscription, br#"{"n":1}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body = encrypt(&subscription, b"[1, 2]");
    let response = push(&client, endpoint(&subscription), &authorization, body).await;
    assert_eq!(response.status(), 400);
    // Service 0's subscription, POSTed to service 1.
    let wrong = format!("{}/push/{id}", service.origin(1));
    let body = encrypt(&subscription, br#"{"n":3}"#);
    let response = push(
        &client,
        &wrong,
        &vapid.authorization(&service.origin(1)),
        body,
    )
    .await;
    assert_eq!(response.status(), 404);

    let failures = service.failures().await;
    assert_eq!(failures.len(), 3, "{failures:#?}");
    assert!(failures[0].contains("missing TTL"), "{failures:#?}");
    assert!(
        failures[1].contains("plaintext is not a JSON object"),
        "{failures:#?}"
    );
    assert!(
        failures[2].contains(&format!("endpoint is on port {}", service.service_port(0))),
        "{failures:#?}"
    );
    assert_eq!(statuses(&service.attempts(&id).await), [400, 400]);
}

#[tokio::test]
async fn throttle_once_answers_429_with_retry_after_then_201() {
    let vapid = Vapid::new();
    let service = PushService::start(1, &vapid.k);
    let (id, subscription) = service.subscribe(0).await;
    service.set_mode(&id, "throttle_once").await;
    let client = reqwest::Client::new();
    let authorization = vapid.authorization(&service.origin(0));

    let body = encrypt(&subscription, br#"{"n":1}"#);
    let response = push(&client, endpoint(&subscription), &authorization, body).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body = encrypt(&subscription, br#"{"n":1}"#);
    let response = push(&client, endpoint(&subscription), &authorization, body).await;
    assert_eq!(response.status(), 201);

    assert_eq!(statuses(&service.attempts(&id).await), [429, 201]);
    let received = service.received(&id).await;
    assert_eq!(received.len(), 1, "only the 201 counts as received");
    assert_eq!(received[0].plaintext, json!({"n": 1}));
    assert_eq!(service.failures().await, Vec::<String>::new());
}

#[tokio::test]
async fn gone_answers_410_every_time() {
    let vapid = Vapid::new();
    let service = PushService::start(1, &vapid.k);
    let (id, subscription) = service.subscribe(0).await;
    service.set_mode(&id, "gone").await;
    let client = reqwest::Client::new();
    let authorization = vapid.authorization(&service.origin(0));
    for n in 0..2 {
        let body = encrypt(&subscription, format!("{{\"n\":{n}}}").as_bytes());
        let response = push(&client, endpoint(&subscription), &authorization, body).await;
        assert_eq!(response.status(), 410);
    }
    assert_eq!(statuses(&service.attempts(&id).await), [410, 410]);
    assert!(service.received(&id).await.is_empty());
    assert_eq!(service.failures().await, Vec::<String>::new());
}

#[tokio::test]
async fn hang_holds_only_its_own_subscription() {
    let vapid = Vapid::new();
    let service = PushService::start(1, &vapid.k);
    let (stuck, stuck_subscription) = service.subscribe(0).await;
    let (fine, fine_subscription) = service.subscribe(0).await;
    service.set_mode(&stuck, "hang").await;
    let authorization = vapid.authorization(&service.origin(0));

    let client = reqwest::Client::new();
    let held = {
        let client = client.clone();
        let url = endpoint(&stuck_subscription).to_owned();
        let body = encrypt(&stuck_subscription, br#"{"n":1}"#);
        let authorization = authorization.clone();
        tokio::spawn(async move {
            let request = push(&client, &url, &authorization, body);
            tokio::time::timeout(Duration::from_millis(500), request).await
        })
    };
    // While that POST hangs, another subscription of the same service is
    // answered at once.
    let body = encrypt(&fine_subscription, br#"{"n":2}"#);
    let response = push(&client, endpoint(&fine_subscription), &authorization, body).await;
    assert_eq!(response.status(), 201);
    assert!(
        held.await.unwrap().is_err(),
        "a hanging POST is never answered"
    );

    service.set_mode(&stuck, "ok").await;
    let body = encrypt(&stuck_subscription, br#"{"n":3}"#);
    let response = push(&client, endpoint(&stuck_subscription), &authorization, body).await;
    assert_eq!(response.status(), 201);
    let received = service.received(&stuck).await;
    assert_eq!(received.len(), 1, "the held message was never delivered");
    assert_eq!(received[0].plaintext, json!({"n": 3}));
    assert_eq!(statuses(&service.attempts(&stuck).await), [0, 201]);
    assert_eq!(service.received(&fine).await.len(), 1);
    assert_eq!(service.failures().await, Vec::<String>::new());
}
