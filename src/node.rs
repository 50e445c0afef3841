//! One Herald node: [`Herald::start`] wires the ingest, the hub and its
//! sweeper, replay and the HTTP listener together; [`Herald::stop`] shuts
//! them down in phases; [`run`] is `herald serve`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api_keys::ApiKeys;
use crate::app::{App, Publishing, ReloadError};
use crate::auth::Auth;
use crate::config::{Config, ConfigError};
use crate::http::limits::ConnectionLimits;
use crate::hub::Hub;
use crate::kafka::ingest;
use crate::kafka::producer::Publisher;
use crate::kafka::replay::Replayer;
use crate::metrics::{Metrics, Watermarks};
use crate::push::Push;
use crate::router::Router;

/// Why Herald could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}{}", listen_hint(source))]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the Kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("invalid routes: {0}")]
    Routes(#[from] crate::router::RouterError),
    #[error("invalid [auth]: {0}")]
    Auth(#[from] crate::auth::AuthConfigError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("[push]: {0}")]
    Push(#[from] crate::push::StartError),
}

/// How long stopping waits for published records still on their way to
/// Kafka (their requests have been answered or dropped by then).
const PUBLISH_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// A running Herald: its address and the means to stop it.
pub struct Herald {
    local_addr: SocketAddr,
    /// Where the admin listener (`http.admin_listen`) took its port.
    admin_addr: Option<SocketAddr>,
    /// Where the TLS listener (`[tls]`) took its port.
    tls_addr: Option<SocketAddr>,
    app: Arc<App>,
    server: tokio::task::JoinHandle<()>,
    ingest: std::thread::JoinHandle<()>,
    /// The Web Push sender, when `[push]` is configured.
    push_sender: Option<tokio::task::JoinHandle<()>>,
}

/// What to do about the commonest reason a listener cannot bind.
fn listen_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another process, perhaps another Herald, holds it: stop it, or choose another address with --listen or http.listen)"
        }
        _ => "",
    }
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
        let tls = match &config.tls {
            None => None,
            Some(tls) => {
                let server_config = crate::tls::server_config(tls).map_err(ConfigError::from)?;
                let bound = async {
                    let l = TcpListener::bind(tls.listen).await?;
                    let a = l.local_addr()?;
                    Ok((l, a))
                };
                let (listener, addr) = bound.await.map_err(|source| StartError::Listen {
                    addr: tls.listen,
                    source,
                })?;
                Some((listener, addr, server_config))
            }
        };
        let admin = match config.http.admin_listen {
            None => None,
            Some(addr) => {
                let bound = async {
                    let l = TcpListener::bind(addr).await?;
                    let a = l.local_addr()?;
                    Ok((l, a))
                };
                Some(
                    bound
                        .await
                        .map_err(|source| StartError::Listen { addr, source })?,
                )
            }
        };
        let auth = match &config.auth {
            Some(c) => Auth::new(c)?,
            None => Auth::open(),
        };
        if auth.is_enabled() {
            tracing::info!("{auth}");
        } else {
            tracing::warn!("{auth}");
        }
        let metrics = Arc::new(Metrics::new());
        crate::http::error::seed_metrics(&metrics);
        let router = Arc::new(Router::new(&config.routes)?);
        let publishing = match &config.publish {
            None => None,
            Some(publish) => {
                // Read again here: the key file may have changed since the
                // config was validated.
                let keys = ApiKeys::new(publish.load_keys()?);
                let publisher = Publisher::new(&config.kafka, publish, metrics.clone())?;
                // The topics a publish can reach by name, from the first
                // scrape (a route's topic pattern adds its topics as they
                // are published to).
                for topic in router.fixed_topics() {
                    metrics.published.with_label_values(&[topic]);
                }
                tracing::info!(api_keys = keys.len(), "POST /publish is enabled");
                Some(Publishing { publisher, keys })
            }
        };
        let push = match &config.push {
            None => None,
            Some(push) => {
                let push = Push::new(&config.kafka, push, metrics.clone())?;
                tracing::info!(
                    public_key = push.keys.public_key_base64(),
                    group = push.config.group_id,
                    topic = push.config.subscriptions_topic,
                    "Web Push is enabled"
                );
                Some(Arc::new(push))
            }
        };
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
        hub.set_replay_source(Arc::new(Replayer::new(
            config.kafka.clone(),
            config.replay.clone(),
            metrics.clone(),
        )));
        tokio::spawn(hub.clone().run_sweeper(shutdown.clone()));
        let push_sender = match &push {
            None => None,
            Some(push) => Some(
                push.start(&config.kafka, hub.clone(), shutdown.clone())
                    .map_err(|e| StartError::Push(e.into()))?,
            ),
        };
        let admin_keys = match &config.admin {
            None => None,
            Some(admin) => Some(ApiKeys::new(admin.load_keys()?)),
        };
        let limits = ConnectionLimits::new(&config.limits);
        let (tls_listener, tls_addr, tls_config) = match tls {
            Some((l, a, c)) => (Some(l), Some(a), Some(c)),
            None => (None, None, None),
        };
        let app = Arc::new(App::new(
            config, auth, hub, metrics, watermarks, shutdown, dev_info, publishing, push,
            tls_config, admin_keys,
        ));
        let server = tokio::spawn(crate::http::listener::serve(
            app.clone(),
            listener,
            limits.clone(),
        ));
        tracing::info!(%local_addr, "listening");
        if let (Some(listener), Some(addr)) = (tls_listener, tls_addr) {
            tokio::spawn(crate::http::tls::serve(app.clone(), listener, limits));
            tracing::info!(%addr, "TLS listener (HTTP/2 and HTTP/1.1)");
        }
        let admin_addr = admin.map(|(listener, addr)| {
            tokio::spawn(crate::http::admin::serve(app.clone(), listener));
            tracing::info!(
                %addr,
                admin_api = app.admin_keys.is_some(),
                "admin listener (/metrics, /healthz, /readyz, and /admin/… with [admin])"
            );
            addr
        });
        Ok(Herald {
            local_addr,
            admin_addr,
            tls_addr,
            app,
            server,
            ingest,
            push_sender,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address, when `http.admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Where the TLS listener took its port (`[tls]`).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    pub fn hub(&self) -> &Hub {
        &self.app.hub
    }

    /// Where `POST /admin/reload` (and [`run`]'s SIGHUP) read the config
    /// again from.
    pub fn set_config_source(&self, source: crate::app::ConfigSource) {
        self.app.set_config_source(source);
    }

    /// Applies a new config to the running node, or refuses it whole
    /// (see [`App::reload`]); logs either way.
    pub fn reload(&self, config: Config) -> Result<(), ReloadError> {
        self.app.reload(config)
    }

    /// Shuts down in phases: stop accepting, tell streaming clients to
    /// reconnect elsewhere, let connections drain for `http.shutdown_grace`,
    /// flush the publish producer, then stop the ingest.
    pub async fn stop(self) {
        self.app.shutdown.cancel();
        let _ = self.server.await;
        if let Some(sender) = self.push_sender {
            let _ = sender.await;
        }
        let app = self.app.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(publishing) = &app.publishing {
                publishing.publisher.flush(PUBLISH_FLUSH);
            }
        })
        .await;
        let ingest = self.ingest;
        let _ = tokio::task::spawn_blocking(move || ingest.join()).await;
    }
}

/// Runs Herald until `shutdown` is cancelled (by a signal, in `main`).
/// Each SIGHUP calls `load` for the config again (the file as `main`
/// reads it, with its command-line overrides and validation) and reloads
/// it; a config `load` refuses is logged, and the running one stays.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    load: impl Fn() -> Result<Config, String> + Send + Sync + 'static,
) -> Result<(), StartError> {
    let mut hangups = crate::shutdown::hangups();
    let herald = Herald::start(config).await?;
    herald.set_config_source(Arc::new(load));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(()) = hangups.recv() => {
                tracing::info!("SIGHUP received: reloading the config");
                let app = herald.app.clone();
                // Reads files: off the runtime's threads.
                let _ = tokio::task::spawn_blocking(move || app.reload_from_source()).await;
            }
        }
    }
    tracing::info!("shutting down");
    herald.stop().await;
    Ok(())
}
