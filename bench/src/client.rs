//! `herald-bench client`: a worker process holding up to ~9,000 client
//! sockets (WebSocket, SSE or the fan-out floor's raw stream) on one channel,
//! Herald's or, with `--framing centrifugo`, Centrifugo's (centrifugo.rs).
//!
//! Prints one JSON line when every socket is open (`{"ready":…}`) and one
//! when the clients are done or `--duration` has passed after that
//! (`{"done":…}`): counts, lost and duplicated records (by `n`) and a
//! latency histogram (publish timestamp `t` in the payload → receive).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::centrifugo::Framing;
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
    /// ws: seconds after every socket is open at which the clients stop
    /// reading (0: never), for `--stall-for` seconds, again every
    /// `--stall-every` seconds (0: once). A slow reader as a stalled
    /// browser tab is: it answers nothing, and once it reads again it
    /// resumes from its cursor if Herald has cut it off.
    #[arg(long, default_value_t = 0.0)]
    pub stall_at: f64,
    #[arg(long, default_value_t = 0.0)]
    pub stall_for: f64,
    #[arg(long, default_value_t = 0.0)]
    pub stall_every: f64,
    /// ws: churn. Each connection lives a random `--churn-min`…`--churn-max`
    /// seconds, then closes; `--churn-resume` of the closed ones come back
    /// 1–10 s later from their cursor, the others leave and a new client
    /// joins at the live end. 0: no churn.
    #[arg(long, default_value_t = 0.0)]
    pub churn_min: f64,
    #[arg(long, default_value_t = 0.0)]
    pub churn_max: f64,
    #[arg(long, default_value_t = 0.5)]
    pub churn_resume: f64,
    /// ws: report, for each record `n`, when the last of this worker's
    /// clients had it (`arrivals` in the done line): recovery times.
    #[arg(long)]
    pub arrivals: bool,
    /// ws: `--addr` lists several nodes (comma-separated; the first is the
    /// clients' own). A client cut off from its node resumes on the next
    /// one; with `--home` it goes back to the first (resuming again) once
    /// that node's `/readyz` answers 200.
    #[arg(long)]
    pub home: bool,
    /// ws: offer permessage-deflate and inflate the compressed frames
    /// (compression.rs measures what it saves).
    #[arg(long)]
    pub deflate: bool,
    /// Whose wire format to speak: Herald's, or Centrifugo's
    /// `uni_websocket` / `uni_sse` (the peer scenario; centrifugo.rs).
    #[arg(long, value_enum, default_value_t = Framing::Herald)]
    pub framing: Framing,
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
    /// Records that came after a later one (one partition: none may).
    #[serde(default)]
    pub out_of_order: u64,
    /// Connections opened again after the first (resumes from a cursor).
    #[serde(default)]
    pub reconnects: u64,
    /// Unix micros of the last of those (0: none).
    #[serde(default)]
    pub last_reconnect_us: u64,
    /// Unix micros when the last client ever cut off had resumed for the
    /// first time (its first reconnect; 0: none was).
    #[serde(default)]
    pub all_resumed_us: u64,
    /// How connections ended before the worker did: `close 4008`, `eof`,
    /// `error`, `churn`, `home`; and `retry: …` the failed attempts to
    /// resume (ws only).
    #[serde(default)]
    pub endings: std::collections::BTreeMap<String, u64>,
    /// Resumes Herald refused for good (the first error is in the ready
    /// line when at connect, else here).
    #[serde(default)]
    pub refused: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    /// `gap` messages received (records deleted before a resume got them).
    #[serde(default)]
    pub gaps: u64,
    /// Churn: clients that left, and the records missing inside the range
    /// each client (one that left, or one still there) saw, first to last.
    #[serde(default)]
    pub left: u64,
    /// With `--arrivals`: unix micros when the last of this worker's
    /// clients had record `n` (index `n`); 0 when some never did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arrivals: Vec<u64>,
    /// TCP data segments and bytes the clients' sockets received from the
    /// server (their `TCP_INFO`): the server's writes, as the wire saw
    /// them (a write that fits a segment is one; writes queued behind a
    /// full window may leave in fewer).
    #[serde(default)]
    pub segs_in: u64,
    #[serde(default)]
    pub bytes_in: u64,
    /// ws: bytes of the frames received (after the handshake), as they
    /// came on the wire: compressed with `--deflate`.
    #[serde(default)]
    pub ws_bytes: u64,
}

