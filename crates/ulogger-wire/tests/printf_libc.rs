//! The C formatter against libc's `snprintf`, case by case: a helper
//! compiled here (`fixtures/snprintf_oracle.c`) formats each generated
//! (format, value) case in one long-lived process, and `printf` must
//! write the same bytes. The workspace forbids unsafe code, so libc is
//! reached through that process rather than through FFI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use proptest::prelude::*;
use ulogger_wire::{printf, Arg, DataModel};

struct Oracle {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

fn oracle() -> Option<&'static Mutex<Oracle>> {
    static ORACLE: OnceLock<Option<Mutex<Oracle>>> = OnceLock::new();
    ORACLE
        .get_or_init(|| {
            let dir = support::scratch("snprintf");
            let exe = support::compile(
                &support::fixture("snprintf_oracle.c"),
                &dir.join("snprintf_oracle"),
                &["-O1", "-w"],
            )?;
            let mut child = Command::new(exe)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let stdin = child.stdin.take().unwrap();
            let stdout = BufReader::new(child.stdout.take().unwrap());
            Some(Mutex::new(Oracle {
                _child: child,
                stdin,
                stdout,
            }))
        })
        .as_ref()
}

/// A value and how the oracle passes it to C.
#[derive(Debug, Clone)]
enum Value {
    Int(i32),
    Long(i64),
    Uint(u32),
    Ulong(u64),
    Double(f64),
    LongDouble(f64),
    Str(Vec<u8>),
    Pointer(u64),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// What libc's snprintf writes.
fn snprintf(oracle: &Mutex<Oracle>, format: &str, stars: &[i32], value: &Value) -> Vec<u8> {
    let (t, v) = match value {
        Value::Int(n) => ('i', n.to_string()),
        Value::Long(n) => ('I', n.to_string()),
        Value::Uint(n) => ('u', n.to_string()),
        Value::Ulong(n) => ('U', n.to_string()),
        Value::Double(x) => ('d', format!("{:x}", x.to_bits())),
        Value::LongDouble(x) => ('D', format!("{:x}", x.to_bits())),
        Value::Str(s) => ('s', if s.is_empty() { "-".into() } else { hex(s) }),
        Value::Pointer(p) => ('p', format!("{p:x}")),
    };
    let stars: String = stars.iter().map(|s| format!(" {s}")).collect();
    let mut o = oracle.lock().unwrap();
    writeln!(
        o.stdin,
        "{} {}{stars} {t} {v}",
        hex(format.as_bytes()),
        stars.split(' ').count() - 1
    )
    .unwrap();
    o.stdin.flush().unwrap();
    let mut line = String::new();
    o.stdout.read_line(&mut line).unwrap();
    let line = line.trim_end();
    assert_ne!(line, "-", "snprintf failed on {format:?}");
    unhex(line)
}

/// What the decoder writes, with the value captured as the agent would.
fn ours(format: &str, stars: &[i32], value: &Value) -> (Vec<u8>, usize) {
    let mut args: Vec<Arg<'_>> = stars.iter().map(|&s| Arg::I32(s)).collect();
    args.push(match value {
        Value::Int(n) => Arg::I32(*n),
        Value::Long(n) => Arg::I64(*n),
        Value::Uint(n) => Arg::U32(*n),
        Value::Ulong(n) => Arg::U64(*n),
        Value::Double(x) | Value::LongDouble(x) => Arg::Double(*x),
        Value::Str(s) => Arg::Str(s),
        Value::Pointer(p) => Arg::Pointer(*p),
    });
    // The oracle runs on this 64-bit machine: LP64.
    let printed = printf(format.as_bytes(), &args, DataModel::Lp64);
    (printed.bytes, printed.problems.len())
}

fn flags() -> impl Strategy<Value = String> {
    proptest::sample::subsequence(vec!['-', '+', ' ', '#', '0'], 0..=5)
        .prop_map(|f| f.into_iter().collect())
}

/// Width and precision: absent, a number, or `*` (then a star argument).
#[derive(Debug, Clone)]
enum Field {
    None,
    Fixed(u32),
    Star(i32),
}

fn field(max: u32) -> impl Strategy<Value = Field> {
    prop_oneof![
        2 => Just(Field::None),
        3 => (0..=max).prop_map(Field::Fixed),
        1 => (-(max as i32)..=max as i32).prop_map(Field::Star),
    ]
}

/// A conversion, its length modifier and a value of the type C reads.
fn conversion() -> impl Strategy<Value = (&'static str, &'static str, Value)> {
    let signed32 = (
        prop::sample::select(vec!["d", "i"]),
        prop::sample::select(vec!["", "h", "hh"]),
        any::<i32>().prop_map(Value::Int),
    );
    let signed64 = (
        prop::sample::select(vec!["d", "i"]),
        prop::sample::select(vec!["l", "ll", "j", "z", "t"]),
        any::<i64>().prop_map(Value::Long),
    );
    let unsigned32 = (
        prop::sample::select(vec!["u", "x", "X", "o"]),
        prop::sample::select(vec!["", "h", "hh"]),
        any::<u32>().prop_map(Value::Uint),
    );
    let unsigned64 = (
        prop::sample::select(vec!["u", "x", "X", "o"]),
        prop::sample::select(vec!["l", "ll", "j", "z", "t"]),
        any::<u64>().prop_map(Value::Ulong),
    );
    let float = (
        prop::sample::select(vec!["f", "F", "e", "E", "g", "G"]),
        prop::sample::select(vec!["", "l"]),
        prop_oneof![
            4 => any::<f64>(),
            2 => -1e7f64..1e7,
            2 => (-20i32..20, 1u32..100_000).prop_map(|(e, m)| f64::from(m) * 10f64.powi(e)),
            1 => prop::sample::select(vec![0.0, -0.0, 0.5, 1.5, 2.5, 9.5, 0.05, 0.15, 1e-5, 1e21, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -f64::NAN, f64::MIN_POSITIVE, 5e-324, f64::MAX]),
        ]
        .prop_map(Value::Double),
    );
    let long_double = (
        Just("f"),
        Just("L"),
        any::<f64>().prop_map(Value::LongDouble),
    )
        .prop_flat_map(|(_, l, v)| (prop::sample::select(vec!["f", "e", "g"]), Just(l), Just(v)));
    let chars = (Just("c"), Just(""), (0i32..256).prop_map(Value::Int));
    let strings = (
        Just("s"),
        Just(""),
        prop::collection::vec(1u8..=255, 0..20).prop_map(Value::Str),
    );
    let pointers = (
        Just("p"),
        Just(""),
        prop_oneof![Just(0u64), any::<u64>(), (0u64..0x10000)].prop_map(Value::Pointer),
    );
    prop_oneof![
        signed32,
        signed64,
        unsigned32,
        unsigned64,
        float,
        long_double,
        chars,
        strings,
        pointers
    ]
}

/// Leaves out what C leaves undefined and firmware does not write: `#`
/// outside o, x, X, p and the floats; `0` with c and s; a precision with c.
fn defined(conv: &str, flags: String, precision: Field) -> (String, Field) {
    let alt_ok = matches!(
        conv,
        "o" | "x" | "X" | "p" | "f" | "F" | "e" | "E" | "g" | "G"
    );
    let flags = flags
        .chars()
        .filter(|&f| (f != '#' || alt_ok) && (f != '0' || !matches!(conv, "c" | "s")))
        .collect();
    let precision = if conv == "c" { Field::None } else { precision };
    (flags, precision)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn printf_matches_libc_snprintf(
        flags in flags(),
        width in field(40),
        precision in field(30),
        (conv, length, value) in conversion(),
        before in "[a-z =%]{0,3}",
        after in "[a-z =]{0,3}",
    ) {
        let Some(oracle) = oracle() else { return Ok(()) };
        let (flags, precision) = defined(conv, flags, precision);
        // A literal '%' stays a literal: doubled.
        let before = before.replace('%', "%%");
        let mut stars = Vec::new();
        let width_text = match width {
            Field::None => String::new(),
            Field::Fixed(n) => n.to_string(),
            Field::Star(n) => { stars.push(n); "*".to_string() }
        };
        let precision_text = match precision {
            Field::None => String::new(),
            Field::Fixed(n) => format!(".{n}"),
            Field::Star(n) => { stars.push(n); ".*".to_string() }
        };
        let format = format!("{before}%{flags}{width_text}{precision_text}{length}{conv}{after}");
        let expected = snprintf(oracle, &format, &stars, &value);
        let (got, problems) = ours(&format, &stars, &value);
        prop_assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected),
            "format {:?} value {:?} stars {:?}", format, value, stars
        );
        prop_assert_eq!(got, expected);
        prop_assert_eq!(problems, 0);
    }
}
