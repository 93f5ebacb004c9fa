//! Panic bookkeeping for the emulator's tasks: a panic in any task is kept
//! and reported by the handle (its `Drop` fails the test that owns it).

use std::any::Any;
use std::sync::{Mutex, PoisonError};

use tokio::task::JoinError;

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
