//! `herald-bench push-service`: the local push service of the `push`
//! scenario, in a process of its own so that its CPU is read apart from
//! Herald's. Prints `{"listen":"127.0.0.1:PORT"}` once it listens and exits
//! when its stdin closes (the suite holds it), so it never outlives a run.
//!
//! `POST /push/<id>/…` is a push: answered `201` at once when it has what
//! Herald must send — `Content-Encoding: aes128gcm`, an `Authorization`
//! that starts `vapid t=`, a numeric `TTL`, a `Topic`, and a body shaped as
//! one aes128gcm record (a 65-byte key id in its header, at most 4,096
//! bytes) — else `400`, counted by reason. It does not decrypt: that costs
//! what encrypting costs Herald, and the tests' push service
//! (tests/push/push_service.py, Python's `http_ece`) is the peer that
//! checks the ciphertext and the VAPID signature.
//!
//! Each accepted push is kept as (subscription id, `Topic` header, arrival
//! time). Herald derives `Topic` from the record's topic, partition and
//! offset, so the suite matches pushes to records (latency, each record
//! once per subscription) without reading the plaintext. Control, for the
//! suite only: `GET /stats`, `GET /arrivals`, `POST /reset`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use parking_lot::Mutex;
use serde_json::json;

use crate::client::unix_us;

#[derive(clap::Args)]
pub struct PushServiceArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
}

/// RFC 8291 §4: salt (16), record size (4), key id length (1) and the
/// sender's 65-byte public key, then at least a padding delimiter and the
/// 16-byte tag; RFC 8030 §7.2 bounds the whole at 4,096 bytes.
const HEADER_BYTES: usize = 86;
const MIN_BODY: usize = HEADER_BYTES + 1 + 16;
const MAX_BODY: usize = 4096;

/// What the service accepted and refused since the last reset.
#[derive(Default)]
struct Tally {
    accepted: u64,
    refused: BTreeMap<&'static str, u64>,
    /// Each distinct `Topic` header, by its index in `topic_names`.
    topics: HashMap<Box<str>, u32>,
    topic_names: Vec<Box<str>>,
    /// (subscription id, topic index, arrival unix µs) per accepted push.
    arrivals: Vec<(u32, u32, u64)>,
}

type Shared = Arc<Mutex<Tally>>;

pub fn run(args: PushServiceArgs) {
    // One thread: a POST costs a few µs here, so one core's share is far
    // more than Herald can send, and the service takes no second core from
    // the Herald it measures.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .expect("bind");
        println!(
            "{}",
            json!({"listen": listener.local_addr().expect("addr").to_string()})
        );
        let tally: Shared = Arc::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let tally = tally.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, tally.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn answer(
    req: Request<Incoming>,
    tally: Shared,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let at_us = unix_us();
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if let Some(rest) = path.strip_prefix("/push/")
        && method == hyper::Method::POST
    {
        let id = rest.split('/').next().and_then(|s| s.parse::<u32>().ok());
        let head = check_head(&req);
        let topic = req
            .headers()
            .get("topic")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = req.into_body().collect().await?.to_bytes();
        let verdict = match (id, head, topic) {
            (None, _, _) => Err("path is not /push/<number>/…"),
            (_, Err(why), _) => Err(why),
            (_, _, None) => Err("no Topic"),
            _ if !(MIN_BODY..=MAX_BODY).contains(&body.len()) => Err("body size"),
            _ if body[20] != 65 => Err("aes128gcm key id is not 65 bytes"),
            (Some(id), Ok(()), Some(topic)) => Ok((id, topic)),
        };
        let mut t = tally.lock();
        return Ok(match verdict {
            Ok((id, topic)) => {
                t.accepted += 1;
                let next = t.topic_names.len() as u32;
                let index = *t.topics.entry(topic.clone().into()).or_insert(next);
                if index == next {
                    t.topic_names.push(topic.into());
                }
                t.arrivals.push((id, index, at_us));
                reply(StatusCode::CREATED, Bytes::new())
            }
            Err(why) => {
                *t.refused.entry(why).or_default() += 1;
                reply(StatusCode::BAD_REQUEST, Bytes::from_static(why.as_bytes()))
            }
        });
    }
    Ok(match (method, path.as_str()) {
        (hyper::Method::GET, "/stats") => {
            let t = tally.lock();
            let body = json!({"accepted": t.accepted, "refused": t.refused}).to_string();
            reply(StatusCode::OK, body.into())
        }
        (hyper::Method::GET, "/arrivals") => {
            let t = tally.lock();
            let body = json!({"topics": t.topic_names, "arrivals": t.arrivals}).to_string();
            reply(StatusCode::OK, body.into())
        }
        (hyper::Method::POST, "/reset") => {
            *tally.lock() = Tally::default();
            reply(StatusCode::NO_CONTENT, Bytes::new())
        }
        _ => reply(StatusCode::NOT_FOUND, Bytes::new()),
    })
}

/// The headers Herald must send with every push (RFC 8030, 8291, 8292).
fn check_head(req: &Request<Incoming>) -> Result<(), &'static str> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if header("content-encoding") != Some("aes128gcm") {
        return Err("Content-Encoding is not aes128gcm");
    }
    if !header("authorization").is_some_and(|a| a.starts_with("vapid t=")) {
        return Err("Authorization is not vapid t=…");
    }
    if header("ttl").is_none_or(|t| t.parse::<u64>().is_err()) {
        return Err("TTL missing or not a number");
    }
    Ok(())
}

fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}
