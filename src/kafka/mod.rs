//! Everything that talks to Kafka: the ingest consumer and replay of older
//! ranges, both turning each message into an owned [`Record`] at the
//! boundary, and the producer behind `POST /publish`. Transports never
//! reach in here.

pub mod ingest;
pub mod producer;
pub mod replay;
pub mod topics;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::statistics::Statistics;

use crate::config::KafkaConfig;
use crate::metrics::Metrics;
use crate::record::Record;

/// The same Kafka error is logged at most this often (it is always counted).
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The kinds of error every deployment should expect to see one day, whose
/// series exist from the first scrape so that an alert on their rate has
/// a baseline: the brokers unreachable (`AllBrokersDown`), one connection
/// lost (`BrokerTransportFailure`), a failed metadata refresh
/// (`metadata`), a request timed out (`MessageTimedOut`, `RequestTimedOut`),
/// a client created again because librdkafka dropped every broker it knew
/// (`brokers_forgotten`, see [`BrokerWatch`]). Any other librdkafka error
/// code appears under its own name when it first happens.
const EXPECTED_KINDS: [&str; 6] = [
    "AllBrokersDown",
    "BrokerTransportFailure",
    "metadata",
    "MessageTimedOut",
    "RequestTimedOut",
    BrokerWatch::KIND,
];

/// Kafka client errors as events: each one counted in
/// `herald_kafka_errors_total{kind}`, and logged at most every
/// [`ERROR_LOG_INTERVAL`] per kind, so a broker that is down does not flood
/// the log.
pub(crate) struct ErrorEvents {
    metrics: Arc<Metrics>,
    last_logged: Mutex<HashMap<String, Instant>>,
}

