//! `herald-bench suite curve` and `suite delay`: performance as a curve,
//! not a point (issue 17).
//!
//! - **curve** sweeps the delivery rate at 10,000 and at 2,000 WebSocket
//!   clients on one channel (50k, 100k, 200k, 500k and 1M deliveries/s
//!   each), Herald and the fan-out floor (`floor-server`) in the same run
//!   with the same client workers: CPU µs, write system calls and context
//!   switches per delivery, p50/p99, lost, cut off and resumed. Target:
//!   Herald within 1.1× of the floor's CPU per delivery at every point, and
//!   its curve flat within 2× from 100k to 1M deliveries/s. Also writes
//!   `curve.svg`.
//! - **delay** runs 10,000 clients × 100/s and 2,000 × 100/s and × 500/s
//!   with `ws.write_delay` 0, 2, 5 and 10 ms: what a latency budget buys
//!   in CPU.
//!
//! `BENCH_CURVE_POINTS=10000x10,2000x50` runs only those points
//! (clients × records/s), to profile one.

use std::path::Path;

use serde_json::{Value, json};

use crate::suite::{FanoutResult, Opts, Row, floor_fanout, herald_fanout_with, row};

/// The sweep: (clients, records/s), 50k to 1M deliveries/s at each size.
const POINTS: [(usize, u64); 10] = [
    (10_000, 5),
    (10_000, 10),
    (10_000, 20),
    (10_000, 50),
    (10_000, 100),
    (2_000, 25),
    (2_000, 50),
    (2_000, 100),
    (2_000, 250),
    (2_000, 500),
];

/// The write delays `delay` compares (ms), at these points: a delay
/// gathers only what a connection gets within it, so from 10 records/s
/// per connection (one per 100 ms) to 500 (one per 2 ms).
const DELAYS_MS: [u64; 4] = [0, 2, 5, 10];
const DELAY_POINTS: [(usize, u64); 3] = [(10_000, 100), (2_000, 100), (2_000, 500)];

/// Herald within this factor of the floor's CPU per delivery.
const FLOOR_FACTOR: f64 = 1.1;
/// Herald's CPU per delivery from 100k to 1M deliveries/s: highest ÷ lowest.
const FLAT_FACTOR: f64 = 2.0;

fn points(all: &[(usize, u64)]) -> Vec<(usize, u64)> {
    let Ok(only) = std::env::var("BENCH_CURVE_POINTS") else {
        return all.to_vec();
    };
    only.split(',')
        .filter_map(|p| {
            let (c, r) = p.trim().split_once('x')?;
            Some((c.parse().ok()?, r.parse().ok()?))
        })
        .collect()
}

fn label(clients: usize, rate: u64) -> String {
    format!(
        "{}k×{rate}/s ({})",
        clients / 1000,
        deliveries(clients as u64 * rate)
    )
}

fn deliveries(per_s: u64) -> String {
    if per_s >= 1_000_000 {
        format!("{}M", per_s as f64 / 1e6)
    } else {
        format!("{}k", per_s / 1000)
    }
}

fn cpu(r: &FanoutResult) -> f64 {
    r.json["cpu_us_per_delivery"].as_f64().unwrap_or(f64::NAN)
}

fn writes(r: &FanoutResult) -> f64 {
    r.json["writes_per_delivery"].as_f64().unwrap_or(f64::NAN)
}

/// The rows of one point: Herald against the floor.
fn point_rows(name: &str, l: &str, h: &FanoutResult, f: Option<&FanoutResult>) -> Vec<Row> {
    let (cmp, target) = match f {
        Some(f) => ("le", FLOOR_FACTOR * cpu(f)),
        None => ("info", f64::NAN),
    };
    vec![
        row(
            name,
            &format!("{l}: CPU µs per delivery"),
            cpu(h),
            cmp,
            target,
            f.map(cpu),
            "µs",
        ),
        row(
            name,
            &format!("{l}: writes per delivery"),
            writes(h),
            "info",
            f64::NAN,
            f.map(writes),
            "",
        ),
        row(
            name,
            &format!("{l}: p50 ms"),
            h.p50,
            "info",
            f64::NAN,
            f.map(|f| f.p50),
            "ms",
        ),
        row(
            name,
            &format!("{l}: p99 ms"),
            h.p99,
            "info",
            f64::NAN,
            f.map(|f| f.p99),
            "ms",
        ),
        row(
            name,
            &format!("{l}: lost"),
            h.lost as f64,
            "le",
            0.0,
            f.map(|f| f.lost as f64),
            "records",
        ),
        row(
            name,
            &format!("{l}: duplicated"),
            h.duplicates as f64,
            "le",
            0.0,
            f.map(|f| f.duplicates as f64),
            "records",
        ),
        row(
            name,
            &format!("{l}: resumed of cut off"),
            h.resumed as f64,
            "ge",
            h.cut_off as f64,
            None,
            "conns",
        ),
    ]
}

