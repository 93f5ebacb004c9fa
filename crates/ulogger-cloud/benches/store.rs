//! Cost of durable writes to a file-backed `SessionStore`.
//!
//! - `store_side_by_side` (printed as a table first): the store's
//!   file-backed costs against baselines measured in the same run, which
//!   need no copy of old code (the figures against the store before group
//!   commit, commit ef84643, are in `docs/benchmarks.md`, "Session
//!   store"; the design is decision 15):
//!   3,000 new devices set by 64 threads at once, group commit against the
//!   same store with its setters serialised by a mutex held around each
//!   `set` (one durable write per set, one caller at a time: the policy
//!   before group commit), median of interleaved rounds (target: under
//!   1 s, as `Client` registrations of new devices do); 10,000 sequential
//!   sets on a fresh file, per set, against the I/O floor: writing a file
//!   of the same size to a temporary name, fsync, rename over, fsync the
//!   directory, taking turns with the store set by set; and a `get` hit at
//!   10,000 entries, file-backed (default: hits rely on a check up to
//!   `DEFAULT_MAX_STALENESS`, 1 ms, old; and checking at every call) and in
//!   memory, next to the Python SDK's `get_token` when `python3` finds it
//!   (`ULOGGER_PYTHON_SDK` naming an unpacked 1.2.3 wheel, or an installed
//!   `ulogger_cloud`), ratios to Python then, else to in-memory (target:
//!   at most Python's cost).
//!   `cargo bench --bench store -- store_side_by_side` runs only this.
//! - `client_side_by_side`: new devices registered through `Client`
//!   against the emulator (its own broker, and its cloud attached to
//!   mosquitto when there is one), 64 at a time: 1,000 and 3,000 in
//!   memory (does the rate hold?), 3,000 file-backed (target: under 1 s),
//!   and phases of 1,000, 3,000, 3,000 on one emulator, client and store.
//! - `set_at_10k_entries`: one `set` (replacing an entry) on a store
//!   holding 10,000 entries. Target: under 5 ms.
//! - `get_hit_at_10k_entries`: one `get` hit on that store (default
//!   staleness bound: an `fstat` of the file it last read at most once a
//!   millisecond, to notice other processes' writes; no write).
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

use criterion::{criterion_group, Criterion};
use ulogger_bench::stats::median;
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

// The store's own writer (`format`) and map (`lru`), through the
// library's bench-only door, so that they can be timed against the crates
// that could replace them.
use ulogger_cloud::__bench_store::{self as format, LruMap, Record};

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
            st.serialize_field("token", &self.0.token())?;
            st.serialize_field("git_hash", self.0.git_hash())?;
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
    samples.iter_mut().map(|times| median(times)).collect()
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

criterion_group!(benches, at_10k_entries);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // then one round is enough to check that the code runs.
    let measuring = args.iter().any(|a| a == "--bench");
    let filter = args.iter().find(|a| !a.starts_with('-'));
    if filter.is_none_or(|f| "store_side_by_side".contains(f.as_str())) {
        store_side_by_side(measuring);
    }
    if filter.is_none_or(|f| "client_side_by_side".contains(f.as_str())) {
        client_side_by_side(measuring);
    }
    if filter.is_none_or(|f| "side_by_side".contains(f.as_str())) {
        side_by_side(if measuring { 31 } else { 1 });
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

// ---- the store against baselines measured in the same run ----

/// What the side-by-side rows need of a store.
trait Store: Send + Sync {
    fn open(path: &Path) -> Self;
    fn in_memory() -> Self;
    fn set(&self, serial: &str, token: u32);
    fn get(&self, serial: &str) -> Option<u32>;
}

impl Store for SessionStore {
    fn open(path: &Path) -> Self {
        SessionStore::open(path).unwrap()
    }
    fn in_memory() -> Self {
        SessionStore::in_memory()
    }
    fn set(&self, serial: &str, token: u32) {
        SessionStore::set(self, serial, token, "0123abc").unwrap();
    }
    fn get(&self, serial: &str) -> Option<u32> {
        SessionStore::get(self, serial, "0123abc").unwrap()
    }
}

/// The policy before group commit, on the current store: setters take
/// turns (a mutex held around each `set`), so no write is shared and each
/// `set` is one durable write of its own.
struct OneWritePerSet {
    store: SessionStore,
    one_at_a_time: std::sync::Mutex<()>,
}

impl Store for OneWritePerSet {
    fn open(path: &Path) -> Self {
        OneWritePerSet {
            store: Store::open(path),
            one_at_a_time: std::sync::Mutex::new(()),
        }
    }
    fn in_memory() -> Self {
        OneWritePerSet {
            store: Store::in_memory(),
            one_at_a_time: std::sync::Mutex::new(()),
        }
    }
    fn set(&self, serial: &str, token: u32) {
        let _turn = self.one_at_a_time.lock().unwrap();
        Store::set(&self.store, serial, token);
    }
    fn get(&self, serial: &str) -> Option<u32> {
        Store::get(&self.store, serial)
    }
}

/// Concurrent setters, as `Client` registrations of new devices run.
const SETTERS: u32 = 64;

/// `devices` new serials set by `SETTERS` threads sharing one store (a
/// fresh file, or memory); the time until the last `set` returned.
fn new_devices<S: Store>(devices: u32, file_backed: bool) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session_tokens.json");
    let store = if file_backed {
        S::open(&path)
    } else {
        S::in_memory()
    };
    let next = std::sync::atomic::AtomicU32::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..SETTERS {
            scope.spawn(|| loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= devices {
                    break;
                }
                store.set(&serial(n), n);
            });
        }
    });
    let elapsed = start.elapsed();
    for n in [0, devices / 2, devices - 1] {
        assert_eq!(store.get(&serial(n)), Some(n));
    }
    if file_backed {
        let reopened = SessionStore::open(&path).unwrap();
        assert_eq!(reopened.len().unwrap(), devices as usize);
    }
    elapsed
}

