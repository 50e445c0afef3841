//! Tests of [`Auth`] as its users see it: tokens made with jsonwebtoken and,
//! so that Herald is not checked only against the crate it verifies with,
//! with jwt-simple; keys from `testdata/` (see `testdata/generate.sh`); a
//! JWKS served by a small HTTP server in the test.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";
const RSA_KEY: &str = include_str!("testdata/rsa.key.pem");
const RSA_PUB: &str = include_str!("testdata/rsa.pub.pem");
const RSA2_KEY: &str = include_str!("testdata/rsa2.key.pem");
const EC_KEY: &str = include_str!("testdata/ec.key.pem");

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/auth/testdata")
        .join(name)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims valid for ten minutes allowing `channels`.
fn claims(channels: &[&str]) -> Value {
    json!({"sub": "user-42", "exp": now() + 600, "channels": channels})
}

fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, None, claims, SECRET.as_bytes())
}

/// A token signed by jsonwebtoken with `key` (a secret, or a private key PEM).
fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &[u8]) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(key),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(key),
        Algorithm::ES256 => EncodingKey::from_ec_pem(key),
        other => panic!("{other:?}"),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn hmac_config() -> AuthConfig {
    AuthConfig {
        hmac_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    }
}

fn pem_config(file: &str) -> AuthConfig {
    AuthConfig {
        public_key_file: Some(testdata(file)),
        ..AuthConfig::default()
    }
}

fn build(cfg: &AuthConfig) -> Auth {
    Auth::new(cfg).unwrap()
}

/// `header.payload.` with the given header: no signature.
fn unsigned(header: &Value, claims: &Value) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    format!("{}.{}.", part(header), part(claims))
}

#[tokio::test]
async fn hs256_rs256_es256_tokens_verify_into_grants() {
    let cases = [
        (hmac_config(), hs256(&claims(&["user.42"]))),
        (
            pem_config("rsa.pub.pem"),
            sign(
                Algorithm::RS256,
                None,
                &claims(&["user.42"]),
                RSA_KEY.as_bytes(),
            ),
        ),
        (
            pem_config("ec.pub.pem"),
            sign(
                Algorithm::ES256,
                Some("ignored"),
                &claims(&["user.42"]),
                EC_KEY.as_bytes(),
            ),
        ),
    ];
    for (cfg, token) in cases {
        let grant = build(&cfg).verify(&token).await.unwrap();
        assert_eq!(grant.subject(), Some("user-42"));
        assert!(grant.allows("user.42"));
        assert!(!grant.allows("user.43"));
        // exp + the default 30 s leeway.
        let exp = UNIX_EPOCH + Duration::from_secs(now() + 600 + 30);
        let at = grant.expires_at().unwrap();
        assert!(at <= exp && at + Duration::from_secs(5) >= exp, "{at:?}");
    }
}

#[tokio::test]
async fn tokens_from_an_independent_library_verify() {
    use jwt_simple::prelude::*;

    #[derive(Serialize, Deserialize)]
    struct Channels {
        channels: Vec<String>,
    }
    let minted = || {
        Claims::with_custom_claims(
            Channels {
                channels: vec!["team.7.*".into()],
            },
            jwt_simple::prelude::Duration::from_mins(5),
        )
        .with_subject("alice")
        .with_issuer("https://idp.test")
        .with_audience("herald")
    };
    let hs = HS256Key::from_bytes(SECRET.as_bytes())
        .authenticate(minted())
        .unwrap();
    let rs = RS256KeyPair::from_pem(RSA_KEY)
        .unwrap()
        .sign(minted())
        .unwrap();
    let es = ES256KeyPair::from_pem(EC_KEY)
        .unwrap()
        .sign(minted())
        .unwrap();
    let checked = |cfg: AuthConfig| AuthConfig {
        issuer: Some("https://idp.test".into()),
        audience: Some("herald".into()),
        ..cfg
    };
    for (cfg, token) in [
        (checked(hmac_config()), hs),
        (checked(pem_config("rsa.pub.pem")), rs),
        (checked(pem_config("ec.pub.pem")), es),
    ] {
        let grant = build(&cfg).verify(&token).await.unwrap();
        assert_eq!(grant.subject(), Some("alice"));
        assert!(grant.allows("team.7.x"));
        assert!(!grant.allows("team.8.x"));
    }
}

