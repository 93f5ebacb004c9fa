//! Decoding's edge cases: disagreements, bounds, and any input at all.

use proptest::prelude::*;

use super::*;
use crate::build_log;

fn fmt(format: &str, args: &[Arg<'_>]) -> Printed {
    printf(format.as_bytes(), args, DataModel::Ilp32)
}

#[test]
fn disagreements_print_what_was_captured_and_say_so() {
    let out = fmt("%s|%d", &[Arg::I32(-5), Arg::Str(b"x")]);
    assert_eq!(out.bytes, b"-5|x");
    assert_eq!(out.problems.len(), 2);
    assert!(matches!(
        out.problems[0],
        FormatProblem::TypeMismatch {
            index: 0,
            captured: ArgType::I32,
            ..
        }
    ));

    // A 64-bit value under %d: the whole value, not its low half.
    let out = fmt("%d", &[Arg::I64(-5_000_000_000)]);
    assert_eq!(out.bytes, b"-5000000000");
    assert_eq!(out.problems.len(), 1);

    // Missing arguments print as their conversion.
    let out = fmt("a=%d b=%5.2f", &[Arg::I32(1)]);
    assert_eq!(out.bytes, b"a=1 b=%5.2f");
    assert_eq!(
        out.problems,
        [FormatProblem::TooFewArguments {
            wanted: 2,
            captured: 1
        }]
    );
    let out = fmt("a", &[Arg::I32(1)]);
    assert_eq!(
        out.problems,
        [FormatProblem::TooManyArguments {
            wanted: 0,
            captured: 1
        }]
    );

    // %n never writes; unknown and positional conversions stay as written.
    let out = fmt("x%ny%ky%1$d", &[]);
    assert_eq!(out.bytes, b"x%ny%ky%1$d");
    assert_eq!(out.problems.len(), 3);
    let out = fmt("end%-0", &[]);
    assert_eq!(out.bytes, b"end%-0");
    assert!(matches!(
        out.problems[0],
        FormatProblem::IncompleteConversion { .. }
    ));

    // An unknown argument prints as <?>.
    let out = fmt("[%4d]", &[Arg::Unknown(ArgType::Unknown(12))]);
    assert_eq!(out.bytes, b"[ <?>]");
}

#[test]
fn ilp32_longs_are_32_bits_and_lp64_longs_64() {
    let ilp32 = printf(b"%ld %lu", &[Arg::I32(-1), Arg::U32(7)], DataModel::Ilp32);
    assert_eq!(ilp32.bytes, b"-1 7");
    assert!(ilp32.problems.is_empty());
    let lp64 = printf(b"%ld", &[Arg::I32(-1)], DataModel::Lp64);
    assert_eq!(lp64.bytes, b"-1");
    assert_eq!(
        lp64.problems.len(),
        1,
        "an int under %ld on LP64 is a mismatch"
    );
}

#[test]
fn big_l_and_q_on_integers_are_64_bits_as_in_glibc() {
    let out = fmt("%Ld %qu", &[Arg::I64(-5_000_000_000), Arg::U64(u64::MAX)]);
    assert_eq!(out.bytes, b"-5000000000 18446744073709551615");
    assert!(out.problems.is_empty(), "{:?}", out.problems);
}

#[test]
fn widths_and_messages_are_bounded() {
    let out = fmt("%999999999999999999999d", &[Arg::I32(1)]);
    assert_eq!(out.bytes.len(), MAX_FIELD);
    assert!(matches!(
        out.problems[0],
        FormatProblem::FieldClamped { .. }
    ));
    let out = fmt("%*d", &[Arg::I32(i32::MIN), Arg::I32(1)]);
    assert_eq!(out.bytes.len(), MAX_FIELD);
    let out = fmt("%.*f", &[Arg::I32(i32::MAX), Arg::Double(1e308)]);
    assert!(out.bytes.len() <= MAX_MESSAGE);
    let many = "%4000d".repeat(10);
    let args = vec![Arg::I32(1); 10];
    let out = fmt(&many, &args);
    assert_eq!(out.bytes.len(), MAX_MESSAGE);
    assert!(out.problems.contains(&FormatProblem::MessageTruncated));
}

fn symbols() -> SymbolTable {
    let mut rodata = b"n=%d\0s=%s\0".to_vec();
    rodata.extend_from_slice(&[b'x'; 5000]);
    SymbolTable::from_parts(
        [(0x100, rodata)],
        [(2, "NET".to_string())],
        DataModel::Ilp32,
    )
}

fn frame(payload: &[u8], tick: u32) -> Vec<u8> {
    let mut f = (payload.len() as u16).to_le_bytes().to_vec();
    f.extend_from_slice(&tick.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn log(data: &[u8]) -> Vec<u8> {
    let mut header = LogHeader::new(4).unwrap();
    header.tick_rate_hz = Some(100);
    build_log(header, data).unwrap()
}

#[test]
fn formats_are_found_by_address_and_never_guessed() {
    let s = symbols();
    assert_eq!(s.format_at(0x100), Some(&b"n=%d"[..]));
    assert_eq!(s.format_at(0x105), Some(&b"s=%s"[..]));
    // Inside a string: its tail (linkers merge string tails).
    assert_eq!(s.format_at(0x102), Some(&b"%d"[..]));
    assert_eq!(s.format_at(0xff), None);
    assert_eq!(s.format_at(0x100 + 10 + 5000), None);
    // A run without a NUL is no string.
    let mut data = frame(&[0x20 | 2, 0x0a, 0x01, 0, 0, 0], 1);
    data.extend(frame(&[0x20 | 2, 0, 0, 0, 0x10, 0], 1));
    let buf = log(&data);
    let records: Vec<Record> = LogDecoder::new(&s, &buf, &DecodeOptions::new())
        .unwrap()
        .collect();
    assert_eq!(
        records[0].problems,
        [Problem::UnterminatedFormat { address: 0x10a }]
    );
    assert_eq!(
        records[1].problems,
        [Problem::UnknownFormatAddress {
            address: 0x1000_0000
        }]
    );
    assert!(records.iter().all(|r| r.message().is_empty()));
}

#[test]
fn frames_end_at_erased_flash_and_times_are_relative_without_a_clock() {
    let s = symbols();
    let mut data = frame(&[2, 0x00, 0x01, 0, 0, 1, 0x11, 7], 50);
    data.extend(frame(&[0x60 | 2, 0x00, 0x01, 0, 0, 1, 0x11, 8], 150));
    data.extend([0xff, 0xff, 1, 2, 3]);
    let buf = log(&data);
    let mut decoder = LogDecoder::new(&s, &buf, &DecodeOptions::new()).unwrap();
    assert_eq!(decoder.clock(), Clock::Uptime);
    let records: Vec<Record> = decoder.by_ref().collect();
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[0].level, records[1].level),
        (Level::Debug, Level::Error)
    );
    assert_eq!(records[1].message(), "n=8");
    assert_eq!(
        records[1].time,
        RecordTime::Uptime {
            ticks: 200,
            micros: Some(2_000_000)
        }
    );
    assert_eq!(
        decoder.end(),
        Some(FramesEnd::EndMarker { offset: 25 + 28 })
    );

    // Forcing agent 1.0.x frames reads the same bytes another way.
    let decoder = LogDecoder::new(
        &s,
        &buf,
        &DecodeOptions::new().frame_format(FrameFormat::Sequenced),
    )
    .unwrap();
    assert_eq!(decoder.clock(), Clock::None);
}

#[test]
fn a_corrupt_checksum_still_decodes_and_says_so() {
    let s = symbols();
    let mut buf = log(&frame(&[0x20 | 2, 0x00, 0x01, 0, 0, 1, 0x11, 7], 1));
    let last = buf.len() - 1;
    buf[last] ^= 1;
    let decoder = LogDecoder::new(&s, &buf, &DecodeOptions::new()).unwrap();
    assert!(matches!(
        decoder.integrity(),
        Some(HeaderError::ChecksumMismatch { .. })
    ));
    assert_eq!(decoder.count(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any format with any arguments: no panic, bounded output.
    #[test]
    fn printf_never_panics(format in proptest::collection::vec(
            prop::sample::select(b"%%%%-+ #0123456789.*hlqLjztdiuoxXcspfFeEgGn$ab".to_vec()), 0..40),
        ints in proptest::collection::vec(any::<i64>(), 0..6),
        x in any::<f64>()) {
        let mut args: Vec<Arg<'_>> = ints.iter().map(|&n| match n % 5 {
            0 => Arg::I32(n as i32),
            1 => Arg::U64(n as u64),
            2 => Arg::Pointer(n as u64),
            3 => Arg::Str(b"str"),
            _ => Arg::Char(n as u8),
        }).collect();
        args.push(Arg::Double(x));
        let out = printf(&format, &args, DataModel::Lp64);
        prop_assert!(out.bytes.len() <= MAX_MESSAGE);
    }

    /// Any bytes after a valid header: no panic, one record per frame at most.
    #[test]
    fn any_log_data_decodes_without_panic(data in proptest::collection::vec(any::<u8>(), 0..600),
                                          version in prop::sample::select(vec![1u8, 3, 4])) {
        let s = symbols();
        let mut header = LogHeader::new(version).unwrap();
        header.tick_rate_hz = header.tick_rate_hz.map(|_| 1000);
        let buf = build_log(header, &data).unwrap();
        let decoder = LogDecoder::new(&s, &buf, &DecodeOptions::new()).unwrap();
        let count = decoder.count();
        prop_assert!(count <= data.len() / 4 + 1);
    }
}

/// Formats for the decode-versus-format property: metric shapes, bare
/// and decorated conversions, and ones formatting always reports.
/// A symbol table holding `formats` from 0x4000 on (module 2 is "NET"),
/// and the address of `formats[which]`.
fn formats_table(formats: &[&str], which: usize, model: DataModel) -> (SymbolTable, u32) {
    let mut rodata = Vec::new();
    let mut address = 0;
    for (k, f) in formats.iter().enumerate() {
        if k == which {
            address = 0x4000 + rodata.len() as u32;
        }
        rodata.extend_from_slice(f.as_bytes());
        rodata.push(0);
    }
    let table = SymbolTable::from_parts([(0x4000, rodata)], [(2, "NET".to_string())], model);
    (table, address)
}

const PROPERTY_FORMATS: &[&str] = &[
    "metric_%s=%u",
    "metric_%s=%d",
    "metric_temp=%ld",
    "metric_big=%llu",
    "metric_x=%.2f",
    "metric_heartbeat=1",
    "metric_=%d",
    "metric_%s=%x",
    "metric_%s=%hd",
    "metric_a=b=%d",
    "no metric here",
    "%s",
    "metric_%s",
    "t=%d.%02u %c %p",
    "%-8s|%5.1e|%#o|%+i",
    "%lld %llu %zu %hhd",
    "%*d %.*s",
    "%99999d",
    "%ky %1$d",
    "%s %s %s %s",
    "%4000s%4000s%4000s%4000s%4000s",
    "end%-",
];

/// One argument of the property: a type tag's high nibble and a value.
fn property_arg() -> impl Strategy<Value = (u8, u64, Vec<u8>)> {
    (
        prop::sample::select(vec![1u8, 2, 3, 4, 5, 6, 7, 8, 8, 8, 9]),
        prop_oneof![any::<u64>(), 0..300u64, Just(u64::MAX), Just(1 << 63)],
        prop_oneof![
            Just(b"uptime_s".to_vec()),
            Just(b"a=b".to_vec()),
            Just(Vec::new()),
            Just(vec![0xff, b'x']),
            proptest::collection::vec(any::<u8>(), 0..8),
            Just(vec![b'z'; 5000]),
        ],
    )
}

/// A frame's payload of the format at `address` and `args`.
fn property_payload(level: u8, address: u32, args: &[(u8, u64, Vec<u8>)]) -> Vec<u8> {
    let mut p = vec![level << 5 | 2];
    p.extend_from_slice(&address.to_le_bytes());
    p.push(args.len() as u8);
    let mut values = Vec::new();
    let mut strings = Vec::new();
    for (ty, n, text) in args {
        let size: usize = match ty {
            1 | 2 | 6 if *n % 3 == 0 => 1,
            1 | 2 => 4,
            6 => 1,
            7 if n % 2 == 0 => 4,
            3 | 4 | 5 | 7 => 8,
            8 => 0,
            _ => 2,
        };
        p.push(ty << 4 | size as u8);
        values.extend_from_slice(&n.to_le_bytes()[..size]);
        if *ty == 8 {
            strings.push(text);
        }
    }
    p.extend_from_slice(&values);
    if !strings.is_empty() {
        let blob: usize = strings.iter().map(|s| 2 + s.len()).sum();
        p.extend_from_slice(&(strings.len() as u16).to_le_bytes());
        p.extend_from_slice(&(blob as u16).to_le_bytes());
        for s in strings {
            p.extend_from_slice(&(s.len() as u16).to_le_bytes());
            p.extend_from_slice(s);
        }
    }
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Decoding checks a frame's arguments against its format without
    /// formatting; what it reports (format problems, the metric or its
    /// absence) is exactly what formatting the message finds, and the
    /// message formatted later is the formatter's.
    #[test]
    fn decoding_reports_what_formatting_finds(
        which in 0..PROPERTY_FORMATS.len(),
        metric in any::<bool>(),
        lp64 in any::<bool>(),
        args in proptest::collection::vec(property_arg(), 0..5),
    ) {
        let model = if lp64 { DataModel::Lp64 } else { DataModel::Ilp32 };
        let (s, address) = formats_table(PROPERTY_FORMATS, which, model);
        let payload = property_payload(if metric { 5 } else { 1 }, address, &args);
        // Twice: the second frame finds its format in the cache.
        let mut data = frame(&payload, 1);
        data.extend(frame(&payload, 1));
        let buf = log(&data);
        let records: Vec<Record> = LogDecoder::new(&s, &buf, &DecodeOptions::new()).unwrap().collect();
        prop_assert_eq!(records.len(), 2);
        prop_assert_eq!(&records[0].problems, &records[1].problems);
        let record = &records[0];
        let captured = record.args();
        let printed = printf(PROPERTY_FORMATS[which].as_bytes(), &captured, model);
        let reported: Vec<FormatProblem> = record.problems.iter().filter_map(|p| match p {
            Problem::Format(f) => Some(f.clone()),
            _ => None,
        }).collect();
        prop_assert_eq!(&reported, &printed.problems);
        let mut bytes = Vec::new();
        record.write_message(&mut bytes);
        prop_assert_eq!(&bytes, &printed.bytes);
        prop_assert_eq!(record.message(), String::from_utf8_lossy(&printed.bytes).into_owned());
        prop_assert_eq!(record.display_message().to_string(), record.message());
        if metric {
            let expected = metric_of(&printed.bytes, &captured);
            let found = record.metric().map(|m| (m.name, m.value));
            // Debug text: a NaN value equals itself there.
            prop_assert_eq!(format!("{found:?}"), format!("{expected:?}"));
            prop_assert_eq!(
                record.problems.contains(&Problem::MalformedMetric),
                expected.is_none()
            );
        } else {
            prop_assert!(record.metric().is_none());
        }
    }
}

#[test]
fn clean_metrics_borrow_their_names_and_are_not_formatted() {
    let rodata = b"metric_%s=%u\0metric_heartbeat=1\0metric_t=%d\0".to_vec();
    let s = SymbolTable::from_parts(
        [(0x4000, rodata)],
        [(2, "NET".to_string())],
        DataModel::Ilp32,
    );
    let mut data = frame(
        &property_payload(5, 0x4000, &[(8, 0, b"up".to_vec()), (2, 7, Vec::new())]),
        1,
    );
    data.extend(frame(&property_payload(5, 0x400d, &[]), 1));
    data.extend(frame(
        &property_payload(5, 0x4020, &[(1, 0xffff_fff6, Vec::new())]),
        1,
    ));
    let buf = log(&data);
    let records: Vec<Record> = LogDecoder::new(&s, &buf, &DecodeOptions::new())
        .unwrap()
        .collect();
    let metrics: Vec<_> = records.iter().map(|r| r.metric().unwrap()).collect();
    // Borrowed: no name of the record's own.
    assert!(records
        .iter()
        .all(|r| !r.metric_name.is_empty() && r.metric_owned.is_empty()));
    let found: Vec<_> = metrics.iter().map(|m| (m.name, m.value)).collect();
    assert_eq!(
        found,
        [
            ("up", MetricValue::Int(7)),
            ("heartbeat", MetricValue::Int(1)),
            ("t", MetricValue::Int(-10))
        ]
    );
    assert_eq!(records[2].message(), "metric_t=-10");
}

/// A frame's payload changed one way: cut, lengthened, or one byte set.
fn mutated(payload: &[u8], how: u8, at: usize, byte: u8) -> Vec<u8> {
    let mut p = payload.to_vec();
    let at = at % (p.len() + 1);
    match how % 4 {
        0 => {}
        // Never empty: a length of 0 ends the frames.
        1 => p.truncate(at.max(1)),
        2 => p.extend_from_slice(&[byte; 3][..usize::from(byte % 3) + 1]),
        _ => {
            if let Some(b) = p.get_mut(at) {
                *b = byte;
            }
        }
    }
    p
}

/// What a record says, its offset and time aside.
fn seen(record: &Record<'_>) -> String {
    let metric = record.metric().map(|m| (m.name, m.value));
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
        record.level,
        record.module,
        record.format_address,
        record.format(),
        metric,
        record.problems,
        record.args(),
        record.message()
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// A frame decodes to the same record after other frames of its
    /// format (its format cached, a clean frame's tags learned) as alone
    /// in a log: the fast path for frames like the last clean one
    /// reports exactly what decoding the frame afresh reports, whatever
    /// was cut, added or changed in it.
    #[test]
    fn a_frame_decodes_the_same_after_others_of_its_format(
        which in 0..PROPERTY_FORMATS.len(),
        metric in any::<bool>(),
        lp64 in any::<bool>(),
        other_build in any::<bool>(),
        args in proptest::collection::vec(property_arg(), 0..5),
        changes in proptest::collection::vec((0u8..8, any::<usize>(), any::<u8>()), 1..8),
    ) {
        let model = if lp64 { DataModel::Lp64 } else { DataModel::Ilp32 };
        let (s, address) = formats_table(PROPERTY_FORMATS, which, model);
        let s = s.with_firmware_version("1.0");
        let options = match other_build {
            true => DecodeOptions::new().device_version("2.0"),
            false => DecodeOptions::new(),
        };
        let level = if metric { 5 } else { 1 };
        let payload = property_payload(level, address, &args);
        // The same tags, strings long enough to reach the message's bound.
        let long: Vec<_> = args.iter().map(|(ty, n, _)| (*ty, *n, vec![b'w'; 8200])).collect();
        let long = property_payload(level, address, &long);
        // The frame as generated, then each change after it.
        let mut payloads = vec![payload.clone()];
        for &(how, at, byte) in &changes {
            payloads.push(match how {
                7 => long.clone(),
                _ => mutated(&payload, how, at, byte),
            });
            payloads.push(payload.clone());
        }
        // As many as a log holds.
        while payloads.iter().map(|p| 6 + p.len()).sum::<usize>() > crate::MAX_USED_BYTES {
            payloads.pop();
        }
        let (buf, decoded) = decoded_as_alone(&s, &payloads, &options)?;
        // The iterator yields the records the lending decoder lends.
        let owned: Vec<String> = LogDecoder::new(&s, &buf, &options).unwrap().map(|r| seen(&r)).collect();
        prop_assert_eq!(owned, decoded);
    }
}

/// Decodes a log of `payloads` with `s` and checks that each frame's
/// record is the one the frame gets alone: with a copy of the table,
/// which has parsed no format (the full path), and with `s` itself, which
/// learned each format's signature in the log (the fast path from the
/// start). Returns the log and its records as [`seen`] shows them.
fn decoded_as_alone(
    s: &SymbolTable,
    payloads: &[Vec<u8>],
    options: &DecodeOptions,
) -> Result<(Vec<u8>, Vec<String>), TestCaseError> {
    let data: Vec<u8> = payloads.iter().flat_map(|p| frame(p, 1)).collect();
    let buf = log(&data);
    let mut decoder = LogDecoder::new(s, &buf, options).unwrap();
    let mut decoded = Vec::new();
    while let Some(record) = decoder.next_record() {
        decoded.push(seen(record));
    }
    prop_assert_eq!(decoded.len(), payloads.len());
    for (p, in_log) in payloads.iter().zip(&decoded) {
        let alone = log(&frame(p, 1));
        let fresh = s.clone();
        let record = LogDecoder::new(&fresh, &alone, options)
            .unwrap()
            .next()
            .unwrap();
        prop_assert_eq!(&seen(&record), in_log);
        let record = LogDecoder::new(s, &alone, options).unwrap().next().unwrap();
        prop_assert_eq!(&seen(&record), in_log);
    }
    Ok((buf, decoded))
}

#[test]
fn a_frame_like_a_clean_one_but_for_its_strings_is_checked_for_its_length() {
    let s = SymbolTable::from_parts(
        [(0x4000, b"%s|%s\0".to_vec())],
        [(2, "NET".to_string())],
        DataModel::Ilp32,
    );
    let short = property_payload(1, 0x4000, &[(8, 0, b"a".to_vec()), (8, 0, b"b".to_vec())]);
    let long = property_payload(
        1,
        0x4000,
        &[(8, 0, vec![b'w'; 8200]), (8, 0, vec![b'w'; 8200])],
    );
    let mut data = frame(&short, 1);
    data.extend(frame(&long, 1));
    data.extend(frame(&short, 1));
    let buf = log(&data);
    let mut decoder = LogDecoder::new(&s, &buf, &DecodeOptions::new()).unwrap();
    let mut problems = Vec::new();
    while let Some(record) = decoder.next_record() {
        problems.push(record.problems.clone());
    }
    assert_eq!(
        problems,
        [
            vec![],
            vec![Problem::Format(FormatProblem::MessageTruncated)],
            vec![]
        ]
    );
}

/// A METRIC frame of the format at `address`: a name string when `name`
/// is given, then a value of type `ty` captured in `size` bytes.
fn metric_payload(address: u32, name: Option<&[u8]>, value: Option<(u8, u8, u64)>) -> Vec<u8> {
    let mut p = vec![5 << 5 | 2];
    p.extend_from_slice(&address.to_le_bytes());
    p.push(u8::from(name.is_some()) + u8::from(value.is_some()));
    if name.is_some() {
        p.push(0x80);
    }
    if let Some((ty, size, _)) = value {
        p.push(ty << 4 | size);
    }
    if let Some((_, size, n)) = value {
        p.extend_from_slice(&n.to_le_bytes()[..usize::from(size).min(8)]);
    }
    if let Some(name) = name {
        p.extend_from_slice(&1u16.to_le_bytes());
        p.extend_from_slice(&(2 + name.len() as u16).to_le_bytes());
        p.extend_from_slice(&(name.len() as u16).to_le_bytes());
        p.extend_from_slice(name);
    }
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// Metrics of frames after a clean one of their format (read from
    /// the value's bytes without formatting) are what decoding each frame
    /// alone finds: every integer type and size, signed or not, names
    /// valid, invalid or repeated.
    #[test]
    fn known_clean_metrics_are_what_formatting_finds(
        which in 0..9usize,
        lp64 in any::<bool>(),
        ty in prop::sample::select(vec![1u8, 2, 3, 4, 6, 5, 7]),
        size in prop::sample::select(vec![1u8, 2, 4, 8]),
        frames in proptest::collection::vec((
            prop_oneof![any::<u64>(), 0..300u64, Just(u64::MAX), Just(1 << 63), Just(0x8000_0000), Just(0x80)],
            prop::sample::select(vec![&b"uptime_s"[..], b"uptime_s", b"uptime_m", b"abc", b"a=b", b"", b"\xffx", b"temperature_c", b"temperature_f", b"t"]),
        ), 1..8),
    ) {
        const FORMATS: [&str; 9] = [
            "metric_%s=%u", "metric_%s=%d", "metric_%s=%i", "metric_%s=%lu", "metric_%s=%lld",
            "metric_temp=%ld", "metric_big=%llu", "metric_n=%zd", "metric_heartbeat=1",
        ];
        let model = if lp64 { DataModel::Lp64 } else { DataModel::Ilp32 };
        let (s, address) = formats_table(&FORMATS, which, model);
        let format = FORMATS[which];
        let payloads: Vec<Vec<u8>> = frames.iter().map(|&(n, name)| {
            let name = format.contains("%s").then_some(name);
            let value = (format != "metric_heartbeat=1").then_some((ty, size, n));
            metric_payload(address, name, value)
        }).collect();
        decoded_as_alone(&s, &payloads, &DecodeOptions::new())?;
    }
}

#[test]
fn known_clean_frames_report_every_level_module_and_build_problem() {
    let s = SymbolTable::from_parts(
        [(0x4000, b"n=%d %s\0metric_%s=%u\0".to_vec())],
        [(2, "NET".to_string())],
        DataModel::Ilp32,
    )
    .with_firmware_version("1.0");
    let plain = property_payload(1, 0x4000, &[(1, 7, Vec::new()), (8, 0, b"up".to_vec())]);
    let metric = property_payload(5, 0x4008, &[(8, 0, b"up".to_vec()), (2, 7, Vec::new())]);
    for options in [
        DecodeOptions::new(),
        DecodeOptions::new().device_version("2.0"),
    ] {
        for clean in [&plain, &metric] {
            // A clean frame teaches its format its tags; then every first
            // byte (level and module) with the same tags.
            let mut payloads = vec![clean.clone()];
            for first in 0..=u8::MAX {
                let mut p = clean.clone();
                p[0] = first;
                payloads.push(p);
            }
            let data: Vec<u8> = payloads.iter().flat_map(|p| frame(p, 1)).collect();
            let buf = log(&data);
            let mut decoder = LogDecoder::new(&s, &buf, &options).unwrap();
            for p in &payloads {
                let in_log = seen(decoder.next_record().unwrap());
                let alone = log(&frame(p, 1));
                let record = LogDecoder::new(&s, &alone, &options)
                    .unwrap()
                    .next()
                    .unwrap();
                assert_eq!(seen(&record), in_log, "first byte {:#04x}", p[0]);
            }
        }
    }
}
