//! C `printf` formatting of captured arguments, byte for byte as glibc
//! prints the conversions firmware uses (PROTOCOL §5.1).
//!
//! The device never formats: it captures each argument with a type tag,
//! and the format string stays in the firmware image. Formatting happens
//! here, so it must follow C's rules exactly, and must survive a format
//! and arguments that disagree (a different build, a corrupt frame): what
//! was captured is shown, the disagreement is reported, nothing panics and
//! the output is bounded.

use std::fmt;

use super::float;

/// Widths and precisions above this are clamped (and reported): they would
/// let a few bytes of input ask for gigabytes of padding.
pub const MAX_FIELD: usize = 4096;

/// A formatted message longer than this is cut (and reported).
pub const MAX_MESSAGE: usize = 16 * 1024;

/// One argument as the agent captured it (PROTOCOL §5.1: type tags 1 to 8).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Arg<'a> {
    /// Type 1: a signed 32-bit integer (`int`).
    I32(i32),
    /// Type 2: an unsigned 32-bit integer.
    U32(u32),
    /// Type 3: a signed 64-bit integer.
    I64(i64),
    /// Type 4: an unsigned 64-bit integer.
    U64(u64),
    /// Type 5: a pointer.
    Pointer(u64),
    /// Type 6: a `char`.
    Char(u8),
    /// Type 7: a `double` (a captured `float` is widened).
    Double(f64),
    /// Type 8: a string's bytes (without the terminating NUL).
    Str(&'a [u8]),
    /// An argument whose value is not known: an unknown type tag, a size
    /// its type cannot have, or a string missing from the frame's blob.
    /// It prints as `<?>`.
    Unknown(ArgType),
}

/// The type of a captured argument, as its tag names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ArgType {
    /// Type 1.
    I32,
    /// Type 2.
    U32,
    /// Type 3.
    I64,
    /// Type 4.
    U64,
    /// Type 5.
    Pointer,
    /// Type 6.
    Char,
    /// Type 7.
    Double,
    /// Type 8.
    Str,
    /// A type tag outside 1 to 8 (kept as found).
    Unknown(u8),
}

impl ArgType {
    /// The type of a tag's high nibble (PROTOCOL §5.1).
    pub fn from_tag(tag: u8) -> ArgType {
        match tag {
            1 => ArgType::I32,
            2 => ArgType::U32,
            3 => ArgType::I64,
            4 => ArgType::U64,
            5 => ArgType::Pointer,
            6 => ArgType::Char,
            7 => ArgType::Double,
            8 => ArgType::Str,
            other => ArgType::Unknown(other),
        }
    }
}

impl fmt::Display for ArgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgType::I32 => f.write_str("i32"),
            ArgType::U32 => f.write_str("u32"),
            ArgType::I64 => f.write_str("i64"),
            ArgType::U64 => f.write_str("u64"),
            ArgType::Pointer => f.write_str("pointer"),
            ArgType::Char => f.write_str("char"),
            ArgType::Double => f.write_str("double"),
            ArgType::Str => f.write_str("string"),
            ArgType::Unknown(tag) => write!(f, "unknown type {tag}"),
        }
    }
}

impl Arg<'_> {
    /// The type this argument was captured as.
    pub fn arg_type(&self) -> ArgType {
        match self {
            Arg::I32(_) => ArgType::I32,
            Arg::U32(_) => ArgType::U32,
            Arg::I64(_) => ArgType::I64,
            Arg::U64(_) => ArgType::U64,
            Arg::Pointer(_) => ArgType::Pointer,
            Arg::Char(_) => ArgType::Char,
            Arg::Double(_) => ArgType::Double,
            Arg::Str(_) => ArgType::Str,
            Arg::Unknown(t) => *t,
        }
    }
}

