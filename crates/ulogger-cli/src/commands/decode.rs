//! `ulogger decode --elf FW.axf LOG.bin...`: binary logs as readable
//! records, decoded locally with the firmware's ELF (PROTOCOL §5.1); a
//! core dump given instead shows its header (§10).
//!
//! One line per record on stdout (`--json`: one JSON object per line);
//! what is wrong with a whole file goes to stderr. The command exits 2
//! when a file could not be decoded at all (unreadable, no log header),
//! not for records that carry problems: those are part of the output.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use serde_json::{json, Value};
use ulogger_cloud::wire::{
    CoreDumpHeader, DecodeOptions, FrameFormat, FramesEnd, Level, LogDecoder, MetricValue, Record,
    RecordTime, SymbolTable,
};

use crate::dump_report::{core_dump_report, core_dump_text, utc_from_unix_micros};
use crate::exit::{Exit, Failure};
use crate::files::{self, MAX_MESSAGE_SIZE, ONE_MESSAGE};
use crate::Global;

/// Firmware ELFs larger than this are refused unread (a wrong path).
const ELF_LIMIT: usize = 512 * 1024 * 1024;

/// Arguments of `ulogger decode`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Frames: a version 1 header means agent 1.0.x frames \
[len][frame_seq], versions 3 and 4 agent 1.1+ frames [len][tick_delta]; \
--frame-format overrides.\nTimes: wall clock (UTC) from a version 4 header's \
epoch; else +seconds of device uptime; #N for agent 1.0.x sequence numbers.")]
pub struct Args {
    /// The firmware's linked ELF (.elf, .axf, .out) of the build that wrote the logs.
    #[arg(long, value_name = "FW.axf")]
    elf: PathBuf,

    /// Binary log files (whole buffers as the device gave them), or core dumps.
    #[arg(required = true, value_name = "LOG.bin")]
    files: Vec<PathBuf>,

    /// Show records at this level or above (debug, info, warning, error,
    /// critical); `metric` shows only metrics. Unfiltered by default.
    #[arg(long, value_name = "LEVEL", value_parser = parse_level)]
    level: Option<LevelFilter>,

    /// Show only records of these modules (names from the ELF, or bit indexes); repeatable.
    #[arg(long, value_name = "MODULE")]
    module: Vec<String>,

    /// Frame format, when the header version does not tell it right.
    #[arg(long, value_enum, default_value_t = FrameArg::Auto)]
    frame_format: FrameArg,

    /// The firmware version the device reports: records are marked when the ELF's differs.
    #[arg(long, value_name = "VERSION")]
    device_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FrameArg {
    /// From the header version (1: agent 1.0.x; 3, 4: agent 1.1+).
    Auto,
    /// Agent 1.0.x: frames of a u16 length, a u16 sequence number, the payload.
    #[value(name = "1.0")]
    Sequenced,
    /// Agent 1.1 and later: frames of a u16 length, a u32 tick delta, the payload.
    #[value(name = "1.1")]
    TickDelta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LevelFilter {
    AtLeast(Level),
    Metrics,
}

fn parse_level(text: &str) -> Result<LevelFilter, String> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "debug" => LevelFilter::AtLeast(Level::Debug),
        "info" => LevelFilter::AtLeast(Level::Info),
        "warning" | "warn" => LevelFilter::AtLeast(Level::Warning),
        "error" => LevelFilter::AtLeast(Level::Error),
        "critical" => LevelFilter::AtLeast(Level::Critical),
        "metric" => LevelFilter::Metrics,
        _ => return Err("expected debug, info, warning, error, critical or metric".to_string()),
    })
}

