//! Decoding a maximal log (65,535 bytes of frames of typical firmware
//! records) beside a pass over the same data that only walks the frame
//! lengths, the floor of any decoder: the goal is at least 0.25 of the
//! floor's speed.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, Criterion, Throughput};
use ulogger_wire::{
    build_log, DataModel, DecodeOptions, LogDecoder, LogHeader, SymbolTable, MAX_USED_BYTES,
};

/// Format strings as firmware writes them, at known addresses.
const FORMATS: &[&str] = &[
    "temp=%d.%02u C",
    "rssi %d dBm on %s",
    "metric_%s=%u",
    "x=%.3f y=%.3f",
    "state %s -> %s",
    "heap free %u of %u",
    "%s: error %d (0x%08x)",
    "metric_heartbeat=1",
];

fn symbols() -> (SymbolTable, Vec<u32>) {
    let mut rodata = Vec::new();
    let mut addresses = Vec::new();
    for f in FORMATS {
        addresses.push(0x0800_0000 + rodata.len() as u32);
        rodata.extend_from_slice(f.as_bytes());
        rodata.push(0);
    }
    let table = SymbolTable::from_parts(
        [(0x0800_0000, rodata)],
        [
            (0, "MAIN".into()),
            (1, "SENSOR".into()),
            (2, "RADIO".into()),
        ],
        DataModel::Ilp32,
    );
    (table, addresses)
}

enum V<'a> {
    I(i32),
    U(u32),
    D(f64),
    S(&'a str),
}

