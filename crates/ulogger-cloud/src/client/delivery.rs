//! Delivers an outbox in the background: oldest records first, each
//! registered, token-patched and published like `upload_log`, and
//! acknowledged in the outbox only on the broker's PUBACK.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use super::Client;
use crate::crash::crash_point;
use crate::error::{Error, ErrorKind};
use crate::outbox::format::{self, AckState, Kind, Scanned, StoredRecord};
use crate::outbox::{Entry, Outbox, Request};
use crate::transport::backoff::Backoff;
use crate::wire::DeviceInfo;

/// Runs until `stop` is set, then lets the deliveries under way finish
/// (the caller shuts the transport down, so they end promptly). Takes
/// records only while the connection is up, so an outage leaves them
/// queued, not in flight.
pub(super) async fn run(
    client: Client,
    outbox: Arc<Outbox>,
    concurrency: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    let mut records = HashMap::new();
    let mut backoff = Backoff::default();
    let mut paused_until: Option<Instant> = None;
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        let connected = client.any_connected();
        if connected && paused_until.is_none() && tasks.len() < concurrency {
            let taken = outbox.shared.take_queued(concurrency - tasks.len());
            for (id, entry) in taken {
                let client = client.clone();
                let outbox = outbox.clone();
                let task = tasks.spawn(async move { deliver(&client, &outbox, &entry).await });
                records.insert(task.id(), id);
            }
        }
        tokio::select! {
            () = outbox.shared.wake.notified() => {}
            _ = client.transport().wait_connected(), if !connected => {}
            Some(done) = tasks.join_next_with_id() => {
                if let Some(pause) = settle(&outbox, &mut records, &mut backoff, done) {
                    paused_until = Some(Instant::now() + pause);
                }
            }
            () = sleep_until(paused_until.unwrap_or_else(Instant::now)), if paused_until.is_some() => {
                paused_until = None;
            }
            changed = stop.changed() => if changed.is_err() {
                // Every client handle is gone.
                break;
            },
        }
    }
    while let Some(done) = tasks.join_next_with_id().await {
        settle(&outbox, &mut records, &mut backoff, done);
    }
}

/// Records the outcome of one delivery; returns how long to pause
/// deliveries after a failure that may pass (no hot loop).
fn settle(
    outbox: &Outbox,
    records: &mut HashMap<tokio::task::Id, u64>,
    backoff: &mut Backoff,
    done: Result<(tokio::task::Id, Result<(), Error>), tokio::task::JoinError>,
) -> Option<std::time::Duration> {
    let (task, result) = match done {
        Ok((task, result)) => (task, result),
        Err(e) => {
            let failure = Error::with_source(ErrorKind::Shutdown, e.to_string());
            (e.id(), Err(failure))
        }
    };
    let id = records.remove(&task)?;
    match result {
        Ok(()) => {
            crash_point!("delivery-after-puback");
            backoff.succeeded();
            ack(outbox, id, AckState::Delivered);
            None
        }
        Err(e) if is_permanent(&e) => {
            let reason = crate::outbox::error_chain(&e);
            tracing::warn!(id, %reason, "outbox record failed for good; kept as a dead letter");
            outbox.shared.note_error(&e);
            ack(outbox, id, AckState::Dead(reason));
            None
        }
        Err(e) => {
            outbox.shared.requeue(id, &e);
            if matches!(e.kind(), ErrorKind::Shutdown) {
                return None;
            }
            backoff.failed();
            let pause = backoff.next_delay();
            tracing::info!(id, error = %crate::outbox::error_chain(&e), retry_in = ?pause, "outbox delivery failed; will retry");
            Some(pause)
        }
    }
}

fn ack(outbox: &Outbox, id: u64, state: AckState) {
    if outbox.send(Request::Ack { id, state }).is_err() {
        tracing::warn!(
            id,
            "the outbox closed before a delivery could be recorded; it will be sent again"
        );
    }
}

/// Failures that retrying cannot fix: the record itself is refused.
fn is_permanent(error: &Error) -> bool {
    error.is_invalid_input()
        || matches!(
            error.kind(),
            ErrorKind::InvalidBootReply(_) | ErrorKind::DeadLetter { .. }
        )
}

async fn deliver(client: &Client, outbox: &Outbox, entry: &Entry) -> Result<(), Error> {
    let record = read(outbox, entry).await?;
    match record.kind {
        Kind::Log => {
            let device = DeviceInfo::new(
                record.app_id,
                record.serial,
                record.device_type,
                record.git_version,
                record.git_hash,
            );
            client.upload_log(&device, &record.payload).await?;
        }
        Kind::CoreDump => {
            client.publish_core_dump(record.payload).await?;
        }
    }
    Ok(())
}

/// Reads a record back from its segment, checking its checksum again.
async fn read(outbox: &Outbox, entry: &Entry) -> Result<StoredRecord, Error> {
    let path = crate::outbox::segment_path(outbox.dir(), entry.segment);
    let (offset, len) = (entry.offset, entry.frame_len as usize);
    let read_path = path.clone();
    let bytes = tokio::task::spawn_blocking(move || read_at(&read_path, offset, len))
        .await
        .map_err(|e| Error::with_source(ErrorKind::Shutdown, e.to_string()))?
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Outbox {
                    op: "read",
                    path: path.clone(),
                },
                e,
            )
        })?;
    match format::scan_segment(&bytes).into_iter().next() {
        Some(Scanned::Record { record, .. }) => Ok(record),
        _ => Err(ErrorKind::DeadLetter {
            id: crate::RecordId(0),
            reason: format!(
                "the record in {} at {offset} was damaged on disk after it was enqueued",
                path.display()
            ),
        }
        .into()),
    }
}

fn read_at(path: &std::path::Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut buf = vec![0; len];
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(&mut buf, offset)?;
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = file;
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut buf)?;
    }
    Ok(buf)
}
