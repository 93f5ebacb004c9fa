//! Decoding against real ELFs built here: `fixtures/agent.c` writes log
//! frames the way the agent does and prints each message with its own
//! `printf`, the oracle the decoder must match byte for byte;
//! `fixtures/agent32.c` is a 32-bit image for the ILP32 data model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::Command;

use object::{Object, ObjectSymbol};
use ulogger_wire::{
    build_log, Clock, DataModel, DecodeOptions, ElfError, FramesEnd, Level, LogDecoder, LogHeader,
    MetricValue, Problem, Record, RecordTime, SymbolTable,
};

struct Agent {
    elf: PathBuf,
    out: PathBuf,
    oracle: String,
}

/// Builds and runs the agent stand-in once per test binary run.
fn agent() -> Option<&'static Agent> {
    static AGENT: std::sync::OnceLock<Option<Agent>> = std::sync::OnceLock::new();
    AGENT
        .get_or_init(|| {
            let dir = support::scratch("agent");
            let elf = dir.join("agent");
            // -no-pie: the addresses the program captures at run time are
            // the ELF's (a PIE's would differ by its random load base).
            support::compile(
                &support::fixture("agent.c"),
                &elf,
                &["-std=gnu11", "-O1", "-w", "-no-pie", "-fno-pie"],
            )?;
            let out = dir.join("logs");
            std::fs::create_dir_all(&out).unwrap();
            let run = Command::new(&elf).arg(&out).output().unwrap();
            assert!(
                run.status.success(),
                "{}",
                String::from_utf8_lossy(&run.stderr)
            );
            let oracle = String::from_utf8(run.stdout).unwrap();
            Some(Agent { elf, out, oracle })
        })
        .as_ref()
}

fn symbols(agent: &Agent) -> SymbolTable {
    SymbolTable::from_elf(&std::fs::read(&agent.elf).unwrap()).unwrap()
}

fn decode<'a>(symbols: &'a SymbolTable, log: &'a [u8], options: &DecodeOptions) -> Vec<Record<'a>> {
    LogDecoder::new(symbols, log, options).unwrap().collect()
}

/// "M <level> <module> <message>" lines.
fn oracle_messages(agent: &Agent) -> Vec<(String, String, String)> {
    agent
        .oracle
        .lines()
        .filter_map(|l| l.strip_prefix("M "))
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let level = parts.next().unwrap().to_string();
            let module = parts.next().unwrap().to_string();
            let message = parts.next().unwrap_or_default().to_string();
            (level, module, message)
        })
        .collect()
}

fn module_label(record: &Record) -> String {
    match &record.module.name {
        Some(name) => name.to_string(),
        None => "-".to_string(),
    }
}

#[test]
fn the_elf_gives_formats_modules_and_version() {
    let Some(agent) = agent() else { return };
    let symbols = symbols(agent);
    assert_eq!(symbols.data_model(), DataModel::Lp64);
    assert!(
        symbols.has_module_table(),
        "{:?}",
        symbols.module_table_problem()
    );
    let modules: Vec<(u8, &str)> = symbols.modules().collect();
    assert_eq!(
        modules,
        [(0, "MAIN"), (3, "SENSOR"), (7, "RADIO"), (30, "POWER")]
    );
    assert_eq!(symbols.firmware_version(), Some("1.2.3-test"));
}

