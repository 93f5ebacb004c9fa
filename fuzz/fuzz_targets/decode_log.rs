//! Log decoding with a fixed small symbol table: any bytes as a whole log
//! buffer (header, frames, payloads), and as a format string with
//! arguments. No panic; every message within its bound; at most one
//! record per frame header's worth of bytes.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ulogger_wire::{printf, Arg, DataModel, DecodeOptions, LogDecoder, SymbolTable, MAX_MESSAGE};

fn symbols() -> &'static SymbolTable {
    static SYMBOLS: OnceLock<SymbolTable> = OnceLock::new();
    SYMBOLS.get_or_init(|| {
        let rodata = b"t=%d\0%s=%-8.3f|%+lld %#x %p %c\0metric_%s=%u\0metric_heartbeat=1\0%*.*e %g %%\0no NUL".to_vec();
        SymbolTable::from_parts(
            [(0x1000, rodata), (0x2000, vec![0u8; 64])],
            [(0, "MAIN".to_string()), (3, "SENSOR".to_string())],
            DataModel::Ilp32,
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let symbols = symbols();
    for options in [
        DecodeOptions::new(),
        DecodeOptions::new().device_version("other"),
    ] {
        if let Ok(decoder) = LogDecoder::new(symbols, data, &options) {
            let mut records = 0usize;
            let mut message = Vec::new();
            for record in decoder {
                records += 1;
                // Formatted on request, into a reused buffer.
                message.clear();
                record.write_message(&mut message);
                assert!(message.len() <= MAX_MESSAGE);
                // U+FFFD replacements can triple invalid bytes at most.
                assert!(record.message().len() <= 3 * MAX_MESSAGE);
            }
            assert!(records <= data.len() / 4 + 1);
        }
    }
    // The same bytes as a format string, with arguments cut from them.
    let (format, rest) = data.split_at(data.len() / 2);
    let args: Vec<Arg<'_>> = rest
        .chunks(9)
        .map(|c| {
            let n = c.iter().fold(0u64, |n, &b| n << 8 | u64::from(b));
            match c.first().map_or(0, |b| b % 8) {
                0 => Arg::I32(n as i32),
                1 => Arg::U32(n as u32),
                2 => Arg::I64(n as i64),
                3 => Arg::U64(n),
                4 => Arg::Pointer(n),
                5 => Arg::Char(n as u8),
                6 => Arg::Double(f64::from_bits(n)),
                _ => Arg::Str(c),
            }
        })
        .collect();
    let out = printf(format, &args, DataModel::Lp64);
    assert!(out.bytes.len() <= MAX_MESSAGE);
});
