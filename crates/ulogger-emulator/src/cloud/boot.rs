//! Boot registration: a device asks for a session token, the cloud answers
//! on the device's reply topic (PROTOCOL §3), unless a fault says otherwise.

use tokio::task::JoinSet;
use ulogger_cloud::wire::{boot_reply_payload, BootRequest};

use super::{Cloud, Uplink};
use crate::broker::Message;
use crate::faults::BootReplyMode;
use crate::records::{Record, RecordKind, RecordLog};

/// What the `Malformed` fault sends: an object without `token`, then bytes
/// that are not JSON at all. Neither is an answer.
const MALFORMED_REPLIES: [&[u8]; 2] = [br#"{"tok":1}"#, b"\x00not json{"];

impl Cloud {
    pub(super) fn boot(&self, app_id: u32, message: &Message, replies: &mut JoinSet<()>) {
        let mut record = Record::new(
            RecordKind::Boot,
            message.topic.clone(),
            message.payload.len(),
        );
        record.app_id = Some(app_id);
        let request = match BootRequest::parse(&message.payload) {
            Ok(request) => request,
            Err(e) => {
                record.file = self.store("boot", &format!("app{app_id}"), "json", &message.payload);
                self.records.append(record.rejected(e.to_string()));
                return;
            }
        };
        record.serial = Some(request.serial.clone());
        record.file = self.store("boot", &request.serial, "json", &message.payload);
        let reply_topic = match self.topics.boot_reply(app_id, &request.serial) {
            Ok(topic) => topic,
            Err(e) => {
                self.records.append(record.rejected(e.to_string()));
                return;
            }
        };

        let faults = self.faults.snapshot();
        let replies_to_send: Vec<(Vec<u8>, Option<u32>)> = match faults.boot_reply {
            BootReplyMode::Normal => {
                let token = self.tokens.issue(app_id, &request.serial, &request.git);
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
        self.records.append(record);
        if replies_to_send.is_empty() {
            return;
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
        match self.uplink.publish(self.topic.clone(), payload).await {
            Ok(()) => self.records.append(record),
            Err(e) => self
                .records
                .append(record.rejected(format!("could not send: {e}"))),
        }
    }
}
