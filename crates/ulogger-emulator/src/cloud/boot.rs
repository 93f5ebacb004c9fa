//! Boot registration: a device asks for a session token, the cloud answers
//! on the device's reply topic (PROTOCOL §3), unless a fault says otherwise.

use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinSet;
use ulogger_wire::{boot_reply_payload, BootRequest, BootRequestError, Topics};

use super::{Cloud, Uplink};
use crate::broker::Message;
use crate::faults::BootReplyMode;
use crate::records::{NotStored, Record, RecordKind, RecordLog};

/// What the `Malformed` fault sends: an object without `token`, then bytes
/// that are not JSON at all. Neither is an answer.
const MALFORMED_REPLIES: [&[u8]; 2] = [br#"{"tok":1}"#, b"\x00not json{"];

/// How long a boot reply that found no subscriber waits for the device's
/// subscription: a device may subscribe only after its request's PUBACK.
const REPLY_LINGER: Duration = Duration::from_secs(10);

/// Reads a boot request as devices send it: the SDK's four strings, or a
/// device's own variant with `serial` as a JSON number (PROTOCOL §3).
/// Returns the request and whether the serial came as a number.
pub(super) fn parse_request(payload: &[u8]) -> Result<(BootRequest, bool), BootRequestError> {
    let strict = match BootRequest::parse(payload) {
        Ok(request) => return Ok((request, false)),
        Err(e) => e,
    };
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(payload) else {
        return Err(strict);
    };
    let Some(serial) = object.get("serial").and_then(Value::as_u64) else {
        return Err(strict);
    };
    object.insert("serial".into(), Value::String(serial.to_string()));
    let text = Value::Object(object).to_string();
    BootRequest::parse(text.as_bytes()).map(|request| (request, true))
}

impl Cloud {
    pub(super) fn boot(
        &self,
        group: Option<u32>,
        app_id: u32,
        message: &Message,
        replies: &mut JoinSet<()>,
    ) -> Result<(), NotStored> {
        if let Some(guard) = &self.boot_guard {
            if let Some(count) = guard.trips() {
                self.quarantine(guard.rate, count);
            }
        }
        let mut record = Record::new(
            RecordKind::Boot,
            message.topic.clone(),
            message.payload.len(),
        );
        record.app_id = Some(app_id);
        let request = match parse_request(&message.payload) {
            Ok((request, serial_was_number)) => {
                if serial_was_number {
                    record.reason = Some("serial sent as a JSON number (device firmware)".into());
                }
                request
            }
            Err(e) => {
                record.file =
                    Some(self.store("boot", &format!("app{app_id}"), "json", &message.payload)?);
                return self.records.append(record.rejected(e.to_string()));
            }
        };
        record.serial = Some(request.serial.clone());
        record.file = Some(self.store("boot", &request.serial, "json", &message.payload)?);
        // The reply goes to the request's own layout and group.
        let reply_topic = match Topics::new(self.topics.prefix(), self.topics.customer_id(), group)
            .and_then(|topics| topics.boot_reply(app_id, &request.serial))
        {
            Ok(topic) => topic,
            Err(e) => {
                return self.records.append(record.rejected(e.to_string()));
            }
        };

        let faults = self.faults.snapshot();
        let replies_to_send: Vec<(Vec<u8>, Option<u32>)> = match faults.boot_reply {
            BootReplyMode::Normal => {
                let token = self.tokens.issue(app_id, &request);
                record.token = Some(token);
                vec![(boot_reply_payload(token), Some(token))]
            }
            BootReplyMode::Malformed => {
                record.reason = Some("fault: malformed boot reply".into());
                MALFORMED_REPLIES
                    .iter()
                    .map(|p| (p.to_vec(), None))
                    .collect()
            }
            BootReplyMode::None => {
                record.reason = Some("fault: no boot reply".into());
                Vec::new()
            }
        };
        // No reply for a boot that is not stored: the device sends it
        // again, unacknowledged, and gets its token then.
        self.records.append(record)?;
        if replies_to_send.is_empty() {
            return Ok(());
        }

        let reply = BootReply {
            uplink: self.uplink.clone(),
            records: self.records.clone(),
            topic: reply_topic,
            app_id,
            serial: request.serial,
            fault: faults.boot_reply != BootReplyMode::Normal,
        };
        let delay = faults.boot_reply_delay;
        replies.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            for (payload, token) in replies_to_send {
                reply.send(payload, token).await;
            }
        });
        Ok(())
    }
}

/// The platform's alarm on the rate of boot messages: past `rate` in one
/// second, the customer is quarantined (PROTOCOL §3).
pub(crate) struct BootGuard {
    rate: u32,
    recent: std::sync::Mutex<std::collections::VecDeque<std::time::Instant>>,
}

impl BootGuard {
    pub(crate) fn new(rate: u32) -> BootGuard {
        BootGuard {
            rate,
            recent: Default::default(),
        }
    }

    /// Counts a boot message; returns how many came within the last
    /// second when that is over the rate.
    fn trips(&self) -> Option<usize> {
        let now = std::time::Instant::now();
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.push_back(now);
        while recent
            .front()
            .is_some_and(|&t| now.duration_since(t) >= Duration::from_secs(1))
        {
            recent.pop_front();
        }
        (recent.len() > self.rate as usize).then_some(recent.len())
    }
}

impl Cloud {
    /// Detaches the customer as the platform's alarm does: every
    /// connection closed and refused until restart. Recorded once.
    fn quarantine(&self, rate: u32, count: usize) {
        let Uplink::Broker(broker) = &self.uplink else {
            return;
        };
        if broker.is_quarantined() {
            return;
        }
        let closed = broker.quarantine();
        tracing::error!(
            count,
            rate,
            closed,
            "boot guard tripped: customer quarantined, every connection refused until restart"
        );
        let _ = self
            .records
            .append(Record::new(RecordKind::Rejected, "", 0).rejected(format!(
            "boot guard: {count} boot messages within 1 s, over {rate}/s: customer quarantined, \
                 {closed} connection(s) closed, every connection refused until restart"
        )));
    }
}

/// One reply to send, possibly later.
struct BootReply {
    uplink: Uplink,
    records: std::sync::Arc<RecordLog>,
    topic: String,
    app_id: u32,
    serial: String,
    fault: bool,
}

impl BootReply {
    async fn send(&self, payload: Vec<u8>, token: Option<u32>) {
        let mut record = Record::new(RecordKind::BootReply, self.topic.clone(), payload.len());
        record.app_id = Some(self.app_id);
        record.serial = Some(self.serial.clone());
        record.token = token;
        if self.fault {
            record.reason = Some("fault: malformed boot reply".into());
        }
        // Sent (or not) already: a refused record is only missing from
        // the book.
        let _ = match self
            .uplink
            .publish(self.topic.clone(), payload, Some(REPLY_LINGER))
            .await
        {
            Ok(()) => self.records.append(record),
            Err(e) => self
                .records
                .append(record.rejected(format!("could not send: {e}"))),
        };
    }
}
