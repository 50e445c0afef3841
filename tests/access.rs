//! Who may read what, over every transport: tokens (HS256, RS256, ES256),
//! the `channels` claim and its patterns, public channels, expiry and
//! renewal, and the Origin check. Tokens are minted here with
//! `jsonwebtoken`; `src/auth`'s unit tests also check tokens minted by a
//! second, independent JWT library.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "a test secret of at least thirty-two bytes!";
const RSA_KEY: &[u8] = include_bytes!("../src/auth/testdata/rsa.key.pem");
const RSA_PUB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/auth/testdata/rsa.pub.pem");
const RSA_PUB_PEM: &[u8] = include_bytes!("../src/auth/testdata/rsa.pub.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn rs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(RSA_KEY).unwrap(),
    )
    .unwrap()
}

/// A token for `channels` valid for `secs` seconds from now.
fn token_for(channels: &[&str], secs: u64) -> String {
    hs256(json!({"sub": "u1", "exp": now() + secs, "channels": channels}))
}

/// A JWT with `alg: none` and no signature.
fn unsigned(claims: Value) -> String {
    use base64::Engine;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    )
}

/// Herald with one topic routed to `team.{key}` and `public.{key}`,
/// `[auth]` given as TOML lines, and `http` lines added.
async fn secured(prefix: &str, auth: &str, http: &str) -> (String, herald::Herald) {
    let topic = unique_topic(prefix);
    create_topic(&topic, 1).await;
    let text = format!(
        "[kafka]\nbrokers = \"{}\"\nmetadata_refresh = \"500ms\"\nstats_interval = \"200ms\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n{http}\n\
         [auth]\n{auth}\n\
         [[route]]\ntopic = \"{topic}\"\nchannel = \"team.{{key}}\"\n\
         [[route]]\ntopic = \"{topic}\"\nchannel = \"public.{{key}}\"\n",
        bootstrap()
    );
    let config = herald::config::Config::parse(&text, "test").expect("test config");
    let herald = start(config, &[(&topic, 1)]).await;
    (topic, herald)
}

fn hmac_auth() -> String {
    format!("hmac_secret = \"{SECRET}\"\npublic_channels = [\"public.*\"]\nleeway = \"0s\"")
}

/// What each transport answers for `channel` with `token`: the status (101
/// for an accepted WebSocket, 200 for SSE and poll) and the error code.
struct Answers {
    sse: (u16, Option<String>),
    poll: (u16, Option<String>),
    ws_url: (u16, Option<String>),
    ws_message: Option<String>,
}

async fn answers(addr: SocketAddr, channel: &str, token: Option<&str>) -> Answers {
    let q = |extra: &str| {
        let mut q = format!("channel={channel}{extra}");
        if let Some(t) = token {
            q.push_str(&format!("&token={t}"));
        }
        q
    };
    let code = |body: &Value| body["error"]["code"].as_str().map(str::to_owned);
    let sse = Sse::connect(addr, &q(""), None).await;
    let sse = match sse.status {
        200 => (200, None),
        s => (s, code(&sse.error_body().await)),
    };
    let (status, body) = poll(addr, &q("")).await;
    let poll = (status, if status == 200 { None } else { code(&body) });
    let ws_url = match Ws::try_connect(addr, &q("")).await {
        Ok(_) => (101, None),
        Err((status, body)) => (status, code(&body)),
    };
    // Two-way: the token by an `auth` message (a refused one is answered
    // there), the channel by message.
    let mut ws = Ws::connect(addr, "").await;
    let mut ws_message = None;
    if let Some(t) = token {
        ws.send_json(json!({"type": "auth", "token": t})).await;
        let reply = ws.next_json().await;
        match reply["type"].as_str() {
            Some("authenticated") => {}
            Some("error") => ws_message = reply["code"].as_str().map(str::to_owned),
            _ => panic!("unexpected reply {reply}"),
        }
    }
    if ws_message.is_none() {
        ws.send_json(json!({"type": "subscribe", "channel": channel}))
            .await;
        let reply = ws.next_json().await;
        ws_message = match reply["type"].as_str() {
            Some("subscribed") => None,
            Some("error") => {
                assert_eq!(reply["channel"], channel, "{reply}");
                reply["code"].as_str().map(str::to_owned)
            }
            _ => panic!("unexpected reply {reply}"),
        };
    }
    Answers {
        sse,
        poll,
        ws_url,
        ws_message,
    }
}

