//! Format strings looked up and parsed once per address, so that decoding
//! a frame checks its arguments against the format without formatting
//! the message (decision "lazy formatting" in docs/decisions.md).
//!
//! A format is parsed into what decoding needs to know without printing:
//! per conversion, the captured types it prints cleanly (the rule of the
//! formatter's `convert`), a bound on the message's length, and the shape
//! of a metric. A frame whose arguments all fit is known to format with
//! no problem; any other frame is formatted at decoding time, as before,
//! so its problems are exactly the formatter's.
//!
//! A format also learns the argument tags of its last clean frame (its
//! signature): a frame with the same tags has arguments of types and
//! sizes known to be clean, so decoding it checks only lengths
//! ([`Known::known_clean`]) and reads a metric's value and name alone.
//! What that fast path needs is kept in the address's recent slot, so a
//! busy format costs one hashed load (decision "known-clean frames" in
//! docs/decisions.md).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use super::frames::is_blob_string;
use super::printf::{
    clean_types, decimal_value, parse_spec, type_bit, Arg, ArgType, DataModel, Parsed, Spec,
    MAX_MESSAGE,
};
use super::symbols::{Lookup, SymbolTable, MAX_FORMAT_LEN};
use crate::MetricValue;

/// Bytes any conversion but `%s` prints at most beyond its width and
/// precision (a `%f` of the largest double has 309 digits, a sign and a
/// point; an integer at most 24 characters).
const CONVERSION_BOUND: usize = 340;

/// Distinct format addresses one decoder keeps; a log that names more is
/// decoded all the same, parsing those formats per frame, so made-up
/// addresses cannot grow memory beyond this.
const MAX_CACHED: usize = 4096;

/// Arguments a learned signature holds at most (one tag a byte of a
/// `u64`); frames with more are checked argument by argument.
const SIGNATURE_TAGS: usize = 8;

/// The argument tags of the last frame of a format found clean: a frame
/// with the same tags has arguments of the same types and sizes, so only
/// its lengths need checking.
#[derive(Debug, Clone, Copy)]
struct Signature {
    /// The tags, little-endian (the first in the low byte).
    tags: u64,
    /// The bytes of `tags` that are tags.
    mask: u64,
    /// Arguments (at most [`SIGNATURE_TAGS`]).
    len: u8,
    /// Arguments whose value is in the string blob.
    strings: u8,
    /// Bytes of the tags and the arguments' values: where the
    /// string blob starts after the payload's head.
    head: u8,
}

/// What the fast path needs of a format, kept in its recent slot (one
/// load from the address's slot, no index into the formats): its text,
/// and the signature of its last clean frame with the message's bound.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Known<'a> {
    /// The format string.
    pub(crate) text: &'a [u8],
    signature: Signature,
    bound: usize,
    metric: KnownMetric<'a>,
    /// The last metric name of a `metric_%s=%d` found valid ("" before
    /// the first).
    last_name: &'a str,
    /// Its length: 0 before the first (no valid name is empty).
    last_len: usize,
    /// For a name of up to 8 bytes, those bytes as the low bytes of a
    /// `u64`.
    last_word: u64,
}

