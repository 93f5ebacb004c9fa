//! `ulogger upload --outbox DIR`: every file is first made durable in the
//! outbox, then delivered; a rerun after a crash or Ctrl-C sends only what
//! was not delivered.
//!
//! Which file became which record is kept in `<DIR>/upload-manifest.jsonl`
//! (path, length and CRC-32 of the content, record id). On a rerun, a file
//! whose record is still in the outbox is waited for instead of being
//! queued again, and a file whose record has left the outbox was delivered
//! by the earlier run. The entries of a run are removed when it ends with
//! every file delivered; a run that ends with files FAILED removes only
//! theirs, so that a rerun sends again what failed and nothing that was
//! delivered.
//!
//! A file counts as queued only once its line is synced (appended and
//! fdatasynced, one sync for the files enqueued together; the manifest's
//! own name synced into the outbox directory once a run, decision 18):
//! a power cut then re-sends at most the files whose enqueue was in
//! flight, not every file of the run.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::task::JoinSet;
use ulogger_cloud::wire::DeviceInfo;
use ulogger_cloud::{Client, ErrorKind, OutboxConfig, RecordId};

use crate::connection::ConnectionArgs;
use crate::exit::{self, Exit, Failure};
use crate::files;
use crate::Global;

const MANIFEST: &str = "upload-manifest.jsonl";
/// Files read and enqueued at once unless `--jobs` says otherwise
/// (enqueues share fsyncs).
const ENQUEUE_JOBS: usize = 64;

/// How long a stopped or failed run waits for its connection to close.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
struct ManifestLine {
    key: String,
    id: u64,
}

/// What became of one file in this run.
enum Fate {
    Delivered,
    Earlier,
    Failed(Failure, String),
    Queued,
}

pub fn upload(
    global: Global,
    connection: &ConnectionArgs,
    stamp_time: bool,
    device: &DeviceInfo,
    files: &[PathBuf],
    dir: &Path,
    jobs: Option<usize>,
) -> Result<(), Exit> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(
        global, connection, stamp_time, device, files, dir, jobs,
    ))
}

