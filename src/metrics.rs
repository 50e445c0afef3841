//! Prometheus metrics. One [`Metrics`] value is created at start and passed
//! to every module; nothing is registered globally. The metric names listed
//! in `docs/protocol.md` are a contract: dashboards and alerts outside this
//! repo use them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus::core::{Collector, Desc};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, proto,
};

/// The `transport` label values, created at start so their series read 0.
pub const TRANSPORTS: &[&str] = &["sse", "ws", "poll"];

/// Low and high watermarks per partition, from librdkafka's statistics
/// (the ingest writes them; `/metrics` reads them for
/// `herald_partition_lag`).
#[derive(Default)]
pub struct Watermarks {
    inner: parking_lot::Mutex<std::collections::HashMap<(String, i32), (i64, i64)>>,
}

impl Watermarks {
    pub fn get(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
        self.inner
            .lock()
            .get(&(topic.to_owned(), partition))
            .copied()
    }

    /// Records a partition's watermarks read when it is assigned, unless a
    /// statistics report has already given newer ones: so that
    /// `herald_partition_lag` has every partition from the first scrape
    /// after `/readyz`, not only after the first report
    /// (`kafka.stats_interval`).
    pub fn seed(&self, topic: &str, partition: i32, low: i64, high: i64) {
        self.inner
            .lock()
            .entry((topic.to_owned(), partition))
            .or_insert((low, high));
    }

    /// Records `((topic, partition), (low, high))` pairs from one
    /// statistics report.
    pub fn update(&self, marks: impl IntoIterator<Item = ((String, i32), (i64, i64))>) {
        self.inner.lock().extend(marks);
    }
}

