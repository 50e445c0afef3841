//! `/metrics`, `/healthz` and `/readyz` against a real broker.

mod common;

use common::*;

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_the_named_series_with_the_right_values() {
    let topic = unique_topic("metrics");
    let keyed = unique_topic("keyed");
    create_topic(&topic, 3).await;
    create_topic(&keyed, 1).await;
    let herald = start(
        config(&[(&topic, "m"), (&keyed, "user.{key}")]),
        &[(&topic, 3), (&keyed, 1)],
    )
    .await;
    let addr = herald.local_addr();
    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 200);

    let mut sse = Sse::connect(addr, "channel=m", None).await;
    let producer = Producer::new();
    let mut per_partition = [0u64; 3];
    for n in 0..60 {
        let (p, _) = producer.send_n(&topic, &format!("k{n}"), n).await;
        per_partition[p as usize] += 1;
    }
    // Records without a key match no route of `keyed`: counted as unrouted.
    for _ in 0..2 {
        producer.send(&keyed, None, None, Some(b"{}"), None).await;
    }
    sse.messages(60).await;

    let series = |partition: usize, t: &str| format!("{{partition=\"{partition}\",topic=\"{t}\"}}");
    // Lag comes from librdkafka's statistics (every 200ms here): wait for it.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let metrics = loop {
        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let m = parse_metrics(&text);
        let settled = (0..3)
            .all(|p| m.get(&format!("herald_partition_lag{}", series(p, &topic))) == Some(&0.0))
            && m.get(&format!(
                "herald_unrouted_records_total{{topic=\"{keyed}\"}}"
            )) == Some(&2.0);
        if settled {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lag never reached 0: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    for (p, count) in per_partition.iter().enumerate() {
        assert_eq!(
            metrics.get(&format!(
                "herald_messages_consumed_total{}",
                series(p, &topic)
            )),
            (*count > 0).then_some(*count as f64).as_ref(),
            "consumed on partition {p}"
        );
    }
    assert_eq!(
        metrics["herald_messages_delivered_total{transport=\"sse\"}"],
        60.0
    );
    assert_eq!(metrics["herald_connections{transport=\"sse\"}"], 1.0);
    assert_eq!(metrics["herald_delivery_latency_seconds_count"], 60.0);
    assert_eq!(
        metrics["herald_slow_client_disconnects_total{transport=\"sse\"}"],
        0.0
    );
    assert_eq!(metrics["herald_replay_records_total"], 0.0);

    // A client that goes away is noticed without waiting for a heartbeat.
    drop(sse);
    wait_until_metric(addr, "herald_connections{transport=\"sse\"}", 0.0).await;
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_kafka_positions() {
    // A broker address where nothing listens: never ready.
    let mut cfg = config(&[("nothing", "n")]);
    cfg.kafka.brokers = "127.0.0.1:1".into();
    let herald = herald::Herald::start(cfg).await.unwrap();
    let addr = herald.local_addr();
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not_ready"));
    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (_, text) = get(addr, "/metrics").await;
    assert_eq!(
        parse_metrics(&text).get("herald_ready"),
        Some(&0.0),
        "{text}"
    );
    // Subscribing before positions are known is held for a while
    // (hub::READY_WAIT), then refused — not hung.
    let sse = Sse::connect(addr, "channel=n", None).await;
    assert_eq!(sse.status, 503);
    assert_eq!(sse.error_body().await["error"]["code"], "not_ready");
    herald.stop().await;
}

/// The `(status, code)` pairs of the error tables in `docs/protocol.md`
/// (rows `| 4xx | `code`[, `code`] | … |`).
fn documented_error_codes() -> std::collections::BTreeSet<(u16, String)> {
    let doc = include_str!("../docs/protocol.md");
    let mut pairs = std::collections::BTreeSet::new();
    for row in doc.lines() {
        let mut cells = row.split('|').map(str::trim).skip(1);
        let (Some(status), Some(codes)) = (cells.next(), cells.next()) else {
            continue;
        };
        let Ok(status) = status.parse::<u16>() else {
            continue;
        };
        if !(400..=599).contains(&status) {
            continue;
        }
        for code in codes.split(',') {
            if let Some(code) = code
                .trim()
                .strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
            {
                pairs.insert((status, code.to_owned()));
            }
        }
    }
    pairs
}

/// Every documented series exists as soon as the node is ready: each
/// partition's `herald_partition_lag` long before librdkafka's first
/// statistics report, and the counters at zero for their known labels
/// (partitions, topics, transports, the documented error codes, eviction
/// reasons, the common Kafka error kinds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_series_is_there_from_the_first_scrape_after_ready() {
    let topic = unique_topic("lagnow");
    create_topic(&topic, 3).await;
    let mut cfg = config(&[(&topic, "m")]);
    // No statistics report during the test.
    cfg.kafka.stats_interval = std::time::Duration::from_secs(600);
    cfg.publish = Some(herald::config::PublishConfig {
        api_keys: vec!["k".repeat(32)],
        ..Default::default()
    });
    let herald = start(cfg, &[(&topic, 3)]).await;
    let addr = herald.local_addr();
    assert_eq!(get(addr, "/readyz").await.0, 200);
    let (_, text) = get(addr, "/metrics").await;
    let m = parse_metrics(&text);
    let zero = |series: String| assert_eq!(m.get(&series), Some(&0.0), "{series} in {text}");
    for p in 0..3 {
        zero(format!(
            "herald_partition_lag{{partition=\"{p}\",topic=\"{topic}\"}}"
        ));
        zero(format!(
            "herald_ingest_resets_total{{partition=\"{p}\",topic=\"{topic}\"}}"
        ));
        zero(format!(
            "herald_messages_consumed_total{{partition=\"{p}\",topic=\"{topic}\"}}"
        ));
    }
    zero(format!(
        "herald_unrouted_records_total{{topic=\"{topic}\"}}"
    ));
    zero(format!(
        "herald_published_records_total{{topic=\"{topic}\"}}"
    ));
    for transport in ["sse", "ws", "poll"] {
        for name in [
            "herald_connections",
            "herald_messages_delivered_total",
            "herald_slow_client_disconnects_total",
            "herald_catch_up_delivered_total",
        ] {
            zero(format!("{name}{{transport=\"{transport}\"}}"));
        }
    }
    for reason in ["count", "bytes", "age", "budget", "reset"] {
        zero(format!("herald_hub_evictions_total{{reason=\"{reason}\"}}"));
    }
    for kind in [
        "AllBrokersDown",
        "BrokerTransportFailure",
        "metadata",
        "brokers_forgotten",
    ] {
        zero(format!("herald_kafka_errors_total{{kind=\"{kind}\"}}"));
    }
    zero("herald_replay_records_total".into());
    zero("herald_replay_failures_total".into());
    assert_eq!(m.get("herald_ready"), Some(&1.0), "{text}");
    zero("herald_delivery_latency_seconds_count".into());
    // Every error code the docs list, and none they do not: the series
    // are the code's own table (herald::http::error::CODES).
    let documented = documented_error_codes();
    assert!(documented.len() > 40, "{documented:?}");
    let seeded: std::collections::BTreeSet<(u16, String)> = m
        .keys()
        .filter_map(|k| {
            let labels = k.strip_prefix("herald_http_errors_total{code=\"")?;
            let (code, rest) = labels.split_once("\",status=\"")?;
            Some((rest.strip_suffix("\"}")?.parse().ok()?, code.to_owned()))
        })
        .collect();
    assert_eq!(
        seeded, documented,
        "herald_http_errors_total against docs/protocol.md"
    );
    for pair in &seeded {
        zero(format!(
            "herald_http_errors_total{{code=\"{}\",status=\"{}\"}}",
            pair.1, pair.0
        ));
    }
    // The process collector the dashboard's Process row reads.
    assert!(
        m.get("process_resident_memory_bytes")
            .is_some_and(|b| *b > 0.0),
        "{text}"
    );
    assert!(m.contains_key("process_cpu_seconds_total"), "{text}");
    herald.stop().await;
}