/// The least a durable replacement of a file of `len` bytes at `path`
/// costs, done as the store does it: write a temporary file in the same
/// directory, fsync it, rename it over `path`, fsync the directory.
fn io_floor(path: &Path, len: usize) -> Duration {
    use std::io::Write;
    let contents = vec![b'x'; len];
    let tmp = path.with_extension("tmp");
    let start = Instant::now();
    let mut file = std::fs::File::create(&tmp).unwrap();
    file.write_all(&contents).unwrap();
    file.sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
    std::fs::File::open(path.parent().unwrap())
        .unwrap()
        .sync_all()
        .unwrap();
    start.elapsed()
}

/// `count` sets of new serials, one after the other, on a fresh file,
/// taking turns with [`io_floor`] writes of a file of the size the store's
/// file has after that set (which goes first alternates), so that the
/// drift of the shared disk hits both alike. Returns the total time each
/// spent: (floor, store).
fn sequential_against_floor(count: u32) -> (Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session_tokens.json");
    let floor_path = dir.path().join("floor.json");
    let store = SessionStore::open(&path).unwrap();
    let size = || std::fs::metadata(&path).unwrap().len() as usize;
    // Serials and tokens of one width: each set grows the file by the same
    // number of bytes, so the floor can go first with the size to come.
    let token = |n: u32| 3_000_000_000 + n;
    let (mut t_floor, mut t_store) = (Duration::ZERO, Duration::ZERO);
    let (mut len, mut growth) = (0, None);
    for n in 0..count {
        let timed_set = || {
            let start = Instant::now();
            Store::set(&store, &serial(n), token(n));
            start.elapsed()
        };
        let now = match growth {
            Some(growth) if n % 2 == 1 => {
                t_floor += io_floor(&floor_path, len + growth);
                t_store += timed_set();
                assert_eq!(
                    size(),
                    len + growth,
                    "each new entry was expected to grow the file alike"
                );
                len + growth
            }
            _ => {
                t_store += timed_set();
                let now = size();
                t_floor += io_floor(&floor_path, now);
                now
            }
        };
        if n > 0 {
            growth = Some(now - len);
        }
        len = now;
    }
    assert_eq!(
        Store::get(&store, &serial(count - 1)),
        Some(token(count - 1))
    );
    assert_eq!(
        SessionStore::open(&path).unwrap().len().unwrap(),
        count as usize
    );
    (t_floor, t_store)
}

