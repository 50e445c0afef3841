//! HTTP: the accept loop, connection limits, request routing, JSON errors,
//! `/metrics`, `/healthz`, `/readyz`, and phased shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hub::{Hub, SubscribeError};
use crate::kafka::ingest::{self, Watermarks};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::{sse_http, transport};

/// Response body type for every route: full bodies and event streams.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Shared state of one running Herald.
pub struct App {
    pub config: Config,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    pub watermarks: Arc<Watermarks>,
    /// Cancelled when the server starts shutting down; every long-lived
    /// stream selects on it.
    pub shutdown: CancellationToken,
    /// Extra JSON served at `/dev/info` by `herald dev`.
    pub dev_info: Option<serde_json::Value>,
    /// Every connection task, plain HTTP and upgraded WebSocket alike:
    /// shutdown waits for them (under `http.shutdown_grace`).
    pub tasks: TaskTracker,
    /// Long polls waiting at once (`limits.max_long_polls`); a poll that
    /// finds no permit gets `503 too_many_long_polls`.
    pub long_polls: Arc<Semaphore>,
}

/// A connection's place under `limits.max_connections`, in each request's
/// extensions: an upgraded WebSocket keeps it after its HTTP connection
/// has handed the socket over.
#[derive(Clone)]
pub struct ConnectionSlot {
    _permit: Arc<OwnedSemaphorePermit>,
    _per_ip: Option<Arc<IpSlot>>,
}

