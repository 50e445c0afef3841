//! Typed, strict configuration: TOML in, validated [`Config`] out.
//!
//! Unknown keys are rejected, durations are written as durations (`"15s"`),
//! and cross-field rules are checked at load, so a bad file fails at start
//! with a message naming the key instead of misbehaving later. Every key and
//! its default is documented in `config/herald.toml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::api_keys::key_problem;
use crate::auth::{Auth, AuthConfig, AuthConfigError};
use crate::push::keys::VapidKeys;
use crate::router::{RouteSpec, Router, RouterError};
pub use crate::tls::TlsConfig;

/// Why a configuration could not be loaded. The message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: `{key}` = {value}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error("invalid config: {0}")]
    Auth(#[from] AuthConfigError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub sse: SseConfig,
    #[serde(default)]
    pub ws: WsConfig,
    #[serde(default)]
    pub poll: PollConfig,
    #[serde(default)]
    pub hub: HubConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub replay: ReplayConfig,
    /// Who may read which channel (`[auth]`); absent, every channel is
    /// public.
    pub auth: Option<AuthConfig>,
    /// Web Push (`[push]`); absent, `/push/…` answers `404`.
    pub push: Option<PushConfig>,
    /// `POST /publish`: off (the endpoint answers `404`) unless the
    /// section is present.
    pub publish: Option<PublishConfig>,
    /// A TLS listener (HTTP/2 and HTTP/1.1), besides `http.listen`; absent,
    /// none.
    pub tls: Option<TlsConfig>,
    /// How Herald logs (`[log]`): text or JSON lines, and the access log.
    #[serde(default)]
    pub log: LogConfig,
    /// The admin API on `http.admin_listen` (`/admin/…`): off (`404`)
    /// unless the section is present with at least one key.
    pub admin: Option<AdminConfig>,
    /// Routing rules, `[[route]]` in the file.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSpec>,
}

/// Where the ingest starts reading a partition it has no other position for.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// The live end (high watermark) at start-up: only new records.
    #[default]
    Latest,
    /// The oldest record Kafka still holds.
    Earliest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// `client.id` shown in broker logs and quotas.
    #[serde(default = "defaults::client_id")]
    pub client_id: String,
    /// Where partitions known at start-up are read from. Partitions and
    /// topics that appear later are always read from their beginning, so
    /// nothing produced to them is missed.
    #[serde(default)]
    pub start: StartAt,
    /// With `start = "latest"`: records per partition read back at start-up
    /// into the hub's history (not delivered to live subscribers), so
    /// clients resuming right after a restart are served from memory.
    #[serde(default = "defaults::warm_history")]
    pub warm_history: u64,
    /// How often topic metadata is re-read to find new topics (for
    /// `topic_regex` routes) and new partitions. Each refresh is one metadata
    /// request.
    #[serde(default = "defaults::metadata_refresh", with = "humantime_serde")]
    pub metadata_refresh: Duration,
    /// How often librdkafka reports watermarks, which feed
    /// `herald_partition_lag`.
    #[serde(default = "defaults::stats_interval", with = "humantime_serde")]
    pub stats_interval: Duration,
    /// Extra librdkafka properties (`security.protocol`, `sasl.*`, `ssl.*`,
    /// `fetch.wait.max.ms`, …), passed through unchanged.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Longest duration any key takes: deadlines are computed as `now + d`,
/// which a duration near `u64::MAX` seconds would overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Longest `sse.write_delay` and `ws.write_delay`: each adds up to this
/// much to every message's latency.
pub const MAX_WRITE_DELAY: Duration = Duration::from_secs(1);

impl Config {
    /// Every duration key is at most [`MAX_DURATION`].
    fn check_durations(&self) -> Result<(), ConfigError> {
        let mut all: Vec<(&str, Duration)> = vec![
            ("kafka.metadata_refresh", self.kafka.metadata_refresh),
            ("kafka.stats_interval", self.kafka.stats_interval),
            ("http.write_timeout", self.http.write_timeout),
            ("http.shutdown_grace", self.http.shutdown_grace),
            ("http.head_timeout", self.http.head_timeout),
            ("http.keepalive_timeout", self.http.keepalive_timeout),
            ("sse.heartbeat", self.sse.heartbeat),
            ("sse.retry", self.sse.retry),
            ("sse.write_delay", self.sse.write_delay),
            ("ws.ping_interval", self.ws.ping_interval),
            ("ws.write_delay", self.ws.write_delay),
            ("ws.pong_timeout", self.ws.pong_timeout),
            ("poll.max_wait", self.poll.max_wait),
            ("hub.history_age", self.hub.history_age),
            ("replay.timeout", self.replay.timeout),
        ];
        if let Some(push) = &self.push {
            all.extend([
                ("push.ttl", push.ttl),
                ("push.request_timeout", push.request_timeout),
                ("push.retry_deadline", push.retry_deadline),
                ("push.retry_backoff", push.retry_backoff),
                ("push.body_timeout", push.body_timeout),
            ]);
        }
        if let Some(publish) = &self.publish {
            all.extend([
                ("publish.timeout", publish.timeout),
                ("publish.body_timeout", publish.body_timeout),
            ]);
        }
        if let Some(auth) = &self.auth {
            all.extend([
                ("auth.leeway", auth.leeway),
                ("auth.jwks_timeout", auth.jwks_timeout),
                ("auth.jwks_refresh_interval", auth.jwks_refresh_interval),
                (
                    "auth.jwks_min_refetch_interval",
                    auth.jwks_min_refetch_interval,
                ),
            ]);
        }
        for (key, value) in all {
            if value > MAX_DURATION {
                return Err(ConfigError::Invalid {
                    key: key.to_owned(),
                    value: humantime::format_duration(value).to_string(),
                    reason: "must be at most 365 days".to_owned(),
                });
            }
        }
        Ok(())
    }
}

impl KafkaConfig {
    /// librdkafka's own checks of `brokers`, `client_id` and every
    /// `[kafka.options]` entry (unknown property, invalid value), made by
    /// building a client configuration without creating a client, so
    /// `herald check` refuses what `serve` would and no connection is made.
    fn check_client_options(&self) -> Result<(), ConfigError> {
        let mut cc = rdkafka::ClientConfig::new();
        cc.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id);
        for (k, v) in &self.options {
            cc.set(k, v);
        }
        match cc.create_native_config() {
            Ok(_) => Ok(()),
            Err(rdkafka::error::KafkaError::ClientConfig(_, reason, key, value)) => {
                let key = match key.as_str() {
                    "bootstrap.servers" => "kafka.brokers".to_owned(),
                    "client.id" => "kafka.client_id".to_owned(),
                    other => format!("kafka.options.\"{other}\""),
                };
                Err(ConfigError::Invalid {
                    key,
                    value: format!("{value:?}"),
                    reason: format!("librdkafka: {reason}"),
                })
            }
            Err(e) => Err(ConfigError::Invalid {
                key: "kafka.options".to_owned(),
                value: String::new(),
                reason: format!("librdkafka: {e}"),
            }),
        }
    }
}

