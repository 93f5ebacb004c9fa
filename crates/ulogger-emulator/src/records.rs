//! What the emulator received and did: one [`Record`] per event, written
//! to the record database (`<data>/records.db`, with the metrics, events
//! and log entries taken from its payload), kept in memory for waiting on
//! and appended to `<data>/index.jsonl` (one JSON object per line) as it
//! happens, with payloads stored as files beside it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::durable::{create_dir_all, fault, repair_jsonl, sync_dir, write_atomic_with, Access};
use crate::store::{InsertError, LogRow, Query, Rows, Store, Table, WaitingLog};
use crate::EmulatorError;

/// A record the database refused: what it describes must not be
/// acknowledged (the store has logged why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotStored;

/// The file name of the index under the data directory.
pub const INDEX_FILE: &str = "index.jsonl";

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RecordKind {
    /// A boot registration received.
    Boot,
    /// A boot reply the cloud sent (or, under a fault, the malformed one).
    BootReply,
    /// A binary log received.
    BinaryLog,
    /// A core dump received.
    CoreDump,
    /// A metrics message received.
    Metrics,
    /// An events message received.
    Events,
    /// A log configuration the cloud pushed to a device.
    Config,
    /// A text-log batch received (PROTOCOL §12).
    TextLogs,
    /// A firmware ELF upload request received (PROTOCOL §11); when
    /// accepted, the cloud answered it with a one-time upload URL.
    ElfUploadRequest,
    /// A firmware ELF received on an upload URL and stored (see
    /// [`Emulator::stored_elfs`](crate::Emulator::stored_elfs)), or a PUT
    /// refused (`reason` says why).
    ElfUpload,
    /// A publish the broker acknowledged but no platform topic rule
    /// matches: the real cloud drops it. `reason` gives the likely cause
    /// and the layout the platform routes.
    Unrouted,
    /// Something the broker refused under the platform's rules or
    /// per-connection limits: a connection closed or refused, a publish
    /// discarded (publish rate), a subscription refused; `reason` says
    /// which rule or limit.
    Rejected,
}

/// Whether the cloud accepted what a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Accepted (a valid log with a known token, a well-formed boot, ...).
    Ok,
    /// Refused or invalid; the record's `reason` says why. A malformed
    /// payload on a routed topic is what the platform sends to its
    /// dead-letter queue.
    Rejected,
}

/// One line of the index: something the emulator received or sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Record {
    /// When it happened (RFC 3339, UTC, in the index).
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    /// What it is.
    pub kind: RecordKind,
    /// The MQTT topic (a refused subscription's filter; empty for a
    /// refused connection or SUBSCRIBE).
    pub topic: String,
    /// The application id from the topic, when the topic has one.
    pub app_id: Option<u32>,
    /// The device serial: from the boot payload, the reply or config topic,
    /// or, for a binary log, the serial its session token was issued to.
    pub serial: Option<String>,
    /// The session token issued (boot) or carried (binary log).
    pub token: Option<u32>,
    /// The payload size in bytes.
    pub size: usize,
    /// Accepted or not.
    pub verdict: Verdict,
    /// Why it was rejected, or a note on a fault that shaped it.
    pub reason: Option<String>,
    /// The stored payload, relative to the data directory.
    pub file: Option<PathBuf>,
    /// The MQTT client id, for broker refusals.
    #[serde(default)]
    pub client_id: Option<String>,
    /// For metrics and events: whether the payload arrived gzip-compressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed: Option<bool>,
    /// For text logs: how many entries the batch held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<usize>,
}

impl Record {
    pub(crate) fn new(kind: RecordKind, topic: impl Into<String>, size: usize) -> Record {
        Record {
            time: SystemTime::now(),
            kind,
            topic: topic.into(),
            app_id: None,
            serial: None,
            token: None,
            size,
            verdict: Verdict::Ok,
            reason: None,
            file: None,
            client_id: None,
            compressed: None,
            entries: None,
        }
    }

    pub(crate) fn rejected(mut self, reason: impl Into<String>) -> Record {
        self.verdict = Verdict::Rejected;
        self.reason = Some(reason.into());
        self
    }

