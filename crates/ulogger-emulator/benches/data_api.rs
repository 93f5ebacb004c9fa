//! The data API's `GET /metrics` over a million stored metrics.
//!
//! `cargo bench -p ulogger-emulator --bench data_api` starts an emulator
//! (temporary data directory, plain HTTP), posts `METRICS` metrics to
//! `POST /publish/metrics` (`DEVICES` devices, `NAMES` names, timestamps
//! spread over the last 30 days; the real write path), then times
//! `QUERIES` queries of the platform's shape
//! (`/metrics?application_id&device_serial&metric_name&start=7d&limit=10`,
//! a fresh connection each, as a script's client makes) and reports p50
//! and p99 (target: p99 under 50 ms). Side by side it times the same
//! query's SQL alone on the database file, and the same SQL with the
//! indexes bypassed (`NOT INDEXED`, a full scan): the ratio HTTP / SQL is
//! what the API adds, the ratio full scan / HTTP what the indexes save.
//! It also times the largest answer (`limit=10000`), where rendering the
//! JSON dominates.
//!
//! `cargo test --benches` runs it once on 20,000 metrics, to check that it
//! works.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use ulogger_emulator::{Emulator, EmulatorConfig, PlatformLimits};

const METRICS: usize = 1_000_000;
const PER_POST: usize = 1_000;
const DEVICES: usize = 100;
const NAMES: usize = 10;
const QUERIES: usize = 300;
const SCANS: usize = 5;
const LARGEST: usize = 20;
const APP: u32 = 7;

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let total = if measuring { METRICS } else { 20_000 };
    let emulator = Emulator::start(
        EmulatorConfig::new(1)
            .plaintext(true)
            .limits(PlatformLimits::unlimited()),
    )
    .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let started = Instant::now();
    for post in 0..total / PER_POST {
        let serial = format!("SN{:03}", post % DEVICES);
        let metrics: Vec<Value> = (0..PER_POST)
            .map(|i| {
                let n = post * PER_POST + i;
                // Spread over 30 days; integers and floats alike.
                let ts = now - (n as u64 * 2_592_000 / total as u64);
                let value = if i % 2 == 0 {
                    json!(i)
                } else {
                    json!(i as f64 / 3.0)
                };
                json!({"name": format!("m{}", i % NAMES), "value": value, "timestamp": ts})
            })
            .collect();
        let body = json!({"app_id": APP.to_string(), "group_id": "0",
                          "device_serial": serial, "metrics": metrics});
        let (status, reply) = request(&emulator, "POST", "/publish/metrics", Some(&body));
        assert_eq!(status, 200, "{reply}");
    }
    println!(
        "stored {total} metrics in {:.1} s ({} posts of {PER_POST})",
        started.elapsed().as_secs_f64(),
        total / PER_POST
    );

    let queries = if measuring { QUERIES } else { 20 };
    let mut http = Vec::with_capacity(queries);
    let mut sql = Vec::with_capacity(queries);
    let database = rusqlite::Connection::open_with_flags(
        emulator.database_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let since = i64::try_from(now).unwrap() - 7 * 86_400;
    let statement = |indexed: &str| {
        format!(
            "SELECT name, value, ts, serial, app_id FROM metrics {indexed} \
             WHERE app_id = ?1 AND serial = ?2 AND name = ?3 AND ts >= ?4 \
             ORDER BY ts DESC, id DESC LIMIT 10"
        )
    };
    let mut select = database.prepare(&statement("")).unwrap();
    for q in 0..queries {
        let serial = format!("SN{:03}", (q * 7) % DEVICES);
        let name = format!("m{}", q % NAMES);
        let target = format!(
            "/metrics?application_id={APP}&device_serial={serial}&metric_name={name}&start=7d&limit=10"
        );
        let t = Instant::now();
        let (status, body) = request(&emulator, "GET", &target, None);
        http.push(t.elapsed());
        assert_eq!(status, 200, "{body}");

        let t = Instant::now();
        let rows = select
            .query_map(rusqlite::params![APP, serial, name, since], |r| {
                r.get::<_, String>(1)
            })
            .unwrap()
            .count();
        sql.push(t.elapsed());
        assert_eq!(body["count"].as_u64().unwrap() as usize, rows, "{target}");
        if measuring {
            assert_eq!(rows, 10, "every device has recent samples of every name");
        }
    }
    // The largest answer the API gives: what rendering costs.
    let mut largest = Vec::new();
    for _ in 0..LARGEST {
        let t = Instant::now();
        let (status, body) = request(
            &emulator,
            "GET",
            &format!("/metrics?application_id={APP}&limit=10000"),
            None,
        );
        largest.push(t.elapsed());
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["count"], 10_000.min(total));
    }
    let mut scan = Vec::new();
    let mut full = database.prepare(&statement("NOT INDEXED")).unwrap();
    for q in 0..SCANS {
        let t = Instant::now();
        let rows = full
            .query_map(
                rusqlite::params![APP, format!("SN{:03}", q), format!("m{q}"), since],
                |r| r.get::<_, String>(1),
            )
            .unwrap()
            .count();
        scan.push(t.elapsed());
        assert!(rows <= 10);
    }

    let (http50, http99) = percentiles(&mut http);
    let (sql50, sql99) = percentiles(&mut sql);
    let (scan50, _) = percentiles(&mut scan);
    let (large50, large99) = percentiles(&mut largest);
    println!("GET /metrics over {total} metrics, {queries} queries:");
    println!("  HTTP (fresh connection each): p50 {http50:?}, p99 {http99:?}");
    println!("  the same SQL alone:           p50 {sql50:?}, p99 {sql99:?}");
    println!("  the same SQL, full scan:      p50 {scan50:?} ({SCANS} runs)");
    println!("  limit=10000 (largest answer): p50 {large50:?}, p99 {large99:?} ({LARGEST} runs)");
    println!(
        "  ratio HTTP / SQL: p50 {:.1}, p99 {:.1}; full scan / HTTP p50: {:.0}",
        ratio(http50, sql50),
        ratio(http99, sql99),
        ratio(scan50, http50)
    );
    // The headline figures, for scripts/bench-suite.
    println!(
        "SUITE emulator: GET /metrics p99 over {total} metrics | {:.3} ms | {:.1}x the same SQL alone ({sql99:?}); a full scan takes {scan50:?}",
        http99.as_secs_f64() * 1e3,
        ratio(http99, sql99)
    );
    println!(
        "SUITE emulator: GET /metrics?limit=10000 p99 over {total} metrics | {:.1} ms | target 50 ms",
        large99.as_secs_f64() * 1e3
    );
    if measuring {
        assert!(
            http99 < Duration::from_millis(50),
            "p99 {http99:?} is over 50 ms"
        );
    }
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let at = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    (at(50), at(99))
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

/// One request on a fresh connection, with the emulator's token.
fn request(emulator: &Emulator, method: &str, target: &str, body: Option<&Value>) -> (u16, Value) {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect(emulator.http_addr()).unwrap();
    stream.set_nodelay(true).unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        emulator.api_token(),
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    let split = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&reply[..split])
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (status, serde_json::from_slice(&reply[split + 4..]).unwrap())
}