/// Every transport refuses `channel` with `token` the same way.
async fn assert_refused(
    addr: SocketAddr,
    channel: &str,
    token: Option<&str>,
    status: u16,
    code: &str,
) {
    let a = answers(addr, channel, token).await;
    let want = (status, Some(code.to_owned()));
    assert_eq!(a.sse, want, "SSE, {channel}");
    assert_eq!(a.poll, want, "poll, {channel}");
    assert_eq!(a.ws_url, want, "one-way WebSocket, {channel}");
    assert_eq!(
        a.ws_message.as_deref(),
        Some(code),
        "WebSocket subscribe, {channel}"
    );
}

async fn assert_admitted(addr: SocketAddr, channel: &str, token: Option<&str>) {
    let a = answers(addr, channel, token).await;
    assert_eq!(a.sse, (200, None), "SSE, {channel}");
    assert_eq!(a.poll, (200, None), "poll, {channel}");
    assert_eq!(a.ws_url, (101, None), "one-way WebSocket, {channel}");
    assert_eq!(a.ws_message, None, "WebSocket subscribe, {channel}");
}

#[tokio::test]
async fn tokens_and_patterns_decide_every_transport() {
    let (_topic, herald) = secured("auth", &hmac_auth(), "").await;
    let addr = herald.local_addr();
    let team7 = token_for(&["team.7.*"], 300);

    // Public channels need nothing; others need a token.
    assert_admitted(addr, "public.x", None).await;
    assert_refused(addr, "team.7.x", None, 401, "invalid_token").await;
    // A pattern admits its suffixes and nothing else.
    assert_admitted(addr, "team.7.x", Some(&team7)).await;
    assert_refused(addr, "team.8.x", Some(&team7), 403, "forbidden_channel").await;

    // Forged signature: the right claims signed with another secret.
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": now() + 300, "channels": ["team.7.*"]}),
        &EncodingKey::from_secret(b"another secret of at least thirty-two bytes").unwrap(),
    )
    .unwrap();
    assert_refused(addr, "team.7.x", Some(&forged), 401, "invalid_token").await;
    // alg none, an RS256 token to an HS256 node, expired, not yet valid.
    let none = unsigned(json!({"exp": now() + 300, "channels": ["team.7.*"]}));
    assert_refused(addr, "team.7.x", Some(&none), 401, "invalid_token").await;
    let rsa = rs256(json!({"exp": now() + 300, "channels": ["team.7.*"]}));
    assert_refused(addr, "team.7.x", Some(&rsa), 401, "invalid_token").await;
    let expired = hs256(json!({"exp": now() - 5, "channels": ["team.7.*"]}));
    assert_refused(addr, "team.7.x", Some(&expired), 401, "token_expired").await;
    let early = hs256(json!({"exp": now() + 300, "nbf": now() + 120, "channels": ["team.7.*"]}));
    assert_refused(addr, "team.7.x", Some(&early), 401, "invalid_token").await;
    // A bad token is refused even for a public channel.
    assert_refused(addr, "public.x", Some(&forged), 401, "invalid_token").await;

    // The header works as well as token=, and wins.
    let response = reqwest::Client::new()
        .get(format!(
            "http://{addr}/poll?channel=team.7.x&token={forged}"
        ))
        .bearer_auth(&team7)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = reqwest::get(format!("http://{addr}/poll?channel=team.7.x"))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    herald.stop().await;
}

#[tokio::test]
async fn audience_issuer_and_key_type_are_checked() {
    let auth = format!(
        "public_key_file = \"{RSA_PUB}\"\naudience = \"herald\"\nissuer = \"https://idp.test\"\nleeway = \"0s\""
    );
    let (_topic, herald) = secured("authrs", &auth, "").await;
    let addr = herald.local_addr();
    let good = json!({"exp": now() + 300, "aud": "herald", "iss": "https://idp.test", "channels": ["team.1"]});
    assert_admitted(addr, "team.1", Some(&rs256(good.clone()))).await;
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = "other".into();
    assert_refused(
        addr,
        "team.1",
        Some(&rs256(wrong_aud)),
        401,
        "invalid_token",
    )
    .await;
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = "https://evil.test".into();
    assert_refused(
        addr,
        "team.1",
        Some(&rs256(wrong_iss)),
        401,
        "invalid_token",
    )
    .await;
    // HS256 signed with the RSA public key as the secret: the classic
    // algorithm confusion, refused because the key is an RS256 key.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(RSA_PUB_PEM).unwrap(),
    )
    .unwrap();
    assert_refused(addr, "team.1", Some(&confused), 401, "invalid_token").await;
    herald.stop().await;
}

/// Produces records `{"n": from..to}` with key `k` (channel `team.k`).
async fn produce(topic: &str, key: &str, from: u64, to: u64) {
    let producer = Producer::new();
    for n in from..to {
        producer.send_n(topic, key, n).await;
    }
}

