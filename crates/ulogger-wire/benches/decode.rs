//! Decoding a maximal log (65,535 bytes of frames of typical firmware
//! records), side by side in one run: (a) a pass that only walks the
//! frame lengths, the floor of any decoder; (b) decoding to records,
//! messages not formatted (the goal: at least 0.25 of the floor's speed),
//! each lent by `next_record`, and (b') the same records moved out by
//! `Iterator`;
//! (c) decoding and formatting every message into a reused `String`; and
//! (d) glibc's `snprintf` of the same formats and arguments, the limit of
//! any formatted output (a C helper built with `cc` by the bench).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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

/// (b) Decoding to records: header, format (cached by address), typed
/// arguments, metric and problems; no message formatted. Each record is
/// lent by the decoder (`next_record`), not moved out.
fn decode_all(symbols: &SymbolTable, log: &[u8]) -> usize {
    let mut problems = 0;
    let mut decoder = LogDecoder::new(symbols, log, &DecodeOptions::new()).unwrap();
    while let Some(record) = decoder.next_record() {
        problems += record.problems.len();
        black_box(record);
    }
    problems
}

/// (b') The same through `Iterator`: each record moved out to the caller.
fn decode_owned(symbols: &SymbolTable, log: &[u8]) -> usize {
    let mut problems = 0;
    for record in LogDecoder::new(symbols, log, &DecodeOptions::new()).unwrap() {
        problems += record.problems.len();
        black_box(&record);
    }
    problems
}

