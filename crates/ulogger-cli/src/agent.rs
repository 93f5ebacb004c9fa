//! `ulogger agent`: the long-running gateway service. Files dropped in an
//! inbox become durable outbox records, and the outbox is delivered to the
//! cloud through outages, crashes and restarts.
//!
//! The inbox holds one folder per device with `device.toml` (keys named
//! like the flags: `app_id`, `serial`, `device_type`, `git_version`,
//! `git_hash`) or `device-info.bin` (a dump of the BLE config
//! characteristic), log files `*.bin` and core dumps `*.core`. Writers
//! write under another name and rename; hidden files and `*.tmp` are left
//! alone. A file leaves the inbox only once its record is durable in the
//! outbox; one that is not valid moves to the rejected folder with a
//! `.reason` file beside it. The inbox is scanned every `--scan-interval`
//! (polling works the same on every platform and filesystem, network
//! mounts included, and costs one directory listing a device).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use serde_json::json;
use tokio::task::JoinSet;
use ulogger_cloud::wire::DeviceInfo;
use ulogger_cloud::{Client, ErrorKind, OutboxConfig, RecordId};

use crate::connection::{missing, ConnectionArgs};
use crate::exit::{self, Exit, Failure};
use crate::files;
use crate::signal::StopSignal;
use crate::Global;

/// Files enqueued at once (enqueues share fsyncs).
const ENQUEUE_JOBS: usize = 64;

/// Arguments of `ulogger agent`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// The inbox: one folder per device, holding its identity and the
    /// files to send (required).
    #[arg(long, env = "ULOGGER_INBOX", value_name = "DIR")]
    inbox: Option<PathBuf>,
    /// The durable outbox directory, owned by this agent while it runs
    /// (required).
    #[arg(long, env = "ULOGGER_OUTBOX", value_name = "DIR")]
    outbox: Option<PathBuf>,
    /// Where invalid files go, each with a `.reason` file [default: a
    /// `rejected` folder beside the inbox].
    #[arg(long, env = "ULOGGER_REJECTED", value_name = "DIR")]
    rejected: Option<PathBuf>,
    /// Milliseconds between two looks at the inbox [default: 500].
    #[arg(long, env = "ULOGGER_SCAN_INTERVAL", value_name = "MS")]
    scan_interval: Option<u64>,
    /// Seconds between two summary lines [default: 60].
    #[arg(long, env = "ULOGGER_SUMMARY_INTERVAL", value_name = "SECS")]
    summary_interval: Option<u64>,
    /// Write the gateway's clock into version-4 headers whose time is 0
    /// [default: false].
    #[arg(long, env = "ULOGGER_STAMP_TIME", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = crate::connection::boolish)]
    stamp_time: Option<bool>,
}

/// The agent's settings, from flags, environment and config file.
struct Service {
    inbox: PathBuf,
    outbox: PathBuf,
    rejected: Option<PathBuf>,
    scan_interval: u64,
    summary_interval: u64,
    stamp_time: bool,
}

/// `device.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFile {
    app_id: u32,
    serial: String,
    device_type: String,
    git_version: String,
    git_hash: String,
}

/// A file found in the inbox.
struct Found {
    device_dir: String,
    path: PathBuf,
    core_dump: bool,
    device: DeviceInfo,
}

pub fn run(global: Global, args: Args) -> Result<(), Exit> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stop = {
        let _runtime = runtime.enter();
        StopSignal::listen()?
    };
    runtime.block_on(serve(global, args, stop))
}

