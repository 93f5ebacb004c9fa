//! Text logs (PROTOCOL §12): newline-separated JSON, a header line naming
//! the device and the batch's `sequence`, then one line per entry. The
//! cloud drops a batch whose sequence it has seen for that device.

use serde_json::{Map, Value};

use super::{rows, Cloud};
use crate::broker::Message;
use crate::records::{NotStored, Record, RecordKind};

/// A batch that checked out: the device and its sequence number.
#[derive(Debug, PartialEq)]
struct Batch {
    serial: String,
    sequence: u64,
    entries: usize,
}

impl Cloud {
    pub(super) fn text_logs(&self, app_id: u32, message: &Message) -> Result<(), NotStored> {
        let mut record = Record::new(
            RecordKind::TextLogs,
            message.topic.clone(),
            message.payload.len(),
        );
        record.app_id = Some(app_id);
        let verdict = verify(&message.payload).and_then(|batch| {
            record.serial = Some(batch.serial.clone());
            record.entries = Some(batch.entries);
            let fresh = self
                .text_sequences
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert((app_id, batch.serial.clone(), batch.sequence));
            if fresh {
                Ok(batch)
            } else {
                Err(format!(
                    "duplicate of sequence {} from this device: dropped, as the platform does",
                    batch.sequence
                ))
            }
        });
        let label = record.serial.clone().unwrap_or_else(|| "unknown".into());
        let stored = self
            .store("logs", &label, "ndjson", &message.payload)
            .and_then(|file| {
                record.file = Some(file);
                match &verdict {
                    Ok(batch) => {
                        let entries = rows::text_logs(
                            &message.payload,
                            app_id,
                            &batch.serial,
                            batch.sequence,
                        );
                        self.records.append_with(record, &entries)
                    }
                    Err(reason) => self.records.append(record.rejected(reason.clone())),
                }
            });
        if let (Err(NotStored), Ok(batch)) = (stored, verdict) {
            // Not stored, so not seen: the batch sent again must not be
            // dropped as a duplicate.
            self.text_sequences
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&(app_id, batch.serial, batch.sequence));
        }
        stored
    }
}

/// Checks a text-log body line by line; the error names the line.
fn verify(payload: &[u8]) -> Result<Batch, String> {
    let text = std::str::from_utf8(payload).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or("empty body: no header line")?;
    let header = object(header).map_err(|e| format!("line 1 (header): {e}"))?;
    let sequence = header
        .get("sequence")
        .and_then(Value::as_u64)
        .ok_or("line 1 (header): \"sequence\" is not a non-negative integer")?;
    for key in ["device_type", "version", "git", "serial"] {
        if !header.get(key).is_some_and(Value::is_string) {
            return Err(format!("line 1 (header): \"{key}\" is not a string"));
        }
    }
    let serial = header
        .get("serial")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if serial.is_empty() {
        return Err("line 1 (header): \"serial\" is empty".into());
    }
    let mut entries = 0;
    for (index, line) in lines {
        let at = |e: String| format!("line {}: {e}", index + 1);
        let entry = object(line).map_err(at)?;
        if !entry.get("t").is_some_and(Value::is_number) {
            return Err(at("\"t\" is not a number (epoch seconds)".into()));
        }
        match entry.get("lv").and_then(Value::as_u64) {
            Some(1..=5) => {}
            _ => return Err(at("\"lv\" is not a level 1 to 5".into())),
        }
        if !entry.get("m").is_some_and(Value::is_string) {
            return Err(at("\"m\" is not a string".into()));
        }
        entries += 1;
    }
    Ok(Batch {
        serial,
        sequence,
        entries,
    })
}

fn object(line: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(line) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        r#"{"sequence": 7, "device_type": "gw", "version": "1.0", "git": "abc", "serial": "GW-1"}"#;

    #[test]
    fn a_valid_batch_names_its_device_and_sequence() {
        let body = format!(
            "{HEADER}\n{}\n{}\n",
            r#"{"t": 1700000000.5, "lv": 2, "m": "hello"}"#,
            r#"{"t": 1700000001, "lv": 5, "m": "bye"}"#
        );
        assert_eq!(
            verify(body.as_bytes()),
            Ok(Batch {
                serial: "GW-1".into(),
                sequence: 7,
                entries: 2
            })
        );
    }

    #[test]
    fn each_fault_names_its_line() {
        for (body, cause) in [
            (String::new(), "empty body"),
            ("[1]".to_owned(), "line 1 (header): not a JSON object"),
            (
                HEADER.replace("\"sequence\": 7", "\"sequence\": -1"),
                "\"sequence\"",
            ),
            (HEADER.replace("\"GW-1\"", "\"\""), "\"serial\" is empty"),
            (
                format!("{HEADER}\n{}", r#"{"t": 1, "lv": 0, "m": "x"}"#),
                "line 2: \"lv\" is not a level 1 to 5",
            ),
            (
                format!("{HEADER}\n{}", r#"{"t": "now", "lv": 1, "m": "x"}"#),
                "line 2: \"t\"",
            ),
            (format!("{HEADER}\nnope"), "line 2: not JSON"),
        ] {
            let err = verify(body.as_bytes()).unwrap_err();
            assert!(err.contains(cause), "{err} does not contain {cause}");
        }
    }
}
