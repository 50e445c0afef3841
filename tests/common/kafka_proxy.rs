//! A TCP proxy in front of the real broker that reads just enough of the
//! Kafka protocol to stand in for it: every Metadata response names the
//! proxy instead of the broker (so every connection a client makes goes
//! through it), and on request the Metadata responses to one client (by
//! `client.id`, on the connections it has open) list no broker at all,
//! the answer a KRaft broker gives in the moment its controlled shutdown
//! has fenced it (seen in the herald-bench F1 runs and by hand with
//! librdkafka's `debug=metadata`). Everything else is forwarded byte for
//! byte.
//!
//! FindCoordinator answers name a broker too (librdkafka moves that broker
//! to the address they give), so they are rewritten as well. Only the
//! versions librdkafka 2.12 and Kafka 4 use with each other are read:
//! Metadata v9 and later (flexible), FindCoordinator v1 and v2; another
//! version fails the test rather than pass through unread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Counts the Kafka clients Herald created again after librdkafka dropped
/// every broker it knew.
pub const BROKERS_FORGOTTEN: &str = "herald_kafka_errors_total{kind=\"brokers_forgotten\"}";

const METADATA: i16 = 3;
const FIND_COORDINATOR: i16 = 10;

pub struct KafkaProxy {
    shared: Arc<Shared>,
}

struct Shared {
    addr: SocketAddr,
    /// Connections accepted so far; each one's number is its place.
    connections: AtomicU64,
    /// `(client.id, n)`: every Metadata response to that client lists no
    /// broker: on any connection until the first such answer was sent
    /// (`None`), then on the `n` connections accepted until then.
    blanking: Mutex<Vec<(String, Option<u64>)>>,
    blanked: Notify,
}

impl KafkaProxy {
    /// Listens on a free loopback port and forwards to `broker`.
    pub async fn start(broker: &str) -> KafkaProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let broker: SocketAddr = broker.parse().expect("broker address as ip:port");
        let shared = Arc::new(Shared {
            addr,
            connections: AtomicU64::new(0),
            blanking: Mutex::new(Vec::new()),
            blanked: Notify::new(),
        });
        let accepting = shared.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let shared = accepting.clone();
                let number = shared.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(broker).await {
                        shared.relay(number, client, server).await;
                    }
                });
            }
        });
        KafkaProxy { shared }
    }

    /// Where a client reaches the broker through the proxy.
    pub fn brokers(&self) -> String {
        self.shared.addr.to_string()
    }

    /// The test config ([`super::config`]) with every Kafka client of
    /// Herald going through the proxy, and librdkafka's own re-bootstrap
    /// off: it races with the decommissioning and sometimes wins, and only
    /// Herald's recovery may decide the outcome.
    pub fn config(&self, routes: &[(&str, &str)]) -> herald::config::Config {
        let mut cfg = super::config(routes);
        cfg.kafka.brokers = self.shared.addr.to_string();
        cfg.kafka
            .options
            .insert("metadata.recovery.strategy".into(), "none".into());
        cfg
    }

    /// From now on, every Metadata response to the client named
    /// `client_id` on the connections it has open when the first one is
    /// sent lists no broker (one normal answer on another of its
    /// connections would teach it the broker again); waits until it has
    /// received one. A client created again connects anew, and its
    /// answers are left alone.
    pub async fn answer_metadata_with_no_broker(&self, client_id: &str) {
        let entry = {
            let mut blanking = self.shared.blanking.lock();
            blanking.push((client_id.to_owned(), None));
            blanking.len() - 1
        };
        let deadline = tokio::time::Instant::now() + super::TIMEOUT;
        loop {
            // Created before looking: a blank sent after the look wakes it.
            let blanked = self.shared.blanked.notified();
            // Another client's blank wakes it too.
            if self.shared.blanking.lock()[entry].1.is_some() {
                return;
            }
            tokio::time::timeout_at(deadline, blanked)
                .await
                .unwrap_or_else(|_| panic!("{client_id} asks for metadata through the proxy"));
        }
    }
}

impl Shared {
    async fn relay(self: Arc<Self>, number: u64, client: TcpStream, server: TcpStream) {
        let (mut client_rx, mut client_tx) = client.into_split();
        let (mut server_rx, mut server_tx) = server.into_split();
        // Correlation id → (API, version, the client if it gets no broker)
        // of the requests in flight whose answers are rewritten.
        let pending = Arc::new(Mutex::new(HashMap::<i32, (i16, i16, Option<String>)>::new()));
        let requests = {
            let pending = pending.clone();
            let shared = self.clone();
            async move {
                while let Some(frame) = read_frame(&mut client_rx).await {
                    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
                    if api_key == METADATA || api_key == FIND_COORDINATOR {
                        let version = i16::from_be_bytes([frame[2], frame[3]]);
                        let correlation = i32::from_be_bytes(frame[4..8].try_into().unwrap());
                        let blank = api_key == METADATA
                            && (shared.blanking.lock()).iter().any(|(named, before)| {
                                named == client_id(&frame) && before.is_none_or(|n| number < n)
                            });
                        let blank = blank.then(|| client_id(&frame).to_owned());
                        pending
                            .lock()
                            .insert(correlation, (api_key, version, blank));
                    }
                    if write_frame(&mut server_tx, &frame).await.is_err() {
                        break;
                    }
                }
                let _ = server_tx.shutdown().await;
            }
        };
        let responses = async move {
            while let Some(mut frame) = read_frame(&mut server_rx).await {
                let correlation = i32::from_be_bytes(frame[0..4].try_into().unwrap());
                let answering = pending.lock().remove(&correlation);
                let mut blank = false;
                match answering {
                    Some((METADATA, version, blanked)) => {
                        assert!(version >= 9, "the proxy reads Metadata v9+, not v{version}");
                        let has_topics;
                        (frame, has_topics) =
                            rewrite_metadata(&frame, self.addr, blanked.is_some());
                        // Only an answer with topics makes librdkafka drop
                        // its brokers.
                        blank = blanked.is_some() && has_topics;
                        if let Some(client) = blanked.filter(|_| has_topics) {
                            // Its connections from now on are a new
                            // client's.
                            let accepted = self.connections.load(Ordering::SeqCst);
                            for (named, before) in self.blanking.lock().iter_mut() {
                                if *named == client {
                                    before.get_or_insert(accepted);
                                }
                            }
                        }
                    }
                    Some((_, version, _)) => {
                        assert!(
                            (1..=2).contains(&version),
                            "the proxy reads FindCoordinator v1 and v2, not v{version}"
                        );
                        frame = rewrite_coordinator(&frame, self.addr);
                    }
                    None => {}
                }
                if write_frame(&mut client_tx, &frame).await.is_err() {
                    break;
                }
                if blank {
                    self.blanked.notify_waiters();
                }
            }
            let _ = client_tx.shutdown().await;
        };
        tokio::join!(requests, responses);
    }
}