#[test]
fn every_record_matches_the_firmwares_own_printf() {
    let Some(agent) = agent() else { return };
    let symbols = symbols(agent);
    let oracle = oracle_messages(agent);
    let log = std::fs::read(agent.out.join("v4.bin")).unwrap();
    let decoder = LogDecoder::new(&symbols, &log, &DecodeOptions::new()).unwrap();
    assert_eq!(decoder.clock(), Clock::Wall);
    assert_eq!(
        decoder.trailer_len(),
        16,
        "the trailer after used_bytes is kept apart"
    );
    assert!(decoder.integrity().is_none());
    let records: Vec<Record> = decoder.collect();
    assert!(records.len() >= 20, "{} records", records.len());
    for (record, (level, module, message)) in records.iter().zip(&oracle) {
        assert_eq!(&record.message(), message, "record at {}", record.offset);
        assert_eq!(record.level.to_string(), *level);
        assert_eq!(module_label(record), *module);
        assert!(
            record.problems.is_empty(),
            "{message}: {:?}",
            record.problems
        );
    }
    // Times: the readout (anchor tick 100,000 at 1 kHz) is the epoch; each
    // frame is 250 ticks after the one before it.
    for (k, record) in records.iter().enumerate() {
        let tick = 250 * (k as i64 + 1);
        let expected = 1_700_000_000_000_000 - (100_000 - tick) * 1000;
        assert_eq!(record.time, RecordTime::Wall { unix_us: expected });
    }

    // The same frames under a version 3 header: uptime, no wall clock.
    let v3 = std::fs::read(agent.out.join("v3.bin")).unwrap();
    let decoder = LogDecoder::new(&symbols, &v3, &DecodeOptions::new()).unwrap();
    assert_eq!(decoder.clock(), Clock::Uptime);
    let v3_records: Vec<Record> = decoder.collect();
    assert_eq!(v3_records.len(), records.len());
    for (k, (a, b)) in v3_records.iter().zip(&records).enumerate() {
        assert_eq!(a.message(), b.message());
        let ticks = 250 * (k as u64 + 1);
        assert_eq!(
            a.time,
            RecordTime::Uptime {
                ticks,
                micros: Some(ticks * 1000)
            }
        );
    }

    // Agent 1.0.x: a version 1 header, sequence-numbered frames.
    let v1 = std::fs::read(agent.out.join("v1.bin")).unwrap();
    let decoder = LogDecoder::new(&symbols, &v1, &DecodeOptions::new()).unwrap();
    assert_eq!(decoder.clock(), Clock::None);
    let v1_records: Vec<Record> = decoder.collect();
    let v1_oracle = &oracle[records.len()..];
    assert_eq!(v1_records.len(), v1_oracle.len());
    for (k, (record, (level, module, message))) in v1_records.iter().zip(v1_oracle).enumerate() {
        assert_eq!(&record.message(), message);
        assert_eq!(record.level.to_string(), *level);
        assert_eq!(module_label(record), *module);
        assert_eq!(
            record.time,
            RecordTime::Sequence {
                frame_seq: k as u16
            }
        );
        assert!(record.problems.is_empty(), "{:?}", record.problems);
    }
}

#[test]
fn metrics_and_the_heartbeat_are_typed() {
    let Some(agent) = agent() else { return };
    let symbols = symbols(agent);
    let log = std::fs::read(agent.out.join("v4.bin")).unwrap();
    let metrics: Vec<(String, MetricValue)> = decode(&symbols, &log, &DecodeOptions::new())
        .into_iter()
        .filter(|r| r.level == Level::Metric)
        .map(|r| {
            let m = r.metric().expect("a metric record has its reading");
            (m.name.to_string(), m.value)
        })
        .collect();
    assert_eq!(
        metrics,
        [
            ("temperature".to_string(), MetricValue::Int(-12)),
            ("uptime_s".to_string(), MetricValue::Int(3_000_000_000)),
            ("voltage".to_string(), MetricValue::Float(3.3)),
            ("whole".to_string(), MetricValue::Float(2.0)),
            ("heartbeat".to_string(), MetricValue::Int(1)),
        ]
    );
}

/// The kind of a problem, named as the fixture names it.
fn kind(problem: &Problem) -> &'static str {
    problem.kind()
}

#[test]
fn a_bad_frame_is_reported_and_the_next_one_decodes() {
    let Some(agent) = agent() else { return };
    let symbols = symbols(agent);
    let log = std::fs::read(agent.out.join("errors.bin")).unwrap();
    let mut decoder = LogDecoder::new(&symbols, &log, &DecodeOptions::new()).unwrap();
    let records: Vec<Record> = decoder.by_ref().collect();
    assert!(matches!(decoder.end(), Some(FramesEnd::Truncated { .. })));
    let expected: Vec<&str> = agent
        .oracle
        .lines()
        .filter_map(|l| l.strip_prefix("E "))
        .collect();
    assert_eq!(records.len(), expected.len());
    for (record, want) in records.iter().zip(&expected) {
        let kinds: Vec<&str> = record.problems.iter().map(kind).collect();
        if *want == "ok" {
            assert_eq!(record.message(), "good 1");
            assert!(kinds.is_empty(), "{kinds:?}");
        } else {
            assert!(kinds.contains(want), "expected {want}, got {kinds:?}");
            // Every problem reads as a sentence.
            for p in &record.problems {
                assert!(!p.to_string().is_empty());
            }
        }
    }
    // A mismatched argument still shows what was captured.
    let mismatch = records
        .iter()
        .find(|r| r.problems.iter().any(|p| kind(p) == "type_mismatch"))
        .unwrap();
    assert_eq!(mismatch.message(), "one abc");
    // An unknown address gives no message at all: never a guess.
    let unknown = &records[0];
    assert_eq!(unknown.message(), "");
    assert_eq!(unknown.format_address, Some(0xffff_fff0));
}

