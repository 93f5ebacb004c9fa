//! `ulogger outbox`: look at, retry and purge a durable outbox (the one
//! `ulogger agent` and `ulogger upload --outbox` deliver from).
//!
//! `status` and `list` read the directory without taking it over, so they
//! work while an agent owns it; `retry` and `purge` change it, so they
//! need it free.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use serde_json::json;
use ulogger_cloud::{
    ErrorKind, Outbox, OutboxConfig, OutboxRecord, OutboxStatus, RecordKind, RecordState,
};

use crate::connection::{missing, ConfigArg};
use crate::exit::{self, Exit, Failure};
use crate::outbox_report::{attempts, clock, status_json};
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
