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

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::printf::{
    clean_types, decimal_value, parse_spec, type_bit, Arg, DataModel, Parsed, Spec, MAX_MESSAGE,
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

/// A format string as decoding uses it.
#[derive(Debug)]
pub(crate) struct Compiled<'a> {
    /// The format string at the address, or why there is none.
    pub(crate) text: Result<&'a [u8], Lookup>,
    /// Per conversion, the captured types (bits of `type_bit`) it prints
    /// without a problem; `None` when formatting always reports
    /// something (`*`, a clamped field, an unsupported or incomplete
    /// conversion).
    clean: Option<Vec<u16>>,
    /// Bytes the message takes at most, string arguments aside.
    bound: usize,
    metric: MetricShape<'a>,
}

/// What a METRIC record's format says of its metric without formatting.
#[derive(Debug)]
enum MetricShape<'a> {
    /// Only formatting tells.
    Format,
    /// No conversion: the message is the format; its metric, if any.
    Fixed(Option<(&'a str, MetricValue)>),
    /// `metric_<name>=%d` (a bare decimal conversion, nothing after).
    Named(&'a str, Spec),
    /// `metric_%s=%d`.
    StringNamed(Spec),
}

impl<'a> Compiled<'a> {
    /// Whether formatting `args` with this format reports nothing: each
    /// argument is of a type its conversion takes, the count matches, and
    /// the message cannot reach [`MAX_MESSAGE`].
    pub(crate) fn is_clean(&self, args: &[Arg<'_>]) -> bool {
        let Some(clean) = &self.clean else {
            return false;
        };
        if clean.len() != args.len() {
            return false;
        }
        let mut bound = self.bound;
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
    ) -> Option<Option<(Cow<'a, str>, MetricValue)>> {
        let (name, spec, value) = match (&self.metric, args) {
            (MetricShape::Format, _) => return None,
            (MetricShape::Fixed(metric), _) => {
                return Some(metric.map(|(name, value)| (Cow::Borrowed(name), value)))
            }
            (MetricShape::Named(name, spec), [value]) => (*name, spec, value),
            (MetricShape::StringNamed(spec), [Arg::Str(name), value]) => {
                // As `metric_of` splits the message at its first `=`.
                let name = std::str::from_utf8(name)
                    .ok()
                    .filter(|n| !n.is_empty() && !n.contains('='))?;
                (name, spec, value)
            }
            _ => return None,
        };
        let (negative, magnitude) = decimal_value(spec, value, model)?;
        let value = match *value {
            // `metric_of`: a u64 beyond i64 is a float whatever it printed.
            Arg::U64(n) if i64::try_from(n).is_err() => MetricValue::Float(n as f64),
            _ if negative => MetricValue::Int((-i128::from(magnitude)) as i64),
            _ => match i64::try_from(magnitude) {
                Ok(n) => MetricValue::Int(n),
                // What parsing the printed digits as a float gives.
                Err(_) => MetricValue::Float(magnitude as f64),
            },
        };
        Some(Some((Cow::Borrowed(name), value)))
    }
}

/// Parses the format found at an address (or not).
fn compile(text: Result<&[u8], Lookup>, model: DataModel) -> Compiled<'_> {
    let Ok(format) = text else {
        return Compiled {
            text,
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
    Compiled {
        text,
        clean,
        bound,
        metric: metric_shape(format),
    }
}

fn metric_shape(format: &[u8]) -> MetricShape<'_> {
    let Ok(text) = std::str::from_utf8(format) else {
        return MetricShape::Format;
    };
    if !text.contains('%') {
        return MetricShape::Fixed(super::metric_of(text.as_bytes(), &[]));
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
        Some((name, after)) if !name.is_empty() && !name.contains('%') => {
            value(after).map_or(MetricShape::Format, |spec| MetricShape::Named(name, spec))
        }
        _ => MetricShape::Format,
    }
}

/// Slots of the direct-mapped table in front of the map (a power of 2).
const RECENT_BITS: u32 = 5;

/// The formats one decoder has met, by address.
#[derive(Debug, Default)]
pub(crate) struct FormatCache<'a> {
    /// (address, 1 + index into `formats`) of a recent lookup per slot:
    /// one multiplication and a compare for a firmware's busy formats.
    recent: [(u32, u32); 1 << RECENT_BITS],
    index: HashMap<u32, usize, BuildHasherDefault<AddressHasher>>,
    formats: Vec<Compiled<'a>>,
    /// The last format parsed once the cache is full.
    spare: Option<Compiled<'a>>,
}

impl<'a> FormatCache<'a> {
    /// The format at `address` in `symbols`, parsed on first use.
    pub(crate) fn get(&mut self, symbols: &'a SymbolTable, address: u32) -> &Compiled<'a> {
        let compile_at = || {
            compile(
                symbols.c_string(u64::from(address), MAX_FORMAT_LEN),
                symbols.data_model(),
            )
        };
        let slot = (address.wrapping_mul(0x9E37_79B1) >> (32 - RECENT_BITS)) as usize;
        let recent = match self.recent.get(slot) {
            Some(&(at, plus_one)) if at == address && plus_one != 0 => {
                Some(plus_one as usize - 1).filter(|&i| i < self.formats.len())
            }
            _ => None,
        };
        let hit = recent.or_else(|| {
            self.index
                .get(&address)
                .copied()
                .filter(|&i| i < self.formats.len())
        });
        if let (None, Some(at), Some(entry)) = (recent, hit, self.recent.get_mut(slot)) {
            *entry = (address, u32::try_from(at + 1).unwrap_or(0));
        }
        let at = match hit {
            Some(at) => at,
            None if self.formats.len() >= MAX_CACHED => return self.spare.insert(compile_at()),
            None => {
                self.index.insert(address, self.formats.len());
                self.formats.push(compile_at());
                self.formats.len() - 1
            }
        };
        match self.formats.get(at) {
            Some(compiled) => compiled,
            None => self.spare.insert(compile_at()),
        }
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