/// The Python SDK's `SessionStore.get_token` on the file at `path`, per
/// call in microseconds (median of 5 runs), when `python3` finds the
/// SDK: an unpacked wheel (`pip download ulogger-cloud==1.2.3`, unzip)
/// named by `ULOGGER_PYTHON_SDK`, or an installed `ulogger_cloud`. Only
/// its `session_store.py` is loaded (the package itself needs paho-mqtt).
/// `None` when there is none.
fn python_get_us(path: &Path, lookups: usize) -> Option<f64> {
    let sdk = std::env::var("ULOGGER_PYTHON_SDK").unwrap_or_default();
    let script = format!(
        r#"
import importlib.util, os, random, statistics, timeit
sdk = {sdk:?}
if sdk:
    spec = importlib.util.spec_from_file_location(
        "session_store", os.path.join(sdk, "ulogger_cloud", "session_store.py"))
else:
    spec = importlib.util.find_spec("ulogger_cloud.session_store")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
store = module.SessionStore(path={path:?})
serials = ["SN-%06d" % n for n in range({ENTRIES})]
assert store.get_token(serials[5], "0123abc") is not None
rng = random.Random(7)
picks = [rng.choice(serials) for _ in range({lookups})]
def run():
    for s in picks:
        store.get_token(s, "0123abc")
times = [timeit.timeit(run, number=1) for _ in range(5)]
print(statistics.median(times) / {lookups} * 1e6)
"#,
        path = path.display().to_string(),
    );
    let output = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

/// `lookups` hits on random serials of a store of `ENTRIES` entries.
fn get_hits<S: Store>(store: &S, serials: &[String], lookups: usize) -> Duration {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let start = Instant::now();
    for _ in 0..lookups {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let serial = &serials[(rng % serials.len() as u64) as usize];
        black_box(store.get(black_box(serial)));
    }
    start.elapsed()
}

fn store_side_by_side(measuring: bool) {
    let rounds = if measuring { 3 } else { 1 };
    let scale = if measuring { 1 } else { 10 };
    println!(
        "\nthe store against baselines in the same run, median of {rounds} interleaved runs \
         (sequential sets: one run, taking turns with the floor); ratio to the first row of each case"
    );
    println!(
        "{:<46} {:<34} {:>12} {:>8}",
        "case", "implementation", "time", "ratio"
    );
    let row = |case: &str, name: &str, time: Duration, unit: &str, per: f64, base: Duration| {
        let value = time.as_secs_f64() / per;
        let value = match unit {
            "s" => value,
            "ms" => value * 1e3,
            _ => value * 1e6,
        };
        println!(
            "{:<46} {:<34} {:>9.3} {:<2} {:>7.2}x",
            case,
            name,
            value,
            unit,
            time.as_secs_f64() / base.as_secs_f64()
        );
    };

    // New devices, 64 setters at once.
    let devices = 3_000 / scale;
    let times = interleaved(
        rounds,
        &mut [
            &mut || new_devices::<OneWritePerSet>(devices, true),
            &mut || new_devices::<SessionStore>(devices, true),
        ],
    );
    let case = format!("{devices} new devices, file, {SETTERS} setters");
    row(
        &case,
        "one set at a time (mutex)",
        times[0],
        "s",
        1.0,
        times[0],
    );
    row("", "group commit", times[1], "s", 1.0, times[0]);
    println!(
        "SUITE store: {devices} new devices, file-backed, {SETTERS} concurrent setters | {:.3} s | {:.2} of one write per set ({:.3} s, same store, setters serialised); target < 1 s",
        times[1].as_secs_f64(),
        times[1].as_secs_f64() / times[0].as_secs_f64(),
        times[0].as_secs_f64()
    );

    // 10,000 sequential sets on a fresh file, against the I/O floor.
    let count = ENTRIES / scale;
    // Minutes of fsyncs on a shared disk: one run, taking turns.
    let (floor, store) = sequential_against_floor(count);
    let per = f64::from(count);
    let case = format!("{count} sequential sets, file (per set)");
    row(
        &case,
        "floor: write, fsync, rename, fsync dir",
        floor,
        "ms",
        per,
        floor,
    );
    row("", "store set", store, "ms", per, floor);
    println!(
        "SUITE store: {count} sequential sets, file-backed, per set | {:.3} ms | {:.2} of the I/O floor ({:.3} ms: same size, write, fsync, rename, fsync dir)",
        store.as_secs_f64() / per * 1e3,
        store.as_secs_f64() / floor.as_secs_f64(),
        floor.as_secs_f64() / per * 1e3
    );

    // A get hit at 10,000 entries.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session_tokens.json");
    drop(populated(&path));
    let file = SessionStore::open(&path).unwrap();
    let strict = SessionStore::open(&path)
        .unwrap()
        .with_max_staleness(Duration::ZERO);
    let memory = SessionStore::in_memory();
    let serials: Vec<String> = (0..ENTRIES).map(serial).collect();
    for (n, s) in serials.iter().enumerate() {
        Store::set(&memory, s, n as u32);
    }
    let lookups = 200_000 / scale as usize;
    let mut python = Vec::new();
    let mut python_round = || {
        if let Some(us) = python_get_us(&path, lookups) {
            python.push(us);
        }
        Duration::ZERO
    };
    let times = interleaved(
        rounds * 5,
        &mut [
            &mut || get_hits(&file, &serials, lookups),
            &mut || get_hits(&strict, &serials, lookups),
            &mut || get_hits(&memory, &serials, lookups),
            &mut python_round,
        ],
    );
    let per = lookups as f64;
    let us = |t: Duration| t.as_secs_f64() / per * 1e6;
    let python = (!python.is_empty()).then(|| median(&mut python));
    // Ratios to Python's lookup when it ran, else to the in-memory store.
    let (base, base_name) = match python {
        Some(py) => (Duration::from_secs_f64(py * per / 1e6), "Python"),
        None => (times[2], "in memory"),
    };
    let case = format!("get hit, {ENTRIES} entries, per op, to {base_name}");
    row(
        &case,
        "file (default, 1 ms staleness)",
        times[0],
        "us",
        per,
        base,
    );
    row("", "file, fstat at every call", times[1], "us", per, base);
    row("", "in memory", times[2], "us", per, base);
    let python_text = match python {
        Some(py) => {
            row("", "Python SDK 1.2.3 get_token", base, "us", per, base);
            format!("{:.2} of python {py:.2} us (same run)", us(times[0]) / py)
        }
        None => {
            println!(
                "{:<46} {:<34} {:>9} (not found: set ULOGGER_PYTHON_SDK, see the bench's docs)",
                "", "Python SDK 1.2.3 get_token", "-"
            );
            format!(
                "{:.2} of in memory (python not found)",
                us(times[0]) / us(times[2])
            )
        }
    };
    println!(
        "SUITE store: get hit, file-backed | {:.2} us | {python_text}, in memory {:.2} us",
        us(times[0]),
        us(times[2])
    );
    let strict_text = match python {
        Some(py) => format!("{:.2} of python {py:.2} us (same run)", us(times[1]) / py),
        None => format!(
            "{:.2} of in memory (python not found)",
            us(times[1]) / us(times[2])
        ),
    };
    println!(
        "SUITE store: get hit, file-backed, checking at every call | {:.2} us | {strict_text}, in memory {:.2} us",
        us(times[1]),
        us(times[2])
    );
    println!();
}

// ---- new devices through `Client`, against the emulator ----

/// Registrations in flight at once.
const REGISTERING: usize = 64;

/// `devices` new devices registered through one `Client` (fresh emulator,
/// fresh store), `REGISTERING` at a time: the wall time from the first
/// request until every token was stored. With `mosquitto`, the client
/// talks to that broker (mutual TLS) and the emulator's cloud is attached
/// to it, as in `benches/upload.rs`; else to the emulator's own broker.
fn client_new_devices(devices: usize, file_backed: bool, mosquitto: bool) -> Duration {
    client_new_device_phases(&[devices], file_backed, mosquitto)[0]
}

/// [`client_new_devices`] in phases on one emulator, client and store:
/// `phases[i]` new devices each, the time of each phase.
fn client_new_device_phases(phases: &[usize], file_backed: bool, mosquitto: bool) -> Vec<Duration> {
    use ulogger_bench::broker::{LocalCloud, MosquittoCloud};
    use ulogger_cloud::wire::DeviceInfo;
    use ulogger_cloud::{Client, MqttConfig, Pacing};
    use ulogger_emulator::PlatformLimits;

    let dir = tempfile::tempdir().unwrap();
    // Both keep the cloud's records in memory: its disk is not the client's.
    let (attached, own) = if mosquitto {
        (Some(MosquittoCloud::start(&dir.path().join("certs"))), None)
    } else {
        // Without the platform's per-connection rate limits: this
        // measures the client and the store, not AWS IoT's 100/s.
        (None, Some(LocalCloud::start(PlatformLimits::unlimited())))
    };
    let (emulator, port, certs) = match (&attached, &own) {
        (Some(cloud), _) => (&cloud.emulator, cloud.port(), cloud.certs.clone()),
        (None, own) => {
            let cloud = own.as_ref().expect("one of the two was started");
            (&cloud.emulator, cloud.port(), cloud.certs().clone())
        }
    };
    let store = std::sync::Arc::new(if file_backed {
        SessionStore::open(dir.path().join("session_tokens.json")).unwrap()
    } else {
        SessionStore::in_memory()
    });
    let mqtt = MqttConfig::new(4242)
        .broker("127.0.0.1")
        .port(port)
        .topic_prefix(emulator.topic_prefix())
        .ca_file(&certs.ca_cert)
        .client_cert(&certs.client_cert, &certs.client_key)
        .pacing(Pacing::off())
        .registration_limit(ulogger_cloud::RegistrationLimit::off());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let devices: usize = phases.iter().sum();
    let elapsed = runtime.block_on(async {
        let client = Client::builder(mqtt)
            .session_store(store.clone())
            .build()
            .unwrap();
        client.connected().await.unwrap();
        let mut times = Vec::new();
        let mut first = 0;
        for &count in phases {
            let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(REGISTERING));
            let mut tasks = tokio::task::JoinSet::new();
            let start = Instant::now();
            for n in first..first + count {
                let permit = slots.clone().acquire_owned().await.unwrap();
                let client = client.clone();
                tasks.spawn(async move {
                    let device = DeviceInfo::new(7, serial(n as u32), "board", "v1.0.0", "0123abc");
                    let token = client.session_token(&device).await.unwrap();
                    drop(permit);
                    token
                });
            }
            while let Some(token) = tasks.join_next().await {
                token.unwrap();
            }
            times.push(start.elapsed());
            first += count;
        }
        client.shutdown().await;
        times
    });
    assert_eq!(store.len().unwrap(), devices);
    if file_backed {
        let reopened = SessionStore::open(dir.path().join("session_tokens.json")).unwrap();
        assert_eq!(reopened.len().unwrap(), devices);
    }
    drop(attached);
    drop(own);
    elapsed
}

