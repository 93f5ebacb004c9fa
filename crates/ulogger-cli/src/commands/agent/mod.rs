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
//! `.reason` file beside it. Only real folders and regular files are
//! taken: a symbolic link could make the agent send (and then delete)
//! files from anywhere, and a FIFO would block a read until a writer came.
//! Anything else is left where it is, with one warning. A file queued
//! that cannot be removed (a read-only inbox) is remembered by identity
//! and content, so it is not queued again at the next scan; the folder is
//! reported once. On Linux the inbox is watched with inotify (see
//! [`watch`]): a scan follows each file completed in it, and a full
//! rescan every `--rescan-interval` catches what a notification missed.
//! With `--poll`, elsewhere, or where inotify runs out, it is scanned
//! every `--scan-interval` (polling works the same on every platform and
//! filesystem, network mounts included, and costs one directory listing
//! a device).
//!
//! The agent reports itself: each line starts with its time, a line says
//! when the connection comes up and goes down, systemd hears of it
//! through `NOTIFY_SOCKET` (see [`systemd`]), and
//! `--metrics-listen` serves its numbers to Prometheus (see
//! [`metrics`]).

#[cfg(all(feature = "ble", target_os = "linux"))]
mod ble;
mod inbox_fs;
mod metrics;
mod systemd;
mod watch;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{FileType, Metadata};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
use crate::settings;
use crate::signal::StopSignal;
use crate::stamp::connection_line;
use crate::Global;
use inbox_fs::DeviceDir;
use metrics::Metrics;
use systemd::Systemd;
use watch::{InboxWatch, Wake};

/// Files enqueued at once (enqueues share fsyncs).
const ENQUEUE_JOBS: usize = 64;

/// What `ulogger agent --help` (and its manual page) says after the
/// flags: how it runs as a service.
const SERVICE_HELP: &str = "\
Under systemd (Type=notify; see dist/ulogger-agent.service) the agent says READY=1 once its \
outbox and inbox are open, keeps STATUS= (connection, counts, the delivery failure) for \
`systemctl status`, sends WATCHDOG=1 from its loop at half of WatchdogSec=, and STOPPING=1 at \
SIGTERM; without NOTIFY_SOCKET it sends nothing. Each line starts with its time (RFC 3339, \
UTC), and lines say when the connection comes up and goes down. --metrics-listen serves \
the Prometheus text format at /metrics: the outbox, the delivery failure, the connection, and \
per-device counters for up to 256 serials (the rest under serial=\"(others)\").";

/// Arguments of `ulogger agent`.
#[derive(Debug, clap::Args)]
#[command(after_help = SERVICE_HELP)]
pub struct Args {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(flatten)]
    service: crate::agent_args::ServiceArgs,
    #[cfg(all(feature = "ble", target_os = "linux"))]
    #[command(flatten)]
    ble: crate::agent_args::BleArgs,
}

/// The BLE side of the agent, or nothing where the `ble` feature is off
/// (so the service loop is the same everywhere).
#[cfg(all(feature = "ble", target_os = "linux"))]
use ble::AgentBle;

// Never built where BLE is absent: the loop's BLE branch never fires.
#[cfg(not(all(feature = "ble", target_os = "linux")))]
#[allow(dead_code)]
struct AgentBle;

#[cfg(not(all(feature = "ble", target_os = "linux")))]
impl AgentBle {
    async fn next(&mut self) -> Result<Vec<Taken>, Exit> {
        std::future::pending().await
    }

    fn summary(&self) -> (serde_json::Value, String) {
        (serde_json::Value::Null, String::new())
    }

    async fn stop(&mut self) {}
}

/// Waits for the BLE side's next outcome; never, without one.
async fn next_ble(ble: &mut Option<AgentBle>) -> Result<Vec<Taken>, Exit> {
    match ble {
        Some(ble) => ble.next().await,
        None => std::future::pending().await,
    }
}

/// Who hears of a scan's progress besides the agent's output.
#[derive(Clone, Copy)]
struct Observers<'a> {
    metrics: &'a Metrics,
    systemd: &'a Systemd,
}

/// A record the agent queued and watches until it is delivered.
pub(crate) struct Taken {
    pub id: RecordId,
    /// What it came from, for messages (`device/file.bin`).
    pub label: String,
    /// The device it is for (per-device metrics).
    pub serial: String,
}

/// The agent's settings, from flags, environment and config file.
struct Service {
    /// None: BLE only.
    inbox: Option<PathBuf>,
    outbox: PathBuf,
    rejected: Option<PathBuf>,
    scan_interval: u64,
    rescan_interval: u64,
    poll: bool,
    summary_interval: u64,
    ack_sync_interval: u64,
    stamp_time: bool,
    metrics_listen: Option<SocketAddr>,
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
    /// The device folder, open: the file is read and removed through it.
    dir: Arc<DeviceDir>,
    /// The file's name in it.
    name: OsString,
    /// Where it is, for messages and for knowing it again.
    path: PathBuf,
    /// Its size when listed: what is opened must be the same file.
    size: u64,
    /// Which file it was when listed, to know it again if it cannot be
    /// removed once queued.
    identity: Identity,
    core_dump: bool,
    device: DeviceInfo,
}

/// What the agent has warned about, so that each is said once.
#[derive(Default)]
struct Warned {
    /// Device folders whose files wait for an identity.
    unidentified: HashSet<PathBuf>,
    /// Entries left in the inbox because they are not what it takes.
    refused: HashSet<PathBuf>,
}

impl Warned {
    fn refuse(&mut self, path: &Path, why: &str) {
        if self.refused.insert(path.to_path_buf()) {
            tracing::warn!(path = ?path, why, "not taken from the inbox; left where it is");
        }
    }

