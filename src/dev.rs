//! `herald dev`: Herald with an embedded Kafka (librdkafka's mock cluster),
//! sample routes, the demo page and a ticker producing sample records — the
//! zero-install way to try it. The mock cluster listens on a real TCP port,
//! so kcat or any Kafka client can produce to it; and `POST /publish` is on,
//! with a development API key made at start, printed in the banner and
//! handed to the demo page through `/dev/info`, so a first message needs no
//! Kafka client at all. Web Push is on too, with a VAPID key made for the
//! run, for the demo page's "Enable notifications" button.

use std::net::SocketAddr;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::node::{Herald, StartError};
use crate::push::keys::VapidKeys;

/// Topics created in the embedded Kafka, with their partition counts.
pub const DEV_TOPICS: &[(&str, i32)] = &[("news", 3), ("users", 3), ("events.clicks", 1)];

/// The embedded Kafka's push subscriptions topic.
const DEV_PUSH_TOPIC: &str = "herald.push.subscriptions";

/// The routes `herald dev` runs with.
const DEV_ROUTES: &str = r#"
[[route]]
topic = "news"
channel = "news"

[[route]]
topic = "users"
channel = "user.{key}"

[[route]]
topic_regex = "^events\\."
channel = "{topic}"
"#;

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("cannot start the embedded Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot make a development API key: {0}")]
    Random(getrandom::Error),
    #[error("cannot make a directory for the development VAPID key: {0}")]
    VapidDir(std::io::Error),
    #[error("cannot make a development VAPID key: {0}")]
    Vapid(crate::push::keys::KeyError),
}

/// A fresh publish key for this run: 128 random bits from the OS, in hex.
/// It lives as long as the process; anyone who can reach `/dev/info` can
/// read it, which is what the demo page needs and why it is for `herald
/// dev` only.
fn development_key() -> Result<String, DevError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(DevError::Random)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("herald-dev-{hex}"))
}

/// Runs until `shutdown` is cancelled.
pub async fn run(
    listen: SocketAddr,
    ticker: Duration,
    shutdown: CancellationToken,
) -> Result<(), DevError> {
    let cluster = MockCluster::new(1)?;
    for (topic, partitions) in DEV_TOPICS {
        cluster.create_topic(topic, *partitions, 1)?;
    }
    // Web Push with a VAPID key made for this run (subscriptions do not
    // outlive the embedded Kafka anyway), removed at exit.
    cluster.create_topic(DEV_PUSH_TOPIC, 1, 1)?;
    let vapid_dir = std::env::temp_dir().join(format!("herald-dev-{}", std::process::id()));
    std::fs::create_dir_all(&vapid_dir).map_err(DevError::VapidDir)?;
    let vapid_file = vapid_dir.join("vapid.pem");
    let _ = std::fs::remove_file(&vapid_file);
    VapidKeys::generate()
        .and_then(|keys| keys.write_new(&vapid_file))
        .map_err(DevError::Vapid)?;
    let brokers = cluster.bootstrap_servers();
    let key = development_key()?;
    let text = format!(
        "[kafka]\nbrokers = \"{brokers}\"\nmetadata_refresh = \"1s\"\nstats_interval = \"1s\"\n\n[http]\nlisten = \"{listen}\"\n\n[publish]\napi_keys = [\"{key}\"]\n\n[push]\nvapid_private_key_file = {vapid:?}\nvapid_subject = \"mailto:dev@herald.invalid\"\nsubscriptions_topic = \"{DEV_PUSH_TOPIC}\"\n{DEV_ROUTES}",
        vapid = vapid_file.display().to_string(),
    );
    let config = Config::parse(&text, "herald dev")?;
    let info = serde_json::json!({
        "brokers": brokers,
        "topics": DEV_TOPICS.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        "publish": {"url": "/publish", "api_key": key},
    });
    let herald = Herald::start_with(config, Some(info)).await?;
    let addr = herald.local_addr();
    println!(
        "\nHerald dev is running.\n\
         \n  demo page        http://{addr}/\n  stream           curl -N 'http://{addr}/sse?channel=news'\n  embedded Kafka   {brokers}  (topics: news, users, events.*)\n  publish key      {key}  (made for this run)\n  web push         on: VAPID key made for this run, GET /push/vapid-public-key\n\
         \nPublish a message (no Kafka client needed):\n  curl -H 'Authorization: Bearer {key}' -d '{{\"channel\":\"news\",\"data\":{{\"hello\":\"world\"}}}}' http://{addr}/publish\n  curl -H 'Authorization: Bearer {key}' -d '{{\"channel\":\"user.k7\",\"data\":{{\"n\":1}}}}' http://{addr}/publish\n\
         \nProduce a record:\n  echo '{{\"hello\":\"world\"}}' | kcat -P -b {brokers} -t news\n  echo 'k7:{{\"n\":1}}' | kcat -P -b {brokers} -t users -K:    # channel user.k7\n\
         \nWhat the embedded Kafka cannot do: delete records (DeleteRecords, retention), so the\n\
         gap a client gets for records lost to retention never happens here. To see one, run\n\
         a real broker (scripts/kafka.sh start) and herald serve against it, then delete\n\
         records below a client's cursor (docs/protocol.md, \"Gaps\").\n"
    );
    if !ticker.is_zero() {
        tokio::spawn(tick(brokers.clone(), ticker, shutdown.clone()));
    }
    shutdown.cancelled().await;
    herald.stop().await;
    drop(cluster);
    let _ = std::fs::remove_dir_all(&vapid_dir);
    Ok(())
}

/// Produces a small JSON record to `news` every `interval`, so the demo page
/// shows traffic without any producer.
async fn tick(brokers: String, interval: Duration, shutdown: CancellationToken) {
    let producer: FutureProducer = match rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("dev ticker disabled: {e}");
            return;
        }
    };
    let mut n: u64 = 0;
    let mut every = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        n += 1;
        let payload = serde_json::json!({"headline": format!("Tick {n}"), "source": "herald dev"})
            .to_string();
        let key = format!("tick-{}", n % 3);
        let record = FutureRecord::to("news").key(&key).payload(&payload);
        if let Err((e, _)) = producer.send(record, Duration::from_secs(5)).await {
            tracing::warn!("dev ticker: {e}");
        }
    }
}
