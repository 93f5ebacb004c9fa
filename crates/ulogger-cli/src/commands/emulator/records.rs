//! `ulogger emulator records`: what an emulator (running or stopped)
//! received, read from its record index `<data>/index.jsonl`, as a table
//! or JSON lines; `--follow` keeps printing records as they are appended.
//! Each binary log shows how far its decoding got (decoded, `no_elf`, ...
//! with the reason), read from the record database `<data>/records.db`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ulogger_emulator::{LogDecoding, LogDecodings, Record, RecordKind, Verdict, INDEX_FILE};

use crate::exit::{Exit, Failure};
use crate::signal::StopSignal;
use crate::Global;

/// How often `--follow` looks for new records: short enough to feel live,
/// long enough to cost nothing.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// Arguments of `ulogger emulator records`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The emulator's data directory (the one given to `ulogger emulator --data`).
    #[arg(long, default_value = "ulogger-emulator-data", value_name = "DIR")]
    data: PathBuf,
    /// Keep printing records as they arrive, until Ctrl-C or SIGTERM.
    #[arg(short, long)]
    follow: bool,
    /// Only records of this kind (repeat for several): boot, boot-reply,
    /// binary-log, core-dump, metrics, events, config, rejected.
    #[arg(long, value_name = "KIND", value_parser = parse_kind)]
    kind: Vec<RecordKind>,
}

fn parse_kind(text: &str) -> Result<RecordKind, String> {
    serde_json::from_value(serde_json::Value::from(text)).map_err(|_| {
        "expected one of boot, boot-reply, binary-log, core-dump, metrics, events, config, rejected"
            .to_owned()
    })
}

pub fn run(global: Global, args: Args) -> Result<(), Exit> {
    let path = args.data.join(INDEX_FILE);
    let mut printer = Printer {
        json: global.json,
        kinds: args.kind,
        header_printed: false,
        decodings: Decodings::new(&args.data),
    };
    let mut index = IndexTail::new(&path);
    if !args.follow {
        if !path.is_file() {
            return Err(Exit::new(
                Failure::BadInput,
                anyhow::anyhow!(
                    "no record index at {}: is --data the emulator's data directory?",
                    path.display()
                ),
            ));
        }
        for line in index.read_new()? {
            printer.print(&path, &line);
        }
        // A last line without its newline is still being written, unless
        // it is whole already.
        if let Some(last) = index.unfinished() {
            if serde_json::from_str::<Record>(&last).is_ok() {
                printer.print(&path, &last);
            }
        }
        if !printer.json && !printer.header_printed {
            eprintln!("no records in {}", path.display());
        }
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let stop = StopSignal::listen()?.wait();
        tokio::pin!(stop);
        let mut ticks = tokio::time::interval(FOLLOW_INTERVAL);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    for line in index.read_new()? {
                        printer.print(&path, &line);
                    }
                }
                stop = &mut stop => return stop?.outcome(),
            }
        }
    })
}

/// Reads an index file as it grows: whole lines only, keeping a last line
/// still being written for the next read; starts over if the file was
/// replaced by a shorter one.
struct IndexTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl IndexTail {
    fn new(path: &Path) -> IndexTail {
        IndexTail {
            path: path.to_path_buf(),
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// The lines completed since the last call (none while the file does
    /// not exist yet).
    fn read_new(&mut self) -> Result<Vec<String>, Exit> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot open {}", self.path.display()))
                    .into())
            }
        };
        let mut buf = Vec::new();
        let read = |file: &mut File, offset: &mut u64, partial: &mut Vec<u8>, buf: &mut Vec<u8>| {
            if file.metadata()?.len() < *offset {
                *offset = 0;
                partial.clear();
            }
            file.seek(SeekFrom::Start(*offset))?;
            file.read_to_end(buf)
        };
        read(&mut file, &mut self.offset, &mut self.partial, &mut buf)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(Vec::new());
        };
        let rest = self.partial.split_off(end + 1);
        let whole = std::mem::replace(&mut self.partial, rest);
        Ok(String::from_utf8_lossy(&whole)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// What follows the last newline, if anything.
    fn unfinished(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.partial);
        (!text.trim().is_empty()).then(|| text.into_owned())
    }
}

struct Printer {
    json: bool,
    kinds: Vec<RecordKind>,
    header_printed: bool,
    decodings: Decodings,
}

impl Printer {
    fn print(&mut self, path: &Path, line: &str) {
        let record: Record = match serde_json::from_str(line) {
            Ok(record) => record,
            Err(e) => {
                eprintln!(
                    "{}: skipping a line that is not a record: {e}",
                    path.display()
                );
                return;
            }
        };
        if !self.kinds.is_empty() && !self.kinds.contains(&record.kind) {
            return;
        }
        let decoding = self.decodings.of(&record);
        if self.json {
            outln!("{}", json_line(line, decoding.as_ref()));
            return;
        }
        if !self.header_printed {
            outln!(
                "{:<19}  {:<11}  {:<8}  {:>10}  {:<14}  {:>7}  {:<11}  REASON",
                "TIME",
                "KIND",
                "VERDICT",
                "APP",
                "SERIAL",
                "SIZE",
                "DECODING"
            );
            self.header_printed = true;
        }
        outln!("{}", row(line, &record, decoding.as_ref()));
    }
}

