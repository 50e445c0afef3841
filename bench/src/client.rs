//! `herald-bench client`: a worker process holding up to ~9,000 client
//! sockets (WebSocket, SSE or the fan-out floor's raw stream) on one channel.
//!
//! Prints one JSON line when every socket is open (`{"ready":…}`) and one
//! when the clients are done or `--duration` has passed after that
//! (`{"done":…}`): counts, lost and duplicated records (by `n`) and a
//! latency histogram (publish timestamp `t` in the payload → receive).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::hist::Hist;

#[derive(clap::Args, Clone)]
pub struct ClientArgs {
    /// ws, sse or floor (the floor server's raw stream).
    #[arg(long)]
    pub transport: String,
    #[arg(long)]
    pub addr: String,
    #[arg(long, default_value = "bench")]
    pub channel: String,
    #[arg(long)]
    pub count: usize,
    /// Records each client should receive (n = 0..expect); 0: idle clients.
    #[arg(long, default_value_t = 0)]
    pub expect: u64,
    /// Seconds to keep going after every socket is open.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Resume cursor (ws: `cursor=`, sse: `Last-Event-ID`).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Kernel receive buffer per socket, bytes; 0 leaves the kernel's
    /// default (autotuned, as a browser's socket is).
    #[arg(long, default_value_t = 16384)]
    pub rcvbuf: u32,
}

#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub struct Done {
    pub clients: usize,
    pub connected: usize,
    pub failed: usize,
    /// Unix micros: first connect started / last socket open.
    pub connect_start_us: u64,
    pub connect_end_us: u64,
    /// Unix micros when the last client got all `expect` records (0: never).
    pub all_done_us: u64,
    pub complete: usize,
    pub received: u64,
    pub distinct: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub hist: Vec<(u32, u64)>,
}

#[derive(Default)]
struct Shared {
    received: u64,
    distinct: u64,
    duplicates: u64,
    complete: usize,
    hist: Hist,
    all_done_us: u64,
}

pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub fn run(args: ClientArgs) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run_async(args));
}