/// Open connections per client address, for `limits.max_connections_per_ip`.
#[derive(Default)]
struct PerIp {
    counts: parking_lot::Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's count under its address; released on drop.
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn try_acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut counts = self.counts.lock();
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// A request Herald refuses, rendered as `{"error":{"code","message"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// The JSON error response, counted in `herald_http_errors_total`; the
    /// refusals a client should retry carry `Retry-After`.
    fn into_response(self, metrics: &Metrics) -> Response<Body> {
        metrics
            .http_errors
            .with_label_values(&[self.status.as_str(), self.code])
            .inc();
        let body =
            serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string();
        let mut response = full(self.status, "application/json", body);
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<SubscribeError> for ApiError {
    fn from(e: SubscribeError) -> Self {
        let (status, code) = match &e {
            SubscribeError::NoChannels => (StatusCode::BAD_REQUEST, "missing_channel"),
            SubscribeError::TooManyChannels { .. } => {
                (StatusCode::BAD_REQUEST, "too_many_channels")
            }
            SubscribeError::InvalidChannel(_) => (StatusCode::BAD_REQUEST, "invalid_channel"),
            SubscribeError::UnknownChannel(_) => (StatusCode::BAD_REQUEST, "unknown_channel"),
            SubscribeError::CursorTopic { .. } => (StatusCode::BAD_REQUEST, "invalid_cursor"),
            SubscribeError::CursorPartition { .. } => (StatusCode::BAD_REQUEST, "invalid_cursor"),
            SubscribeError::CursorTooOld { .. } => (StatusCode::CONFLICT, "cursor_expired"),
            SubscribeError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            SubscribeError::ReplayTooLarge { .. } => (StatusCode::CONFLICT, "replay_too_large"),
            SubscribeError::ReplayBusy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "replay_busy"),
            SubscribeError::Kafka(_) => (StatusCode::SERVICE_UNAVAILABLE, "kafka_unavailable"),
            SubscribeError::SinceNeedsKafka => (StatusCode::BAD_REQUEST, "since_unsupported"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

pub fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Why Herald could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the Kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("invalid routes: {0}")]
    Routes(#[from] crate::router::RouterError),
}

/// A running Herald: its address and the means to stop it.
pub struct Herald {
    local_addr: SocketAddr,
    app: Arc<App>,
    server: tokio::task::JoinHandle<()>,
    ingest: std::thread::JoinHandle<()>,
}

impl Herald {
    /// Binds the listener, starts the ingest, the hub sweeper and the HTTP
    /// server, and returns at once. Call [`Herald::stop`] to shut down.
    pub async fn start(config: Config) -> Result<Herald, StartError> {
        Self::start_with(config, None).await
    }

    pub(crate) async fn start_with(
        config: Config,
        dev_info: Option<serde_json::Value>,
    ) -> Result<Herald, StartError> {
        let listener = TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.http.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.http.listen,
            source,
        })?;
        let metrics = Arc::new(Metrics::new());
        let router = Arc::new(Router::new(&config.routes)?);
        let hub = Hub::new(
            config.hub.clone(),
            config.limits.max_channels_per_connection,
            router,
            metrics.clone(),
        );
        let shutdown = CancellationToken::new();
        let watermarks = Arc::new(Watermarks::default());
        let ingest = ingest::spawn(
            &config.kafka,
            hub.clone(),
            metrics.clone(),
            watermarks.clone(),
            shutdown.clone(),
        )?;
        hub.set_replay_source(Arc::new(crate::kafka::replay::Replayer::new(
            config.kafka.clone(),
            config.replay.clone(),
            hub.router().clone(),
            metrics.clone(),
        )));
        tokio::spawn(hub.clone().run_sweeper(shutdown.clone()));
        let app = Arc::new(App {
            long_polls: Arc::new(Semaphore::new(config.limits.max_long_polls)),
            config,
            hub,
            metrics,
            watermarks,
            shutdown,
            dev_info,
            tasks: TaskTracker::new(),
        });
        let server = tokio::spawn(serve(app.clone(), listener));
        tracing::info!(%local_addr, "listening");
        Ok(Herald {
            local_addr,
            app,
            server,
            ingest,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn hub(&self) -> &Hub {
        &self.app.hub
    }

    /// Shuts down in phases: stop accepting, tell streaming clients to
    /// reconnect elsewhere, let connections drain for `http.shutdown_grace`,
    /// then stop the ingest.
    pub async fn stop(self) {
        self.app.shutdown.cancel();
        let _ = self.server.await;
        let ingest = self.ingest;
        let _ = tokio::task::spawn_blocking(move || ingest.join()).await;
    }
}

/// Runs Herald until `shutdown` is cancelled (by a signal, in `main`).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let herald = Herald::start(config).await?;
    shutdown.cancelled().await;
    tracing::info!("shutting down");
    herald.stop().await;
    Ok(())
}

async fn serve(app: Arc<App>, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(app.config.limits.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let http = hyper::server::conn::http1::Builder::new();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = app.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        if let Some(bytes) = app.config.http.send_buffer_bytes {
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(bytes);
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let message = format!(
                "this Herald node holds its limit of {} connections; retry later or elsewhere",
                app.config.limits.max_connections
            );
            let error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                message,
            );
            tokio::spawn(refuse(stream, app.clone(), error));
            continue;
        };
        let per_ip_max = app.config.limits.max_connections_per_ip;
        let ip_slot = if per_ip_max == 0 {
            None
        } else if let Some(slot) = per_ip.try_acquire(peer.ip(), per_ip_max) {
            Some(Arc::new(slot))
        } else {
            let message = format!(
                "{} holds its limit of {per_ip_max} connections to this node (limits.max_connections_per_ip)",
                peer.ip()
            );
            let error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections_per_ip",
                message,
            );
            tokio::spawn(refuse(stream, app.clone(), error));
            continue;
        };
        let slot = ConnectionSlot {
            _permit: Arc::new(permit),
            _per_ip: ip_slot,
        };
        let (app2, http) = (app.clone(), http.clone());
        app.tasks.spawn(async move {
            // A connection that has sent nothing yet is simply closed on
            // shutdown (browsers open spare ones in advance).
            let sse = tokio::select! {
                sse = sse_http::is_sse_request(&stream) => sse,
                _ = app2.shutdown.cancelled() => return,
            };
            // Each path in its own box: the task holds only the one it takes.
            if sse {
                Box::pin(sse_http::serve(app2, stream, slot)).await;
            } else {
                Box::pin(serve_http(app2, stream, peer, slot, http)).await;
            }
        });
    }
    drop(listener);
    app.tasks.close();
    let grace = app.config.http.shutdown_grace;
    tokio::select! {
        _ = app.tasks.wait() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "shutdown grace period ran out; dropping remaining connections");
        }
    }
}

/// Serves a connection with hyper: any request, keep-alive, upgrades.
async fn serve_http(
    app: Arc<App>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
    http: hyper::server::conn::http1::Builder,
) {
    let app2 = app.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        let app = app2.clone();
        req.extensions_mut().insert(slot.clone());
        async move { Ok::<_, Infallible>(route(&app, req).await) }
    });
    let writes = Arc::new(WriteWatch::default());
    let io = WatchedIo {
        inner: TokioIo::new(stream),
        watch: writes.clone(),
    };
    let conn = http.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let write_timeout = app.config.http.write_timeout;
    // On shutdown, finish the request in flight (streams end themselves)
    // and close; an upgraded socket lives on in its own task (with its own
    // ping timeout).
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = writes.stalled_for(write_timeout) => {
            tracing::debug!(%peer, "closing a connection that took no data for {write_timeout:?}");
            return;
        }
        _ = app.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