async fn serve(global: Global, cli: Args, stop: StopSignal) -> Result<(), Exit> {
    // A bad config file is named before anything else is checked.
    let file = cli.connection.file()?;
    let args = Service {
        inbox: cli
            .inbox
            .clone()
            .or_else(|| file.inbox.clone())
            .ok_or_else(|| missing("inbox"))?,
        outbox: cli
            .outbox
            .clone()
            .or_else(|| file.outbox.clone())
            .ok_or_else(|| missing("outbox"))?,
        rejected: cli.rejected.clone().or_else(|| file.rejected.clone()),
        scan_interval: cli.scan_interval.or(file.scan_interval).unwrap_or(500),
        summary_interval: cli.summary_interval.or(file.summary_interval).unwrap_or(60),
        stamp_time: cli.stamp_time.or(file.stamp_time).unwrap_or(false),
    };
    if !args.inbox.is_dir() {
        return Err(Exit::new(
            Failure::BadInput,
            anyhow::anyhow!("the inbox {} is not a directory", args.inbox.display()),
        ));
    }
    let rejected = match &args.rejected {
        Some(dir) => dir.clone(),
        None => std::path::absolute(&args.inbox)
            .context("cannot resolve the inbox path")?
            .with_file_name("rejected"),
    };
    let (config, store) = cli.connection.resolve()?;
    let client = Client::builder(config)
        .session_store(store)
        .stamp_epoch_time(args.stamp_time)
        .outbox(OutboxConfig::new(&args.outbox))
        .build()
        .map_err(|e| match e.kind() {
            ErrorKind::OutboxLocked { .. } => Exit::new(Failure::BadInput, e),
            _ => exit::from_cloud(e),
        })?;
    event(
        global,
        "started",
        json!({"inbox": args.inbox, "outbox": args.outbox, "rejected": rejected}),
        &format!(
            "agent started: inbox {}, outbox {}",
            args.inbox.display(),
            args.outbox.display()
        ),
    );

    let stop = stop.wait();
    tokio::pin!(stop);
    let mut scan = tokio::time::interval(Duration::from_millis(args.scan_interval.max(10)));
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let summary_every = Duration::from_secs(args.summary_interval.max(1));
    let mut summary =
        tokio::time::interval_at(tokio::time::Instant::now() + summary_every, summary_every);
    let mut deliveries = JoinSet::new();
    let mut unidentified = HashSet::new();
    loop {
        tokio::select! {
            stopped = &mut stop => {
                stopped?;
                break;
            }
            _ = scan.tick() => {
                for (id, label) in take_inbox(global, &client, &args.inbox, &rejected, &mut unidentified).await {
                    let client = client.clone();
                    deliveries.spawn(async move { (id, label, client.delivered(id).await) });
                }
            }
            Some(done) = deliveries.join_next() => {
                if let Ok((id, label, result)) = done {
                    match result {
                        Ok(()) => event(global, "delivered", json!({"file": label, "id": id.0}), &format!("delivered {label} (record {id})")),
                        Err(e) => {
                            let error = exit::message(&e);
                            event(global, "failed", json!({"file": label, "id": id.0, "error": error}), &format!("FAILED {label} (record {id}): {error}"));
                        }
                    }
                }
            }
            _ = summary.tick() => print_summary(global, &client),
        }
    }
    event(
        global,
        "stopping",
        json!({}),
        "stopping: deliveries under way finish or stay queued",
    );
    client.shutdown().await;
    print_summary(global, &client);
    Ok(())
}

/// Enqueues every ready file of the inbox; returns the records made, with
/// the file each came from.
async fn take_inbox(
    global: Global,
    client: &Client,
    inbox: &Path,
    rejected: &Path,
    unidentified: &mut HashSet<PathBuf>,
) -> Vec<(RecordId, String)> {
    let found = match scan_inbox(inbox, unidentified) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the inbox");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    let mut jobs = JoinSet::new();
    let mut pending = found.into_iter();
    loop {
        while jobs.len() < ENQUEUE_JOBS {
            let Some(file) = pending.next() else { break };
            let client = client.clone();
            jobs.spawn(async move {
                let result = enqueue(&client, &file).await;
                (file, result)
            });
        }
        let Some(done) = jobs.join_next().await else {
            break;
        };
        let Ok((file, result)) = done else { continue };
        let label = format!(
            "{}/{}",
            file.device_dir,
            file.path.file_name().unwrap_or_default().to_string_lossy()
        );
        match result {
            Ok(id) => {
                // Durable in the outbox: the inbox copy can go.
                if let Err(e) = std::fs::remove_file(&file.path) {
                    tracing::warn!(file = %file.path.display(), error = %e, "queued, but cannot remove it from the inbox; it will be queued again");
                }
                event(
                    global,
                    "queued",
                    json!({"file": label, "id": id.0}),
                    &format!("queued {label} (record {id})"),
                );
                out.push((id, label));
            }
            Err(Refusal::Invalid(reason)) => match reject(&file, rejected, &reason) {
                Ok(to) => event(
                    global,
                    "rejected",
                    json!({"file": label, "reason": reason, "moved_to": to}),
                    &format!("rejected {label}: {reason} (moved to {})", to.display()),
                ),
                Err(e) => {
                    tracing::error!(file = %label, error = %e, "cannot move an invalid file out of the inbox")
                }
            },
            Err(Refusal::Later(reason)) => {
                tracing::warn!(file = %label, %reason, "not queued now; will try again");
            }
        }
    }
    out
}

enum Refusal {
    /// The file will never be valid: reject it.
    Invalid(String),
    /// Try again later (outbox full, disk full, unreadable for now).
    Later(String),
}

async fn enqueue(client: &Client, file: &Found) -> Result<RecordId, Refusal> {
    let device = &file.device;
    let bytes = files::read_message(file.path.clone())
        .await
        .map_err(|e| match e {
            files::ReadError::Io(e) => Refusal::Later(format!("cannot read it: {e}")),
            too_large => Refusal::Invalid(too_large.to_string()),
        })?;
    let result = if file.core_dump {
        client.enqueue_core_dump(&bytes).await
    } else {
        client.enqueue_log(device, &bytes).await
    };
    result.map_err(|e| {
        if e.is_invalid_input() {
            Refusal::Invalid(exit::message(&e))
        } else {
            Refusal::Later(exit::message(&e))
        }
    })
}