#[derive(Default)]
struct Shared {
    /// Sockets open now, and what the closed ones received: TCP data
    /// segments and bytes (`tcpi_data_segs_in`, `tcpi_bytes_received`).
    open_sockets: std::collections::HashSet<i32>,
    segs_in: u64,
    bytes_in: u64,
    received: u64,
    distinct: u64,
    duplicates: u64,
    out_of_order: u64,
    complete: usize,
    hist: Hist,
    all_done_us: u64,
    reconnects: u64,
    last_reconnect_us: u64,
    all_resumed_us: u64,
    endings: std::collections::BTreeMap<String, u64>,
    refused: u64,
    last_error: Option<String>,
    gaps: u64,
    left: u64,
    /// Churn: records missing inside the ranges of the clients that left.
    left_lost: u64,
    /// Churn: each client's (first n, last n, distinct) so far.
    ranges: Vec<(u64, u64, u64)>,
    /// Per record `n`: how many clients have it, and when the last did.
    arrival_count: Vec<u32>,
    arrival_us: Vec<u64>,
    ws_bytes: u64,
}

/// `TCP_INFO`'s data segments and bytes received on socket `fd`.
fn tcp_received(fd: i32) -> (u64, u64) {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes; the kernel
    // writes at most `len` of its `struct tcp_info` into it.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    // tcpi_bytes_received is at offset 128, tcpi_data_segs_in at 152
    // (Linux 4.6 on).
    if r != 0 || len < 156 {
        return (0, 0);
    }
    let u32_at = |at: usize| u32::from_ne_bytes(info[at..at + 4].try_into().expect("4 bytes"));
    let bytes = u64::from_ne_bytes(info[128..136].try_into().expect("8 bytes"));
    (u64::from(u32_at(152)), bytes)
}

/// Counts what a client socket received while it is open (see
/// [`tcp_received`]); what it received is added to the worker's totals
/// when it closes, or when the worker reports.
struct Received<'a> {
    fd: i32,
    shared: &'a Mutex<Shared>,
}

impl<'a> Received<'a> {
    fn watch(s: &tokio::net::TcpStream, shared: &'a Mutex<Shared>) -> Self {
        use std::os::fd::AsRawFd;
        let fd = s.as_raw_fd();
        shared.lock().open_sockets.insert(fd);
        Received { fd, shared }
    }
}

impl Drop for Received<'_> {
    fn drop(&mut self) {
        let (segs, bytes) = tcp_received(self.fd);
        let mut g = self.shared.lock();
        g.open_sockets.remove(&self.fd);
        g.segs_in += segs;
        g.bytes_in += bytes;
    }
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

/// What every client task of a worker shares besides the tallies.
struct Ctx {
    args: ClientArgs,
    addrs: Vec<std::net::SocketAddr>,
    connected: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
    /// When every first connection was open: the clock of `--stall-at`.
    ready_at: Mutex<Option<Instant>>,
    /// `--home`: whether the first node answers `/readyz` with 200.
    home_up: AtomicBool,
}