fn client_side_by_side(measuring: bool) {
    let rounds = if measuring { 3 } else { 1 };
    let scale = if measuring { 1 } else { 10 };
    let (small, large) = (1_000 / scale, 3_000 / scale);
    let mosquitto = ulogger_emulator::testing::find_mosquitto().is_some();
    println!(
        "\nnew devices through Client against the emulator (mutual TLS; fresh emulator, broker and store per run), \
         {REGISTERING} registrations in flight, median of {rounds} interleaved runs"
    );
    println!("  own broker: the emulator's, without rate limits; mosquitto: the emulator's cloud attached to it");
    let mut variants: Vec<(&str, usize, bool, bool)> = vec![
        ("own broker, memory", small, false, false),
        ("own broker, memory", large, false, false),
        ("own broker, file", large, true, false),
    ];
    if mosquitto {
        variants.extend([
            ("mosquitto, memory", small, false, true),
            ("mosquitto, memory", large, false, true),
            ("mosquitto, file", large, true, true),
        ]);
    } else {
        println!("  (mosquitto not found: its rows are left out)");
    }
    let mut runs: Vec<Box<dyn FnMut() -> Duration>> = variants
        .iter()
        .map(|&(_, n, file, mosquitto)| {
            Box::new(move || client_new_devices(n, file, mosquitto)) as Box<dyn FnMut() -> Duration>
        })
        .collect();
    let mut refs: Vec<&mut dyn FnMut() -> Duration> = runs
        .iter_mut()
        .map(|run| &mut **run as &mut dyn FnMut() -> Duration)
        .collect();
    let times = interleaved(rounds, &mut refs);
    let rate = |n: usize, t: Duration| n as f64 / t.as_secs_f64();
    for ((name, n, _, _), t) in variants.iter().zip(&times) {
        println!(
            "  {:<34} {:>9.3} s {:>9.0} devices/s",
            format!("{n} devices, {name}"),
            t.as_secs_f64(),
            rate(*n, *t)
        );
    }
    // One emulator, client and store for several phases: does what they
    // accumulate slow registrations down? Median of each phase.
    let phases = [small, large, large];
    let mut per_phase = vec![Vec::new(); phases.len()];
    for _ in 0..rounds {
        for (i, t) in client_new_device_phases(&phases, false, false)
            .into_iter()
            .enumerate()
        {
            per_phase[i].push(t);
        }
    }
    let mut line = String::from("  one emulator, client and store, own broker, memory, in phases:");
    let mut done = 0;
    for (n, times) in phases.iter().zip(&mut per_phase) {
        let t = median(times);
        line.push_str(&format!(
            " devices {done}..{}: {:.0}/s;",
            done + n,
            rate(*n, t)
        ));
        done += n;
    }
    println!("{line}");
    for (i, broker) in [(0, "own broker"), (3, "mosquitto")] {
        if i + 2 >= times.len() {
            continue;
        }
        let (r_small, r_large, r_file) = (
            rate(small, times[i]),
            rate(large, times[i + 1]),
            rate(large, times[i + 2]),
        );
        println!(
            "SUITE store: {large} new devices via Client, file-backed, {broker} | {:.3} s | {:.2} of in-memory ({:.3} s); target < 1 s",
            times[i + 2].as_secs_f64(),
            r_file / r_large,
            times[i + 1].as_secs_f64()
        );
        println!(
            "SUITE store: new devices/s via Client, in memory, {broker}, {large} | {r_large:.0} /s | {:.2} of the rate at {small} ({r_small:.0}/s)",
            r_large / r_small
        );
    }
}