async fn run(
    global: Global,
    connection: &ConnectionArgs,
    stamp_time: bool,
    device: &DeviceInfo,
    files: &[PathBuf],
    dir: &Path,
    jobs: Option<usize>,
) -> Result<(), Exit> {
    let jobs = jobs.unwrap_or(ENQUEUE_JOBS).max(1);
    // Listened for from the start (as `upload` does), so that a Ctrl-C
    // or SIGTERM at any point ends the wait below, never the process in
    // the middle of a manifest write.
    let stop = crate::signal::StopSignal::listen()?.wait();
    tokio::pin!(stop);
    let (config, store) = connection.resolve()?;
    let client = Client::builder(config)
        .session_store(store)
        .stamp_epoch_time(stamp_time)
        .outbox(OutboxConfig::new(dir))
        .build()
        .map_err(|e| match e.kind() {
            ErrorKind::OutboxLocked { .. } => Exit::new(Failure::BadInput, e),
            _ => exit::from_cloud(e),
        })?;
    let manifest_path = dir.join(MANIFEST);
    let earlier = read_manifest(&manifest_path)?;
    let mut manifest = Manifest::new(dir);
    let queued: HashSet<u64> = client
        .outbox()
        .map_err(exit::from_cloud)?
        .records()
        .iter()
        .map(|r| r.id.0)
        .collect();

    // Read and enqueue `jobs` at once (concurrent enqueues share fsyncs);
    // files an earlier run queued are only waited for.
    let mut fates: Vec<Option<Fate>> = files.iter().map(|_| None).collect();
    let mut waiting: Vec<(usize, RecordId)> = Vec::new();
    let mut keys: Vec<Option<String>> = vec![None; files.len()];
    let earlier = std::sync::Arc::new(earlier);
    let queued = std::sync::Arc::new(queued);
    let mut tasks = JoinSet::new();
    let mut manifest_warned = false;
    let mut next = 0;
    while next < files.len() || !tasks.is_empty() {
        while next < files.len() && tasks.len() < jobs {
            let (index, file, client, device) =
                (next, files[next].clone(), client.clone(), device.clone());
            let known = earlier.clone();
            let queued = queued.clone();
            tasks.spawn(async move {
                let bytes = match files::read_message(file.clone()).await {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        let fate = Fate::Failed(Failure::BadInput, e.to_string());
                        return (index, None, Err(fate));
                    }
                };
                let key = file_key(&file, &bytes);
                let outcome = match known.get(&key) {
                    Some(&id) if queued.contains(&id) => Ok((RecordId(id), false)),
                    Some(_) => Err(Fate::Earlier),
                    None => client
                        .enqueue_log(&device, &bytes)
                        .await
                        .map(|id| (id, true))
                        .map_err(|e| Fate::Failed(exit::classify(&e), exit::message(&e))),
                };
                (index, Some(key), outcome)
            });
            next += 1;
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        // Every enqueue finished by now shares one manifest sync.
        let mut batch = vec![done];
        while let Some(more) = tasks.try_join_next() {
            batch.push(more);
        }
        let mut lines = Vec::new();
        let mut settled = Vec::new();
        for done in batch {
            let (index, key, outcome) = done.map_err(anyhow::Error::from)?;
            match (outcome, &key) {
                (Ok((id, new)), Some(key)) => {
                    if new {
                        lines.push((key.clone(), id));
                    }
                    settled.push((index, id));
                }
                (Ok(_), None) => {}
                (Err(fate), _) => fates[index] = Some(fate),
            }
            keys[index] = key;
        }
        if let Err(e) = tokio::task::block_in_place(|| manifest.append(&lines)) {
            // Only a rerun is affected: it would queue these files again
            // (one extra copy each), not lose them. Said once a run.
            if !manifest_warned {
                manifest_warned = true;
                tracing::warn!(error = %e, path = %manifest_path.display(), "cannot note queued files in the upload manifest: a rerun would send them again");
            }
        }
        waiting.extend(settled);
    }

    for (index, fate) in fates.iter().enumerate() {
        if let Some(fate) = fate {
            report(global, &files[index], fate);
        }
    }

    // Deliver, reporting each file as it settles. Ctrl-C, or a broker out
    // of reach for the connect timeout, stops waiting: what is not
    // delivered stays queued for the next run.
    let mut deliveries = JoinSet::new();
    let ids: HashMap<usize, RecordId> = waiting.iter().copied().collect();
    for (index, id) in waiting {
        let client = client.clone();
        deliveries.spawn(async move { (index, client.delivered(id).await) });
    }
    let mut gave_up: Option<Exit> = None;
    let unreachable = unreachable(&client);
    tokio::pin!(unreachable);
    let outbox = client.outbox().map_err(exit::from_cloud)?;
    // A delivery failure is said once on stderr when it starts (with the
    // hint `upload` gives) and when it ends, however often it repeats.
    let mut failures = crate::outbox_report::FailureReport::default();
    let mut check = tokio::time::interval(std::time::Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            done = deliveries.join_next() => match done {
                None => break,
                Some(Ok((index, result))) => {
                    let fate = match result {
                        Ok(()) => Fate::Delivered,
                        Err(e) => Fate::Failed(exit::classify(&e), exit::message(&e)),
                    };
                    report(global, &files[index], &fate);
                    fates[index] = Some(fate);
                }
                Some(Err(e)) => return Err(anyhow::Error::from(e).into()),
            },
            _ = &mut stop => {
                gave_up = Some(crate::signal::interrupted());
                break;
            }
            _ = check.tick() => say_failure(&mut failures, outbox),
            error = &mut unreachable, if !deliveries.is_empty() => {
                say_failure(&mut failures, outbox);
                gave_up = Some(match outbox.failure() {
                    // Its cause and hint were just said: only how long.
                    Some(failure) => Exit::new(
                        Failure::Network,
                        anyhow::anyhow!(
                            "cannot reach the broker: still failing since {} ({})",
                            crate::outbox_report::clock(failure.since),
                            crate::outbox_report::attempts(failure.attempts)
                        ),
                    ),
                    None => Exit::new(
                        Failure::Network,
                        anyhow::anyhow!("cannot reach the broker: {error}"),
                    )
                    .with_hint(exit::hint(&error)),
                });
                break;
            }
        }
    }
    for fate in fates.iter_mut().filter(|f| f.is_none()) {
        *fate = Some(Fate::Queued);
    }
    if gave_up.is_some() {
        // Everything is durable in the outbox; a connection attempt under
        // way (a broker that does not answer) would otherwise hold the
        // exit for up to --timeout.
        let _ = tokio::time::timeout(STOP_GRACE, client.shutdown()).await;
    } else {
        client.shutdown().await;
    }
    // Deliveries under way when it stopped waiting were acknowledged
    // during the shutdown (or not): the outbox after it says which. A
    // record no longer in it was delivered (one evicted by age, in these
    // seconds, would need a maximum age shorter than the run).
    if gave_up.is_some() {
        let left: HashSet<u64> = outbox.records().iter().map(|r| r.id.0).collect();
        for (index, fate) in fates.iter_mut().enumerate() {
            let gone = ids.get(&index).is_some_and(|id| !left.contains(&id.0));
            if gone && matches!(fate, Some(Fate::Queued)) {
                report(global, &files[index], &Fate::Delivered);
                *fate = Some(Fate::Delivered);
            }
        }
    }

    let count = |pred: fn(&Fate) -> bool| fates.iter().flatten().filter(|f| pred(f)).count();
    let delivered = count(|f| matches!(f, Fate::Delivered));
    let earlier_runs = count(|f| matches!(f, Fate::Earlier));
    let failed = count(|f| matches!(f, Fate::Failed(..)));
    let still_queued = count(|f| matches!(f, Fate::Queued));
    if still_queued == 0 && failed == 0 {
        forget(&manifest_path, keys.iter().flatten())?;
    } else if failed > 0 {
        // Keep what was delivered (a rerun skips it) and what is still
        // queued (a rerun waits for it); what failed is sent again.
        let failed_keys = fates
            .iter()
            .zip(&keys)
            .filter_map(|(fate, key)| match fate {
                Some(Fate::Failed(..)) => key.as_ref(),
                _ => None,
            });
        forget(&manifest_path, failed_keys)?;
    }
    if global.json {
        outln!(
            "{}",
            json!({"delivered": delivered, "delivered_earlier": earlier_runs,
                   "failed": failed, "queued": still_queued, "outbox": dir})
        );
    } else {
        outln!(
            "{delivered} delivered, {earlier_runs} delivered by an earlier run, {failed} failed, {still_queued} still queued in {}",
            dir.display()
        );
        if still_queued > 0 {
            outln!("run the same command again to deliver what is still queued");
        }
    }
    let worst = fates
        .iter()
        .flatten()
        .filter_map(|f| match f {
            Fate::Failed(failure, _) => Some(*failure),
            _ => None,
        })
        .max();
    match (gave_up, worst) {
        (Some(exit), _) => Err(exit),
        (None, Some(failure)) => Err(Exit::silent(failure)),
        (None, None) => Ok(()),
    }
}

