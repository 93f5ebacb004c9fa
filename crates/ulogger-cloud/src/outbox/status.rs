//! What an outbox holds and has done: the snapshot types its owner
//! reports and other processes read (`view.rs`), and the owner's status
//! file.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::RecordId;
use crate::error::Error;

/// A snapshot of an outbox.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutboxStatus {
    /// The outbox directory.
    pub dir: PathBuf,
    /// The process that owns the directory, if one does.
    pub owner_pid: Option<u32>,
    /// Records waiting for delivery.
    pub queued: usize,
    /// Payload bytes of the queued records.
    pub queued_bytes: u64,
    /// How long the oldest queued record has waited.
    pub oldest_age: Option<Duration>,
    /// Records handed to the broker and not acknowledged yet.
    pub in_flight: usize,
    /// Records that failed for good, kept until retried or purged.
    pub dead: usize,
    /// Records the broker acknowledged (since the owner opened the outbox).
    pub delivered: u64,
    /// Records removed at a bound (bytes, count, age) since the owner
    /// opened the outbox.
    pub evicted: u64,
    /// Damaged records found by their checksum and set aside (in
    /// `corrupt/`) when the owner opened the outbox.
    pub corrupt: u64,
    /// The delivery failure that has not cleared yet (no record was
    /// delivered since), as one line: the error and its causes.
    pub last_error: Option<String>,
    /// When that failure started: the first of its identical repeats.
    pub failing_since: Option<SystemTime>,
    /// How many times it has happened since (0 without a failure).
    pub failed_attempts: u64,
    /// Records delivered per second over the last ten seconds.
    pub delivery_rate: f64,
}

/// A delivery failure that has not cleared yet, with the error itself
/// (so a caller can say what to do about it, as it would for the same
/// error from a direct call).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OutboxFailure {
    /// The last occurrence of the failure.
    pub error: Error,
    /// The error and its causes on one line (as in
    /// [`OutboxStatus::last_error`]).
    pub text: String,
    /// When it started: the first of its identical repeats.
    pub since: SystemTime,
    /// How many times it has happened since.
    pub attempts: u64,
}

/// The counters only the owner knows, as it writes them to
/// `status.json` about once a second.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StatusFile {
    pub(super) pid: u32,
    pub(super) in_flight: usize,
    pub(super) delivered: u64,
    pub(super) evicted: u64,
    pub(super) corrupt: u64,
    pub(super) last_error: Option<String>,
    /// Milliseconds since the Unix epoch (absent in files of older
    /// versions, hence the default).
    #[serde(default)]
    pub(super) failing_since_ms: Option<u64>,
    #[serde(default)]
    pub(super) failed_attempts: u64,
    pub(super) delivery_rate: f64,
}

impl StatusFile {
    pub fn from_status(status: &OutboxStatus) -> StatusFile {
        StatusFile {
            pid: std::process::id(),
            in_flight: status.in_flight,
            delivered: status.delivered,
            evicted: status.evicted,
            corrupt: status.corrupt,
            last_error: status.last_error.clone(),
            failing_since_ms: status.failing_since.map(|t| {
                t.duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }),
            failed_attempts: status.failed_attempts,
            delivery_rate: status.delivery_rate,
        }
    }
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordKind {
    /// A binary log (registered and token-patched at delivery).
    Log,
    /// A core dump (published as-is).
    CoreDump,
    /// A metrics message (PROTOCOL §8), built and compressed when it was
    /// enqueued and published as-is.
    Metrics,
    /// An events message, like [`RecordKind::Metrics`].
    Events,
    /// A text-log batch (PROTOCOL §12), built with its sequence number
    /// when it was enqueued and published as-is.
    TextLogs,
}

/// How far a record got.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordState {
    /// Waiting for delivery.
    Queued,
    /// Published, waiting for the broker's acknowledgement.
    InFlight,
    /// Failed for good; kept until retried or purged.
    Dead {
        /// Why, as the failure said.
        reason: String,
    },
}

/// One record in an outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxRecord {
    /// Its id.
    pub id: RecordId,
    /// What it is.
    pub kind: RecordKind,
    /// The device's application id (0 for core dumps).
    pub app_id: u32,
    /// The device's serial (empty for core dumps).
    pub serial: String,
    /// Payload bytes.
    pub size: u64,
    /// Time since it was enqueued.
    pub age: Duration,
    /// How far it got.
    pub state: RecordState,
}