#[tokio::test]
async fn forged_signatures_are_refused() {
    let token = hs256(&claims(&["user.42"]));
    let other_secret = sign(
        Algorithm::HS256,
        None,
        &claims(&["user.42"]),
        b"another-secret-of-at-least-32-bytes!!",
    );
    let (head, rest) = token.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let widened = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(&["*"])).unwrap());
    let tampered = format!("{head}.{widened}.{signature}");
    let hmac = build(&hmac_config());
    for forged in [&other_secret, &tampered] {
        assert_eq!(
            hmac.verify(forged).await.unwrap_err(),
            TokenError::BadSignature
        );
    }
    // RS256 and ES256 signed by a key other than the configured one.
    let rsa = build(&pem_config("rsa.pub.pem"));
    let by_rsa2 = sign(Algorithm::RS256, None, &claims(&["a"]), RSA2_KEY.as_bytes());
    assert_eq!(
        rsa.verify(&by_rsa2).await.unwrap_err(),
        TokenError::BadSignature
    );
    let ec = build(&pem_config("ec.pub.pem"));
    let es = sign(Algorithm::ES256, None, &claims(&["a"]), EC_KEY.as_bytes());
    let (es_head, es_rest) = es.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(es_rest).unwrap();
    sig[10] ^= 1;
    let es_forged = format!("{es_head}.{}", URL_SAFE_NO_PAD.encode(sig));
    assert_eq!(
        ec.verify(&es_forged).await.unwrap_err(),
        TokenError::BadSignature
    );
}

#[tokio::test]
async fn alg_none_is_refused_whatever_the_key() {
    let token = unsigned(&json!({"alg": "none", "typ": "JWT"}), &claims(&["*"]));
    for (cfg, expected) in [
        (hmac_config(), "HS256"),
        (pem_config("rsa.pub.pem"), "RS256"),
        (pem_config("ec.pub.pem"), "ES256"),
    ] {
        let err = build(&cfg).verify(&token).await.unwrap_err();
        assert_eq!(
            err,
            TokenError::WrongAlgorithm {
                found: "none".into(),
                expected
            }
        );
        assert_eq!(err.code(), "invalid_token");
    }
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    // The classic confusion: a verifier that lets the token pick the
    // algorithm would check this HMAC with the PEM text as its secret.
    let token = sign(Algorithm::HS256, None, &claims(&["*"]), RSA_PUB.as_bytes());
    let err = build(&pem_config("rsa.pub.pem"))
        .verify(&token)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        TokenError::WrongAlgorithm {
            found: "HS256".into(),
            expected: "RS256"
        }
    );
    // Likewise an RS256 token at an ES256 key, and the other way round.
    let rs = sign(Algorithm::RS256, None, &claims(&["*"]), RSA_KEY.as_bytes());
    assert!(matches!(
        build(&pem_config("ec.pub.pem")).verify(&rs).await,
        Err(TokenError::WrongAlgorithm { .. })
    ));
    let es = sign(Algorithm::ES256, None, &claims(&["*"]), EC_KEY.as_bytes());
    assert!(matches!(
        build(&pem_config("rsa.pub.pem")).verify(&es).await,
        Err(TokenError::WrongAlgorithm { .. })
    ));
}

#[tokio::test]
async fn expiry_and_not_before_with_leeway() {
    let cfg = AuthConfig {
        leeway: Duration::from_secs(30),
        ..hmac_config()
    };
    let hmac = build(&cfg);
    let expired = hs256(&json!({"exp": now() - 100, "channels": ["a"]}));
    let err = hmac.verify(&expired).await.unwrap_err();
    assert_eq!(err, TokenError::Expired);
    assert_eq!(err.code(), "token_expired");
    // Expired 10 s ago, within the leeway: accepted, and expires in ~20 s.
    let grant = hmac
        .verify(&hs256(&json!({"exp": now() - 10, "channels": ["a"]})))
        .await
        .unwrap();
    let left = grant.time_left(SystemTime::now()).unwrap();
    assert!(
        left <= Duration::from_secs(20) && left >= Duration::from_secs(18),
        "{left:?}"
    );
    let early = hs256(&json!({"exp": now() + 600, "nbf": now() + 100, "channels": ["a"]}));
    assert_eq!(
        hmac.verify(&early).await.unwrap_err(),
        TokenError::NotYetValid
    );
    let soon = hs256(&json!({"exp": now() + 600, "nbf": now() + 10, "channels": ["a"]}));
    assert!(hmac.verify(&soon).await.is_ok());
}

