//! Text logs (PROTOCOL §12), published like telemetry: split into
//! messages that fit, each with the next sequence number of its device,
//! through the client's connection pool or its outbox.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tracing::Instrument;

use super::Client;
use crate::error::Error;
use crate::outbox::Kind;
use crate::outbox::RecordId;
use crate::wire::{self, DeviceInfo, TextEntry, TextLogBatch};

/// What the broker acknowledged for text logs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TextLogReceipt {
    /// The topic published to.
    pub topic: String,
    /// The sequence number of each message, in order.
    pub sequences: Vec<u64>,
    /// Bytes published, all messages together.
    pub size: usize,
}

/// The next text-log sequence number of each device.
///
/// The cloud drops a batch whose sequence it has seen for that device, so
/// numbers must never repeat, across restarts too: a device's first
/// number in a process is the current time in microseconds (a restart
/// starts above everything sent before, unless more than a million
/// batches a second were sent), and each batch takes the next one.
#[derive(Debug, Default)]
pub(super) struct TextSequences {
    next: Mutex<HashMap<String, u64>>,
}

impl TextSequences {
    /// Reserves `count` consecutive numbers for `serial`; returns the first.
    fn reserve(&self, serial: &str, count: u64) -> u64 {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = next.entry(serial.to_owned()).or_insert(0);
        let first = (*slot).max(now_us);
        *slot = first.saturating_add(count);
        first
    }
}

impl Client {
    /// Publishes text-log `entries` of `device` to the text-log topic of
    /// its application, split into messages under the broker's 128 KiB
    /// limit, each with the device's next sequence number, in order; returns
    /// once the broker acknowledged every one. The entries are checked
    /// before anything is sent.
    pub async fn publish_text_logs(
        &self,
        device: &DeviceInfo,
        entries: &[TextEntry],
    ) -> Result<TextLogReceipt, Error> {
        let span = tracing::debug_span!(
            "publish_text_logs",
            serial = %device.serial,
            app_id = device.app_id,
            count = entries.len()
        );
        async {
            let (topic, batches) = self.text_batches(device, entries)?;
            let mut receipt = TextLogReceipt {
                topic: topic.clone(),
                sequences: Vec::with_capacity(batches.len()),
                size: 0,
            };
            // Pipelined on the device's own connection, each in its turn:
            // the batches reach the cloud in their order.
            let link = self.transport_for(&device.serial).clone();
            let mut publishes = tokio::task::JoinSet::new();
            for batch in batches {
                super::check_size(batch.bytes.len())?;
                receipt.size += batch.bytes.len();
                receipt.sequences.push(batch.sequence);
                let turn = self.take_turn(&device.serial);
                let (link, topic) = (link.clone(), topic.clone());
                publishes.spawn(async move {
                    link.publish_in_turn(topic, Bytes::from(batch.bytes), turn)
                        .await
                });
            }
            while let Some(done) = publishes.join_next().await {
                done.map_err(|e| Error::with_source(crate::ErrorKind::Shutdown, e.to_string()))??;
            }
            Ok(receipt)
        }
        .instrument(span)
        .await
    }

    /// Builds the messages of `entries` exactly as
    /// [`Client::publish_text_logs`] does (sequence numbers fixed now) and
    /// stores them durably in the outbox, in order; returns their ids once
    /// they are on disk. A message delivered twice after a crash carries
    /// the same sequence, so the cloud keeps it once.
    pub async fn enqueue_text_logs(
        &self,
        device: &DeviceInfo,
        entries: &[TextEntry],
    ) -> Result<Vec<RecordId>, Error> {
        let (_, batches) = self.text_batches(device, entries)?;
        let outbox = self.outbox()?;
        let mut ids = Vec::with_capacity(batches.len());
        for batch in batches {
            ids.push(
                outbox
                    .append_telemetry(Kind::TextLogs, device.app_id, &device.serial, &batch.bytes)
                    .await?,
            );
        }
        Ok(ids)
    }

    fn text_batches(
        &self,
        device: &DeviceInfo,
        entries: &[TextEntry],
    ) -> Result<(String, Vec<TextLogBatch>), Error> {
        let topic = self.settings().topics.logs(device.app_id)?;
        // Numbered once the count is known, so a refused call uses no
        // numbers.
        let batches = wire::text_log_batches_numbered(device, entries, |count| {
            self.inner
                .text_sequences
                .reserve(&device.serial, count as u64)
        })?;
        Ok((topic, batches))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_start_at_the_clock_and_never_repeat() {
        let sequences = TextSequences::default();
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let a = sequences.reserve("A", 3);
        assert!(a >= before);
        let b = sequences.reserve("A", 1000);
        assert!(b >= a + 3, "past the 3 taken");
        assert!(sequences.reserve("B", 1) >= before, "each device its own");
        assert!(sequences.reserve("A", 1) >= b + 1000);
    }
}
