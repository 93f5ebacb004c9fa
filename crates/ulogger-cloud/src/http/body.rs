//! The HTTP body: the MQTT payload of PROTOCOL §8 plus `"app_id"` and
//! `"group_id"` as strings, compressed per the policy, within the size
//! limit. Sans I/O.

use std::io::{Read as _, Write as _};

use bytes::Bytes;

use crate::error::{Error, ErrorKind};
use crate::wire::{
    Compression, TelemetryError, TelemetryPayload, COMPRESSION_THRESHOLD, MAX_MESSAGE_SIZE,
};

/// A request body ready to send.
#[derive(Debug, Clone)]
pub(crate) struct Body {
    pub(crate) bytes: Bytes,
    pub(crate) compressed: bool,
    pub(crate) json_len: usize,
}

/// Builds the body with `make`, one of the `wire` payload builders (so
/// the samples are checked exactly as for MQTT), then adds the ids.
///
/// The builders apply the 128 KiB limit to what they return, so the JSON
/// is asked for uncompressed; only when the JSON alone is over the limit
/// (and compression is allowed) is it built compressed and read back,
/// which costs a second compression but only for such large batches.
pub(crate) fn build(
    make: impl Fn(Compression) -> Result<TelemetryPayload, TelemetryError>,
    app_id: u32,
    group_id: u32,
    compression: Compression,
) -> Result<Body, Error> {
    let json = match make(Compression::Never) {
        Ok(payload) => payload.bytes,
        Err(TelemetryError::TooLarge {
            compressed: false, ..
        }) if compression != Compression::Never => gunzip(&make(Compression::Always)?.bytes)?,
        Err(e) => return Err(e.into()),
    };
    let json = with_ids(&json, app_id, group_id);
    let json_len = json.len();
    let compressed = match compression {
        Compression::Never => false,
        Compression::Always => true,
        // The policy applies to what is sent, ids included.
        _ => json_len > COMPRESSION_THRESHOLD,
    };
    let bytes = if compressed { gzip(&json) } else { json };
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(ErrorKind::PayloadTooLarge {
            size: bytes.len(),
            limit: MAX_MESSAGE_SIZE,
        }
        .into());
    }
    Ok(Body {
        bytes: Bytes::from(bytes),
        compressed,
        json_len,
    })
}

/// `{"app_id":"A","group_id":"G",...rest of the object}`. The builders
/// emit compact JSON objects, so the ids go right after the opening brace.
fn with_ids(json: &[u8], app_id: u32, group_id: u32) -> Vec<u8> {
    let ids = format!(r#""app_id":"{app_id}","group_id":"{group_id}""#);
    let rest = json.strip_prefix(b"{").unwrap_or(json);
    let mut out = Vec::with_capacity(json.len() + ids.len() + 2);
    out.push(b'{');
    out.extend_from_slice(ids.as_bytes());
    if rest != b"}" {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 32),
        flate2::Compression::default(),
    );
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

fn gunzip(data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(data.len() * 4);
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Protocol(
                    "the telemetry builder produced gzip data that does not decompress (a bug)"
                        .into(),
                ),
                e,
            )
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{metrics_batch_payload, metrics_payload, DeviceMetrics, Metric};
    use serde_json::{json, Value};

    fn parse(body: &Body) -> Value {
        let json = if body.compressed {
            gunzip(&body.bytes).unwrap()
        } else {
            body.bytes.to_vec()
        };
        assert_eq!(json.len(), body.json_len);
        serde_json::from_slice(&json).unwrap()
    }

    proptest::proptest! {
        /// Whatever the samples, ids and policy: the body is the MQTT
        /// payload with the ids as strings, compressed as the policy says.
        #[test]
        fn the_body_is_the_mqtt_payload_plus_the_ids(
            serials in proptest::collection::vec("[A-Za-z0-9_.:-]{1,12}", 1..5),
            values in proptest::collection::vec(-1e300f64..1e300, 1..20),
            app in proptest::num::u32::ANY,
            group in proptest::num::u32::ANY,
            policy in 0..3usize,
        ) {
            let compression = [Compression::Auto, Compression::Always, Compression::Never][policy];
            let devices: Vec<_> = serials
                .iter()
                .map(|s| DeviceMetrics::new(s.clone(), values.iter().map(|v| Metric::new("m", *v)).collect()))
                .collect();
            let body = build(|c| metrics_batch_payload(&devices, c), app, group, compression).unwrap();
            let mqtt = metrics_batch_payload(&devices, Compression::Never).unwrap();
            let mut expected: Value = serde_json::from_slice(&mqtt.bytes).unwrap();
            expected["app_id"] = Value::from(app.to_string());
            expected["group_id"] = Value::from(group.to_string());
            proptest::prop_assert_eq!(parse(&body), expected);
            let want_gzip = match compression {
                Compression::Always => true,
                Compression::Never => false,
                _ => body.json_len > COMPRESSION_THRESHOLD,
            };
            proptest::prop_assert_eq!(body.compressed, want_gzip);
        }
    }

    #[test]
    fn ids_are_added_as_strings() {
        let metrics = [Metric::new("t", 1.5)];
        let body = build(
            |c| metrics_payload("SN1", &metrics, c),
            7,
            3,
            Compression::Auto,
        )
        .unwrap();
        assert!(!body.compressed);
        assert_eq!(
            parse(&body),
            json!({"app_id": "7", "group_id": "3", "device_serial": "SN1",
                   "metrics": [{"name": "t", "value": 1.5}]})
        );
        assert_eq!(with_ids(b"{}", 1, 2), br#"{"app_id":"1","group_id":"2"}"#);
    }

    #[test]
    fn auto_compresses_over_the_threshold_counting_the_ids() {
        let make = |n: usize| {
            let metrics = [Metric::new("x".repeat(n), 1.0)];
            build(
                move |c| metrics_payload("S", &metrics, c),
                u32::MAX,
                u32::MAX,
                Compression::Auto,
            )
            .unwrap()
        };
        let small = make(10);
        let n = 10 + COMPRESSION_THRESHOLD - small.json_len;
        let at = make(n);
        assert_eq!(at.json_len, COMPRESSION_THRESHOLD);
        assert!(!at.compressed);
        let over = make(n + 1);
        assert_eq!(over.json_len, COMPRESSION_THRESHOLD + 1);
        assert!(over.compressed);
        assert_eq!(&over.bytes[..2], &[0x1f, 0x8b]);
    }

    #[test]
    fn json_over_the_limit_is_sent_compressed_when_it_fits() {
        let devices: Vec<_> = (0..3000)
            .map(|i| DeviceMetrics::new(format!("SN{i}"), vec![Metric::new("temperature", 1.0)]))
            .collect();
        let body = build(
            |c| metrics_batch_payload(&devices, c),
            1,
            2,
            Compression::Auto,
        )
        .unwrap();
        assert!(body.json_len > MAX_MESSAGE_SIZE);
        assert!(body.compressed && body.bytes.len() <= MAX_MESSAGE_SIZE);
        assert_eq!(parse(&body)["devices"][2999]["device_serial"], "SN2999");

        let e = build(
            |c| metrics_batch_payload(&devices, c),
            1,
            2,
            Compression::Never,
        )
        .unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::PayloadTooLarge { .. }),
            "{e:?}"
        );
    }
}
