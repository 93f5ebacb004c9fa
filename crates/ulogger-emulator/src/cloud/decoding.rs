//! The cloud decodes binary logs with the firmware's ELF (PROTOCOL §5.1,
//! §11), as the platform does once the firmware's CI has uploaded it.
//!
//! **Which ELF decodes a log.** A log carries only its session token. The
//! token names the registration it was issued for (PROTOCOL §3: serial,
//! device type, version string, git hash, and the application of its
//! topic), and the ELF used is the one stored for this cloud's customer,
//! that application, that device type and that version string
//! ([`crate::Emulator::find_elf`]), the key the platform matches by. The
//! git hash is not part of the key (the ELF request names one, a device
//! reports one, and demo firmware reports a placeholder); when the two
//! differ the log's decoding says so. The identity is the registration's
//! for that token, not the device's latest: a log sent under an older
//! token is decoded with the ELF of the firmware that token was issued to.
//!
//! A log is decoded on arrival when its ELF is there. Otherwise it is kept
//! with its state (`no_elf`: `"no ELF for <device type> <version>"`;
//! `bad_elf`: the stored ELF does not read) and decoded when an ELF of its
//! firmware is uploaded ([`Cloud::decode_for_elf`]). An upload of the same
//! firmware again replaces its ELF, and decodes its logs again with the new
//! one. A token issued by an emulator that did not keep device types (an
//! older `tokens.jsonl`) names its firmware through the boot registration
//! it answered (see `backlog`); without one, its logs stay `no_identity`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde_json::{json, Map, Value};
use ulogger_wire::{
    DecodeOptions, LogDecoder, MetricValue, Record as Decoded, RecordTime, SymbolTable,
    MAX_MESSAGE_SIZE,
};

use super::tokens::DeviceIdentity;
use super::Cloud;
use crate::elf_store::{ElfStore, StoredElf};
use crate::store::{epoch_seconds, LogRow, REDECODED_STATES};

/// How many firmwares' symbol tables are kept parsed.
const CACHED_TABLES: usize = 4;

/// The ELFs' symbol tables in use, and the lock that keeps a log that
/// arrives while its ELF is being stored from being missed by both.
pub(crate) struct Decoding {
    elfs: Arc<ElfStore>,
    data_dir: PathBuf,
    customer_id: u32,
    /// Most recently used last; an ELF replaced by a later upload has
    /// another upload id and is parsed afresh.
    tables: Mutex<VecDeque<(PathBuf, u64, Arc<SymbolTable>)>>,
    /// Held from looking for a log's ELF to storing the log (on arrival),
    /// and while listing the logs that wait for an ELF just stored: so a
    /// log is either decoded on arrival or listed as waiting, never neither.
    arrivals: Mutex<()>,
    /// Held by a run over the logs of a firmware whose ELF was stored.
    runs: Mutex<()>,
}

/// What decoding one log gave.
pub(crate) struct Outcome {
    /// `decoded`, `no_elf`, `bad_elf`, `no_identity` or `undecodable`.
    pub(crate) state: &'static str,
    /// The `decoding` object of the log's entry.
    pub(crate) decoding: Value,
    /// One log entry per record.
    pub(crate) records: Vec<LogRow>,
}

impl Decoding {
    pub(crate) fn new(elfs: Arc<ElfStore>, data_dir: &Path, customer_id: u32) -> Decoding {
        Decoding {
            elfs,
            data_dir: data_dir.to_path_buf(),
            customer_id,
            tables: Mutex::default(),
            arrivals: Mutex::default(),
            runs: Mutex::default(),
        }
    }