/// `[push]`: Web Push.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// The VAPID private key, a PKCS#8 PEM file (`herald push keygen --out
    /// FILE` writes one). Every node of a deployment needs the same key:
    /// browsers' subscriptions are bound to its public half. A missing,
    /// unreadable or invalid file is a config error. No default.
    pub vapid_private_key_file: std::path::PathBuf,
    /// Who runs this server, for push services that need to reach the
    /// operator (RFC 8292 §2.1): a `mailto:` or `https:` URI. No default.
    pub vapid_subject: String,
    /// The compacted topic that holds every registered subscription, keyed
    /// by subscription id; created (`cleanup.policy=compact`) if missing.
    /// Kafka is the only place subscriptions are kept.
    #[serde(default = "defaults::subscriptions_topic")]
    pub subscriptions_topic: String,
    /// Partitions of the subscriptions topic when Herald creates it.
    #[serde(default = "defaults::one")]
    pub subscriptions_topic_partitions: i32,
    /// Replication factor of the subscriptions topic when Herald creates
    /// it; `-1` is the broker's `default.replication.factor`.
    #[serde(default = "defaults::minus_one")]
    pub subscriptions_topic_replication: i32,
    /// The consumer group through which the nodes share the sending: each
    /// partition of the routed topics is pushed by one node at a time.
    #[serde(default = "defaults::push_group_id")]
    pub group_id: String,
    /// Hosts a subscription's endpoint may name (`*.example.com` matches
    /// any subdomain; `host:port` pins a port). Anything else is `400
    /// endpoint_not_allowed`: Herald sends requests to these hosts only.
    #[serde(default = "defaults::allowed_endpoint_hosts")]
    pub allowed_endpoint_hosts: Vec<String>,
    /// Accept `http://` endpoints (a local push service in tests); off,
    /// only `https://` ones.
    #[serde(default)]
    pub allow_http_endpoints: bool,
    /// How long a push service keeps a message for a browser that is
    /// offline (the `TTL` header, whole seconds).
    #[serde(default = "defaults::push_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// The `Urgency` header (RFC 8030 §5.3): `very-low`, `low`, `normal`,
    /// `high`.
    #[serde(default)]
    pub urgency: Urgency,
    /// One request to a push service, connect included; past it the
    /// attempt counts as failed and is retried.
    #[serde(default = "defaults::push_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests in flight at once to one push service (scheme, host and
    /// port of the endpoint).
    #[serde(default = "defaults::push_max_in_flight_per_service")]
    pub max_in_flight_per_service: usize,
    /// Pushes waiting for one push service (sending or backing off). At
    /// the limit, while the service is healthy the node waits for room
    /// (reading records more slowly, losing nothing); while it is failing
    /// (its last attempt timed out or got a 429/5xx) a push to it is
    /// dropped (counted, logged), so a service that is down cannot hold up
    /// the others.
    #[serde(default = "defaults::push_max_queued_per_service")]
    pub max_queued_per_service: usize,
    /// Pushes not yet finished on this node, every service together; at
    /// the limit the node stops reading records until some finish.
    #[serde(default = "defaults::push_max_pending")]
    pub max_pending: usize,
    /// Attempts of one push (the first included) before it is dropped.
    #[serde(default = "defaults::push_max_attempts")]
    pub max_attempts: u32,
    /// How long one push may keep being retried, from its first attempt.
    #[serde(default = "defaults::push_retry_deadline", with = "humantime_serde")]
    pub retry_deadline: Duration,
    /// The first retry's delay; each later one doubles it (with jitter),
    /// up to 30 s. A `Retry-After` longer than the delay wins.
    #[serde(default = "defaults::push_retry_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Channels one subscription may list; more is `400 too_many_channels`.
    #[serde(default = "defaults::push_max_channels_per_subscription")]
    pub max_channels_per_subscription: usize,
    /// Subscriptions one channel may have; a registration past it is `409
    /// too_many_subscriptions`.
    #[serde(default = "defaults::push_max_subscriptions_per_channel")]
    pub max_subscriptions_per_channel: usize,
    /// Subscriptions in all (the table every node keeps in memory); a
    /// registration past it is `409 too_many_subscriptions`.
    #[serde(default = "defaults::push_max_subscriptions")]
    pub max_subscriptions: usize,
    /// Largest registration body, in bytes (`413 body_too_large`).
    #[serde(default = "defaults::push_max_body_bytes")]
    pub max_body_bytes: usize,
    /// How long a client may take to send a registration body (`408
    /// body_timeout`).
    #[serde(default = "defaults::push_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
}