    /// True when the verdict is [`Verdict::Ok`].
    pub fn is_ok(&self) -> bool {
        self.verdict == Verdict::Ok
    }

    /// Reads a whole index file (`<data>/index.jsonl`) back into records.
    pub fn read_index(path: impl AsRef<Path>) -> Result<Vec<Record>, EmulatorError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|e| EmulatorError::io("read", path, e))?;
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                serde_json::from_str(line).map_err(|e| EmulatorError::BadIndexLine {
                    path: path.to_path_buf(),
                    line: n + 1,
                    reason: e.to_string(),
                })
            })
            .collect()
    }
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let text = OffsetDateTime::from(*time)
            .format(&Rfc3339)
            .map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        let parsed = OffsetDateTime::parse(&text, &Rfc3339).map_err(D::Error::custom)?;
        Ok(parsed.into())
    }
}

/// The emulator's record book: memory, index file and payload files.
pub(crate) struct RecordLog {
    data_dir: PathBuf,
    /// fsync every payload and index line. Off for a temporary data
    /// directory, which does not outlive the emulator anyway: there the
    /// syncs would only slow every test down.
    durable: bool,
    store: Store,
    /// The payload directories made durable in this run: each is created
    /// (or found) and synced into the data directory once, not per payload.
    payload_dirs: Mutex<std::collections::HashSet<String>>,
    /// The current run of payload storage failures, logged once.
    payload_failures: Mutex<FailureRun>,
    /// The current run of index append failures, logged once.
    index_failures: Mutex<FailureRun>,
    inner: Mutex<Inner>,
    appended: Condvar,
    count: watch::Sender<usize>,
}

impl std::fmt::Debug for RecordLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLog")
            .field("data_dir", &self.data_dir)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    records: Vec<Record>,
    index: File,
    /// The index's length after its last whole, stored line.
    index_len: u64,
    seq: u64,
}