/// Says on stderr a delivery failure that started or ended since the last
/// call.
fn say_failure(failures: &mut crate::outbox_report::FailureReport, outbox: &ulogger_cloud::Outbox) {
    if let Some(change) = failures.check(outbox) {
        eprintln!("{}", change.text());
    }
}

/// Resolves with the error once the broker has been out of reach for the
/// connect timeout.
async fn unreachable(client: &Client) -> ulogger_cloud::Error {
    loop {
        if let Err(error) = client.connected().await {
            return error;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

fn report(global: Global, file: &Path, fate: &Fate) {
    let (ok, text) = match fate {
        Fate::Delivered => (true, "delivered".to_owned()),
        Fate::Earlier => (true, "delivered by an earlier run".to_owned()),
        Fate::Queued => (false, "still queued".to_owned()),
        Fate::Failed(_, message) => (false, format!("FAILED: {message}")),
    };
    if global.json {
        outln!("{}", json!({"file": file, "ok": ok, "status": text}));
    } else if matches!(fate, Fate::Failed(..)) {
        // A cause, not a result: stderr, as `upload` says its failures.
        eprintln!("{}: {text}", file.display());
    } else if !matches!(fate, Fate::Queued) {
        outln!("{}: {text}", file.display());
    }
}

/// The same file with the same content gives the same key.
fn file_key(file: &Path, bytes: &[u8]) -> String {
    let path = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    format!(
        "{}|{}|{:08x}",
        path.display(),
        bytes.len(),
        crc32fast::hash(bytes)
    )
}

fn read_manifest(path: &Path) -> Result<HashMap<String, u64>, Exit> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => {
            return Err(anyhow::Error::from(e)
                .context(format!("cannot read {}", path.display()))
                .into())
        }
    };
    // A line cut short by a crash is skipped: its file is queued again.
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<ManifestLine>(line).ok())
        .map(|line| (line.key, line.id))
        .collect())
}