    /// Forgets what is gone, so a new entry of the same name is warned
    /// about again and the set stays as small as the inbox.
    fn forget_gone(&mut self) {
        self.refused.retain(|p| p.symlink_metadata().is_ok());
    }
}

/// Which file an inbox entry is: the same device, inode, size and
/// modification time mean the same, unchanged file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Identity {
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
}

impl Identity {
    fn of(meta: &Metadata) -> Identity {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Identity {
                device: meta.dev(),
                inode: meta.ino(),
                size: meta.size(),
                modified: (meta.mtime(), meta.mtime_nsec()),
            }
        }
        #[cfg(not(unix))]
        {
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or((0, 0), |d| {
                    (d.as_secs() as i64, i64::from(d.subsec_nanos()))
                });
            Identity {
                device: 0,
                inode: 0,
                size: meta.len(),
                modified,
            }
        }
    }
}

/// What a file holds, for knowing a copy of it: its length and CRC-32.
type ContentKey = (PathBuf, u64, u32);

fn content_key(path: &Path, bytes: &[u8]) -> ContentKey {
    (
        path.to_path_buf(),
        bytes.len() as u64,
        crc32fast::hash(bytes),
    )
}

/// Files that were queued but could not be removed from the inbox (it is
/// read-only to the agent). Without this, each would be queued again at
/// every scan: one copy per scan interval, for ever. A file is known
/// again by its identity (skipped when listed, unread) or, if it was
/// touched or written over, by its path and content (skipped once read).
/// Entries go when their file goes, so this stays as small as the inbox.
#[derive(Default)]
struct Unremovable {
    by_identity: HashMap<Identity, PathBuf>,
    /// Shared with the enqueue jobs of a scan, which check what they read.
    by_content: Arc<Mutex<HashSet<ContentKey>>>,
    /// Folders reported as not writable, so that each is reported once.
    reported: HashSet<PathBuf>,
}

impl Unremovable {
    fn remember(&mut self, file: &Found, content: ContentKey) {
        self.by_identity.insert(file.identity, file.path.clone());
        lock(&self.by_content).insert(content);
    }

    /// Says once per folder, loudly, that queued files stay in it.
    fn report(&mut self, global: Global, file: &Path, error: &io::Error) {
        let dir = file.parent().unwrap_or(file).to_path_buf();
        if !self.reported.insert(dir.clone()) {
            return;
        }
        let hint = "give the agent's user write access to this folder (files are queued once and \
                    left there; they are not queued again while the agent runs, but a restart \
                    queues them once more), or empty it yourself";
        tracing::error!(folder = ?dir, error = %error, hint, "the inbox folder is not writable: queued files cannot be removed from it");
        event(
            global,
            "inbox-not-writable",
            json!({"folder": dir, "error": error.to_string(), "hint": hint}),
            &format!(
                "WARNING: cannot remove queued files from the inbox folder {} ({error}): {hint}",
                dir.display().to_string().escape_debug()
            ),
        );
    }

    /// A removal in `dir` worked: should it fail again, say so again.
    fn writable(&mut self, file: &Path) {
        if !self.reported.is_empty() {
            if let Some(dir) = file.parent() {
                self.reported.remove(dir);
            }
        }
    }

    /// Forgets files no longer in the inbox.
    fn forget_gone(&mut self) {
        if self.by_identity.is_empty() && lock(&self.by_content).is_empty() {
            return;
        }
        // An entry replaced by another file is forgotten too.
        self.by_identity.retain(|identity, path| {
            path.symlink_metadata()
                .is_ok_and(|meta| Identity::of(&meta) == *identity)
        });
        lock(&self.by_content).retain(|(path, _, _)| path.symlink_metadata().is_ok());
    }
}

