//! Property tests of the sans-I/O formats in `ulogger_cloud::wire`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::collection::vec;
use proptest::prelude::*;
use ulogger_cloud::wire::{
    build_log, decode_ble_config, header_len, parse_boot_reply, patch_epoch_time_us,
    patch_session_token, validate_checksum, BootRequest, ChunkReassembler, CoreDumpError,
    CoreDumpHeader, DeviceInfo, Feed, HeaderError, LogConfig, LogHeader, LogLevel, Topics,
    CORE_DUMP_HEADER_LEN,
};

/// A header of a random supported version with random field values.
fn arb_header() -> impl Strategy<Value = LogHeader> {
    (
        0u8..=4,
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(version, token, seq, anchor, rate, epoch)| {
            let mut h = LogHeader::new(version).unwrap();
            h.session_token = token;
            if version <= 2 {
                h.sequence_number = Some(seq);
            } else {
                h.anchor_tick = Some(anchor);
                h.tick_rate_hz = Some(rate);
            }
            if version == 4 {
                h.epoch_time_us = Some(epoch);
            }
            h
        })
}

/// A valid log: header, data, and unused ring-buffer space after it.
fn arb_log() -> impl Strategy<Value = (LogHeader, Vec<u8>, Vec<u8>)> {
    (
        arb_header(),
        vec(any::<u8>(), 0..2048),
        vec(any::<u8>(), 0..64),
    )
}

fn assemble(header: LogHeader, data: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut buf = build_log(header, data).unwrap();
    buf.extend_from_slice(tail);
    buf
}

/// Indices where two equally long buffers differ.
fn diff(a: &[u8], b: &[u8]) -> Vec<usize> {
    assert_eq!(a.len(), b.len());
    (0..a.len()).filter(|&i| a[i] != b[i]).collect()
}

