//! The client library's telemetry builders (`ulogger_cloud::wire`) and
//! the emulator's public decoder ([`verify_telemetry`]) are two readings
//! of PROTOCOL §8: whatever valid samples the builders are given (any
//! names and types, unicode, quotes and control characters included;
//! finite values up to the extremes; timestamps up to `u64::MAX`), the
//! decoder accepts the payload, compressed or not, and counts the same
//! devices and samples. Arbitrary bytes, raw or gzipped, get a verdict
//! without a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;

use proptest::prelude::*;
use ulogger_cloud::wire::{
    events_batch_payload, events_payload, metrics_batch_payload, metrics_payload, Compression,
    DeviceEvents, DeviceMetrics, Event, Metric, TelemetryPayload, MAX_SERIAL_LEN,
};
use ulogger_emulator::{verify_telemetry, TelemetryCheck, TelemetryList, Verdict};

/// A serial the platform accepts in a topic.
fn serial() -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9_.:-]{{1,{MAX_SERIAL_LEN}}}")).unwrap()
}

/// Any non-empty text: unicode, quotes, backslashes, control characters.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "(?s).{1,24}",
        1 => Just("\"quoted\" \\ and \u{0}\n\t".to_owned()),
        1 => Just("温度 🌡️ ℃".to_owned()),
    ]
}

/// Any finite number, with the extremes and signed zero likely.
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => any::<f64>().prop_filter("finite", |v| v.is_finite()),
        1 => prop::sample::select(vec![
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            f64::from_bits(1),
            -f64::from_bits(1),
            0.0,
            -0.0,
            f64::EPSILON,
            9_007_199_254_740_993.0,
        ]),
    ]
}

fn timestamp() -> impl Strategy<Value = Option<u64>> {
    proptest::option::of(prop_oneof![
        3 => any::<u64>(),
        1 => prop::sample::select(vec![0, 1_700_000_000, i64::MAX as u64, u64::MAX]),
    ])
}

fn metrics() -> impl Strategy<Value = Vec<Metric>> {
    proptest::collection::vec((name(), value(), timestamp()), 1..20).prop_map(|samples| {
        samples
            .into_iter()
            .map(|(name, value, at)| {
                let metric = Metric::new(name, value);
                match at {
                    Some(t) => metric.at(t),
                    None => metric,
                }
            })
            .collect()
    })
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    proptest::collection::vec((name(), timestamp()), 1..20).prop_map(|samples| {
        samples
            .into_iter()
            .map(|(kind, at)| {
                let event = Event::new(kind);
                match at {
                    Some(t) => event.at(t),
                    None => event,
                }
            })
            .collect()
    })
}

fn compression() -> impl Strategy<Value = Compression> {
    prop::sample::select(vec![
        Compression::Auto,
        Compression::Always,
        Compression::Never,
    ])
}