pub fn run(global: Global, args: Args) -> Result<(), Exit> {
    let elf = files::read_limited(&args.elf, ELF_LIMIT, "a firmware ELF")
        .map_err(|e| Exit::new(Failure::BadInput, anyhow!("{}: {e}", args.elf.display())))?;
    let symbols = SymbolTable::from_elf(&elf)
        .map_err(|e| Exit::new(Failure::BadInput, anyhow!("{}: {e}", args.elf.display())))?;
    if let Some(problem) = symbols.module_table_problem() {
        eprintln!("warning: {}: {problem}", args.elf.display());
    }
    let mut options = DecodeOptions::new();
    match args.frame_format {
        FrameArg::Auto => {}
        FrameArg::Sequenced => options = options.frame_format(FrameFormat::Sequenced),
        FrameArg::TickDelta => options = options.frame_format(FrameFormat::TickDelta),
    }
    if let Some(version) = &args.device_version {
        options = options.device_version(version.clone());
    }
    let filter = Filter {
        level: args.level,
        modules: args.module.iter().map(|m| m.to_ascii_lowercase()).collect(),
    };
    let mut failed = 0usize;
    let several = args.files.len() > 1;
    for (i, path) in args.files.iter().enumerate() {
        if several && !global.json {
            if i > 0 {
                outln!();
            }
            outln!("==> {} <==", path.display());
        }
        if let Err(e) = decode_file(global, path, &symbols, &options, &filter) {
            eprintln!("error: {}: {e}", path.display());
            failed += 1;
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(Exit::new(
            Failure::BadInput,
            anyhow!("{n} of {} files could not be decoded", args.files.len()),
        )),
    }
}

struct Filter {
    level: Option<LevelFilter>,
    modules: Vec<String>,
}

impl Filter {
    fn keeps(&self, record: &Record) -> bool {
        let level_ok = match self.level {
            None => true,
            Some(LevelFilter::Metrics) => record.level == Level::Metric,
            Some(LevelFilter::AtLeast(min)) => {
                record.level != Level::Metric
                    && !matches!(record.level, Level::Unknown(_))
                    && record.level >= min
            }
        };
        let module_ok = self.modules.is_empty()
            || self.modules.iter().any(|m| {
                record
                    .module
                    .name
                    .is_some_and(|name| name.eq_ignore_ascii_case(m))
                    || m.parse::<u8>().is_ok_and(|bit| bit == record.module.index)
            });
        level_ok && module_ok
    }
}

fn decode_file(
    global: Global,
    path: &Path,
    symbols: &SymbolTable,
    options: &DecodeOptions,
    filter: &Filter,
) -> Result<(), anyhow::Error> {
    let bytes = files::read_limited(path, MAX_MESSAGE_SIZE, ONE_MESSAGE)?;
    if CoreDumpHeader::looks_like(&bytes) {
        let report = core_dump_report(&bytes);
        if global.json {
            outln!("{}", json!({"file": path, "core_dump": report}));
        } else {
            out!("{}", core_dump_text(&report));
        }
        return Ok(());
    }
    let mut decoder = LogDecoder::new(symbols, &bytes, options)
        .map_err(|e| anyhow!("not a binary log ({e}), nor a core dump"))?;
    if let Some(problem) = decoder.integrity() {
        eprintln!(
            "warning: {}: {problem}; decoding the records anyway",
            path.display()
        );
    }
    let mut with_problems = 0usize;
    for record in decoder.by_ref() {
        with_problems += usize::from(!record.problems.is_empty());
        if !filter.keeps(&record) {
            continue;
        }
        if global.json {
            outln!("{}", record_json(path, &record));
        } else {
            outln!("{}", record_line(&record));
            for problem in &record.problems {
                outln!("    ! {problem}");
            }
        }
    }
    if let Some(FramesEnd::StrayBytes { offset, count }) = decoder.end() {
        eprintln!(
            "warning: {}: {count} stray bytes at offset {offset}, fewer than a frame header",
            path.display()
        );
    }
    if with_problems > 0 {
        eprintln!(
            "warning: {}: {with_problems} records have problems (marked with !)",
            path.display()
        );
    }
    Ok(())
}

fn time_text(time: RecordTime) -> String {
    match time {
        RecordTime::Wall { unix_us } => match u64::try_from(unix_us) {
            Ok(us) => utc_from_unix_micros(us),
            Err(_) => format!("{unix_us}us"),
        },
        RecordTime::Uptime {
            micros: Some(us), ..
        } => format!("+{}.{:06}s", us / 1_000_000, us % 1_000_000),
        RecordTime::Uptime {
            ticks,
            micros: None,
        } => format!("+{ticks}ticks"),
        RecordTime::Sequence { frame_seq } => format!("#{frame_seq}"),
        _ => String::new(),
    }
}

fn record_line(record: &Record) -> String {
    format!(
        "{} {:<8} {:<10} {}",
        time_text(record.time),
        record.level.to_string(),
        record.module.to_string(),
        record.display_message()
    )
}

fn record_json(path: &Path, record: &Record) -> Value {
    let time = match record.time {
        RecordTime::Wall { unix_us } => json!({
            "kind": "wall",
            "unix_us": unix_us,
            "utc": u64::try_from(unix_us).ok().map(utc_from_unix_micros),
        }),
        RecordTime::Uptime { ticks, micros } => json!({
            "kind": "uptime",
            "ticks": ticks,
            "micros": micros,
        }),
        RecordTime::Sequence { frame_seq } => json!({"kind": "sequence", "frame_seq": frame_seq}),
        _ => Value::Null,
    };
    let metric = record.metric().map(|m| {
        let value = match m.value {
            MetricValue::Int(n) => json!(n),
            MetricValue::Float(x) => json!(x),
        };
        json!({"name": m.name, "value": value})
    });
    let problems: Vec<Value> = record
        .problems
        .iter()
        .map(|p| json!({"kind": p.kind(), "message": p.to_string()}))
        .collect();
    json!({
        "file": path,
        "offset": record.offset,
        "time": time,
        "level": record.level.to_string(),
        "module": record.module.name,
        "module_index": record.module.index,
        "format_address": record.format_address,
        "message": record.message(),
        "metric": metric,
        "problems": problems,
    })
}