/// The decoding states of the emulator's binary logs, looked up as they
/// are printed (a log waiting for its ELF may be decoded by the next
/// line). Without a readable database, logs are shown without a state,
/// after one warning.
struct Decodings {
    data: PathBuf,
    database: Option<LogDecodings>,
    warned: bool,
}

impl Decodings {
    fn new(data: &Path) -> Decodings {
        Decodings {
            data: data.to_path_buf(),
            database: None,
            warned: false,
        }
    }

    /// The decoding of an accepted binary log, if it has one.
    fn of(&mut self, record: &Record) -> Option<LogDecoding> {
        if record.kind != RecordKind::BinaryLog || record.verdict != Verdict::Ok {
            return None;
        }
        let file = record.file.as_ref()?;
        if self.database.is_none() {
            // Opened at the first log: with --follow, the emulator may
            // not have created its database yet when this starts.
            match LogDecodings::open(&self.data) {
                Ok(database) => self.database = Some(database),
                Err(e) => return self.warn(e),
            }
        }
        match self.database.as_ref()?.get(file) {
            Ok(decoding) => decoding,
            Err(e) => self.warn(e),
        }
    }

    fn warn(&mut self, error: ulogger_emulator::EmulatorError) -> Option<LogDecoding> {
        if !std::mem::replace(&mut self.warned, true) {
            eprintln!("cannot read the logs' decoding states: {error}");
        }
        None
    }
}

/// The index line, with the log's `decoding` added when it has one.
fn json_line(line: &str, decoding: Option<&LogDecoding>) -> String {
    let line = line.trim();
    let Some(decoding) = decoding else {
        return line.to_owned();
    };
    match (
        serde_json::from_str::<serde_json::Value>(line),
        serde_json::to_value(decoding),
    ) {
        (Ok(serde_json::Value::Object(mut object)), Ok(decoding)) => {
            object.insert("decoding".into(), decoding);
            serde_json::Value::Object(object).to_string()
        }
        _ => line.to_owned(),
    }
}

fn row(line: &str, record: &Record, decoding: Option<&LogDecoding>) -> String {
    // The index's own RFC 3339 text, to the second: `time` is not a
    // dependency of the binary.
    let time = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["time"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let time: String = time.replace('T', " ").chars().take(19).collect();
    let kind = serde_json::to_value(record.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let verdict = match record.verdict {
        Verdict::Ok => "ok",
        Verdict::Rejected => "REJECTED",
    };
    let app = record.app_id.map_or("-".to_owned(), |a| a.to_string());
    let serial = record.serial.as_deref().unwrap_or("-");
    let state = decoding.map_or("-", |d| d.state.as_str());
    let reason = match (record.reason.as_deref(), decoding) {
        (Some(reason), _) => reason.to_owned(),
        (None, Some(decoding)) => decoding_note(decoding),
        (None, None) => String::new(),
    };
    format!(
        "{time:<19}  {kind:<11}  {verdict:<8}  {app:>10}  {serial:<14}  {:>7}  {state:<11}  {reason}",
        record.size
    )
    .trim_end()
    .to_owned()
}

/// What the REASON column says of a log's decoding: why it is not
/// decoded, or how many records it gave.
fn decoding_note(decoding: &LogDecoding) -> String {
    let mut note = match (decoding.records, decoding.with_problems) {
        (Some(records), Some(problems)) if problems > 0 => {
            format!("{records} records, {problems} with problems")
        }
        (Some(records), _) => format!("{records} records"),
        (None, _) => String::new(),
    };
    if let Some(reason) = &decoding.reason {
        if !note.is_empty() {
            note.push_str("; ");
        }
        note.push_str(reason);
    }
    note
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_line_still_being_written_waits_for_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INDEX_FILE);
        let mut tail = IndexTail::new(&path);
        assert!(tail.read_new().unwrap().is_empty(), "no file yet");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"{\"a\":1}\n{\"b\":").unwrap();
        assert_eq!(tail.read_new().unwrap(), ["{\"a\":1}"]);
        assert_eq!(tail.unfinished().as_deref(), Some("{\"b\":"));
        file.write_all(b"2}\n").unwrap();
        assert_eq!(tail.read_new().unwrap(), ["{\"b\":2}"]);
        assert!(tail.read_new().unwrap().is_empty());
        // Replaced by a shorter file: read from the start.
        std::fs::write(&path, b"{\"c\":3}\n").unwrap();
        assert_eq!(tail.read_new().unwrap(), ["{\"c\":3}"]);
    }
}
