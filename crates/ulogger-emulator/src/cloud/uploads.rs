//! What devices upload: binary logs (verified: header, checksum, a token
//! the cloud issued for that application), core dumps, metrics, events.

use ulogger_cloud::wire::{validate_checksum, LogHeader};

use super::Cloud;
use crate::broker::Message;
use crate::records::{Record, RecordKind};

impl Cloud {
    pub(super) fn binary_log(&self, app_id: u32, message: &Message) {
        let payload = &message.payload;
        let mut record = Record::new(RecordKind::BinaryLog, message.topic.clone(), payload.len());
        record.app_id = Some(app_id);
        let verdict = match validate_checksum(payload) {
            Ok(header) => {
                record.token = Some(header.session_token);
                match self.tokens.serial_for(app_id, header.session_token) {
                    Some(serial) => {
                        record.serial = Some(serial);
                        Ok(())
                    }
                    None => Err(format!(
                        "unknown session token {} for application {app_id}",
                        header.session_token
                    )),
                }
            }
            Err(e) => {
                // Name the token when the header itself is readable.
                record.token = LogHeader::parse(payload).ok().map(|h| h.session_token);
                Err(e.to_string())
            }
        };
        let label = match &record.serial {
            Some(serial) => format!("{serial}-app{app_id}"),
            None => format!("unknown-app{app_id}"),
        };
        record.file = self.store("binlog", &label, "bin", payload);
        let record = match verdict {
            Ok(()) => record,
            Err(reason) => record.rejected(reason),
        };
        self.records.append(record);
    }

    pub(super) fn core_dump(&self, message: &Message) {
        let mut record = Record::new(
            RecordKind::CoreDump,
            message.topic.clone(),
            message.payload.len(),
        );
        record.file = self.store("core-dump", "dump", "bin", &message.payload);
        self.records.append(record);
    }

    /// Metrics and events are stored as received; their content is not
    /// verified yet. The record names the device when the payload is plain
    /// JSON with a `device_serial`.
    pub(super) fn telemetry(&self, kind: RecordKind, subdir: &str, app_id: u32, message: &Message) {
        let payload = &message.payload;
        let mut record = Record::new(kind, message.topic.clone(), payload.len());
        record.app_id = Some(app_id);
        record.serial = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("device_serial")?.as_str().map(str::to_string));
        let gzip = payload.starts_with(&[0x1f, 0x8b]);
        let label = record
            .serial
            .clone()
            .unwrap_or_else(|| format!("app{app_id}"));
        record.file = self.store(
            subdir,
            &label,
            if gzip { "json.gz" } else { "json" },
            payload,
        );
        self.records.append(record);
    }
}
