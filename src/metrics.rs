//! Prometheus metrics. One [`Metrics`] value is created at start and passed
//! to every module; nothing is registered globally. The names listed in
//! `DESIGN.md` are a contract: dashboards and alerts outside this repo use
//! them.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The `transport` label values, created at start so their series read 0.
pub const TRANSPORTS: &[&str] = &["sse", "ws", "poll"];

pub struct Metrics {
    registry: Registry,
    /// Open streaming connections, by transport.
    pub connections: IntGaugeVec,
    /// Records read from Kafka, by topic and partition.
    pub consumed: IntCounterVec,
    /// Messages written to clients, by transport.
    pub delivered: IntCounterVec,
    /// High watermark minus Herald's position, by topic and partition.
    pub partition_lag: IntGaugeVec,
    /// Kafka record timestamp → written to a client socket.
    pub delivery_latency: Histogram,
    /// Clients cut off because their queue overflowed, by transport.
    pub slow_disconnects: IntCounterVec,
    /// Records read back from Kafka to serve resuming clients.
    pub replay_records: IntCounter,
    /// Records no route maps to any channel, by topic.
    pub unrouted: IntCounterVec,
    /// Errors reported by librdkafka, by kind.
    pub kafka_errors: IntCounterVec,
    /// Channels held by the hub (with history or subscribers).
    pub hub_channels: IntGauge,
    /// Bytes of message history held across all channels.
    pub hub_history_bytes: IntGauge,
    /// Publications dropped from history, by reason (count, bytes, age, budget).
    pub hub_evictions: IntCounterVec,
    /// Requests answered with an error, by status code and error code.
    pub http_errors: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        }
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let metrics = Metrics {
            connections: gauge_vec("herald_connections", "Open client connections by transport.", &["transport"]),
            consumed: counter_vec(
                "herald_messages_consumed_total",
                "Records read from Kafka.",
                &["topic", "partition"],
            ),
            delivered: counter_vec(
                "herald_messages_delivered_total",
                "Messages written to clients.",
                &["transport"],
            ),
            partition_lag: gauge_vec(
                "herald_partition_lag",
                "Records in Kafka not yet read by Herald (high watermark minus position).",
                &["topic", "partition"],
            ),
            delivery_latency: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "herald_delivery_latency_seconds",
                        "Time from the Kafka record timestamp to the message being written to a client.",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ]),
                )
                .expect("valid metric"),
            ),
            slow_disconnects: counter_vec(
                "herald_slow_client_disconnects_total",
                "Clients disconnected because they fell too far behind.",
                &["transport"],
            ),
            replay_records: reg(
                &registry,
                IntCounter::new("herald_replay_records_total", "Records read back from Kafka for resuming clients.")
                    .expect("valid metric"),
            ),
            unrouted: counter_vec(
                "herald_unrouted_records_total",
                "Records that no route maps to a channel.",
                &["topic"],
            ),
            kafka_errors: counter_vec("herald_kafka_errors_total", "Errors reported by the Kafka client.", &["kind"]),
            hub_channels: reg(
                &registry,
                IntGauge::new("herald_hub_channels", "Channels held in memory.").expect("valid metric"),
            ),
            hub_history_bytes: reg(
                &registry,
                IntGauge::new("herald_hub_history_bytes", "Bytes of history held in memory.").expect("valid metric"),
            ),
            hub_evictions: counter_vec(
                "herald_hub_evictions_total",
                "Publications dropped from channel history.",
                &["reason"],
            ),
            http_errors: counter_vec(
                "herald_http_errors_total",
                "Requests answered with an error.",
                &["status", "code"],
            ),
            registry,
        };
        // Series that exist from the start, so dashboards see zeros, not gaps.
        for transport in TRANSPORTS {
            metrics.connections.with_label_values(&[transport]);
            metrics.delivered.with_label_values(&[transport]);
            metrics.slow_disconnects.with_label_values(&[transport]);
        }
        metrics
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}
