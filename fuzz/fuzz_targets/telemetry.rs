//! The emulator's telemetry decoder (PROTOCOL §8) on any bytes: it never
//! panics, an accepted payload counts at least one device and one sample
//! per device, and gzip is transparent: the same JSON judged compressed
//! and uncompressed gets the same verdict and counts.
//!
//! The first byte picks the list (bit 0: events, else metrics) and
//! whether the rest is also judged gzip-compressed (bit 1), so that the
//! fuzzer explores the JSON behind the gzip layer too.
#![no_main]

use std::io::Write as _;

use libfuzzer_sys::fuzz_target;
use ulogger_emulator::{verify_telemetry, TelemetryList};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let list = if mode & 1 == 1 {
        TelemetryList::Events
    } else {
        TelemetryList::Metrics
    };
    let plain = verify_telemetry(list, payload);
    if plain.is_ok() {
        assert!(plain.devices >= 1, "{plain:?}");
        assert!(plain.samples >= plain.devices, "{plain:?}");
    } else {
        assert!(plain.reason.is_some(), "{plain:?}");
        assert_eq!((plain.devices, plain.samples), (0, 0));
    }
    if mode & 2 == 2 && !payload.starts_with(&[0x1f, 0x8b]) {
        let mut encoder =
            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(payload).unwrap();
        let gzipped = verify_telemetry(list, &encoder.finish().unwrap());
        assert!(gzipped.compressed);
        assert_eq!(
            (&gzipped.verdict, &gzipped.reason, &gzipped.serial),
            (&plain.verdict, &plain.reason, &plain.serial)
        );
        assert_eq!((gzipped.devices, gzipped.samples), (plain.devices, plain.samples));
    }
});
