//! The cloud's check of metrics and events payloads (PROTOCOL §8), open
//! to other crates: property tests and fuzzing run exactly the decoder
//! that judges what reaches the emulator.

use std::io::Read as _;

use serde_json::Value;

use crate::cloud::MAX_DECOMPRESSED;
use crate::records::Verdict;

/// Which list a telemetry payload carries: what its topic says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TelemetryList {
    /// `metrics/v0/...`: samples `{"name", "value", "timestamp"?}`.
    Metrics,
    /// `events/v0/...`: events `{"type", "timestamp"?}`.
    Events,
}

impl TelemetryList {
    /// The JSON key of the list: `"metrics"` or `"events"`.
    pub fn key(self) -> &'static str {
        match self {
            TelemetryList::Metrics => "metrics",
            TelemetryList::Events => "events",
        }
    }
}

/// What the emulator's cloud makes of a metrics or events payload
/// ([`verify_telemetry`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TelemetryCheck {
    /// Whether the payload started with the gzip magic bytes (1f 8b).
    pub compressed: bool,
    /// The device serial (a batch's first device's), when readable.
    pub serial: Option<String>,
    /// Devices the payload speaks for: 1 for a one-device payload, the
    /// entries of a batch. 0 when rejected.
    pub devices: usize,
    /// Samples (metrics or events) of all devices together. 0 when
    /// rejected.
    pub samples: usize,
    /// Accepted or not.
    pub verdict: Verdict,
    /// Why it was rejected.
    pub reason: Option<String>,
}

impl TelemetryCheck {
    /// True when the verdict is [`Verdict::Ok`].
    pub fn is_ok(&self) -> bool {
        self.verdict == Verdict::Ok
    }
}

/// Checks a metrics or events payload as the emulator's cloud does when
/// one arrives, on its own reading of PROTOCOL §8 (not with the client
/// library's builders, so that a bug there cannot hide here): gzip
/// detected by its magic bytes and decompressed up to 8 MiB; one device
/// (`{"device_serial", list}`) or a batch (`{"devices": [...]}`, each
/// entry with an optional `app_id`); non-empty serials, lists and names,
/// finite values, timestamps that are non-negative integers.
///
/// Never panics, whatever the bytes.
///
/// ```
/// use ulogger_emulator::{verify_telemetry, TelemetryList};
/// let check = verify_telemetry(
///     TelemetryList::Events,
///     br#"{"device_serial": "SN1", "events": [{"type": "boot"}]}"#,
/// );
/// assert!(check.is_ok());
/// assert_eq!((check.devices, check.samples), (1, 1));
/// let check = verify_telemetry(TelemetryList::Metrics, br#"{"devices": []}"#);
/// assert_eq!(check.reason.as_deref(), Some("\"devices\" is empty"));
/// ```
pub fn verify_telemetry(list: TelemetryList, payload: &[u8]) -> TelemetryCheck {
    let checked = crate::cloud::verify_telemetry(list.key(), payload);
    let (verdict, reason, (devices, samples)) = match checked.verdict {
        Ok(()) => (
            Verdict::Ok,
            None,
            counts(list, payload, checked.compressed).unwrap_or((0, 0)),
        ),
        Err(reason) => (Verdict::Rejected, Some(reason), (0, 0)),
    };
    TelemetryCheck {
        compressed: checked.compressed,
        serial: checked.serial,
        devices,
        samples,
        verdict,
        reason,
    }
}

/// Devices and samples of a payload the verifier accepted.
fn counts(list: TelemetryList, payload: &[u8], compressed: bool) -> Option<(usize, usize)> {
    let json = if compressed {
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(payload)
            .take(MAX_DECOMPRESSED)
            .read_to_end(&mut json)
            .ok()?;
        json
    } else {
        payload.to_vec()
    };
    let value: Value = serde_json::from_slice(&json).ok()?;
    let samples = |entry: &Value| {
        entry
            .get(list.key())
            .and_then(Value::as_array)
            .map(Vec::len)
    };
    match value.get("devices").and_then(Value::as_array) {
        Some(devices) => {
            let total = devices.iter().map(samples).sum::<Option<usize>>()?;
            Some((devices.len(), total))
        }
        None => Some((1, samples(&value)?)),
    }
}