async fn run_async(args: ClientArgs) {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let request = Arc::new(request_for(&args));
    let start_us = unix_us();
    let permits = Arc::new(tokio::sync::Semaphore::new(128));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    for index in 0..args.count {
        let first_error = first_error.clone();
        let (shared, connected, failed, request, permits) = (
            shared.clone(),
            connected.clone(),
            failed.clone(),
            request.clone(),
            permits.clone(),
        );
        let args = args.clone();
        tokio::spawn(async move {
            let permit = permits.acquire_owned().await.expect("semaphore");
            if args.transport == "poll" {
                match poll_open(&args, index).await {
                    Ok((s, cursor)) => {
                        drop(permit);
                        connected.fetch_add(1, Ordering::Relaxed);
                        poll_loop(s, cursor, &args, &shared).await;
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().get_or_insert(e);
                    }
                }
                return;
            }
            // A 503 (replay_busy, not_ready) is retried as a browser would
            // reconnect: after 100 ms, up to 300 times.
            let mut attempt = 0;
            let stream = loop {
                match open(&args, &request, index).await {
                    Err(e) if e.contains(" 503 ") && attempt < 300 => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => break other,
                }
            };
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error.lock().get_or_insert(e);
                    return;
                }
            };
            drop(permit);
            connected.fetch_add(1, Ordering::Relaxed);
            read_loop(stream, args.expect, args.count, &shared).await;
        });
    }
    while connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < args.count {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let end_us = unix_us();
    println!(
        "{}",
        serde_json::json!({"ready": connected.load(Ordering::Relaxed), "failed": failed.load(Ordering::Relaxed),
            "connect_start_us": start_us, "connect_end_us": end_us,
            "first_error": first_error.lock().clone()})
    );
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let n_ok = connected.load(Ordering::Relaxed);
    while Instant::now() < deadline {
        if args.expect > 0 && shared.lock().complete >= n_ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = shared.lock();
    let done = Done {
        clients: args.count,
        connected: n_ok,
        failed: failed.load(Ordering::Relaxed),
        connect_start_us: start_us,
        connect_end_us: end_us,
        all_done_us: s.all_done_us,
        complete: s.complete,
        received: s.received,
        distinct: s.distinct,
        duplicates: s.duplicates,
        lost: (n_ok as u64 * args.expect).saturating_sub(s.distinct),
        hist: s.hist.sparse(),
    };
    println!("{}", serde_json::json!({ "done": done }));
    use std::io::Write;
    std::io::stdout().flush().ok();
    std::process::exit(0);
}

fn request_for(args: &ClientArgs) -> Vec<u8> {
    // BENCH_TOKEN: a JWT every client sends as `token=`, to measure Herald
    // with `[auth]` on (set `[auth]` itself through BENCH_HERALD_CONFIG).
    let token = std::env::var("BENCH_TOKEN").map_or(String::new(), |t| format!("&token={t}"));
    let ch = format!("{}{token}", args.channel);
    match args.transport.as_str() {
        "ws" => {
            let cursor = args
                .cursor
                .as_ref()
                .map_or(String::new(), |c| format!("&cursor={c}"));
            format!(
                "GET /ws?channel={ch}{cursor} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
                 sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
            )
        }
        "sse" => {
            let resume = args
                .cursor
                .as_ref()
                .map_or(String::new(), |c| format!("last-event-id: {c}\r\n"));
            format!("GET /sse?channel={ch} HTTP/1.1\r\nhost: x\r\n{resume}\r\n")
        }
        "floor" => "GET / HTTP/1.1\r\nhost: x\r\n\r\n".to_owned(),
        "poll" => String::new(),
        t => panic!("unknown transport {t}"),
    }
    .into_bytes()
}

/// Connects (retrying refused connects for a while), sends the request and
/// reads the response head. Returns the stream and any body bytes read.
async fn open(
    args: &ClientArgs,
    request: &[u8],
    index: usize,
) -> Result<(tokio::net::TcpStream, Vec<u8>), String> {
    let addr: std::net::SocketAddr = args.addr.parse().expect("addr");
    let mut tries = 0;
    let mut s = loop {
        let sock = socket_for(addr, index)?;
        if args.rcvbuf > 0 {
            let _ = sock.set_recv_buffer_size(args.rcvbuf);
        }
        let _ = sock.set_send_buffer_size(4096);
        match sock.connect(addr).await {
            Ok(s) => break s,
            Err(_) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(format!("connect: {e}")),
        }
    };
    s.write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    loop {
        let k = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if k == 0 {
            return Err("closed before a response".into());
        }
        head.extend_from_slice(&buf[..k]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let status_ok = head.starts_with(b"HTTP/1.1 101") || head.starts_with(b"HTTP/1.1 200");
            if !status_ok {
                let line = String::from_utf8_lossy(&head[..i]);
                return Err(line.lines().next().unwrap_or("").to_owned());
            }
            let rest = head.split_off(i + 4);
            return Ok((s, rest));
        }
        if head.len() > 16 * 1024 {
            return Err("response head too long".into());
        }
    }
}

const MARK: &[u8] = b"{\"t\":";

/// One client's view: which `n` it has seen, and what it found in bytes.
struct Tracker {
    seen: Vec<u64>,
    distinct: u64,
    expect: u64,
    samples: Vec<(u64, u64)>,
}

impl Tracker {
    fn new(expect: u64) -> Self {
        Self {
            seen: vec![0u64; (expect as usize).div_ceil(64)],
            distinct: 0,
            expect,
            samples: Vec::with_capacity(64),
        }
    }

    fn done(&self) -> bool {
        self.expect > 0 && self.distinct == self.expect
    }

    /// Records every complete `{"t":T,"n":N` in `acc`; returns where an
    /// incomplete one starts (the bytes to keep for the next read).
    fn scan(&mut self, acc: &[u8], shared: &Mutex<Shared>) -> usize {
        let mut pos = 0;
        let mut partial = None;
        while let Some(i) = find(&acc[pos..], MARK) {
            let at = pos + i;
            match parse_tn(&acc[at + MARK.len()..]) {
                Some((t, n, used)) => {
                    if n != u64::MAX {
                        self.samples.push((t, n));
                    }
                    pos = at + MARK.len() + used;
                }
                None => {
                    partial = Some(at);
                    break;
                }
            }
        }
        if !self.samples.is_empty() {
            let now = unix_us();
            let mut g = shared.lock();
            for &(t, n) in &self.samples {
                g.received += 1;
                g.hist.record(now.saturating_sub(t));
                if n < self.expect {
                    let (w, b) = ((n / 64) as usize, n % 64);
                    if self.seen[w] & (1 << b) != 0 {
                        g.duplicates += 1;
                    } else {
                        self.seen[w] |= 1 << b;
                        self.distinct += 1;
                        g.distinct += 1;
                    }
                }
            }
            if self.done() {
                g.complete += 1;
                g.all_done_us = now;
            }
            self.samples.clear();
        }
        partial.unwrap_or_else(|| pos.max(acc.len().saturating_sub(MARK.len() - 1)))
    }
}

async fn read_loop(
    (mut s, first): (tokio::net::TcpStream, Vec<u8>),
    expect: u64,
    _clients: usize,
    shared: &Mutex<Shared>,
) {
    let mut tracker = Tracker::new(expect);
    let mut acc = first;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let keep_from = tracker.scan(&acc, shared);
        if tracker.done() {
            // Keep the socket open (so the server sees no churn) but stop counting.
            let _ = tokio::io::copy(&mut s, &mut tokio::io::sink()).await;
            return;
        }
        acc.drain(..keep_from.min(acc.len()));
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(k) => acc.extend_from_slice(&buf[..k]),
        }
    }
}