/// A set of keys is whole between statements, so a poisoned lock is
/// still usable.
fn lock(set: &Mutex<HashSet<ContentKey>>) -> MutexGuard<'_, HashSet<ContentKey>> {
    set.lock().unwrap_or_else(PoisonError::into_inner)
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
    #[cfg(all(feature = "ble", target_os = "linux"))]
    let ble_settings = cli.ble.resolve(file)?;
    #[cfg(all(feature = "ble", target_os = "linux"))]
    let with_ble = ble_settings.enabled;
    #[cfg(not(all(feature = "ble", target_os = "linux")))]
    let with_ble = false;
    let flags = &cli.service;
    let inbox = flags.inbox.clone().or_else(|| file.inbox.clone());
    if inbox.is_none() && !with_ble {
        let or_ble = cfg!(all(feature = "ble", target_os = "linux"))
            .then(|| "or pass --ble to pull devices over Bluetooth LE without an inbox".to_owned());
        return Err(missing("inbox").with_hint(or_ble));
    }
    let args = Service {
        inbox,
        outbox: flags
            .outbox
            .clone()
            .or_else(|| file.outbox.clone())
            .ok_or_else(|| missing("outbox"))?,
        rejected: flags.rejected.clone().or_else(|| file.rejected.clone()),
        scan_interval: flags
            .scan_interval
            .or(file.scan_interval)
            .unwrap_or(settings::DEFAULT_SCAN_INTERVAL_MS),
        rescan_interval: flags
            .rescan_interval
            .or(file.rescan_interval)
            .unwrap_or(settings::DEFAULT_RESCAN_INTERVAL_SECS),
        poll: flags.poll.or(file.poll).unwrap_or(false),
        summary_interval: flags
            .summary_interval
            .or(file.summary_interval)
            .unwrap_or(settings::DEFAULT_SUMMARY_INTERVAL_SECS),
        ack_sync_interval: flags
            .ack_sync_interval
            .or(file.ack_sync_interval)
            .unwrap_or(settings::DEFAULT_ACK_SYNC_INTERVAL_MS),
        stamp_time: flags.stamp_time.or(file.stamp_time).unwrap_or(false),
        metrics_listen: flags.metrics_listen.or(file.metrics_listen),
    };
    // Bounds, so that no value means "never" (an inbox never scanned
    // again, a summary never printed, acks never synced).
    for (flag, value, most, unit, why) in [
        (
            "--scan-interval",
            args.scan_interval,
            3_600_000,
            "ms",
            "the inbox would wait more than an hour between looks",
        ),
        (
            "--rescan-interval",
            args.rescan_interval,
            86_400,
            "s",
            "a file whose notification was missed would wait more than a day",
        ),
        (
            "--summary-interval",
            args.summary_interval,
            86_400,
            "s",
            "no summary for more than a day",
        ),
        (
            "--ack-sync-interval",
            args.ack_sync_interval,
            60_000,
            "ms",
            "a power cut would send a minute of deliveries again",
        ),
    ] {
        if value > most {
            return Err(Exit::new(
                Failure::BadInput,
                anyhow::anyhow!("{flag} {value} is more than {most} {unit}: {why}"),
            ));
        }
    }
    if let Some(inbox) = args.inbox.as_ref().filter(|i| !i.is_dir()) {
        return Err(Exit::new(
            Failure::BadInput,
            anyhow::anyhow!("the inbox {} is not a directory", inbox.display()),
        ));
    }
    // Beside the inbox, or beside the outbox when there is none.
    let rejected = match &args.rejected {
        Some(dir) => dir.clone(),
        None => std::path::absolute(args.inbox.as_ref().unwrap_or(&args.outbox))
            .context("cannot resolve the inbox path")?
            .with_file_name("rejected"),
    };
    // Bound before anything starts, so a bad address stops the agent at
    // once; served once the agent has started, until it stops.
    let endpoint = match args.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let (config, store) = cli.connection.resolve()?;
    let client = Client::builder(config)
        .session_store(store)
        .stamp_epoch_time(args.stamp_time)
        .outbox(
            OutboxConfig::new(&args.outbox)
                .ack_sync_interval(Duration::from_millis(args.ack_sync_interval)),
        )
        .build()
        .map_err(|e| match e.kind() {
            ErrorKind::OutboxLocked { .. } => Exit::new(Failure::BadInput, e),
            _ => exit::from_cloud(e),
        })?;
    // Watched from before the first connection, so it is said.
    let mut connection = client.connection_changes();
    let metrics = Metrics::new(&client);
    event(
        global,
        "started",
        json!({"inbox": args.inbox, "outbox": args.outbox, "rejected": rejected, "ble": with_ble}),
        &format!(
            "agent started: inbox {}, outbox {}{}",
            args.inbox
                .as_ref()
                .map_or_else(|| "none".to_owned(), |i| i.display().to_string()),
            args.outbox.display(),
            if with_ble { ", pulling over BLE" } else { "" }
        ),
    );
    let endpoint = match endpoint {
        Some(listener) => {
            let bound = listener
                .local_addr()
                .context("cannot read the metrics endpoint's address")?;
            event(
                global,
                "metrics",
                json!({"listen": bound.to_string(), "url": format!("http://{bound}/metrics")}),
                &format!("metrics at http://{bound}/metrics"),
            );
            Some(tokio::spawn(metrics::serve(listener, metrics.clone())).abort_handle())
        }
        None => None,
    };
    #[cfg(all(feature = "ble", target_os = "linux"))]
    let mut ble = if with_ble {
        Some(AgentBle::start(global, &ble_settings, &client, &rejected)?)
    } else {
        None
    };
    #[cfg(not(all(feature = "ble", target_os = "linux")))]
    let mut ble: Option<AgentBle> = None;
    let mut fatal = None;
    let mut stopped_by = None;
    // Ready once the outbox is open (the client is built), the inbox
    // checked and BLE started; not once connected: the outbox is there
    // to run through outages, and an agent started during one is working.
    let systemd = Systemd::from_env();
    systemd.ready(&status_line(&client, ble.as_ref()));
    let mut watchdog = systemd.watchdog_period().map(|period| {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });

    let stop = stop.wait();
    tokio::pin!(stop);
    // Watched, the inbox is scanned when a file is complete and, as a
    // safety net, every --rescan-interval; polled, every --scan-interval.
    let poll_every = Duration::from_millis(args.scan_interval.max(10));
    let mut watch = match &args.inbox {
        Some(_) if args.poll => InboxWatch::polling(),
        Some(inbox) => {
            let (watch, failed) = InboxWatch::start(inbox);
            if let Some(why) = failed {
                say_polling(global, &why, poll_every);
            }
            watch
        }
        None => InboxWatch::polling(),
    };
    let mut scan = scan_ticks(if watch.watching() {
        Duration::from_secs(args.rescan_interval.max(1))
    } else {
        poll_every
    });
    let summary_every = Duration::from_secs(args.summary_interval.max(1));
    let mut summary =
        tokio::time::interval_at(tokio::time::Instant::now() + summary_every, summary_every);
    let mut deliveries = JoinSet::new();
    let mut warned = Warned::default();
    let mut unremovable = Unremovable::default();
    let mut failures = crate::outbox_report::FailureReport::default();
    // Failures are looked for every --scan-interval only while one could
    // start or end (records waiting, no connection, a failure said): an
    // idle, connected agent has no timer of its own but the safety net.
    let mut checks: Option<tokio::time::Interval> = None;
    loop {
        match (may_fail(&client, &failures), checks.is_some()) {
            (true, false) => checks = Some(scan_ticks(poll_every)),
            (false, true) => checks = None,
            _ => {}
        }
        tokio::select! {
            stopped = &mut stop => {
                stopped_by = Some(stopped?);
                break;
            }
            // From this loop, so that a loop stuck anywhere (a scan that
            // never ends) stops the pings and systemd restarts the agent.
            _ = tick(&mut watchdog) => systemd.watchdog(),
            woke = next_scan(&mut scan, &mut watch) => {
                let stopped = match woke {
                    Ok(()) => watch.sync(),
                    Err(why) => Some(why),
                };
                if let Some(why) = stopped {
                    say_polling(global, &why, poll_every);
                    scan = scan_ticks(poll_every);
                }
                if let Some(inbox) = &args.inbox {
                    let observers = Observers { metrics: &metrics, systemd: &systemd };
                    for taken in take_inbox(global, &client, observers, inbox, &rejected, &mut warned, &mut unremovable).await {
                        let client = client.clone();
                        deliveries.spawn(async move { let result = client.delivered(taken.id).await; (taken, result) });
                    }
                }
                if report_failure(global, &client, &mut failures) {
                    systemd.status(&status_line(&client, ble.as_ref()));
                }
            }
            // So a failure is said within one --scan-interval of its first
            // attempt, at any verbosity.
            _ = tick(&mut checks) => {
                if report_failure(global, &client, &mut failures) {
                    systemd.status(&status_line(&client, ble.as_ref()));
                }
            }
            Some(done) = deliveries.join_next() => {
                if let Ok((Taken { id, label, serial }, result)) = done {
                    // A delivery may have ended a failure: said first.
                    if report_failure(global, &client, &mut failures) {
                        systemd.status(&status_line(&client, ble.as_ref()));
                    }
                    match result {
                        Ok(()) => {
                            metrics.delivered(&serial);
                            event(global, "delivered", json!({"file": label, "id": id.0}), &format!("delivered {} (record {id})", label.escape_debug()));
                        }
                        Err(e) => {
                            metrics.failed(&serial);
                            let error = exit::message(&e);
                            event(global, "failed", json!({"file": label, "id": id.0, "error": error}), &format!("FAILED {} (record {id}): {error}", label.escape_debug()));
                        }
                    }
                }
            }
            Some(change) = connection.next() => {
                say_connection(global, &change);
                report_failure(global, &client, &mut failures);
                systemd.status(&status_line(&client, ble.as_ref()));
            }
            pulled = next_ble(&mut ble) => match pulled {
                Ok(records) => {
                    for taken in records {
                        metrics.queued(&taken.serial);
                        let client = client.clone();
                        deliveries.spawn(async move { let result = client.delivered(taken.id).await; (taken, result) });
                    }
                }
                Err(e) => {
                    fatal = Some(e);
                    break;
                }
            },
            _ = summary.tick() => {
                print_summary(global, &client, ble.as_ref());
                systemd.status(&status_line(&client, ble.as_ref()));
            }
        }
    }
    let stopping = "stopping: deliveries under way finish or stay queued";
    systemd.stopping(stopping);
    event(global, "stopping", json!({}), stopping);
    if let Some(endpoint) = endpoint {
        endpoint.abort();
    }
    // Pulls under way end (or are cut short) before the client stops.
    if let Some(ble) = ble.as_mut() {
        ble.stop().await;
    }
    client.shutdown().await;
    print_summary(global, &client, ble.as_ref());
    match (fatal, stopped_by) {
        (Some(e), _) => Err(e),
        (None, Some(stop)) => stop.outcome(),
        (None, None) => Ok(()),
    }
}