fn payload(level: u8, module: u8, fmt: u32, args: &[V<'_>]) -> Vec<u8> {
    let mut p = vec![level << 5 | module];
    p.extend_from_slice(&fmt.to_le_bytes());
    p.push(args.len() as u8);
    let mut values = Vec::new();
    let mut strings: Vec<&str> = Vec::new();
    for a in args {
        match a {
            V::I(n) => {
                p.push(0x14);
                values.extend_from_slice(&n.to_le_bytes());
            }
            V::U(n) => {
                p.push(0x24);
                values.extend_from_slice(&n.to_le_bytes());
            }
            V::D(x) => {
                p.push(0x78);
                values.extend_from_slice(&x.to_bits().to_le_bytes());
            }
            V::S(s) => {
                p.push(0x80);
                strings.push(s);
            }
        }
    }
    p.extend_from_slice(&values);
    if !strings.is_empty() {
        let blob: usize = strings.iter().map(|s| 2 + s.len()).sum();
        p.extend_from_slice(&(strings.len() as u16).to_le_bytes());
        p.extend_from_slice(&(blob as u16).to_le_bytes());
        for s in strings {
            p.extend_from_slice(&(s.len() as u16).to_le_bytes());
            p.extend_from_slice(s.as_bytes());
        }
    }
    p
}

/// A version 4 log whose data is full of frames; and its frame count.
fn maximal_log(addresses: &[u32]) -> (Vec<u8>, usize) {
    let mut data = Vec::new();
    let mut frames = 0;
    for i in 0u32.. {
        let a = |k: usize| addresses[k];
        let p = match i % 8 {
            0 => payload(1, 1, a(0), &[V::I(21 + (i % 7) as i32), V::U(i % 100)]),
            1 => payload(0, 2, a(1), &[V::I(-40 - (i % 50) as i32), V::S("ch37")]),
            2 => payload(5, 1, a(2), &[V::S("uptime_s"), V::U(i * 3)]),
            3 => payload(0, 1, a(3), &[V::D(f64::from(i) * 0.125), V::D(-1.5)]),
            4 => payload(1, 0, a(4), &[V::S("idle"), V::S("advertising")]),
            5 => payload(2, 0, a(5), &[V::U(10_240 + i), V::U(65_536)]),
            6 => payload(3, 2, a(6), &[V::S("ble"), V::I(-5), V::U(0xdead_0000 | i)]),
            _ => payload(5, 0, a(7), &[]),
        };
        if data.len() + 6 + p.len() > MAX_USED_BYTES {
            break;
        }
        data.extend_from_slice(&(p.len() as u16).to_le_bytes());
        data.extend_from_slice(&10u32.to_le_bytes());
        data.extend_from_slice(&p);
        frames += 1;
    }
    let mut header = LogHeader::new(4).unwrap();
    header.tick_rate_hz = Some(1000);
    header.epoch_time_us = Some(1_700_000_000_000_000);
    (build_log(header, &data).unwrap(), frames)
}

/// The floor: only the frame lengths, as any decoder must read them.
fn walk_frame_lengths(log: &[u8]) -> usize {
    let mut pos = 25;
    let mut frames = 0;
    while let Some(len) = log.get(pos..pos + 2) {
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        if len == 0 || len == 0xffff || pos + 6 + len > log.len() {
            break;
        }
        pos += 6 + len;
        frames += 1;
    }
    frames
}

fn decode_all(symbols: &SymbolTable, log: &[u8]) -> usize {
    let mut bytes = 0;
    for record in LogDecoder::new(symbols, log, &DecodeOptions::new()).unwrap() {
        bytes += record.message.len();
        black_box(&record);
    }
    bytes
}

fn decode_vs_walk(c: &mut Criterion) {
    let (symbols, addresses) = symbols();
    let (log, frames) = maximal_log(&addresses);
    assert_eq!(walk_frame_lengths(&log), frames);
    let decoded: Vec<_> = LogDecoder::new(&symbols, &log, &DecodeOptions::new())
        .unwrap()
        .collect();
    assert_eq!(decoded.len(), frames);
    assert!(decoded.iter().all(|r| r.problems.is_empty()));

    let mut group = c.benchmark_group("max_v4_log_decode");
    group.throughput(Throughput::Bytes(log.len() as u64));
    group.bench_function("walk_frame_lengths", |b| {
        b.iter(|| walk_frame_lengths(black_box(&log)))
    });
    group.bench_function("decode", |b| {
        b.iter(|| decode_all(&symbols, black_box(&log)))
    });
    group.finish();
}

criterion_group!(benches, decode_vs_walk);

// `criterion_main!` plus the headline figures for scripts/bench-suite,
// read back from the estimates criterion just wrote.
fn main() {
    let started = std::time::SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    let (_, addresses) = symbols();
    let (log, frames) = maximal_log(&addresses);
    let fresh_median = |id: &str| suite::median_ns("max_v4_log_decode", id, started);
    if let (Some(decode), Some(walk)) = (fresh_median("decode"), fresh_median("walk_frame_lengths"))
    {
        let bytes = log.len() as f64;
        let frames = frames as f64;
        println!(
            "SUITE decode, maximal v4 log ({} B, {frames} frames) | {:.2} Mframes/s, {:.0} MB/s | {:.3} of the frame-length walk ({:.1} Mframes/s, {:.0} MB/s; goal >= 0.25)",
            log.len(),
            frames / decode * 1e3,
            bytes / decode * 1e3,
            walk / decode,
            frames / walk * 1e3,
            bytes / walk * 1e3,
        );
    }
}

mod suite {
    use std::path::PathBuf;
    use std::time::SystemTime;

    /// Where criterion keeps its results, found as criterion finds it.
    fn criterion_home() -> Option<PathBuf> {
        if let Some(home) = std::env::var_os("CRITERION_HOME") {
            return Some(home.into());
        }
        if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
            return Some(PathBuf::from(target).join("criterion"));
        }
        let exe = std::env::current_exe().ok()?;
        Some(exe.parent()?.parent()?.parent()?.join("criterion"))
    }

    /// The median (ns) criterion estimated for `group/id` in this run.
    pub fn median_ns(group: &str, id: &str, since: SystemTime) -> Option<f64> {
        let path = criterion_home()?
            .join(group)
            .join(id)
            .join("new")
            .join("estimates.json");
        if std::fs::metadata(&path).ok()?.modified().ok()? < since {
            return None;
        }
        let estimates: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        estimates["median"]["point_estimate"].as_f64()
    }
}
