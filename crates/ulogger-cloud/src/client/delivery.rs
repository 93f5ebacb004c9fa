//! Delivers an outbox in the background: oldest records first, each
//! registered, token-patched and published like `upload_log`, and
//! acknowledged in the outbox only on the broker's PUBACK. A loop of
//! publish and settle: the outbox hands out records and records their
//! fate (`outbox/sending.rs`); this decides what to send and what a
//! failure means.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use super::Client;
use crate::crash::crash_point;
use crate::error::{Error, ErrorKind};
use crate::outbox::{Kind, Outbox, StoredRecord, Taken};
use crate::transport::backoff::Backoff;
use crate::transport::Connectivity;
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
    // Failed connection attempts stop every delivery without a record
    // failing, so they are noted in the outbox too: its status is where
    // an operator looks for why nothing is delivered.
    let mut link_events = client.transport().link_events();
    if let Some(events) = &mut link_events {
        if let Connectivity::Connecting {
            last_error: Some(e),
            ..
        } = &*events.borrow_and_update()
        {
            outbox.connection_failed(e);
        }
    }
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        let connected = client.any_connected();
        // A record counts as in flight from when it is taken until its
        // fate is on disk (not merely until its task ends), so a crash
        // sends at most `concurrency` records twice. Refill in chunks
        // (half the window at least), so reading records back costs one
        // trip to the blocking pool per chunk rather than per record.
        let in_flight = outbox.in_flight();
        if connected && paused_until.is_none() && in_flight <= concurrency / 2 {
            for Taken { id, record } in outbox.take(concurrency - in_flight).await {
                let client = client.clone();
                // Turns are taken here, oldest record first, so a device's
                // records reach the cloud in the order they were enqueued
                // (a record sent again after a failure comes later).
                let turn = match &record {
                    Ok(record) if !record.serial.is_empty() => client.take_turn(&record.serial),
                    _ => super::Turn::free(),
                };
                let task = tasks.spawn(async move { deliver(&client, record?, turn).await });
                records.insert(task.id(), id);
            }
        }
        tokio::select! {
            () = outbox.changed() => {}
            // Watched while connected too (where it can be: a bridged
            // link only says when it is up), so losing the connection
            // with nothing in flight is noted at once, not at the next
            // enqueue.
            failed = link_change(&client, &mut link_events), if !connected || link_events.is_some() => match failed {
                Some(error) => outbox.connection_failed(&error),
                None => if client.any_connected() {
                    outbox.connection_up();
                },
            },
            Some(done) = tasks.join_next_with_id() => {
                let mut done = Some(done);
                while let Some(finished) = done {
                    if let Some(pause) = settle(&outbox, &mut records, &mut backoff, finished) {
                        paused_until = Some(Instant::now() + pause);
                    }
                    done = tasks.try_join_next_with_id();
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

/// Waits until the connection comes up or closes (`None`) or an attempt
/// fails (its error), seen through `events` so that each attempt counts
/// once.
async fn link_change(
    client: &Client,
    events: &mut Option<watch::Receiver<Connectivity>>,
) -> Option<Error> {
    let Some(events) = events else {
        client.transport().wait_connected().await;
        return None;
    };
    loop {
        if events.changed().await.is_err() {
            // The transport is gone; the stop signal ends the loop.
            std::future::pending::<()>().await;
        }
        match &*events.borrow_and_update() {
            Connectivity::Connecting {
                last_error: Some(e),
                ..
            } => return Some(e.clone()),
            Connectivity::Connecting { .. } => {}
            Connectivity::Connected | Connectivity::Closed => return None,
        }
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
            outbox.delivered(id);
            None
        }
        Err(e) if is_permanent(&e) => {
            outbox.dead(id, &e);
            None
        }
        Err(e) => {
            outbox.retry(id, &e);
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

/// Failures that retrying cannot fix: the record itself is refused.
fn is_permanent(error: &Error) -> bool {
    error.is_invalid_input()
        || matches!(
            error.kind(),
            ErrorKind::InvalidBootReply(_) | ErrorKind::DeadLetter { .. }
        )
}

async fn deliver(client: &Client, record: StoredRecord, turn: super::Turn) -> Result<(), Error> {
    match record.kind {
        Kind::Log => {
            let device = DeviceInfo::new(
                record.app_id,
                record.serial,
                record.device_type,
                record.git_version,
                record.git_hash,
            );
            client
                .upload_log_in_turn(turn, &device, &record.payload)
                .await?;
        }
        Kind::CoreDump => {
            client.publish_core_dump(record.payload).await?;
        }
        kind @ (Kind::Metrics | Kind::Events | Kind::TextLogs) => {
            client
                .publish_stored_telemetry(kind, record.app_id, &record.serial, record.payload, turn)
                .await?;
        }
    }
    Ok(())
}