/// Enqueues every ready file of the inbox; returns the records made, with
/// the file each came from.
async fn take_inbox(
    global: Global,
    client: &Client,
    observers: Observers<'_>,
    inbox: &Path,
    rejected: &Path,
    warned: &mut Warned,
    unremovable: &mut Unremovable,
) -> Vec<Taken> {
    warned.forget_gone();
    unremovable.forget_gone();
    let found = match scan_inbox(inbox, warned, &unremovable.by_identity) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the inbox");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    let mut jobs = JoinSet::new();
    let mut pending = found.into_iter();
    // Folders with removals not yet synced: a power cut would undo them,
    // and every file removed since the last sync would be queued again.
    let mut removed: Vec<Arc<DeviceDir>> = Vec::new();
    loop {
        if removed.len() >= ENQUEUE_JOBS {
            sync_removals(&mut removed);
        }
        while jobs.len() < ENQUEUE_JOBS {
            let Some(file) = pending.next() else { break };
            let client = client.clone();
            let known = unremovable.by_content.clone();
            jobs.spawn(async move {
                let result = enqueue(&client, &file, &known).await;
                (file, result)
            });
        }
        let Some(done) = jobs.join_next().await else {
            break;
        };
        observers.systemd.progress();
        let Ok((file, result)) = done else { continue };
        let label = format!(
            "{}/{}",
            file.device_dir,
            file.path.file_name().unwrap_or_default().to_string_lossy()
        );
        match result {
            Ok((id, content)) => {
                // Durable in the outbox: the inbox copy can go.
                match file.dir.remove(&file.name) {
                    Ok(()) => {
                        unremovable.writable(&file.path);
                        removed.push(file.dir.clone());
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        unremovable.remember(&file, content);
                        unremovable.report(global, &file.path, &e);
                    }
                }
                event(
                    global,
                    "queued",
                    json!({"file": label, "id": id.0}),
                    &format!("queued {} (record {id})", label.escape_debug()),
                );
                observers.metrics.queued(&file.device.serial);
                out.push(Taken {
                    id,
                    label,
                    serial: file.device.serial.clone(),
                });
            }
            Err(Refusal::Invalid(reason)) => match reject(&file, rejected, &reason) {
                Ok(to) => {
                    observers.metrics.rejected(&file.device.serial);
                    event(
                        global,
                        "rejected",
                        json!({"file": label, "reason": reason, "moved_to": to}),
                        &format!(
                            "rejected {}: {reason} (moved to {})",
                            label.escape_debug(),
                            to.display().to_string().escape_debug()
                        ),
                    );
                }
                Err(e) => {
                    tracing::error!(file = ?label, error = %e, "cannot move an invalid file out of the inbox")
                }
            },
            Err(Refusal::Later(reason)) => {
                tracing::warn!(file = ?label, %reason, "not queued now; will try again");
            }
            Err(Refusal::NotRegular(why)) => warned.refuse(&file.path, &why),
            // Queued already, and still in a folder we cannot write: known
            // by this identity too from now on, so it is not read again.
            Err(Refusal::Queued) => {
                unremovable
                    .by_identity
                    .insert(file.identity, file.path.clone());
            }
        }
    }
    sync_removals(&mut removed);
    out
}

