//! The emulator's runtime: its thread, the top-level tasks it runs
//! (broker or attached client, HTTP, cloud), the order they stop in, and
//! panic bookkeeping: a panic in any task is kept and reported by the
//! handle (its `Drop` fails the test that owns it).

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinSet};

use crate::EmulatorError;

/// One of the emulator's top-level tasks.
pub(crate) type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The tasks that take messages in: a stop ends them first.
const INTAKE: [&str; 3] = ["broker", "attach", "http"];

/// The emulator's runtime: one thread, so that a stop can be ordered (an
/// aborted task never runs again).
pub(crate) fn runtime() -> Result<Runtime, EmulatorError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(EmulatorError::Runtime)
}

/// The running runtime thread, as the handle holds it.
pub(crate) struct Running {
    pub(crate) handle: Handle,
    /// Fired to stop (see [`supervise`]).
    pub(crate) shutdown: oneshot::Sender<()>,
    pub(crate) thread: JoinHandle<()>,
}

/// Runs `tasks` (named) on `runtime`'s own thread until shutdown. `drain`
/// tells the cloud task, at a stop, to store what is still queued.
pub(crate) fn run(
    runtime: Runtime,
    tasks: Vec<(&'static str, Task)>,
    drain: oneshot::Sender<()>,
    failures: Arc<Failures>,
) -> Result<Running, EmulatorError> {
    let (shutdown, shutdown_rx) = oneshot::channel();
    let handle = runtime.handle().clone();
    let thread = std::thread::Builder::new()
        .name("ulogger-emulator".into())
        .spawn(move || {
            runtime.block_on(supervise(tasks, shutdown_rx, drain, failures));
            runtime.shutdown_timeout(Duration::from_secs(1));
        })
        .map_err(EmulatorError::Runtime)?;
    Ok(Running {
        handle,
        shutdown,
        thread,
    })
}

/// Runs the emulator's top-level tasks until shutdown, noting panics.
///
/// A stop keeps the broker's word: first the tasks that take messages in
/// (the listener with every connection, or the attached client) end, so
/// no new PUBACK can go out; then the cloud stores everything still
/// queued; only then does the rest end.
async fn supervise(
    tasks: Vec<(&'static str, Task)>,
    mut shutdown: oneshot::Receiver<()>,
    drain: oneshot::Sender<()>,
    failures: Arc<Failures>,
) {
    let mut set = JoinSet::new();
    let mut names = HashMap::new();
    let mut intake = Vec::new();
    for (name, task) in tasks {
        let handle = set.spawn(task);
        if INTAKE.contains(&name) {
            intake.push(handle.clone());
        }
        names.insert(handle.id(), name);
    }
    let note = |done: Result<(tokio::task::Id, ()), tokio::task::JoinError>| {
        let (id, result) = match done {
            Ok((id, ())) => (id, Ok(())),
            Err(e) => (e.id(), Err(e)),
        };
        let name = names.get(&id).copied().unwrap_or("task");
        failures.note(name, result);
        name
    };
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(done) = set.join_next_with_id() => {
                note(done);
            }
        }
    }
    // On this single-threaded runtime an aborted task never runs again.
    for handle in intake {
        handle.abort();
    }
    if drain.send(()).is_ok() {
        while let Some(done) = set.join_next_with_id().await {
            if note(done) == "cloud" {
                break;
            }
        }
    }
    set.shutdown().await;
}

/// The first panic of any emulator task.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    first: Mutex<Option<String>>,
}

impl Failures {
    /// Records the outcome of a finished task (cancellation is not a
    /// failure).
    pub(crate) fn note(&self, task: &str, result: Result<(), JoinError>) {
        if let Err(e) = result {
            if e.is_panic() {
                let message = format!("{task}: {}", panic_message(e.into_panic()));
                tracing::error!(message, "emulator task panicked");
                self.first
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert(message);
            }
        }
    }

    pub(crate) fn first(&self) -> Option<String> {
        self.first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_kept_and_a_cancelled_one_is_not() {
        let failures = Failures::default();
        let cancelled = tokio::spawn(std::future::pending::<()>());
        cancelled.abort();
        failures.note("cancelled", cancelled.await);
        assert_eq!(failures.first(), None);

        let panicking = tokio::spawn(async { panic!("boom") });
        failures.note("worker", panicking.await);
        assert_eq!(failures.first().as_deref(), Some("worker: boom"));
    }
}