/// The C data model of the firmware: how wide `long`, `size_t`,
/// `ptrdiff_t` and pointers are. A 32-bit ELF is [`DataModel::Ilp32`]
/// (every Cortex-M), a 64-bit one [`DataModel::Lp64`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DataModel {
    /// `long` and pointers are 32 bits.
    #[default]
    Ilp32,
    /// `long` and pointers are 64 bits.
    Lp64,
}

impl DataModel {
    fn long_bits(self) -> u32 {
        match self {
            DataModel::Ilp32 => 32,
            DataModel::Lp64 => 64,
        }
    }
}

/// What a format and its captured arguments disagreed on; the message is
/// still printed, with what was captured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FormatProblem {
    /// The argument's captured type does not fit the conversion (a `%s`
    /// given an integer, a `%d` a 64-bit value): it is printed as captured.
    TypeMismatch {
        /// Position of the argument (0-based).
        index: usize,
        /// The conversion, e.g. `"%lld"`.
        conversion: String,
        /// What was captured.
        captured: ArgType,
    },
    /// The format asks for more arguments than were captured; each missing
    /// one prints as its conversion, unformatted.
    TooFewArguments {
        /// Arguments the format uses.
        wanted: usize,
        /// Arguments captured.
        captured: usize,
    },
    /// More arguments were captured than the format uses.
    TooManyArguments {
        /// Arguments the format uses.
        wanted: usize,
        /// Arguments captured.
        captured: usize,
    },
    /// A conversion this formatter does not perform (`%n` never writes,
    /// `%a`, positional `%1$d`, an unknown letter): printed as it stands.
    UnsupportedConversion {
        /// The conversion as written.
        conversion: String,
    },
    /// The format ends inside a conversion.
    IncompleteConversion {
        /// What was left of it.
        conversion: String,
    },
    /// A width or precision above [`MAX_FIELD`] was clamped to it.
    FieldClamped {
        /// The width or precision asked for.
        requested: u64,
    },
    /// The message reached [`MAX_MESSAGE`] bytes and was cut there.
    MessageTruncated,
}

impl FormatProblem {
    /// A stable snake-case name of the problem's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            FormatProblem::TypeMismatch { .. } => "type_mismatch",
            FormatProblem::TooFewArguments { .. } => "too_few_arguments",
            FormatProblem::TooManyArguments { .. } => "too_many_arguments",
            FormatProblem::UnsupportedConversion { .. } => "unsupported_conversion",
            FormatProblem::IncompleteConversion { .. } => "incomplete_conversion",
            FormatProblem::FieldClamped { .. } => "field_clamped",
            FormatProblem::MessageTruncated => "message_truncated",
        }
    }
}

impl fmt::Display for FormatProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatProblem::TypeMismatch { index, conversion, captured } => write!(
                f,
                "argument {} is a captured {captured} but the format has {conversion}: printed as captured",
                index + 1
            ),
            FormatProblem::TooFewArguments { wanted, captured } => write!(
                f,
                "the format uses {wanted} arguments, the frame has {captured}: missing ones print as their conversion"
            ),
            FormatProblem::TooManyArguments { wanted, captured } => write!(
                f,
                "the format uses {wanted} arguments, the frame has {captured}: the extra ones are not shown"
            ),
            FormatProblem::UnsupportedConversion { conversion } => {
                write!(f, "conversion {conversion} is not supported: printed as written")
            }
            FormatProblem::IncompleteConversion { conversion } => {
                write!(f, "the format ends inside the conversion {conversion:?}")
            }
            FormatProblem::FieldClamped { requested } => {
                write!(f, "a width or precision of {requested} was clamped to {MAX_FIELD}")
            }
            FormatProblem::MessageTruncated => {
                write!(f, "the message was cut at {MAX_MESSAGE} bytes")
            }
        }
    }
}

/// A message formatted by [`printf`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Printed {
    /// The bytes C's `printf` would have written (not always UTF-8: `%c`
    /// and `%s` copy bytes).
    pub bytes: Vec<u8>,
    /// Every disagreement found, in order.
    pub problems: Vec<FormatProblem>,
}

