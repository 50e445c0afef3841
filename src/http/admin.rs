//! The admin listener (`http.admin_listen`): `/metrics`, `/healthz` and
//! `/readyz` on an address of their own, so that the metrics need not be
//! reachable by clients and a probe never competes with them for a place
//! under `limits.max_connections`; and the admin API
//! ([`admin_api`](super::admin_api)), with `[admin]`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::listener::next_connection;
use super::routes::{Surface, route};
use crate::app::App;

/// Admin connections at once. Scrapers and probes hold one or two each;
/// past this a new connection is closed at once, and the client listener
/// is not affected.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// How long an admin connection may take to send a request head, and may
/// stay idle between requests.
const ADMIN_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// An admin connection is closed after this long even when busy, so that
/// a kept-alive connection cannot hold its place for ever; scrapers
/// reconnect.
const ADMIN_CONNECTION_LIFE: Duration = Duration::from_secs(300);

/// Serves the admin endpoints on `listener` until shutdown.
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEAD_TIMEOUT);
    loop {
        let Some((stream, peer)) = next_connection(&app, &listener, "admin accept").await else {
            break;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "admin listener full; closing a connection");
            continue;
        };
        let (app, http) = (app.clone(), http.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(&app, req, Surface::Admin).await) }
            });
            let conn = http.serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(ADMIN_CONNECTION_LIFE, conn).await {
                tracing::debug!(%peer, "admin connection ended: {e}");
            }
            drop(permit);
        });
    }
}
