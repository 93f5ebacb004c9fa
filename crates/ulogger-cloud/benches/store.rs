//! Cost of durable writes to a file-backed `SessionStore`.
//!
//! - `10k_sequential_sets`: 10,000 `set` calls with distinct serials on a
//!   fresh file (each durable when it returns); one iteration is all
//!   10,000, so the reported time is the total. Target: under 20 s.
//! - `set_at_10k_entries`: one `set` (replacing an entry) on a store
//!   holding 10,000 entries. Target: under 5 ms.
//! - `get_hit_at_10k_entries`: one `get` hit on that store (one `stat` to
//!   notice other processes' writes, no write).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use ulogger_cloud::SessionStore;

const ENTRIES: u32 = 10_000;

fn serial(n: u32) -> String {
    format!("SN-{n:06}")
}

/// Writes a store file with `ENTRIES` entries in one go (as the Python SDK
/// would have) rather than through 10,000 durable writes.
fn populated(path: &Path) -> SessionStore {
    let mut text = String::from("{");
    for n in 0..ENTRIES {
        if n > 0 {
            text.push(',');
        }
        text.push_str(&format!(
            "\n  \"{}\": {{\n    \"token\": {},\n    \"git_hash\": \"0123abc\"\n  }}",
            serial(n),
            3_000_000_000u32 + n
        ));
    }
    text.push_str("\n}");
    std::fs::write(path, text).unwrap();
    let store = SessionStore::open(path).unwrap();
    assert_eq!(store.len().unwrap(), ENTRIES as usize);
    store
}

fn sequential_sets(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    group.bench_function("10k_sequential_sets", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().unwrap();
                let store = SessionStore::open(dir.path().join("session_tokens.json")).unwrap();
                let start = Instant::now();
                for n in 0..ENTRIES {
                    store.set(&serial(n), n, "0123abc").unwrap();
                }
                total += start.elapsed();
                assert_eq!(store.len().unwrap(), ENTRIES as usize);
            }
            total
        });
    });
    group.finish();
}

fn at_10k_entries(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(&dir.path().join("session_tokens.json"));
    let mut group = c.benchmark_group("store");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    let mut next = 0u32;
    group.bench_function("set_at_10k_entries", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                store.set(&serial(next % ENTRIES), next, "0123abc").unwrap();
                next = next.wrapping_add(1);
            }
            start.elapsed()
        });
    });
    group.bench_function("get_hit_at_10k_entries", |b| {
        let mut n = 0u32;
        b.iter(|| {
            n = (n + 1) % ENTRIES;
            store.get(&serial(n), "0123abc").unwrap()
        });
    });
    group.finish();
    assert_eq!(store.len().unwrap(), ENTRIES as usize);
}

criterion_group!(benches, at_10k_entries, sequential_sets);
criterion_main!(benches);