#[tokio::test]
async fn exp_is_required_unless_configured_otherwise() {
    let token = hs256(&json!({"channels": ["a"]}));
    assert_eq!(
        build(&hmac_config()).verify(&token).await.unwrap_err(),
        TokenError::MissingClaim("exp")
    );
    let lax = AuthConfig {
        require_exp: false,
        ..hmac_config()
    };
    let grant = build(&lax).verify(&token).await.unwrap();
    assert_eq!(grant.expires_at(), None);
    assert_eq!(grant.time_left(SystemTime::now()), None);
    // A token that has exp is still held to it.
    let expired = hs256(&json!({"exp": now() - 100}));
    assert_eq!(
        build(&lax).verify(&expired).await.unwrap_err(),
        TokenError::Expired
    );
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let cfg = AuthConfig {
        issuer: Some("https://idp.test".into()),
        audience: Some("herald".into()),
        ..hmac_config()
    };
    let checked = build(&cfg);
    let with = |iss: Value, aud: Value| {
        hs256(&json!({"exp": now() + 60, "iss": iss, "aud": aud, "channels": ["a"]}))
    };
    let ok = json!("https://idp.test");
    assert!(
        checked
            .verify(&with(ok.clone(), json!("herald")))
            .await
            .is_ok()
    );
    assert!(
        checked
            .verify(&with(ok.clone(), json!(["other", "herald"])))
            .await
            .is_ok()
    );
    assert_eq!(
        checked
            .verify(&with(ok.clone(), json!("other")))
            .await
            .unwrap_err(),
        TokenError::WrongAudience
    );
    assert_eq!(
        checked
            .verify(&with(ok.clone(), json!(["x", "y"])))
            .await
            .unwrap_err(),
        TokenError::WrongAudience
    );
    assert_eq!(
        checked
            .verify(&with(json!("https://evil.test"), json!("herald")))
            .await
            .unwrap_err(),
        TokenError::WrongIssuer
    );
    let no_aud = hs256(&json!({"exp": now() + 60, "iss": "https://idp.test"}));
    assert_eq!(
        checked.verify(&no_aud).await.unwrap_err(),
        TokenError::MissingClaim("aud")
    );
    let no_iss = hs256(&json!({"exp": now() + 60, "aud": "herald"}));
    assert_eq!(
        checked.verify(&no_iss).await.unwrap_err(),
        TokenError::MissingClaim("iss")
    );
    // Not configured: not looked at.
    let unchecked = build(&hmac_config());
    assert!(
        unchecked
            .verify(&with(json!("anyone"), json!("anything")))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_token_too_long_is_refused_before_decoding() {
    let cfg = AuthConfig {
        max_token_bytes: 100,
        ..hmac_config()
    };
    let limited = build(&cfg);
    // Not even a JWT: the length alone decides.
    let long = "x".repeat(101);
    assert_eq!(
        limited.verify(&long).await.unwrap_err(),
        TokenError::TooLong { len: 101, max: 100 }
    );
    assert!(matches!(
        limited.verify(&"x".repeat(100)).await,
        Err(TokenError::Malformed(_))
    ));
    let real = hs256(&claims(&["a"]));
    assert!(real.len() > 100);
    assert!(matches!(
        limited.verify(&real).await,
        Err(TokenError::TooLong { .. })
    ));
}

#[tokio::test]
async fn malformed_tokens() {
    let hmac = build(&hmac_config());
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#);
    for bad in [
        String::new(),
        "abc".into(),
        "a.b.c".into(),
        format!("{header}.!!!.sig"),
        format!("{header}.e30"),
        format!("{header}.{}.", URL_SAFE_NO_PAD.encode("not json")),
    ] {
        let err = hmac.verify(&bad).await.unwrap_err();
        assert!(
            matches!(err, TokenError::Malformed(_) | TokenError::BadSignature),
            "{bad}: {err:?}"
        );
        assert_eq!(err.code(), "invalid_token");
    }
    // Claims of the wrong type, properly signed.
    for claims in [
        json!({"exp": now() + 60, "channels": "user.42"}),
        json!({"exp": now() + 60, "channels": [1, 2]}),
        json!({"exp": "tomorrow"}),
        json!({"exp": now() + 60, "sub": 42}),
    ] {
        let err = hmac.verify(&hs256(&claims)).await.unwrap_err();
        assert!(matches!(err, TokenError::Malformed(_)), "{claims}: {err:?}");
    }
}

#[tokio::test]
async fn error_messages_never_contain_the_token_or_the_secret() {
    let hmac = build(&hmac_config());
    let expired = hs256(&json!({"exp": now() - 100}));
    let signature = expired.rsplit_once('.').unwrap().1.to_owned();
    let forged = format!("{}x", &expired[..expired.len() - 1]);
    let long_alg = unsigned(&json!({"alg": "A".repeat(500)}), &json!({}));
    for token in [expired, forged, long_alg, "garbage".into()] {
        let message = hmac.verify(&token).await.unwrap_err().to_string();
        assert!(!message.contains(&token), "{message}");
        assert!(!message.contains(&signature), "{message}");
        assert!(!message.contains(SECRET), "{message}");
        assert!(message.len() < 200, "{message}");
    }
    let cfg = AuthConfig {
        hmac_secret: Some("short-secret".into()),
        ..AuthConfig::default()
    };
    let err = Auth::new(&cfg).err().unwrap();
    assert_eq!(err.key, "auth.hmac_secret");
    assert!(!err.to_string().contains("short-secret"), "{err}");
}

#[tokio::test]
async fn channels_claim_public_channels_and_authorize() {
    let cfg = AuthConfig {
        public_channels: vec!["news".into(), "public.*".into()],
        ..hmac_config()
    };
    let auth = build(&cfg);
    assert!(auth.is_enabled());
    assert!(auth.is_public("news"));
    assert!(auth.is_public("public.x"));
    assert!(!auth.is_public("newsletter"));
    assert!(!auth.is_public("user.42"));

    let grant = auth
        .verify(&hs256(&claims(&["user.42", "team.7.*", "bad.*.star"])))
        .await
        .unwrap();
    assert_eq!(auth.authorize(Some(&grant), "user.42"), Ok(()));
    assert_eq!(auth.authorize(Some(&grant), "team.7.x"), Ok(()));
    assert_eq!(auth.authorize(Some(&grant), "news"), Ok(()));
    let forbidden = auth.authorize(Some(&grant), "team.8.x").unwrap_err();
    assert_eq!(
        forbidden,
        Denied::Forbidden {
            channel: "team.8.x".into()
        }
    );
    assert_eq!(forbidden.code(), "forbidden_channel");
    assert!(forbidden.to_string().contains("team.8.x"));
    assert!(auth.authorize(Some(&grant), "bad.x.star").is_err());

    // No token: public channels only.
    assert_eq!(auth.authorize(None, "public.y"), Ok(()));
    let required = auth.authorize(None, "user.42").unwrap_err();
    assert_eq!(required.code(), "invalid_token");
    assert_eq!(required.channel(), "user.42");

    // A token without `channels` is valid and reads public channels only.
    let bare = auth
        .verify(&hs256(&json!({"exp": now() + 60})))
        .await
        .unwrap();
    assert!(bare.channels().is_empty());
    assert_eq!(auth.authorize(Some(&bare), "news"), Ok(()));
    assert_eq!(
        auth.authorize(Some(&bare), "user.42").unwrap_err().code(),
        "forbidden_channel"
    );
}

#[tokio::test]
async fn an_expired_grant_is_refused_by_authorize() {
    let cfg = AuthConfig {
        leeway: Duration::ZERO,
        ..hmac_config()
    };
    let auth = build(&cfg);
    let grant = auth
        .verify(&hs256(&json!({"exp": now() + 1, "channels": ["a"]})))
        .await
        .unwrap();
    assert_eq!(auth.authorize(Some(&grant), "a"), Ok(()));
    assert!(grant.is_expired(SystemTime::now() + Duration::from_secs(2)));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let denied = auth.authorize(Some(&grant), "a").unwrap_err();
    assert_eq!(denied.code(), "token_expired");
}

#[tokio::test]
async fn without_auth_every_channel_is_public() {
    let open = Auth::open();
    assert!(!open.is_enabled());
    assert!(open.is_public("user.42"));
    assert_eq!(open.authorize(None, "anything"), Ok(()));
    let grant = open.verify("not even a token").await.unwrap();
    assert!(grant.allows("user.42"));
    assert_eq!(grant.expires_at(), None);
    assert!(open.to_string().contains("every channel is public"));
    open.start(CancellationToken::new()); // nothing to start
}

#[test]
fn config_errors_name_the_key_and_the_path() {
    let missing = testdata("no-such.pem");
    let err = Auth::new(&AuthConfig {
        public_key_file: Some(missing.clone()),
        ..AuthConfig::default()
    })
    .err()
    .unwrap();
    assert_eq!(err.key, "auth.public_key_file");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    for (file, why) in [
        ("rsa.key.pem", "private key"),
        ("p384.pub.pem", "P-384"),
        ("rsa1024.pub.pem", "1024 bits"),
        ("generate.sh", "not a PEM"),
    ] {
        let err = Auth::check_config(&pem_config(file)).unwrap_err();
        assert_eq!(err.key, "auth.public_key_file");
        let text = err.to_string();
        assert!(text.contains(file) && text.contains(why), "{text}");
    }

    let err = Auth::check_config(&AuthConfig {
        hmac_secret_file: Some(testdata("no-such-secret")),
        ..AuthConfig::default()
    })
    .unwrap_err();
    assert_eq!(err.key, "auth.hmac_secret_file");

    for url in ["not a url", "ftp://idp/jwks", "file:///etc/passwd"] {
        let err = Auth::check_config(&AuthConfig {
            jwks_url: Some(url.into()),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "auth.jwks_url", "{url}");
        assert!(err.to_string().contains(url), "{err}");
    }
    assert!(
        Auth::check_config(&AuthConfig {
            jwks_url: Some("https://idp.example/jwks.json".into()),
            ..AuthConfig::default()
        })
        .is_ok()
    );
}

#[test]
fn summary_line() {
    let line = build(&AuthConfig {
        public_channels: vec!["news".into()],
        ..pem_config("ec.pub.pem")
    })
    .to_string();
    assert!(
        line.contains("ES256") && line.contains("auth.public_key_file"),
        "{line}"
    );
}

// ---- JWKS ----------------------------------------------------------------

/// A JWKS server for tests: answers every GET with the current body and
/// counts the requests. Dropping it (or `stop`) closes the port.
struct Idp {
    url: String,
    requests: Arc<AtomicUsize>,
    body: Arc<parking_lot::Mutex<(u16, String)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    async fn serve(jwks: Value) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(parking_lot::Mutex::new((200, jwks.to_string())));
        let task = tokio::spawn({
            let (requests, body) = (requests.clone(), body.clone());
            async move {
                loop {
                    let Ok((mut socket, _)) = listener.accept().await else {
                        return;
                    };
                    let (requests, body) = (requests.clone(), body.clone());
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match socket.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        requests.fetch_add(1, Ordering::SeqCst);
                        let (status, text) = body.lock().clone();
                        let response = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                            text.len()
                        );
                        let _ = socket.write_all(response.as_bytes()).await;
                    });
                }
            }
        });
        Idp {
            url,
            requests,
            body,
            task,
        }
    }

    fn set(&self, jwks: Value) {
        *self.body.lock() = (200, jwks.to_string());
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The public JWK of a private key PEM, as an IdP would publish it (made by
/// jsonwebtoken, not by the code under test).
fn jwk(alg: Algorithm, private_pem: &str, kid: Option<&str>) -> Value {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
        Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem.as_bytes()),
        other => panic!("{other:?}"),
    }
    .unwrap();
    let mut jwk =
        serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).unwrap())
            .unwrap();
    if let Some(kid) = kid {
        jwk["kid"] = json!(kid);
    }
    jwk["use"] = json!("sig");
    jwk
}