pub fn curve(brokers: &str, duration: f64) -> (Vec<Row>, Value) {
    let mut rows = Vec::new();
    let mut details = Vec::new();
    // (clients, deliveries/s, Herald's CPU µs, the floor's).
    let mut plotted: Vec<(usize, u64, f64, f64)> = Vec::new();
    for (clients, rate) in points(&POINTS) {
        let l = label(clients, rate);
        eprintln!("bench: curve: {l}");
        let h = herald_fanout_with(brokers, "ws", clients, rate, duration, &Opts::default());
        let f = floor_fanout(clients, rate, duration);
        rows.extend(point_rows("curve", &l, &h, Some(&f)));
        plotted.push((clients, clients as u64 * rate, cpu(&h), cpu(&f)));
        details.push(json!({"clients": clients, "rate": rate, "herald": h.json, "floor": f.json}));
    }
    for clients in [10_000, 2_000] {
        let flat: Vec<f64> = plotted
            .iter()
            .filter(|p| p.0 == clients && p.1 >= 100_000)
            .map(|p| p.2)
            .collect();
        if flat.len() >= 2 {
            let (lo, hi) = flat.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
                (lo.min(*v), hi.max(*v))
            });
            rows.push(row(
                "curve",
                &format!(
                    "{}k: CPU per delivery, highest ÷ lowest, 100k–1M/s",
                    clients / 1000
                ),
                hi / lo,
                "le",
                FLAT_FACTOR,
                None,
                "×",
            ));
        }
    }
    (rows, json!({ "points": details, "plotted": plotted }))
}

pub fn delay(brokers: &str, duration: f64) -> (Vec<Row>, Value) {
    let mut rows = Vec::new();
    let mut details = Vec::new();
    for (clients, rate) in points(&DELAY_POINTS) {
        for ms in DELAYS_MS {
            let l = format!("{} delay {ms} ms", label(clients, rate));
            eprintln!("bench: delay: {l}");
            let opts = Opts {
                config: format!("[ws]\nwrite_delay = \"{ms}ms\"\n"),
                ..Opts::default()
            };
            let h = herald_fanout_with(brokers, "ws", clients, rate, duration, &opts);
            rows.extend(point_rows("delay", &l, &h, None));
            details.push(
                json!({"clients": clients, "rate": rate, "write_delay_ms": ms, "herald": h.json}),
            );
        }
    }
    (rows, json!({ "points": details }))
}

/// `curve.svg` from `curve.json` in `dir`, if there is one: CPU µs per
/// delivery against deliveries/s (log scale), Herald and the floor, at
/// each client count.
pub fn plot(dir: &Path) {
    let Some(plotted) = std::fs::read_to_string(dir.join("curve.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| {
            serde_json::from_value::<Vec<(usize, u64, f64, f64)>>(v["details"]["plotted"].clone())
                .ok()
        })
    else {
        return;
    };
    std::fs::write(dir.join("curve.svg"), svg(&plotted)).expect("curve.svg");
}

fn svg(points: &[(usize, u64, f64, f64)]) -> String {
    let (left, top, w, h) = (70.0, 40.0, 520.0, 300.0);
    let y_max = points
        .iter()
        .flat_map(|p| [p.2, p.3])
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        .ceil();
    let (x_lo, x_hi) = (40_000f64.log10(), 1_250_000f64.log10());
    let x = |d: f64| left + w * (d.log10() - x_lo) / (x_hi - x_lo);
    let y = |v: f64| top + h - h * (v / y_max).clamp(0.0, 1.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"10\" y=\"20\" font-weight=\"bold\">herald-bench curve: CPU µs per delivery (WebSocket, one channel)</text>\n",
        left + w + 170.0,
        top + h + 45.0
    );
    s.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#555\"/>\n<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"#555\"/>\n",
        top + h,
        left + w,
        top + h,
        top + h
    ));
    for d in [50_000u64, 100_000, 200_000, 500_000, 1_000_000] {
        let xd = x(d as f64);
        s.push_str(&format!(
            "<line x1=\"{xd:.1}\" y1=\"{top}\" x2=\"{xd:.1}\" y2=\"{}\" stroke=\"#ddd\"/>\n<text x=\"{xd:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            top + h,
            top + h + 16.0,
            deliveries(d)
        ));
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">deliveries/s</text>\n",
        left + w / 2.0,
        top + h + 34.0
    ));
    let ticks = 5;
    for i in 0..=ticks {
        let v = y_max * i as f64 / ticks as f64;
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>\n",
            left - 6.0,
            y(v) + 4.0
        ));
    }
    let series = [
        (10_000usize, false, "#1f5fbf", "Herald, 10k clients"),
        (10_000, true, "#1f5fbf", "floor, 10k clients"),
        (2_000, false, "#d9661a", "Herald, 2k clients"),
        (2_000, true, "#d9661a", "floor, 2k clients"),
    ];
    for (i, (clients, floor, color, name)) in series.into_iter().enumerate() {
        let pts: Vec<String> = points
            .iter()
            .filter(|p| p.0 == clients)
            .map(|p| (p.1 as f64, if floor { p.3 } else { p.2 }))
            .filter(|(_, v)| v.is_finite())
            .map(|(d, v)| format!("{:.1},{:.1}", x(d), y(v)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let dash = if floor {
            " stroke-dasharray=\"5 4\""
        } else {
            ""
        };
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash} points=\"{}\"/>\n",
            pts.join(" ")
        ));
        let ly = top + 14.0 + 18.0 * i as f64;
        s.push_str(&format!(
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>\n<text x=\"{}\" y=\"{}\">{name}</text>\n",
            left + w + 10.0,
            left + w + 35.0,
            left + w + 40.0,
            ly + 4.0
        ));
    }
    s.push_str("</svg>\n");
    s
}