/// Ready files of every device folder that says which device it is. The
/// files of a folder without (or with an unreadable) identity wait, with
/// one warning per folder.
fn scan_inbox(inbox: &Path, unidentified: &mut HashSet<PathBuf>) -> std::io::Result<Vec<Found>> {
    let mut devices: Vec<PathBuf> = std::fs::read_dir(inbox)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !hidden(p))
        .collect();
    devices.sort();
    let mut found = Vec::new();
    for dir in devices {
        let mut files: Vec<(PathBuf, bool)> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file() && !hidden(p))
            .filter_map(|p| match p.extension().and_then(|e| e.to_str()) {
                Some("bin") if p.file_name() != Some("device-info.bin".as_ref()) => {
                    Some((p, false))
                }
                Some("core") => Some((p, true)),
                _ => None,
            })
            .collect();
        if files.is_empty() {
            continue;
        }
        files.sort();
        let device = match device_of(&dir) {
            Ok(Some(device)) => {
                unidentified.remove(&dir);
                device
            }
            Ok(None) => {
                if unidentified.insert(dir.clone()) {
                    tracing::warn!(device = %dir.display(), "no device.toml or device-info.bin; its files wait for one");
                }
                continue;
            }
            Err(e) => {
                if unidentified.insert(dir.clone()) {
                    tracing::warn!(device = %dir.display(), error = %format!("{e:#}"), "cannot read the device's identity; its files wait");
                }
                continue;
            }
        };
        let device_dir = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for (path, core_dump) in files {
            found.push(Found {
                device_dir: device_dir.clone(),
                path,
                core_dump,
                device: device.clone(),
            });
        }
    }
    Ok(found)
}

fn hidden(path: &Path) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    name.starts_with('.') || name.ends_with(".tmp")
}

/// The device of a folder: `Ok(None)` when it has no identity file, an
/// error when one is there but unreadable or invalid.
fn device_of(dir: &Path) -> anyhow::Result<Option<DeviceInfo>> {
    let toml_path = dir.join("device.toml");
    if toml_path.is_file() {
        let text = std::fs::read_to_string(&toml_path)
            .with_context(|| format!("cannot read {}", toml_path.display()))?;
        let file: DeviceFile =
            toml::from_str(&text).with_context(|| format!("invalid {}", toml_path.display()))?;
        return Ok(Some(DeviceInfo::new(
            file.app_id,
            file.serial,
            file.device_type,
            file.git_version,
            file.git_hash,
        )));
    }
    let bin_path = dir.join("device-info.bin");
    if bin_path.is_file() {
        let bytes = files::read_limited(&bin_path, files::DEVICE_INFO_LIMIT, "a device-info file")
            .with_context(|| bin_path.display().to_string())?;
        return Ok(Some(
            DeviceInfo::decode(&bytes)
                .with_context(|| format!("invalid {}", bin_path.display()))?,
        ));
    }
    Ok(None)
}

/// Moves an invalid file to `<rejected>/<device>/` with a `.reason` file.
fn reject(file: &Found, rejected: &Path, reason: &str) -> std::io::Result<PathBuf> {
    let dir = rejected.join(&file.device_dir);
    std::fs::create_dir_all(&dir)?;
    let name = file.path.file_name().unwrap_or_default();
    let to = dir.join(name);
    let mut reason_name = name.to_os_string();
    reason_name.push(".reason");
    std::fs::write(dir.join(reason_name), format!("{reason}\n"))?;
    if std::fs::rename(&file.path, &to).is_err() {
        // Another filesystem: copy, then remove.
        std::fs::copy(&file.path, &to)?;
        std::fs::remove_file(&file.path)?;
    }
    Ok(to)
}

fn print_summary(global: Global, client: &Client) {
    let Ok(status) = client.outbox_status() else {
        return;
    };
    event(
        global,
        "summary",
        crate::outbox::status_json(&status),
        &format!(
            "summary: {} queued, {} in flight, {} delivered, {} dead, {} evicted{}",
            status.queued,
            status.in_flight,
            status.delivered,
            status.dead,
            status.evicted,
            status
                .last_error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        ),
    );
}

/// One line of the agent's log: JSON with `--json` (for journald and log
/// shippers), text otherwise.
fn event(global: Global, kind: &str, fields: serde_json::Value, text: &str) {
    if global.json {
        let mut line = json!({ "event": kind });
        if let (Some(line), serde_json::Value::Object(fields)) = (line.as_object_mut(), fields) {
            line.extend(fields);
        }
        println!("{line}");
    } else {
        println!("{text}");
    }
}
