//! The decoding state of the binary logs stored in a data directory, read
//! from its record database while the emulator runs or after it stopped:
//! what `ulogger emulator records` shows beside each log.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::DATABASE_FILE;
use crate::EmulatorError;

/// How far the decoding of a stored binary log got (PROTOCOL §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DecodingState {
    /// Decoded with the ELF of its firmware: its records are stored.
    Decoded,
    /// No ELF of its firmware was uploaded yet; one that is decodes it.
    NoElf,
    /// The ELF of its firmware does not read; a good one decodes it.
    BadElf,
    /// Its session token names no firmware (issued by an older emulator
    /// whose boot registration is not kept).
    NoIdentity,
    /// The payload is not a binary log the decoder reads.
    Undecodable,
}

impl DecodingState {
    /// The state as the data API and the index name it (`no_elf`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DecodingState::Decoded => "decoded",
            DecodingState::NoElf => "no_elf",
            DecodingState::BadElf => "bad_elf",
            DecodingState::NoIdentity => "no_identity",
            DecodingState::Undecodable => "undecodable",
        }
    }

    fn parse(text: &str) -> Option<DecodingState> {
        serde_json::from_value(Value::from(text)).ok()
    }
}

impl std::fmt::Display for DecodingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The decoding of one stored binary log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LogDecoding {
    /// How far it got.
    pub state: DecodingState,
    /// Why it is not decoded (every state but `decoded`), or a note on a
    /// decoded one (the ELF's git hash is not the device's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A decoded log's records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// Of those, how many report a problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with_problems: Option<u64>,
}

/// The decoding states of a data directory's logs: its record database
/// (`<data>/records.db`), opened read-only.
#[derive(Debug)]
pub struct LogDecodings {
    path: PathBuf,
    connection: Connection,
}

impl LogDecodings {
    /// Opens the record database of `data_dir` for reading.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<LogDecodings, EmulatorError> {
        let path = data_dir.as_ref().join(DATABASE_FILE);
        let connection = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| EmulatorError::Database {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(LogDecodings { path, connection })
    }

    /// The decoding of the log stored as `file` (relative to the data
    /// directory, as [`Record::file`](crate::Record::file) names it);
    /// `None` for a file that is no accepted binary log, or one that has
    /// no state yet (stored by an older emulator that was not started
    /// since).
    pub fn get(&self, file: impl AsRef<Path>) -> Result<Option<LogDecoding>, EmulatorError> {
        let file = file.as_ref().to_string_lossy();
        let found = self
            .connection
            .prepare_cached(
                "SELECT b.state, e.item FROM binary_logs b \
                 LEFT JOIN log_entries e ON e.id = b.entry_id WHERE b.file = ? \
                 ORDER BY b.id DESC LIMIT 1",
            )
            .and_then(|mut statement| {
                statement
                    .query_row([file.as_ref()], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?))
                    })
                    .optional()
            });
        let found = match found {
            Ok(found) => found,
            // A database written before logs had states.
            Err(e) if e.to_string().contains("no such table") => None,
            Err(e) => {
                return Err(EmulatorError::Database {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })
            }
        };
        let Some((state, item)) = found else {
            return Ok(None);
        };
        let Some(state) = DecodingState::parse(&state) else {
            return Ok(None);
        };
        let decoding = item
            .and_then(|item| serde_json::from_str::<Value>(&item).ok())
            .map(|mut item| item["decoding"].take())
            .unwrap_or(Value::Null);
        let text = |key: &str| decoding[key].as_str().map(str::to_owned);
        Ok(Some(LogDecoding {
            state,
            reason: text("reason").or_else(|| text("note")),
            records: decoding["records"].as_u64(),
            with_problems: decoding["with_problems"].as_u64(),
        }))
    }
}