/// A METRIC record's metric from a frame of a known signature, without
/// formatting: the format's metric shape with its value's reading.
#[derive(Debug, Clone, Copy)]
enum KnownMetric<'a> {
    /// Only formatting tells.
    Format,
    /// No conversion: the message is the format; its metric, if any.
    Fixed(Option<(&'a str, MetricValue)>),
    /// `metric_<name>=%d`.
    Named(&'a str, ValueReading),
    /// `metric_%s=%d`.
    StringNamed(ValueReading),
}

/// How a metric's value is read from its captured bytes, for one
/// signature and one bare decimal conversion: what `frames::value`,
/// `printf::decimal_value` and `metric_value` do, decided once. A clean
/// argument of a 32-bit conversion is captured in at most 32 bits, one of
/// a 64-bit conversion is an `i64` or a `u64` (`printf::clean_types`).
#[derive(Debug, Clone, Copy)]
struct ValueReading {
    /// Its captured size (1, 2, 4 or 8 bytes).
    size: u8,
    /// The captured bytes' bits within a little-endian `u64`.
    mask: u64,
    /// `64 - 8 * size` for a value captured signed (sign-extended), 0
    /// for one captured unsigned.
    sign_shift: u32,
    /// Captured as a `u64` (beyond `i64`, a float whatever it printed).
    captured_u64: bool,
    /// `64 -` the bits of the C argument the conversion reads.
    width_shift: u32,
    /// Whether the conversion prints signed (`%d`, `%i`).
    signed: bool,
}

impl ValueReading {
    /// The reading of a value of tag `tag` printed by `spec`, when the
    /// tag is of an integer the conversion takes.
    fn of(tag: u8, spec: &Spec, model: DataModel) -> Option<ValueReading> {
        let size = tag & 0x0f;
        let ty = ArgType::from_tag(tag >> 4);
        let signed_capture = match ty {
            ArgType::I32 | ArgType::I64 => true,
            ArgType::U32 | ArgType::U64 | ArgType::Char => false,
            _ => return None,
        };
        if !matches!(size, 1 | 2 | 4 | 8) {
            return None;
        }
        let (bits, signed) = spec.decimal_reading(model);
        Some(ValueReading {
            size,
            mask: u64::MAX >> (64 - 8 * u32::from(size)),
            sign_shift: if signed_capture {
                64 - 8 * u32::from(size)
            } else {
                0
            },
            captured_u64: ty == ArgType::U64,
            width_shift: 64 - bits.clamp(1, 64),
            signed,
        })
    }

    /// The metric's value from its captured bytes at the start of
    /// `values`.
    #[inline(always)]
    fn read(&self, values: &[u8]) -> Option<MetricValue> {
        let raw = match values.first_chunk::<8>() {
            Some(word) => u64::from_le_bytes(*word) & self.mask,
            None => (0..)
                .zip(values.get(..usize::from(self.size))?)
                .fold(0, |word, (at, &b)| word | u64::from(b) << (8 * at)),
        };
        // As captured: sign-extended from its size, or not.
        let captured = ((raw << self.sign_shift) as i64) >> self.sign_shift;
        let shift = self.width_shift;
        Some(if self.signed {
            // `metric_of`: a u64 beyond i64 is a float whatever it printed.
            if self.captured_u64 && captured < 0 {
                MetricValue::Float(captured as u64 as f64)
            } else {
                MetricValue::Int((captured << shift) >> shift)
            }
        } else {
            let printed = ((captured as u64) << shift) >> shift;
            match i64::try_from(printed) {
                Ok(n) => MetricValue::Int(n),
                Err(_) => beyond_i64(printed),
            }
        })
    }
}

impl<'a> Known<'a> {
    /// What of `compiled` the fast path uses, once it has a text and a
    /// learned signature.
    fn of(compiled: &Compiled<'a>, model: DataModel) -> Option<Known<'a>> {
        let signature = compiled.signature?;
        let first = signature.tags as u8;
        let second = (signature.tags >> 8) as u8;
        let reading = |tag: u8, spec: &Spec| ValueReading::of(tag, spec, model);
        let text = compiled.text.ok()?;
        let metric = match (&compiled.parsed.metric, signature.len) {
            (MetricShape::Fixed(None), _) => Some(KnownMetric::Fixed(None)),
            (&MetricShape::Fixed(Some((name, value))), _) => {
                name_in(text, name).map(|name| KnownMetric::Fixed(Some((name, value))))
            }
            (&MetricShape::Named(name, ref spec), 1) => name_in(text, name)
                .and_then(|name| reading(first, spec).map(|r| KnownMetric::Named(name, r))),
            (MetricShape::StringNamed(spec), 2) if is_blob_string(first) => {
                reading(second, spec).map(KnownMetric::StringNamed)
            }
            _ => None,
        };
        Some(Known {
            text,
            signature,
            bound: compiled.parsed.bound,
            metric: metric.unwrap_or(KnownMetric::Format),
            last_name: "",
            last_len: 0,
            last_word: 0,
        })
    }

    /// The metric of a METRIC record whose frame [`Known::known_clean`]
    /// passed (`rest` as there), into `out_name` and `out_value`:
    /// `Some(true)` when there is one, `Some(false)` for a malformed
    /// metric (`out_value` is then `None`), `None` when only formatting
    /// tells (both unchanged). What
    /// [`Compiled::metric`] finds from the captured arguments, reading
    /// only the value and, for `metric_%s=%d`, the name; a name found
    /// valid is kept, so that the same name in the next frame is
    /// compared, not validated again.
    #[inline(always)]
    pub(crate) fn metric_known_clean(
        &mut self,
        rest: &'a [u8],
        out_name: &mut &'a str,
        out_value: &mut Option<MetricValue>,
    ) -> Option<bool> {
        let values = rest.get(usize::from(self.signature.len)..)?;
        // An `if` chain, not a `match`: the jump table a match compiles
        // to waited on the variant's load on every metric frame.
        let (name, value) = if let KnownMetric::Fixed(fixed) = self.metric {
            match fixed {
                Some(metric) => metric,
                None => {
                    *out_value = None;
                    return Some(false);
                }
            }
        } else if let KnownMetric::StringNamed(reading) = self.metric {
            let value = reading.read(values)?;
            // The blob's only string, after the blob's count and length
            // fields and its own length: `known_clean` found that length
            // to be the bytes left, to the payload's end.
            let name = rest.get(usize::from(self.signature.head) + 6..)?;
            let len = name.len();
            // Up to 8 bytes: one compare of the payload's last word (the
            // head and tags come before the name) with the last name's.
            let tail = u64::from_le_bytes(*rest.last_chunk::<8>()?);
            let word = tail.checked_shr(64 - 8 * (len.min(8) as u32)).unwrap_or(0);
            // A valid name is never empty: a length of 0 is never the
            // last name's.
            let same = len == self.last_len
                && len != 0
                && match len <= 8 {
                    true => word == self.last_word,
                    false => same_bytes(self.last_name.as_bytes(), name),
                };
            let name = match same {
                true => self.last_name,
                false => {
                    // As `metric_of` splits the message at its first `=`.
                    let valid = std::str::from_utf8(name)
                        .ok()
                        .filter(|n| !n.is_empty() && !n.contains('='))?;
                    self.last_name = valid;
                    self.last_len = len;
                    self.last_word = word;
                    valid
                }
            };
            (name, value)
        } else if let KnownMetric::Named(name, reading) = self.metric {
            (name, reading.read(values)?)
        } else {
            return None;
        };
        *out_name = name;
        *out_value = Some(value);
        Some(true)
    }

    /// Whether a frame whose payload after its 6-byte head is `rest`,
    /// with `nargs` arguments, decodes and formats with no problem, known
    /// from its tags alone: they are those of the last clean frame of
    /// its format ([`Compiled::learn`]), so each argument has a type its
    /// conversion takes and a size its type can have, and what is left to
    /// check is the lengths: the values and the string blob present and
    /// nothing after them, the blob's count and length fields, and the
    /// message's bound with its strings. `false` says nothing: the frame
    /// may still be clean.
    #[inline(always)]
    pub(crate) fn known_clean(&self, nargs: usize, rest: &[u8]) -> bool {
        let signature = &self.signature;
        if nargs != usize::from(signature.len) {
            return false;
        }
        // One compare for up to 8 tags; a learned tag is never 0, so the
        // zeros past a short payload never match one.
        let word = match rest.first_chunk::<8>() {
            Some(word) => u64::from_le_bytes(*word),
            None => (0..)
                .zip(rest)
                .fold(0, |word, (at, &b)| word | u64::from(b) << (8 * at)),
        };
        if (word ^ signature.tags) & signature.mask != 0 {
            return false;
        }
        let head = usize::from(signature.head);
        if signature.strings == 0 {
            // Tags and values, nothing after them.
            return rest.len() == head;
        }
        let Some(blob) = rest.get(head..) else {
            return false;
        };
        // The checks of `frames::strings`, none failing.
        let Some((head, mut entries)) = blob.split_first_chunk::<4>() else {
            return false;
        };
        let count = u16::from_le_bytes([head[0], head[1]]);
        let declared = usize::from(u16::from_le_bytes([head[2], head[3]]));
        if count != u16::from(signature.strings) {
            return false;
        }
        let without = match count {
            // One string, the blob's last bytes: no loop.
            1 => match entries.split_first_chunk::<2>() {
                Some((len, after)) => {
                    let len = usize::from(u16::from_le_bytes(*len));
                    if after.len() != len {
                        return false;
                    }
                    entries = &[];
                    len
                }
                None => return false,
            },
            _ => {
                let mut without = 0usize;
                for _ in 0..count {
                    let Some((len, after)) = entries.split_first_chunk::<2>() else {
                        return false;
                    };
                    let len = usize::from(u16::from_le_bytes(*len));
                    let Some(after) = after.get(len..) else {
                        return false;
                    };
                    without += len;
                    entries = after;
                }
                without
            }
        };
        let with_prefixes = without + 2 * usize::from(count);
        entries.is_empty()
            && (declared == with_prefixes || declared == without)
            && self.bound + without < MAX_MESSAGE
    }
}

/// A format string as decoding uses it.
#[derive(Debug)]
pub(crate) struct Compiled<'a> {
    /// The format string at the address, or why there is none.
    pub(crate) text: Result<&'a [u8], Lookup>,
    /// What parsing it told, shared by the decoders of the symbol
    /// table's logs.
    parsed: Arc<ParsedFormat>,
    /// The tags of the last clean frame, once there was one.
    signature: Option<Signature>,
}

/// What parsing a format string tells, whatever log it decodes.
#[derive(Debug)]
pub(crate) struct ParsedFormat {
    /// Per conversion, the captured types (bits of `type_bit`) it prints
    /// without a problem; `None` when formatting always reports
    /// something (`*`, a clamped field, an unsupported or incomplete
    /// conversion).
    clean: Option<Vec<u16>>,
    /// Bytes the message takes at most, string arguments aside.
    bound: usize,
    metric: MetricShape,
}

/// A metric's name in its format string: the range of its bytes.
type NameAt = (usize, usize);

/// The name at `at` in `text` (a range `metric_shape` found in it).
fn name_in(text: &[u8], (start, end): NameAt) -> Option<&str> {
    std::str::from_utf8(text.get(start..end)?).ok()
}

/// Where `part`, a slice of `whole`, starts and ends in it.
fn range_in(whole: &str, part: &str) -> NameAt {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    (start, start.wrapping_add(part.len()))
}

/// What a METRIC record's format says of its metric without formatting.
#[derive(Debug)]
enum MetricShape {
    /// Only formatting tells.
    Format,
    /// No conversion: the message is the format; its metric, if any.
    Fixed(Option<(NameAt, MetricValue)>),
    /// `metric_<name>=%d` (a bare decimal conversion, nothing after).
    Named(NameAt, Spec),
    /// `metric_%s=%d`.
    StringNamed(Spec),
}

impl<'a> Compiled<'a> {
    /// Remembers the tags of a frame of this format that decoded and
    /// formats with no problem (`payload` is the whole frame payload).
    pub(crate) fn learn(&mut self, payload: &[u8]) {
        let nargs = super::frames::declared_args(payload);
        let Some(tags) = payload
            .get(6..6 + nargs)
            .filter(|_| nargs <= SIGNATURE_TAGS)
        else {
            return;
        };
        let values: usize = tags.iter().map(|&tag| usize::from(tag & 0x0f)).sum();
        let strings = tags.iter().filter(|&&tag| is_blob_string(tag)).count();
        let (Ok(len), Ok(strings), Ok(head)) = (
            u8::try_from(nargs),
            u8::try_from(strings),
            u8::try_from(nargs + values),
        ) else {
            return;
        };
        let word = (0..)
            .zip(tags)
            .fold(0u64, |word, (at, &b)| word | u64::from(b) << (8 * at));
        self.signature = Some(Signature {
            tags: word,
            mask: u64::MAX.checked_shr(64 - 8 * u32::from(len)).unwrap_or(0),
            len,
            strings,
            head,
        });
    }

    /// Whether formatting `args` with this format reports nothing: each
    /// argument is of a type its conversion takes, the count matches, and
    /// the message cannot reach [`MAX_MESSAGE`].
    pub(crate) fn is_clean(&self, args: &[Arg<'_>]) -> bool {
        let Some(clean) = &self.parsed.clean else {
            return false;
        };
        if clean.len() != args.len() {
            return false;
        }
        let mut bound = self.parsed.bound;
        for (&types, arg) in clean.iter().zip(args) {
            if types & type_bit(arg.arg_type()) == 0 {
                return false;
            }
            if let Arg::Str(s) = arg {
                bound += s.len();
            }
        }
        bound < MAX_MESSAGE
    }

    /// The metric of a METRIC record whose arguments are clean
    /// ([`Compiled::is_clean`]), when the format's shape tells it without
    /// formatting: `Some(None)` is a malformed metric, `None` means format
    /// the message to know.
    pub(crate) fn metric(
        &self,
        args: &[Arg<'a>],
        model: DataModel,
    ) -> Option<Option<(&'a str, MetricValue)>> {
        let (name, spec, value) = match (&self.parsed.metric, args) {
            (MetricShape::Format, _) => return None,
            (MetricShape::Fixed(None), _) => return Some(None),
            (&MetricShape::Fixed(Some((name, value))), _) => {
                return Some(Some((name_in(self.text.ok()?, name)?, value)))
            }
            (&MetricShape::Named(name, ref spec), [value]) => {
                (name_in(self.text.ok()?, name)?, spec, value)
            }
            (MetricShape::StringNamed(spec), [Arg::Str(name), value]) => {
                // As `metric_of` splits the message at its first `=`.
                let name = std::str::from_utf8(name)
                    .ok()
                    .filter(|n| !n.is_empty() && !n.contains('='))?;
                (name, spec, value)
            }
            _ => return None,
        };
        Some(Some((name, metric_value(spec, value, model)?)))
    }
}

/// An unsigned value printed beyond `i64`: what parsing its digits as a
/// float gives. Out of line: rare, and computed eagerly when inline.
#[cold]
#[inline(never)]
fn beyond_i64(printed: u64) -> MetricValue {
    MetricValue::Float(printed as f64)
}

/// Whether `a` and `b` hold the same bytes: eight at a time, no call
/// to `memcmp` for a short name.
#[inline(always)]
fn same_bytes(mut a: &[u8], mut b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    while let (Some((x, after_a)), Some((y, after_b))) =
        (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
    {
        if u64::from_le_bytes(*x) != u64::from_le_bytes(*y) {
            return false;
        }
        (a, b) = (after_a, after_b);
    }
    a.is_empty() || a.iter().zip(b).all(|(x, y)| x == y)
}

/// The value of a metric printed by the bare decimal conversion `spec`
/// from `value`, as `metric_of` reads it back from the message.
#[inline(always)]
fn metric_value(spec: &Spec, value: &Arg<'_>, model: DataModel) -> Option<MetricValue> {
    let (negative, magnitude) = decimal_value(spec, value, model)?;
    Some(match *value {
        // `metric_of`: a u64 beyond i64 is a float whatever it printed.
        Arg::U64(n) if i64::try_from(n).is_err() => MetricValue::Float(n as f64),
        _ if negative => MetricValue::Int((-i128::from(magnitude)) as i64),
        _ => match i64::try_from(magnitude) {
            Ok(n) => MetricValue::Int(n),
            // What parsing the printed digits as a float gives.
            Err(_) => MetricValue::Float(magnitude as f64),
        },
    })
}

/// The format found at `address` (or not) in `symbols`, parsed there
/// once for all the decoders of its logs, with the signature they
/// learned.
fn compile(symbols: &SymbolTable, address: u32) -> Compiled<'_> {
    let text = symbols.c_string(u64::from(address), MAX_FORMAT_LEN);
    let (parsed, signature) = symbols
        .shared_formats()
        .get(address, text, symbols.data_model());
    Compiled {
        text,
        parsed,
        signature,
    }
}

/// Parses the format found at an address (or not).
fn parse(text: Result<&[u8], Lookup>, model: DataModel) -> ParsedFormat {
    let Ok(format) = text else {
        return ParsedFormat {
            clean: None,
            bound: 0,
            metric: MetricShape::Format,
        };
    };
    let mut clean = Some(Vec::new());
    let mut bound = 0usize;
    let mut rest = format;
    // The walk of `printf::format_into`, without output.
    while !rest.is_empty() {
        let Some(pct) = rest.iter().position(|&b| b == b'%') else {
            bound += rest.len();
            break;
        };
        bound += pct;
        let from_pct = rest.get(pct..).unwrap_or_default();
        let (parsed, used) = parse_spec(from_pct);
        rest = from_pct.get(used.min(from_pct.len())..).unwrap_or_default();
        match parsed {
            Parsed::Percent => bound += 1,
            Parsed::Conversion(spec) if spec.plain_fields() => {
                bound += spec.width() + spec.precision().unwrap_or(0) + CONVERSION_BOUND;
                if let Some(clean) = clean.as_mut() {
                    clean.push(clean_types(&spec, model));
                }
            }
            _ => clean = None,
        }
    }
    ParsedFormat {
        clean,
        bound,
        metric: metric_shape(format),
    }
}

fn metric_shape(format: &[u8]) -> MetricShape {
    let Ok(text) = std::str::from_utf8(format) else {
        return MetricShape::Format;
    };
    if !text.contains('%') {
        return MetricShape::Fixed(
            super::metric_of(text.as_bytes(), &[])
                .map(|(name, value)| (range_in(text, name), value)),
        );
    }
    let Some(rest) = text.strip_prefix("metric_") else {
        return MetricShape::Format;
    };
    // The value: a bare decimal conversion that ends the format.
    let value = |conversion: &str| -> Option<Spec> {
        let (parsed, used) = parse_spec(conversion.as_bytes());
        match parsed {
            Parsed::Conversion(spec) if used == conversion.len() && spec.is_bare_decimal() => {
                Some(spec)
            }
            _ => None,
        }
    };
    if let Some(after) = rest.strip_prefix("%s=") {
        return value(after).map_or(MetricShape::Format, MetricShape::StringNamed);
    }
    match rest.split_once('=') {
        Some((name, after)) if !name.is_empty() && !name.contains('%') => value(after)
            .map_or(MetricShape::Format, |spec| {
                MetricShape::Named(range_in(text, name), spec)
            }),
        _ => MetricShape::Format,
    }
}

/// Slots of the direct-mapped table in front of the map (a power of 2).
const RECENT_BITS: u32 = 5;

/// A recent lookup: the address, where its format is, and what the fast
/// path needs of it.
#[derive(Debug, Clone, Copy, Default)]
struct Recent<'a> {
    address: u32,
    /// 1 + index into `formats`; 0 for an empty slot.
    plus_one: u32,
    known: Option<Known<'a>>,
}

/// The formats one decoder has met, by address.
#[derive(Debug)]
pub(crate) struct FormatCache<'a> {
    /// A recent lookup per slot: one multiplication and a compare for a
    /// firmware's busy formats.
    recent: [Recent<'a>; 1 << RECENT_BITS],
    index: HashMap<u32, usize, BuildHasherDefault<AddressHasher>>,
    formats: Vec<Compiled<'a>>,
    /// The last format parsed once the cache is full.
    spare: Compiled<'a>,
}

impl Default for FormatCache<'_> {
    fn default() -> Self {
        FormatCache {
            recent: [Recent::default(); 1 << RECENT_BITS],
            index: HashMap::default(),
            formats: Vec::new(),
            spare: Compiled {
                text: Err(Lookup::NotFound),
                parsed: Arc::new(parse(Err(Lookup::NotFound), DataModel::default())),
                signature: None,
            },
        }
    }
}

/// Where `FormatCache::at` found a format: an index into `formats`, or
/// past them for the spare.
const SPARE: usize = usize::MAX;

/// The recent slot of `address`.
#[inline(always)]
fn slot_of(address: u32) -> usize {
    (address.wrapping_mul(0x9E37_79B1) >> (32 - RECENT_BITS)) as usize
}

impl<'a> FormatCache<'a> {
    /// The format at `address` in `symbols`, parsed on first use.
    #[inline]
    pub(crate) fn get(&mut self, symbols: &'a SymbolTable, address: u32) -> &Compiled<'a> {
        let at = self.at(symbols, address);
        self.formats.get(at).unwrap_or(&self.spare)
    }

    /// What the fast path needs of the format at `address`, when its text
    /// is known and a clean frame of it has been seen.
    #[inline(always)]
    pub(crate) fn known(
        &mut self,
        symbols: &'a SymbolTable,
        address: u32,
    ) -> Option<&mut Known<'a>> {
        let slot = slot_of(address);
        // A slot holds a `Known` only once it holds its format: an
        // address's own slot without one is a format not yet known clean
        // (or the empty slot of address 0), which the slow path sets.
        if !matches!(self.recent.get(slot), Some(r) if r.address == address) {
            self.miss(symbols, address, slot);
        }
        match self.recent.get_mut(slot) {
            // A format past the cache's bound has no slot.
            Some(r) if r.address == address => r.known.as_mut(),
            _ => None,
        }
    }

    /// Teaches the format at `address` the tags of a clean frame
    /// ([`Compiled::learn`]); its slot learns them too.
    pub(crate) fn learn(&mut self, symbols: &'a SymbolTable, address: u32, payload: &[u8]) {
        let at = self.at(symbols, address);
        let Some(compiled) = self.formats.get_mut(at) else {
            self.spare.learn(payload);
            return;
        };
        compiled.learn(payload);
        if let Some(signature) = compiled.signature {
            symbols.shared_formats().learn(address, signature);
        }
        let known = Known::of(compiled, symbols.data_model());
        if let Some(recent) = self.recent.get_mut(slot_of(address)) {
            if recent.address == address && recent.plus_one != 0 {
                recent.known = known;
            }
        }
    }

    /// Where the format at `address` is, parsed on first use: a recent
    /// slot's hit inline, anything else out of line.
    #[inline(always)]
    fn at(&mut self, symbols: &'a SymbolTable, address: u32) -> usize {
        let slot = slot_of(address);
        match self.recent.get(slot) {
            Some(r) if r.address == address && r.plus_one != 0 => r.plus_one as usize - 1,
            _ => self.miss(symbols, address, slot),
        }
    }

    #[cold]
    #[inline(never)]
    fn miss(&mut self, symbols: &'a SymbolTable, address: u32, slot: usize) -> usize {
        let at = match self.index.get(&address) {
            Some(&at) => at,
            None if self.formats.len() >= MAX_CACHED => {
                self.spare = compile(symbols, address);
                return SPARE;
            }
            None => {
                self.index.insert(address, self.formats.len());
                self.formats.push(compile(symbols, address));
                self.formats.len() - 1
            }
        };
        if let (Some(entry), Ok(plus_one), Some(compiled)) = (
            self.recent.get_mut(slot),
            u32::try_from(at + 1),
            self.formats.get(at),
        ) {
            *entry = Recent {
                address,
                plus_one,
                known: Known::of(compiled, symbols.data_model()),
            };
        }
        at
    }
}

/// A hash of a 32-bit address: one multiplication (a bijection on `u64`)
/// folded so the table's low bits depend on every bit of the address.
#[derive(Debug, Default)]
struct AddressHasher(u64);

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(GOLDEN);
        }
    }

    fn write_u32(&mut self, n: u32) {
        let h = (self.0 ^ u64::from(n)).wrapping_mul(GOLDEN);
        self.0 = h ^ (h >> 32);
    }
}