proptest! {
    #[test]
    fn valid_logs_round_trip((header, data, tail) in arb_log()) {
        let buf = assemble(header, &data, &tail);
        let parsed = validate_checksum(&buf).unwrap();
        prop_assert_eq!(LogHeader::parse(&buf).unwrap(), parsed);
        let mut expected = header;
        expected.used_bytes = u16::try_from(data.len()).unwrap();
        expected.checksum = u16::from(data.iter().fold(0u8, |a, b| a ^ b));
        prop_assert_eq!(parsed, expected);
        prop_assert_eq!(parsed.header_len(), header_len(header.version).unwrap());
        prop_assert_eq!(parsed.log_len(), parsed.header_len() + data.len());
        prop_assert_eq!(&buf[parsed.header_len()..parsed.log_len()], &data[..]);

        // Re-encoding the parsed header reproduces the header bytes.
        let mut again = buf.clone();
        parsed.write_to(&mut again).unwrap();
        prop_assert_eq!(again, buf);
    }

    #[test]
    fn patching_the_token_touches_only_bytes_1_to_5(
        (header, data, tail) in arb_log(),
        token in any::<u32>(),
    ) {
        let buf = assemble(header, &data, &tail);
        let mut patched = buf.clone();
        patch_session_token(&mut patched, token).unwrap();
        prop_assert!(diff(&buf, &patched).iter().all(|i| (1..5).contains(i)));
        prop_assert_eq!(&patched[1..5], &token.to_le_bytes()[..]);
        let h = validate_checksum(&patched).unwrap();
        let mut expected = validate_checksum(&buf).unwrap();
        expected.session_token = token;
        prop_assert_eq!(h, expected);
    }

    #[test]
    fn patching_epoch_touches_only_bytes_13_to_21_of_v4(
        (header, data, tail) in arb_log(),
        epoch in any::<u64>(),
    ) {
        let buf = assemble(header, &data, &tail);
        let mut patched = buf.clone();
        let result = patch_epoch_time_us(&mut patched, epoch);
        if header.version == 4 {
            result.unwrap();
            prop_assert!(diff(&buf, &patched).iter().all(|i| (13..21).contains(i)));
            let h = validate_checksum(&patched).unwrap();
            prop_assert_eq!(h.epoch_time_us, Some(epoch));
        } else {
            prop_assert_eq!(result, Err(HeaderError::NoEpochField { version: header.version }));
            prop_assert_eq!(patched, buf);
        }
    }

    #[test]
    fn flipping_a_data_byte_breaks_the_checksum(
        (header, data, tail) in arb_log(),
        pick in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        prop_assume!(!data.is_empty());
        let mut buf = assemble(header, &data, &tail);
        let at = header_len(header.version).unwrap() + pick.index(data.len());
        buf[at] ^= flip;
        let is_mismatch = matches!(validate_checksum(&buf), Err(HeaderError::ChecksumMismatch { .. }));
        prop_assert!(is_mismatch);
    }

    #[test]
    fn bytes_after_the_data_are_not_checked(
        (header, data, tail) in arb_log(),
        pick in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        prop_assume!(!tail.is_empty());
        let mut buf = assemble(header, &data, &tail);
        let at = buf.len() - tail.len() + pick.index(tail.len());
        buf[at] ^= flip;
        prop_assert!(validate_checksum(&buf).is_ok());
    }

    #[test]
    fn header_functions_never_panic(
        mut bytes in vec(any::<u8>(), 0..64),
        version in prop::option::of(0u8..=6),
        token in any::<u32>(),
        epoch in any::<u64>(),
    ) {
        // Steer half the cases to known versions so deeper paths run.
        if let (Some(v), Some(first)) = (version, bytes.first_mut()) {
            *first = v;
        }
        let parsed = LogHeader::parse(&bytes);
        let validated = validate_checksum(&bytes);
        if let Ok(h) = validated {
            prop_assert_eq!(parsed.clone(), Ok(h));
        }
        if let Ok(h) = parsed {
            let _ = h.log_len();
            let _ = build_log(h, &bytes);
        }
        let before = bytes.clone();
        if patch_session_token(&mut bytes, token).is_err() {
            prop_assert_eq!(&bytes, &before);
        }
        let _ = patch_epoch_time_us(&mut bytes, epoch);
    }

    #[test]
    fn decoders_never_panic(bytes in vec(any::<u8>(), 0..128)) {
        let _ = DeviceInfo::decode(&bytes);
        let _ = decode_ble_config(&bytes);
        let _ = CoreDumpHeader::decode(&bytes);
        let _ = parse_boot_reply(&bytes);
        let _ = BootRequest::parse(&bytes);
        let _ = LogConfig::decode(&bytes);
        let mut rx = ChunkReassembler::new();
        let _ = rx.feed(&bytes);
        let topics = Topics::new("p/", 1, Some(2)).unwrap();
        let _ = topics.classify(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn json_decoders_never_panic(text in r#"[{}\[\]":,0-9a-z\- .eE\\]{0,64}"#) {
        let _ = parse_boot_reply(text.as_bytes());
        let _ = BootRequest::parse(text.as_bytes());
        let mut config = vec![1u8; 9];
        config.extend_from_slice(text.as_bytes());
        let _ = LogConfig::decode(&config);
    }

    #[test]
    fn classify_never_panics_on_topic_like_strings(
        levels in vec(prop_oneof![
            Just("p".to_owned()), Just("boot".to_owned()), Just("v0".to_owned()),
            Just("1".to_owned()), Just("2".to_owned()), "[0-9a-z$#+/.-]{0,6}",
        ], 0..9),
    ) {
        let topic = format!("p/{}", levels.join("/"));
        for topics in [Topics::new("p/", 1, Some(2)).unwrap(), Topics::new("p/", 1, None).unwrap()] {
            let _ = topics.classify(&topic);
        }
    }

    #[test]
    fn device_info_round_trips(
        app_id in any::<u32>(),
        strings in vec("[^\u{0}]{0,24}", 4),
    ) {
        let info = DeviceInfo::new(app_id, &strings[0], &strings[1], &strings[2], &strings[3]);
        let bytes = info.encode();
        prop_assert_eq!(DeviceInfo::decode(&bytes).unwrap(), info.clone());
        // The last terminator is optional.
        prop_assert_eq!(DeviceInfo::decode(&bytes[..bytes.len() - 1]).unwrap(), info);
    }

    #[test]
    fn log_config_round_trips(
        level in any::<u8>(),
        module_flags in any::<u32>(),
        timeout_secs in any::<u32>(),
        module_names in prop::option::of(vec(".{0,12}", 0..8)),
    ) {
        let mut config = LogConfig::new(LogLevel::from(level), module_flags, timeout_secs);
        config.module_names = module_names;
        let bytes = config.encode();
        prop_assert_eq!(bytes[0], level);
        prop_assert_eq!(LogConfig::decode(&bytes).unwrap(), config);
    }

    #[test]
    fn ble_reassembly_survives_duplicates_and_reordering(
        data in vec(any::<u8>(), 0..4096),
        sizes in vec(1usize..300, 1..64),
        noise in vec((any::<prop::sample::Index>(), 0u8..4), 0..64),
        noise_at in vec(any::<prop::sample::Index>(), 0..64),
    ) {
        let total = u16::try_from(data.len()).unwrap();
        let mut packets = Vec::new();
        let mut offset = 0;
        let mut sizes = sizes.iter().cycle();
        loop {
            let size = *sizes.next().unwrap();
            let end = (offset + size).min(data.len());
            let mut p = u16::try_from(offset).unwrap().to_le_bytes().to_vec();
            p.extend(total.to_le_bytes());
            p.extend(&data[offset..end]);
            packets.push(p);
            offset = end;
            if offset >= data.len() {
                break;
            }
        }

        // The in-order stream with noise slipped in before random packets:
        // copies of any packet (duplicates, early arrivals), packets of
        // another transfer length, and runts.
        let mut slots: Vec<Vec<Vec<u8>>> = vec![Vec::new(); packets.len()];
        for ((pick, kind), at) in noise.iter().zip(&noise_at) {
            let slot = at.index(packets.len());
            let mut p = pick.get(&packets).clone();
            match kind {
                0 | 1 => {}
                2 => {
                    // Another length: dropped whether or not a transfer is under way,
                    // as long as the offset is not 0.
                    if p[..2] == [0, 0] { p[..2].copy_from_slice(&1u16.to_le_bytes()); }
                    let other = total.wrapping_add(1);
                    p[2..4].copy_from_slice(&other.to_le_bytes());
                }
                _ => p.truncate(3),
            }
            slots[slot].push(p);
        }

        let mut rx = ChunkReassembler::new();
        let mut received = None;
        'feed: for (noise, packet) in slots.iter().zip(&packets) {
            for p in noise.iter().chain(std::iter::once(packet)) {
                if let Feed::Complete { data, ack } = rx.feed(p) {
                    prop_assert_eq!(ack, total.to_le_bytes());
                    received = Some(data);
                    break 'feed;
                }
            }
        }
        prop_assert_eq!(received, Some(data));
    }

    #[test]
    fn core_dumps_round_trip_and_any_changed_byte_is_caught(
        app_id in any::<u32>(),
        // ASCII within the narrowest field (44 bytes), as identities are.
        strings in vec("[ -~]{0,44}", 4),
        body in vec(any::<u8>(), 0..512),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let info = DeviceInfo::new(app_id, &strings[0], &strings[1], &strings[2], &strings[3]);
        let mut dump = b"cC".to_vec();
        dump.extend(&body);
        let package = CoreDumpHeader::encode_package(&info, &dump);
        let header = CoreDumpHeader::decode(&package).unwrap();
        prop_assert!(header.check_identity(&info).is_ok());
        // A flipped bit in the sum, the format or the body is refused, in
        // the identity it fails the identity check or UTF-8.
        let at = flip.index(package.len());
        let mut broken = package.clone();
        broken[at] ^= 1 << bit;
        match CoreDumpHeader::decode(&broken) {
            Ok(other) => {
                // A smaller size leaves bytes as region padding, which
                // zeros leave the sum of.
                prop_assert!((12..CORE_DUMP_HEADER_LEN).contains(&at) || at < 4);
                prop_assert!(other.check_identity(&info).is_err() || other == header);
            }
            Err(CoreDumpError::InvalidUtf8 { .. }) => prop_assert!(at >= 16),
            Err(_) => prop_assert!(!(12..CORE_DUMP_HEADER_LEN).contains(&at)),
        }
    }
}