/// The `client_id` of a request (header v1 and v2: a nullable string after
/// the correlation id).
fn client_id(request: &[u8]) -> &str {
    let len = i16::from_be_bytes([request[8], request[9]]);
    std::str::from_utf8(&request[10..10 + len.max(0) as usize]).unwrap_or("")
}

async fn read_frame(rx: &mut (impl AsyncReadExt + Unpin)) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    rx.read_exact(&mut len).await.ok()?;
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    rx.read_exact(&mut frame).await.ok()?;
    Some(frame)
}

async fn write_frame(tx: &mut (impl AsyncWriteExt + Unpin), frame: &[u8]) -> std::io::Result<()> {
    tx.write_all(&(frame.len() as u32).to_be_bytes()).await?;
    tx.write_all(frame).await
}

/// A flexible Metadata response (header v1) with its broker array replaced:
/// every broker at `proxy`, or none when `blank`; and whether it lists
/// topics (librdkafka retries an answer with neither brokers nor topics,
/// and acts on one with topics only).
fn rewrite_metadata(frame: &[u8], proxy: SocketAddr, blank: bool) -> (Vec<u8>, bool) {
    let mut r = Reader { buf: frame, at: 0 };
    r.take(4); // correlation id
    r.skip_tagged_fields(); // response header v1
    r.take(4); // throttle_time_ms
    let head = r.at;
    let count = r.uvarint().checked_sub(1).expect("a non-null broker array") as usize;
    let mut brokers = Vec::new();
    for _ in 0..count {
        let node_id = r.take(4).to_vec();
        r.compact_bytes(); // host
        r.take(4); // port
        let rack_len = r.uvarint();
        if rack_len > 0 {
            r.take(rack_len as usize - 1);
        }
        let tags_at = r.at;
        r.skip_tagged_fields();
        brokers.push((node_id, frame[tags_at..r.at].to_vec()));
    }
    let rest = &frame[r.at..];
    let cluster_id = r.uvarint();
    if cluster_id > 0 {
        r.take(cluster_id as usize - 1);
    }
    r.take(4); // controller_id
    let has_topics = r.uvarint() > 1;
    let mut out = frame[..head].to_vec();
    if blank {
        brokers.clear();
    }
    put_uvarint(&mut out, brokers.len() as u64 + 1);
    let host = proxy.ip().to_string();
    for (node_id, tags) in brokers {
        out.extend_from_slice(&node_id);
        put_uvarint(&mut out, host.len() as u64 + 1);
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(&i32::from(proxy.port()).to_be_bytes());
        put_uvarint(&mut out, 0); // rack: null
        out.extend_from_slice(&tags);
    }
    out.extend_from_slice(rest);
    (out, has_topics)
}

/// A FindCoordinator v1/v2 response (header v0) with the coordinator at
/// `proxy`: throttle_time_ms, error_code, error_message, node_id, host,
/// port.
fn rewrite_coordinator(frame: &[u8], proxy: SocketAddr) -> Vec<u8> {
    let mut r = Reader { buf: frame, at: 0 };
    r.take(4 + 4 + 2); // correlation id, throttle_time_ms, error_code
    let message_len = i16::from_be_bytes(r.take(2).try_into().unwrap());
    if message_len > 0 {
        r.take(message_len as usize);
    }
    r.take(4); // node_id
    let head = r.at;
    let host_len = i16::from_be_bytes(r.take(2).try_into().unwrap());
    r.take(host_len.max(0) as usize);
    r.take(4); // port
    let host = proxy.ip().to_string();
    let mut out = frame[..head].to_vec();
    out.extend_from_slice(&(host.len() as i16).to_be_bytes());
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(&i32::from(proxy.port()).to_be_bytes());
    out.extend_from_slice(&frame[r.at..]);
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let bytes = &self.buf[self.at..self.at + n];
        self.at += n;
        bytes
    }

    fn uvarint(&mut self) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return value;
            }
        }
        panic!("a varint longer than 64 bits");
    }

    fn compact_bytes(&mut self) -> &[u8] {
        let len = self.uvarint().checked_sub(1).expect("a non-null string") as usize;
        self.take(len)
    }

    fn skip_tagged_fields(&mut self) {
        for _ in 0..self.uvarint() {
            self.uvarint(); // tag
            let size = self.uvarint() as usize;
            self.take(size);
        }
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}