    /// The data directory the logs' payloads are relative to.
    pub(super) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Holds off other runs over stored logs (see `runs`).
    fn run(&self) -> MutexGuard<'_, ()> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds off the listing of waiting logs (see `arrivals`).
    pub(crate) fn arrival(&self) -> MutexGuard<'_, ()> {
        self.arrivals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The symbol table of a stored ELF, parsed once while it is in use.
    fn symbols(&self, elf: &StoredElf) -> Result<Arc<SymbolTable>, String> {
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = tables
            .iter()
            .position(|(file, id, _)| *file == elf.file && *id == elf.upload_id)
        {
            let entry = tables.remove(at).ok_or("the cache moved")?;
            let table = entry.2.clone();
            tables.push_back(entry);
            return Ok(table);
        }
        let path = self.data_dir.join(&elf.file);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let table = Arc::new(SymbolTable::from_elf(&bytes).map_err(|e| e.to_string())?);
        if tables.len() >= CACHED_TABLES {
            tables.pop_front();
        }
        tables.push_back((elf.file.clone(), elf.upload_id, table.clone()));
        Ok(table)
    }

    /// Decodes `log` (accepted: its header and checksum are valid) of the
    /// device `identity` in `app_id`, stored as `file` and received at
    /// `received` (epoch seconds): the records as log entries, dated by
    /// their wall-clock time when the log has one, else by `received`.
    pub(crate) fn decode(
        &self,
        log: &[u8],
        identity: &DeviceIdentity,
        app_id: u32,
        file: &str,
        received: f64,
    ) -> Outcome {
        let (Some(device_type), Some(version)) = (&identity.device_type, &identity.version) else {
            return waiting(
                "no_identity",
                "the session token was issued before the emulator kept device types and \
                 versions: no firmware to match an ELF by"
                    .into(),
            );
        };
        let Some(elf) = self
            .elfs
            .find(self.customer_id, app_id, device_type, version)
        else {
            return waiting("no_elf", format!("no ELF for {device_type} {version}"));
        };
        let symbols = match self.symbols(&elf) {
            Ok(symbols) => symbols,
            Err(e) => {
                return waiting(
                    "bad_elf",
                    format!("the ELF for {device_type} {version} does not read: {e}"),
                )
            }
        };
        let options = DecodeOptions::new().device_version(version.clone());
        let decoder = match LogDecoder::new(&symbols, log, &options) {
            Ok(decoder) => decoder,
            Err(e) => return waiting("undecodable", format!("not a binary log: {e}")),
        };
        let mut records = Vec::new();
        let (mut with_problems, mut other_build) = (0usize, 0usize);
        for record in decoder {
            with_problems += usize::from(!record.problems.is_empty());
            other_build += usize::from(record.problems.iter().any(|p| p.is_other_build()));
            let (ts, item) = entry(&record, app_id, &identity.serial, file, received);
            records.push(LogRow {
                app_id: Some(app_id),
                serial: identity.serial.clone(),
                ts,
                item,
            });
        }
        let mut decoding = json!({
            "state": "decoded",
            "records": records.len(),
            "with_problems": with_problems,
            "other_build": other_build,
            "elf": {
                "file": elf.file,
                "version": elf.version,
                "git_hash": elf.git_hash,
                "upload_id": elf.upload_id,
            },
        });
        if elf.git_hash != identity.git_hash {
            decoding["note"] = json!(format!(
                "the ELF was uploaded with git hash {:?}, the device registered {:?}",
                elf.git_hash, identity.git_hash
            ));
        }
        Outcome {
            state: "decoded",
            decoding,
            records,
        }
    }
}

fn waiting(state: &'static str, reason: String) -> Outcome {
    Outcome {
        state,
        decoding: json!({ "state": state, "reason": reason }),
        records: Vec::new(),
    }
}

