//! The one Tokio runtime every engine of the process runs on.
//!
//! Python threads call in through [`run`] (each blocks on its own future
//! with the GIL released); the connections' tasks run on the runtime's
//! worker threads. A process forked from one that had started the
//! runtime gets a new one: the parent's worker threads do not exist in the
//! child, and the old runtime is leaked rather than dropped (dropping it
//! would wait for those threads).

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::runtime::Runtime;
use ulogger_cloud::{Error, ErrorKind};

static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);

/// The runtime of this process, started on first use.
pub(crate) fn get() -> Result<Arc<Runtime>, Error> {
    let mut slot = RUNTIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let pid = std::process::id();
    if let Some((owner, runtime)) = slot.as_ref() {
        if *owner == pid {
            return Ok(runtime.clone());
        }
    }
    if let Some((_, inherited)) = slot.take() {
        std::mem::forget(inherited);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ulogger-cloud")
        .enable_all()
        .build()
        .map_err(|e| {
            Error::from(ErrorKind::InvalidConfig {
                field: "runtime",
                reason: format!("could not start the engine's runtime threads: {e}"),
            })
        })?;
    let runtime = Arc::new(runtime);
    *slot = Some((pid, runtime.clone()));
    Ok(runtime)
}

/// Runs `future` to completion on the runtime, blocking this thread.
pub(crate) fn run<T>(future: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    get()?.block_on(future)
}