fn jwks_config(idp: &Idp) -> AuthConfig {
    AuthConfig {
        jwks_url: Some(idp.url.clone()),
        jwks_timeout: Duration::from_secs(2),
        jwks_min_refetch_interval: Duration::from_secs(1),
        jwks_refresh_interval: Duration::from_secs(300),
        ..AuthConfig::default()
    }
}

/// Waits until the IdP has had `n` requests (the background fetch).
async fn until_requests(idp: &Idp, n: usize) {
    for _ in 0..500 {
        if idp.requests() >= n {
            // The fetch stores the keys just after the response.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the IdP had {} requests, not {n}", idp.requests());
}

#[tokio::test]
async fn jwks_rotated_key_is_picked_up_after_an_unknown_kid() {
    let idp = Idp::serve(json!({"keys": [jwk(Algorithm::RS256, RSA_KEY, Some("k1"))]})).await;
    let auth = build(&jwks_config(&idp));
    let shutdown = CancellationToken::new();
    auth.start(shutdown.clone());
    until_requests(&idp, 1).await;
    let k1 = sign(
        Algorithm::RS256,
        Some("k1"),
        &claims(&["a"]),
        RSA_KEY.as_bytes(),
    );
    assert!(auth.verify(&k1).await.unwrap().allows("a"));

    // The IdP rotates: k2 (EC) is added. Within the refetch interval of the
    // start-up fetch, an unknown kid is refused without a fetch...
    idp.set(json!({"keys": [
        jwk(Algorithm::RS256, RSA_KEY, Some("k1")),
        jwk(Algorithm::ES256, EC_KEY, Some("k2")),
    ]}));
    let k2 = sign(
        Algorithm::ES256,
        Some("k2"),
        &claims(&["b"]),
        EC_KEY.as_bytes(),
    );
    assert_eq!(
        auth.verify(&k2).await.unwrap_err(),
        TokenError::UnknownKey(Some("k2".into()))
    );
    assert_eq!(idp.requests(), 1);
    // ...and after it, the unknown kid fetches the set once and verifies.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(auth.verify(&k2).await.unwrap().allows("b"));
    assert!(auth.verify(&k2).await.is_ok());
    assert_eq!(idp.requests(), 2);

    // k1 withdrawn: after the next fetch its tokens are refused.
    idp.set(json!({"keys": [jwk(Algorithm::ES256, EC_KEY, Some("k2"))]}));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown = sign(
        Algorithm::ES256,
        Some("k3"),
        &claims(&["b"]),
        EC_KEY.as_bytes(),
    );
    assert!(auth.verify(&unknown).await.is_err()); // fetches
    assert_eq!(idp.requests(), 3);
    assert_eq!(
        auth.verify(&k1).await.unwrap_err(),
        TokenError::UnknownKey(Some("k1".into()))
    );
    shutdown.cancel();
}

#[tokio::test]
async fn jwks_a_burst_of_unknown_kids_fetches_once_per_interval() {
    let idp = Idp::serve(json!({"keys": [jwk(Algorithm::RS256, RSA_KEY, Some("k1"))]})).await;
    let cfg = AuthConfig {
        jwks_min_refetch_interval: Duration::from_secs(60),
        ..jwks_config(&idp)
    };
    let auth = build(&cfg);
    // Not started: the first verifications find no keys and share one fetch.
    let valid = sign(
        Algorithm::RS256,
        Some("k1"),
        &claims(&["a"]),
        RSA_KEY.as_bytes(),
    );
    let burst: Vec<_> = (0..50)
        .map(|i| {
            let (auth, valid) = (auth.clone(), valid.clone());
            tokio::spawn(async move {
                let bogus = sign(
                    Algorithm::RS256,
                    Some(&format!("bogus-{i}")),
                    &claims(&["a"]),
                    RSA_KEY.as_bytes(),
                );
                (auth.verify(&valid).await, auth.verify(&bogus).await)
            })
        })
        .collect();
    for task in burst {
        let (valid, bogus) = task.await.unwrap();
        assert!(valid.is_ok(), "{valid:?}");
        assert!(
            matches!(bogus, Err(TokenError::UnknownKey(Some(_)))),
            "{bogus:?}"
        );
    }
    assert_eq!(idp.requests(), 1);
    // More unknown kids, still within the interval: no fetch.
    for i in 0..50 {
        let bogus = sign(
            Algorithm::RS256,
            Some(&format!("more-{i}")),
            &claims(&["a"]),
            RSA_KEY.as_bytes(),
        );
        assert!(auth.verify(&bogus).await.is_err());
    }
    assert_eq!(idp.requests(), 1);
}

#[tokio::test]
async fn jwks_keys_are_kept_while_the_idp_is_down() {
    let idp = Idp::serve(json!({"keys": [jwk(Algorithm::ES256, EC_KEY, Some("k1"))]})).await;
    let auth = build(&jwks_config(&idp));
    let shutdown = CancellationToken::new();
    auth.start(shutdown.clone());
    until_requests(&idp, 1).await;
    let k1 = sign(
        Algorithm::ES256,
        Some("k1"),
        &claims(&["a"]),
        EC_KEY.as_bytes(),
    );
    assert!(auth.verify(&k1).await.is_ok());

    idp.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // An unknown kid tries a fetch, which fails: refused as unknown (the
    // server has keys), and the cached key still works.
    let k9 = sign(
        Algorithm::ES256,
        Some("k9"),
        &claims(&["a"]),
        EC_KEY.as_bytes(),
    );
    assert_eq!(
        auth.verify(&k9).await.unwrap_err(),
        TokenError::UnknownKey(Some("k9".into()))
    );
    assert!(auth.verify(&k1).await.is_ok());
    shutdown.cancel();
}

#[tokio::test]
async fn jwks_never_fetched_is_auth_unavailable() {
    let idp = Idp::serve(json!({})).await;
    let url = idp.url.clone();
    drop(idp);
    let auth = build(&AuthConfig {
        jwks_url: Some(url),
        ..AuthConfig::default()
    });
    let token = sign(
        Algorithm::RS256,
        Some("k1"),
        &claims(&["a"]),
        RSA_KEY.as_bytes(),
    );
    let err = auth.verify(&token).await.unwrap_err();
    assert!(matches!(err, TokenError::KeysUnavailable(_)), "{err:?}");
    assert_eq!(err.code(), "auth_unavailable");
}

#[tokio::test]
async fn jwks_bad_answers_are_failed_fetches_that_keep_the_keys() {
    let idp = Idp::serve(json!({"keys": [jwk(Algorithm::RS256, RSA_KEY, Some("k1"))]})).await;
    let auth = build(&jwks_config(&idp));
    let k1 = sign(
        Algorithm::RS256,
        Some("k1"),
        &claims(&["a"]),
        RSA_KEY.as_bytes(),
    );
    assert!(auth.verify(&k1).await.is_ok());
    let unknown = sign(
        Algorithm::RS256,
        Some("kx"),
        &claims(&["a"]),
        RSA_KEY.as_bytes(),
    );
    for (status, body) in [
        (500, r#"{"keys": []}"#.to_owned()),
        (200, "<html>login</html>".to_owned()),
        (
            200,
            json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string(),
        ),
    ] {
        *idp.body.lock() = (status, body);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let before = idp.requests();
        assert!(matches!(
            auth.verify(&unknown).await,
            Err(TokenError::UnknownKey(_))
        ));
        assert_eq!(idp.requests(), before + 1);
        assert!(auth.verify(&k1).await.is_ok(), "{status}");
    }
}

#[tokio::test]
async fn jwks_kid_rules_and_key_algorithms() {
    // One key without kid: a token without kid uses it.
    let idp = Idp::serve(json!({"keys": [jwk(Algorithm::RS256, RSA_KEY, None)]})).await;
    let auth = build(&jwks_config(&idp));
    let no_kid = sign(Algorithm::RS256, None, &claims(&["a"]), RSA_KEY.as_bytes());
    assert!(auth.verify(&no_kid).await.is_ok());

    // Two keys: a token without kid cannot choose.
    let idp = Idp::serve(json!({"keys": [
        jwk(Algorithm::RS256, RSA_KEY, Some("r")),
        jwk(Algorithm::ES256, EC_KEY, Some("e")),
        {"kty": "oct", "kid": "hmac", "k": URL_SAFE_NO_PAD.encode(SECRET)},
    ]}))
    .await;
    let auth = build(&jwks_config(&idp));
    let with_kid = sign(
        Algorithm::RS256,
        Some("r"),
        &claims(&["a"]),
        RSA_KEY.as_bytes(),
    );
    assert!(auth.verify(&with_kid).await.is_ok());
    assert_eq!(
        auth.verify(&no_kid).await.unwrap_err(),
        TokenError::UnknownKey(None)
    );
    // The key's algorithm decides: an RS256 token naming the EC key, or an
    // HS256 one naming the RSA key, is the wrong algorithm.
    let rs_at_ec = sign(
        Algorithm::RS256,
        Some("e"),
        &claims(&["a"]),
        RSA_KEY.as_bytes(),
    );
    assert!(matches!(
        auth.verify(&rs_at_ec).await,
        Err(TokenError::WrongAlgorithm { .. })
    ));
    let hs_at_rsa = sign(
        Algorithm::HS256,
        Some("r"),
        &claims(&["a"]),
        RSA_PUB.as_bytes(),
    );
    assert!(matches!(
        auth.verify(&hs_at_rsa).await,
        Err(TokenError::WrongAlgorithm { .. })
    ));
    // A symmetric key in the JWKS is never used.
    let hs = sign(
        Algorithm::HS256,
        Some("hmac"),
        &claims(&["a"]),
        SECRET.as_bytes(),
    );
    assert!(matches!(
        auth.verify(&hs).await,
        Err(TokenError::UnknownKey(_))
    ));
    assert_eq!(idp.requests(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn jwks_a_failure_streak_is_logged_once() {
    use std::io::Write;

    #[derive(Clone, Default)]
    struct Captured(Arc<parking_lot::Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let captured = captured.clone();
            move || captured.clone()
        })
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // A current-thread runtime: the refresh task runs on this thread, under
    // this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let idp = Idp::serve(json!({"keys": [jwk(Algorithm::RS256, RSA_KEY, Some("k1"))]})).await;
    let cfg = AuthConfig {
        jwks_refresh_interval: Duration::from_secs(1),
        ..jwks_config(&idp)
    };
    let auth = build(&cfg);
    let shutdown = CancellationToken::new();
    auth.start(shutdown.clone());
    until_requests(&idp, 1).await;
    *idp.body.lock() = (503, String::new());
    until_requests(&idp, 4).await; // three failures in a row
    idp.set(json!({"keys": [jwk(Algorithm::RS256, RSA_KEY, Some("k1"))]}));
    until_requests(&idp, 5).await;
    shutdown.cancel();

    let log = String::from_utf8(captured.0.lock().clone()).unwrap();
    assert_eq!(log.matches("JWKS fetch failed").count(), 1, "{log}");
    assert_eq!(log.matches("JWKS keys loaded").count(), 1, "{log}");
    assert_eq!(
        log.matches("JWKS fetched again after failures").count(),
        1,
        "{log}"
    );
    assert!(log.contains("HTTP status 503"), "{log}");
    assert!(log.contains("k1:RS256"), "{log}");
}

// ---- cost ----------------------------------------------------------------

/// The time to verify one token. Run in a release build:
/// `cargo test --release --lib -- --ignored verify_cost --nocapture`.
#[tokio::test(flavor = "current_thread")]
#[ignore]
async fn verify_cost() {
    const ROUNDS: u32 = 10_000;
    let usual = claims(&["user.42", "team.7.*"]);
    for (name, cfg, token) in [
        ("HS256", hmac_config(), hs256(&usual)),
        (
            "ES256",
            pem_config("ec.pub.pem"),
            sign(Algorithm::ES256, None, &usual, EC_KEY.as_bytes()),
        ),
        (
            "RS256",
            pem_config("rsa.pub.pem"),
            sign(Algorithm::RS256, None, &usual, RSA_KEY.as_bytes()),
        ),
    ] {
        let auth = build(&cfg);
        auth.verify(&token).await.unwrap();
        let start = std::time::Instant::now();
        for _ in 0..ROUNDS {
            std::hint::black_box(auth.verify(std::hint::black_box(&token)).await.unwrap());
        }
        let each = start.elapsed() / ROUNDS;
        println!(
            "verify_cost {name}: {each:?} per token ({} bytes)",
            token.len()
        );
    }

    // And a subscription check against a token with 2,000 patterns (1,000
    // exact names, 1,000 prefixes of 10 lengths), the channel not among them.
    let mut patterns: Vec<String> = (0..1_000).map(|i| format!("user.{i}")).collect();
    patterns.extend((0..1_000).map(|i| format!("team.{}{i}.*", "7".repeat(i % 10))));
    let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let cfg = AuthConfig {
        max_token_bytes: 64 * 1024,
        ..hmac_config()
    };
    let auth = build(&cfg);
    let grant = auth.verify(&hs256(&claims(&patterns))).await.unwrap();
    let start = std::time::Instant::now();
    for _ in 0..ROUNDS {
        let denied = auth.authorize(Some(&grant), std::hint::black_box("team.77777.x.nope"));
        assert!(denied.is_err());
    }
    println!(
        "verify_cost authorize, 2,000 patterns: {:?} per check",
        start.elapsed() / ROUNDS
    );
}