/// When writes to a socket last made no progress.
#[derive(Default)]
struct WriteWatch {
    /// When a write started waiting for the socket, if one is waiting.
    blocked_since: parking_lot::Mutex<Option<Instant>>,
}

impl WriteWatch {
    fn observe<T>(&self, result: &Poll<T>) {
        let mut since = self.blocked_since.lock();
        match result {
            Poll::Pending => {
                since.get_or_insert_with(Instant::now);
            }
            Poll::Ready(_) => *since = None,
        }
    }

    /// Resolves once a write has waited longer than `limit`.
    async fn stalled_for(&self, limit: Duration) {
        let check = (limit / 4).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(check).await;
            if self
                .blocked_since
                .lock()
                .is_some_and(|t| t.elapsed() >= limit)
            {
                return;
            }
        }
    }
}

/// The connection's socket, noting when writes wait on a client that does
/// not read.
struct WatchedIo<T> {
    inner: T,
    watch: Arc<WriteWatch>,
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch.observe(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch.observe(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch.observe(&result);
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Over a connection limit: answer with the error and close, without
/// reading the request.
async fn refuse(mut stream: TcpStream, app: Arc<App>, error: ApiError) {
    // Read the request head first (briefly, bounded): a client that is
    // still writing when the answer arrives may take it for garbage.
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let response = error.into_response(&app.metrics);
    sse_http::write_response(&mut stream, response, Duration::from_secs(1)).await;
}

async fn route(app: &Arc<App>, mut req: Request<Incoming>) -> Response<Body> {
    let result = match (req.method(), req.uri().path()) {
        (&Method::GET, "/sse") => transport::sse::handle(app, &req).await,
        (&Method::GET, "/ws") => transport::ws::handle(app, &mut req).await,
        (&Method::GET, "/poll") => transport::poll::handle(app, &req).await,
        (&Method::GET, "/metrics") => Ok(metrics(app)),
        (&Method::GET, "/herald.js") => Ok(herald_js()),
        (&Method::GET, "/healthz") => Ok(full(
            StatusCode::OK,
            "application/json",
            r#"{"status":"ok"}"#,
        )),
        (&Method::GET, "/readyz") => Ok(readyz(app)),
        (&Method::GET, "/") if app.config.http.demo_page => Ok(full(
            StatusCode::OK,
            "text/html; charset=utf-8",
            include_str!("../static/index.html"),
        )),
        (&Method::GET, "/dev/info") if app.dev_info.is_some() => Ok(full(
            StatusCode::OK,
            "application/json",
            app.dev_info
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_default(),
        )),
        (&Method::OPTIONS, _) => Ok(full(StatusCode::NO_CONTENT, "text/plain", "")),
        (_, "/sse" | "/ws" | "/poll" | "/metrics" | "/healthz" | "/readyz") => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed on {}", req.method(), req.uri().path()),
        )),
        (_, path) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such endpoint: {path}"),
        )),
    };
    finish_response(app, result)
}

/// A handler's result as the response to send: errors rendered as JSON
/// (and counted), CORS headers added.
pub(crate) fn finish_response(
    app: &App,
    result: Result<Response<Body>, ApiError>,
) -> Response<Body> {
    let mut response = result.unwrap_or_else(|e| e.into_response(&app.metrics));
    let origin = &app.config.http.cors_allow_origin;
    if !origin.is_empty()
        && let Ok(value) = HeaderValue::from_str(origin)
    {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("last-event-id, authorization, content-type"),
        );
    }
    response
}

/// The browser client, `client/herald.js`, built into the binary.
fn herald_js() -> Response<Body> {
    let mut response = full(
        StatusCode::OK,
        "text/javascript; charset=utf-8",
        include_str!("../client/herald.js"),
    );
    // Short enough that an upgraded Herald's client reaches browsers soon.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

fn readyz(app: &App) -> Response<Body> {
    if app.hub.is_ready() {
        full(StatusCode::OK, "application/json", r#"{"status":"ready"}"#)
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "Kafka partitions are not assigned or their positions are not known yet",
        )
        .into_response(&app.metrics)
    }
}

fn metrics(app: &App) -> Response<Body> {
    // Lag: the high watermark from librdkafka's latest statistics minus the
    // ingest's live position.
    for (topic, partition, position) in app.hub.positions().iter() {
        if let Some((_, high)) = app.watermarks.get(topic, partition) {
            app.metrics
                .partition_lag
                .with_label_values(&[&**topic, &partition.to_string()])
                .set((high - position).max(0));
        }
    }
    full(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        app.metrics.render(),
    )
}