pub struct Metrics {
    registry: Registry,
    /// Open streaming connections, by transport.
    pub connections: IntGaugeVec,
    /// Records read from Kafka, by topic and partition.
    pub consumed: IntCounterVec,
    /// Times the ingest found its position deleted by Kafka before it was
    /// read and went on at the partition's start, by topic and partition.
    pub ingest_resets: IntCounterVec,
    /// Messages written to clients, by transport.
    pub delivered: IntCounterVec,
    /// `delivered`'s series, one per entry of [`TRANSPORTS`], resolved
    /// once: counting a delivery takes no label lookup.
    delivered_by: Vec<IntCounter>,
    /// High watermark minus Herald's position, by topic and partition.
    pub partition_lag: IntGaugeVec,
    /// Kafka record timestamp → written to a client socket.
    pub delivery_latency: LatencyHistogram,
    /// Clients cut off because their queue overflowed, by transport.
    pub slow_disconnects: IntCounterVec,
    /// Records read back from Kafka to serve resuming clients.
    pub replay_records: IntCounter,
    /// Replays from Kafka that failed (Kafka unreadable, or past
    /// `replay.timeout`), on every transport: a poll also answers `503
    /// replay_failed`, a stream ends with `replay_failed`.
    pub replay_failures: IntCounter,
    /// 1 while `/readyz` would answer 200, else 0: set at each scrape, so
    /// an alert needs no probe of its own.
    pub ready: IntGauge,
    /// Records no route maps to any channel, by topic.
    pub unrouted: IntCounterVec,
    /// Records produced through `POST /publish` and acknowledged by Kafka,
    /// by topic.
    pub published: IntCounterVec,
    /// Errors reported by librdkafka, by kind.
    pub kafka_errors: IntCounterVec,
    /// Channels held by the hub (with history or subscribers).
    pub hub_channels: IntGauge,
    /// Bytes of message history held across all channels.
    pub hub_history_bytes: IntGauge,
    /// Publications dropped from history, by reason (count, bytes, age, budget,
    /// reset).
    pub hub_evictions: IntCounterVec,
    /// Requests answered with an error, by status code and error code.
    pub http_errors: IntCounterVec,
    /// Messages delivered to resuming clients from history or from Kafka
    /// (in `delivered` too, not in `delivery_latency`), by transport.
    pub catch_up_delivered: IntCounterVec,
    /// Web Push subscriptions in this node's table.
    pub push_subscriptions: IntGauge,
    /// Push attempts by result (`delivered`, `expired`, `retried`,
    /// `dropped`) and push service (`scheme://host:port`).
    pub push_sent: IntCounterVec,
    /// Kafka record timestamp → the push service accepted the push, by
    /// push service.
    pub push_latency: HistogramVec,
    /// Partitions of the routed topics this node pushes for (its share of
    /// the `push.group_id` group).
    pub push_assigned_partitions: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, … (Linux), for the dashboard and for sizing.
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector registers once");
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
        let mut metrics = Metrics {
            connections: gauge_vec(
                "herald_connections",
                "Open client connections by transport.",
                &["transport"],
            ),
            consumed: counter_vec(
                "herald_messages_consumed_total",
                "Records read from Kafka.",
                &["topic", "partition"],
            ),
            ingest_resets: counter_vec(
                "herald_ingest_resets_total",
                "Times Kafka deleted records before Herald read them (subscribers were sent a gap).",
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
                LatencyHistogram::new(
                    "herald_delivery_latency_seconds",
                    "Time from the Kafka record timestamp to the message being written to a client.",
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ],
                ),
            ),
            slow_disconnects: counter_vec(
                "herald_slow_client_disconnects_total",
                "Clients disconnected because they fell too far behind.",
                &["transport"],
            ),
            replay_records: reg(
                &registry,
                IntCounter::new(
                    "herald_replay_records_total",
                    "Records read back from Kafka for resuming clients.",
                )
                .expect("valid metric"),
            ),
            replay_failures: reg(
                &registry,
                IntCounter::new(
                    "herald_replay_failures_total",
                    "Replays from Kafka that failed (Kafka unreadable, or past replay.timeout), every transport.",
                )
                .expect("valid metric"),
            ),
            ready: reg(
                &registry,
                IntGauge::new(
                    "herald_ready",
                    "1 while /readyz answers 200 (partitions assigned, positions known, metadata fresh), else 0.",
                )
                .expect("valid metric"),
            ),
            unrouted: counter_vec(
                "herald_unrouted_records_total",
                "Records that no route maps to a channel.",
                &["topic"],
            ),
            published: counter_vec(
                "herald_published_records_total",
                "Records produced through POST /publish and acknowledged by Kafka.",
                &["topic"],
            ),
            kafka_errors: counter_vec(
                "herald_kafka_errors_total",
                "Errors reported by the Kafka client.",
                &["kind"],
            ),
            hub_channels: reg(
                &registry,
                IntGauge::new("herald_hub_channels", "Channels held in memory.")
                    .expect("valid metric"),
            ),
            hub_history_bytes: reg(
                &registry,
                IntGauge::new(
                    "herald_hub_history_bytes",
                    "Bytes of history held in memory.",
                )
                .expect("valid metric"),
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
            catch_up_delivered: counter_vec(
                "herald_catch_up_delivered_total",
                "Messages delivered to resuming clients from history or Kafka (not in herald_delivery_latency_seconds).",
                &["transport"],
            ),
            push_subscriptions: reg(
                &registry,
                IntGauge::new(
                    "herald_push_subscriptions",
                    "Web Push subscriptions in this node's table.",
                )
                .expect("valid metric"),
            ),
            push_sent: counter_vec(
                "herald_push_sent_total",
                "Web Push attempts by result (delivered, expired, retried, dropped) and push service.",
                &["result", "service"],
            ),
            push_latency: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "herald_push_latency_seconds",
                        "Kafka record timestamp to the push service accepting the push.",
                    )
                    .buckets(vec![
                        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                    ]),
                    &["service"],
                )
                .expect("valid metric"),
            ),
            push_assigned_partitions: reg(
                &registry,
                IntGauge::new(
                    "herald_push_assigned_partitions",
                    "Partitions of the routed topics this node pushes for (its share of push.group_id).",
                )
                .expect("valid metric"),
            ),
            delivered_by: Vec::new(),
            registry,
        };
        // Series that exist from the start, so dashboards see zeros, not gaps.
        for transport in TRANSPORTS {
            metrics.connections.with_label_values(&[transport]);
            metrics.slow_disconnects.with_label_values(&[transport]);
            metrics.catch_up_delivered.with_label_values(&[transport]);
        }
        metrics.delivered_by = TRANSPORTS
            .iter()
            .map(|t| metrics.delivered.with_label_values(&[t]))
            .collect();
        metrics
    }

    /// `herald_messages_delivered_total{transport}`.
    pub fn delivered_to(&self, transport: &str) -> &IntCounter {
        let i = TRANSPORTS
            .iter()
            .position(|t| *t == transport)
            .expect("a transport of TRANSPORTS");
        &self.delivered_by[i]
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

/// A histogram observed once per delivered message, up to millions of
/// times a second from every worker thread. prometheus's `Histogram` does
/// four atomic operations on shared cache lines per observation (4% of
/// Herald's CPU at a million deliveries a second); here each thread counts
/// into its own shard (a batch at a time, in milliseconds, the resolution
/// of Kafka timestamps) and the shards are summed when `/metrics` is read.
#[derive(Clone)]
pub struct LatencyHistogram(Arc<LatencyInner>);

struct LatencyInner {
    desc: Desc,
    /// Upper bounds, seconds.
    bounds: Vec<f64>,
    shards: Box<[LatencyShard]>,
}

/// One thread's counts: per bucket (not cumulative; the last is +Inf) and
/// the sum in milliseconds. Aligned so shards share no cache line.
#[repr(align(128))]
struct LatencyShard {
    buckets: Box<[AtomicU64]>,
    sum_ms: AtomicU64,
}

/// Shards: more than the worker threads of a typical node; threads beyond
/// that share, which is still correct, only slower.
const LATENCY_SHARDS: usize = 16;

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % LATENCY_SHARDS;
    }
    INDEX.with(|i| *i)
}

