//! Batch files: many devices' metrics or events in the PROTOCOL §8 batch
//! shape, `{"devices": [{"device_serial": S, "metrics": [...], "app_id"?: A}]}`
//! (`"events"` alike), read from a file or standard input (`-`).
//!
//! Every entry is checked here, so that a mistake is reported with its
//! place in the file (`devices[2].metrics`) before anything is sent.

use std::path::Path;

use serde::Deserialize;
use ulogger_cloud::wire::{
    validate_serial, DeviceEvents, DeviceMetrics, Event, Metric, MetricValue,
};

use crate::files;

/// A batch file of metrics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsFile {
    devices: Vec<MetricsEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsEntry {
    device_serial: String,
    metrics: Vec<MetricSample>,
    #[serde(default)]
    app_id: Option<AppId>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricSample {
    name: String,
    /// As written: an integer stays one.
    value: serde_json::Number,
    #[serde(default)]
    timestamp: Option<Timestamp>,
}

/// A timestamp in seconds since the epoch: whole, or with a fraction as
/// Python's `time.time()` gives it (rounded down, said once).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Timestamp {
    Whole(u64),
    Fraction(f64),
}

impl Timestamp {
    fn seconds(&self, at: &str) -> Result<u64, String> {
        match *self {
            Timestamp::Whole(t) => Ok(t),
            Timestamp::Fraction(t) if (0.0..1.8e19).contains(&t) => {
                if t.fract() != 0.0 {
                    note_rounded();
                }
                // In range and not negative, checked just above.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok(t.floor() as u64)
            }
            Timestamp::Fraction(t) => Err(format!(
                "{at}.timestamp {t} is not seconds since the Unix epoch"
            )),
        }
    }
}

/// Says once per run that fractional timestamps were rounded down: the
/// platform takes whole seconds.
fn note_rounded() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        eprintln!(
            "note: timestamps with a fraction of a second were rounded down to whole seconds"
        );
    });
}

fn metric_value(number: &serde_json::Number, at: &str) -> Result<MetricValue, String> {
    if let Some(n) = number.as_i64() {
        return Ok(MetricValue::Int(n));
    }
    if let Some(n) = number.as_u64() {
        return Ok(MetricValue::from(n));
    }
    match number.as_f64() {
        Some(x) if x.is_finite() => Ok(MetricValue::Float(x)),
        _ => Err(format!("{at}.value {number} is not a finite number")),
    }
}

/// A batch file of events.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsFile {
    devices: Vec<EventsEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsEntry {
    device_serial: String,
    events: Vec<EventSample>,
    #[serde(default)]
    app_id: Option<AppId>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventSample {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    timestamp: Option<Timestamp>,
}

/// An application id as a JSON number or, as the HTTP API writes ids, a
/// string of digits.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AppId {
    Number(u32),
    Text(String),
}

impl AppId {
    fn get(&self, at: &str) -> Result<u32, String> {
        match self {
            AppId::Number(n) => Ok(*n),
            AppId::Text(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
                text.parse()
                    .map_err(|_| format!("{at}.app_id {text:?} is over {}", u32::MAX))
            }
            AppId::Text(text) => Err(format!("{at}.app_id {text:?} is not an application id")),
        }
    }
}

/// The most a batch file may hold. Its message must compress to at most
/// 128 KiB; JSON telemetry compresses some tenfold, so this is far past any
/// batch that could be sent, and only a wrong path or input reaches it.
const BATCH_FILE_LIMIT: usize = 16 * 1024 * 1024;

/// The bytes of `path`, or of standard input for `-`.
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    if path == Path::new("-") {
        return files::read_to_limit(std::io::stdin(), 0, BATCH_FILE_LIMIT, "a batch file").map_err(
            |e| match e {
                files::ReadError::Io(e) => {
                    format!("cannot read the batch from standard input: {e}")
                }
                files::ReadError::TooLarge { .. } => format!(
                    "the batch on standard input is more than a batch file may be ({BATCH_FILE_LIMIT} bytes)"
                ),
            },
        );
    }
    files::read_limited(path, BATCH_FILE_LIMIT, "a batch file").map_err(|e| match e {
        files::ReadError::Io(e) => format!("cannot read the batch file {}: {e}", path.display()),
        too_large => format!("the batch file {}: {too_large}", path.display()),
    })
}

/// The devices of a metrics batch file's contents.
pub fn metrics(bytes: &[u8]) -> Result<Vec<DeviceMetrics>, String> {
    let file: MetricsFile = parse(bytes, "metrics")?;
    check_devices(file.devices.len())?;
    file.devices
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let at = format!("devices[{i}]");
            check_entry(&at, &entry.device_serial, entry.metrics.len(), "metrics")?;
            let mut metrics = Vec::with_capacity(entry.metrics.len());
            for (j, sample) in entry.metrics.into_iter().enumerate() {
                if sample.name.is_empty() {
                    return Err(format!("{at}.metrics[{j}].name is empty"));
                }
                let here = format!("{at}.metrics[{j}]");
                let metric = Metric::new(sample.name, metric_value(&sample.value, &here)?);
                metrics.push(match &sample.timestamp {
                    Some(t) => metric.at(t.seconds(&here)?),
                    None => metric,
                });
            }
            let device = DeviceMetrics::new(entry.device_serial, metrics);
            Ok(match entry.app_id {
                Some(app) => device.app_id(app.get(&at)?),
                None => device,
            })
        })
        .collect()
}

