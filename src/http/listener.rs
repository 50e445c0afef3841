//! The listener: the accept loop, the refusal of a connection over a limit
//! (see [`limits`](super::limits)), and hand-over of each connection to
//! hyper or, for a connection that opens with an event stream, to
//! [`stream_connection`](super::stream_connection).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::error::ApiError;
use super::limits::{ConnectionLimits, ConnectionPermit};
use super::stream_connection;
use super::write_watch::{WatchedIo, WriteWatch};
use crate::app::App;

/// Accepts connections until shutdown, then waits for them to drain
/// (under `http.shutdown_grace`).
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    let limits = ConnectionLimits::new(&app.config.limits);
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
        let slot = match limits.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(error) => {
                tokio::spawn(refuse(stream, app.clone(), error));
                continue;
            }
        };
        let (app2, http) = (app.clone(), http.clone());
        app.tasks.spawn(async move {
            // A connection that has sent nothing yet is simply closed on
            // shutdown (browsers open spare ones in advance).
            let sse = tokio::select! {
                sse = stream_connection::is_sse_request(&stream) => sse,
                _ = app2.shutdown.cancelled() => return,
            };
            // Each path in its own box: the task holds only the one it takes.
            if sse {
                Box::pin(stream_connection::serve(app2, stream, slot)).await;
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
    slot: ConnectionPermit,
    http: hyper::server::conn::http1::Builder,
) {
    let app2 = app.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        let app = app2.clone();
        req.extensions_mut().insert(slot.clone());
        async move {
            Ok::<_, Infallible>(
                super::routes::route(&app, req, super::routes::Surface::Public).await,
            )
        }
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
    stream_connection::write_response(&mut stream, response, Duration::from_secs(1)).await;
}
