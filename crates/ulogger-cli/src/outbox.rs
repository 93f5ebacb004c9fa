//! `ulogger outbox`: look at, retry and purge a durable outbox (the one
//! `ulogger agent` and `ulogger upload --outbox` deliver from).
//!
//! `status` and `list` read the directory without taking it over, so they
//! work while an agent owns it; `retry` and `purge` change it, so they
//! need it free.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::anyhow;
use serde_json::json;
use ulogger_cloud::{
    ErrorKind, Outbox, OutboxConfig, OutboxRecord, OutboxStatus, RecordKind, RecordState,
};

use crate::connection::{missing, ConfigArg};
use crate::exit::{self, Exit, Failure};
use crate::Global;

/// Subcommands of `ulogger outbox`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// What is queued, in flight and dead, and what the owner delivered.
    Status(DirArg),
    /// Every record still in the outbox, oldest first.
    List(DirArg),
    /// Hand every dead record back to delivery (needs the outbox free).
    Retry(DirArg),
    /// Remove every dead record (needs the outbox free).
    Purge(DirArg),
}

/// Which outbox.
#[derive(Debug, clap::Args)]
pub struct DirArg {
    #[command(flatten)]
    config: ConfigArg,
    /// The outbox directory (required).
    #[arg(long, env = "ULOGGER_OUTBOX", value_name = "DIR")]
    outbox: Option<PathBuf>,
}

pub fn run(global: Global, cmd: Command) -> Result<(), Exit> {
    let (Command::Status(arg) | Command::List(arg) | Command::Retry(arg) | Command::Purge(arg)) =
        &cmd;
    let file = arg.config.file()?;
    let dir = arg
        .outbox
        .clone()
        .or_else(|| file.outbox.clone())
        .ok_or_else(|| missing("outbox"))?;
    if !dir.is_dir() {
        return Err(Exit::new(
            Failure::BadInput,
            anyhow!(
                "no outbox at {}: the directory does not exist",
                dir.display()
            ),
        ));
    }
    match cmd {
        Command::Status(_) => status(global, &dir),
        Command::List(_) => list(global, &dir),
        Command::Retry(_) => settle(global, &dir, true),
        Command::Purge(_) => settle(global, &dir, false),
    }
}

fn status(global: Global, dir: &Path) -> Result<(), Exit> {
    let status = OutboxStatus::read(dir).map_err(exit::from_cloud)?;
    if global.json {
        outln!("{}", status_json(&status));
        return Ok(());
    }
    let owner = match status.owner_pid {
        Some(pid) => format!("owned by process {pid}"),
        None => "not in use".to_owned(),
    };
    outln!("outbox {} ({owner})", status.dir.display());
    outln!(
        "  queued:    {} ({} bytes{})",
        status.queued,
        status.queued_bytes,
        status
            .oldest_age
            .map(|age| format!(", oldest {}", human_age(age)))
            .unwrap_or_default()
    );
    outln!("  in flight: {}", status.in_flight);
    outln!("  dead:      {}", status.dead);
    if status.owner_pid.is_some() {
        outln!(
            "  delivered: {} ({:.1}/s over the last 10 s)",
            status.delivered,
            status.delivery_rate
        );
        outln!("  evicted:   {}", status.evicted);
    }
    outln!("  corrupt:   {}", status.corrupt);
    if let Some(error) = &status.last_error {
        let since = status
            .failing_since
            .map(|t| {
                format!(
                    " (failing since {}, {})",
                    clock(t),
                    attempts(status.failed_attempts)
                )
            })
            .unwrap_or_default();
        outln!("  last error: {error}{since}");
    }
    Ok(())
}

pub(crate) fn status_json(status: &OutboxStatus) -> serde_json::Value {
    json!({
        "dir": status.dir,
        "owner_pid": status.owner_pid,
        "queued": status.queued,
        "queued_bytes": status.queued_bytes,
        "oldest_age_secs": status.oldest_age.map(|a| a.as_secs_f64()),
        "in_flight": status.in_flight,
        "dead": status.dead,
        "delivered": status.delivered,
        "evicted": status.evicted,
        "corrupt": status.corrupt,
        "last_error": status.last_error,
        "failing_since": status.failing_since.map(rfc3339),
        "failed_attempts": status.failed_attempts,
        "delivery_rate": status.delivery_rate,
    })
}