/// Syncs each folder in `removed` once, so that a power cut re-queues at
/// most the files removed since (a failure costs only such copies: the
/// files are durable in the outbox).
fn sync_removals(removed: &mut Vec<Arc<DeviceDir>>) {
    let mut synced: Vec<&Arc<DeviceDir>> = Vec::new();
    for dir in removed.iter() {
        if synced.iter().any(|done| Arc::ptr_eq(done, dir)) {
            continue;
        }
        if let Err(e) = dir.sync() {
            tracing::warn!(folder = ?dir.display(std::ffi::OsStr::new("")), error = %e, "cannot sync the removals from an inbox folder: a power cut would queue those files again");
        }
        synced.push(dir);
    }
    removed.clear();
}

enum Refusal {
    /// The file will never be valid: reject it.
    Invalid(String),
    /// Try again later (outbox full, disk full, unreadable for now).
    Later(String),
    /// Not a regular file (any more): left where it is, unread.
    NotRegular(String),
    /// The same content at the same path was queued and could not be
    /// removed: queued already.
    Queued,
}

/// Reads and enqueues a file; returns its record and what it holds.
async fn enqueue(
    client: &Client,
    file: &Found,
    queued: &Mutex<HashSet<ContentKey>>,
) -> Result<(RecordId, ContentKey), Refusal> {
    let device = &file.device;
    let (dir, name, size) = (file.dir.clone(), file.name.clone(), file.size);
    let bytes = tokio::task::spawn_blocking(move || read_inbox_file(&dir, &name, size))
        .await
        .unwrap_or_else(|e| Err(Refusal::Later(format!("cannot read it: {e}"))))?;
    let content = content_key(&file.path, &bytes);
    if lock(queued).contains(&content) {
        return Err(Refusal::Queued);
    }
    if file.core_dump {
        // The cloud would store any bytes as a core dump, unreadable: the
        // header (PROTOCOL §10) is checked here, as `core-dump` does.
        if let Err(e) = ulogger_cloud::wire::CoreDumpHeader::decode(&bytes) {
            return Err(Refusal::Invalid(format!("not a valid core dump: {e}")));
        }
    }
    let result = if file.core_dump {
        client.enqueue_core_dump(&bytes).await
    } else {
        client.enqueue_log(device, &bytes).await
    };
    result.map(|id| (id, content)).map_err(|e| {
        if e.is_invalid_input() {
            Refusal::Invalid(exit::message(&e))
        } else {
            Refusal::Later(exit::message(&e))
        }
    })
}

/// Reads an inbox file listed with `listed` bytes: opened only as the
/// regular file that was listed (see [`DeviceDir::open_regular`]), at
/// most one message long.
fn read_inbox_file(dir: &DeviceDir, name: &OsString, listed: u64) -> Result<Vec<u8>, Refusal> {
    let (file, meta) = dir.open_regular(name).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidInput => Refusal::NotRegular(e.to_string()),
        _ => Refusal::Later(format!("cannot read it: {e}")),
    })?;
    let changed = || Refusal::Later("it changed since it was listed".to_owned());
    if meta.len() != listed {
        return Err(changed());
    }
    let capacity = usize::try_from(listed).unwrap_or(files::MAX_MESSAGE_SIZE);
    let bytes = files::read_to_limit(file, capacity, files::MAX_MESSAGE_SIZE, files::ONE_MESSAGE)
        .map_err(|e| match e {
        files::ReadError::Io(e) => Refusal::Later(format!("cannot read it: {e}")),
        too_large => Refusal::Invalid(too_large.to_string()),
    })?;
    if bytes.len() as u64 != listed {
        return Err(changed());
    }
    Ok(bytes)
}