impl RecordLog {
    /// Opens (or creates) the record book of `data_dir`. An index left by
    /// an earlier run is kept and appended to: a last line cut short by a
    /// crash (it was never acknowledged, see `append`) is cut off, and so
    /// are temporary payload files that were never renamed into place.
    pub(crate) fn open(data_dir: &Path, durable: bool) -> Result<RecordLog, EmulatorError> {
        create_dir_all(data_dir, durable)
            .map_err(|e| EmulatorError::io("create directory", data_dir, e))?;
        let index_path = data_dir.join(INDEX_FILE);
        let mut index = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&index_path)
            .map_err(|e| EmulatorError::io("open", &index_path, e))?;
        let text =
            repair_jsonl(&mut index).map_err(|e| EmulatorError::io("repair", &index_path, e))?;
        let earlier = text.iter().filter(|&&b| b == b'\n').count() as u64;
        let index_len = text.len() as u64;
        if durable {
            remove_stale_temporaries(data_dir);
        }
        let store = Store::open(data_dir, durable)?;
        // The index itself must survive a crash of the machine, not just
        // of the emulator.
        sync_dir(data_dir).map_err(|e| EmulatorError::io("sync", data_dir, e))?;
        Ok(RecordLog {
            data_dir: data_dir.to_path_buf(),
            durable,
            store,
            payload_dirs: Mutex::default(),
            payload_failures: Mutex::default(),
            index_failures: Mutex::default(),
            inner: Mutex::new(Inner {
                records: Vec::new(),
                index,
                index_len,
                // Payload names carry this sequence: continuing it keeps a
                // new payload from ever replacing an earlier run's.
                seq: earlier,
            }),
            appended: Condvar::new(),
            count: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation below leaves `Inner` consistent between
        // statements, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `payload` as `<data>/<subdir>/<time>-<label>-<seq>.<ext>` and
    /// returns the path relative to the data directory. In a kept data
    /// directory it returns only once the file, its name and its directory's
    /// name are synced (decision 18), since its record and the PUBACK come
    /// after. A failure means the payload is lost: the caller must not
    /// acknowledge it. A run of failures is logged once, with its repeats.
    pub(crate) fn store_payload(
        &self,
        subdir: &str,
        label: &str,
        ext: &str,
        payload: &[u8],
    ) -> Result<PathBuf, NotStored> {
        let stored = self.write_payload(subdir, label, ext, payload);
        let mut run = self
            .payload_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match stored {
            Ok(path) => {
                let _ = run.succeeded();
                Ok(path)
            }
            Err(e) => {
                // The directory may be gone or replaced: make it again
                // (and sync it again) before the next payload.
                self.lock_dirs().remove(subdir);
                let _ = run.failed(&e);
                Err(NotStored)
            }
        }
    }

    fn lock_dirs(&self) -> MutexGuard<'_, std::collections::HashSet<String>> {
        // A set of names is whole between statements.
        self.payload_dirs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_payload(
        &self,
        subdir: &str,
        label: &str,
        ext: &str,
        payload: &[u8],
    ) -> Result<PathBuf, EmulatorError> {
        let seq = {
            let mut inner = self.lock();
            inner.seq += 1;
            inner.seq
        };
        let stamp = file_stamp(SystemTime::now());
        let label = crate::durable::file_safe(label);
        let relative = PathBuf::from(subdir).join(format!("{stamp}-{label}-{seq:06}.{ext}"));
        let dir = self.data_dir.join(subdir);
        if !self.lock_dirs().contains(subdir) {
            create_dir_all(&dir, self.durable)
                .map_err(|e| EmulatorError::io("create directory", &dir, e))?;
            self.lock_dirs().insert(subdir.to_owned());
        }
        let full = self.data_dir.join(&relative);
        write_atomic_with(&full, payload, Access::Shared, self.durable)
            .map_err(|e| EmulatorError::io("write", &full, e))?;
        Ok(relative)
    }

    /// Appends a record that adds no rows to the data API's tables; see
    /// [`RecordLog::append_with`].
    pub(crate) fn append(&self, record: Record) -> Result<(), NotStored> {
        self.append_with(record, &Rows::default())
    }

    /// Appends a record and the rows taken from its payload: database
    /// first (one transaction), then the index line (written in one
    /// `write` and synced), then memory, then wakes waiters. Whoever
    /// acknowledges what the record describes does so after this returns
    /// `Ok`, so a crash can cut short only what nobody was promised. When
    /// the database refuses, the record goes nowhere else either: the
    /// record book shows only what was stored.
    pub(crate) fn append_with(&self, record: Record, rows: &Rows) -> Result<(), NotStored> {
        let mut line = match serde_json::to_vec(&record) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise a record");
                return Err(NotStored);
            }
        };
        line.push(b'\n');
        let count = {
            // Under the lock, so that the database, the index and memory
            // hold records in the same order.
            let mut inner = self.lock();
            let durable = self.durable;
            let Inner {
                index, index_len, ..
            } = &mut *inner;
            let before = *index_len;
            // The index line is written and synced inside the database's
            // transaction: either both hold the record or neither does.
            let stored = self
                .store
                .insert(&record, rows, || append_line(index, before, &line, durable));
            let mut run = self
                .index_failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match stored {
                Ok(()) => {
                    *index_len = before + line.len() as u64;
                    let _ = run.succeeded();
                }
                Err(InsertError::Database(_)) => return Err(NotStored),
                Err(InsertError::BeforeCommit(e)) => {
                    let _ = run.failed(&EmulatorError::io(
                        "append to",
                        self.data_dir.join(INDEX_FILE),
                        e,
                    ));
                    return Err(NotStored);
                }
                Err(InsertError::Commit(_)) => {
                    // The line is in the index, the rows are not: take it
                    // back so the two agree (the message is sent again).
                    if let Err(e) = undo_line(index, before, durable) {
                        tracing::error!(error = %e, "cannot take back an index line whose record the database refused");
                    }
                    return Err(NotStored);
                }
            }
            drop(run);
            inner.records.push(record);
            inner.records.len()
        };
        self.appended.notify_all();
        self.count.send_replace(count);
        Ok(())
    }

    /// Answers a data API query from the database.
    pub(crate) fn query(
        &self,
        table: Table,
        query: &Query,
    ) -> Result<Vec<serde_json::Value>, String> {
        self.store.query(table, query).map_err(|e| e.to_string())
    }

