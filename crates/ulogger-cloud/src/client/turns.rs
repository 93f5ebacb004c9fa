//! Per-device order: a device's messages reach the cloud in the order
//! their turns were taken, however the tasks that send them are
//! scheduled.
//!
//! MQTT keeps the order of publishes on one connection, and a device
//! always uses the same connection of a pool; what is left is the order in
//! which concurrent senders hand their publishes over. A turn, taken in
//! the wanted order (synchronously, by whoever decides the order: the
//! command line, the outbox's oldest-first queue), waits for the turn
//! before it to have handed its publish over, then hands its own over and
//! passes on, without waiting for the acknowledgement: uploads stay
//! pipelined.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

/// Past this many devices with a turn, turns already passed are forgotten.
const PRUNE_AT: usize = 4096;

/// A device's place in line for its next publish; see
/// [`Client::take_turn`](crate::Client::take_turn). Dropping it (or the
/// call it was given to failing) passes the turn on, so one failed upload
/// never holds the device's later ones back.
#[derive(Debug)]
pub struct Turn {
    previous: Option<watch::Receiver<bool>>,
    done: watch::Sender<bool>,
}

impl Turn {
    /// Waits until the turn before this one was passed.
    pub(crate) async fn wait(&mut self) {
        if let Some(mut previous) = self.previous.take() {
            // A dropped sender passed its turn too.
            let _ = previous.wait_for(|passed| *passed).await;
        }
    }

    /// Lets the next turn go.
    pub(crate) fn pass(&mut self) {
        self.done.send_replace(true);
    }

    /// A turn that waits for nothing (no order to keep).
    pub(crate) fn free() -> Turn {
        Turn {
            previous: None,
            done: watch::Sender::new(true),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.pass();
    }
}

/// The last turn taken of each device.
#[derive(Debug, Default)]
pub(super) struct Turns {
    last: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

impl Turns {
    /// The next turn of device `serial`.
    pub(super) fn take(&self, serial: &str) -> Turn {
        let (done, rx) = watch::channel(false);
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.len() >= PRUNE_AT {
            last.retain(|_, turn| !*turn.borrow() && turn.has_changed().is_ok());
        }
        let previous = last.insert(serial.to_owned(), rx);
        Turn { previous, done }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_go_in_the_order_they_were_taken_and_a_dropped_one_passes() {
        let turns = Turns::default();
        let mut first = turns.take("A");
        let mut second = turns.take("A");
        let mut third = turns.take("A");
        let mut other = turns.take("B");
        // Another device waits for nobody.
        other.wait().await;
        // The second waits for the first.
        let waiting = tokio::spawn(async move {
            second.wait().await;
            second
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "went before the first");
        first.wait().await;
        first.pass();
        let second = waiting.await.unwrap();
        // Dropping a turn without passing it passes it too.
        drop(second);
        third.wait().await;
        // A free turn waits for nothing.
        Turn::free().wait().await;
    }

    #[test]
    fn passed_turns_are_forgotten_past_the_bound() {
        let turns = Turns::default();
        for i in 0..PRUNE_AT + 10 {
            drop(turns.take(&format!("SN-{i}")));
        }
        assert!(turns.last.lock().unwrap().len() <= 11);
    }
}