/// One decoded record as the data API answers it, and its time (epoch
/// seconds) in the log entries.
fn entry(
    record: &Decoded,
    app_id: u32,
    serial: &str,
    file: &str,
    received: f64,
) -> (f64, Map<String, Value>) {
    let (ts, time) = match record.time {
        RecordTime::Wall { unix_us } => (
            unix_us as f64 / 1e6,
            json!({ "kind": "wall", "unix_us": unix_us }),
        ),
        RecordTime::Uptime { ticks, micros } => (
            received,
            json!({ "kind": "uptime", "ticks": ticks, "micros": micros }),
        ),
        RecordTime::Sequence { frame_seq } => (
            received,
            json!({ "kind": "sequence", "frame_seq": frame_seq }),
        ),
        _ => (received, Value::Null),
    };
    let metric = record.metric().map(|m| {
        let value = match m.value {
            MetricValue::Int(n) => json!(n),
            MetricValue::Float(x) => json!(x),
        };
        json!({ "name": m.name, "value": value })
    });
    let problems: Vec<Value> = record
        .problems
        .iter()
        .map(|p| json!({ "kind": p.kind(), "message": p.to_string() }))
        .collect();
    let mut item = Map::new();
    item.insert("type".into(), json!("record"));
    item.insert("timestamp".into(), json!(ts));
    item.insert("application_id".into(), json!(app_id));
    item.insert("serial".into(), json!(serial));
    item.insert("log".into(), json!(file));
    item.insert("offset".into(), json!(record.offset));
    item.insert("time".into(), time);
    item.insert("level".into(), json!(record.level.to_string()));
    item.insert("module".into(), json!(record.module.name));
    item.insert("module_index".into(), json!(record.module.index));
    item.insert("format_address".into(), json!(record.format_address));
    item.insert("message".into(), json!(record.message()));
    item.insert("metric".into(), metric.unwrap_or(Value::Null));
    item.insert("problems".into(), Value::Array(problems));
    (ts, item)
}

impl Cloud {
    /// Decodes the logs of the firmware of the ELF just stored (`elf`):
    /// those that waited for it, and those decoded with an ELF it
    /// replaced (an upload of the same firmware again), each settled in
    /// its own transaction; returns how many were decoded. A log whose
    /// payload cannot be read keeps its state (logged). A log decoded
    /// before whose new ELF does not read is `bad_elf` now, its earlier
    /// records gone with the ELF they came from.
    pub(crate) fn decode_for_elf(&self, elf: &StoredElf) -> Result<usize, String> {
        self.decode_firmware_logs(elf, &REDECODED_STATES)
    }

    /// Decodes the logs of `elf`'s firmware in one of `states` with the
    /// firmware's current ELF.
    pub(super) fn decode_firmware_logs(
        &self,
        elf: &StoredElf,
        states: &[&str],
    ) -> Result<usize, String> {
        if elf.customer_id != self.topics.customer_id() {
            return Ok(0);
        }
        // One run at a time: each decodes with the ELF stored when it
        // decodes, so the last run, which saw the last ELF, settles last.
        let _run = self.decoding.run();
        let logs = {
            let _arrivals = self.decoding.arrival();
            self.records
                .firmware_logs(elf.app_id, &elf.device_type, &elf.version, states)?
        };
        let mut decoded = 0;
        for log in logs {
            let path = self.decoding.data_dir.join(&log.file);
            let bytes = match read_limited(&path, MAX_MESSAGE_SIZE as u64) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read a log to decode with its ELF");
                    continue;
                }
            };
            let identity = DeviceIdentity {
                serial: log.serial.clone(),
                git_hash: log.git_hash.clone(),
                device_type: Some(elf.device_type.clone()),
                version: Some(elf.version.clone()),
            };
            let outcome =
                self.decoding
                    .decode(&bytes, &identity, elf.app_id, &log.file, log.received);
            let again = log.state == "decoded";
            if outcome.state == "decoded"
                && self.records.settle(
                    log.id,
                    again,
                    outcome.state,
                    &outcome.decoding,
                    &outcome.records,
                )?
            {
                decoded += 1;
            } else if outcome.state != "decoded" {
                // Still waiting (say the stored ELF does not read): its
                // reason is brought up to date.
                self.records
                    .settle(log.id, again, outcome.state, &outcome.decoding, &[])?;
            }
        }
        Ok(decoded)
    }
}

/// A stored payload, refused when over `limit` bytes (a log is at most
/// one MQTT message: a larger file is not the one stored).
pub(super) fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!("over {limit} bytes")));
    }
    Ok(bytes)
}

/// Epoch seconds of `time` as a float (whole seconds, as the header entry).
pub(crate) fn received_seconds(time: SystemTime) -> f64 {
    epoch_seconds(time) as f64
}