/// (c) Decoding and formatting every message into one reused `String`.
fn decode_and_format(symbols: &SymbolTable, log: &[u8], text: &mut String) -> usize {
    let mut bytes = 0;
    for record in LogDecoder::new(symbols, log, &DecodeOptions::new()).unwrap() {
        text.clear();
        record.write_message_str(text);
        bytes += text.len();
        black_box(&text);
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
    group.bench_function("decode_owned", |b| {
        b.iter(|| decode_owned(&symbols, black_box(&log)))
    });
    let mut text = String::new();
    group.bench_function("decode_and_format", |b| {
        b.iter(|| decode_and_format(&symbols, black_box(&log), &mut text))
    });
    group.finish();
}

criterion_group!(benches, decode_vs_walk);

// `criterion_main!`, then (d) glibc's snprintf of the same records in a C
// helper, and the headline figures for scripts/bench-suite, read back
// from the estimates criterion just wrote.
fn main() {
    let started = std::time::SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    let (symbols, addresses) = symbols();
    let (log, frames) = maximal_log(&addresses);
    let snprintf = snprintf::median_ns(&symbols, &log);
    let fresh_median =
        |id: &str| ulogger_bench::report::median_ns("max_v4_log_decode", id, started);
    let (Some(walk), Some(decode), Some(owned), Some(format)) = (
        fresh_median("walk_frame_lengths"),
        fresh_median("decode"),
        fresh_median("decode_owned"),
        fresh_median("decode_and_format"),
    ) else {
        // Filtered to a part of the group: no side-by-side figures.
        return;
    };
    let bytes = log.len() as f64;
    let frames_f = frames as f64;
    // One SUITE line per pass (figure | value | comparison).
    let rate = |ns: f64| {
        format!(
            "{:.1} Mframes/s, {:.0} MB/s",
            frames_f / ns * 1e3,
            bytes / ns * 1e3
        )
    };
    println!(
        "SUITE decode to records, maximal v4 log ({} B, {frames} frames, {} B a record) | {} | {:.3} of the frame-length walk ({}; goal >= 0.25)",
        log.len(),
        std::mem::size_of::<ulogger_wire::Record<'_>>(),
        rate(decode),
        walk / decode,
        rate(walk),
    );
    println!(
        "SUITE decode to records moved out by Iterator | {} | {:.3} of the walk",
        rate(owned),
        walk / owned,
    );
    println!(
        "SUITE decode + format every message into a reused String | {} | {:.3} of the walk, {:.2} of glibc snprintf alone",
        rate(format),
        walk / format,
        snprintf / format,
    );
    println!(
        "SUITE glibc snprintf of the same formats and arguments (the limit of formatted output) | {} | {:.3} of the walk",
        rate(snprintf),
        walk / snprintf,
    );
}

/// (d) The true limit for formatted output: a C program, generated from
/// the decoded records, that calls glibc's `snprintf` with each record's
/// format and arguments (as literals: no decoding at all) into one
/// buffer, timed by itself over many passes. Needs `cc` (or `$CC`).
mod snprintf {
    use std::fmt::Write as _;
    use std::process::Command;

    use ulogger_wire::{Arg, DecodeOptions, LogDecoder, SymbolTable};

    fn c_string(bytes: &[u8]) -> String {
        let mut s = String::from("\"");
        for &b in bytes {
            match b {
                b'"' | b'\\' => write!(s, "\\{}", b as char).unwrap(),
                0x20..=0x7e => s.push(b as char),
                _ => write!(s, "\\{b:03o}").unwrap(),
            }
        }
        s.push('"');
        s
    }

    fn c_arg(arg: &Arg<'_>) -> String {
        match *arg {
            Arg::I32(v) => format!("({v})"),
            Arg::U32(v) => format!("{v}u"),
            Arg::I64(v) => format!("({v}LL-0)"),
            Arg::U64(v) => format!("{v}ULL"),
            Arg::Pointer(p) => format!("(void *){p:#x}ULL"),
            Arg::Char(c) => format!("{c}"),
            // Shortest round-trip form: C reads back the same double.
            Arg::Double(x) => format!("{x:e}"),
            Arg::Str(s) => c_string(s),
            other => panic!("the bench's records capture no {other:?}"),
        }
    }

    /// The helper's median nanoseconds for one pass over every record.
    pub fn median_ns(symbols: &SymbolTable, log: &[u8]) -> f64 {
        let mut calls = String::new();
        let mut expected = 0usize;
        for record in LogDecoder::new(symbols, log, &DecodeOptions::new()).unwrap() {
            let format = record.format().expect("every bench record has its format");
            let mut line = format!("    n += snprintf(buf, sizeof buf, {}", c_string(format));
            for arg in record.args() {
                write!(line, ", {}", c_arg(&arg)).unwrap();
            }
            calls.push_str(&line);
            calls.push_str(");\n");
            expected += record.message().len();
        }
        let program = format!(
            r#"#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static char buf[16384];
__attribute__((noinline)) static unsigned long pass(void) {{
    unsigned long n = 0;
{calls}    return n;
}}
static int cmp(const void *a, const void *b) {{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}}
int main(void) {{
    enum {{ SAMPLES = 101 }};
    double ns[SAMPLES];
    unsigned long bytes = pass();
    for (int s = 0; s < SAMPLES; s++) {{
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < 20; i++) bytes = pass();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        ns[s] = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 20;
    }}
    qsort(ns, SAMPLES, sizeof ns[0], cmp);
    printf("%lu %.0f\n", bytes, ns[SAMPLES / 2]);
    return 0;
}}
"#
        );
        let dir =
            std::env::temp_dir().join(format!("ulogger-bench-snprintf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = dir.join("snprintf.c");
        let binary = dir.join("snprintf");
        std::fs::write(&source, program).unwrap();
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
        // -fno-builtin: every call is glibc's, none folded at compile time.
        let status = Command::new(&cc)
            .args(["-O2", "-fno-builtin", "-w", "-o"])
            .arg(&binary)
            .arg(&source)
            .status()
            .unwrap_or_else(|e| {
                panic!("the snprintf pass needs a C compiler: running {cc:?} failed: {e}")
            });
        assert!(status.success(), "{cc} failed on {}", source.display());
        let out = Command::new(&binary).output().unwrap();
        assert!(out.status.success(), "the snprintf helper failed");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut fields = text.split_whitespace();
        let bytes: usize = fields.next().unwrap().parse().unwrap();
        let ns: f64 = fields.next().unwrap().parse().unwrap();
        // The same work: snprintf printed what the decoder formats.
        assert_eq!(
            bytes, expected,
            "snprintf and the decoder disagree on the messages' length"
        );
        let _ = std::fs::remove_dir_all(&dir);
        ns
    }
}