fn list(global: Global, dir: &Path) -> Result<(), Exit> {
    let records = OutboxRecord::list(dir).map_err(exit::from_cloud)?;
    if global.json {
        let rows: Vec<_> = records
            .iter()
            .map(|r| {
                let (state, reason) = state_text(&r.state);
                json!({
                    "id": r.id.0, "kind": kind_text(r.kind), "app_id": r.app_id,
                    "serial": r.serial, "size": r.size,
                    "age_secs": r.age.as_secs_f64(), "state": state, "reason": reason,
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if records.is_empty() {
        outln!("the outbox is empty");
        return Ok(());
    }
    outln!(
        "{:>20}  {:<9} {:<8} {:>6}  {:<20} {:>8}  age",
        "id",
        "kind",
        "state",
        "app",
        "serial",
        "bytes"
    );
    for r in &records {
        let (state, reason) = state_text(&r.state);
        let mut line = format!(
            "{:>20}  {:<9} {:<8} {:>6}  {:<20} {:>8}  {}",
            r.id,
            kind_text(r.kind),
            state,
            r.app_id,
            r.serial,
            r.size,
            human_age(r.age)
        );
        if let Some(reason) = reason {
            line.push_str(&format!("  ({reason})"));
        }
        outln!("{line}");
    }
    Ok(())
}

fn kind_text(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Log => "log",
        RecordKind::CoreDump => "core-dump",
        RecordKind::Metrics => "metrics",
        RecordKind::Events => "events",
        RecordKind::TextLogs => "text-logs",
        _ => "other",
    }
}

fn state_text(state: &RecordState) -> (&'static str, Option<&str>) {
    match state {
        RecordState::Queued => ("queued", None),
        RecordState::InFlight => ("sending", None),
        RecordState::Dead { reason } => ("dead", Some(reason)),
        _ => ("other", None),
    }
}

/// A moment as the time of day in UTC, for lines a person reads next to
/// others of the same day.
pub(crate) fn clock(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    format!("{:02}:{:02}:{:02} UTC", at.hour(), at.minute(), at.second())
}

/// How many attempts, in words.
pub(crate) fn attempts(n: u64) -> String {
    match n {
        1 => "1 attempt".to_owned(),
        n => format!("{n} attempts"),
    }
}

/// A moment as RFC 3339 (UTC), for JSON.
pub(crate) fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// What changed about the outbox's delivery failure since it was last
/// reported.
pub(crate) enum FailureChange {
    /// A failure started, or its cause changed.
    Failing {
        /// The error and its causes, on one line.
        cause: String,
        /// What to do about it, as `upload` would say for the same error.
        hint: Option<String>,
        since: SystemTime,
        /// Records waiting for delivery.
        queued: usize,
    },
    /// Delivery works again.
    Recovered { since: SystemTime, attempts: u64 },
}

impl FailureChange {
    /// The change as a line (and a hint line) for a person.
    pub(crate) fn text(&self) -> String {
        match self {
            FailureChange::Failing {
                cause,
                hint,
                since,
                queued,
            } => {
                let waiting = match queued {
                    1 => "1 record waits".to_owned(),
                    n => format!("{n} records wait"),
                };
                let mut text = format!(
                    "delivery failing since {}: {cause} ({waiting})",
                    clock(*since)
                );
                if let Some(hint) = hint {
                    text.push_str("\nhint: ");
                    text.push_str(hint);
                }
                text
            }
            FailureChange::Recovered { since, attempts: n } => format!(
                "delivery works again (it had failed since {}, {})",
                clock(*since),
                attempts(*n)
            ),
        }
    }

    /// The change as fields of a JSON event.
    pub(crate) fn json(&self) -> serde_json::Value {
        match self {
            FailureChange::Failing {
                cause,
                hint,
                since,
                queued,
            } => {
                json!({"error": cause, "hint": hint, "failing_since": rfc3339(*since), "queued": queued})
            }
            FailureChange::Recovered { since, attempts } => {
                json!({"failing_since": rfc3339(*since), "failed_attempts": attempts})
            }
        }
    }
}

/// Says each delivery failure of an outbox once, and its end: a failure
/// that repeats with the same cause is not said again (the periodic
/// summary counts its attempts instead).
#[derive(Default)]
pub(crate) struct FailureReport {
    /// The failure last said: its cause, when it started, and how many
    /// attempts it had when last seen.
    shown: Option<(String, SystemTime, u64)>,
}

impl FailureReport {
    /// What changed since the last call, if anything worth a line.
    pub(crate) fn check(&mut self, outbox: &Outbox) -> Option<FailureChange> {
        match (outbox.failure(), &mut self.shown) {
            (Some(failure), Some((cause, _, attempts))) if *cause == failure.text => {
                *attempts = failure.attempts;
                None
            }
            (Some(failure), _) => {
                self.shown = Some((failure.text.clone(), failure.since, failure.attempts));
                Some(FailureChange::Failing {
                    hint: exit::hint(&failure.error),
                    cause: failure.text,
                    since: failure.since,
                    queued: outbox.status().queued,
                })
            }
            (None, shown) => shown
                .take()
                .map(|(_, since, attempts)| FailureChange::Recovered { since, attempts }),
        }
    }
}

fn human_age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn settle(global: Global, dir: &Path, retry: bool) -> Result<(), Exit> {
    let outbox = Outbox::open(OutboxConfig::new(dir)).map_err(|e| match e.kind() {
        ErrorKind::OutboxLocked { .. } => Exit::new(
            Failure::BadInput,
            anyhow!("{e}: stop it (e.g. the agent) first; `ulogger outbox status` works meanwhile"),
        ),
        _ => exit::from_cloud(e),
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(anyhow::Error::from)?;
    let count = runtime
        .block_on(async {
            if retry {
                outbox.retry_dead().await
            } else {
                outbox.purge_dead().await
            }
        })
        .map_err(exit::from_cloud)?;
    let verb = if retry { "retried" } else { "purged" };
    if global.json {
        outln!("{}", json!({ verb: count }));
    } else if retry {
        outln!("{count} dead records queued again; they go out with the next delivery");
    } else {
        outln!("{count} dead records removed");
    }
    Ok(())
}