/// The devices of an events batch file's contents.
pub fn events(bytes: &[u8]) -> Result<Vec<DeviceEvents>, String> {
    let file: EventsFile = parse(bytes, "events")?;
    check_devices(file.devices.len())?;
    file.devices
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let at = format!("devices[{i}]");
            check_entry(&at, &entry.device_serial, entry.events.len(), "events")?;
            let mut events = Vec::with_capacity(entry.events.len());
            for (j, sample) in entry.events.into_iter().enumerate() {
                if sample.kind.is_empty() {
                    return Err(format!("{at}.events[{j}].type is empty"));
                }
                let event = Event::new(sample.kind);
                events.push(match &sample.timestamp {
                    Some(t) => event.at(t.seconds(&format!("{at}.events[{j}]"))?),
                    None => event,
                });
            }
            let device = DeviceEvents::new(entry.device_serial, events);
            Ok(match entry.app_id {
                Some(app) => device.app_id(app.get(&at)?),
                None => device,
            })
        })
        .collect()
}

fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8], list: &str) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "{e} (expected {{\"devices\": [{{\"device_serial\": ..., \"{list}\": [...], \"app_id\"?: ...}}]}})"
        )
    })
}

fn check_devices(count: usize) -> Result<(), String> {
    if count == 0 {
        return Err("\"devices\" is empty: there is nothing to send".to_owned());
    }
    Ok(())
}

fn check_entry(at: &str, serial: &str, samples: usize, list: &str) -> Result<(), String> {
    validate_serial(serial).map_err(|e| format!("{at}.device_serial {serial:?}: {e}"))?;
    if samples == 0 {
        return Err(format!("{at}.{list} is empty (device {serial:?})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metrics_batch_is_read_with_its_app_id_overrides() {
        let devices = metrics(
            br#"{"devices": [
                {"device_serial": "A", "metrics": [{"name": "t", "value": 1.5, "timestamp": 9}]},
                {"device_serial": "B", "metrics": [{"name": "u", "value": -2}], "app_id": 12},
                {"device_serial": "C", "metrics": [{"name": "v", "value": 0}], "app_id": "13"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(devices.len(), 3);
        assert_eq!(devices[0].metrics[0], Metric::new("t", 1.5).at(9));
        // An integer stays one.
        assert_eq!(devices[1].metrics[0], Metric::new("u", -2));
        assert_eq!(devices[0].app_id, None);
        assert_eq!(devices[1].app_id, Some(12));
        assert_eq!(devices[2].app_id, Some(13));
        let devices =
            events(br#"{"devices": [{"device_serial": "A", "events": [{"type": "boot"}]}]}"#)
                .unwrap();
        assert_eq!(devices[0].events, vec![Event::new("boot")]);
    }

    #[test]
    fn python_float_timestamps_are_taken_rounded_down() {
        let devices = metrics(
            br#"{"devices": [{"device_serial": "A", "metrics": [{"name": "t", "value": 1, "timestamp": 1700000000.987}]}]}"#,
        )
        .unwrap();
        assert_eq!(devices[0].metrics[0].timestamp, Some(1_700_000_000));
        let devices = events(
            br#"{"devices": [{"device_serial": "A", "events": [{"type": "boot", "timestamp": 1700000001.5}]}]}"#,
        )
        .unwrap();
        assert_eq!(devices[0].events[0].timestamp, Some(1_700_000_001));
    }

    #[test]
    fn each_mistake_names_its_place() {
        for (text, want) in [
            (r#"{"devices": []}"#, "\"devices\" is empty"),
            (
                r#"{"devices": [{"device_serial": "A", "metrics": []}]}"#,
                "devices[0].metrics is empty",
            ),
            (
                r#"{"devices": [{"device_serial": "A", "metrics": [{"name":"x","value":1}]}, {"device_serial": "", "metrics": [{"name":"x","value":1}]}]}"#,
                "devices[1].device_serial \"\"",
            ),
            (
                r#"{"devices": [{"device_serial": "A", "metrics": [{"name":"","value":1}]}]}"#,
                "devices[0].metrics[0].name is empty",
            ),
            (
                r#"{"devices": [{"device_serial": "A", "metrics": [{"name":"x","value":"1"}]}]}"#,
                "invalid type",
            ),
            (
                r#"{"devices": [{"device_serial": "A", "metrics": [{"name":"x","value":1e999}]}]}"#,
                "out of range",
            ),
            (
                r#"{"devices": [{"device_serial": "A", "metrics": [{"name":"x","value":1,"timestamp":-1}]}]}"#,
                "devices[0].metrics[0].timestamp -1 is not seconds since the Unix epoch",
            ),
            (
                r#"{"devices": [{"device_serial": "A", "metrics": [{"name":"x","value":1}], "app_id": "0x1"}]}"#,
                "devices[0].app_id \"0x1\"",
            ),
            (
                r#"{"devices": [{"device_serial": "A", "metrics": [{"name":"x","value":1}], "app_id": -1}]}"#,
                "did not match",
            ),
            (
                r#"{"devices": [{"device_serial": "A", "events": [{"type":"x"}]}]}"#,
                "unknown field `events`",
            ),
            (
                r#"{"device_serial": "A", "metrics": []}"#,
                "unknown field `device_serial`",
            ),
            ("not json", "expected {\"devices\""),
        ] {
            let e = metrics(text.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        let e = events(br#"{"devices": [{"device_serial": "A", "events": [{"type": ""}]}]}"#)
            .unwrap_err();
        assert!(e.contains("devices[0].events[0].type is empty"), "{e}");
    }
}
