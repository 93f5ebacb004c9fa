//! Delivery's door into the outbox: take the next records to send, then
//! say what became of each. The sender (`client/delivery.rs`) publishes
//! and decides a record's fate; the outbox owns everything about where
//! records live (segments, frames, checksums, acks on disk).

use std::collections::HashMap;
use std::path::Path;

use tokio::sync::futures::Notified;

use super::format::{self, AckState, Scanned, StoredRecord};
use super::segments::{read_at, segment_path};
use super::state::{error_chain, Entry};
use super::writer::Request;
use super::Outbox;
use crate::error::{Error, ErrorKind};
use crate::RecordId;

/// A record taken for delivery: in flight until [`Outbox::delivered`],
/// [`Outbox::dead`] or [`Outbox::retry`] says what became of it.
pub(crate) struct Taken {
    pub(crate) id: u64,
    /// The record read back, its checksum checked again; an error when it
    /// could not be read (it is then settled like a failed delivery).
    pub(crate) record: Result<StoredRecord, Error>,
}

impl Outbox {
    /// Records taken for delivery whose fate is not on disk yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// Takes up to `max` queued records, oldest first, marks them in
    /// flight and reads them back: one trip to the blocking pool and one
    /// open per segment.
    pub(crate) async fn take(&self, max: usize) -> Vec<Taken> {
        let entries = self.shared.take_queued(max);
        if entries.is_empty() {
            return Vec::new();
        }
        let dir = self.dir().to_path_buf();
        let ids: Vec<u64> = entries.iter().map(|(id, _)| *id).collect();
        match tokio::task::spawn_blocking(move || read_blocking(&dir, entries)).await {
            Ok(read) => read,
            Err(e) => {
                let failure = Error::with_source(ErrorKind::Shutdown, e.to_string());
                ids.into_iter()
                    .map(|id| Taken {
                        id,
                        record: Err(failure.clone()),
                    })
                    .collect()
            }
        }
    }

    /// Completes when a record was enqueued or settled, i.e. when taking
    /// records may find some. Created before looking, as with any
    /// [`tokio::sync::Notify`], so that no change is missed.
    pub(crate) fn changed(&self) -> Notified<'_> {
        self.shared.wake.notified()
    }

    /// The broker acknowledged record `id`: it is delivered.
    pub(crate) fn delivered(&self, id: u64) {
        self.ack(id, AckState::Delivered);
    }

    /// Record `id` failed in a way no retry can fix: kept as a dead
    /// letter, with `error` as its reason.
    pub(crate) fn dead(&self, id: u64, error: &Error) {
        let reason = error_chain(error);
        tracing::warn!(id, %reason, "outbox record failed for good; kept as a dead letter");
        self.shared.note_error(error);
        self.ack(id, AckState::Dead(reason));
    }

    /// Record `id` could not be delivered now: queued again, and `error`
    /// noted as the outbox's current failure.
    pub(crate) fn retry(&self, id: u64, error: &Error) {
        self.shared.requeue(id, error);
    }

    /// A connection attempt failed: it stops every delivery though no
    /// record was tried, so it is the outbox's current failure too (its
    /// status is where an operator looks for why nothing is delivered).
    pub(crate) fn connection_failed(&self, error: &Error) {
        self.shared.note_link_error(error);
        let _ = self.send(Request::Refresh);
    }

    /// The connection came up: a failure that was only the connection's
    /// is over.
    pub(crate) fn connection_up(&self) {
        self.shared.link_up();
        let _ = self.send(Request::Refresh);
    }

    fn ack(&self, id: u64, state: AckState) {
        if self.send(Request::Ack { id, state }).is_err() {
            tracing::warn!(
                id,
                "the outbox closed before a delivery could be recorded; it will be sent again"
            );
        }
    }
}

fn read_blocking(dir: &Path, entries: Vec<(u64, Entry)>) -> Vec<Taken> {
    let mut files: HashMap<u64, std::io::Result<std::fs::File>> = HashMap::new();
    entries
        .into_iter()
        .map(|(id, entry)| {
            let path = segment_path(dir, entry.segment);
            let file = files
                .entry(entry.segment)
                .or_insert_with(|| std::fs::File::open(&path));
            let bytes = match file {
                Ok(file) => read_at(file, entry.offset, entry.frame_len as usize),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            let record = bytes
                .map_err(|e| {
                    Error::with_source(
                        ErrorKind::Outbox {
                            op: "read",
                            path: path.clone(),
                        },
                        e,
                    )
                })
                .and_then(
                    |bytes| match format::scan_segment(&bytes).into_iter().next() {
                        Some(Scanned::Record { record, .. }) => Ok(record),
                        _ => Err(ErrorKind::DeadLetter {
                            id: RecordId(id),
                            reason: format!(
                                "the record in {} at {} was damaged on disk after it was enqueued",
                                path.display(),
                                entry.offset
                            ),
                        }
                        .into()),
                    },
                );
            Taken { id, record }
        })
        .collect()
}