    /// The binary logs of one firmware in one of `states` (see
    /// [`Store::firmware_logs`]).
    pub(crate) fn firmware_logs(
        &self,
        app_id: u32,
        device_type: &str,
        version: &str,
        states: &[&str],
    ) -> Result<Vec<WaitingLog>, String> {
        self.store
            .firmware_logs(app_id, device_type, version, states)
            .map_err(|e| e.to_string())
    }

    /// Settles a binary log with what its decoding gave: a waiting one
    /// (see [`Store::settle`]), or with `again` one decoded before (see
    /// [`Store::redecode`]).
    pub(crate) fn settle(
        &self,
        log_id: i64,
        again: bool,
        state: &str,
        decoding: &serde_json::Value,
        records: &[LogRow],
    ) -> Result<bool, String> {
        let settled = match again {
            false => self.store.settle(log_id, state, decoding, records),
            true => self.store.redecode(log_id, state, decoding, records),
        };
        settled.map_err(|e| e.to_string())
    }

    /// The record database, for the start's pass over what an earlier
    /// emulator left undecoded.
    pub(crate) fn database(&self) -> &Store {
        &self.store
    }

    pub(crate) fn snapshot(&self) -> Vec<Record> {
        self.lock().records.clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub(crate) fn get(&self, index: usize) -> Option<Record> {
        self.lock().records.get(index).cloned()
    }

    pub(crate) fn find(&self, pred: &dyn Fn(&Record) -> bool) -> Option<Record> {
        self.lock().records.iter().find(|r| pred(r)).cloned()
    }

    pub(crate) fn watch(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// Waits on the condition variable (no async runtime needed).
    pub(crate) fn wait_for_blocking(
        &self,
        pred: &dyn Fn(&Record) -> bool,
        timeout: Duration,
    ) -> Option<Record> {
        let deadline = Instant::now().checked_add(timeout);
        let mut inner = self.lock();
        loop {
            if let Some(found) = inner.records.iter().find(|r| pred(r)) {
                return Some(found.clone());
            }
            let left = match deadline {
                Some(deadline) => deadline.checked_duration_since(Instant::now())?,
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return None;
            }
            inner = self
                .appended
                .wait_timeout(inner, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Appends `line` to the index (whose whole lines end at `len`) and, in
/// a kept data directory, fdatasyncs it. On failure the line is cut off
/// again: after a failed fsync its bytes may be gone or half there
/// (decision 18), and the next line must not follow a torn one.
fn append_line(index: &mut File, len: u64, line: &[u8], durable: bool) -> io::Result<()> {
    let written = fault("emulator-write-index")
        .and_then(|()| index.write_all(line))
        .and_then(|()| {
            if durable {
                fault("emulator-sync-index").and_then(|()| index.sync_data())
            } else {
                Ok(())
            }
        });
    if written.is_err() {
        if let Err(e) = undo_line(index, len, durable) {
            tracing::error!(error = %e, "cannot cut a failed line off the index");
        }
    }
    written
}

/// Cuts the index back to `len` bytes.
fn undo_line(index: &mut File, len: u64, durable: bool) -> io::Result<()> {
    index.set_len(len)?;
    if durable {
        index.sync_data()?;
    }
    Ok(())
}

/// A run of failures to store payloads: the first is logged, the rest
/// are counted (reported at most every [`FailureRun::REPORT_EVERY`], and
/// when the run ends), so that a full disk does not log once per message.
#[derive(Debug, Default)]
struct FailureRun {
    /// Failures in the current run (0: not failing).
    failures: u64,
    /// Failures already reported, and when.
    reported: u64,
    reported_at: Option<Instant>,
}

impl FailureRun {
    const REPORT_EVERY: Duration = Duration::from_secs(10);

    /// Counts a failure; true when it was logged.
    fn failed(&mut self, error: &EmulatorError) -> bool {
        self.failures += 1;
        let now = Instant::now();
        if self.failures == 1 {
            tracing::error!(
                error = %error,
                "cannot store a message: messages are not acknowledged until \
                 storage works again (repeats are counted, not logged each)"
            );
        } else if self
            .reported_at
            .is_some_and(|at| now.duration_since(at) >= Self::REPORT_EVERY)
        {
            tracing::error!(
                error = %error,
                repeats = self.failures - self.reported,
                failures = self.failures,
                "messages still cannot be stored"
            );
        } else {
            return false;
        }
        self.reported = self.failures;
        self.reported_at = Some(now);
        true
    }

    /// Ends a run of failures, if one was going: how many it had.
    fn succeeded(&mut self) -> Option<u64> {
        let failures = self.failures;
        if failures > 0 {
            tracing::warn!(
                failures = self.failures,
                "messages are stored again (those refused meanwhile were not acknowledged)"
            );
            *self = FailureRun::default();
            return Some(failures);
        }
        None
    }
}

/// Removes the temporary files (`.<name>.tmp-<pid>`) of payload writes that
/// a crash interrupted before their rename: they were never recorded.
fn remove_stale_temporaries(data_dir: &Path) {
    let Ok(entries) = fs::read_dir(data_dir) else {
        return;
    };
    for dir in entries.flatten().filter(|e| e.path().is_dir()) {
        let Ok(files) = fs::read_dir(dir.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.contains(".tmp-") {
                let _ = fs::remove_file(file.path());
            }
        }
    }
}

/// `20240131T235959.123Z`: sortable, and safe in file names everywhere.
fn file_stamp(time: SystemTime) -> String {
    let t = time::OffsetDateTime::from(time);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_index_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::open(dir.path(), true).unwrap();
        let file = log.store_payload("binlog", "SN/1", "bin", b"abc").unwrap();
        assert!(file.starts_with("binlog"));
        assert!(file.to_string_lossy().contains("SN_1"));
        assert_eq!(fs::read(dir.path().join(&file)).unwrap(), b"abc");

        let mut record = Record::new(RecordKind::BinaryLog, "binlog/v0/1/2", 3);
        record.app_id = Some(2);
        record.file = Some(file);
        log.append(record.clone()).unwrap();
        log.append(Record::new(RecordKind::Rejected, "", 0).rejected("client id"))
            .unwrap();

        let read = Record::read_index(dir.path().join(INDEX_FILE)).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].kind, RecordKind::BinaryLog);
        assert_eq!(read[0].file, record.file);
        assert_eq!(read[1].verdict, Verdict::Rejected);
        // RFC 3339 keeps sub-second precision.
        assert_eq!(read[0].time, record.time);
        let line = fs::read_to_string(dir.path().join(INDEX_FILE)).unwrap();
        assert!(line.contains("\"kind\":\"binary-log\""), "{line}");
    }

    #[test]
    fn a_run_of_payload_failures_is_logged_once_and_counted() {
        let error = EmulatorError::io("write", Path::new("x"), std::io::Error::other("full"));
        let mut run = FailureRun::default();
        assert_eq!(run.succeeded(), None);
        assert!(run.failed(&error), "the first failure is logged");
        for _ in 0..100 {
            assert!(!run.failed(&error), "repeats are counted, not logged");
        }
        assert_eq!(run.succeeded(), Some(101));
        assert!(run.failed(&error), "a new run is logged again");
    }

    #[test]
    fn a_payload_directory_replaced_by_a_file_fails_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::open(dir.path(), true).unwrap();
        log.store_payload("binlog", "a", "bin", b"1").unwrap();
        let payloads = dir.path().join("binlog");
        fs::rename(&payloads, dir.path().join("aside")).unwrap();
        fs::write(&payloads, b"").unwrap();
        assert_eq!(
            log.store_payload("binlog", "a", "bin", b"2"),
            Err(NotStored)
        );
        assert_eq!(
            log.store_payload("binlog", "a", "bin", b"3"),
            Err(NotStored)
        );
        fs::remove_file(&payloads).unwrap();
        let file = log.store_payload("binlog", "a", "bin", b"4").unwrap();
        assert_eq!(fs::read(dir.path().join(file)).unwrap(), b"4");
    }

    #[test]
    fn blocking_wait_sees_present_records_and_times_out_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::open(dir.path(), true).unwrap();
        log.append(Record::new(RecordKind::Boot, "t", 1)).unwrap();
        assert!(log
            .wait_for_blocking(&|r| r.kind == RecordKind::Boot, Duration::ZERO)
            .is_some());
        assert!(log
            .wait_for_blocking(&|r| r.kind == RecordKind::Config, Duration::from_millis(20))
            .is_none());
    }
}