#[tokio::test]
async fn streams_end_when_their_token_expires() {
    let (_topic, herald) = secured("authexp", &hmac_auth(), "").await;
    let addr = herald.local_addr();
    let exp = now() + 2;
    let token = hs256(json!({"exp": exp, "channels": ["team.a"]}));
    let expires_at = UNIX_EPOCH + Duration::from_secs(exp);
    let late = |what: &str| {
        let now = SystemTime::now();
        let after = now.duration_since(expires_at).unwrap_or_default();
        assert!(
            now + Duration::from_millis(50) >= expires_at && after < Duration::from_secs(1),
            "{what} ended {:?} from exp",
            now.duration_since(expires_at).map_err(|e| e.duration())
        );
    };

    let mut sse = Sse::connect(addr, &format!("channel=team.a&token={token}"), None).await;
    let mut ws = Ws::connect(addr, &format!("channel=team.a&token={token}")).await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let (messages, _) = poll_ok(addr, &format!("channel=team.a&wait=30&token={token}")).await;
        (messages, started.elapsed())
    });

    let ev = sse.next_raw().await.expect("a reconnect event");
    late("SSE");
    assert_eq!(ev.event.as_deref(), Some("reconnect"), "{ev:?}");
    assert_eq!(ev.json(), json!({"reason": "token_expired"}));
    assert!(sse.next_raw().await.is_none(), "the stream ends");

    let error = ws.next_json().await;
    late("WebSocket");
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "token_expired");
    let close = ws.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4001);

    let (messages, waited) = poll.await.unwrap();
    late("long poll");
    assert!(messages.is_empty());
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    herald.stop().await;
}

#[tokio::test]
async fn a_websocket_renews_its_token_in_place_and_misses_nothing() {
    let (topic, herald) = secured("authrenew", &hmac_auth(), "").await;
    let addr = herald.local_addr();
    let first = hs256(json!({"exp": now() + 2, "channels": ["team.b", "team.c"]}));
    let mut ws = Ws::connect(addr, &format!("token={first}")).await;
    ws.subscribe("team.b", None).await;
    ws.subscribe("team.c", None).await;
    produce(&topic, "b", 0, 20).await;
    let got = ws.messages(20).await;
    assert_eq!(ns_json(&got), (0..20).collect::<Vec<_>>());

    // A fresh token that still allows team.b but no longer team.c.
    let second_exp = now() + 60;
    let second = hs256(json!({"exp": second_exp, "channels": ["team.b"]}));
    ws.send_json(json!({"type": "auth", "token": second})).await;
    let ended = ws.next_json().await;
    assert_eq!(
        (&ended["type"], &ended["code"], &ended["channel"]),
        (
            &json!("error"),
            &json!("forbidden_channel"),
            &json!("team.c")
        ),
        "{ended}"
    );
    let reply = ws.next_json().await;
    assert_eq!(reply, json!({"type": "authenticated", "exp": second_exp}));
    // A token that is refused leaves the current one in force.
    ws.send_json(json!({"type": "auth", "token": "not.a.token"}))
        .await;
    let refused = ws.next_json().await;
    assert_eq!(refused["code"], "invalid_token", "{refused}");

    // Past the first token's expiry the connection goes on, exactly once.
    produce(&topic, "b", 20, 40).await;
    // Time itself has to pass here: the first token's expiry.
    let first_expired = UNIX_EPOCH + Duration::from_secs(second_exp - 57);
    tokio::time::sleep(
        first_expired
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    )
    .await;
    produce(&topic, "b", 40, 60).await;
    let got = ws.messages(40).await;
    assert_eq!(ns_json(&got), (20..60).collect::<Vec<_>>());
    assert!(got.iter().all(|m| m["channel"] == "team.b"));
    herald.stop().await;
}