/// What a directory entry that is not a regular file is, for a warning.
pub(crate) fn describe(kind: FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_block_device() || kind.is_char_device() {
            return "a device";
        }
    }
    if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_dir() {
        "a folder"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Ready files of every device folder that says which device it is. The
/// files of a folder without (or with an unreadable) identity wait, with
/// one warning per folder. Only real folders and regular files are taken
/// (the type of each entry as listed, links not followed); the rest is
/// warned about once and left alone.
fn scan_inbox(
    inbox: &Path,
    warned: &mut Warned,
    queued: &HashMap<Identity, PathBuf>,
) -> std::io::Result<Vec<Found>> {
    let handle = inbox_fs::open_inbox(inbox)?;
    let mut devices = Vec::new();
    for entry in std::fs::read_dir(inbox)?.filter_map(|e| e.ok()) {
        let path = entry.path();
        if hidden(&path) {
            continue;
        }
        match entry.file_type() {
            // Opened relative to the inbox, never through a link: a folder
            // swapped for one after this listing leads nowhere.
            Ok(kind) if kind.is_dir() => {
                match DeviceDir::open(&handle, inbox, &entry.file_name()) {
                    Ok(dir) => devices.push((path, Arc::new(dir))),
                    Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                        warned.refuse(&path, &e.to_string());
                    }
                    Err(e) => tracing::debug!(path = ?path, error = %e, "an inbox entry went away"),
                }
            }
            // A linked folder would send (then delete) files from anywhere.
            Ok(kind) => warned.refuse(&path, &format!("{}, not a device folder", describe(kind))),
            Err(e) => tracing::debug!(path = ?path, error = %e, "an inbox entry went away"),
        }
    }
    devices.sort_by(|a, b| a.0.cmp(&b.0));
    let mut found = Vec::new();
    for (dir, handle) in devices {
        let mut files: Vec<(PathBuf, u64, Identity, bool)> = Vec::new();
        for entry in std::fs::read_dir(&dir)?.filter_map(|e| e.ok()) {
            let path = entry.path();
            if hidden(&path) {
                continue;
            }
            let core_dump = match path.extension().and_then(|e| e.to_str()) {
                Some("bin") if path.file_name() != Some("device-info.bin".as_ref()) => false,
                Some("core") => true,
                _ => continue,
            };
            // The entry itself, not what a link points to.
            match entry.metadata() {
                Ok(meta) if meta.is_file() => {
                    let identity = Identity::of(&meta);
                    // Queued already, in a folder we cannot remove it from.
                    if !queued.contains_key(&identity) {
                        files.push((path, meta.len(), identity, core_dump));
                    }
                }
                Ok(meta) => warned.refuse(&path, describe(meta.file_type())),
                Err(e) => tracing::debug!(path = ?path, error = %e, "an inbox entry went away"),
            }
        }
        if files.is_empty() {
            continue;
        }
        files.sort();
        let device = match device_of(&handle) {
            Ok(Some(device)) => {
                warned.unidentified.remove(&dir);
                device
            }
            Ok(None) => {
                if warned.unidentified.insert(dir.clone()) {
                    tracing::warn!(device = ?dir, "no device.toml or device-info.bin; its files wait for one");
                }
                continue;
            }
            Err(e) => {
                if warned.unidentified.insert(dir.clone()) {
                    tracing::warn!(device = ?dir, error = ?format!("{e:#}"), "cannot read the device's identity; its files wait");
                }
                continue;
            }
        };
        let device_dir = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for (path, size, identity, core_dump) in files {
            found.push(Found {
                device_dir: device_dir.clone(),
                dir: handle.clone(),
                name: inbox_fs::name_of(&path),
                path,
                size,
                identity,
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
fn device_of(dir: &DeviceDir) -> anyhow::Result<Option<DeviceInfo>> {
    let toml_path = dir.display("device.toml".as_ref());
    if let Some(bytes) = read_identity(dir, "device.toml")? {
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("invalid {}: not UTF-8", toml_path.display()))?;
        // toml's own message quotes the offending line and serde's the
        // offending value: neither may reach a log, so only the place.
        let file: DeviceFile = toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let before = &text.as_bytes()[..span.start.min(text.len())];
                    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
                    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
                    format!(" (at line {line}, column {column})")
                })
                .unwrap_or_default();
            anyhow::anyhow!(
                "invalid {}{at}: it must be TOML with exactly the keys app_id (a number), serial, device_type, git_version and git_hash (strings)",
                toml_path.display()
            )
        })?;
        return Ok(Some(DeviceInfo::new(
            file.app_id,
            file.serial,
            file.device_type,
            file.git_version,
            file.git_hash,
        )));
    }
    let bin_path = dir.display("device-info.bin".as_ref());
    if let Some(bytes) = read_identity(dir, "device-info.bin")? {
        return Ok(Some(
            DeviceInfo::decode(&bytes)
                .with_context(|| format!("invalid {}", bin_path.display()))?,
        ));
    }
    Ok(None)
}

/// An identity file's bytes, `None` when there is none; opened as inbox
/// files are (regular files only, never blocking) and at most
/// [`files::DEVICE_INFO_LIMIT`] long.
fn read_identity(dir: &DeviceDir, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let path = dir.display(name.as_ref());
    let (file, meta) = match dir.open_regular(name.as_ref()) {
        Ok(opened) => opened,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    };
    let capacity = usize::try_from(meta.len()).unwrap_or(files::DEVICE_INFO_LIMIT);
    files::read_to_limit(
        file,
        capacity,
        files::DEVICE_INFO_LIMIT,
        "a device identity file",
    )
    .map(Some)
    .with_context(|| path.display().to_string())
}

/// Moves an invalid file to `<rejected>/<device>/` with a `.reason` file,
/// durably: the reason and the moved file are on disk, in their folder,
/// before the file leaves the inbox.
fn reject(file: &Found, rejected: &Path, reason: &str) -> std::io::Result<PathBuf> {
    let dir = rejected.join(&file.device_dir);
    ulogger_cloud::durable::create_dir_all(&dir)?;
    let mut reason_name = file.name.clone();
    reason_name.push(".reason");
    ulogger_cloud::durable::replace_file(&dir.join(reason_name), format!("{reason}\n").as_bytes())?;
    file.dir.move_to(&file.name, &dir)
}

