//! Web Push (RFC 8030 push protocol, RFC 8291 message encryption, RFC 8292
//! VAPID): notifications that reach a user whose page is closed.
//!
//! Its own room: nothing in the live WebSocket/SSE/poll path depends on
//! it, and `kafka` never imports it. The parts:
//!
//! - [`keys`]: the node's VAPID key pair (`herald push keygen`);
//! - [`endpoint`]: the allow-list every endpoint is checked against;
//! - [`store`] and [`registry`]: the subscription table, kept in a
//!   compacted Kafka topic and nowhere else, followed by every node;
//! - [`sender`]: a consumer group over the routed topics that pushes each
//!   record once per subscription of its channels, [`payload`] saying
//!   what a push carries and [`vapid`] signing it.

pub mod endpoint;
pub mod keys;
pub mod payload;
pub mod registry;
pub mod sender;
pub mod store;
pub mod vapid;

use std::sync::Arc;

use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaConfig, PushConfig};
use crate::hub::Hub;
use crate::metrics::Metrics;
use keys::VapidKeys;
use registry::Registry;
use store::Store;
use vapid::Vapid;

/// Web Push on one node.
pub struct Push {
    pub config: PushConfig,
    pub keys: VapidKeys,
    pub store: Arc<Store>,
    pub registry: Registry,
    vapid: Vapid,
    metrics: Arc<Metrics>,
}

impl Push {
    /// Loads the keys and creates the Kafka clients; nothing runs yet.
    pub fn new(
        kafka: &KafkaConfig,
        config: &PushConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Push, StartError> {
        let keys = VapidKeys::load(&config.vapid_private_key_file)?;
        let vapid = Vapid::new(&keys, &config.vapid_subject);
        Ok(Push {
            config: config.clone(),
            store: Arc::new(Store::new(metrics.push_subscriptions.clone())),
            registry: Registry::new(kafka, config, metrics.clone())?,
            keys,
            vapid,
            metrics,
        })
    }

    /// Starts following the subscriptions topic and the sender; both end
    /// at `shutdown`. The returned task ends once the sender has committed
    /// what it finished.
    pub fn start(
        self: &Arc<Self>,
        kafka: &KafkaConfig,
        hub: Hub,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, KafkaError> {
        self.registry
            .follow(kafka, &self.config, self.store.clone(), shutdown.clone())?;
        sender::start(self.clone(), hub, kafka, shutdown)
    }
}

/// Why Web Push could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error("cannot create the Kafka clients: {0}")]
    Kafka(#[from] KafkaError),
}
