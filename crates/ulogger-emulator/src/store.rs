//! The record database, `<data>/records.db`: SQLite in WAL mode holding
//! the records (what `index.jsonl` holds) and what the data API reads
//! back: the metrics and events of accepted telemetry, and log entries
//! (accepted binary logs, their decoded records and text-log lines), with
//! each binary log's decoding state. A record and the rows taken
//! from its payload are written in one transaction, so a query never sees
//! half a message.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension};
use serde_json::{json, Map, Value};

use crate::records::{Record, Verdict};
use crate::EmulatorError;

/// The file name of the record database under the data directory.
pub const DATABASE_FILE: &str = "records.db";

/// The schema. Each query route filters on an application, a serial and
/// (metrics) a name, each optional, and reads newest first within a time
/// window: every combination has an index ending in the time, so that a
/// query walks at most `limit` entries of one index whatever the table
/// holds (the row id, last in every index, orders ties).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    time_us INTEGER NOT NULL,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    app_id INTEGER,
    serial TEXT,
    token INTEGER,
    size INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT,
    file TEXT,
    client_id TEXT,
    compressed INTEGER,
    entries INTEGER
);
CREATE INDEX IF NOT EXISTS records_kind_time ON records (kind, time_us);

CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY,
    record_id INTEGER NOT NULL,
    app_id INTEGER,
    serial TEXT NOT NULL,
    name TEXT NOT NULL,
    -- The JSON number as received, so that an integer stays an integer.
    value TEXT NOT NULL,
    ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_app_serial_name ON metrics (app_id, serial, name, ts);
CREATE INDEX IF NOT EXISTS metrics_app_serial ON metrics (app_id, serial, ts);
CREATE INDEX IF NOT EXISTS metrics_app_name ON metrics (app_id, name, ts);
CREATE INDEX IF NOT EXISTS metrics_app ON metrics (app_id, ts);
CREATE INDEX IF NOT EXISTS metrics_serial_name ON metrics (serial, name, ts);
CREATE INDEX IF NOT EXISTS metrics_serial ON metrics (serial, ts);
CREATE INDEX IF NOT EXISTS metrics_name ON metrics (name, ts);
CREATE INDEX IF NOT EXISTS metrics_ts ON metrics (ts);

CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    record_id INTEGER NOT NULL,
    app_id INTEGER,
    serial TEXT NOT NULL,
    type TEXT NOT NULL,
    ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_app_serial ON events (app_id, serial, ts);
CREATE INDEX IF NOT EXISTS events_app ON events (app_id, ts);
CREATE INDEX IF NOT EXISTS events_serial ON events (serial, ts);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);

CREATE TABLE IF NOT EXISTS log_entries (
    id INTEGER PRIMARY KEY,
    record_id INTEGER NOT NULL,
    app_id INTEGER,
    serial TEXT NOT NULL,
    ts REAL NOT NULL,
    -- The entry as the API answers it (a JSON object).
    item TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_entries_app_serial ON log_entries (app_id, serial, ts);
CREATE INDEX IF NOT EXISTS log_entries_app ON log_entries (app_id, ts);
CREATE INDEX IF NOT EXISTS log_entries_serial ON log_entries (serial, ts);
CREATE INDEX IF NOT EXISTS log_entries_ts ON log_entries (ts);

-- Each accepted binary log and how far its decoding got: a log waiting
-- for its firmware's ELF is found by the firmware when the ELF arrives.
CREATE TABLE IF NOT EXISTS binary_logs (
    id INTEGER PRIMARY KEY,
    record_id INTEGER NOT NULL,
    -- Its entry in log_entries (the header fields and the decoding state).
    entry_id INTEGER NOT NULL,
    app_id INTEGER NOT NULL,
    serial TEXT NOT NULL,
    device_type TEXT,
    version TEXT,
    git_hash TEXT NOT NULL,
    -- The payload, relative to the data directory.
    file TEXT NOT NULL,
    -- Epoch seconds of its arrival.
    received REAL NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS binary_logs_firmware ON binary_logs (app_id, device_type, version, state);
-- A record's log (the start's pass over logs without a state), a file's
-- (`emulator records`).
CREATE INDEX IF NOT EXISTS binary_logs_record ON binary_logs (record_id);
CREATE INDEX IF NOT EXISTS binary_logs_file ON binary_logs (file);
";

/// One metric sample of an accepted payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MetricRow {
    pub(crate) app_id: Option<u32>,
    pub(crate) serial: String,
    pub(crate) name: String,
    pub(crate) value: serde_json::Number,
    /// Epoch seconds: the sample's own timestamp, else the receive time.
    pub(crate) ts: i64,
}