/// A resuming client's catch-up is not latency: records it gets from
/// history are counted in `herald_catch_up_delivered_total`, and only
/// records published while it is subscribed in
/// `herald_delivery_latency_seconds`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latency_histogram_counts_live_deliveries_only() {
    let (topic, herald) = herald_with_topic("catchup", 1, "c").await;
    let addr = herald.local_addr();
    let (_, cursor) = poll_ok(addr, "channel=c").await;
    let producer = Producer::new();
    for n in 0..20 {
        producer.send_n(&topic, "k", n).await;
    }
    // Wait until the hub holds them, so they come from history.
    wait_until_metric(
        addr,
        &format!("herald_messages_consumed_total{{partition=\"0\",topic=\"{topic}\"}}"),
        20.0,
    )
    .await;
    let mut sse = Sse::connect(addr, "channel=c", Some(&cursor)).await;
    assert_eq!(ns(&sse.messages(20).await), (0..20).collect::<Vec<_>>());
    for n in 20..25 {
        producer.send_n(&topic, "k", n).await;
    }
    assert_eq!(ns(&sse.messages(5).await), (20..25).collect::<Vec<_>>());
    wait_until_metric(
        addr,
        "herald_messages_delivered_total{transport=\"sse\"}",
        25.0,
    )
    .await;
    assert_eq!(
        metric(addr, "herald_catch_up_delivered_total{transport=\"sse\"}").await,
        20.0
    );
    assert_eq!(
        metric(addr, "herald_delivery_latency_seconds_count").await,
        5.0
    );
    herald.stop().await;
}
