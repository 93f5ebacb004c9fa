//! Firmware ELF upload requests (PROTOCOL §11): the cloud answers each
//! on `upload/v0/{C}/{upload_id}` with a one-time URL on the emulator's
//! HTTP port, where the ELF is then PUT (see `http::elf`).

use std::time::Duration;

use ulogger_wire::{elf_upload_reply_payload, ElfUploadRequest, Topics};

use super::Cloud;
use crate::broker::Message;
use crate::records::{NotStored, Record, RecordKind};

/// How long an answer that found no subscriber waits for one.
const REPLY_LINGER: Duration = Duration::from_secs(10);

impl Cloud {
    /// A request on `upload/v0/firmware/{levels}`. Whatever is wrong with
    /// it is recorded and left unanswered, as the platform's function
    /// drops what it cannot match (the requester times out).
    pub(super) async fn elf_upload_request(
        &self,
        levels: &str,
        message: &Message,
    ) -> Result<(), NotStored> {
        let mut record = Record::new(
            RecordKind::ElfUploadRequest,
            message.topic.clone(),
            message.payload.len(),
        );
        let customer = self.topics.customer_id();
        let Some((topic_customer, topic_device_type)) = levels.split_once('/') else {
            return self.records.append(record.rejected(format!(
                "{}: expected upload/v0/firmware/{{customer}}/{{device_type}}",
                message.topic
            )));
        };
        record.file = Some(self.store("upload", topic_device_type, "json", &message.payload)?);
        if topic_customer != customer.to_string() {
            return self.records.append(record.rejected(format!(
                "{}: customer id {topic_customer:?} is not this cloud's customer {customer}",
                message.topic
            )));
        }
        let request = match ElfUploadRequest::parse(&message.payload) {
            Ok(request) => request,
            Err(e) => return self.records.append(record.rejected(e.to_string())),
        };
        record.app_id = Some(request.application_id);
        if request.customer_id != customer {
            return self.records.append(record.rejected(format!(
                "the request names customer {}, its topic customer {customer}",
                request.customer_id
            )));
        }
        if request.device_type != topic_device_type {
            return self.records.append(record.rejected(format!(
                "the request names device type {:?}, its topic {topic_device_type:?}",
                request.device_type
            )));
        }
        if self.faults.take_unanswered_request() {
            record.reason = Some("fault: upload request left unanswered".into());
            return self.records.append(record);
        }
        let reply_topic = match Topics::new(self.topics.prefix(), customer, None)
            .and_then(|topics| topics.upload_reply(request.upload_id))
        {
            Ok(topic) => topic,
            Err(e) => return self.records.append(record.rejected(e.to_string())),
        };
        let upload_id = request.upload_id;
        let url = self.elfs.issue(customer, request);
        // Recorded before it is answered: an answer always has its record.
        self.records.append(record)?;
        let payload = elf_upload_reply_payload(upload_id, &url);
        if let Err(e) = self
            .uplink
            .publish(reply_topic, payload, Some(REPLY_LINGER))
            .await
        {
            tracing::warn!(error = %e, upload_id, "could not send the upload URL");
        }
        Ok(())
    }
}
