//! The TLS listener (`[tls]`): the same endpoints as `http.listen`, over
//! TLS (rustls), with HTTP/2 or HTTP/1.1 chosen by ALPN. Over HTTP/2 a
//! browser multiplexes every SSE stream and poll to Herald on one
//! connection instead of being held to six HTTP/1.1 connections per
//! origin; a WebSocket is opened on an HTTP/1.1 connection of its own
//! (Herald does not offer RFC 8441's WebSocket over HTTP/2), which browsers
//! do by themselves.
//!
//! A connection is under the node's connection limits like any other: a
//! pending place from accept until its handshake is done (within
//! `http.head_timeout`), then a place under `limits.max_connections` for
//! its life — every HTTP/2 stream of it shares that one place. A
//! connection refused before or at the handshake is closed without an
//! answer: there is no TLS session yet to write one in.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use super::forwarded::TrustedProxies;
use super::limits::{ConnectionLimits, PendingPlace};
use super::listener::{drive, hyper_builder, next_connection, service};
use super::write_watch::{WatchedIo, WriteWatch};
use crate::app::App;
use crate::tls::ALPN_H2;

/// HTTP/2 PING interval on an idle connection, and how long the answer
/// may take before the connection is closed: a client that vanished
/// without closing frees its place within a minute.
const H2_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Accepts TLS connections until shutdown (the plain listener waits for
/// every connection task, these included, under `http.shutdown_grace`).
pub async fn serve(app: Arc<App>, listener: TcpListener, limits: Arc<ConnectionLimits>) {
    loop {
        let Some((stream, peer)) = next_connection(&app, &listener, "TLS accept").await else {
            break;
        };
        let config = app.config();
        limits.follow(&config);
        super::listener::tune_client_socket(&stream, &config.http);
        let Ok(pending) = limits.await_head(Some(peer.ip())) else {
            tracing::debug!(%peer, "TLS connection over the pending limits; closed");
            continue;
        };
        let Some(tls) = app.tls() else {
            // Not reachable: `[tls]` is there for as long as this runs (a
            // reload cannot remove it).
            break;
        };
        let deadline = Instant::now() + config.http.head_timeout;
        app.tasks.spawn(connection(
            app.clone(),
            limits.clone(),
            stream,
            peer,
            tls,
            pending,
            deadline,
        ));
    }
}

/// One TLS connection: the handshake, then HTTP/2 or HTTP/1.1.
async fn connection(
    app: Arc<App>,
    limits: Arc<ConnectionLimits>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Arc<ServerConfig>,
    pending: PendingPlace,
    deadline: Instant,
) {
    let handshake = tokio::select! {
        biased;
        _ = app.shutdown.cancelled() => return,
        () = pending.pushed_out() => return,
        done = tokio::time::timeout_at(deadline, TlsAcceptor::from(tls).accept(stream)) => done,
    };
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake not done within http.head_timeout");
            return;
        }
    };
    let permit = match limits.admit(peer.ip()) {
        Ok(permit) => permit,
        Err(e) => {
            tracing::debug!(%peer, "TLS connection refused: {}", e.message);
            return;
        }
    };
    drop(pending);
    let h2 = stream.get_ref().1.alpn_protocol() == Some(ALPN_H2);
    // The peer is the client: a TLS listener faces browsers, and a proxy
    // header is taken only from `http.trusted_proxies` as on `http.listen`.
    let trusted = Arc::new(TrustedProxies::new(&app.config().http));
    let service = service(app.clone(), trusted, peer.ip(), peer, Some(permit));
    let writes = Arc::new(WriteWatch::default());
    let io = WatchedIo {
        inner: TokioIo::new(stream),
        watch: writes.clone(),
    };
    let config = app.config();
    if h2 {
        let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http.timer(TokioTimer::new())
            .keep_alive_interval(Some(H2_KEEPALIVE))
            .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
            .max_concurrent_streams(config.limits.max_streams_per_connection)
            .max_header_list_size(config.http.max_head_bytes as u32);
        drive!(&app, http.serve_connection(io, service), &writes, peer);
    } else {
        let conn = hyper_builder(&config.http)
            .serve_connection(io, service)
            .with_upgrades();
        drive!(&app, conn, &writes, peer);
    }
}
