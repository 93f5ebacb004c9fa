//! Cost of durable writes to a file-backed `SessionStore`.
//!
//! - `10k_sequential_sets`: 10,000 `set` calls with distinct serials on a
//!   fresh file (each durable when it returns); one iteration is all
//!   10,000, so the reported time is the total. Target: under 20 s.
//! - `set_at_10k_entries`: one `set` (replacing an entry) on a store
//!   holding 10,000 entries. Target: under 5 ms.
//! - `get_hit_at_10k_entries`: one `get` hit on that store (one `stat` to
//!   notice other processes' writes, no write).
//! - `side_by_side` (printed as a table, before the above): the store's
//!   hand-written JSON writer against serde_json with a Python-escaping
//!   formatter (after checking that both give the same bytes), and its LRU
//!   map against the hand-written map it replaced, `hashlink` and
//!   `indexmap`, at 10,000 entries. Decision 6 records the figures.
//!   `cargo bench --bench store -- side_by_side` runs only this.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, SamplingMode};
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

// ---- side by side: hand-written code against crates ----

// The store's own `format` and `lru` modules, compiled into this bench so
// that they can be timed against the crates that could replace them.
#[allow(dead_code)]
#[path = "../src/store/format.rs"]
mod format;
#[allow(dead_code)]
#[path = "../src/store/lru.rs"]
mod lru;

use lru::LruMap;

/// As in `store/mod.rs`.
#[derive(Clone, PartialEq, Eq)]
struct Record {
    token: u32,
    git_hash: String,
}

impl Record {
    fn new(token: u32, git_hash: &str) -> Self {
        Record {
            token,
            git_hash: git_hash.to_string(),
        }
    }
}

/// The crate alternative to `format::write`: serde_json's pretty printer
/// with two-space indentation, wrapped so that it escapes like Python's
/// `ensure_ascii=True`.
mod serde_writer {
    use std::io;

    use serde::ser::{SerializeStruct, Serializer as _};
    use serde_json::ser::{Formatter, PrettyFormatter};

    use super::{LruMap, Record};

    /// serde_json's pretty printer as it is, which does not escape like
    /// Python: a reference for what the escaping wrapper costs.
    pub fn write_unescaped(out: &mut Vec<u8>, map: &LruMap<Record>) -> serde_json::Result<()> {
        let mut ser =
            serde_json::Serializer::with_formatter(out, PrettyFormatter::with_indent(b"  "));
        ser.collect_map(
            map.iter()
                .map(|(serial, record)| (serial, RecordSer(record))),
        )
    }

    pub fn write(out: &mut Vec<u8>, map: &LruMap<Record>) -> serde_json::Result<()> {
        let mut ser = serde_json::Serializer::with_formatter(
            out,
            PythonFormatter(PrettyFormatter::with_indent(b"  ")),
        );
        ser.collect_map(
            map.iter()
                .map(|(serial, record)| (serial, RecordSer(record))),
        )
    }

    struct RecordSer<'a>(&'a Record);

    impl serde::Serialize for RecordSer<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut st = s.serialize_struct("Record", 2)?;
            st.serialize_field("token", &self.0.token)?;
            st.serialize_field("git_hash", &self.0.git_hash)?;
            st.end()
        }
    }

    struct PythonFormatter<'a>(PrettyFormatter<'a>);

    impl Formatter for PythonFormatter<'_> {
        fn write_string_fragment<W: ?Sized + io::Write>(
            &mut self,
            w: &mut W,
            fragment: &str,
        ) -> io::Result<()> {
            // serde_json has escaped `"`, `\` and control characters already.
            if fragment.bytes().all(|b| b < 0x7f) {
                return w.write_all(fragment.as_bytes());
            }
            for c in fragment.chars() {
                if (c as u32) < 0x7f {
                    w.write_all(&[c as u8])?;
                } else {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        write!(w, "\\u{unit:04x}")?;
                    }
                }
            }
            Ok(())
        }

        fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.begin_array(w)
        }
        fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.end_array(w)
        }
        fn begin_array_value<W: ?Sized + io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> io::Result<()> {
            self.0.begin_array_value(w, first)
        }
        fn end_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.end_array_value(w)
        }
        fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.begin_object(w)
        }
        fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.end_object(w)
        }
        fn begin_object_key<W: ?Sized + io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> io::Result<()> {
            self.0.begin_object_key(w, first)
        }
        fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.begin_object_value(w)
        }
        fn end_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.end_object_value(w)
        }
    }
}

/// The LRU operations the store does, on each candidate map.
trait Lru {
    fn name() -> &'static str;
    fn with(keys: &[String]) -> Self;
    /// `get` of a cached serial: the value, after making it the most recent.
    fn touch(&mut self, key: &str) -> Option<&Record>;
    /// `set` of a new serial at capacity: evict the oldest, append.
    fn evict_and_append(&mut self, key: String, value: Record);
}