async fn run_async(args: ClientArgs) {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let addrs: Vec<std::net::SocketAddr> = args
        .addr
        .split(',')
        .map(|a| a.parse().expect("addr"))
        .collect();
    if args.arrivals {
        let mut g = shared.lock();
        g.arrival_count = vec![0; args.expect as usize];
        g.arrival_us = vec![0; args.expect as usize];
    }
    if churning(&args) {
        shared.lock().ranges = vec![(u64::MAX, 0, 0); args.count];
    }
    let ctx = Arc::new(Ctx {
        args: args.clone(),
        addrs,
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        first_error: Mutex::new(None),
        ready_at: Mutex::new(None),
        home_up: AtomicBool::new(true),
    });
    if args.home && args.transport == "ws" {
        tokio::spawn(probe_home(ctx.clone()));
    }
    let request = Arc::new(request_for(&args));
    let start_us = unix_us();
    let permits = Arc::new(tokio::sync::Semaphore::new(128));
    for index in 0..args.count {
        let (shared, request, permits, ctx) = (
            shared.clone(),
            request.clone(),
            permits.clone(),
            ctx.clone(),
        );
        tokio::spawn(async move {
            let permit = permits.acquire_owned().await.expect("semaphore");
            let args = &ctx.args;
            if args.transport == "ws" {
                ws_client(index, permit, &ctx, &shared).await;
                return;
            }
            if args.transport == "poll" {
                match poll_open(args, index).await {
                    Ok((s, cursor)) => {
                        drop(permit);
                        ctx.connected.fetch_add(1, Ordering::Relaxed);
                        poll_loop(s, cursor, args, &shared).await;
                    }
                    Err(e) => {
                        ctx.failed.fetch_add(1, Ordering::Relaxed);
                        ctx.first_error.lock().get_or_insert(e);
                    }
                }
                return;
            }
            // A 503 (replay_busy, not_ready) is retried as a browser would
            // reconnect: after 100 ms, up to 300 times.
            let mut attempt = 0;
            let stream = loop {
                match open(args, &request, index).await {
                    Err(e) if e.contains(" 503 ") && attempt < 300 => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => break other,
                }
            };
            let stream = match (stream, args.framing) {
                (Ok(s), Framing::Centrifugo) => crate::centrifugo::sse_connect(s)
                    .await
                    .map(|(s, dechunk, rest)| (s, rest, Some(dechunk))),
                (stream, _) => stream.map(|(s, rest)| (s, rest, None)),
            };
            let (stream, rest, dechunk) = match stream {
                Ok(s) => s,
                Err(e) => {
                    ctx.failed.fetch_add(1, Ordering::Relaxed);
                    ctx.first_error.lock().get_or_insert(e);
                    return;
                }
            };
            drop(permit);
            ctx.connected.fetch_add(1, Ordering::Relaxed);
            stream_client((stream, rest), dechunk, args, index, &shared).await;
        });
    }
    while ctx.connected.load(Ordering::Relaxed) + ctx.failed.load(Ordering::Relaxed) < args.count {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    *ctx.ready_at.lock() = Some(Instant::now());
    let end_us = unix_us();
    println!(
        "{}",
        serde_json::json!({"ready": ctx.connected.load(Ordering::Relaxed), "failed": ctx.failed.load(Ordering::Relaxed),
            "connect_start_us": start_us, "connect_end_us": end_us,
            "first_error": ctx.first_error.lock().clone()})
    );
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let n_ok = ctx.connected.load(Ordering::Relaxed);
    while Instant::now() < deadline {
        if args.expect > 0 && !churning(&args) && shared.lock().complete >= n_ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut s = shared.lock();
    for fd in std::mem::take(&mut s.open_sockets) {
        let (segs, bytes) = tcp_received(fd);
        s.segs_in += segs;
        s.bytes_in += bytes;
    }
    let lost = if churning(&args) {
        // Each client's own range: from the first record it saw to the last.
        s.left_lost
            + s.ranges
                .iter()
                .filter(|r| r.0 != u64::MAX)
                .map(|&(first, last, distinct)| (last - first + 1).saturating_sub(distinct))
                .sum::<u64>()
    } else {
        (n_ok as u64 * args.expect).saturating_sub(s.distinct)
    };
    let done = Done {
        clients: args.count,
        connected: n_ok,
        failed: ctx.failed.load(Ordering::Relaxed),
        connect_start_us: start_us,
        connect_end_us: end_us,
        all_done_us: s.all_done_us,
        complete: s.complete,
        received: s.received,
        distinct: s.distinct,
        duplicates: s.duplicates,
        lost,
        hist: s.hist.sparse(),
        out_of_order: s.out_of_order,
        reconnects: s.reconnects,
        last_reconnect_us: s.last_reconnect_us,
        all_resumed_us: s.all_resumed_us,
        endings: s.endings.clone(),
        refused: s.refused,
        last_error: s.last_error.clone(),
        gaps: s.gaps,
        left: s.left,
        arrivals: s
            .arrival_count
            .iter()
            .zip(&s.arrival_us)
            .map(|(&c, &us)| if c as usize >= n_ok.max(1) { us } else { 0 })
            .collect(),
        ws_bytes: s.ws_bytes,
        segs_in: s.segs_in,
        bytes_in: s.bytes_in,
    };
    println!("{}", serde_json::json!({ "done": done }));
    use std::io::Write;
    std::io::stdout().flush().ok();
    std::process::exit(0);
}

fn churning(args: &ClientArgs) -> bool {
    args.churn_max > 0.0
}

fn request_for(args: &ClientArgs) -> Vec<u8> {
    // BENCH_TOKEN: a JWT every client sends as `token=`, to measure Herald
    // with `[auth]` on (set `[auth]` itself through BENCH_HERALD_CONFIG).
    let token = std::env::var("BENCH_TOKEN").map_or(String::new(), |t| format!("&token={t}"));
    let ch = format!("{}{token}", args.channel);
    if args.framing == Framing::Centrifugo {
        return crate::centrifugo::request(&args.transport, &args.channel);
    }
    match args.transport.as_str() {
        "ws" => return ws_request(args, args.cursor.as_deref()),
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
    let (head, rest) = request_head(&mut s, request).await?;
    if !(head.starts_with(b"HTTP/1.1 101") || head.starts_with(b"HTTP/1.1 200")) {
        let line = String::from_utf8_lossy(&head);
        return Err(line.lines().next().unwrap_or("").to_owned());
    }
    Ok((s, rest))
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

/// An SSE (or floor) client across its connections: reads events until
/// it has every record; an SSE stream that ends before that (a slow
/// consumer's `reconnect`, a reset) is opened again with `Last-Event-ID`
/// of the last complete event, as a browser's EventSource does.
/// `dechunk` takes a chunked body's coding off first (Centrifugo's
/// uni_sse, which cannot resume: a Centrifugo client that is cut off
/// stops, and what it missed counts as lost).
async fn stream_client(
    first: (tokio::net::TcpStream, Vec<u8>),
    mut dechunk: Option<crate::centrifugo::Dechunk>,
    args: &ClientArgs,
    index: usize,
    shared: &Mutex<Shared>,
) {
    let mut tracker = Tracker::new(args.expect);
    let mut last_id = args.cursor.clone();
    let mut conn = first;
    loop {
        let ending = read_events(conn, &mut dechunk, &mut tracker, &mut last_id, shared).await;
        if tracker.done() || args.transport != "sse" || args.framing == Framing::Centrifugo {
            return;
        }
        shared
            .lock()
            .endings
            .entry(ending.to_owned())
            .and_modify(|n| *n += 1)
            .or_insert(1);
        let request = {
            let mut again = args.clone();
            again.cursor = last_id.clone();
            request_for(&again)
        };
        let mut attempt = 0;
        conn = loop {
            match open(args, &request, index).await {
                Ok(conn) => break conn,
                Err(e) if attempt < 300 => {
                    attempt += 1;
                    *shared
                        .lock()
                        .endings
                        .entry(format!("retry: {e}"))
                        .or_insert(0) += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    let mut g = shared.lock();
                    g.refused += 1;
                    g.last_error = Some(e);
                    return;
                }
            }
        };
        {
            let mut g = shared.lock();
            g.reconnects += 1;
            g.last_reconnect_us = unix_us();
        }
    }
}

/// Reads one stream's events (`\n\n`-terminated) into `tracker`, keeping
/// the `id:` of the last complete one, until the tracker is done (then
/// the socket is held open, so the server sees no churn) or the stream
/// ends; says how it ended.
async fn read_events(
    (mut s, first): (tokio::net::TcpStream, Vec<u8>),
    dechunk: &mut Option<crate::centrifugo::Dechunk>,
    tracker: &mut Tracker,
    last_id: &mut Option<String>,
    shared: &Mutex<Shared>,
) -> &'static str {
    let _received = Received::watch(&s, shared);
    let mut acc = first;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if let Some(end) = memchr::memmem::rfind(&acc, b"\n\n") {
            let complete = &acc[..end + 2];
            tracker.scan(complete, shared);
            if let Some(id) = last_event_id(complete) {
                *last_id = Some(id);
            }
            acc.drain(..end + 2);
        }
        if tracker.done() {
            let _ = tokio::io::copy(&mut s, &mut tokio::io::sink()).await;
            return "done";
        }
        match s.read(&mut buf).await {
            Ok(0) => return "eof",
            Err(_) => return "error",
            Ok(k) => match dechunk.as_mut() {
                Some(d) => d.feed(&buf[..k], &mut acc),
                None => acc.extend_from_slice(&buf[..k]),
            },
        }
    }
}

/// The value of the last `id:` line in `events`.
fn last_event_id(events: &[u8]) -> Option<String> {
    let at = memchr::memmem::rfind(events, b"id: ")?;
    if at > 0 && events[at - 1] != b'\n' {
        // Inside a data line: look before it.
        return last_event_id(&events[..at]);
    }
    let rest = &events[at + 4..];
    let line = &rest[..memchr::memchr(b'\n', rest)?];
    Some(String::from_utf8_lossy(line).into_owned())
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

// ---------------------------------------------------------------- WebSocket

/// One WebSocket client across its connections: the records it has (by
/// `n`), the cursor after its last complete message, and what it has not
/// yet added to the worker's tallies.
struct WsClient {
    index: usize,
    expect: u64,
    seen: Vec<u64>,
    distinct: u64,
    first_n: Option<u64>,
    max_n: Option<u64>,
    /// The `cursor` of the last `subscribed`, `message` or `gap` frame:
    /// resuming from it loses nothing and repeats nothing.
    cursor: Option<String>,
    complete_counted: bool,
    /// Whether it has reconnected once.
    resumed: bool,
    /// (t, n, first time this client has n) since the last flush.
    samples: Vec<(u64, u64, bool)>,
    duplicates: u64,
    out_of_order: u64,
    gaps: u64,
    rng: u64,
    /// Frame bytes received since the last flush.
    bytes: u64,
}

const CURSOR: &[u8] = b"\"cursor\":\"";

impl WsClient {
    fn new(index: usize, expect: u64, cursor: Option<String>) -> Self {
        Self {
            index,
            expect,
            seen: vec![0u64; (expect as usize).div_ceil(64)],
            distinct: 0,
            first_n: None,
            max_n: None,
            cursor,
            complete_counted: false,
            resumed: false,
            samples: Vec::with_capacity(64),
            duplicates: 0,
            out_of_order: 0,
            gaps: 0,
            rng: (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ unix_us(),
            bytes: 0,
        }
    }

    /// A complete text frame: its records (`{"t":T,"n":N`; one in a
    /// Herald frame, one or more `\n`-joined pushes in a Centrifugo frame),
    /// and the cursor that follows — taken only now that the whole frame
    /// is here, so a connection cut mid-frame resumes before that record.
    fn on_text(&mut self, payload: &[u8]) {
        let mut pos = 0;
        while let Some(i) = find(&payload[pos..], MARK) {
            pos += i + MARK.len();
            if let Some((t, n, used)) = parse_tn(&payload[pos..]) {
                pos += used;
                if n != u64::MAX {
                    self.record(t, n);
                }
            }
        }
        if pos == 0 && find(payload, b"\"type\":\"gap\"").is_some() {
            self.gaps += 1;
        }
        if let Some(i) = find(payload, CURSOR) {
            let rest = &payload[i + CURSOR.len()..];
            if let Some(end) = memchr::memchr(b'"', rest) {
                let c = self.cursor.get_or_insert_with(String::new);
                c.clear();
                c.push_str(&String::from_utf8_lossy(&rest[..end]));
            }
        }
    }

    fn record(&mut self, t: u64, n: u64) {
        let mut new = false;
        if n < self.expect {
            let (w, b) = ((n / 64) as usize, n % 64);
            if self.seen[w] & (1 << b) != 0 {
                self.duplicates += 1;
            } else {
                self.seen[w] |= 1 << b;
                self.distinct += 1;
                new = true;
                if self.max_n.is_some_and(|m| n < m) {
                    self.out_of_order += 1;
                }
                self.first_n.get_or_insert(n);
                self.max_n = Some(self.max_n.map_or(n, |m| m.max(n)));
            }
        }
        self.samples.push((t, n, new));
    }

    /// Adds what this client saw since the last flush to the worker's
    /// tallies: one lock per read, not per record.
    fn flush(&mut self, shared: &Mutex<Shared>) {
        if self.samples.is_empty() && self.gaps == 0 && self.bytes == 0 {
            return;
        }
        let now = unix_us();
        let mut g = shared.lock();
        for &(t, n, new) in &self.samples {
            g.received += 1;
            g.hist.record(now.saturating_sub(t));
            if new {
                g.distinct += 1;
                if let Some(c) = g.arrival_count.get_mut(n as usize) {
                    *c += 1;
                    g.arrival_us[n as usize] = now;
                }
            }
        }
        self.samples.clear();
        g.duplicates += std::mem::take(&mut self.duplicates);
        g.out_of_order += std::mem::take(&mut self.out_of_order);
        g.gaps += std::mem::take(&mut self.gaps);
        g.ws_bytes += std::mem::take(&mut self.bytes);
        if self.expect > 0 && self.distinct == self.expect && !self.complete_counted {
            self.complete_counted = true;
            g.complete += 1;
            g.all_done_us = now;
        }
        if let (Some(r), Some(first), Some(last)) =
            (g.ranges.get_mut(self.index), self.first_n, self.max_n)
        {
            *r = (first, last, self.distinct);
        }
    }

    /// Churn: this client leaves for good; a new one takes its place at
    /// the live end. What the old one missed inside its range is counted.
    fn leave(&mut self, shared: &Mutex<Shared>) {
        self.flush(shared);
        let mut g = shared.lock();
        g.left += 1;
        if let (Some(first), Some(last)) = (self.first_n, self.max_n) {
            g.left_lost += (last - first + 1).saturating_sub(self.distinct);
        }
        if let Some(r) = g.ranges.get_mut(self.index) {
            *r = (u64::MAX, 0, 0);
        }
        drop(g);
        self.seen.iter_mut().for_each(|w| *w = 0);
        (self.distinct, self.first_n, self.max_n, self.cursor) = (0, None, None, None);
        self.complete_counted = false;
    }

    /// xorshift64: churn timings, different for every client.
    fn rand01(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn rand_secs(&mut self, min: f64, max: f64) -> Duration {
        Duration::from_secs_f64(min + (max - min).max(0.0) * self.rand01())
    }
}

/// Why a WebSocket connection ended.
enum WsEnding {
    /// A close frame with this code (4008: slow consumer, 1001: shutdown).
    Closed(u16),
    Eof,
    Error,
    /// Churn: the client closed it.
    Churn,
    /// `--home`: the client left a fallback node for its own.
    Home,
}

impl WsEnding {
    fn label(&self) -> String {
        match self {
            WsEnding::Closed(code) => format!("close {code}"),
            WsEnding::Eof => "eof".into(),
            WsEnding::Error => "error".into(),
            WsEnding::Churn => "churn".into(),
            WsEnding::Home => "home".into(),
        }
    }
}

/// One WebSocket client for the whole run: connects, reads, and whenever a
/// connection ends reconnects with `cursor=` of the last complete message
/// (to the same node; a node that refuses moves it on to the next one).
async fn ws_client(
    index: usize,
    permit: tokio::sync::OwnedSemaphorePermit,
    ctx: &Ctx,
    shared: &Mutex<Shared>,
) {
    let args = &ctx.args;
    let mut permit = Some(permit);
    let mut client = WsClient::new(index, args.expect, args.cursor.clone());
    let mut at = 0usize;
    let mut failures = 0u32;
    loop {
        let request = ws_request(args, client.cursor.as_deref());
        let opened = match open_at(ctx.addrs[at], &request, index, args.rcvbuf).await {
            Ok(conn) if args.framing == Framing::Centrifugo => {
                crate::centrifugo::ws_connect(conn, &args.channel).await
            }
            opened => opened,
        };
        match opened {
            Ok(conn) => {
                failures = 0;
                if permit.take().is_some() {
                    ctx.connected.fetch_add(1, Ordering::Relaxed);
                } else {
                    let mut g = shared.lock();
                    g.reconnects += 1;
                    g.last_reconnect_us = unix_us();
                    if !client.resumed {
                        client.resumed = true;
                        g.all_resumed_us = g.last_reconnect_us;
                    }
                }
                let churn = churning(args)
                    .then(|| Instant::now() + client.rand_secs(args.churn_min, args.churn_max));
                let fallback = args.home && at != 0;
                let ending = ws_connection(ctx, &mut client, conn, shared, churn, fallback).await;
                client.flush(shared);
                *shared.lock().endings.entry(ending.label()).or_default() += 1;
                match ending {
                    WsEnding::Churn => {
                        let pause = if client.rand01() < args.churn_resume {
                            client.rand_secs(1.0, 10.0)
                        } else {
                            client.leave(shared);
                            client.rand_secs(1.0, 5.0)
                        };
                        tokio::time::sleep(pause).await;
                    }
                    WsEnding::Home => at = 0,
                    _ => {}
                }
            }
            Err(e) => {
                // A 4xx other than 429 is Herald refusing this cursor: the
                // client cannot go on (and the scenario counts it).
                let retry = !e.starts_with("HTTP/1.1 4") || e.starts_with("HTTP/1.1 429");
                failures += 1;
                if !retry || failures > 1200 {
                    if permit.take().is_some() {
                        ctx.failed.fetch_add(1, Ordering::Relaxed);
                        ctx.first_error.lock().get_or_insert(e);
                    } else {
                        let mut g = shared.lock();
                        g.refused += 1;
                        g.last_error = Some(e);
                    }
                    return;
                }
                if permit.is_none() {
                    // Why resumes had to be tried again: `503 replay_busy`,
                    // a refused connect, …, by status line or error kind.
                    let code = e
                        .split("\"code\":\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next());
                    let kind: String = match code {
                        Some(code) => format!("{} {code}", e.split(" {").next().unwrap_or("")),
                        None => e.chars().take(60).collect(),
                    };
                    *shared
                        .lock()
                        .endings
                        .entry(format!("retry: {kind}"))
                        .or_default() += 1;
                }
                at = (at + 1) % ctx.addrs.len();
                // Every node once at once, then 100 ms between tries (+ up
                // to 100 ms so a crowd of clients does not come back at once).
                if failures as usize >= ctx.addrs.len() {
                    let jitter = (client.rand01() * 100.0) as u64;
                    tokio::time::sleep(Duration::from_millis(100 + jitter)).await;
                }
            }
        }
    }
}

/// The one-way subscription URL, resuming from `cursor` when there is one.
fn ws_request(args: &ClientArgs, cursor: Option<&str>) -> Vec<u8> {
    if args.framing == Framing::Centrifugo {
        return crate::centrifugo::request("ws", &args.channel);
    }
    let token = std::env::var("BENCH_TOKEN").map_or(String::new(), |t| format!("&token={t}"));
    let cursor = cursor.map_or(String::new(), |c| format!("&cursor={c}"));
    let offer = match args.deflate {
        true => "sec-websocket-extensions: permessage-deflate\r\n",
        false => "",
    };
    format!(
        "GET /ws?channel={}{token}{cursor} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n{offer}\r\n",
        args.channel
    )
    .into_bytes()
}

/// One connect to `addr` (no retry: the caller decides where next), the
/// request, and the response head.
async fn open_at(
    addr: std::net::SocketAddr,
    request: &[u8],
    index: usize,
    rcvbuf: u32,
) -> Result<(tokio::net::TcpStream, Vec<u8>), String> {
    let sock = socket_for(addr, index)?;
    if rcvbuf > 0 {
        let _ = sock.set_recv_buffer_size(rcvbuf);
    }
    let _ = sock.set_send_buffer_size(4096);
    let mut s = sock
        .connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (head, rest) = request_head(&mut s, request).await?;
    if !head.starts_with(b"HTTP/1.1 101") {
        let text = String::from_utf8_lossy(&head);
        let body = String::from_utf8_lossy(&rest);
        let line = text.lines().next().unwrap_or("");
        return Err(format!("{line} {body}"));
    }
    Ok((s, rest))
}

/// Writes `request` and reads the response head: the head (without its
/// blank line) and whatever came after it.
async fn request_head(
    s: &mut tokio::net::TcpStream,
    request: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), String> {
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
        if let Some(i) = find(&head, b"\r\n\r\n") {
            let rest = head.split_off(i + 4);
            head.truncate(i);
            return Ok((head, rest));
        }
        if head.len() > 16 * 1024 {
            return Err("response head too long".into());
        }
    }
}

/// A server frame's opcode, header length and payload length, once its
/// header is complete (Herald's frames are unmasked).
pub(crate) fn frame_head(b: &[u8]) -> Option<(u8, usize, usize)> {
    let (&b0, &b1) = (b.first()?, b.get(1)?);
    let op = b0 & 0x0F;
    match b1 & 0x7F {
        126 => Some((
            op,
            4,
            u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize,
        )),
        127 => Some((
            op,
            10,
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
        )),
        len => Some((op, 2, len as usize)),
    }
}

/// Reads one connection's frames until it ends, answering pings (a
/// client that never answers is dropped after `ws.pong_timeout`).
async fn ws_connection(
    ctx: &Ctx,
    client: &mut WsClient,
    (mut s, first): (tokio::net::TcpStream, Vec<u8>),
    shared: &Mutex<Shared>,
    churn: Option<Instant>,
    fallback: bool,
) -> WsEnding {
    let _received = Received::watch(&s, shared);
    let mut acc = first;
    let mut buf = vec![0u8; 32 * 1024];
    let mut out: Vec<u8> = Vec::new();
    // A client on a fallback node looks for its own every 0.25–1 s.
    let home_every = Duration::from_millis(250 * (1 + (client.index % 4) as u64));
    let mut home_check = Instant::now() + home_every;
    loop {
        let mut pos = 0;
        let mut closed = None;
        while let Some((op, head, len)) = frame_head(&acc[pos..]) {
            if acc.len() - pos < head + len {
                break;
            }
            client.bytes += (head + len) as u64;
            let payload = &acc[pos + head..pos + head + len];
            let compressed = acc[pos] & 0x40 != 0;
            match op {
                0x1 if compressed => {
                    let ok = INFLATER.with(|cell| {
                        let inflater = &mut *cell.borrow_mut();
                        let text = inflater.inflate(payload)?;
                        client.on_text(text);
                        Some(())
                    });
                    if ok.is_none() {
                        return WsEnding::Error;
                    }
                }
                0x0 | 0x1 => client.on_text(payload),
                0x8 => {
                    closed = Some(
                        payload
                            .get(..2)
                            .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]])),
                    )
                }
                0x9 if len <= 125 => {
                    // A pong, masked (with a zero key, so the payload as is).
                    out.extend_from_slice(&[0x8A, 0x80 | len as u8, 0, 0, 0, 0]);
                    out.extend_from_slice(payload);
                }
                _ => {}
            }
            pos += head + len;
            if closed.is_some() {
                break;
            }
        }
        acc.drain(..pos);
        client.flush(shared);
        if let Some(code) = closed {
            return WsEnding::Closed(code);
        }
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return WsEnding::Error;
            }
            out.clear();
        }
        if let Some(until) = stalled_until(ctx) {
            tokio::time::sleep_until(until.into()).await;
        }
        let tick = match (churn, fallback) {
            (Some(c), true) => Some(c.min(home_check)),
            (Some(c), false) => Some(c),
            (None, true) => Some(home_check),
            (None, false) => None,
        };
        let read = match tick {
            None => s.read(&mut buf).await,
            Some(at) => tokio::select! {
                r = s.read(&mut buf) => r,
                _ = tokio::time::sleep_until(at.into()) => {
                    let now = Instant::now();
                    if churn.is_some_and(|c| now >= c) {
                        // Close as a browser tab does (1000, masked).
                        let _ = s.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8]).await;
                        return WsEnding::Churn;
                    }
                    if fallback && now >= home_check {
                        if ctx.home_up.load(Ordering::Relaxed) {
                            return WsEnding::Home;
                        }
                        home_check = now + home_every;
                    }
                    continue;
                }
            },
        };
        match read {
            Ok(0) => return WsEnding::Eof,
            Err(_) => return WsEnding::Error,
            Ok(k) => acc.extend_from_slice(&buf[..k]),
        }
    }
}