/// Says a delivery failure once when it starts (with what to do about
/// it), and when it ends; true when it said something.
fn report_failure(
    global: Global,
    client: &Client,
    failures: &mut crate::outbox_report::FailureReport,
) -> bool {
    let Ok(outbox) = client.outbox() else {
        return false;
    };
    let Some(change) = failures.check(outbox) else {
        return false;
    };
    let kind = match change {
        crate::outbox_report::FailureChange::Failing { .. } => "failing",
        crate::outbox_report::FailureChange::Recovered { .. } => "recovered",
    };
    event(global, kind, change.json(), &change.text());
    true
}

/// Whether a delivery failure could start or end without another event
/// of the loop: records wait, the connection is down, or a failure was
/// said and has not ended.
fn may_fail(client: &Client, failures: &crate::outbox_report::FailureReport) -> bool {
    if failures.is_failing() || !client.is_connected() {
        return true;
    }
    client.outbox_status().map_or(true, |s| {
        s.queued + s.in_flight > 0 || s.failing_since.is_some()
    })
}

/// Says that a connection came up or went down (and why).
fn say_connection(global: Global, change: &ulogger_cloud::ConnectionEvent) {
    if let Some((kind, fields, text)) = connection_line(change) {
        event(global, kind, fields, &text);
    }
}