impl Lru for LruMap<Record> {
    fn name() -> &'static str {
        "store's LruMap (hashlink, SipHash)"
    }
    fn with(keys: &[String]) -> Self {
        let mut map = LruMap::default();
        for (i, k) in keys.iter().enumerate() {
            map.insert(k.clone(), Record::new(i as u32, "0123abc"));
        }
        map
    }
    fn touch(&mut self, key: &str) -> Option<&Record> {
        LruMap::touch(self, key)
    }
    fn evict_and_append(&mut self, key: String, value: Record) {
        self.pop_lru();
        self.insert(key, value);
    }
}

/// The hand-written map `LruMap` replaced (a `HashMap` to a sequence
/// number, a `BTreeMap` from sequence number to entry: `O(log n)`), kept
/// here so that the decision can be measured again.
#[derive(Default)]
struct ReplacedLru {
    seq_of: std::collections::HashMap<String, u64>,
    by_seq: std::collections::BTreeMap<u64, (String, Record)>,
    next_seq: u64,
}

impl Lru for ReplacedLru {
    fn name() -> &'static str {
        "hand-written, replaced (B-tree)"
    }
    fn with(keys: &[String]) -> Self {
        let mut map = ReplacedLru::default();
        for (i, k) in keys.iter().enumerate() {
            map.insert(k.clone(), Record::new(i as u32, "0123abc"));
        }
        map
    }
    fn touch(&mut self, key: &str) -> Option<&Record> {
        let old = *self.seq_of.get(key)?;
        if self
            .by_seq
            .last_key_value()
            .is_some_and(|(&last, _)| last == old)
        {
            return self.by_seq.get(&old).map(|(_, value)| value);
        }
        let new = self.next_seq;
        self.next_seq += 1;
        let entry = self.by_seq.remove(&old)?;
        *self.seq_of.get_mut(key)? = new;
        Some(&self.by_seq.entry(new).or_insert(entry).1)
    }
    fn evict_and_append(&mut self, key: String, value: Record) {
        if let Some((_, (oldest, _))) = self.by_seq.pop_first() {
            self.seq_of.remove(&oldest);
        }
        self.insert(key, value);
    }
}

impl ReplacedLru {
    fn insert(&mut self, key: String, value: Record) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(old) = self.seq_of.insert(key.clone(), seq) {
            self.by_seq.remove(&old);
        }
        self.by_seq.insert(seq, (key, value));
    }
}

impl<S: std::hash::BuildHasher + Default> Lru for hashlink::LinkedHashMap<String, Record, S> {
    fn name() -> &'static str {
        "hashlink (its default, foldhash)"
    }
    fn with(keys: &[String]) -> Self {
        let mut map = Self::default();
        for (i, k) in keys.iter().enumerate() {
            map.insert(k.clone(), Record::new(i as u32, "0123abc"));
        }
        map
    }
    fn touch(&mut self, key: &str) -> Option<&Record> {
        self.to_back(key).map(|v| &*v)
    }
    fn evict_and_append(&mut self, key: String, value: Record) {
        self.pop_front();
        self.insert(key, value);
    }
}

impl Lru for indexmap::IndexMap<String, Record> {
    fn name() -> &'static str {
        "indexmap (move_index)"
    }
    fn with(keys: &[String]) -> Self {
        keys.iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), Record::new(i as u32, "0123abc")))
            .collect()
    }
    fn touch(&mut self, key: &str) -> Option<&Record> {
        let i = self.get_index_of(key)?;
        let last = self.len() - 1;
        self.move_index(i, last);
        self.get_index(last).map(|(_, v)| v)
    }
    fn evict_and_append(&mut self, key: String, value: Record) {
        self.shift_remove_index(0);
        self.insert(key, value);
    }
}

/// Serials as devices have them, one in 50 not ASCII.
fn bench_serial(n: u32) -> String {
    match n % 50 {
        7 => format!("café-{n:06}"),
        31 => format!("SN-😀-{n:06}"),
        _ => serial(n),
    }
}

/// Times each of `variants` `rounds` times, interleaved so that drift of
/// the machine hits all alike; returns the median of each.
fn interleaved(rounds: usize, variants: &mut [&mut dyn FnMut() -> Duration]) -> Vec<Duration> {
    let mut samples = vec![Vec::with_capacity(rounds); variants.len()];
    for _ in 0..rounds {
        for (run, times) in variants.iter_mut().zip(&mut samples) {
            times.push(run());
        }
    }
    samples
        .into_iter()
        .map(|mut times| {
            times.sort();
            times[times.len() / 2]
        })
        .collect()
}

fn print_rows(case: &str, unit: &str, per: f64, rows: &[(&str, Duration)]) {
    let base = rows[0].1.as_secs_f64();
    for (i, (name, time)) in rows.iter().enumerate() {
        let value = time.as_secs_f64() / per;
        let (value, unit_name) = match unit {
            "ms" => (value * 1e3, "ms"),
            _ => (value * 1e9, "ns"),
        };
        println!(
            "{:<34} {:<36} {:>10.3} {:<3} {:>7.2}x",
            if i == 0 { case } else { "" },
            name,
            value,
            unit_name,
            time.as_secs_f64() / base
        );
    }
}

