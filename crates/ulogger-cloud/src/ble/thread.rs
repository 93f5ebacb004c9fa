//! The BLE side's own thread: a single-threaded tokio runtime on which a
//! [`BleSession`](super::BleSession)'s bus connections live and its pulls
//! run.
//!
//! A pull is a stop-and-wait loop: a datagram in, an ack out, per chunk.
//! On the caller's multi-threaded runtime each chunk's wake-up could land
//! on the other worker (a futex wake and a context switch per chunk, and
//! an idle worker woken to look for work); on one thread that owns the
//! sockets, the reactor hands the ready pull straight to the only worker.
//! Measured in `docs/benchmarks.md` (BLE gateway); decision 42.
//!
//! The thread ends when the last handle to it is dropped: its runtime is
//! dropped with it, which cancels whatever still runs there.

use std::future::Future;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Error, ErrorKind};

/// A handle to the BLE thread; cheap to clone.
#[derive(Clone)]
pub(super) struct BleThread {
    runtime: Handle,
    /// Dropped with the last clone: the thread then returns.
    _stop: Arc<oneshot::Sender<()>>,
}

impl BleThread {
    /// Starts the thread and its runtime.
    pub(super) async fn start() -> Result<BleThread, Error> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (started, handle) = oneshot::channel();
        std::thread::Builder::new()
            .name("ulogger-ble".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                if started.send(Ok(runtime.handle().clone())).is_ok() {
                    // Ok or not, the last handle is gone.
                    let _ = runtime.block_on(stopped);
                }
            })
            .map_err(|e| failed(START, &e))?;
        let runtime = handle
            .await
            .map_err(|_| failed(START, &"it ended before starting"))?
            .map_err(|e| failed(START, &e))?;
        Ok(BleThread {
            runtime,
            _stop: Arc::new(stop),
        })
    }

    /// Runs `work` on the thread and waits for it; dropping the returned
    /// future cancels `work` (as dropping the work itself would).
    pub(super) async fn run<F>(&self, work: F) -> Result<F::Output, Error>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let mut task = AbortOnDrop(self.runtime.spawn(work));
        match (&mut task.0).await {
            Ok(output) => Ok(output),
            // A panic in a pull is a bug: it goes on up, as it would have
            // without the thread.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(failed(
                "running on the BLE thread",
                &"the thread stopped while a pull ran",
            )),
        }
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const START: &str = "starting the BLE thread";

fn failed(step: &'static str, reason: &dyn std::fmt::Display) -> Error {
    ErrorKind::Ble {
        step,
        reason: reason.to_string(),
    }
    .into()
}