/// The parsed formats of one symbol table, by address, for every decoder
/// of its logs: a format is parsed once, and a log's first frame of it
/// takes the fast path when an earlier log's decoder learned its
/// signature (what a format and its tags tell holds for any log). At most
/// [`MAX_CACHED`] addresses, as one decoder.
#[derive(Default)]
pub(crate) struct SharedFormats {
    formats: Mutex<SharedMap>,
}

type SharedMap =
    HashMap<u32, (Arc<ParsedFormat>, Option<Signature>), BuildHasherDefault<AddressHasher>>;

impl SharedFormats {
    /// The format at `address` (`text`, as the table holds it) parsed,
    /// with the signature learned last, parsed now if it never was.
    fn get(
        &self,
        address: u32,
        text: Result<&[u8], Lookup>,
        model: DataModel,
    ) -> (Arc<ParsedFormat>, Option<Signature>) {
        let mut formats = self.formats.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((parsed, signature)) = formats.get(&address) {
            return (Arc::clone(parsed), *signature);
        }
        let parsed = Arc::new(parse(text, model));
        if formats.len() < MAX_CACHED {
            formats.insert(address, (Arc::clone(&parsed), None));
        }
        (parsed, None)
    }

    /// Keeps the signature a decoder learned for the format at `address`.
    fn learn(&self, address: u32, signature: Signature) {
        let mut formats = self.formats.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, learned)) = formats.get_mut(&address) {
            *learned = Some(signature);
        }
    }
}

/// A copy of a symbol table parses its formats anew.
impl Clone for SharedFormats {
    fn clone(&self) -> Self {
        SharedFormats::default()
    }
}

impl fmt::Debug for SharedFormats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let formats = self.formats.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("SharedFormats")
            .field("parsed", &formats.len())
            .finish()
    }
}