impl PushConfig {
    /// A `[push]` with these keys and every other key at its default.
    pub fn new(vapid_private_key_file: &Path, vapid_subject: &str) -> PushConfig {
        serde_json::from_value(serde_json::json!({
            "vapid_private_key_file": vapid_private_key_file,
            "vapid_subject": vapid_subject,
        }))
        .expect("the other keys of [push] have defaults")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, value: &dyn std::fmt::Debug, reason: &str| ConfigError::Invalid {
            key: format!("push.{key}"),
            value: format!("{value:?}"),
            reason: reason.to_owned(),
        };
        if !crate::record::is_valid_topic(&self.subscriptions_topic) {
            return Err(invalid(
                "subscriptions_topic",
                &self.subscriptions_topic,
                "not a valid Kafka topic name (1 to 249 of [A-Za-z0-9._-])",
            ));
        }
        if self.subscriptions_topic_partitions < 1 {
            return Err(invalid(
                "subscriptions_topic_partitions",
                &self.subscriptions_topic_partitions,
                "must be at least 1",
            ));
        }
        if self.subscriptions_topic_replication == 0 || self.subscriptions_topic_replication < -1 {
            return Err(invalid(
                "subscriptions_topic_replication",
                &self.subscriptions_topic_replication,
                "must be at least 1, or -1 for the broker's default",
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(invalid("group_id", &self.group_id, "must not be empty"));
        }
        for host in &self.allowed_endpoint_hosts {
            if !crate::push::endpoint::is_host_pattern(host) {
                return Err(invalid(
                    "allowed_endpoint_hosts",
                    host,
                    "a host name or IP address, optionally `*.` in front (any subdomain) and `:port` behind",
                ));
            }
        }
        if self.ttl > Duration::from_secs(28 * 24 * 3600) {
            return Err(invalid(
                "ttl",
                &self.ttl,
                "at most 28 days (push services keep messages no longer)",
            ));
        }
        if self.request_timeout < Duration::from_millis(100) {
            return Err(invalid(
                "request_timeout",
                &self.request_timeout,
                "must be at least 100ms",
            ));
        }
        for (key, value) in [
            ("max_in_flight_per_service", self.max_in_flight_per_service),
            ("max_queued_per_service", self.max_queued_per_service),
            ("max_pending", self.max_pending),
            ("max_attempts", self.max_attempts as usize),
            (
                "max_channels_per_subscription",
                self.max_channels_per_subscription,
            ),
            (
                "max_subscriptions_per_channel",
                self.max_subscriptions_per_channel,
            ),
            ("max_subscriptions", self.max_subscriptions),
        ] {
            if value == 0 {
                return Err(invalid(key, &value, "must be at least 1"));
            }
        }
        if self.max_body_bytes < 256 {
            return Err(invalid(
                "max_body_bytes",
                &self.max_body_bytes,
                "must be at least 256 (a browser subscription alone is about 200 bytes)",
            ));
        }
        Ok(())
    }
}

/// RFC 8030 §5.3 `Urgency`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Urgency {
    VeryLow,
    Low,
    #[default]
    Normal,
    High,
}

impl Urgency {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Where `/metrics` is served instead of on `listen`, with `/healthz`
    /// and `/readyz` (which `listen` keeps too, for load balancers), so
    /// that the metrics need not be public. Unset: everything on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// Origins (`https://app.example.com`, scheme, host and port as a
    /// browser sends them) whose pages may use Herald: a WebSocket upgrade,
    /// stream or poll with another `Origin` is `403 origin_not_allowed`,
    /// and CORS headers name only these. `"*"` admits every origin (for
    /// public data only). Requests without `Origin` and from Herald's own
    /// pages are always admitted.
    pub allowed_origins: Vec<String>,
    /// Serve the demo page at `/`.
    pub demo_page: bool,
    /// SO_SNDBUF for client sockets, in bytes; unset leaves the kernel's
    /// autotuning (up to several MiB per socket). A small value bounds the
    /// kernel memory a stalled client can pin and makes it count as slow
    /// sooner.
    pub send_buffer_bytes: Option<usize>,
    /// TCP_NOTSENT_LOWAT for client sockets, in bytes (0: the kernel's
    /// default, no bound): how much written data may wait in a socket's
    /// send buffer before it has been sent. Without it the kernel queues up
    /// to `net.ipv4.tcp_wmem`'s maximum (4 MiB by default, some 14,000
    /// messages) for a client whose connection delivers slower than records
    /// arrive, every write succeeds, and the client falls seconds behind
    /// without Herald knowing. Bounded, a lagging client's writes wait, its
    /// queue fills and it is cut off as slow, to resume from its cursor.
    /// Data in flight (sent, not yet acknowledged) is not bounded by it.
    pub notsent_lowat_bytes: usize,
    /// A connection whose socket takes no data for this long while Herald has
    /// data to send is closed: a client that stopped reading (or vanished
    /// without closing) cannot hold its connection and buffers forever.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// On SIGTERM, how long open connections get to finish after they have
    /// been told to reconnect elsewhere. Past it they are dropped and a
    /// warning is logged.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long a new connection may take, from accept, to send its whole
    /// first request head. Past it Herald answers `408 head_timeout` (if
    /// the socket takes it at once) and closes: a client that sends
    /// nothing, or a request line and then nothing, holds a socket no
    /// longer than this.
    #[serde(with = "humantime_serde")]
    pub head_timeout: Duration,
    /// How long a kept-alive connection may stay idle after a response
    /// until the next request head is complete; past it the connection is
    /// closed (no answer: that is how HTTP/1.1 ends keep-alive).
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; a bigger
    /// one is `431 head_too_large`. Bounds what Herald buffers for a
    /// request before it knows what it is.
    pub max_head_bytes: usize,
    /// Most header fields a request may carry; more is `431
    /// head_too_large`. At most 1024: every connection's first head is
    /// parsed into this many slots (32 bytes each) before anything else.
    pub max_headers: usize,
    /// Longest query string (after `?`), in bytes; a longer one is `414
    /// uri_too_long` before any of it is parsed. Bounds the work one
    /// request's parameters can cause.
    pub max_query_bytes: usize,
    /// Proxies (load balancers) whose word on the client's address is
    /// taken: CIDRs (`"10.0.0.0/8"`) or single addresses. From a peer in
    /// this list the client is the right-most address of
    /// `X-Forwarded-For` that is not itself in the list (or the source of
    /// a PROXY protocol header, with `proxy_protocol`); from any other
    /// peer both are ignored (a PROXY header is `400 bad_request`). The
    /// per-address limits, replay's and the access log use that address.
    /// Empty (the default): every peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Accept a PROXY protocol header (v1 text or v2 binary) at the start
    /// of a connection from a peer in `trusted_proxies`: its source
    /// address is the client's, before the request head is read. Needs
    /// `trusted_proxies`. Off by default.
    pub proxy_protocol: bool,
}

impl HttpConfig {
    /// `trusted_proxies` parsed: each a CIDR (`10.0.0.0/8`, `fd00::/8`) or
    /// one address (`10.1.2.3`, which is `/32` or `/128`). A bad entry is
    /// named with why.
    pub fn trusted_proxy_nets(&self) -> Result<Vec<ipnet::IpNet>, (String, String)> {
        self.trusted_proxies
            .iter()
            .map(|entry| {
                let text = entry.trim();
                text.parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| {
                        (
                            entry.clone(),
                            "not a CIDR (\"10.0.0.0/8\", \"fd00::/8\") or an IP address".to_owned(),
                        )
                    })
            })
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseConfig {
    /// Interval of the `: heartbeat` comment that keeps proxies from closing
    /// an idle stream and lets Herald notice dead clients.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// The `retry:` value sent to EventSource: how long a browser waits
    /// before reconnecting.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    /// A latency budget that buys CPU: what arrives for a stream within
    /// this long of its first message is written at once, in one write.
    /// 0 (the default): each batch is written as soon as it is ready.
    #[serde(with = "humantime_serde")]
    pub write_delay: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Interval of the server's ping on an open WebSocket. Keeps proxies
    /// from closing idle connections and finds dead peers.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long a ping may go unanswered (no pong, nor any other frame)
    /// before the connection is closed as dead (close code 4000). Also the
    /// longest a write may wait on a client that takes no data: past it the
    /// connection is dropped as slow.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// As `sse.write_delay`, for WebSocket connections: messages that
    /// arrive within this long of the first are written together.
    #[serde(with = "humantime_serde")]
    pub write_delay: Duration,
    /// Take a client's `permessage-deflate` offer (RFC 7692): each
    /// `message` frame compressed once per publication and the same bytes
    /// sent to every connection that took it, no compression state per
    /// connection. Off by default: the compression (tens of µs) is paid
    /// once per publication however few subscribers it has, so on
    /// channels with one subscriber it costs several times what the
    /// delivery does; with many subscribers it is nearly free.
    pub compression: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollConfig {
    /// The longest `wait=` a long poll may ask for; above it `400`.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Messages one poll returns when it gives no `limit=`.
    pub default_limit: usize,
    /// The largest `limit=` a poll may ask for; above it `400`. Bounds the
    /// size of one response.
    pub max_limit: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Number of independently locked shards of the channel registry. More
    /// shards, less contention between the ingest and subscribers.
    pub shards: usize,
    /// Most messages kept per channel for resume from memory.
    pub history_messages: usize,
    /// Most bytes kept per channel.
    pub history_bytes: usize,
    /// Oldest message kept, by arrival time.
    #[serde(with = "humantime_serde")]
    pub history_age: Duration,
    /// Bytes of history across all channels. Above it the oldest history
    /// goes first, whatever its channel.
    pub memory_budget: usize,
    /// Messages queued for one subscriber before it counts as slow and is
    /// disconnected (it resumes from its cursor with nothing lost).
    pub subscriber_queue: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Client connections at once that have sent a request other than a
    /// probe (`/healthz`, `/readyz`, `/metrics`): every SSE stream,
    /// WebSocket and long poll, and kept-alive connections between
    /// requests. A connection takes its place with its first request head
    /// and keeps it until it closes; above the limit that request gets
    /// `503 too_many_connections`, except a probe, which is answered (and
    /// its connection then closed), so health checks never starve.
    pub max_connections: usize,
    /// As `max_connections`, for one client address; above it `429`. 0
    /// (the default) disables the check: behind a load balancer or a NAT
    /// many clients share one address (list the balancer in
    /// `http.trusted_proxies` and the address it forwards counts).
    pub max_connections_per_ip: usize,
    /// Connections at once that have not sent their first request head yet
    /// (they hold no place under `max_connections`). A new connection over
    /// the limit pushes out the one that has waited longest (it gets `503
    /// too_many_pending_connections` and is closed), so clients that send
    /// nothing cannot keep those that do out; each waits at most
    /// `http.head_timeout` anyway. Sockets in use stay below
    /// `max_connections + max_pending_connections` plus probes in flight:
    /// keep that under the open-file limit.
    pub max_pending_connections: usize,
    /// As `max_pending_connections`, for one client address; a new
    /// connection over it is refused at once (`429
    /// too_many_pending_connections_per_ip`). 0 (the default) disables the
    /// check, as for `max_connections_per_ip`.
    pub max_pending_connections_per_ip: usize,
    /// Channels one stream (an SSE stream, a poll, a WebSocket connection)
    /// may subscribe to; above it `400` (an `error` message on a WebSocket).
    pub max_channels_per_connection: usize,
    /// Largest WebSocket message (and frame) accepted from a client, in
    /// bytes; a bigger one closes the connection with code 1009. Also sizes
    /// the most a client can make Herald buffer. A subscribe message carries
    /// a cursor of up to 8 KiB, so this is at least 16 KiB.
    pub max_message_size: usize,
    /// Long polls (`/poll` with `wait=`) waiting at once; above it `503`.
    pub max_long_polls: usize,
    /// HTTP/2 streams (requests: SSE streams, polls) open at once on one
    /// connection of the TLS listener; the client is told the limit
    /// (SETTINGS_MAX_CONCURRENT_STREAMS) and a stream past it is refused
    /// with REFUSED_STREAM, which clients retry.
    pub max_streams_per_connection: u32,
}

/// How log lines are written (to stderr, always).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human text, coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`,
    /// `message` and the event's fields), for log collectors.
    Json,
}

/// `[log]`: the log format and the access log.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// One line per request (a stream's when it ends), at `info` under the
    /// target `herald::access`: method, path without the `token=` value,
    /// status, duration, bytes, client address. Off by default: a busy
    /// node serves many requests a second.
    pub access: bool,
}

/// `[admin]`: who may use the admin API (`/admin/…` on
/// `http.admin_listen`). Keys as for `[publish]`.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Keys accepted as `Authorization: Bearer <key>`, each 16 to 256
    /// visible ASCII characters.
    pub api_keys: Vec<String>,
    /// A file with more keys, one per line, as `publish.api_keys_file`.
    pub api_keys_file: Option<PathBuf>,
}

