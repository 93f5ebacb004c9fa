//! `ulogger upload --outbox DIR`: every file is first made durable in the
//! outbox, then delivered; a rerun after a crash or Ctrl-C sends only what
//! was not delivered.
//!
//! Which file became which record is kept in `<DIR>/upload-manifest.jsonl`
//! (path, length and CRC-32 of the content, record id). On a rerun, a file
//! whose record is still in the outbox is waited for instead of being
//! queued again, and a file whose record has left the outbox was delivered
//! by the earlier run. The entries of a run are removed when it ends with
//! every file settled.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
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
        let (index, key, outcome) = done.map_err(anyhow::Error::from)?;
        match (outcome, &key) {
            (Ok((id, new)), Some(key)) => {
                if new {
                    if let Err(e) = append_manifest(&manifest_path, key, id) {
                        // Only a rerun is affected: it would queue the
                        // file again (one extra copy), not lose it.
                        tracing::warn!(error = %format!("{:#}", e.error), "cannot note a queued file in the upload manifest");
                    }
                }
                waiting.push((index, id));
            }
            (Ok(_), None) => {}
            (Err(fate), _) => fates[index] = Some(fate),
        }
        keys[index] = key;
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
    for (index, id) in waiting {
        let client = client.clone();
        deliveries.spawn(async move { (index, client.delivered(id).await) });
    }
    let mut gave_up: Option<String> = None;
    let unreachable = unreachable(&client);
    tokio::pin!(unreachable);
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
            _ = tokio::signal::ctrl_c() => {
                gave_up = Some("interrupted".to_owned());
                break;
            }
            error = &mut unreachable, if !deliveries.is_empty() => {
                gave_up = Some(format!("cannot reach the broker: {error}"));
                break;
            }
        }
    }
    for fate in fates.iter_mut().filter(|f| f.is_none()) {
        *fate = Some(Fate::Queued);
    }
    client.shutdown().await;

    let count = |pred: fn(&Fate) -> bool| fates.iter().flatten().filter(|f| pred(f)).count();
    let delivered = count(|f| matches!(f, Fate::Delivered));
    let earlier_runs = count(|f| matches!(f, Fate::Earlier));
    let failed = count(|f| matches!(f, Fate::Failed(..)));
    let still_queued = count(|f| matches!(f, Fate::Queued));
    if still_queued == 0 {
        forget(&manifest_path, keys.iter().flatten())?;
    }
    if global.json {
        println!(
            "{}",
            json!({"delivered": delivered, "delivered_earlier": earlier_runs,
                   "failed": failed, "queued": still_queued, "outbox": dir})
        );
    } else {
        println!(
            "{delivered} delivered, {earlier_runs} delivered by an earlier run, {failed} failed, {still_queued} still queued in {}",
            dir.display()
        );
        if still_queued > 0 {
            println!("run the same command again to deliver what is still queued");
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
        (Some(reason), _) => Err(Exit::new(Failure::Network, anyhow::anyhow!("{reason}"))),
        (None, Some(failure)) => Err(Exit::silent(failure)),
        (None, None) => Ok(()),
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
        println!("{}", json!({"file": file, "ok": ok, "status": text}));
    } else if !matches!(fate, Fate::Queued) {
        println!("{}: {text}", file.display());
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

fn append_manifest(path: &Path, key: &str, id: RecordId) -> Result<(), Exit> {
    let mut line = serde_json::to_vec(&ManifestLine {
        key: key.to_owned(),
        id: id.0,
    })
    .map_err(anyhow::Error::from)?;
    line.push(b'\n');
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(&line))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
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
    let result = if kept.is_empty() {
        std::fs::remove_file(path)
    } else {
        std::fs::write(path, kept)
    };
    result.with_context(|| format!("cannot update {}", path.display()))?;
    Ok(())
}
