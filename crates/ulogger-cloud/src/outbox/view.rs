//! Views of an outbox from another process: what it holds and its
//! owner's counters, read from the directory without taking it over.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use super::state::Ledger;
use super::status::{OutboxRecord, OutboxStatus, StatusFile};
use super::{load, lock, segments, OutboxConfig};
use crate::error::{Error, ErrorKind};

impl OutboxStatus {
    /// Reads the status of the outbox in `dir` without taking it over:
    /// what is queued and dead comes from the files, the owner's counters
    /// (delivered, rate, last error, ...) from its `status.json` when an
    /// owner runs. Without one, the last error (and since when) of the
    /// last owner is kept: nothing could have cleared it since, and it
    /// says why what is queued is still there. Works while another
    /// process owns the directory.
    pub fn read(dir: impl AsRef<Path>) -> Result<OutboxStatus, Error> {
        let dir = dir.as_ref();
        let shared = read_only(dir)?;
        let mut status = shared.status();
        status.in_flight = 0;
        let owned = lock::is_owned(dir);
        status.owner_pid = if owned { lock::owner_pid(dir) } else { None };
        let file = std::fs::read(dir.join(segments::STATUS_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<StatusFile>(&bytes).ok());
        let Some(file) = file else {
            return Ok(status);
        };
        status.last_error = file.last_error;
        status.failing_since = file
            .failing_since_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
        status.failed_attempts = file.failed_attempts;
        if owned {
            status.in_flight = file.in_flight;
            status.delivered = file.delivered;
            status.evicted = file.evicted;
            status.corrupt = file.corrupt;
            status.delivery_rate = file.delivery_rate;
            // The files cannot tell queued from in flight.
            status.queued = status.queued.saturating_sub(file.in_flight);
        }
        Ok(status)
    }
}

impl OutboxRecord {
    /// Lists the records of the outbox in `dir`, oldest first, without
    /// taking it over (records in flight show as queued).
    pub fn list(dir: impl AsRef<Path>) -> Result<Vec<OutboxRecord>, Error> {
        Ok(read_only(dir.as_ref())?.records())
    }
}

fn read_only(dir: &Path) -> Result<Ledger, Error> {
    if !dir.is_dir() {
        return Err(Error::with_source(
            ErrorKind::Outbox {
                path: dir.to_path_buf(),
                op: "read",
            },
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let loaded = load::load(dir, false, false)?;
    Ok(Ledger::new(OutboxConfig::new(dir), loaded.state))
}