/// Says how many keys there are, never what they are.
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("api_keys", &format_args!("<{} keys>", self.api_keys.len()))
            .field("api_keys_file", &self.api_keys_file)
            .finish()
    }
}

impl AdminConfig {
    /// Every admin key (`admin.api_keys`, then `admin.api_keys_file`, read
    /// now), checked as the publish keys are.
    pub fn load_keys(&self) -> Result<Vec<String>, ConfigError> {
        load_api_keys("admin", &self.api_keys, self.api_keys_file.as_deref())
    }
}

/// Bounds on reading history back from Kafka for clients whose cursor is
/// older than the hub's memory.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayConfig {
    /// Most records one resume may read back (summed over partitions);
    /// beyond it the client gets `409 replay_too_large`.
    pub max_records: u64,
    /// Replays running at once per node; beyond it `503 replay_busy`.
    pub max_concurrent: usize,
    /// `since=` look-ups (Kafka offsets-for-times, each with a consumer of
    /// its own) running at once per node; beyond it `503 replay_busy`.
    pub max_concurrent_lookups: usize,
    /// Replays and `since=` look-ups one client address may have running
    /// at once; beyond it `429 too_many_replays_per_ip`, so one client
    /// cannot take the node's `max_concurrent` for itself. 0 (the default)
    /// disables the check: behind a load balancer every client has the
    /// balancer's address (unless it is in `http.trusted_proxies`).
    pub max_concurrent_per_ip: usize,
    /// Longest one replay may take; past it the stream ends with reason
    /// `replay_failed` (the client resumes from where it got to).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Bytes of records read back from Kafka kept for other replays of the
    /// same range, so a burst of clients resuming together reads Kafka once.
    pub cache_bytes: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            max_records: 1_000_000,
            max_concurrent: 32,
            max_concurrent_lookups: 16,
            max_concurrent_per_ip: 0,
            timeout: Duration::from_secs(60),
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `POST /publish`, for backends without a Kafka client: who may publish
/// and the bounds on one request. Present in the file as `[publish]`.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    /// Keys accepted as `Authorization: Bearer <key>`, each 16 to 256
    /// visible ASCII characters. Listing two keys lets clients move from
    /// one to the other without a moment when neither works.
    pub api_keys: Vec<String>,
    /// A file with more keys, one per line (surrounding whitespace, blank
    /// lines and lines starting with `#` are ignored), read at start; a
    /// relative path is relative to Herald's working directory. Keeps keys
    /// out of the config file.
    pub api_keys_file: Option<PathBuf>,
    /// Largest request body, in bytes; a larger one is `413 body_too_large`,
    /// refused before it is parsed (and, with a `Content-Length`, before it
    /// is read).
    pub max_body_bytes: usize,
    /// How long a publish waits for Kafka to acknowledge the record (the
    /// producer's `message.timeout.ms`, retries included); past it the
    /// answer is `503 kafka_unavailable`, and the record may or may not
    /// have been written.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long the client may take to send the body; past it `408
    /// body_timeout`. A slow sender cannot hold a request open forever.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            api_keys_file: None,
            max_body_bytes: 64 * 1024,
            timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// Says how many keys there are, never what they are.
impl std::fmt::Debug for PublishConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishConfig")
            .field("api_keys", &format_args!("<{} keys>", self.api_keys.len()))
            .field("api_keys_file", &self.api_keys_file)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("timeout", &self.timeout)
            .field("body_timeout", &self.body_timeout)
            .finish()
    }
}

impl PublishConfig {
    /// Every API key: `api_keys`, then those in `api_keys_file` (read
    /// now). A key that is unfit, a file that cannot be read, or no key at
    /// all is an error naming the key (or the file and line), never the
    /// key itself.
    pub fn load_keys(&self) -> Result<Vec<String>, ConfigError> {
        load_api_keys("publish", &self.api_keys, self.api_keys_file.as_deref())
    }
}

/// The API keys of `[section]`: `api_keys`, then those in `api_keys_file`
/// (read now). A key that is unfit, a file that cannot be read, or no key
/// at all is an error naming the key (or the file and line), never the
/// key itself.
fn load_api_keys(
    section: &str,
    api_keys: &[String],
    api_keys_file: Option<&Path>,
) -> Result<Vec<String>, ConfigError> {
    let invalid =
        |key: String, value: String, reason: String| ConfigError::Invalid { key, value, reason };
    let mut keys = Vec::new();
    for (i, key) in api_keys.iter().enumerate() {
        if let Some(problem) = key_problem(key) {
            let shown = if key.is_empty() {
                "\"\""
            } else {
                "(not shown)"
            };
            return Err(invalid(
                format!("{section}.api_keys[{i}]"),
                shown.into(),
                problem,
            ));
        }
        keys.push(key.clone());
    }
    if let Some(path) = api_keys_file {
        let shown = format!("{:?}", path.display().to_string());
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                format!("{section}.api_keys_file"),
                shown.clone(),
                format!("cannot read the key file: {e}"),
            )
        })?;
        for (n, line) in text.lines().enumerate() {
            let key = line.trim();
            if key.is_empty() || key.starts_with('#') {
                continue;
            }
            if let Some(problem) = key_problem(key) {
                return Err(invalid(
                    format!("{section}.api_keys_file"),
                    shown,
                    format!("line {}: {problem}", n + 1),
                ));
            }
            keys.push(key.to_owned());
        }
    }
    if keys.is_empty() {
        return Err(invalid(
            format!("{section}.api_keys"),
            "[]".into(),
            format!(
                "[{section}] needs at least one key, in {section}.api_keys or in {section}.api_keys_file"
            ),
        ));
    }
    Ok(keys)
}

mod defaults {
    //! Defaults of keys in sections that also have required keys; the
    //! other sections' defaults are their `Default` impls.
    use std::time::Duration;