/// The hand-written pieces against the crates that could replace them,
/// in one run, as a table of medians with ratios to the first row.
fn side_by_side(rounds: usize) {
    println!(
        "\nside by side, median of {rounds} interleaved runs, ratio to the first row of each case"
    );
    println!(
        "{:<34} {:<36} {:>14} {:>8}",
        "case", "implementation", "time", "ratio"
    );

    // (a) Serialising 10,000 entries.
    let mut map = LruMap::default();
    for n in 0..ENTRIES {
        map.insert(bench_serial(n), Record::new(3_000_000_000 + n, "0123abc"));
    }
    let mut hand = Vec::new();
    format::write(&mut hand, &map);
    let mut serde = Vec::new();
    serde_writer::write(&mut serde, &map).unwrap();
    assert!(
        hand == serde,
        "the serde_json writer's bytes differ from the hand-written writer's"
    );
    let bytes = hand.len();
    let mut out = Vec::with_capacity(bytes);
    let mut run_hand = || {
        out.clear();
        let start = Instant::now();
        format::write(&mut out, black_box(&map));
        let elapsed = start.elapsed();
        black_box(&out);
        elapsed
    };
    let mut out2 = Vec::with_capacity(bytes);
    let mut run_serde = || {
        out2.clear();
        let start = Instant::now();
        serde_writer::write(&mut out2, black_box(&map)).unwrap();
        let elapsed = start.elapsed();
        black_box(&out2);
        elapsed
    };
    let mut out3 = Vec::with_capacity(bytes);
    let mut run_unescaped = || {
        out3.clear();
        let start = Instant::now();
        serde_writer::write_unescaped(&mut out3, black_box(&map)).unwrap();
        let elapsed = start.elapsed();
        black_box(&out3);
        elapsed
    };
    let times = interleaved(
        rounds * 4,
        &mut [&mut run_hand, &mut run_serde, &mut run_unescaped],
    );
    print_rows(
        &format!("serialise 10,000 entries ({} kB)", bytes / 1000),
        "ms",
        1.0,
        &[
            ("hand-written", times[0]),
            ("serde_json + ascii formatter", times[1]),
            ("(serde_json pretty, no escaping)", times[2]),
        ],
    );

    // (b) The store's LRU operations at 10,000 entries.
    const OPS: usize = 1_000;
    let keys: Vec<String> = (0..ENTRIES).map(serial).collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let picks: Vec<usize> = (0..OPS)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % u64::from(ENTRIES)) as usize
        })
        .collect();
    fn touches<M: Lru>(keys: &[String], picks: &[usize]) -> Duration {
        let mut map = M::with(keys);
        let start = Instant::now();
        for &i in picks {
            black_box(map.touch(black_box(&keys[i])));
        }
        start.elapsed()
    }
    fn appends<M: Lru>(keys: &[String], fresh: u32) -> Duration {
        let mut map = M::with(keys);
        let new: Vec<String> = (0..OPS as u32).map(|n| serial(fresh + n)).collect();
        let start = Instant::now();
        for key in new {
            map.evict_and_append(key, Record::new(1, "0123abc"));
        }
        let elapsed = start.elapsed();
        black_box(&mut map);
        elapsed
    }
    type Store = LruMap<Record>;
    type Hashlink = hashlink::LinkedHashMap<String, Record>;
    type Indexmap = indexmap::IndexMap<String, Record>;
    let names = [
        ReplacedLru::name(),
        Store::name(),
        Hashlink::name(),
        Indexmap::name(),
    ];
    let per = OPS as f64;
    let times = interleaved(
        rounds,
        &mut [
            &mut || touches::<ReplacedLru>(&keys, &picks),
            &mut || touches::<Store>(&keys, &picks),
            &mut || touches::<Hashlink>(&keys, &picks),
            &mut || touches::<Indexmap>(&keys, &picks),
        ],
    );
    let rows: Vec<_> = names.iter().copied().zip(times).collect();
    print_rows("touch a random key (per op)", "ns", per, &rows);
    let times = interleaved(
        rounds,
        &mut [
            &mut || appends::<ReplacedLru>(&keys, ENTRIES),
            &mut || appends::<Store>(&keys, ENTRIES),
            &mut || appends::<Hashlink>(&keys, ENTRIES),
            &mut || appends::<Indexmap>(&keys, ENTRIES),
        ],
    );
    let rows: Vec<_> = names.iter().copied().zip(times).collect();
    print_rows("evict oldest + append new (per op)", "ns", per, &rows);
    println!();
}

criterion_group!(benches, at_10k_entries, sequential_sets);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // then one round is enough to check that the code runs.
    let measuring = args.iter().any(|a| a == "--bench");
    let filter = args.iter().find(|a| !a.starts_with('-'));
    if filter.is_none_or(|f| "side_by_side".contains(f.as_str())) {
        side_by_side(if measuring { 31 } else { 1 });
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