/// Ticks every `period`, the first at once; a late tick is not made up.
fn scan_ticks(period: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// Waits until the inbox is to be scanned: at the next tick, or when the
/// watcher says something may be ready. An error (why) when the watcher
/// stopped working: the agent polls from then on.
async fn next_scan(
    ticks: &mut tokio::time::Interval,
    watch: &mut InboxWatch,
) -> Result<(), String> {
    tokio::select! {
        _ = ticks.tick() => Ok(()),
        woke = watch.changed() => match woke {
            Wake::Changed => Ok(()),
            Wake::Unavailable(why) => Err(why),
        },
    }
}

/// Says, once, that the inbox is polled rather than watched, and why.
fn say_polling(global: Global, why: &str, every: Duration) {
    let every_ms = every.as_millis();
    event(
        global,
        "polling",
        json!({"reason": why, "every_ms": every_ms}),
        &format!("WARNING: the inbox is polled every {every_ms} ms instead of watched: {why}"),
    );
}

/// Waits for the next tick of `ticks`; never, without them.
async fn tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn print_summary(global: Global, client: &Client, ble: Option<&AgentBle>) {
    let Ok(status) = client.outbox_status() else {
        return;
    };
    let mut fields = crate::outbox_report::status_json(&status);
    let (ble_fields, _) = ble.map(AgentBle::summary).unwrap_or_default();
    if let (Some(fields), false) = (fields.as_object_mut(), ble_fields.is_null()) {
        fields.insert("ble".into(), ble_fields);
    }
    event(
        global,
        "summary",
        fields,
        &format!("summary: {}", summary_text(&status, ble)),
    );
}

/// The counts of the summary line, and the failure that has not cleared.
fn summary_text(status: &ulogger_cloud::OutboxStatus, ble: Option<&AgentBle>) -> String {
    let (_, ble_text) = ble.map(AgentBle::summary).unwrap_or_default();
    format!(
        "{} queued, {} in flight, {} delivered, {} dead, {} evicted{}{ble_text}",
        status.queued,
        status.in_flight,
        status.delivered,
        status.dead,
        status.evicted,
        // A failure said when it started is summarised here, not
        // repeated with each attempt.
        match (&status.last_error, status.failing_since) {
            (Some(e), Some(since)) => format!(
                "; still failing since {} ({}): {e}",
                crate::outbox_report::clock(since),
                crate::outbox_report::attempts(status.failed_attempts)
            ),
            (Some(e), None) => format!("; last error: {e}"),
            _ => String::new(),
        }
    )
}

/// The line `systemctl status` shows: the connection, the counts and the
/// last delivery error.
fn status_line(client: &Client, ble: Option<&AgentBle>) -> String {
    let connection = if client.is_connected() {
        "connected"
    } else {
        "not connected"
    };
    match client.outbox_status() {
        Ok(status) => format!("{connection}; {}", summary_text(&status, ble)),
        Err(e) => format!("{connection}; outbox unreadable: {}", exit::message(&e)),
    }
}

/// One line of the agent's log: JSON with `--json` (for journald and log
/// shippers), text otherwise; either with the time it was said (see
/// [`crate::stamp`]).
pub(crate) fn event(global: Global, kind: &str, fields: serde_json::Value, text: &str) {
    let time = crate::stamp::now();
    if global.json {
        let mut line = json!({ "time": time, "event": kind });
        if let (Some(line), serde_json::Value::Object(fields)) = (line.as_object_mut(), fields) {
            line.extend(fields);
        }
        outln!("{line}");
    } else {
        outln!("{time} {text}");
    }
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn mkfifo(path: &Path) {
        let made = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(made.success());
    }

    /// The device folder at `path`, opened as the agent opens one.
    fn open_dir(path: &Path) -> DeviceDir {
        let parent = path.parent().unwrap();
        let handle = inbox_fs::open_inbox(parent).unwrap();
        DeviceDir::open(&handle, parent, path.file_name().unwrap()).unwrap()
    }

    /// Reads `path` as the agent reads an inbox file.
    fn read_at(path: &Path, listed: u64) -> Result<Vec<u8>, Refusal> {
        read_inbox_file(
            &open_dir(path.parent().unwrap()),
            &inbox_fs::name_of(path),
            listed,
        )
    }

    /// Runs `f` on a thread, failing (not hanging) if it blocks.
    fn without_hanging<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(Duration::from_secs(10))
            .expect("returned without waiting for a writer")
    }

    #[test]
    fn a_link_is_never_followed_and_its_target_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.bin");
        std::fs::write(&target, b"secret").unwrap();
        let link = dir.path().join("link.bin");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        match read_at(&link, 6) {
            Err(Refusal::NotRegular(why)) => assert_eq!(why, "a symbolic link"),
            _ => panic!("a link is refused"),
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"secret");
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.bin");
        mkfifo(&fifo);
        let refused = without_hanging(move || read_at(&fifo, 0));
        match refused {
            Err(Refusal::NotRegular(why)) => assert_eq!(why, "a FIFO"),
            _ => panic!("a FIFO is refused"),
        }
    }

    #[test]
    fn a_file_that_changed_since_it_was_listed_waits() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("log.bin");
        std::fs::write(&file, b"twelve bytes").unwrap();
        assert!(matches!(read_at(&file, 5), Err(Refusal::Later(_))));
        assert!(matches!(read_at(&file, 12), Ok(bytes) if bytes == b"twelve bytes"));
    }

    #[test]
    fn an_invalid_identity_is_reported_by_place_not_by_content() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("device.toml"),
            "serial = \"SN\"\napp_id = \"TOPSECRET\"\n",
        )
        .unwrap();
        let err = format!("{:#}", device_of(&open_dir(dir.path())).unwrap_err());
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("TOPSECRET"), "{err}");
    }

    #[test]
    fn a_fifo_as_identity_blocks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        mkfifo(&dir.path().join("device.toml"));
        let path = dir.path().to_path_buf();
        let err = without_hanging(move || {
            device_of(&open_dir(&path))
                .map(|_| ())
                .unwrap_err()
                .to_string()
        });
        assert!(err.contains("a FIFO"), "{err}");
    }

    #[test]
    fn links_and_fifos_in_the_inbox_are_listed_never_and_warned_about_once() {
        let root = tempfile::tempdir().unwrap();
        let inbox = root.path().join("inbox");
        let device = inbox.join("board");
        std::fs::create_dir_all(&device).unwrap();
        std::fs::write(device.join("device.toml"), "app_id = 7\nserial = \"SN\"\ndevice_type = \"b\"\ngit_version = \"v\"\ngit_hash = \"h\"\n").unwrap();
        std::fs::write(device.join("log.bin"), b"log").unwrap();
        mkfifo(&device.join("pipe.bin"));
        let outside = root.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("device.toml"), "").unwrap();
        std::fs::write(outside.join("other.bin"), b"other").unwrap();
        std::os::unix::fs::symlink(outside.join("other.bin"), device.join("link.bin")).unwrap();
        std::os::unix::fs::symlink(&outside, inbox.join("linked")).unwrap();

        let mut warned = Warned::default();
        for _ in 0..2 {
            let found = scan_inbox(&inbox, &mut warned, &HashMap::new()).unwrap();
            let names: Vec<&Path> = found.iter().map(|f| f.path.as_path()).collect();
            assert_eq!(names, [device.join("log.bin")]);
            assert_eq!(found[0].size, 3);
        }
        let mut refused: Vec<PathBuf> = warned.refused.iter().cloned().collect();
        refused.sort();
        assert_eq!(
            refused,
            [
                device.join("link.bin"),
                device.join("pipe.bin"),
                inbox.join("linked")
            ]
        );
        std::fs::remove_file(device.join("pipe.bin")).unwrap();
        warned.forget_gone();
        assert_eq!(warned.refused.len(), 2);
    }

    #[test]
    fn a_file_that_could_not_be_removed_is_not_listed_again_until_it_changes_or_goes() {
        let root = tempfile::tempdir().unwrap();
        let inbox = root.path().join("inbox");
        let device = inbox.join("board");
        std::fs::create_dir_all(&device).unwrap();
        std::fs::write(device.join("device.toml"), "app_id = 7\nserial = \"SN\"\ndevice_type = \"b\"\ngit_version = \"v\"\ngit_hash = \"h\"\n").unwrap();
        let log = device.join("log.bin");
        std::fs::write(&log, b"log").unwrap();

        let mut warned = Warned::default();
        let mut unremovable = Unremovable::default();
        let found = scan_inbox(&inbox, &mut warned, &unremovable.by_identity).unwrap();
        assert_eq!(found.len(), 1);
        unremovable.remember(&found[0], content_key(&log, b"log"));
        for _ in 0..3 {
            unremovable.forget_gone();
            let found = scan_inbox(&inbox, &mut warned, &unremovable.by_identity).unwrap();
            assert!(found.is_empty(), "known by its identity, unread");
        }
        assert!(lock(&unremovable.by_content).contains(&content_key(&log, b"log")));
        assert!(!lock(&unremovable.by_content).contains(&content_key(&log, b"new")));

        // Written over: another identity, listed again (and, read, its
        // new content is not the one queued).
        std::fs::remove_file(&log).unwrap();
        std::fs::write(&log, b"new content").unwrap();
        unremovable.forget_gone();
        assert!(unremovable.by_identity.is_empty());
        let found = scan_inbox(&inbox, &mut warned, &unremovable.by_identity).unwrap();
        assert_eq!(found.len(), 1);

        // Gone: forgotten entirely.
        std::fs::remove_file(&log).unwrap();
        unremovable.forget_gone();
        assert!(lock(&unremovable.by_content).is_empty());
    }
}