/// The manifest as this run appends to it.
struct Manifest {
    dir: PathBuf,
    path: PathBuf,
    /// Open for appending once the outbox directory holds its name durably.
    file: Option<File>,
    /// fdatasyncs made, for tests of the group commit.
    syncs: u64,
}

impl Manifest {
    fn new(dir: &Path) -> Manifest {
        Manifest {
            dir: dir.to_path_buf(),
            path: dir.join(MANIFEST),
            file: None,
            syncs: 0,
        }
    }

    /// Appends one line per queued file in one write and syncs them: when
    /// this returns `Ok`, a power cut keeps them. After a failure the
    /// lines are treated as lost (a failed fsync may have dropped them),
    /// and the file is opened afresh for the next batch.
    fn append(&mut self, lines: &[(String, RecordId)]) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        for (key, id) in lines {
            serde_json::to_writer(
                &mut bytes,
                &ManifestLine {
                    key: key.clone(),
                    id: id.0,
                },
            )?;
            bytes.push(b'\n');
        }
        let written = self.open().and_then(|file| {
            file.write_all(&bytes)?;
            file.sync_data()
        });
        match written {
            Ok(()) => {
                self.syncs += 1;
                Ok(())
            }
            Err(e) => {
                self.file = None;
                Err(e)
            }
        }
    }

    /// The open manifest. Its name is synced into the outbox directory on
    /// every open, even if it existed: a run that created it may have
    /// stopped before syncing, and its lines would be lost with the name.
    fn open(&mut self) -> io::Result<&mut File> {
        match &mut self.file {
            Some(file) => Ok(file),
            slot => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?;
                ulogger_cloud::durable::sync_dir(&self.dir)?;
                Ok(slot.insert(file))
            }
        }
    }
}

/// Drops this run's entries from the manifest.
fn forget<'a>(path: &Path, keys: impl Iterator<Item = &'a String>) -> Result<(), Exit> {
    let keys: HashSet<&String> = keys.collect();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(_) => return Ok(()),
    };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<ManifestLine>(line)
                .map(|l| !keys.contains(&l.key))
                .unwrap_or(false)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    // Durably: an entry of a failed file that came back after a power
    // cut would make a rerun skip that file as delivered.
    let result = if kept.is_empty() {
        ulogger_cloud::durable::remove_file(path)
    } else {
        ulogger_cloud::durable::replace_file(path, kept.as_bytes())
    };
    result.with_context(|| format!("cannot update {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_batch_of_queued_files_is_one_write_and_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut manifest = Manifest::new(dir.path());
        manifest.append(&[]).unwrap();
        assert!(!dir.path().join(MANIFEST).exists(), "nothing to note");
        let batch: Vec<(String, RecordId)> = (0..5)
            .map(|i| (format!("/f{i}|1|00000000"), RecordId(i)))
            .collect();
        manifest.append(&batch).unwrap();
        assert_eq!(manifest.syncs, 1, "one sync for the batch");
        manifest.append(&batch[..1]).unwrap();
        assert_eq!(manifest.syncs, 2);
        let read = read_manifest(&dir.path().join(MANIFEST)).unwrap();
        assert_eq!(read.len(), 5);
        assert_eq!(read["/f3|1|00000000"], 3);
    }

    #[test]
    fn forgetting_keeps_other_entries_and_removes_an_empty_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST);
        let mut manifest = Manifest::new(dir.path());
        let batch = [("a".to_owned(), RecordId(1)), ("b".to_owned(), RecordId(2))];
        manifest.append(&batch).unwrap();
        forget(&path, [&"a".to_owned()].into_iter()).unwrap();
        let read = read_manifest(&path).unwrap();
        assert_eq!(read.keys().collect::<Vec<_>>(), [&"b".to_owned()]);
        forget(&path, [&"b".to_owned()].into_iter()).unwrap();
        assert!(!path.exists());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(names.is_empty(), "no temporary left: {names:?}");
    }
}
