//! What devices upload: binary logs (verified: header, checksum, a token
//! the cloud issued for that application), core dumps, metrics, events.

use std::io::Read as _;

use serde_json::{Map, Value};
use ulogger_wire::{validate_checksum, LogHeader};

use super::{decoding, rows, Cloud};
use crate::broker::Message;
use crate::records::{NotStored, Record, RecordKind};
use crate::store::BinaryLogRow;

impl Cloud {
    /// A binary log: verified (header, checksum, a token this cloud issued
    /// for the application), stored, and decoded with its firmware's ELF
    /// when that is here (see `decoding`): the record, its entry and its
    /// decoded records go in one transaction.
    pub(super) fn binary_log(&self, app_id: u32, message: &Message) -> Result<(), NotStored> {
        let payload = &message.payload;
        let mut record = Record::new(RecordKind::BinaryLog, message.topic.clone(), payload.len());
        record.app_id = Some(app_id);
        let verdict = match validate_checksum(payload) {
            Ok(header) => {
                record.token = Some(header.session_token);
                match self.tokens.identity_for(app_id, header.session_token) {
                    Some(identity) => {
                        record.serial = Some(identity.serial.clone());
                        Ok((header, identity))
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
        let file = self.store("binlog", &label, "bin", payload)?;
        record.file = Some(file.clone());
        let (header, identity) = match verdict {
            Ok(known) => known,
            Err(reason) => return self.records.append(record.rejected(reason)),
        };
        let file = file.to_string_lossy().into_owned();
        let received = decoding::received_seconds(record.time);
        // Held until the log is stored: an ELF stored meanwhile either is
        // found here or finds this log waiting (see `Decoding::arrival`).
        let _arrival = self.decoding.arrival();
        let outcome = self
            .decoding
            .decode(payload, &identity, app_id, &file, received);
        let mut rows = rows::binary_log(
            &header,
            app_id,
            &identity,
            payload.len(),
            record.time,
            outcome.decoding,
        );
        rows.binary_log = Some(BinaryLogRow {
            app_id,
            serial: identity.serial,
            device_type: identity.device_type,
            version: identity.version,
            git_hash: identity.git_hash,
            file,
            received,
            state: outcome.state,
        });
        rows.logs.extend(outcome.records);
        self.records.append_with(record, &rows)
    }

    pub(super) fn core_dump(&self, message: &Message) -> Result<(), NotStored> {
        let mut record = Record::new(
            RecordKind::CoreDump,
            message.topic.clone(),
            message.payload.len(),
        );
        record.file = Some(self.store("core-dump", "dump", "bin", &message.payload)?);
        self.records.append(record)
    }

    /// Metrics and events are verified against PROTOCOL §8 (see
    /// [`verify_telemetry`]) and stored as received. The record names the
    /// device (the first one of a batch) and whether the payload was
    /// gzip-compressed.
    pub(super) fn telemetry(
        &self,
        kind: RecordKind,
        subdir: &str,
        app_id: u32,
        message: &Message,
    ) -> Result<(), NotStored> {
        let list = if kind == RecordKind::Events {
            "events"
        } else {
            "metrics"
        };
        let checked = verify_telemetry(list, &message.payload);
        // A payload that breaks §8 is recorded (and acknowledged, as the
        // platform's broker does); only the store's refusal holds it back.
        self.record_telemetry(
            kind,
            subdir,
            message.topic.clone(),
            Some(app_id),
            &message.payload,
            checked,
        )
        .map(|_verdict| ())
    }

    /// A metrics or events body posted to the HTTP endpoint `path`:
    /// verified like an MQTT payload, plus the body's `"app_id"` and
    /// `"group_id"` (strings of digits; any group, as over MQTT) and a `Content-Encoding: gzip` header that agrees
    /// with the body. Recorded like MQTT telemetry, with `POST {path}` as
    /// the record's topic. Returns the verdict, once stored.
    pub(crate) fn http_telemetry(
        &self,
        kind: RecordKind,
        path: &str,
        payload: &[u8],
        gzip_header: bool,
    ) -> Result<Result<(), String>, NotStored> {
        let (list, subdir) = if kind == RecordKind::Events {
            ("events", "events")
        } else {
            ("metrics", "metrics")
        };
        let mut checked = verify_telemetry(list, payload);
        let ids = http_ids(payload);
        if gzip_header != checked.compressed {
            checked.verdict = Err(if gzip_header {
                "Content-Encoding: gzip, but the body is not gzip".to_owned()
            } else {
                "the body is gzip, but Content-Encoding: gzip is missing".to_owned()
            });
        } else if checked.verdict.is_ok() {
            if let Err(reason) = &ids {
                checked.verdict = Err(reason.clone());
            }
        }
        let app_id = ids.ok();
        self.record_telemetry(
            kind,
            subdir,
            format!("POST {path}"),
            app_id,
            payload,
            checked,
        )
    }

    /// Stores a telemetry payload and appends its record, with the samples
    /// of an accepted one for the data API; returns the verdict, once
    /// stored. The record names the device (the first one of a batch)
    /// and whether the payload was gzip-compressed.
    fn record_telemetry(
        &self,
        kind: RecordKind,
        subdir: &str,
        topic: String,
        app_id: Option<u32>,
        payload: &[u8],
        checked: CheckedTelemetry,
    ) -> Result<Result<(), String>, NotStored> {
        let mut record = Record::new(kind, topic, payload.len());
        record.app_id = app_id;
        record.serial = checked.serial;
        record.compressed = Some(checked.compressed);
        let label = record.serial.clone().unwrap_or_else(|| match app_id {
            Some(app_id) => format!("app{app_id}"),
            None => "unknown".to_owned(),
        });
        let ext = if checked.compressed {
            "json.gz"
        } else {
            "json"
        };
        record.file = Some(self.store(subdir, &label, ext, payload)?);
        match &checked.verdict {
            Ok(()) => {
                let list = if kind == RecordKind::Events {
                    "events"
                } else {
                    "metrics"
                };
                let samples = decode(payload)
                    .map(|json| rows::telemetry(list, &json, app_id, record.time))
                    .unwrap_or_default();
                self.records.append_with(record, &samples)?;
            }
            Err(reason) => self.records.append(record.rejected(reason.clone()))?,
        }
        Ok(checked.verdict)
    }
}

/// The JSON of a telemetry payload, decompressed when it is gzip.
fn decode(payload: &[u8]) -> Result<Value, String> {
    let json = if payload.starts_with(&[0x1f, 0x8b]) {
        gunzip(payload)?
    } else {
        payload.to_vec()
    };
    serde_json::from_slice(&json).map_err(|e| format!("not JSON: {e}"))
}

/// The ids the HTTP fallback adds to a body: `"app_id"` and `"group_id"`
/// as strings of decimal digits (PROTOCOL §8). Returns the app id.
/// Any group is taken, as MQTT topics of any group are routed.
fn http_ids(payload: &[u8]) -> Result<u32, String> {
    let value = decode(payload)?;
    let id = |key: &str| -> Result<u32, String> {
        match value.get(key) {
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse::<u32>()
                .map_err(|_| format!("{key} {s:?} is not a 32-bit id")),
            Some(Value::String(s)) => Err(format!("{key} {s:?} is not a string of digits")),
            Some(other) => Err(format!(
                "{key} {other} is not a string (the HTTP API takes ids as strings)"
            )),
            None => Err(format!(
                "{key} is missing (the HTTP API needs it in the body)"
            )),
        }
    };
    let app_id = id("app_id")?;
    id("group_id")?;
    Ok(app_id)
}

/// Largest decompressed telemetry payload accepted, in bytes: a small
/// gzip bomb must not take the emulator's memory.
pub(crate) const MAX_DECOMPRESSED: u64 = 8 * 1024 * 1024;

/// What the emulator made of a metrics or events payload.
#[derive(Debug, PartialEq)]
pub(crate) struct CheckedTelemetry {
    /// Whether it started with the gzip magic bytes (1f 8b).
    pub compressed: bool,
    /// The device serial, the first device's for a batch, when readable.
    pub serial: Option<String>,
    /// Ok, or what is wrong.
    pub verdict: Result<(), String>,
}

/// Checks a metrics (`list` = `"metrics"`) or events (`"events"`) payload
/// against PROTOCOL §8, on its own terms (not with the client library's
/// builder, so that a bug there cannot hide here):
///
/// - gzip when it starts with 1f 8b, decompressed up to
///   [`MAX_DECOMPRESSED`] bytes;
/// - a JSON object, either one device (`device_serial` + list) or a batch
///   (`devices`: a non-empty array of such objects);
/// - every serial a non-empty string, every list a non-empty array;
/// - a metric: `name` a non-empty string, `value` a finite number; an
///   event: `type` a non-empty string; `timestamp`, when present, a
///   non-negative integer (epoch seconds);
/// - a batch entry's `app_id`, when present, a u32 as a JSON integer or a
///   string of decimal digits (the HTTP fallback sends ids as strings).
pub(crate) fn verify_telemetry(list: &str, payload: &[u8]) -> CheckedTelemetry {
    let compressed = payload.starts_with(&[0x1f, 0x8b]);
    let mut checked = CheckedTelemetry {
        compressed,
        serial: None,
        verdict: Ok(()),
    };
    let json = if compressed {
        match gunzip(payload) {
            Ok(json) => json,
            Err(reason) => {
                checked.verdict = Err(reason);
                return checked;
            }
        }
    } else {
        payload.to_vec()
    };
    let value: Value = match serde_json::from_slice(&json) {
        Ok(value) => value,
        Err(e) => {
            checked.verdict = Err(format!("not JSON: {e}"));
            return checked;
        }
    };
    let Some(object) = value.as_object() else {
        checked.verdict = Err("the payload is not a JSON object".to_owned());
        return checked;
    };
    checked.verdict = match object.get("devices") {
        Some(devices) => {
            let first = devices
                .as_array()
                .and_then(|d| d.first())
                .and_then(|d| d.get("device_serial"))
                .and_then(Value::as_str);
            checked.serial = first.map(str::to_owned);
            verify_batch(list, devices)
        }
        None => {
            checked.serial = object
                .get("device_serial")
                .and_then(Value::as_str)
                .map(str::to_owned);
            verify_device(list, object, "").map(|_| ())
        }
    };
    checked
}

fn gunzip(payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(payload)
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut json)
        .map_err(|e| format!("gzip payload does not decompress: {e}"))?;
    if json.len() as u64 > MAX_DECOMPRESSED {
        return Err(format!(
            "gzip payload decompresses to more than {MAX_DECOMPRESSED} bytes"
        ));
    }
    Ok(json)
}

fn verify_batch(list: &str, devices: &Value) -> Result<(), String> {
    let devices = devices.as_array().ok_or("\"devices\" is not an array")?;
    if devices.is_empty() {
        return Err("\"devices\" is empty".to_owned());
    }
    for (i, device) in devices.iter().enumerate() {
        let at = format!("devices[{i}]");
        let entry = device
            .as_object()
            .ok_or_else(|| format!("{at} is not an object"))?;
        verify_device(list, entry, &format!("{at}."))?;
        if let Some(app) = entry.get("app_id") {
            let valid = match app {
                Value::Number(n) => n.as_u64().is_some_and(|n| u32::try_from(n).is_ok()),
                Value::String(s) => {
                    !s.is_empty()
                        && s.bytes().all(|b| b.is_ascii_digit())
                        && s.parse::<u32>().is_ok()
                }
                _ => false,
            };
            if !valid {
                return Err(format!("{at}.app_id {app} is not an application id"));
            }
        }
    }
    Ok(())
}

fn verify_device(list: &str, entry: &Map<String, Value>, at: &str) -> Result<(), String> {
    match entry.get("device_serial") {
        Some(Value::String(s)) if !s.is_empty() => {}
        Some(Value::String(_)) => return Err(format!("{at}device_serial is empty")),
        Some(other) => return Err(format!("{at}device_serial {other} is not a string")),
        None => return Err(format!("{at}device_serial is missing")),
    }
    let samples = match entry.get(list) {
        Some(Value::Array(samples)) if !samples.is_empty() => samples,
        Some(Value::Array(_)) => return Err(format!("{at}{list} is empty")),
        Some(_) => return Err(format!("{at}{list} is not an array")),
        None => return Err(format!("{at}{list} is missing")),
    };
    let name_key = if list == "events" { "type" } else { "name" };
    for (i, sample) in samples.iter().enumerate() {
        let here = format!("{at}{list}[{i}]");
        let sample = sample
            .as_object()
            .ok_or_else(|| format!("{here} is not an object"))?;
        match sample.get(name_key) {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(Value::String(_)) => return Err(format!("{here}.{name_key} is empty")),
            Some(other) => return Err(format!("{here}.{name_key} {other} is not a string")),
            None => return Err(format!("{here}.{name_key} is missing")),
        }
        if list != "events" {
            match sample.get("value") {
                Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => {}
                Some(other) => return Err(format!("{here}.value {other} is not a finite number")),
                None => return Err(format!("{here}.value is missing")),
            }
        }
        if let Some(t) = sample.get("timestamp") {
            if t.as_u64().is_none() {
                return Err(format!(
                    "{here}.timestamp {t} is not a non-negative integer (epoch seconds)"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn reason(list: &str, payload: &str) -> String {
        verify_telemetry(list, payload.as_bytes())
            .verdict
            .unwrap_err()
    }

    #[test]
    fn well_formed_single_and_batch_payloads_pass() {
        let single = br#"{"device_serial":"SN1","metrics":[{"name":"t","value":2.5,"timestamp":7},{"name":"heartbeat","value":1}]}"#;
        let c = verify_telemetry("metrics", single);
        assert_eq!(c.verdict, Ok(()));
        assert_eq!(c.serial.as_deref(), Some("SN1"));
        assert!(!c.compressed);

        let batch = br#"{"devices":[{"device_serial":"A","events":[{"type":"boot"}]},{"device_serial":"B","events":[{"type":"x","timestamp":1}],"app_id":"12"},{"device_serial":"C","events":[{"type":"y"}],"app_id":4294967295}]}"#;
        let c = verify_telemetry("events", &gz(batch));
        assert_eq!(c.verdict, Ok(()));
        assert_eq!(c.serial.as_deref(), Some("A"));
        assert!(c.compressed);
    }

    #[test]
    fn each_schema_breach_is_named() {
        let cases = [
            ("metrics", "nope", "not JSON"),
            ("metrics", "[1]", "not a JSON object"),
            (
                "metrics",
                r#"{"metrics":[{"name":"a","value":1}]}"#,
                "device_serial is missing",
            ),
            (
                "metrics",
                r#"{"device_serial":"","metrics":[{"name":"a","value":1}]}"#,
                "device_serial is empty",
            ),
            (
                "metrics",
                r#"{"device_serial":5,"metrics":[{"name":"a","value":1}]}"#,
                "device_serial 5 is not a string",
            ),
            (
                "metrics",
                r#"{"device_serial":"S","metrics":[]}"#,
                "metrics is empty",
            ),
            (
                "metrics",
                r#"{"device_serial":"S","events":[{"type":"a"}]}"#,
                "metrics is missing",
            ),
            (
                "metrics",
                r#"{"device_serial":"S","metrics":[{"name":"a"}]}"#,
                "metrics[0].value is missing",
            ),
            (
                "metrics",
                r#"{"device_serial":"S","metrics":[{"name":"a","value":"1"}]}"#,
                "metrics[0].value \"1\" is not a finite number",
            ),
            (
                "metrics",
                r#"{"device_serial":"S","metrics":[{"name":"a","value":1e999}]}"#,
                "not JSON",
            ),
            (
                "metrics",
                r#"{"device_serial":"S","metrics":[{"value":1}]}"#,
                "metrics[0].name is missing",
            ),
            (
                "metrics",
                r#"{"device_serial":"S","metrics":[{"name":"a","value":1,"timestamp":-1}]}"#,
                "metrics[0].timestamp -1",
            ),
            (
                "metrics",
                r#"{"device_serial":"S","metrics":[{"name":"a","value":1,"timestamp":1.5}]}"#,
                "timestamp 1.5",
            ),
            (
                "events",
                r#"{"device_serial":"S","events":[{"type":""}]}"#,
                "events[0].type is empty",
            ),
            (
                "events",
                r#"{"device_serial":"S","events":[{"name":"a"}]}"#,
                "events[0].type is missing",
            ),
            ("events", r#"{"devices":[]}"#, "\"devices\" is empty"),
            ("events", r#"{"devices":{}}"#, "not an array"),
            (
                "events",
                r#"{"devices":[{"device_serial":"A","events":[{"type":"a"}]},{"device_serial":"","events":[{"type":"a"}]}]}"#,
                "devices[1].device_serial is empty",
            ),
            (
                "events",
                r#"{"devices":[{"device_serial":"A","events":[{"type":"a"}],"app_id":-3}]}"#,
                "devices[0].app_id -3",
            ),
            (
                "events",
                r#"{"devices":[{"device_serial":"A","events":[{"type":"a"}],"app_id":"0x1"}]}"#,
                "devices[0].app_id",
            ),
        ];
        for (list, payload, want) in cases {
            let got = reason(list, payload);
            assert!(got.contains(want), "{payload}: {got:?} lacks {want:?}");
        }
    }

    #[test]
    fn gzip_is_detected_and_bounded() {
        let broken = [0x1f, 0x8b, 0, 1, 2];
        let c = verify_telemetry("metrics", &broken);
        assert!(c.compressed);
        assert!(c.verdict.unwrap_err().contains("does not decompress"));

        let bomb = gz(&vec![b' '; usize::try_from(MAX_DECOMPRESSED).unwrap() + 10]);
        let c = verify_telemetry("metrics", &bomb);
        assert!(c.verdict.unwrap_err().contains("more than"));
    }

    proptest::proptest! {
        /// Two independent readings of §8 agree on what the client builds.
        #[test]
        fn what_the_client_builds_passes(
            serials in proptest::collection::vec("[A-Za-z0-9_.:-]{1,12}", 1..5),
            values in proptest::collection::vec(-1e300f64..1e300, 1..30),
            always in proptest::bool::ANY,
        ) {
            use ulogger_wire::{metrics_batch_payload, Compression, DeviceMetrics, Metric};
            let compression = if always { Compression::Always } else { Compression::Auto };
            let devices: Vec<_> = serials.iter().enumerate().map(|(i, s)| {
                let metrics = values.iter().map(|v| Metric::new(format!("m{i}"), *v).at(1)).collect();
                DeviceMetrics::new(s.clone(), metrics).app_id(u32::try_from(i).unwrap())
            }).collect();
            let payload = metrics_batch_payload(&devices, compression).unwrap();
            let checked = verify_telemetry("metrics", &payload.bytes);
            proptest::prop_assert_eq!(checked.verdict, Ok(()));
            proptest::prop_assert_eq!(checked.compressed, payload.compressed);
            proptest::prop_assert_eq!(checked.serial.as_deref(), Some(serials[0].as_str()));
        }

        #[test]
        fn any_bytes_get_a_verdict_without_panicking(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            gzip in proptest::bool::ANY,
        ) {
            let payload = if gzip { gz(&bytes) } else { bytes };
            let _ = verify_telemetry("events", &payload);
        }
    }
}