/// `--deflate`: Herald's compressed messages inflated. Herald keeps no
/// context between messages, so each starts from a reset inflater.
struct Inflater {
    state: flate2::Decompress,
    out: Vec<u8>,
}

thread_local! {
    /// One per worker: its clients all run on one thread.
    static INFLATER: std::cell::RefCell<Inflater> = std::cell::RefCell::new(Inflater {
        state: flate2::Decompress::new(false),
        out: Vec::with_capacity(4096),
    });
}

impl Inflater {
    /// `payload` inflated, the trailer the sender removed appended again
    /// (RFC 7692 §7.2.2); `None` if it is not valid DEFLATE.
    fn inflate(&mut self, payload: &[u8]) -> Option<&[u8]> {
        let (d, out) = (&mut self.state, &mut self.out);
        d.reset(false);
        out.clear();
        for input in [payload, &[0x00, 0x00, 0xff, 0xff]] {
            let mut read = 0;
            loop {
                if out.len() == out.capacity() {
                    out.reserve(out.capacity().max(1024));
                }
                let (in0, out0) = (d.total_in(), d.total_out());
                d.decompress_vec(&input[read..], out, flate2::FlushDecompress::Sync)
                    .ok()?;
                read += (d.total_in() - in0) as usize;
                let room = out.len() < out.capacity();
                if read == input.len() && room {
                    break;
                }
                if room && d.total_in() == in0 && d.total_out() == out0 {
                    return None;
                }
            }
        }
        Some(out)
    }
}

/// `--stall-at`: when this worker's clients are in a stall, its end.
fn stalled_until(ctx: &Ctx) -> Option<Instant> {
    let args = &ctx.args;
    if args.stall_at <= 0.0 {
        return None;
    }
    let ready = (*ctx.ready_at.lock())?;
    let t = ready.elapsed().as_secs_f64();
    if t < args.stall_at {
        return None;
    }
    let k = if args.stall_every > 0.0 {
        ((t - args.stall_at) / args.stall_every).floor()
    } else {
        0.0
    };
    let end = args.stall_at + k * args.stall_every + args.stall_for;
    (t < end).then(|| ready + Duration::from_secs_f64(end))
}

/// `--home`: whether the first node is ready, asked every 200 ms.
async fn probe_home(ctx: Arc<Ctx>) {
    loop {
        let up = tokio::time::timeout(Duration::from_secs(1), async {
            let mut s = tokio::net::TcpStream::connect(ctx.addrs[0]).await.ok()?;
            s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut head = [0u8; 12];
            s.read_exact(&mut head).await.ok()?;
            Some(head.starts_with(b"HTTP/1.1 200"))
        })
        .await;
        ctx.home_up
            .store(matches!(up, Ok(Some(true))), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