/// One event of an accepted payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EventRow {
    pub(crate) app_id: Option<u32>,
    pub(crate) serial: String,
    pub(crate) event_type: String,
    /// Epoch seconds, as for metrics.
    pub(crate) ts: i64,
}

/// One log entry: a binary log (its header) or a text-log line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LogRow {
    pub(crate) app_id: Option<u32>,
    pub(crate) serial: String,
    /// Epoch seconds (fractional for text logs).
    pub(crate) ts: f64,
    /// What the API answers for it.
    pub(crate) item: Map<String, Value>,
}

/// An accepted binary log, for decoding it when its ELF arrives; its
/// entry is the first of the record's log rows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BinaryLogRow {
    pub(crate) app_id: u32,
    pub(crate) serial: String,
    pub(crate) device_type: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) git_hash: String,
    pub(crate) file: String,
    /// Epoch seconds.
    pub(crate) received: f64,
    pub(crate) state: &'static str,
}

/// A binary log of one firmware, for decoding it with that firmware's
/// ELF: one that waits for it, or one decoded with an ELF since replaced.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WaitingLog {
    pub(crate) id: i64,
    pub(crate) serial: String,
    pub(crate) git_hash: String,
    pub(crate) file: String,
    pub(crate) received: f64,
    /// Its decoding state now.
    pub(crate) state: String,
}

/// The decoding states in which a log waits for an ELF (none stored, or
/// the stored one does not read): another upload of its firmware's ELF
/// decodes it.
pub(crate) const WAITING_STATES: [&str; 2] = ["no_elf", "bad_elf"];

/// The states of a log that a new ELF of its firmware decodes (again):
/// waiting, or decoded with the ELF it replaces.
pub(crate) const REDECODED_STATES: [&str; 3] = ["no_elf", "bad_elf", "decoded"];

/// An accepted binary log without a decoding state: stored by an emulator
/// that did not decode yet, or whose state was lost.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UnregisteredLog {
    pub(crate) record_id: i64,
    /// Its header entry, when the emulator that stored it wrote one.
    pub(crate) entry_id: Option<i64>,
    pub(crate) app_id: u32,
    pub(crate) serial: Option<String>,
    /// The payload, relative to the data directory.
    pub(crate) file: String,
    /// When it arrived (microseconds since the epoch).
    pub(crate) time_us: i64,
}

/// What a record's payload adds to the data API's tables.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Rows {
    pub(crate) metrics: Vec<MetricRow>,
    pub(crate) events: Vec<EventRow>,
    pub(crate) logs: Vec<LogRow>,
    pub(crate) binary_log: Option<BinaryLogRow>,
}

/// Which table a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Metrics,
    Events,
    Logs,
}

/// A data API query: every filter optional; newest first.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Query {
    pub(crate) app_id: Option<u32>,
    pub(crate) serial: Option<String>,
    /// The metric name (metrics only).
    pub(crate) name: Option<String>,
    /// Inclusive bounds, epoch seconds.
    pub(crate) start: Option<i64>,
    pub(crate) end: Option<i64>,
    pub(crate) limit: u32,
}