    pub fn client_id() -> String {
        "herald".into()
    }
    pub fn warm_history() -> u64 {
        1000
    }
    pub fn metadata_refresh() -> Duration {
        Duration::from_secs(10)
    }
    pub fn stats_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn subscriptions_topic() -> String {
        "herald.push.subscriptions".into()
    }
    pub fn one() -> i32 {
        1
    }
    pub fn minus_one() -> i32 {
        -1
    }
    pub fn push_group_id() -> String {
        "herald-push".into()
    }
    pub fn allowed_endpoint_hosts() -> Vec<String> {
        [
            "*.push.services.mozilla.com",
            "fcm.googleapis.com",
            "*.notify.windows.com",
            "web.push.apple.com",
        ]
        .map(String::from)
        .to_vec()
    }
    pub fn push_ttl() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub fn push_request_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn push_max_in_flight_per_service() -> usize {
        64
    }
    pub fn push_max_queued_per_service() -> usize {
        10_000
    }
    pub fn push_max_pending() -> usize {
        100_000
    }
    pub fn push_max_attempts() -> u32 {
        5
    }
    pub fn push_retry_deadline() -> Duration {
        Duration::from_secs(120)
    }
    pub fn push_retry_backoff() -> Duration {
        Duration::from_millis(500)
    }
    pub fn push_max_channels_per_subscription() -> usize {
        16
    }
    pub fn push_max_subscriptions_per_channel() -> usize {
        100_000
    }
    pub fn push_max_subscriptions() -> usize {
        1_000_000
    }
    pub fn push_max_body_bytes() -> usize {
        4096
    }
    pub fn push_body_timeout() -> Duration {
        Duration::from_secs(10)
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            allowed_origins: Vec::new(),
            demo_page: true,
            send_buffer_bytes: None,
            notsent_lowat_bytes: 128 * 1024,
            write_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            head_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(30),
            max_head_bytes: 32 * 1024,
            max_headers: 64,
            max_query_bytes: 16 * 1024,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
        }
    }
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(2),
            write_delay: Duration::ZERO,
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            write_delay: Duration::ZERO,
            compression: false,
        }
    }
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(30),
            default_limit: 100,
            max_limit: 1000,
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            shards: 64,
            history_messages: 1000,
            history_bytes: 1024 * 1024,
            history_age: Duration::from_secs(300),
            memory_budget: 256 * 1024 * 1024,
            subscriber_queue: 4096,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 19_000,
            max_channels_per_connection: 64,
            max_message_size: 64 * 1024,
            max_long_polls: 10_000,
            max_streams_per_connection: 100,
            max_connections_per_ip: 0,
            max_pending_connections: 512,
            max_pending_connections_per_ip: 0,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Cross-field checks that serde cannot express.
    /// The keys whose change a reload cannot apply (their owners are
    /// built once at start: the Kafka clients, the listeners, the hub's
    /// memory, replay's pools, publishing and Web Push), by section:
    /// empty when `new` differs from `self` only in what
    /// [`App::reload`](crate::app::App::reload) takes.
    pub fn restart_keys_changed(&self, new: &Config) -> Vec<&'static str> {
        fn differ<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
            format!("{a:?}") != format!("{b:?}")
        }
        // Keys are compared themselves: Debug shows only how many there are.
        let publish_keys = |c: &Config| {
            c.publish
                .as_ref()
                .map(|p| (p.api_keys.clone(), p.api_keys_file.clone()))
        };
        let admin_keys = |c: &Config| {
            c.admin
                .as_ref()
                .map(|a| (a.api_keys.clone(), a.api_keys_file.clone()))
        };
        let http = |c: &Config| HttpConfig {
            allowed_origins: Vec::new(),
            ..c.http.clone()
        };
        [
            ("[kafka]", differ(&self.kafka, &new.kafka)),
            (
                "[http] (other than allowed_origins)",
                differ(&http(self), &http(new)),
            ),
            ("[hub]", differ(&self.hub, &new.hub)),
            ("[replay]", differ(&self.replay, &new.replay)),
            (
                "[publish]",
                differ(&self.publish, &new.publish) || publish_keys(self) != publish_keys(new),
            ),
            ("[push]", differ(&self.push, &new.push)),
            ("[log]", differ(&self.log, &new.log)),
            ("[admin]", admin_keys(self) != admin_keys(new)),
            (
                "tls.listen (or adding or removing [tls])",
                differ(
                    &self.tls.as_ref().map(|t| t.listen),
                    &new.tls.as_ref().map(|t| t.listen),
                ),
            ),
        ]
        .into_iter()
        .filter_map(|(section, changed)| changed.then_some(section))
        .collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &str, value: impl std::fmt::Debug, reason: &str) -> ConfigError {
            ConfigError::Invalid {
                key: key.to_owned(),
                value: format!("{value:?}"),
                reason: reason.to_owned(),
            }
        }
        self.kafka.check_client_options()?;
        self.check_durations()?;
        if let Some(value) = self.kafka.options.get("auto.offset.reset") {
            return Err(invalid(
                "kafka.options.\"auto.offset.reset\"",
                value,
                "Herald sets it itself (\"error\": records deleted before Herald reads them become a gap for subscribers, never a silent jump); remove this option",
            ));
        }
        for origin in &self.http.allowed_origins {
            if origin != "*" && !is_origin(origin) {
                return Err(invalid(
                    "http.allowed_origins",
                    origin,
                    "an origin is scheme://host[:port] as a browser sends it (no path, no trailing slash), or \"*\"",
                ));
            }
        }
        if let Some(auth) = &self.auth {
            Auth::check_config(auth)?;
        }
        if let Some(tls) = &self.tls {
            if tls.listen == self.http.listen && tls.listen.port() != 0 {
                return Err(invalid(
                    "tls.listen",
                    tls.listen,
                    "is http.listen too; give the TLS listener an address of its own",
                ));
            }
            crate::tls::server_config(tls)?;
        }
        if let Some(push) = &self.push {
            VapidKeys::load(&push.vapid_private_key_file).map_err(|e| {
                invalid(
                    "push.vapid_private_key_file",
                    push.vapid_private_key_file.display(),
                    &e.to_string(),
                )
            })?;
            let subject = &push.vapid_subject;
            if !(subject.starts_with("mailto:") || subject.starts_with("https://")) {
                return Err(invalid(
                    "push.vapid_subject",
                    subject,
                    "must be a mailto: or https:// URI push services can reach the operator at",
                ));
            }
            push.validate()?;
        }
        if let Err((entry, reason)) = self.http.trusted_proxy_nets() {
            return Err(invalid("http.trusted_proxies", entry, &reason));
        }
        if self.http.proxy_protocol && self.http.trusted_proxies.is_empty() {
            return Err(invalid(
                "http.proxy_protocol",
                true,
                "needs http.trusted_proxies: a PROXY header is taken only from the proxies listed there",
            ));
        }
        if let Some(admin) = &self.admin {
            admin.load_keys()?;
            if self.http.admin_listen.is_none() {
                return Err(invalid(
                    "admin.api_keys",
                    "(not shown)",
                    "the admin API is served on http.admin_listen, which is not set: set it (never the client listener)",
                ));
            }
        }
        if self.http.listen.port() != 0 && self.http.admin_listen == Some(self.http.listen) {
            return Err(invalid(
                "http.admin_listen",
                self.http.listen,
                "must differ from http.listen",
            ));
        }
        if self.kafka.brokers.trim().is_empty() {
            return Err(invalid(
                "kafka.brokers",
                &self.kafka.brokers,
                "must name at least one broker",
            ));
        }
        if self.kafka.metadata_refresh < Duration::from_millis(100) {
            return Err(invalid(
                "kafka.metadata_refresh",
                self.kafka.metadata_refresh,
                "must be at least 100ms",
            ));
        }
        if self.kafka.stats_interval < Duration::from_millis(100) {
            return Err(invalid(
                "kafka.stats_interval",
                self.kafka.stats_interval,
                "must be at least 100ms",
            ));
        }
        let positive = [
            ("hub.shards", self.hub.shards),
            ("hub.history_messages", self.hub.history_messages),
            ("hub.history_bytes", self.hub.history_bytes),
            ("hub.memory_budget", self.hub.memory_budget),
            ("hub.subscriber_queue", self.hub.subscriber_queue),
            ("limits.max_connections", self.limits.max_connections),
            (
                "limits.max_channels_per_connection",
                self.limits.max_channels_per_connection,
            ),
            ("limits.max_long_polls", self.limits.max_long_polls),
            (
                "limits.max_streams_per_connection",
                self.limits.max_streams_per_connection as usize,
            ),
            (
                "limits.max_pending_connections",
                self.limits.max_pending_connections,
            ),
            ("replay.max_concurrent", self.replay.max_concurrent),
            (
                "replay.max_concurrent_lookups",
                self.replay.max_concurrent_lookups,
            ),
            ("poll.max_limit", self.poll.max_limit),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, value, "must be greater than 0"));
            }
        }
        if self.hub.history_age.is_zero() {
            return Err(invalid(
                "hub.history_age",
                self.hub.history_age,
                "must be greater than 0",
            ));
        }
        for (key, value) in [
            ("http.head_timeout", self.http.head_timeout),
            ("http.keepalive_timeout", self.http.keepalive_timeout),
        ] {
            if value < Duration::from_millis(100) {
                return Err(invalid(key, value, "must be at least 100ms"));
            }
        }
        if !(1..=1024).contains(&self.http.max_headers) {
            return Err(invalid(
                "http.max_headers",
                self.http.max_headers,
                "must be from 1 to 1024 (each connection's first head is parsed into that many slots)",
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.http.max_head_bytes) {
            return Err(invalid(
                "http.max_head_bytes",
                self.http.max_head_bytes,
                "must be from 1024 to 1048576",
            ));
        }
        if self.http.max_query_bytes == 0 || self.http.max_query_bytes >= self.http.max_head_bytes {
            return Err(invalid(
                "http.max_query_bytes",
                self.http.max_query_bytes,
                "must be greater than 0 and less than http.max_head_bytes (the query is part of the head)",
            ));
        }
        if self.sse.heartbeat < Duration::from_secs(1) {
            return Err(invalid(
                "sse.heartbeat",
                self.sse.heartbeat,
                "must be at least 1s",
            ));
        }
        if self.ws.ping_interval < Duration::from_secs(1) {
            return Err(invalid(
                "ws.ping_interval",
                self.ws.ping_interval,
                "must be at least 1s",
            ));
        }
        if self.ws.pong_timeout < Duration::from_millis(100) {
            return Err(invalid(
                "ws.pong_timeout",
                self.ws.pong_timeout,
                "must be at least 100ms",
            ));
        }
        for (key, delay) in [
            ("sse.write_delay", self.sse.write_delay),
            ("ws.write_delay", self.ws.write_delay),
        ] {
            if delay > MAX_WRITE_DELAY {
                return Err(invalid(
                    key,
                    delay,
                    "must be at most 1s (it adds up to that much to every message's latency)",
                ));
            }
        }
        if self.http.notsent_lowat_bytes > i32::MAX as usize {
            return Err(invalid(
                "http.notsent_lowat_bytes",
                self.http.notsent_lowat_bytes,
                "must be at most 2147483647 (the largest TCP_NOTSENT_LOWAT); 0 leaves the kernel's default",
            ));
        }
        if self.limits.max_message_size < 16 * 1024 {
            return Err(invalid(
                "limits.max_message_size",
                self.limits.max_message_size,
                "must be at least 16384 (a subscribe message may carry an 8 KiB cursor)",
            ));
        }
        if self.poll.default_limit == 0 || self.poll.default_limit > self.poll.max_limit {
            return Err(invalid(
                "poll.default_limit",
                self.poll.default_limit,
                "must be between 1 and poll.max_limit",
            ));
        }
        if self.routes.is_empty() {
            return Err(invalid("route", "[]", "at least one [[route]] is needed"));
        }
        if let Some(publish) = &self.publish {
            self.validate_publish(publish)?;
        }
        Router::new(&self.routes).map_err(|e| match e {
            RouterError::Route {
                index,
                key,
                value,
                reason,
            } => ConfigError::Invalid {
                key: format!("route[{index}].{key}"),
                value: format!("{value:?}"),
                reason,
            },
        })
        .and_then(|router| match &self.push {
            Some(push) if router.consumes(&push.subscriptions_topic) => Err(invalid(
                "push.subscriptions_topic",
                &push.subscriptions_topic,
                "a [[route]] reads this topic: it holds subscriptions (endpoints and keys), which must never reach clients",
            )),
            _ => Ok(()),
        })?;
        Ok(())
    }

    fn validate_publish(&self, publish: &PublishConfig) -> Result<(), ConfigError> {
        fn invalid(key: &str, value: impl std::fmt::Debug, reason: &str) -> ConfigError {
            ConfigError::Invalid {
                key: key.to_owned(),
                value: format!("{value:?}"),
                reason: reason.to_owned(),
            }
        }
        publish.load_keys()?;
        if publish.max_body_bytes == 0 {
            return Err(invalid(
                "publish.max_body_bytes",
                publish.max_body_bytes,
                "must be greater than 0",
            ));
        }
        // librdkafka takes message.timeout.ms as a 32-bit count.
        if publish.timeout < Duration::from_millis(100)
            || publish.timeout.as_millis() > i32::MAX as u128
        {
            return Err(invalid(
                "publish.timeout",
                publish.timeout,
                "must be between 100ms and 24 days",
            ));
        }
        if publish.body_timeout < Duration::from_millis(100) {
            return Err(invalid(
                "publish.body_timeout",
                publish.body_timeout,
                "must be at least 100ms",
            ));
        }
        // The producer is idempotent with acks=all: [kafka.options] (shared
        // with the consumers) may not weaken that.
        for (option, allowed) in [
            ("enable.idempotence", &["true"][..]),
            ("acks", &["all", "-1"][..]),
            ("request.required.acks", &["all", "-1"][..]),
        ] {
            if let Some(value) = self.kafka.options.get(option)
                && !allowed.contains(&value.as_str())
            {
                return Err(invalid(
                    &format!("kafka.options.\"{option}\""),
                    value,
                    "with [publish] the producer is idempotent with acks=all; remove this option",
                ));
            }
        }
        Ok(())
    }
}