impl LatencyHistogram {
    pub fn new(name: &str, help: &str, bounds: &[f64]) -> Self {
        let desc = Desc::new(name.into(), help.into(), Vec::new(), Default::default())
            .expect("valid metric");
        let shards = (0..LATENCY_SHARDS)
            .map(|_| LatencyShard {
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_ms: AtomicU64::new(0),
            })
            .collect();
        LatencyHistogram(Arc::new(LatencyInner {
            desc,
            bounds: bounds.to_vec(),
            shards,
        }))
    }

    /// Observes latencies given in whole milliseconds.
    pub fn observe_ms(&self, latencies: impl Iterator<Item = u64>) {
        let inner = &*self.0;
        let shard = &inner.shards[shard_index()];
        let mut sum = 0;
        for ms in latencies {
            let seconds = ms as f64 / 1000.0;
            let bucket = inner.bounds.partition_point(|&b| b < seconds);
            shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
            sum += ms;
        }
        if sum > 0 {
            shard.sum_ms.fetch_add(sum, Ordering::Relaxed);
        }
    }

    /// Observations so far (the `_count` series).
    pub fn count(&self) -> u64 {
        self.0
            .shards
            .iter()
            .flat_map(|s| s.buckets.iter())
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl Collector for LatencyHistogram {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let inner = &*self.0;
        let mut counts = vec![0u64; inner.bounds.len() + 1];
        let mut sum_ms = 0;
        for shard in inner.shards.iter() {
            for (total, bucket) in counts.iter_mut().zip(shard.buckets.iter()) {
                *total += bucket.load(Ordering::Relaxed);
            }
            sum_ms += shard.sum_ms.load(Ordering::Relaxed);
        }
        let mut cumulative = 0;
        let buckets = inner
            .bounds
            .iter()
            .zip(&counts)
            .map(|(&bound, &n)| {
                cumulative += n;
                let mut b = proto::Bucket::default();
                b.set_upper_bound(bound);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        // `_count` is the buckets' total (+Inf included), so it always
        // agrees with them.
        let mut h = proto::Histogram::default();
        h.set_sample_count(counts.iter().sum());
        h.set_sample_sum(sum_ms as f64 / 1000.0);
        h.set_bucket(buckets);
        let mut m = proto::Metric::default();
        m.set_histogram(h);
        let mut family = proto::MetricFamily::default();
        family.set_name(inner.desc.fq_name.clone());
        family.set_help(inner.desc.help.clone());
        family.set_field_type(proto::MetricType::HISTOGRAM);
        family.set_metric(vec![m]);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_renders_cumulative_buckets() {
        let metrics = Metrics::new();
        metrics
            .delivery_latency
            .observe_ms([0, 1, 2, 30, 20_000].into_iter());
        std::thread::spawn({
            let h = metrics.delivery_latency.clone();
            move || h.observe_ms([3].into_iter())
        })
        .join()
        .unwrap();
        assert_eq!(metrics.delivery_latency.count(), 6);
        let text = metrics.render();
        for line in [
            "herald_delivery_latency_seconds_bucket{le=\"0.001\"} 2",
            "herald_delivery_latency_seconds_bucket{le=\"0.0025\"} 3",
            "herald_delivery_latency_seconds_bucket{le=\"0.005\"} 4",
            "herald_delivery_latency_seconds_bucket{le=\"0.05\"} 5",
            "herald_delivery_latency_seconds_bucket{le=\"10\"} 5",
            "herald_delivery_latency_seconds_bucket{le=\"+Inf\"} 6",
            "herald_delivery_latency_seconds_sum 20.036",
            "herald_delivery_latency_seconds_count 6",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