/// The database: one connection writes (the cloud's, in the order records
/// are appended), another answers queries, so that WAL lets a long query
/// and a write proceed side by side.
pub(crate) struct Store {
    write: Mutex<Connection>,
    read: Mutex<Connection>,
    /// Set while writes fail, so that an outage is logged once, not once
    /// per message.
    failing: AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn lock(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A connection holds no state of ours between calls: a panic while
    // it was locked leaves nothing half done but an open transaction,
    // which rusqlite rolls back when the `Transaction` is dropped.
    connection.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store {
    /// Opens (or creates) `<data_dir>/records.db`. `durable`: every commit
    /// synced (`synchronous=FULL`); a temporary data directory skips the
    /// syncs, as the index does.
    pub(crate) fn open(data_dir: &Path, durable: bool) -> Result<Store, EmulatorError> {
        let path = data_dir.join(DATABASE_FILE);
        let fail = |e: rusqlite::Error| EmulatorError::Database {
            path: path.clone(),
            reason: e.to_string(),
        };
        let write = Connection::open(&path).map_err(fail)?;
        // WAL: readers see the last commit while the writer goes on.
        let mode: String = write
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(fail)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(EmulatorError::Database {
                path,
                reason: format!("journal mode {mode}, not WAL"),
            });
        }
        let sync = if durable { "FULL" } else { "OFF" };
        write
            .execute_batch(&format!("PRAGMA synchronous={sync};"))
            .map_err(fail)?;
        write.execute_batch(SCHEMA).map_err(fail)?;
        let read = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(fail)?;
        Ok(Store {
            write: Mutex::new(write),
            read: Mutex::new(read),
            failing: AtomicBool::new(false),
        })
    }

    /// Writes a record and its rows in one transaction, runs
    /// `before_commit` (the index line) inside it, and commits only if it
    /// succeeded. A failure is logged once per outage (and its recovery
    /// once) and returned, so that whoever waits for the message to be
    /// stored is not told it is. When the commit itself fails after
    /// `before_commit` succeeded, [`InsertError::Commit`] says so: the
    /// caller must undo what `before_commit` did.
    pub(crate) fn insert(
        &self,
        record: &Record,
        rows: &Rows,
        before_commit: impl FnOnce() -> std::io::Result<()>,
    ) -> Result<(), InsertError> {
        let written = insert(&mut lock(&self.write), record, rows, before_commit);
        match &written {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!("the record database takes writes again");
                }
            }
            Err(InsertError::Database(e) | InsertError::Commit(e)) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        error = %e,
                        "cannot write to the record database: messages are not \
                         acknowledged until it takes writes again"
                    );
                }
            }
            // The caller logs its own failures.
            Err(InsertError::BeforeCommit(_)) => {}
        }
        written
    }

    /// The binary logs of one firmware (application, device type,
    /// version) that wait for its ELF, oldest first.
    #[cfg(test)]
    pub(crate) fn waiting_logs(
        &self,
        app_id: u32,
        device_type: &str,
        version: &str,
    ) -> Result<Vec<WaitingLog>, rusqlite::Error> {
        self.firmware_logs(app_id, device_type, version, &WAITING_STATES)
    }

    /// The binary logs of one firmware (application, device type,
    /// version) in one of `states`, oldest first.
    pub(crate) fn firmware_logs(
        &self,
        app_id: u32,
        device_type: &str,
        version: &str,
        states: &[&str],
    ) -> Result<Vec<WaitingLog>, rusqlite::Error> {
        let connection = lock(&self.write);
        let mut statement = connection.prepare_cached(
            "SELECT id, serial, git_hash, file, received, state FROM binary_logs \
             WHERE app_id = ? AND device_type = ? AND version = ? ORDER BY id",
        )?;
        let rows = statement.query_map(params![app_id, device_type, version], |row| {
            Ok(WaitingLog {
                id: row.get(0)?,
                serial: row.get(1)?,
                git_hash: row.get(2)?,
                file: row.get(3)?,
                received: row.get(4)?,
                state: row.get(5)?,
            })
        })?;
        let mut logs = Vec::new();
        for log in rows {
            let log = log?;
            if states.contains(&log.state.as_str()) {
                logs.push(log);
            }
        }
        Ok(logs)
    }

    /// The firmwares (application, device type, version) that have logs
    /// waiting for their ELF.
    pub(crate) fn waiting_firmwares(&self) -> Result<Vec<(u32, String, String)>, rusqlite::Error> {
        let connection = lock(&self.write);
        let mut statement = connection.prepare_cached(
            "SELECT DISTINCT app_id, device_type, version FROM binary_logs \
             WHERE device_type IS NOT NULL AND version IS NOT NULL AND state IN (?, ?)",
        )?;
        let rows = statement.query_map(params![WAITING_STATES[0], WAITING_STATES[1]], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
        rows.collect()
    }

    /// The accepted binary logs that have no decoding state, oldest first.
    pub(crate) fn unregistered_logs(&self) -> Result<Vec<UnregisteredLog>, rusqlite::Error> {
        let connection = lock(&self.write);
        let mut statement = connection.prepare_cached(
            "SELECT r.id, (SELECT MIN(e.id) FROM log_entries e WHERE e.record_id = r.id), \
             r.app_id, r.serial, r.file, r.time_us FROM records r \
             WHERE r.kind = 'binary-log' AND r.verdict = 'ok' AND r.app_id IS NOT NULL \
             AND r.file IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM binary_logs b WHERE b.record_id = r.id) ORDER BY r.id",
        )?;
        let rows = statement.query_map([], |row| {
            Ok(UnregisteredLog {
                record_id: row.get(0)?,
                entry_id: row.get(1)?,
                app_id: row.get(2)?,
                serial: row.get(3)?,
                file: row.get(4)?,
                time_us: row.get(5)?,
            })
        })?;
        rows.collect()
    }

    /// The boot registrations answered with a token: (application, token,
    /// the request's payload file).
    pub(crate) fn boot_registrations(&self) -> Result<Vec<(u32, u32, String)>, rusqlite::Error> {
        let connection = lock(&self.write);
        let mut statement = connection.prepare_cached(
            "SELECT app_id, token, file FROM records WHERE kind = 'boot' AND verdict = 'ok' \
             AND app_id IS NOT NULL AND token IS NOT NULL AND file IS NOT NULL ORDER BY id",
        )?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        rows.collect()
    }

    /// Gives an unregistered log (see [`Store::unregistered_logs`]) its
    /// decoding state, in one transaction: its header entry written anew
    /// (`header`, or added if it had none), its `binary_logs` row, and its
    /// decoded records (replacing any left by a decoding whose state was
    /// lost). False (nothing written) when it has a state by now.
    pub(crate) fn register(
        &self,
        log: &UnregisteredLog,
        header: &LogRow,
        binary_log: &BinaryLogRow,
        records: &[LogRow],
    ) -> Result<bool, rusqlite::Error> {
        let mut connection = lock(&self.write);
        let tx = connection.transaction()?;
        let known: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM binary_logs WHERE record_id = ?)",
            [log.record_id],
            |row| row.get(0),
        )?;
        if known {
            return Ok(false);
        }
        let entry_id = match log.entry_id {
            Some(entry_id) => {
                tx.execute(
                    "UPDATE log_entries SET item = ? WHERE id = ?",
                    params![Value::Object(header.item.clone()).to_string(), entry_id],
                )?;
                entry_id
            }
            None => insert_logs(&tx, log.record_id, std::slice::from_ref(header))?
                .ok_or(rusqlite::Error::QueryReturnedNoRows)?,
        };
        insert_binary_log(&tx, log.record_id, entry_id, binary_log)?;
        // Records of a decoding whose state was lost go: decoded anew.
        tx.execute(
            "DELETE FROM log_entries WHERE record_id = ? AND id != ?",
            params![log.record_id, entry_id],
        )?;
        insert_logs(&tx, log.record_id, records)?;
        tx.commit()?;
        Ok(true)
    }

    /// Settles a waiting log in one transaction: its new state, its
    /// entry's `decoding` object, and its decoded records as log entries
    /// of the same record. False (nothing written) when the log no longer
    /// waits: another upload of the ELF decoded it first.
    pub(crate) fn settle(
        &self,
        log_id: i64,
        state: &str,
        decoding: &Value,
        records: &[LogRow],
    ) -> Result<bool, rusqlite::Error> {
        self.settle_from(log_id, &WAITING_STATES, state, decoding, records)
    }

    /// Settles a decoded log again, with the ELF that replaced the one it
    /// was decoded with: as [`Store::settle`], its earlier records removed
    /// in the same transaction. False when it is not decoded (any more).
    pub(crate) fn redecode(
        &self,
        log_id: i64,
        state: &str,
        decoding: &Value,
        records: &[LogRow],
    ) -> Result<bool, rusqlite::Error> {
        self.settle_from(log_id, &["decoded"], state, decoding, records)
    }

    fn settle_from(
        &self,
        log_id: i64,
        from: &[&str],
        state: &str,
        decoding: &Value,
        records: &[LogRow],
    ) -> Result<bool, rusqlite::Error> {
        let mut connection = lock(&self.write);
        let tx = connection.transaction()?;
        let current: Option<String> = tx
            .query_row(
                "SELECT state FROM binary_logs WHERE id = ?",
                [log_id],
                |row| row.get(0),
            )
            .optional()?;
        if !current.is_some_and(|current| from.contains(&current.as_str())) {
            return Ok(false);
        }
        tx.execute(
            "UPDATE binary_logs SET state = ? WHERE id = ?",
            params![state, log_id],
        )?;
        let (record_id, entry_id): (i64, i64) = tx.query_row(
            "SELECT record_id, entry_id FROM binary_logs WHERE id = ?",
            [log_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let item: String = tx.query_row(
            "SELECT item FROM log_entries WHERE id = ?",
            [entry_id],
            |row| row.get(0),
        )?;
        let mut item: Value = serde_json::from_str(&item).unwrap_or_else(|_| json!({}));
        if let Some(object) = item.as_object_mut() {
            object.insert("decoding".into(), decoding.clone());
        }
        tx.execute(
            "UPDATE log_entries SET item = ? WHERE id = ?",
            params![item.to_string(), entry_id],
        )?;
        // The records of an earlier decoding: every entry of the log's
        // record but its header.
        tx.execute(
            "DELETE FROM log_entries WHERE record_id = ? AND id != ?",
            params![record_id, entry_id],
        )?;
        insert_logs(&tx, record_id, records)?;
        tx.commit()?;
        Ok(true)
    }

    /// Answers a query: the matching items, newest first, at most
    /// `query.limit`.
    pub(crate) fn query(&self, table: Table, query: &Query) -> Result<Vec<Value>, rusqlite::Error> {
        let (columns, from) = match table {
            Table::Metrics => ("name, value, ts, serial, app_id", "metrics"),
            Table::Events => ("type, ts, serial, app_id", "events"),
            Table::Logs => ("item", "log_entries"),
        };
        let (filter, values) = query.filter(table);
        let sql = format!(
            "SELECT {columns} FROM {from}{filter} ORDER BY ts DESC, id DESC LIMIT {}",
            query.limit
        );
        let connection = lock(&self.read);
        let mut statement = connection.prepare_cached(&sql)?;
        let rows = statement.query_map(params_from_iter(values.iter()), |row| {
            Ok(match table {
                Table::Metrics => {
                    let value: String = row.get(1)?;
                    json!({
                        "name": row.get::<_, String>(0)?,
                        "value": serde_json::from_str::<Value>(&value).unwrap_or(Value::Null),
                        "timestamp": row.get::<_, i64>(2)?,
                        "device_serial": row.get::<_, String>(3)?,
                        "application_id": row.get::<_, Option<u32>>(4)?,
                    })
                }
                Table::Events => json!({
                    "type": row.get::<_, String>(0)?,
                    "timestamp": row.get::<_, i64>(1)?,
                    "device_serial": row.get::<_, String>(2)?,
                    "application_id": row.get::<_, Option<u32>>(3)?,
                }),
                Table::Logs => {
                    let item: String = row.get(0)?;
                    serde_json::from_str(&item).unwrap_or(Value::Null)
                }
            })
        })?;
        rows.collect()
    }
}

impl Query {
    /// The `WHERE` clause and its values.
    fn filter(&self, table: Table) -> (String, Vec<rusqlite::types::Value>) {
        use rusqlite::types::Value as Sql;
        let mut terms = Vec::new();
        let mut values = Vec::new();
        if let Some(app_id) = self.app_id {
            terms.push("app_id = ?");
            values.push(Sql::Integer(app_id.into()));
        }
        if let Some(serial) = &self.serial {
            terms.push("serial = ?");
            values.push(Sql::Text(serial.clone()));
        }
        if let (Table::Metrics, Some(name)) = (table, &self.name) {
            terms.push("name = ?");
            values.push(Sql::Text(name.clone()));
        }
        if let Some(start) = self.start {
            terms.push("ts >= ?");
            values.push(Sql::Integer(start));
        }
        if let Some(end) = self.end {
            terms.push("ts <= ?");
            values.push(Sql::Integer(end));
        }
        if terms.is_empty() {
            (String::new(), values)
        } else {
            (format!(" WHERE {}", terms.join(" AND ")), values)
        }
    }
}

/// Why [`Store::insert`] stored nothing.
#[derive(Debug)]
pub(crate) enum InsertError {
    /// The database refused the rows (nothing else was done).
    Database(rusqlite::Error),
    /// The step before the commit failed; the transaction was rolled back.
    BeforeCommit(std::io::Error),
    /// The commit failed after the step before it succeeded.
    Commit(rusqlite::Error),
}

fn insert(
    connection: &mut Connection,
    record: &Record,
    rows: &Rows,
    before_commit: impl FnOnce() -> std::io::Result<()>,
) -> Result<(), InsertError> {
    let tx = connection.transaction().map_err(InsertError::Database)?;
    insert_into(&tx, record, rows).map_err(InsertError::Database)?;
    before_commit().map_err(InsertError::BeforeCommit)?;
    tx.commit().map_err(InsertError::Commit)
}

fn insert_into(
    tx: &rusqlite::Transaction<'_>,
    record: &Record,
    rows: &Rows,
) -> rusqlite::Result<()> {
    {
        let kind = serde_json::to_value(record.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let verdict = match record.verdict {
            Verdict::Ok => "ok",
            Verdict::Rejected => "rejected",
        };
        tx.prepare_cached(
            "INSERT INTO records (time_us, kind, topic, app_id, serial, token, size, verdict, \
             reason, file, client_id, compressed, entries) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )?
        .execute(params![
            epoch_micros(record.time),
            kind,
            record.topic,
            record.app_id,
            record.serial,
            record.token,
            record.size,
            verdict,
            record.reason,
            record
                .file
                .as_ref()
                .map(|f| f.to_string_lossy().into_owned()),
            record.client_id,
            record.compressed,
            record.entries,
        ])?;
        let record_id = tx.last_insert_rowid();
        let mut metric = tx.prepare_cached(
            "INSERT INTO metrics (record_id, app_id, serial, name, value, ts) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )?;
        for m in &rows.metrics {
            metric.execute(params![
                record_id,
                m.app_id,
                m.serial,
                m.name,
                m.value.to_string(),
                m.ts
            ])?;
        }
        let mut event = tx.prepare_cached(
            "INSERT INTO events (record_id, app_id, serial, type, ts) VALUES (?, ?, ?, ?, ?)",
        )?;
        for e in &rows.events {
            event.execute(params![record_id, e.app_id, e.serial, e.event_type, e.ts])?;
        }
        let first_entry = insert_logs(tx, record_id, &rows.logs)?;
        if let (Some(log), Some(entry_id)) = (&rows.binary_log, first_entry) {
            insert_binary_log(tx, record_id, entry_id, log)?;
        }
    }
    Ok(())
}

/// Inserts a binary log's decoding state, its header entry `entry_id`.
fn insert_binary_log(
    tx: &rusqlite::Transaction<'_>,
    record_id: i64,
    entry_id: i64,
    log: &BinaryLogRow,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO binary_logs (record_id, entry_id, app_id, serial, device_type, \
         version, git_hash, file, received, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        record_id,
        entry_id,
        log.app_id,
        log.serial,
        log.device_type,
        log.version,
        log.git_hash,
        log.file,
        log.received,
        log.state,
    ])?;
    Ok(())
}

/// Inserts `logs` as entries of `record_id`; returns the first one's id.
fn insert_logs(
    tx: &rusqlite::Transaction<'_>,
    record_id: i64,
    logs: &[LogRow],
) -> rusqlite::Result<Option<i64>> {
    let mut first = None;
    let mut statement = tx.prepare_cached(
        "INSERT INTO log_entries (record_id, app_id, serial, ts, item) VALUES (?, ?, ?, ?, ?)",
    )?;
    for l in logs {
        let item = Value::Object(l.item.clone()).to_string();
        statement.execute(params![record_id, l.app_id, l.serial, l.ts, item])?;
        first.get_or_insert(tx.last_insert_rowid());
    }
    Ok(first)
}

/// Microseconds since the Unix epoch (0 for a time before it).
fn epoch_micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Whole seconds since the Unix epoch (0 for a time before it).
pub(crate) fn epoch_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::RecordKind;

    fn metric(serial: &str, name: &str, value: Value, ts: i64) -> MetricRow {
        let Value::Number(value) = value else {
            panic!("not a number")
        };
        MetricRow {
            app_id: Some(7),
            serial: serial.into(),
            name: name.into(),
            value,
            ts,
        }
    }

    fn query() -> Query {
        Query {
            app_id: None,
            serial: None,
            name: None,
            start: None,
            end: None,
            limit: 100,
        }
    }

    #[test]
    fn metrics_come_back_newest_first_with_their_json_types() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let rows = Rows {
            metrics: vec![
                metric("A", "t", json!(3), 10),
                metric("A", "t", json!(2.5), 30),
                metric("B", "t", json!(18446744073709551615u64), 20),
                metric("A", "h", json!(1), 40),
            ],
            ..Rows::default()
        };
        store
            .insert(&Record::new(RecordKind::Metrics, "m", 1), &rows, || Ok(()))
            .unwrap();
        let all = store.query(Table::Metrics, &query()).unwrap();
        let times: Vec<_> = all.iter().map(|m| m["timestamp"].clone()).collect();
        assert_eq!(times, [json!(40), json!(30), json!(20), json!(10)]);
        assert_eq!(all[2]["value"], json!(18446744073709551615u64));
        assert!(all[3]["value"].is_u64());
        assert!(all[1]["value"].is_f64());

        let filtered = Query {
            serial: Some("A".into()),
            name: Some("t".into()),
            start: Some(5),
            end: Some(25),
            ..query()
        };
        let got = store.query(Table::Metrics, &filtered).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["value"], json!(3));
        let one = store
            .query(
                Table::Metrics,
                &Query {
                    limit: 1,
                    ..query()
                },
            )
            .unwrap();
        assert_eq!(one.len(), 1);
    }

    /// Every filter shape is answered by walking one index in time order:
    /// no table scan, no sort, whatever the tables hold.
    #[test]
    fn every_filter_shape_has_an_index_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let connection = lock(&store.read);
        for table in [Table::Metrics, Table::Events, Table::Logs] {
            for shape in 0..32u8 {
                let bit = |n: u8| shape & (1 << n) != 0;
                let query = Query {
                    app_id: bit(0).then_some(7),
                    serial: bit(1).then(|| "S".to_owned()),
                    name: bit(2).then(|| "n".to_owned()),
                    start: bit(3).then_some(1),
                    end: bit(4).then_some(2),
                    limit: 10,
                };
                let (filter, values) = query.filter(table);
                let from = match table {
                    Table::Metrics => "metrics",
                    Table::Events => "events",
                    Table::Logs => "log_entries",
                };
                let sql = format!(
                    "EXPLAIN QUERY PLAN SELECT * FROM {from}{filter} \
                     ORDER BY ts DESC, id DESC LIMIT 10"
                );
                let plan: Vec<String> = connection
                    .prepare(&sql)
                    .unwrap()
                    .query_map(params_from_iter(values.iter()), |r| r.get::<_, String>(3))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                let plan = plan.join("; ");
                assert!(
                    plan.contains("USING INDEX") && !plan.contains("TEMP B-TREE"),
                    "{from}{filter}: {plan}"
                );
            }
        }
    }

    #[test]
    fn a_waiting_log_is_found_by_its_firmware_and_settled_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let entry = |ts: f64| LogRow {
            app_id: Some(7),
            serial: "S".into(),
            ts,
            item: json!({"type": "binary"}).as_object().unwrap().clone(),
        };
        let log = |version: &str| Rows {
            logs: vec![entry(5.0)],
            binary_log: Some(BinaryLogRow {
                app_id: 7,
                serial: "S".into(),
                device_type: Some("board".into()),
                version: Some(version.into()),
                git_hash: "g".into(),
                file: format!("binlog/{version}.bin"),
                received: 5.0,
                state: "no_elf",
            }),
            ..Rows::default()
        };
        let record = Record::new(RecordKind::BinaryLog, "b", 1);
        store.insert(&record, &log("v1"), || Ok(())).unwrap();
        store.insert(&record, &log("v2"), || Ok(())).unwrap();

        let waiting = store.waiting_logs(7, "board", "v1").unwrap();
        assert_eq!(waiting.len(), 1);
        assert_eq!(waiting[0].file, "binlog/v1.bin");
        assert!(store.waiting_logs(8, "board", "v1").unwrap().is_empty());

        let decoding = json!({"state": "decoded", "records": 1});
        let mut record_row = entry(3.0);
        record_row.item.insert("type".into(), json!("record"));
        let records = [record_row];
        assert!(store
            .settle(waiting[0].id, "decoded", &decoding, &records)
            .unwrap());
        // A second upload of the same ELF finds it decoded: nothing twice.
        assert!(!store
            .settle(waiting[0].id, "decoded", &decoding, &records)
            .unwrap());
        assert!(store.waiting_logs(7, "board", "v1").unwrap().is_empty());
        let logs = store.query(Table::Logs, &query()).unwrap();
        let kinds: Vec<_> = logs.iter().map(|l| l["type"].clone()).collect();
        assert_eq!(kinds, [json!("binary"), json!("binary"), json!("record")]);
        // Newest first: v2's entry (still waiting), then v1's.
        assert!(logs[0].get("decoding").is_none());
        assert_eq!(logs[1]["decoding"]["state"], "decoded");
    }

    #[test]
    fn a_log_decoded_again_keeps_only_the_new_records_and_a_lost_state_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let entry = |kind: &str, ts: f64| LogRow {
            app_id: Some(7),
            serial: "S".into(),
            ts,
            item: json!({ "type": kind }).as_object().unwrap().clone(),
        };
        let state = BinaryLogRow {
            app_id: 7,
            serial: "S".into(),
            device_type: Some("board".into()),
            version: Some("v1".into()),
            git_hash: "g".into(),
            file: "binlog/a.bin".into(),
            received: 5.0,
            state: "decoded",
        };
        let rows = Rows {
            logs: vec![
                entry("binary", 5.0),
                entry("record", 1.0),
                entry("record", 2.0),
            ],
            binary_log: Some(state.clone()),
            ..Rows::default()
        };
        let mut record = Record::new(RecordKind::BinaryLog, "b", 1);
        record.app_id = Some(7);
        record.file = Some("binlog/a.bin".into());
        store.insert(&record, &rows, || Ok(())).unwrap();
        let logs = store
            .firmware_logs(7, "board", "v1", &REDECODED_STATES)
            .unwrap();
        assert_eq!(logs.len(), 1);
        assert!(store.unregistered_logs().unwrap().is_empty());

        // A waiting log's settle does not touch a decoded one.
        let decoding = json!({"state": "decoded", "records": 1});
        let again = [entry("record", 3.0)];
        assert!(!store
            .settle(logs[0].id, "decoded", &decoding, &again)
            .unwrap());
        assert!(store
            .redecode(logs[0].id, "decoded", &decoding, &again)
            .unwrap());
        let items = store.query(Table::Logs, &query()).unwrap();
        let ts: Vec<_> = items.iter().map(|l| l["type"].clone()).collect();
        assert_eq!(ts, [json!("binary"), json!("record")], "{items:?}");
        assert_eq!(items[0]["decoding"]["records"], 1);

        // A log whose state went missing is found, with its header entry.
        lock(&store.write)
            .execute("DELETE FROM binary_logs", [])
            .unwrap();
        let lost = store.unregistered_logs().unwrap();
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].file, "binlog/a.bin");
        let header = entry("binary", 5.0);
        assert!(store.register(&lost[0], &header, &state, &again).unwrap());
        assert!(!store.register(&lost[0], &header, &state, &again).unwrap());
        assert!(store.unregistered_logs().unwrap().is_empty());
        assert_eq!(store.query(Table::Logs, &query()).unwrap().len(), 2);
    }

    #[test]
    fn a_failed_write_stores_nothing_of_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        // Another connection makes every metric insert fail, as a full
        // disk or a damaged file would.
        let other = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        other
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON metrics \
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let rows = Rows {
            metrics: vec![metric("A", "t", json!(1), 1)],
            ..Rows::default()
        };
        let record = Record::new(RecordKind::Metrics, "m", 1);
        assert!(store.insert(&record, &rows, || Ok(())).is_err());
        assert!(store.insert(&record, &rows, || Ok(())).is_err());
        let records: i64 = other
            .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
            .unwrap();
        assert_eq!(records, 0, "the record went with its rows");
        other.execute_batch("DROP TRIGGER refuse").unwrap();
        store.insert(&record, &rows, || Ok(())).unwrap();
        assert_eq!(store.query(Table::Metrics, &query()).unwrap().len(), 1);
    }
}