/// One keep-alive HTTP/1.1 GET; returns the status line and the body
/// (Content-Length bodies only, as Herald sends).
async fn http_request(
    s: &mut tokio::net::TcpStream,
    path: &str,
) -> Result<(String, Vec<u8>), String> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut acc = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let (head_end, len) = loop {
        let k = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if k == 0 {
            return Err("closed".into());
        }
        acc.extend_from_slice(&buf[..k]);
        if let Some(i) = find(&acc, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&acc[..i]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    format!("no content-length: {}", head.lines().next().unwrap_or(""))
                })?;
            break (i + 4, len);
        }
    };
    while acc.len() < head_end + len {
        let k = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if k == 0 {
            return Err("closed in body".into());
        }
        acc.extend_from_slice(&buf[..k]);
    }
    let status = String::from_utf8_lossy(&acc[..acc.iter().position(|b| *b == b'\r').unwrap_or(0)])
        .into_owned();
    Ok((status, acc[head_end..head_end + len].to_vec()))
}

/// The last `"cursor":"…"` of a poll response (the top-level one).
fn last_cursor(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let i = text.rfind("\"cursor\":\"")? + 10;
    Some(text[i..i + text[i..].find('"')?].to_owned())
}

/// A socket for client `index`. Towards a loopback server, clients are
/// spread over source addresses 127.1.x.y (all of 127/8 is loopback), as
/// real clients come from many addresses: from one source address the
/// kernel searches tens of thousands of ephemeral ports per connect
/// (`__inet_check_established` was 60% of the bench's CPU), and the accept
/// rate measured was the clients'.
fn socket_for(server: std::net::SocketAddr, index: usize) -> Result<tokio::net::TcpSocket, String> {
    let sock = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if server.ip().is_loopback() {
        let host = (index % 250 + 1) as u8;
        let net = (index / 250 % 250) as u8;
        let local = std::net::SocketAddr::from(([127, 1, net, host], 0));
        sock.bind(local).map_err(|e| format!("bind {local}: {e}"))?;
    }
    Ok(sock)
}

/// Connects and short-polls the live end for a starting cursor.
async fn poll_open(
    args: &ClientArgs,
    index: usize,
) -> Result<(tokio::net::TcpStream, String), String> {
    let addr: std::net::SocketAddr = args.addr.parse().expect("addr");
    let mut s = socket_for(addr, index)?
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (status, body) = http_request(&mut s, &format!("/poll?channel={}", args.channel)).await?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(status);
    }
    let cursor = args
        .cursor
        .clone()
        .or_else(|| last_cursor(&body))
        .ok_or("no cursor")?;
    Ok((s, cursor))
}

/// Long-polls from `cursor` until every expected record has come.
async fn poll_loop(
    mut s: tokio::net::TcpStream,
    mut cursor: String,
    args: &ClientArgs,
    shared: &Mutex<Shared>,
) {
    let mut tracker = Tracker::new(args.expect);
    while !tracker.done() {
        let path = format!(
            "/poll?channel={}&cursor={cursor}&wait=25&limit=1000",
            args.channel
        );
        let Ok((status, body)) = http_request(&mut s, &path).await else {
            return;
        };
        if !status.starts_with("HTTP/1.1 200") {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        tracker.scan(&body, shared);
        if let Some(c) = last_cursor(&body) {
            cursor = c;
        }
    }
}

/// Substring search with memchr's SIMD searcher: at a million deliveries
/// a second the clients scan hundreds of MB/s, and a byte-window scan
/// made them, not the server, the bottleneck of the fan-out scenarios.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Parses `T,"n":N` followed by a non-digit; None when incomplete.
fn parse_tn(b: &[u8]) -> Option<(u64, u64, usize)> {
    let (t, i) = digits(b, 0)?;
    let rest = b.get(i..)?;
    const N: &[u8] = b",\"n\":";
    if rest.len() < N.len() || &rest[..N.len()] != N {
        // Not our payload (or incomplete); skip only when clearly not ours.
        return if rest.len() < N.len() {
            None
        } else {
            Some((0, u64::MAX, i))
        };
    }
    let (n, j) = digits(b, i + N.len())?;
    Some((t, n, j))
}

fn digits(b: &[u8], mut i: usize) -> Option<(u64, usize)> {
    let start = i;
    let mut v = 0u64;
    while i < b.len() && b[i].is_ascii_digit() {
        v = v * 10 + u64::from(b[i] - b'0');
        i += 1;
    }
    if i == b.len() || i == start {
        return None;
    }
    Some((v, i))
}