/// Formats `args` with the C format string `format` as glibc's `printf`
/// does, for the conversions `%d %i %u %x %X %o %c %s %p %f %F %e %E %g %G
/// %%`, the flags `-+ #0`, width and precision (`*` included), and the
/// length modifiers `hh h l ll z j t L`.
///
/// ```
/// use ulogger_wire::{printf, Arg, DataModel};
/// let out = printf(b"%-6s|%+.3e|%#x", &[Arg::Str(b"temp"), Arg::Double(1234.5), Arg::U32(255)], DataModel::Ilp32);
/// assert_eq!(out.bytes, b"temp  |+1.234e+03|0xff");
/// assert!(out.problems.is_empty());
/// ```
pub fn printf(format: &[u8], args: &[Arg<'_>], model: DataModel) -> Printed {
    let mut printed = Printed::default();
    format_into(
        format,
        args,
        model,
        &mut printed.bytes,
        &mut printed.problems,
    );
    printed
}

/// [`printf`] into caller-owned buffers (appended to), for decoding many
/// records without allocating for each.
pub(crate) fn format_into(
    format: &[u8],
    args: &[Arg<'_>],
    model: DataModel,
    out: &mut Vec<u8>,
    problems: &mut Vec<FormatProblem>,
) {
    let start = out.len();
    let mut next_arg = 0usize;
    let mut wanted = 0usize;
    let mut rest = format;
    while !rest.is_empty() {
        if out.len() - start >= MAX_MESSAGE {
            out.truncate(start + MAX_MESSAGE);
            problems.push(FormatProblem::MessageTruncated);
            return;
        }
        let Some(pct) = rest.iter().position(|&b| b == b'%') else {
            out.extend_from_slice(rest);
            break;
        };
        let (literal, from_pct) = rest.split_at(pct);
        out.extend_from_slice(literal);
        let (spec, used) = parse_spec(from_pct);
        let (text, after) = from_pct.split_at(used.min(from_pct.len()));
        rest = after;
        match spec {
            Parsed::Percent => out.push(b'%'),
            Parsed::Incomplete => {
                out.extend_from_slice(text);
                problems.push(FormatProblem::IncompleteConversion {
                    conversion: String::from_utf8_lossy(text).into_owned(),
                });
            }
            Parsed::Unsupported => {
                out.extend_from_slice(text);
                problems.push(FormatProblem::UnsupportedConversion {
                    conversion: String::from_utf8_lossy(text).into_owned(),
                });
            }
            Parsed::Conversion(mut spec) => {
                let mut missing = false;
                if let Field::Star = spec.width {
                    wanted += 1;
                    match take_int(args, &mut next_arg, text, problems) {
                        Some(w) if w < 0 => {
                            spec.left = true;
                            spec.width = Field::Value(clamp(w.unsigned_abs(), problems));
                        }
                        Some(w) => spec.width = Field::Value(clamp(w.unsigned_abs(), problems)),
                        None => missing = true,
                    }
                }
                if let Some(Field::Star) = spec.precision {
                    wanted += 1;
                    match take_int(args, &mut next_arg, text, problems) {
                        Some(p) if p < 0 => spec.precision = None,
                        Some(p) => {
                            spec.precision = Some(Field::Value(clamp(p.unsigned_abs(), problems)))
                        }
                        None => missing = true,
                    }
                }
                if let Field::Clamp(n) = spec.width {
                    spec.width = Field::Value(clamp(n, problems));
                }
                if let Some(Field::Clamp(n)) = spec.precision {
                    spec.precision = Some(Field::Value(clamp(n, problems)));
                }
                wanted += 1;
                let arg = args.get(next_arg);
                next_arg += 1;
                match arg {
                    Some(arg) if !missing => {
                        convert(out, &spec, arg, next_arg - 1, text, model, problems)
                    }
                    _ => out.extend_from_slice(text),
                }
            }
        }
    }
    if out.len() - start > MAX_MESSAGE {
        out.truncate(start + MAX_MESSAGE);
        problems.push(FormatProblem::MessageTruncated);
    }
    if wanted > args.len() {
        problems.push(FormatProblem::TooFewArguments {
            wanted,
            captured: args.len(),
        });
    } else if wanted < args.len() {
        problems.push(FormatProblem::TooManyArguments {
            wanted,
            captured: args.len(),
        });
    }
}

fn clamp(n: u64, problems: &mut Vec<FormatProblem>) -> u64 {
    if n > MAX_FIELD as u64 {
        problems.push(FormatProblem::FieldClamped { requested: n });
        MAX_FIELD as u64
    } else {
        n
    }
}

/// A `*` width or precision: the next argument, which must be an integer.
fn take_int(
    args: &[Arg<'_>],
    next: &mut usize,
    text: &[u8],
    problems: &mut Vec<FormatProblem>,
) -> Option<i64> {
    let index = *next;
    let arg = args.get(index)?;
    *next += 1;
    let value = match *arg {
        Arg::I32(v) => i64::from(v),
        Arg::U32(v) => i64::from(v as i32),
        Arg::I64(v) => v,
        Arg::U64(v) => v as i64,
        Arg::Char(c) => i64::from(c),
        other => {
            problems.push(FormatProblem::TypeMismatch {
                index,
                conversion: format!("* in {}", String::from_utf8_lossy(text)),
                captured: other.arg_type(),
            });
            return Some(0);
        }
    };
    if !matches!(arg, Arg::I32(_) | Arg::U32(_) | Arg::Char(_)) {
        problems.push(FormatProblem::TypeMismatch {
            index,
            conversion: format!("* in {}", String::from_utf8_lossy(text)),
            captured: arg.arg_type(),
        });
    }
    // C reads an `int`.
    Some(i64::from(value as i32))
}

/// A width or precision as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Value(u64),
    /// Written larger than [`MAX_FIELD`]: to be clamped (and reported).
    Clamp(u64),
    Star,
}

impl Field {
    fn get(self) -> usize {
        match self {
            Field::Value(n) | Field::Clamp(n) => {
                usize::try_from(n.min(MAX_FIELD as u64)).unwrap_or(MAX_FIELD)
            }
            Field::Star => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Length {
    None,
    Hh,
    H,
    L,
    Ll,
    Z,
    J,
    T,
    BigL,
}

/// One parsed conversion specification.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub(crate) left: bool,
    pub(crate) plus: bool,
    pub(crate) space: bool,
    pub(crate) alt: bool,
    pub(crate) zero: bool,
    width: Field,
    precision: Option<Field>,
    length: Length,
    pub(crate) conv: u8,
}

impl Spec {
    pub(crate) fn width(&self) -> usize {
        self.width.get()
    }

    pub(crate) fn precision(&self) -> Option<usize> {
        self.precision.map(Field::get)
    }

    /// Whether the width and precision are plain numbers within
    /// [`MAX_FIELD`] (no `*`, nothing to clamp): formatting then reports
    /// nothing about them.
    pub(crate) fn plain_fields(&self) -> bool {
        matches!(self.width, Field::Value(_))
            && matches!(self.precision, None | Some(Field::Value(_)))
    }

    /// Whether the spec is a bare conversion: no flag, width, precision.
    fn bare(&self) -> bool {
        !(self.left || self.plus || self.space || self.alt || self.zero)
            && self.width == Field::Value(0)
            && self.precision.is_none()
    }

    /// How a decimal conversion reads its argument: the C argument's
    /// bits, and whether it prints it signed (`%d`, `%i`).
    #[inline(always)]
    pub(crate) fn decimal_reading(&self, model: DataModel) -> (u32, bool) {
        (
            conversion_bits(self.length, model),
            matches!(self.conv, b'd' | b'i'),
        )
    }

    /// A bare `%d`, `%i` or `%u` of an `int`, `long`, `long long`,
    /// `size_t`, `intmax_t` or `ptrdiff_t` (not `h`/`hh`, which narrow).
    pub(crate) fn is_bare_decimal(&self) -> bool {
        self.bare()
            && matches!(self.conv, b'd' | b'i' | b'u')
            && matches!(
                self.length,
                Length::None | Length::L | Length::Ll | Length::Z | Length::J | Length::T
            )
    }
}

/// The captured types (bits of [`type_bit`]) that `spec` prints without a
/// [`FormatProblem`]: the rule of `convert`, stated once per format so
/// decoding can check arguments without formatting them.
pub(crate) fn clean_types(spec: &Spec, model: DataModel) -> u16 {
    use ArgType as T;
    let of = |types: &[ArgType]| types.iter().fold(0u16, |m, &t| m | type_bit(t));
    // An argument whose value is unknown prints `<?>` under any conversion.
    let unknown = type_bit(T::Unknown(0));
    unknown
        | match spec.conv {
            b'd' | b'i' | b'u' | b'o' | b'x' | b'X' => match conversion_bits(spec.length, model) {
                32 => of(&[T::I32, T::U32, T::Char]),
                _ => of(&[T::I64, T::U64]),
            },
            b'c' => of(&[T::I32, T::U32, T::Char]),
            b's' => of(&[T::Str]),
            b'p' if model == DataModel::Lp64 => of(&[T::Pointer, T::U64]),
            b'p' => of(&[T::Pointer]),
            b'f' | b'F' | b'e' | b'E' | b'g' | b'G' => of(&[T::Double]),
            _ => 0,
        }
}

/// One bit per captured type; every unknown type shares one.
pub(crate) fn type_bit(t: ArgType) -> u16 {
    match t {
        ArgType::I32 => 1,
        ArgType::U32 => 1 << 1,
        ArgType::I64 => 1 << 2,
        ArgType::U64 => 1 << 3,
        ArgType::Pointer => 1 << 4,
        ArgType::Char => 1 << 5,
        ArgType::Double => 1 << 6,
        ArgType::Str => 1 << 7,
        ArgType::Unknown(_) => 1 << 8,
    }
}

/// The value a bare decimal conversion ([`Spec::is_bare_decimal`]) prints
/// for an integer argument it takes cleanly: negative and magnitude.
#[inline(always)]
pub(crate) fn decimal_value(spec: &Spec, arg: &Arg<'_>, model: DataModel) -> Option<(bool, u64)> {
    let raw = match *arg {
        Arg::I32(v) => v as i64 as u64,
        Arg::U32(v) => u64::from(v),
        Arg::I64(v) => v as u64,
        Arg::U64(v) => v,
        Arg::Char(c) => u64::from(c),
        _ => return None,
    };
    let (bits, signed) = spec.decimal_reading(model);
    let value = Int::of(raw, bits, signed);
    Some((value.negative, value.magnitude))
}

pub(crate) enum Parsed {
    Percent,
    Conversion(Spec),
    Unsupported,
    Incomplete,
}

/// Parses the conversion at the start of `s` (which starts with `%`);
/// returns it and how many bytes it spans.
pub(crate) fn parse_spec(s: &[u8]) -> (Parsed, usize) {
    let mut i = 1;
    let at = |i: usize| s.get(i).copied();
    let mut spec = Spec {
        left: false,
        plus: false,
        space: false,
        alt: false,
        zero: false,
        width: Field::Value(0),
        precision: None,
        length: Length::None,
        conv: 0,
    };
    while let Some(c) = at(i) {
        match c {
            b'-' => spec.left = true,
            b'+' => spec.plus = true,
            b' ' => spec.space = true,
            b'#' => spec.alt = true,
            b'0' => spec.zero = true,
            _ => break,
        }
        i += 1;
    }
    if at(i) == Some(b'*') {
        spec.width = Field::Star;
        i += 1;
    } else {
        let (n, len) = number(s.get(i..).unwrap_or_default());
        spec.width = n;
        i += len;
        if len > 0 && at(i) == Some(b'$') {
            return (Parsed::Unsupported, i + 1);
        }
    }
    if at(i) == Some(b'.') {
        i += 1;
        if at(i) == Some(b'*') {
            spec.precision = Some(Field::Star);
            i += 1;
        } else {
            let (n, len) = number(s.get(i..).unwrap_or_default());
            spec.precision = Some(n);
            i += len;
        }
    }
    spec.length = match (at(i), at(i + 1)) {
        (Some(b'h'), Some(b'h')) => Length::Hh,
        (Some(b'h'), _) => Length::H,
        (Some(b'l'), Some(b'l')) => Length::Ll,
        (Some(b'l'), _) => Length::L,
        (Some(b'q'), _) => Length::Ll,
        (Some(b'z'), _) => Length::Z,
        (Some(b'j'), _) => Length::J,
        (Some(b't'), _) => Length::T,
        (Some(b'L'), _) => Length::BigL,
        _ => Length::None,
    };
    i += match spec.length {
        Length::None => 0,
        Length::Hh | Length::Ll if at(i) != Some(b'q') => 2,
        _ => 1,
    };
    let Some(conv) = at(i) else {
        return (Parsed::Incomplete, s.len());
    };
    i += 1;
    spec.conv = conv;
    match conv {
        b'%' => (Parsed::Percent, i),
        b'd' | b'i' | b'u' | b'o' | b'x' | b'X' | b'c' | b's' | b'p' | b'f' | b'F' | b'e'
        | b'E' | b'g' | b'G' => (Parsed::Conversion(spec), i),
        _ => (Parsed::Unsupported, i),
    }
}

/// Leading decimal digits of `s`: their value and how many there are.
fn number(s: &[u8]) -> (Field, usize) {
    let len = s.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut n: u64 = 0;
    for &d in s.iter().take(len) {
        n = n.saturating_mul(10).saturating_add(u64::from(d - b'0'));
    }
    if n > MAX_FIELD as u64 {
        (Field::Clamp(n), len)
    } else {
        (Field::Value(n), len)
    }
}

/// How wide the C argument a conversion reads is, in bits.
#[inline]
fn conversion_bits(length: Length, model: DataModel) -> u32 {
    match length {
        Length::None | Length::Hh | Length::H => 32,
        Length::L | Length::Z | Length::T => model.long_bits(),
        // glibc reads `%Ld` as `%lld`.
        Length::Ll | Length::J | Length::BigL => 64,
    }
}

fn convert(
    out: &mut Vec<u8>,
    spec: &Spec,
    arg: &Arg<'_>,
    index: usize,
    text: &[u8],
    model: DataModel,
    problems: &mut Vec<FormatProblem>,
) {
    let mismatch = |problems: &mut Vec<FormatProblem>| {
        problems.push(FormatProblem::TypeMismatch {
            index,
            conversion: String::from_utf8_lossy(text).into_owned(),
            captured: arg.arg_type(),
        })
    };
    if let Arg::Unknown(_) = arg {
        pad(out, b"", b"<?>", spec, false);
        return;
    }
    match spec.conv {
        b'd' | b'i' | b'u' | b'o' | b'x' | b'X' => {
            let bits = conversion_bits(spec.length, model);
            let ptr_bits = model.long_bits();
            let (raw, captured_bits) = match *arg {
                Arg::I32(v) => (v as i64 as u64, 32),
                Arg::U32(v) => (u64::from(v), 32),
                Arg::I64(v) => (v as u64, 64),
                Arg::U64(v) => (v, 64),
                Arg::Char(c) => (u64::from(c), 32),
                Arg::Pointer(p) => {
                    mismatch(problems);
                    (p, ptr_bits)
                }
                _ => {
                    mismatch(problems);
                    natural(out, spec, arg);
                    return;
                }
            };
            let signed = matches!(spec.conv, b'd' | b'i');
            let value = if captured_bits == bits {
                // What C prints, `%u` of a negative int and `%hhd` included.
                let width = match spec.length {
                    Length::Hh => 8,
                    Length::H => 16,
                    _ => bits,
                };
                Int::of(raw, width, signed)
            } else {
                // C would read the wrong width; show the captured value, in
                // its own signedness for a decimal conversion.
                if !matches!(arg, Arg::Pointer(_)) {
                    mismatch(problems);
                }
                let signed_source = matches!(arg, Arg::I32(_) | Arg::I64(_));
                let decimal = matches!(spec.conv, b'd' | b'i' | b'u');
                Int::of(raw, captured_bits, decimal && signed_source)
            };
            integer(out, spec, value);
        }
        b'c' => match *arg {
            Arg::I32(_) | Arg::U32(_) | Arg::Char(_) | Arg::I64(_) | Arg::U64(_) => {
                let byte = match *arg {
                    Arg::I32(v) => v as u8,
                    Arg::U32(v) => v as u8,
                    Arg::Char(c) => c,
                    Arg::I64(v) => {
                        mismatch(problems);
                        v as u8
                    }
                    Arg::U64(v) => {
                        mismatch(problems);
                        v as u8
                    }
                    _ => 0,
                };
                pad(out, b"", &[byte], spec, false);
            }
            _ => {
                mismatch(problems);
                natural(out, spec, arg);
            }
        },
        b's' => match *arg {
            Arg::Str(s) => {
                let s = match spec.precision() {
                    Some(p) => s.get(..p).unwrap_or(s),
                    None => s,
                };
                pad(out, b"", s, spec, false);
            }
            _ => {
                mismatch(problems);
                natural(out, spec, arg);
            }
        },
        b'p' => match *arg {
            Arg::Pointer(p) => pointer(out, spec, p),
            Arg::U32(v) => {
                mismatch(problems);
                pointer(out, spec, u64::from(v))
            }
            Arg::U64(v) if model == DataModel::Lp64 => pointer(out, spec, v),
            _ => {
                mismatch(problems);
                natural(out, spec, arg);
            }
        },
        _ => match *arg {
            Arg::Double(x) => float::format(out, spec, x),
            _ => {
                mismatch(problems);
                natural(out, spec, arg);
            }
        },
    }
}

/// A captured value printed in its own type's usual conversion, with the
/// spec's flags and width: what a mismatched argument shows.
fn natural(out: &mut Vec<u8>, spec: &Spec, arg: &Arg<'_>) {
    let mut own = *spec;
    own.precision = None;
    own.alt = false;
    match *arg {
        Arg::I32(v) => integer(
            out,
            &with_conv(own, b'd'),
            Int::of(v as i64 as u64, 32, true),
        ),
        Arg::U32(v) => integer(out, &with_conv(own, b'u'), Int::of(u64::from(v), 32, false)),
        Arg::I64(v) => integer(out, &with_conv(own, b'd'), Int::of(v as u64, 64, true)),
        Arg::U64(v) => integer(out, &with_conv(own, b'u'), Int::of(v, 64, false)),
        Arg::Char(c) => pad(out, b"", &[c], &own, false),
        Arg::Pointer(p) => pointer(out, &own, p),
        Arg::Double(x) => float::format(out, &with_conv(own, b'g'), x),
        Arg::Str(s) => pad(out, b"", s, &own, false),
        Arg::Unknown(_) => pad(out, b"", b"<?>", &own, false),
    }
}

fn with_conv(mut spec: Spec, conv: u8) -> Spec {
    spec.conv = conv;
    spec
}

/// An integer as a sign and a magnitude.
#[derive(Debug, Clone, Copy)]
struct Int {
    negative: bool,
    magnitude: u64,
}

impl Int {
    /// The low `bits` of `raw`, read as signed or unsigned.
    #[inline]
    fn of(raw: u64, bits: u32, signed: bool) -> Int {
        let shift = 64 - bits.clamp(1, 64);
        let low = (raw << shift) >> shift;
        if signed {
            let v = ((raw << shift) as i64) >> shift;
            Int {
                negative: v < 0,
                magnitude: v.unsigned_abs(),
            }
        } else {
            Int {
                negative: false,
                magnitude: low,
            }
        }
    }
}

fn integer(out: &mut Vec<u8>, spec: &Spec, value: Int) {
    let mut digits = [0u8; 24];
    let base: u64 = match spec.conv {
        b'o' => 8,
        b'x' | b'X' | b'p' => 16,
        _ => 10,
    };
    let table: &[u8; 16] = if spec.conv == b'X' {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut n = value.magnitude;
    let mut at = digits.len();
    while n > 0 {
        at -= 1;
        digits[at] = table[(n % base) as usize];
        n /= base;
    }
    let body = &digits[at..];
    let precision = spec.precision();
    let min_digits = precision.unwrap_or(1);
    let mut zeros = min_digits.saturating_sub(body.len());
    if spec.conv == b'o' && spec.alt && zeros == 0 && body.first() != Some(&b'0') {
        zeros = 1;
    }
    let mut prefix_buf = [0u8; 3];
    let mut prefix_len = 0;
    let sign = match spec.conv {
        b'd' | b'i' | b'p' if value.negative => Some(b'-'),
        b'd' | b'i' | b'p' if spec.plus => Some(b'+'),
        b'd' | b'i' | b'p' if spec.space => Some(b' '),
        _ => None,
    };
    if let Some(sign) = sign {
        prefix_buf[0] = sign;
        prefix_len = 1;
    }
    if spec.alt && value.magnitude != 0 && matches!(spec.conv, b'x' | b'X' | b'p') {
        prefix_buf[prefix_len] = b'0';
        prefix_buf[prefix_len + 1] = if spec.conv == b'X' { b'X' } else { b'x' };
        prefix_len += 2;
    }
    let prefix = &prefix_buf[..prefix_len];
    let len = prefix.len() + zeros + body.len();
    let fill = spec.width().saturating_sub(len);
    if spec.left {
        out.extend_from_slice(prefix);
        out.resize(out.len() + zeros, b'0');
        out.extend_from_slice(body);
        out.resize(out.len() + fill, b' ');
    } else if spec.zero && precision.is_none() {
        out.extend_from_slice(prefix);
        out.resize(out.len() + zeros + fill, b'0');
        out.extend_from_slice(body);
    } else {
        out.resize(out.len() + fill, b' ');
        out.extend_from_slice(prefix);
        out.resize(out.len() + zeros, b'0');
        out.extend_from_slice(body);
    }
}

/// glibc's `%p`: `(nil)` for 0, else `%#x` of the address; flags (`+`
/// and ` ` included) and precision apply as to an integer.
fn pointer(out: &mut Vec<u8>, spec: &Spec, p: u64) {
    if p == 0 {
        pad(out, b"", b"(nil)", spec, false);
        return;
    }
    let mut hex = *spec;
    hex.conv = b'p';
    hex.alt = true;
    integer(out, &hex, Int::of(p, 64, false));
}

/// Writes `prefix` and `body` padded to the spec's width: on the right for
/// `-`, with zeros between them when `zeros` is allowed and asked for,
/// else with spaces on the left.
pub(crate) fn pad(out: &mut Vec<u8>, prefix: &[u8], body: &[u8], spec: &Spec, zeros: bool) {
    let len = prefix.len() + body.len();
    let fill = spec.width().saturating_sub(len);
    if spec.left {
        out.extend_from_slice(prefix);
        out.extend_from_slice(body);
        out.resize(out.len() + fill, b' ');
    } else if zeros && spec.zero {
        out.extend_from_slice(prefix);
        out.resize(out.len() + fill, b'0');
        out.extend_from_slice(body);
    } else {
        out.resize(out.len() + fill, b' ');
        out.extend_from_slice(prefix);
        out.extend_from_slice(body);
    }
}
