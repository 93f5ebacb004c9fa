//! What an accepted payload adds to the data API's tables: the metrics or
//! events of telemetry (PROTOCOL §8, one device or a batch), the header of
//! a binary log (§5), the entries of a text-log batch (§12). Only payloads
//! that passed verification come here, so a field that is not as expected
//! is skipped rather than reported.

use std::time::SystemTime;

use serde_json::{json, Map, Value};
use ulogger_wire::LogHeader;

use super::tokens::DeviceIdentity;
use crate::store::{epoch_seconds, EventRow, LogRow, MetricRow, Rows};

/// The samples of a verified metrics (`list` = `"metrics"`) or events
/// payload (already decompressed JSON). A batch entry's `app_id` (a JSON
/// integer or a string of digits) overrides `app_id`; a sample without a
/// timestamp takes `received`.
pub(super) fn telemetry(
    list: &str,
    json: &Value,
    app_id: Option<u32>,
    received: SystemTime,
) -> Rows {
    let received = epoch_seconds(received);
    let mut rows = Rows::default();
    let devices: Vec<&Value> = match json.get("devices").and_then(Value::as_array) {
        Some(devices) => devices.iter().collect(),
        None => vec![json],
    };
    for device in devices {
        let Some(serial) = device.get("device_serial").and_then(Value::as_str) else {
            continue;
        };
        let app_id = match device.get("app_id") {
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Some(Value::String(s)) => s.parse().ok(),
            _ => app_id,
        };
        for sample in device
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ts = sample
                .get("timestamp")
                .and_then(Value::as_u64)
                .and_then(|t| i64::try_from(t).ok())
                .unwrap_or(received);
            if list == "events" {
                if let Some(event_type) = sample.get("type").and_then(Value::as_str) {
                    rows.events.push(EventRow {
                        app_id,
                        serial: serial.to_owned(),
                        event_type: event_type.to_owned(),
                        ts,
                    });
                }
            } else if let (Some(name), Some(Value::Number(value))) = (
                sample.get("name").and_then(Value::as_str),
                sample.get("value"),
            ) {
                rows.metrics.push(MetricRow {
                    app_id,
                    serial: serial.to_owned(),
                    name: name.to_owned(),
                    value: value.clone(),
                    ts,
                });
            }
        }
    }
    rows
}

/// An accepted binary log: one entry with its header's fields (those its
/// version has), the firmware its device registered with, and how far its
/// decoding got (`decoding`), dated by its arrival.
pub(super) fn binary_log(
    header: &LogHeader,
    app_id: u32,
    device: &DeviceIdentity,
    size: usize,
    received: SystemTime,
    decoding: Value,
) -> Rows {
    let serial = device.serial.as_str();
    let received_s = epoch_seconds(received);
    let mut item = Map::new();
    item.insert("type".into(), json!("binary"));
    item.insert("timestamp".into(), json!(received_s));
    item.insert("received".into(), json!(received_s));
    item.insert("application_id".into(), json!(app_id));
    item.insert("serial".into(), json!(serial));
    item.insert("version".into(), json!(header.version));
    item.insert("session_token".into(), json!(header.session_token));
    let optional = [
        ("sequence", header.sequence_number.map(u64::from)),
        ("anchor_tick", header.anchor_tick.map(u64::from)),
        ("tick_rate_hz", header.tick_rate_hz.map(u64::from)),
        ("epoch_time_us", header.epoch_time_us),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            item.insert(key.into(), json!(value));
        }
    }
    item.insert("used_bytes".into(), json!(header.used_bytes));
    item.insert("size".into(), json!(size));
    item.insert("device_type".into(), json!(device.device_type));
    item.insert("firmware_version".into(), json!(device.version));
    item.insert("git_hash".into(), json!(device.git_hash));
    item.insert("decoding".into(), decoding);
    Rows {
        logs: vec![LogRow {
            app_id: Some(app_id),
            serial: serial.to_owned(),
            ts: received_s as f64,
            item,
        }],
        ..Rows::default()
    }
}

/// The entries of an accepted text-log batch, each dated by its own `t`.
pub(super) fn text_logs(payload: &[u8], app_id: u32, serial: &str, sequence: u64) -> Rows {
    let text = String::from_utf8_lossy(payload);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    // The header, already read by the verifier.
    lines.next();
    let logs = lines
        .filter_map(|line| serde_json::from_str::<Map<String, Value>>(line).ok())
        .filter_map(|entry| {
            let t = entry.get("t").and_then(Value::as_f64)?;
            let mut item = Map::new();
            item.insert("type".into(), json!("text"));
            item.insert("timestamp".into(), entry.get("t")?.clone());
            item.insert("application_id".into(), json!(app_id));
            item.insert("serial".into(), json!(serial));
            item.insert("sequence".into(), json!(sequence));
            for key in ["t", "lv", "m"] {
                item.insert(key.into(), entry.get(key)?.clone());
            }
            Some(LogRow {
                app_id: Some(app_id),
                serial: serial.to_owned(),
                ts: t,
                item,
            })
        })
        .collect();
    Rows {
        logs,
        ..Rows::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn batch_entries_take_their_own_app_and_missing_timestamps_the_arrival() {
        let json = json!({"devices": [
            {"device_serial": "A", "metrics": [{"name": "n", "value": 3, "timestamp": 5}]},
            {"device_serial": "B", "app_id": "9", "metrics": [{"name": "n", "value": 0.5}]},
        ]});
        let received = UNIX_EPOCH + Duration::from_secs(100);
        let rows = telemetry("metrics", &json, Some(1), received);
        assert_eq!(rows.metrics.len(), 2);
        assert_eq!((rows.metrics[0].app_id, rows.metrics[0].ts), (Some(1), 5));
        assert_eq!(rows.metrics[0].value.as_u64(), Some(3));
        assert_eq!((rows.metrics[1].app_id, rows.metrics[1].ts), (Some(9), 100));
        assert_eq!(rows.metrics[1].value.as_f64(), Some(0.5));
    }

    #[test]
    fn text_entries_keep_their_fields() {
        let body = b"{\"sequence\":4,\"serial\":\"S\"}\n{\"t\":1.5,\"lv\":2,\"m\":\"hi\"}\n";
        let rows = text_logs(body, 3, "S", 4);
        assert_eq!(rows.logs.len(), 1);
        let item = Value::Object(rows.logs[0].item.clone());
        assert_eq!(item["m"], "hi");
        assert_eq!(item["sequence"], 4);
        assert_eq!(rows.logs[0].ts, 1.5);
    }
}