/// A WebSocket upgrade with these extra headers: the status.
async fn ws_status(addr: SocketAddr, query: &str, origin: &str) -> u16 {
    let mut request = format!("ws://{addr}/ws?{query}")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut ws, _)) => {
            let _ = ws.close(None).await;
            while ws.next().await.is_some() {}
            101
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn only_listed_origins_may_use_herald_from_a_browser() {
    let http = "allowed_origins = [\"https://app.example\"]";
    let (_topic, herald) = secured("origin", &hmac_auth(), http).await;
    let addr = herald.local_addr();
    let client = reqwest::Client::new();
    for origin in ["https://app.example", "https://evil.example"] {
        let listed = origin == "https://app.example";
        let want = if listed { 200 } else { 403 };
        for path in ["sse", "poll"] {
            let mut response = client
                .get(format!("http://{addr}/{path}?channel=public.x"))
                .header("origin", origin)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), want, "{path} from {origin}");
            let allow = response.headers().get("access-control-allow-origin");
            assert_eq!(
                allow.map(|v| v.to_str().unwrap()),
                listed.then_some(origin),
                "{path} from {origin}"
            );
            if !listed {
                let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
                assert_eq!(body["error"]["code"], "origin_not_allowed");
            } else if path == "sse" {
                // The stream is open; drop it.
                let _ = response.chunk().await;
            }
        }
        let want = if listed { 101 } else { 403 };
        assert_eq!(
            ws_status(addr, "channel=public.x", origin).await,
            want,
            "ws from {origin}"
        );
    }
    // Herald's own page (Origin = the Host it was sent to) and clients
    // without Origin are admitted.
    let response = client
        .get(format!("http://{addr}/poll?channel=public.x"))
        .header("origin", format!("http://{addr}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The operators' endpoints never carry CORS headers.
    for path in ["metrics", "healthz", "readyz"] {
        let response = client
            .get(format!("http://{addr}/{path}"))
            .header("origin", "https://app.example")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{path} has CORS headers"
        );
    }
    herald.stop().await;
}

#[tokio::test]
async fn metrics_can_live_on_an_admin_listener_of_their_own() {
    let http = "admin_listen = \"127.0.0.1:0\"";
    let (_topic, herald) = secured("admin", &hmac_auth(), http).await;
    let addr = herald.local_addr();
    let admin = herald.admin_addr().expect("an admin listener");
    let get = |a: SocketAddr, path: &str| {
        let url = format!("http://{a}/{path}");
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    assert_eq!(get(admin, "metrics").await, 200);
    assert_eq!(get(admin, "healthz").await, 200);
    assert_eq!(get(admin, "readyz").await, 200);
    assert_eq!(get(admin, "sse?channel=public.x").await, 404);
    // Without [admin] the admin API is off: 404, saying what turns it on.
    let off = reqwest::get(format!("http://{admin}/admin/channels"))
        .await
        .unwrap();
    assert_eq!(off.status(), 404);
    let body: Value = serde_json::from_str(&off.text().await.unwrap()).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[admin]"),
        "{body}"
    );
    assert_eq!(get(addr, "metrics").await, 404);
    assert_eq!(get(addr, "healthz").await, 200);
    herald.stop().await;
}

#[tokio::test]
async fn without_auth_every_channel_is_public_and_tokens_are_ignored() {
    let (topic, herald) = herald_with_topic("noauth", 1, "team.{key}").await;
    let addr = herald.local_addr();
    let mut ws = Ws::connect(addr, "token=whatever").await;
    ws.subscribe("team.z", None).await;
    produce(&topic, "z", 0, 3).await;
    assert_eq!(ns_json(&ws.messages(3).await), vec![0, 1, 2]);
    herald.stop().await;
}

#[tokio::test]
async fn each_sub_channel_is_checked_against_the_token() {
    let (_topic, herald) = secured("auth-subs", &hmac_auth(), "").await;
    let addr = herald.local_addr();
    let team7 = token_for(&["team.7.*"], 300);
    let allowed = format!("sub=team.7.a&sub=public.x&sub=team.7.b&token={team7}");
    let sse = Sse::connect(addr, &allowed, None).await;
    assert_eq!(sse.status, 200);
    let (status, body) = poll(addr, &allowed).await;
    assert_eq!(status, 200, "{body}");
    // One channel the token does not allow refuses the request, naming it.
    let one_forbidden = format!("sub=team.7.a&sub=team.8.x&token={team7}");
    let body = Sse::connect(addr, &one_forbidden, None)
        .await
        .error_body()
        .await;
    assert_eq!(body["error"]["code"], "forbidden_channel", "{body}");
    assert_eq!(body["error"]["channel"], "team.8.x", "{body}");
    let (status, body) = poll(addr, &one_forbidden).await;
    assert_eq!(
        (status, &body["error"]["code"], &body["error"]["channel"]),
        (403, &json!("forbidden_channel"), &json!("team.8.x")),
        "{body}"
    );
    // Without a token only the public channels may be read.
    let (status, body) = poll(addr, "sub=public.x&sub=team.7.a").await;
    assert_eq!(
        (status, &body["error"]["code"], &body["error"]["channel"]),
        (401, &json!("invalid_token"), &json!("team.7.a")),
        "{body}"
    );
    let (status, _) = poll(addr, "sub=public.x&sub=public.y").await;
    assert_eq!(status, 200);
    herald.stop().await;
}
