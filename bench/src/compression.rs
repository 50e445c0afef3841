//! `suite deflate` (issue 17, item 3): what permessage-deflate saves and
//! costs. The same fan-out twice on a Herald with `ws.compression = true`:
//! once with clients that do not offer it (plain frames, as with
//! compression off), once with clients that offer it (`client
//! --deflate`). Per delivery: bytes on the wire (the frames the clients
//! received, divided by the records they got) and Herald's CPU; beside
//! them p50/p99, lost and duplicated.
//!
//! The records are the other scenarios' 100-byte JSON (`crate::payload`),
//! whose padding is a run of `x`: it compresses better than most real
//! payloads would. Each publication is compressed once, so Herald's CPU
//! for it is spread over every client: the per-delivery figure is the
//! cost of writing the compressed frames, not of compressing them.

use serde_json::{Value, json};

use crate::suite::{
    HeraldProc, Row, Workers, bench_route, create_topic, produce_paced, row, totals,
};

/// Records per second of both runs (P2's rate).
const RATE: u64 = 20;

/// One run's figures.
struct Run {
    json: Value,
    bytes_per_delivery: f64,
    cpu_us_per_delivery: f64,
    p99: f64,
    lost: u64,
    duplicates: u64,
}

/// `clients` WebSocket clients × [`RATE`] records/s for `duration` s,
/// plain then compressed.
pub fn run(brokers: &str, clients: usize, duration: f64) -> (Vec<Row>, Value) {
    let plain = fanout(brokers, clients, duration, false);
    let deflate = fanout(brokers, clients, duration, true);
    let mut rows = Vec::new();
    for (mode, r) in [("plain", &plain), ("deflate", &deflate)] {
        rows.push(row(
            "deflate",
            &format!("{mode}: bytes per delivery"),
            r.bytes_per_delivery,
            "info",
            f64::NAN,
            None,
            "B",
        ));
        rows.push(row(
            "deflate",
            &format!("{mode}: CPU µs per delivery"),
            r.cpu_us_per_delivery,
            "info",
            f64::NAN,
            None,
            "µs",
        ));
        rows.push(row(
            "deflate",
            &format!("{mode}: p99 ms"),
            r.p99,
            "info",
            f64::NAN,
            None,
            "ms",
        ));
        rows.push(row(
            "deflate",
            &format!("{mode}: lost"),
            r.lost as f64,
            "le",
            0.0,
            None,
            "records",
        ));
        rows.push(row(
            "deflate",
            &format!("{mode}: duplicated"),
            r.duplicates as f64,
            "le",
            0.0,
            None,
            "records",
        ));
    }
    rows.push(row(
        "deflate",
        "bytes: deflate / plain",
        deflate.bytes_per_delivery / plain.bytes_per_delivery,
        "info",
        f64::NAN,
        None,
        "×",
    ));
    (rows, json!({"plain": plain.json, "deflate": deflate.json}))
}

fn fanout(brokers: &str, clients: usize, duration: f64, deflate: bool) -> Run {
    let topic = crate::topic_name("deflate");
    create_topic(brokers, &topic, 1);
    let tables = bench_route(&topic) + "[ws]\ncompression = true\n";
    let herald = HeraldProc::start_with(brokers, "latest", "", &tables);
    let records = (RATE as f64 * duration).round() as u64;
    let offer: &[&str] = if deflate { &["--deflate"] } else { &[] };
    let workers = Workers::spawn(
        "ws",
        &herald.addr,
        clients,
        records,
        duration + 15.0,
        offer,
        2,
    );
    let cpu0 = herald.cpu_s();
    eprintln!(
        "bench: {clients} ws clients ({}) connected; producing {records} records at {RATE}/s",
        if deflate {
            "permessage-deflate"
        } else {
            "plain"
        }
    );
    let publish_s = produce_paced(brokers, &topic, RATE, records);
    let done = workers.finish();
    let cpu = herald.cpu_s() - cpu0;
    herald.stop();
    let t = totals(&done);
    let bytes: u64 = done.iter().map(|d| d.ws_bytes).sum();
    let received = t.received.max(1) as f64;
    let (p50, p99) = (t.hist.quantile_ms(0.5), t.hist.quantile_ms(0.99));
    let run = Run {
        bytes_per_delivery: bytes as f64 / received,
        cpu_us_per_delivery: 1e6 * cpu / received,
        p99,
        lost: t.lost,
        duplicates: t.duplicates,
        json: Value::Null,
    };
    Run {
        json: json!({
            "deflate": deflate, "clients": t.connected, "rate": RATE, "records": records,
            "received": t.received, "lost": t.lost, "duplicates": t.duplicates,
            "deliveries_per_s": t.received as f64 / publish_s.max(1e-9),
            "ws_bytes": bytes, "bytes_per_delivery": run.bytes_per_delivery,
            "herald_cpu_s": cpu, "cpu_us_per_delivery": run.cpu_us_per_delivery,
            "p50_ms": p50, "p99_ms": p99,
        }),
        ..run
    }
}