/// `scheme://host[:port]`, nothing after it: the form of an `Origin` header.
fn is_origin(text: &str) -> bool {
    let Some((scheme, authority)) = text.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@', ' '])
        && authority.parse::<http::uri::Authority>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINIMAL: &str = r#"
        [kafka]
        brokers = "127.0.0.1:9092"
        [[route]]
        topic = "news"
        channel = "news"
    "#;

    /// The example file's commented `[push]` shows every key at its
    /// default: uncommented, it parses to exactly the defaults.
    #[test]
    fn the_example_push_section_shows_the_defaults() {
        let example = include_str!("../config/herald.toml");
        let start = example.find("# [push]").expect("a [push] section");
        let section: String = example[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter(|l| !l.starts_with("# #"))
            .map(|l| format!("{}\n", l.trim_start_matches("# ")))
            .collect();
        let parsed: PushConfig = toml::from_str(section.trim_start_matches("[push]\n")).unwrap();
        let defaults =
            PushConfig::new(Path::new("/etc/herald/vapid.pem"), "mailto:ops@example.com");
        assert_eq!(format!("{parsed:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, "test").unwrap();
        assert_eq!(c.http.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.sse.heartbeat, Duration::from_secs(15));
        assert_eq!(c.hub.history_messages, 1000);
        assert_eq!(c.kafka.start, StartAt::Latest);
        assert_eq!(c.ws.ping_interval, Duration::from_secs(25));
        assert_eq!(c.ws.pong_timeout, Duration::from_secs(10));
        assert_eq!(c.poll.max_wait, Duration::from_secs(30));
        assert_eq!((c.poll.default_limit, c.poll.max_limit), (100, 1000));
        assert_eq!(c.limits.max_message_size, 65536);
        assert_eq!(c.limits.max_long_polls, 10_000);
        assert_eq!(c.http.head_timeout, Duration::from_secs(10));
        assert_eq!(c.http.keepalive_timeout, Duration::from_secs(30));
        assert_eq!(
            (
                c.http.max_head_bytes,
                c.http.max_headers,
                c.http.max_query_bytes
            ),
            (32768, 64, 16384)
        );
        assert_eq!(
            (
                c.limits.max_pending_connections,
                c.limits.max_pending_connections_per_ip
            ),
            (512, 0)
        );
        assert_eq!(
            (
                c.replay.max_concurrent_lookups,
                c.replay.max_concurrent_per_ip
            ),
            (16, 0)
        );
    }

    #[test]
    fn transport_limits_are_checked() {
        for (extra, key) in [
            ("[ws]\nping_interval = \"10ms\"\n", "ws.ping_interval"),
            ("[ws]\nwrite_delay = \"2s\"\n", "ws.write_delay"),
            ("[sse]\nwrite_delay = \"1001ms\"\n", "sse.write_delay"),
            (
                "[limits]\nmax_message_size = 100\n",
                "limits.max_message_size",
            ),
            ("[limits]\nmax_long_polls = 0\n", "limits.max_long_polls"),
            ("[poll]\ndefault_limit = 5000\n", "poll.default_limit"),
            ("[http]\nhead_timeout = \"0s\"\n", "http.head_timeout"),
            ("[http]\nmax_query_bytes = 40000\n", "http.max_query_bytes"),
            (
                "[http]\nnotsent_lowat_bytes = 2147483648\n",
                "http.notsent_lowat_bytes",
            ),
            ("[http]\nmax_head_bytes = 100\n", "http.max_head_bytes"),
            ("[http]\nmax_headers = 100000000\n", "http.max_headers"),
            ("[http]\nmax_headers = 0\n", "http.max_headers"),
            (
                "[limits]\nmax_pending_connections = 0\n",
                "limits.max_pending_connections",
            ),
            (
                "[replay]\nmax_concurrent_lookups = 0\n",
                "replay.max_concurrent_lookups",
            ),
        ] {
            let err = Config::parse(&format!("{MINIMAL}\n{extra}"), "test")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn a_partly_given_section_keeps_the_other_defaults() {
        let text = format!("{MINIMAL}\n[hub]\nshards = 8\n[http]\nwrite_timeout = \"5s\"\n");
        let c = Config::parse(&text, "test").unwrap();
        assert_eq!(c.hub.shards, 8);
        assert_eq!(
            c.hub.history_messages,
            HubConfig::default().history_messages
        );
        assert_eq!(c.http.write_timeout, Duration::from_secs(5));
        assert_eq!(c.http.listen, HttpConfig::default().listen);
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let text = format!("{MINIMAL}\n[http]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
        let err = Config::parse(&text, "test").unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let text = MINIMAL.replace("channel = \"news\"", "channel = \"user.{nope}\"");
        let err = Config::parse(&text, "test").unwrap_err().to_string();
        assert!(err.contains("route[0].channel"), "{err}");
        assert!(err.contains("user.{nope}"), "{err}");

        let text = format!("{MINIMAL}\n[hub]\nshards = 0\n");
        let err = Config::parse(&text, "test").unwrap_err().to_string();
        assert!(err.contains("hub.shards") && err.contains('0'), "{err}");

        let text = format!("{MINIMAL}\n[sse]\nheartbeat = \"soon\"\n");
        let err = Config::parse(&text, "test").unwrap_err().to_string();
        assert!(err.contains("heartbeat"), "{err}");
    }

    #[test]
    fn shipped_configs_are_valid() {
        for (name, text) in [
            ("herald.toml", include_str!("../config/herald.toml")),
            (
                "herald.docker.toml",
                include_str!("../config/herald.docker.toml"),
            ),
        ] {
            Config::parse(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    const KEY: &str = "test-key-0123456789";

    #[test]
    fn publishing_is_off_unless_configured_and_gets_defaults() {
        assert!(Config::parse(MINIMAL, "test").unwrap().publish.is_none());
        let text = format!("{MINIMAL}\n[publish]\napi_keys = [\"{KEY}\"]\n");
        let p = Config::parse(&text, "test").unwrap().publish.unwrap();
        assert_eq!(p.max_body_bytes, 65536);
        assert_eq!(p.timeout, Duration::from_secs(10));
        assert_eq!(p.body_timeout, Duration::from_secs(10));
        assert_eq!(p.load_keys().unwrap(), [KEY]);
    }

    #[test]
    fn publish_keys_come_from_the_file_too() {
        let path = std::env::temp_dir().join(format!("herald-keys-{}", std::process::id()));
        std::fs::write(
            &path,
            "# rotated 2026-12\n\n  file-key-0123456789abc  \nfile-key-second-0123\n",
        )
        .unwrap();
        let text = format!(
            "{MINIMAL}\n[publish]\napi_keys = [\"{KEY}\"]\napi_keys_file = {:?}\n",
            path.display().to_string()
        );
        let keys = Config::parse(&text, "test")
            .unwrap()
            .publish
            .unwrap()
            .load_keys();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            keys.unwrap(),
            [KEY, "file-key-0123456789abc", "file-key-second-0123"]
        );
    }

    #[test]
    fn bad_publish_config_names_the_key_and_never_shows_one() {
        let secret = "short-secret";
        for (publish, key, reason) in [
            ("api_keys = []", "publish.api_keys", "at least one key"),
            ("", "publish.api_keys", "at least one key"),
            ("api_keys = [\"\"]", "publish.api_keys[0]", "empty"),
            (
                &format!("api_keys = [\"{KEY}\", \"{secret}\"]"),
                "publish.api_keys[1]",
                "at least 16",
            ),
            (
                &format!("api_keys = [\"{KEY}\"]\napi_keys_file = \"/nonexistent/keys\""),
                "publish.api_keys_file",
                "cannot read",
            ),
            (
                &format!("api_keys = [\"{KEY}\"]\nmax_body_bytes = 0"),
                "publish.max_body_bytes",
                "greater than 0",
            ),
            (
                &format!("api_keys = [\"{KEY}\"]\ntimeout = \"1ms\""),
                "publish.timeout",
                "100ms",
            ),
            (
                &format!("api_keys = [\"{KEY}\"]\napi_key = \"typo\""),
                "api_key",
                "unknown field",
            ),
        ] {
            let text = format!("{MINIMAL}\n[publish]\n{publish}\n");
            let err = Config::parse(&text, "test").unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains(reason),
                "{publish}: {err}"
            );
            assert!(!err.contains(secret), "{err}");
        }
        let text = format!(
            "{MINIMAL}\n[kafka.options]\nacks = \"1\"\n[publish]\napi_keys = [\"{KEY}\"]\n"
        );
        let err = Config::parse(&text, "test").unwrap_err().to_string();
        assert!(err.contains("kafka.options.\"acks\""), "{err}");
    }

    #[test]
    fn logs_proxies_and_admin_have_defaults_and_named_errors() {
        let c = Config::parse(MINIMAL, "test").unwrap();
        assert_eq!((c.log.format, c.log.access), (LogFormat::Text, false));
        assert!(c.http.trusted_proxies.is_empty() && !c.http.proxy_protocol);
        assert!(c.admin.is_none());
        let text = format!(
            "{MINIMAL}\n[log]\nformat = \"json\"\naccess = true\n[http]\nadmin_listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"10.0.0.0/8\", \"192.168.1.1\", \"fd00::/8\"]\nproxy_protocol = true\n[admin]\napi_keys = [\"{KEY}\"]\n"
        );
        let c = Config::parse(&text, "test").unwrap();
        assert_eq!((c.log.format, c.log.access), (LogFormat::Json, true));
        assert_eq!(c.http.trusted_proxy_nets().unwrap().len(), 3);
        assert_eq!(c.admin.unwrap().load_keys().unwrap(), [KEY]);
        for (extra, key, reason) in [
            ("[log]\nformat = \"xml\"", "format", "unknown variant"),
            (
                "[http]\ntrusted_proxies = [\"10.0.0.0/33\"]",
                "http.trusted_proxies",
                "not a CIDR",
            ),
            (
                "[http]\nproxy_protocol = true",
                "http.proxy_protocol",
                "needs http.trusted_proxies",
            ),
            (
                &format!("[admin]\napi_keys = [\"{KEY}\"]"),
                "admin.api_keys",
                "http.admin_listen",
            ),
            (
                "[http]\nadmin_listen = \"127.0.0.1:0\"\n[admin]\napi_keys = [\"short\"]",
                "admin.api_keys[0]",
                "at least 16",
            ),
            (
                "[http]\nadmin_listen = \"127.0.0.1:0\"\n[admin]",
                "admin.api_keys",
                "at least one key",
            ),
        ] {
            let err = Config::parse(&format!("{MINIMAL}\n{extra}\n"), "test")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(reason), "{extra}: {err}");
            assert!(!err.contains(KEY) && !err.contains("short\""), "{err}");
        }
    }

    #[test]
    fn auto_offset_reset_is_herald_s_own() {
        let text = format!("{MINIMAL}\n[kafka.options]\n\"auto.offset.reset\" = \"latest\"\n");
        let err = Config::parse(&text, "test").unwrap_err().to_string();
        assert!(
            err.contains("kafka.options.\"auto.offset.reset\"") && err.contains("silent jump"),
            "{err}"
        );
    }

    #[test]
    fn debug_output_hides_the_keys() {
        let text = format!("{MINIMAL}\n[publish]\napi_keys = [\"{KEY}\"]\n");
        let shown = format!("{:?}", Config::parse(&text, "test").unwrap());
        assert!(
            !shown.contains(KEY) && shown.contains("<1 keys>"),
            "{shown}"
        );
    }

    #[test]
    fn the_example_publish_section_is_valid_once_uncommented() {
        let example = include_str!("../config/herald.toml");
        let start = example
            .find("# [publish]")
            .expect("a commented [publish] section");
        let section: String = example[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            // The key file would have to exist.
            .filter(|l| !l.starts_with("api_keys_file"))
            .map(|l| format!("{l}\n"))
            .collect();
        let text = format!("{MINIMAL}\n{section}");
        let p = Config::parse(&text, "example")
            .unwrap_or_else(|e| panic!("{e}\n{section}"))
            .publish
            .expect("[publish]");
        let defaults = PublishConfig::default();
        assert_eq!(
            (p.max_body_bytes, p.timeout, p.body_timeout),
            (
                defaults.max_body_bytes,
                defaults.timeout,
                defaults.body_timeout
            ),
            "the example states the defaults"
        );
    }

    /// The integer values docs and `validate` allow a key, both ends
    /// included.
    type Bounds = Option<(i128, i128)>;

    /// Every key of the sections a property below writes, with its bounds
    /// (`None`: none documented).
    const KEYS: &[(&str, &str, Bounds)] = &[
        ("kafka", "client_id", None),
        ("kafka", "start", None),
        ("kafka", "warm_history", None),
        ("kafka", "metadata_refresh", None),
        ("kafka", "stats_interval", None),
        ("http", "listen", None),
        ("http", "admin_listen", None),
        ("http", "allowed_origins", None),
        ("http", "demo_page", None),
        ("http", "send_buffer_bytes", None),
        ("http", "notsent_lowat_bytes", Some((0, i32::MAX as i128))),
        ("http", "write_timeout", None),
        ("http", "shutdown_grace", None),
        ("http", "head_timeout", None),
        ("http", "keepalive_timeout", None),
        ("http", "max_head_bytes", Some((1024, 1024 * 1024))),
        ("http", "max_headers", Some((1, 1024))),
        ("http", "max_query_bytes", Some((1, 32 * 1024 - 1))),
        ("sse", "heartbeat", None),
        ("sse", "retry", None),
        ("sse", "write_delay", None),
        ("ws", "ping_interval", None),
        ("ws", "pong_timeout", None),
        ("ws", "write_delay", None),
        ("ws", "compression", None),
        ("poll", "max_wait", None),
        ("poll", "default_limit", Some((1, 1000))),
        ("poll", "max_limit", Some((1, i128::MAX))),
        ("hub", "shards", Some((1, i128::MAX))),
        ("hub", "history_messages", Some((1, i128::MAX))),
        ("hub", "history_bytes", Some((1, i128::MAX))),
        ("hub", "history_age", None),
        ("hub", "memory_budget", Some((1, i128::MAX))),
        ("hub", "subscriber_queue", Some((1, i128::MAX))),
        ("limits", "max_connections", Some((1, i128::MAX))),
        ("limits", "max_connections_per_ip", None),
        ("limits", "max_pending_connections", Some((1, i128::MAX))),
        ("limits", "max_pending_connections_per_ip", None),
        (
            "limits",
            "max_channels_per_connection",
            Some((1, i128::MAX)),
        ),
        ("limits", "max_message_size", Some((16 * 1024, i128::MAX))),
        ("limits", "max_long_polls", Some((1, i128::MAX))),
        ("limits", "max_streams_per_connection", Some((1, i128::MAX))),
        ("replay", "max_records", None),
        ("replay", "max_concurrent", Some((1, i128::MAX))),
        ("replay", "max_concurrent_lookups", Some((1, i128::MAX))),
        ("replay", "max_concurrent_per_ip", None),
        ("replay", "timeout", None),
        ("replay", "cache_bytes", None),
        ("http", "trusted_proxies", None),
        ("http", "proxy_protocol", None),
        ("log", "format", None),
        ("log", "access", None),
        ("admin", "api_keys", None),
        ("publish", "api_keys", None),
        ("publish", "max_body_bytes", None),
        ("publish", "timeout", None),
        ("publish", "body_timeout", None),
        ("route", "topic", None),
        ("route", "topic_regex", None),
        ("route", "channel", None),
        ("route", "nope", None),
    ];

    /// A TOML value of any type, near the edges the checks care about.
    fn toml_value() -> impl Strategy<Value = String> {
        prop_oneof![
            prop_oneof![
                Just(0i128),
                Just(1),
                Just(-1),
                Just(100),
                Just(1023),
                Just(1024),
                Just(16383),
                Just(16384),
                Just(32767),
                Just(1024 * 1024 + 1),
                Just(i64::MAX as i128),
                Just(u64::MAX as i128),
                -10i128..100_000,
            ]
            .prop_map(|n| n.to_string()),
            prop_oneof![
                Just("\"\""),
                Just("\"0s\""),
                Just("\"1ms\""),
                Just("\"99ms\""),
                Just("\"10s\""),
                Just("\"18446744073709551615s\""),
                Just("\"600000000000y\""),
                Just("\"soon\""),
                Just("\"earliest\""),
                Just("\"127.0.0.1:0\""),
                Just("\"[::1]:8080\""),
                Just("\"https://a.example\""),
                Just("\"https://a.example/\""),
                Just("\"news\""),
                Just("\"{key}\""),
                Just("\"a{\""),
                Just("\"(\""),
                Just("\"bad topic\""),
                Just("true"),
                Just("1.5"),
                Just("[]"),
                Just("[\"x\"]"),
                Just("[1]"),
                Just("{}"),
                Just("\"t\\u0000\""),
                Just("1979-05-27T07:32:00Z"),
                Just("="),
                Just("\"unclosed"),
            ]
            .prop_map(str::to_owned),
            // Any text, as a TOML string.
            "\\PC{0,12}".prop_map(|s| toml::Value::String(s).to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any text is a config or a config error (exit 64 from `herald
        /// serve`/`check`); never a panic.
        #[test]
        fn any_text_is_a_config_or_a_config_error(
            text in "\\PC{0,200}|[\\[\\]a-z_.=\" 0-9\n]{0,200}",
        ) {
            match Config::parse(&text, "fuzz") {
                Ok(_) | Err(ConfigError::Parse { .. } | ConfigError::Invalid { .. } | ConfigError::Auth(_) | ConfigError::Tls(_)) => {}
                Err(e @ ConfigError::Read { .. }) => prop_assert!(false, "{}", e),
            }
        }

        /// One key of a valid config set to any value: still a config, or an
        /// error that names that key (or, for a cross-field rule, a key of
        /// its section); a value beyond a documented bound is refused.
        #[test]
        fn a_value_is_taken_or_refused_naming_its_key(
            (section, key, range) in proptest::sample::select(KEYS),
            value in toml_value(),
        ) {
            let line = format!("{key} = {value}");
            let text = match section {
                "kafka" => format!("[kafka]\nbrokers = \"b:9092\"\n{line}\n[[route]]\ntopic = \"t\"\nchannel = \"c\"\n"),
                "route" => {
                    // A second route, with the key set (or replaced).
                    let mut fields = vec![("topic", "\"t\"".to_owned()), ("channel", "\"c\"".to_owned())];
                    fields.retain(|(k, _)| *k != key);
                    fields.push((key, value.clone()));
                    let route: String = fields.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
                    format!("{MINIMAL}\n[[route]]\n{route}")
                }
                _ => format!("{MINIMAL}\n[{section}]\n{line}\n"),
            };
            let result = Config::parse(&text, "fuzz");
            match &result {
                Ok(_) => {}
                Err(ConfigError::Parse { message, .. }) => {
                    prop_assert!(message.contains(&line) || message.contains(key), "{}: {}", line, message);
                }
                Err(e @ ConfigError::Invalid { key: named, .. }) => {
                    let prefix = if section == "route" { "route[".to_owned() } else { format!("{section}.") };
                    prop_assert!(named.starts_with(&prefix), "[{}] {}: {}", section, line, e);
                }
                Err(e) => prop_assert!(false, "[{}] {}: {}", section, line, e),
            }
            if let (Some((low, high)), Ok(n)) = (range, value.parse::<i128>())
                && !(low..=high).contains(&n)
            {
                let named = match &result {
                    Err(ConfigError::Invalid { key: named, .. }) => named.clone(),
                    Err(ConfigError::Parse { .. }) => format!("{section}.{key}"),
                    other => format!("{other:?}"),
                };
                prop_assert_eq!(named, format!("{section}.{key}"), "{} is beyond its bounds", line);
            }
        }
    }
}