impl ErrorEvents {
    pub(crate) fn new(metrics: Arc<Metrics>) -> ErrorEvents {
        for kind in EXPECTED_KINDS {
            metrics.kafka_errors.with_label_values(&[kind]);
        }
        ErrorEvents {
            metrics,
            last_logged: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn report(&self, kind: &str, message: &str) {
        self.metrics.kafka_errors.with_label_values(&[kind]).inc();
        let mut last = self.last_logged.lock();
        let now = Instant::now();
        let due = last
            .get(kind)
            .is_none_or(|t| now.duration_since(*t) >= ERROR_LOG_INTERVAL);
        if due {
            last.insert(kind.to_owned(), now);
            tracing::warn!(kind, "kafka: {message}");
        }
    }

    /// A consumer created again because librdkafka dropped every broker it
    /// knew ([`BrokerWatch`]): counted under its kind once the new one
    /// exists (`goes_on` says how it carries on), under `client` when it
    /// could not be created (its owner tries again later), so that the
    /// kind counts clients created again.
    pub(crate) fn recreated(&self, client: &str, goes_on: &str, created: Result<(), &KafkaError>) {
        match created {
            Ok(()) => self.report(
                BrokerWatch::KIND,
                &format!(
                    "{}: the {client} was created again from kafka.brokers and {goes_on}",
                    BrokerWatch::CAUSE
                ),
            ),
            Err(e) => self.report(
                "client",
                &format!(
                    "{}, and the {client} cannot be created again: {e}",
                    BrokerWatch::CAUSE
                ),
            ),
        }
    }

    /// librdkafka's error callback: the kind is the error code's name.
    pub(crate) fn client_error(&self, error: KafkaError, reason: &str) {
        let kind = error
            .rdkafka_error_code()
            .map_or_else(|| "client".to_owned(), |c| format!("{c:?}"));
        self.report(&kind, &format!("{error}: {reason}"));
    }
}

/// Whether a long-lived client still knows a broker to connect to, as of
/// its last librdkafka statistics (every `kafka.stats_interval`).
///
/// A broker in controlled shutdown can answer a metadata request with its
/// topics and no broker (its own registration already fenced). librdkafka
/// 2.12 then decommissions every broker it knows, bootstrap ones included,
/// and comes back only if its own re-bootstrap wins a race with that
/// decommissioning; when it loses, the client asks no broker again, ever
/// (its time-based re-bootstrap starts only when a request is sent).
/// Herald's long-lived clients (the ingest, the publish producer and Web
/// Push's sender, follower and registry producer) watch for that state
/// and then create their client again from `kafka.brokers`
/// (docs/operations.md, "Kafka outages"; replayed by tests/outage.rs,
/// tests/publish.rs and tests/push.rs).
pub(crate) struct BrokerWatch(AtomicBool);

impl BrokerWatch {
    /// The `herald_kafka_errors_total` kind of a client created again.
    pub(crate) const KIND: &str = "brokers_forgotten";
    /// What happened, for the log line that goes with it.
    pub(crate) const CAUSE: &str = "librdkafka dropped every broker it knew (a broker in \
                                    controlled shutdown answered a metadata request with no \
                                    broker)";

    pub(crate) fn new() -> BrokerWatch {
        BrokerWatch(AtomicBool::new(true))
    }

    /// From the statistics callback. The group coordinator ("logical") and
    /// the internal broker are handles, not brokers: they cannot bring the
    /// client back.
    pub(crate) fn observe(&self, stats: &Statistics) {
        let knows = stats
            .brokers
            .values()
            .any(|b| matches!(b.source.as_str(), "configured" | "learned"));
        self.0.store(knows, Ordering::Relaxed);
    }

    pub(crate) fn knows_a_broker(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for BrokerWatch {
    fn default() -> BrokerWatch {
        BrokerWatch::new()
    }
}

/// The context of Herald's helper consumers (replay; the follower of the
/// Web Push subscriptions topic defers to it), which ask for the end of
/// each partition: that end is not an
/// error, though librdkafka also reports it to the client's error callback,
/// whose default would log it at ERROR level. Any other client error is
/// logged at WARN (it also reaches the consumer's poll, where its owner
/// handles it).
pub struct EndIsNotAnError;

impl rdkafka::ClientContext for EndIsNotAnError {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(rdkafka::error::RDKafkaErrorCode::PartitionEOF) {
            tracing::warn!("kafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndIsNotAnError {}

/// Copies a borrowed message into an owned [`Record`], once, at the
/// boundary: nothing borrowed from librdkafka outlives the poll that
/// returned it. `topic` is the interned name; headers are copied only when
/// some route reads them.
pub fn to_record(msg: &BorrowedMessage<'_>, topic: Arc<str>, with_headers: bool) -> Record {
    // Only when a route reads them: asking librdkafka for a record's
    // headers parses them into a list it allocates (with glibc's malloc),
    // which cost a quarter of the ingest thread's CPU on records with one
    // header (herald-bench's, P6).
    let headers = match with_headers.then(|| msg.headers()).flatten() {
        Some(h) => h
            .iter()
            .map(|h| (h.key.to_owned(), h.value.map(Bytes::copy_from_slice)))
            .collect(),
        None => Vec::new(),
    };
    Record {
        topic,
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp: msg.timestamp().to_millis(),
        key: msg.key().map(Bytes::copy_from_slice),
        headers,
        payload: msg.payload().map(Bytes::copy_from_slice),
    }
}

/// Settings of every consumer Herald creates: `assign()`-only (the group id
/// is never joined and nothing is committed), the consumer's own `settings`,
/// then the `[kafka.options]` table, which is applied last and wins.
pub fn consumer_config(
    config: &KafkaConfig,
    role: &str,
    settings: &[(&str, String)],
) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.brokers)
        .set("client.id", &config.client_id)
        .set("group.id", format!("{}-{role}", config.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Larger fetches: with librdkafka's defaults (1 MiB per partition,
        // 100k queued messages) a consumer of 100-byte records stalls at
        // ~200k records/s on this class of machine; with these it reads
        // ~800k/s (herald-bench ingest). Prefetch memory stays bounded by
        // queued.max.messages.kbytes (64 MiB by default).
        .set("max.partition.fetch.bytes", "10485760");
    for (k, v) in settings {
        cc.set(*k, v);
    }
    for (k, v) in &config.options {
        cc.set(k, v);
    }
    cc
}

/// Settings of a producer (`role` names it in `client.id`): the producer's own `settings`, then
/// the `[kafka.options]` table (shared with the consumers: `security.*`,
/// `sasl.*` apply to both, and librdkafka ignores a consumer-only property
/// in a producer with a warning), then what publishing promises and no
/// option may change: an idempotent producer (no duplicate and no reorder
/// from its own retries) waiting for every in-sync replica (`acks=all`).
/// Config validation refuses options that contradict those two.
pub fn producer_config(
    config: &KafkaConfig,
    role: &str,
    settings: &[(&str, String)],
) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.brokers)
        .set("client.id", format!("{}-{role}", config.client_id));
    for (k, v) in settings {
        cc.set(*k, v);
    }
    for (k, v) in &config.options {
        cc.set(k, v);
    }
    cc.set("enable.idempotence", "true").set("acks", "all");
    cc
}
