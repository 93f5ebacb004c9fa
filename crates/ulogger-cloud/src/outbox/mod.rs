//! The durable outbox: logs and core dumps are made durable on disk first,
//! then delivered in the background, oldest first, and removed only once
//! the broker acknowledged them.
//!
//! Layout of the directory (see `docs/decisions.md` for why segments):
//!
//! ```text
//! LOCK                    held by the owning process; holds its pid
//! status.json             the owner's counters, rewritten about once a second
//! seg-<n>.log             records, appended in batches, one fsync per batch
//! seg-<n>.acks            what became of them: delivered, dead, evicted, ...
//! corrupt/                bytes that failed their checksum, set aside on open
//! ```

mod config;
pub(crate) mod format;
mod load;
mod lock;
mod segments;
mod sending;
mod state;
mod status;
mod view;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::oneshot;

pub use config::{OutboxConfig, WhenFull};
pub use status::{OutboxFailure, OutboxRecord, OutboxStatus, RecordKind, RecordState};

pub(crate) use format::{Kind, StoredRecord};
pub(crate) use sending::Taken;
pub(crate) use state::error_chain;

use state::Ledger;
use writer::Request;

use crate::error::{Error, ErrorKind};
use format::AckState;

/// The id of a record in an outbox: unique in its directory, increasing
/// in enqueue order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(pub u64);

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A durable outbox directory, owned by this process while the value lives.
///
/// A [`Client`](crate::Client) built with
/// [`ClientBuilder::outbox`](crate::ClientBuilder::outbox) owns one and
/// delivers from it; opened on its own, an `Outbox` lets an administrator
/// look at it, retry or purge dead records while no client runs. To look
/// at an outbox another process owns, use [`OutboxStatus::read`] and
/// [`OutboxRecord::list`].
pub struct Outbox {
    shared: Arc<Ledger>,
    requests: std::sync::mpsc::Sender<Request>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("dir", &self.shared.config.dir)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens (creating it if needed) and takes ownership of the outbox
    /// directory: loads what is queued, sets aside what fails its
    /// checksum. Fails with [`ErrorKind::OutboxLocked`] while another
    /// process owns it. Blocks on file I/O.
    pub fn open(config: OutboxConfig) -> Result<Outbox, Error> {
        config.validate()?;
        let (shared, writer) = load::open(config)?;
        let shared = Arc::new(shared);
        let (requests, rx) = std::sync::mpsc::channel();
        let thread_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("ulogger-outbox".into())
            .spawn(move || writer.run(rx, thread_shared))
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Outbox {
                        path: PathBuf::new(),
                        op: "start the writer thread of",
                    },
                    e,
                )
            })?;
        Ok(Outbox {
            shared,
            requests,
            writer: Some(writer),
        })
    }

    /// The outbox directory.
    pub fn dir(&self) -> &Path {
        &self.shared.config.dir
    }

    /// What the outbox holds and has done since it was opened.
    pub fn status(&self) -> OutboxStatus {
        self.shared.status()
    }

    /// The delivery failure that has not cleared yet (a failed delivery
    /// or connection attempt, until a record is delivered or, for a
    /// connection failure, the connection comes up), if any. Cheaper than
    /// [`Outbox::status`] to ask often.
    pub fn failure(&self) -> Option<OutboxFailure> {
        self.shared.failure()
    }

    /// Every record still on disk (queued, in flight or dead), oldest
    /// first.
    pub fn records(&self) -> Vec<OutboxRecord> {
        self.shared.records()
    }

    /// Hands every dead record back to delivery; returns how many.
    pub async fn retry_dead(&self) -> Result<usize, Error> {
        self.settle_dead(AckState::Retry).await
    }

    /// Removes every dead record; returns how many.
    pub async fn purge_dead(&self) -> Result<usize, Error> {
        self.settle_dead(AckState::Purged).await
    }

    async fn settle_dead(&self, state: AckState) -> Result<usize, Error> {
        let dead = self.shared.dead_ids();
        for id in &dead {
            self.send(Request::Ack {
                id: *id,
                state: state.clone(),
            })?;
        }
        self.flush().await?;
        Ok(dead.len())
    }

    /// Waits until everything handed to the writer so far is on disk.
    pub(crate) async fn flush(&self) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Flush { reply })?;
        rx.await.map_err(|_| Error::from(ErrorKind::Shutdown))
    }

    /// Appends a record durably and returns its id.
    pub(crate) async fn append(
        &self,
        kind: Kind,
        device: Option<&crate::wire::DeviceInfo>,
        payload: &[u8],
    ) -> Result<RecordId, Error> {
        self.append_record(writer::NewRecord::new(kind, device, payload))
            .await
    }

    /// Appends a telemetry message (see [`writer::NewRecord::telemetry`]).
    pub(crate) async fn append_telemetry(
        &self,
        kind: Kind,
        app_id: u32,
        serial: &str,
        payload: &[u8],
    ) -> Result<RecordId, Error> {
        self.append_record(writer::NewRecord::telemetry(kind, app_id, serial, payload))
            .await
    }

    async fn append_record(&self, record: writer::NewRecord) -> Result<RecordId, Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Append { record, reply })?;
        rx.await
            .unwrap_or_else(|_| Err(ErrorKind::Shutdown.into()))
            .map(RecordId)
    }

    fn send(&self, request: Request) -> Result<(), Error> {
        self.requests
            .send(request)
            .map_err(|_| Error::from(ErrorKind::Shutdown))
    }

    /// Waits for what becomes of record `id`.
    pub(crate) async fn outcome(&self, id: RecordId) -> Result<(), Error> {
        match self.shared.wait_for(id.0) {
            state::Wait::Done(outcome) => outcome.into_result(id),
            state::Wait::Pending(rx) => match rx.await {
                Ok(outcome) => outcome.into_result(id),
                Err(_) => Err(ErrorKind::Shutdown.into()),
            },
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let _ = self.requests.send(Request::Close);
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("the outbox writer thread panicked");
            }
        }
    }
}
