//! Checksum validation of a maximal log against a plain memory copy of the
//! same buffer: validation should run at no less than half the copy's speed.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, Criterion, Throughput};
use ulogger_bench::report::median_ns;
use ulogger_cloud::wire::{build_log, validate_checksum, LogHeader, MAX_USED_BYTES};

fn maximal_v4_log() -> Vec<u8> {
    let data: Vec<u8> = (0..MAX_USED_BYTES)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 7)) as u8)
        .collect();
    let mut header = LogHeader::new(4).unwrap();
    header.tick_rate_hz = Some(1000);
    build_log(header, &data).unwrap()
}

fn checksum_vs_memcpy(c: &mut Criterion) {
    let log = maximal_v4_log();
    assert_eq!(log.len(), 25 + 65_535);
    let mut copy = vec![0u8; log.len()];

    let mut group = c.benchmark_group("max_v4_log");
    group.throughput(Throughput::Bytes(log.len() as u64));
    group.bench_function("validate_checksum", |b| {
        b.iter(|| validate_checksum(black_box(&log)).unwrap())
    });
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            copy.copy_from_slice(black_box(&log));
            black_box(&mut copy);
        })
    });
    group.finish();
}

criterion_group!(benches, checksum_vs_memcpy);

// `criterion_main!` plus the headline figure for scripts/bench-suite,
// read back from the estimates criterion just wrote.
fn main() {
    let started = std::time::SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    let fresh_median = |id: &str| median_ns("max_v4_log", id, started);
    if let (Some(validate), Some(memcpy)) =
        (fresh_median("validate_checksum"), fresh_median("memcpy"))
    {
        let bytes = (25 + MAX_USED_BYTES) as f64;
        println!(
            "SUITE validate_checksum, maximal v4 log (65,560 B) | {:.2} GB/s | {:.2} of memcpy's speed (goal >= 0.50)",
            bytes / validate,
            memcpy / validate
        );
    }
}
