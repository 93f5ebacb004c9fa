//! `ulogger upload --jobs N`: many files in flight at once over the
//! client's connection(s), with at most `N` read into memory.
//!
//! Each job reads its file, then uploads it; a new job starts only when
//! one has finished, so reading the next files overlaps the uploads under
//! way while memory holds no more than `N` files.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::anyhow;
use tokio::task::JoinSet;
use ulogger_cloud::wire::DeviceInfo;
use ulogger_cloud::{Client, ErrorKind, Phase, Turn, UploadReceipt};

use crate::exit::{self, Exit, Failure};
use crate::files;

/// Unacknowledged publishes one connection may have: the platform's limit
/// (PROTOCOL §1: 100 QoS 1 publishes per connection), which is also the
/// client's `max_inflight` (the CLI keeps the library's default). More
/// jobs than the connections can keep in flight would only hold files in
/// memory while they wait in the client's queue.
pub const INFLIGHT_PER_CONNECTION: usize = 100;

/// The number of concurrent uploads: `--jobs`, else as many as the
/// connections can keep in flight. Zero, or more than that, is bad input.
pub fn resolve(jobs: Option<u64>, connections: Option<usize>) -> Result<usize, Exit> {
    // A bad connection count is reported by the client's configuration;
    // here it only bounds the jobs.
    let connections = connections.unwrap_or(1).max(1);
    let limit = INFLIGHT_PER_CONNECTION.saturating_mul(connections);
    let Some(jobs) = jobs else {
        return Ok(limit);
    };
    if jobs == 0 {
        return Err(Exit::new(
            Failure::BadInput,
            anyhow!("--jobs 0 would upload nothing: give at least 1"),
        ));
    }
    match usize::try_from(jobs) {
        Ok(jobs) if jobs <= limit => Ok(jobs),
        _ => Err(Exit::new(
            Failure::BadInput,
            anyhow!(
                "--jobs {jobs} is more than {connections} connection(s) can keep in flight ({INFLIGHT_PER_CONNECTION} unacknowledged publishes each, the platform's limit): give at most {limit}, or more --connections"
            ),
        )),
    }
}

/// One file's upload, finished.
pub struct Done {
    /// The file's position on the command line.
    pub index: usize,
    /// What the broker acknowledged, or why the file failed.
    pub outcome: Result<UploadReceipt, Failed>,
}

/// Why one file failed.
pub struct Failed {
    /// Its exit-code class.
    pub failure: Failure,
    /// The error and its causes, on one line.
    pub message: String,
    /// What a person can do about it, when known.
    pub hint: Option<String>,
}

impl Failed {
    fn new(failure: Failure, message: String) -> Failed {
        Failed {
            failure,
            message,
            hint: None,
        }
    }
}

/// The uploads of one run: started in command-line order, at most `jobs`
/// at a time, reaching the cloud in command-line order, reported in the
/// order they finish.
pub struct Uploads<'a> {
    client: Client,
    device: Arc<DeviceInfo>,
    files: &'a [PathBuf],
    jobs: usize,
    next: usize,
    running: JoinSet<Done>,
    /// Set by the first upload whose device could not register: the files
    /// not yet uploaded then fail at once with its reason.
    registration_failed: Arc<OnceLock<(Failure, String)>>,
}

impl<'a> Uploads<'a> {
    /// Uploads `files` for `device` through `client`, `jobs` at a time
    /// (at least one).
    pub fn new(client: Client, device: DeviceInfo, files: &'a [PathBuf], jobs: usize) -> Self {
        Uploads {
            client,
            device: Arc::new(device),
            files,
            jobs: jobs.max(1),
            next: 0,
            running: JoinSet::new(),
            registration_failed: Arc::new(OnceLock::new()),
        }
    }

    /// The next upload to finish, after starting files until `jobs` are
    /// under way; `None` once every file was uploaded or failed.
    /// Cancel-safe: a call dropped before it returns loses no result.
    pub async fn next(&mut self) -> Result<Option<Done>, Exit> {
        self.start_more();
        match self.running.join_next().await {
            None => Ok(None),
            Some(Ok(done)) => Ok(Some(done)),
            Some(Err(e)) => Err(Exit::from(
                anyhow::Error::from(e).context("an upload task ended abnormally"),
            )),
        }
    }

    /// Uploads that finished but were not yet returned by
    /// [`Uploads::next`], without starting more.
    pub fn finished(&mut self) -> Vec<Done> {
        let mut done = Vec::new();
        while let Some(result) = self.running.try_join_next() {
            if let Ok(result) = result {
                done.push(result);
            }
        }
        done
    }

    /// Abandons the uploads under way (their callers go, so the client
    /// waits for none of their acknowledgements) and returns how many
    /// there were.
    pub async fn abandon(mut self) -> usize {
        let in_flight = self.running.len();
        self.running.shutdown().await;
        in_flight
    }

    fn start_more(&mut self) {
        while self.running.len() < self.jobs && self.next < self.files.len() {
            let index = self.next;
            self.next += 1;
            // Turns taken in command-line order: the device's logs reach the
            // cloud in that order, while reads and uploads overlap.
            let turn = self.client.take_turn(&self.device.serial);
            let job = upload_one(
                self.client.clone(),
                self.device.clone(),
                self.files[index].clone(),
                self.registration_failed.clone(),
                turn,
            );
            self.running.spawn(async move {
                Done {
                    index,
                    outcome: job.await,
                }
            });
        }
    }
}

async fn upload_one(
    client: Client,
    device: Arc<DeviceInfo>,
    file: PathBuf,
    registration_failed: Arc<OnceLock<(Failure, String)>>,
    turn: Turn,
) -> Result<UploadReceipt, Failed> {
    let log = files::read_message(file)
        .await
        .map_err(|e| Failed::new(Failure::BadInput, e.to_string()))?;
    if let Some((failure, message)) = registration_failed.get() {
        return Err(Failed::new(*failure, message.clone()));
    }
    client
        .upload_log_in_turn(turn, &device, &log)
        .await
        .map_err(|e| {
            let failed = Failed {
                failure: exit::classify(&e),
                message: exit::message(&e),
                hint: exit::hint(&e),
            };
            if is_registration_failure(&e) {
                let _ = registration_failed.set((
                    failed.failure,
                    format!("registration failed: {}", failed.message),
                ));
            }
            failed
        })
}

/// True when the device could not get a session token: uploading its
/// other files would only fail the same way, each after the same wait.
fn is_registration_failure(error: &ulogger_cloud::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Timeout(Phase::BootReply)
            | ErrorKind::InvalidBootReply(_)
            | ErrorKind::SubscribeRefused { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_what_the_connections_keep_in_flight() {
        assert_eq!(resolve(None, None).ok(), Some(100));
        assert_eq!(resolve(None, Some(4)).ok(), Some(400));
        assert_eq!(resolve(Some(7), Some(1)).ok(), Some(7));
        assert_eq!(resolve(Some(100), None).ok(), Some(100));
    }

    #[test]
    fn zero_and_too_many_jobs_are_bad_input() {
        for (jobs, connections) in [(0, None), (101, None), (201, Some(2)), (u64::MAX, None)] {
            let exit = resolve(Some(jobs), connections).err().unwrap();
            assert_eq!(exit.failure, Failure::BadInput, "{jobs}");
            assert!(exit.error.to_string().contains("--jobs"), "{}", exit.error);
        }
        // A huge connection count saturates instead of overflowing.
        assert_eq!(
            resolve(Some(u64::MAX >> 2), Some(usize::MAX)).ok(),
            Some((u64::MAX >> 2) as usize)
        );
    }
}