/// Asserts the decoder accepted `payload` with these counts.
fn accepted(
    check: &TelemetryCheck,
    payload: &TelemetryPayload,
    serial: &str,
    devices: usize,
    samples: usize,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(check.verdict, Verdict::Ok, "{:?}", check.reason);
    prop_assert_eq!(check.reason.as_deref(), None);
    prop_assert_eq!(check.compressed, payload.compressed);
    prop_assert_eq!(check.serial.as_deref(), Some(serial));
    prop_assert_eq!((check.devices, check.samples), (devices, samples));
    Ok(())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn one_device_metrics_decode_with_their_count(
        serial in serial(), metrics in metrics(), compression in compression(),
    ) {
        let payload = metrics_payload(&serial, &metrics, compression).unwrap();
        let check = verify_telemetry(TelemetryList::Metrics, &payload.bytes);
        accepted(&check, &payload, &serial, 1, metrics.len())?;
    }

    #[test]
    fn one_device_events_decode_with_their_count(
        serial in serial(), events in events(), compression in compression(),
    ) {
        let payload = events_payload(&serial, &events, compression).unwrap();
        let check = verify_telemetry(TelemetryList::Events, &payload.bytes);
        accepted(&check, &payload, &serial, 1, events.len())?;
    }

    #[test]
    fn metrics_batches_decode_with_their_counts(
        devices in proptest::collection::vec(
            (serial(), metrics(), proptest::option::of(any::<u32>())), 1..12),
        compression in compression(),
    ) {
        let samples = devices.iter().map(|d| d.1.len()).sum();
        let first = devices[0].0.clone();
        let batch: Vec<DeviceMetrics> = devices
            .into_iter()
            .map(|(serial, metrics, app)| {
                let device = DeviceMetrics::new(serial, metrics);
                match app {
                    Some(app) => device.app_id(app),
                    None => device,
                }
            })
            .collect();
        let payload = metrics_batch_payload(&batch, compression).unwrap();
        let check = verify_telemetry(TelemetryList::Metrics, &payload.bytes);
        accepted(&check, &payload, &first, batch.len(), samples)?;
    }

    #[test]
    fn events_batches_decode_with_their_counts(
        devices in proptest::collection::vec(
            (serial(), events(), proptest::option::of(any::<u32>())), 1..12),
        compression in compression(),
    ) {
        let samples = devices.iter().map(|d| d.1.len()).sum();
        let first = devices[0].0.clone();
        let batch: Vec<DeviceEvents> = devices
            .into_iter()
            .map(|(serial, events, app)| {
                let device = DeviceEvents::new(serial, events);
                match app {
                    Some(app) => device.app_id(app),
                    None => device,
                }
            })
            .collect();
        let payload = events_batch_payload(&batch, compression).unwrap();
        let check = verify_telemetry(TelemetryList::Events, &payload.bytes);
        accepted(&check, &payload, &first, batch.len(), samples)?;
    }

    /// A metrics payload is not an events payload, and the other way round.
    #[test]
    fn the_wrong_list_is_rejected(serial in serial(), metrics in metrics()) {
        let payload = metrics_payload(&serial, &metrics, Compression::Auto).unwrap();
        let check = verify_telemetry(TelemetryList::Events, &payload.bytes);
        prop_assert_eq!(check.verdict, Verdict::Rejected);
        prop_assert_eq!(check.reason.as_deref(), Some("events is missing"));
        prop_assert_eq!((check.devices, check.samples), (0, 0));
    }

    #[test]
    fn any_bytes_get_a_verdict_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        events in any::<bool>(),
        gzipped in any::<bool>(),
    ) {
        let list = if events { TelemetryList::Events } else { TelemetryList::Metrics };
        let payload = if gzipped { gzip(&bytes) } else { bytes };
        let check = verify_telemetry(list, &payload);
        match check.verdict {
            Verdict::Ok => prop_assert!(check.devices >= 1 && check.samples >= check.devices),
            Verdict::Rejected => prop_assert!(check.reason.is_some()),
        }
    }

    /// Bytes that look like JSON get further into the decoder than random
    /// ones: JSON text with holes punched in it.
    #[test]
    fn damaged_json_gets_a_verdict_without_panicking(
        serial in serial(), metrics in metrics(),
        cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = metrics_payload(&serial, &metrics, Compression::Never).unwrap().bytes;
        for (at, byte) in cuts {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let _ = verify_telemetry(TelemetryList::Metrics, &bytes);
        let _ = verify_telemetry(TelemetryList::Metrics, &gzip(&bytes));
    }
}

#[test]
fn a_gzip_bomb_is_refused_without_taking_the_memory() {
    let bomb = gzip(&vec![b' '; 9 * 1024 * 1024]);
    let check = verify_telemetry(TelemetryList::Metrics, &bomb);
    assert_eq!(check.verdict, Verdict::Rejected);
    assert!(check.compressed);
    assert!(check.reason.unwrap().contains("more than"));
}