#[test]
fn an_elf_of_another_version_is_named_on_every_record() {
    let Some(agent) = agent() else { return };
    let symbols = symbols(agent);
    let log = std::fs::read(agent.out.join("v4.bin")).unwrap();
    let other = decode(
        &symbols,
        &log,
        &DecodeOptions::new().device_version("9.9.9"),
    );
    assert!(other.iter().all(|r| r
        .problems
        .iter()
        .any(|p| p.is_other_build() && kind(p) == "different_build")));
    let same = decode(
        &symbols,
        &log,
        &DecodeOptions::new().device_version("1.2.3-test"),
    );
    assert!(same.iter().all(|r| r.problems.is_empty()));
}

#[test]
fn a_32_bit_elf_reads_its_module_table_and_longs_are_32_bits() {
    let dir = support::scratch("agent32");
    let elf = dir.join("agent32");
    // Freestanding: no 32-bit C library is needed, only the compiler.
    let Some(_) = support::compile(
        &support::fixture("agent32.c"),
        &elf,
        &[
            "-m32",
            "-ffreestanding",
            "-nostdlib",
            "-static",
            "-no-pie",
            "-fno-pie",
            "-O1",
        ],
    ) else {
        return;
    };
    let bytes = std::fs::read(&elf).unwrap();
    let symbols = SymbolTable::from_elf(&bytes).unwrap();
    assert_eq!(symbols.data_model(), DataModel::Ilp32);
    let modules: Vec<(u8, &str)> = symbols.modules().collect();
    assert_eq!(modules, [(1, "APP"), (5, "BLE")]);

    let file = object::File::parse(&*bytes).unwrap();
    let address = |name: &str| {
        file.symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address() as u32)
            .unwrap()
    };
    // "%ld %lx %zu %p": long and size_t are 32 bits, as the captured u32s.
    let fmt = address("fmt_longs");
    let mut payload = vec![1 << 5 | 5];
    payload.extend_from_slice(&fmt.to_le_bytes());
    payload.extend_from_slice(&[4, 0x14, 0x24, 0x24, 0x54]);
    payload.extend_from_slice(&(-7i32).to_le_bytes());
    payload.extend_from_slice(&0xdead_beef_u32.to_le_bytes());
    payload.extend_from_slice(&12u32.to_le_bytes());
    payload.extend_from_slice(&0x2000_0100u32.to_le_bytes());
    let mut data = (payload.len() as u16).to_le_bytes().to_vec();
    data.extend_from_slice(&10u32.to_le_bytes());
    data.extend_from_slice(&payload);
    let mut header = LogHeader::new(3).unwrap();
    header.tick_rate_hz = Some(32768);
    let log = build_log(header, &data).unwrap();
    let records = decode(&symbols, &log, &DecodeOptions::new());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].message(), "-7 deadbeef 12 0x20000100");
    assert_eq!(module_label(&records[0]), "BLE");
    assert!(records[0].problems.is_empty(), "{:?}", records[0].problems);

    // The same ELF marked big-endian is refused by name.
    let mut big = bytes.clone();
    big[5] = 2;
    assert_eq!(
        SymbolTable::from_elf(&big).unwrap_err(),
        ElfError::BigEndian
    );
    assert_eq!(
        SymbolTable::from_elf(b"not an elf").unwrap_err(),
        ElfError::NotElf
    );
    assert!(matches!(
        SymbolTable::from_elf(&bytes[..40]),
        Err(ElfError::Malformed { .. })
    ));
}
