//! A decoded log record and what can be wrong with it.

use std::fmt;

use super::frames::{declared_args, parse_payload, StackArgs, STACK_ARGS};
use super::printf::{format_into, Arg, ArgType, DataModel, FormatProblem};
use crate::MetricValue;

/// A record's level (PROTOCOL §5.1: bits 7-5 of the payload's first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// 0.
    Debug,
    /// 1.
    Info,
    /// 2.
    Warning,
    /// 3.
    Error,
    /// 4.
    Critical,
    /// 5: a metric sample (agent 1.2.0 and later).
    Metric,
    /// 6 or 7: no level the agent writes.
    Unknown(u8),
}

impl Level {
    /// The level of the 3-bit value `bits`.
    pub fn from_bits(bits: u8) -> Level {
        match bits {
            0 => Level::Debug,
            1 => Level::Info,
            2 => Level::Warning,
            3 => Level::Error,
            4 => Level::Critical,
            5 => Level::Metric,
            other => Level::Unknown(other),
        }
    }

    /// Its name in upper case, as the platform shows it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
            Level::Metric => "METRIC",
            Level::Unknown(_) => "UNKNOWN",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::Unknown(n) => write!(f, "UNKNOWN({n})"),
            other => f.write_str(other.name()),
        }
    }
}

/// The module a record was logged under (bits 4-0 of the payload's first
/// byte: the module is `1 << index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Module<'a> {
    /// The module's bit index (0 to 31).
    pub index: u8,
    /// Its name from the ELF's module table (borrowed from the
    /// [`SymbolTable`](super::SymbolTable)), if there.
    pub name: Option<&'a str>,
}

/// The module bit that means "always log" and names no module.
pub const ALWAYS_LOG_BIT: u8 = 31;

impl Module<'_> {
    /// The module's mask, `1 << index`.
    pub fn mask(&self) -> u32 {
        1u32 << (self.index & 31)
    }

    /// Whether this is bit 31, "always log", which is no module.
    pub fn is_always(&self) -> bool {
        self.index == ALWAYS_LOG_BIT
    }
}

impl fmt::Display for Module<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => f.write_str(name),
            None if self.is_always() => f.write_str("ALWAYS"),
            None => write!(f, "{:#x}", self.mask()),
        }
    }
}

/// When a record was logged, as far as the log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecordTime {
    /// Wall-clock time: the header's `epoch_time_us` (version 4, non-zero)
    /// minus the ticks between this record and the readout.
    Wall {
        /// Unix time in microseconds.
        unix_us: i64,
    },
    /// No wall clock known: the device's uptime (ticks since its start or
    /// its last reset).
    Uptime {
        /// Ticks since the device started (sum of the frames' deltas).
        ticks: u64,
        /// The same in microseconds, when the tick rate is known (header
        /// versions 3 and 4, rate not 0).
        micros: Option<u64>,
    },
    /// Agent 1.0.x frames carry no time, only a sequence number.
    Sequence {
        /// The frame's sequence number.
        frame_seq: u16,
    },
}

/// How the times of a log's records are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Clock {
    /// From the version 4 header's epoch time: [`RecordTime::Wall`].
    Wall,
    /// Relative: device uptime from ticks, [`RecordTime::Uptime`].
    Uptime,
    /// No time at all (agent 1.0.x frames): [`RecordTime::Sequence`].
    None,
}

/// A metric sample: a record at level METRIC whose message is
/// `metric_<name>=<value>` (PROTOCOL §5.1); the heartbeat is
/// `metric_heartbeat=1`. A copy of what the record holds
/// ([`Record::metric`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricReading<'r> {
    /// The metric's name: borrowed from the format string or the frame
    /// when it is written there whole, else from the record (a name that
    /// only formatting the message tells).
    pub name: &'r str,
    /// Its value, typed from the captured argument (an integer stays an
    /// integer, a double a float).
    pub value: MetricValue,
}

/// A part of a frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PayloadPart {
    /// Level and module, format address, argument count.
    Head,
    /// The argument type tags.
    ArgumentTypes,
    /// The value of one argument.
    ArgumentValue {
        /// Its position (0-based).
        index: usize,
    },
    /// The string blob.
    Strings,
}

impl fmt::Display for PayloadPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadPart::Head => f.write_str("payload head"),
            PayloadPart::ArgumentTypes => f.write_str("argument types"),
            PayloadPart::ArgumentValue { index } => write!(f, "argument {}", index + 1),
            PayloadPart::Strings => f.write_str("string blob"),
        }
    }
}

/// Something wrong with one record. Decoding never guesses: the record
/// says what it could not know, and the next frame decodes on its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Problem {
    /// The frame claims more bytes than the log holds; the log's frames
    /// end here.
    FrameTruncated {
        /// The frame's payload length.
        length: u16,
        /// Payload bytes present.
        available: usize,
    },
    /// The payload ends inside one of its parts.
    PayloadTruncated {
        /// Which part.
        part: PayloadPart,
        /// Bytes it needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// An argument's size is one its type cannot have.
    BadArgumentSize {
        /// Its position (0-based).
        index: usize,
        /// Its type.
        arg_type: ArgType,
        /// The size found.
        size: u8,
    },
    /// The string blob holds another number of strings than the frame
    /// has string arguments.
    StringCountMismatch {
        /// String arguments.
        string_args: usize,
        /// Strings in the blob.
        strings: usize,
    },
    /// The string blob's length field disagrees with its entries.
    StringBlobLength {
        /// The length field.
        declared: usize,
        /// The entries' length.
        actual: usize,
    },
    /// Bytes after everything the payload holds.
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// No allocated section of the ELF holds the format address: the log
    /// is from another build than this ELF.
    UnknownFormatAddress {
        /// The address.
        address: u32,
    },
    /// The format address is inside the ELF but no string ends there:
    /// the log is from another build than this ELF.
    UnterminatedFormat {
        /// The address.
        address: u32,
    },
    /// A level the agent does not write (6 or 7).
    UnknownLevel {
        /// The level bits.
        level: u8,
    },
    /// The ELF's module table has no module of this bit.
    UnknownModule {
        /// The bit index.
        index: u8,
    },
    /// The ELF's version string is not the device's.
    DifferentBuild {
        /// The version in the ELF.
        elf: String,
        /// The version the device reported.
        device: String,
    },
    /// The format and the captured arguments disagree.
    Format(FormatProblem),
    /// A METRIC record that is not `metric_<name>=<number>`.
    MalformedMetric,
}

impl Problem {
    /// A stable snake-case name of the problem's kind, for scripts
    /// (`unknown_format_address`, `too_few_arguments`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::FrameTruncated { .. } => "frame_truncated",
            Problem::PayloadTruncated { .. } => "payload_truncated",
            Problem::BadArgumentSize { .. } => "bad_argument_size",
            Problem::StringCountMismatch { .. } => "string_count_mismatch",
            Problem::StringBlobLength { .. } => "string_blob_length",
            Problem::TrailingBytes { .. } => "trailing_bytes",
            Problem::UnknownFormatAddress { .. } => "unknown_format_address",
            Problem::UnterminatedFormat { .. } => "unterminated_format",
            Problem::UnknownLevel { .. } => "unknown_level",
            Problem::UnknownModule { .. } => "unknown_module",
            Problem::DifferentBuild { .. } => "different_build",
            Problem::Format(p) => p.kind(),
            Problem::MalformedMetric => "malformed_metric",
        }
    }

    /// Whether the problem says the ELF is not the log's build.
    pub fn is_other_build(&self) -> bool {
        matches!(
            self,
            Problem::UnknownFormatAddress { .. }
                | Problem::UnterminatedFormat { .. }
                | Problem::DifferentBuild { .. }
        )
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::FrameTruncated { length, available } => write!(
                f,
                "frame of {length} payload bytes is cut off after {available}: the log is truncated"
            ),
            Problem::PayloadTruncated { part, needed, available } => write!(
                f,
                "the frame's {part} needs {needed} bytes but {available} are left"
            ),
            Problem::BadArgumentSize { index, arg_type, size } => write!(
                f,
                "argument {} is a {arg_type} of {size} bytes, a size that type cannot have",
                index + 1
            ),
            Problem::StringCountMismatch { string_args, strings } => write!(
                f,
                "the frame has {string_args} string arguments but {strings} strings"
            ),
            Problem::StringBlobLength { declared, actual } => write!(
                f,
                "the string blob says {declared} bytes, its entries take {actual}"
            ),
            Problem::TrailingBytes { count } => {
                write!(f, "{count} bytes after the frame's arguments")
            }
            Problem::UnknownFormatAddress { address } => write!(
                f,
                "format address {address:#010x} is in no allocated section of the ELF: give the ELF of the build that wrote this log"
            ),
            Problem::UnterminatedFormat { address } => write!(
                f,
                "format address {address:#010x} holds no string: give the ELF of the build that wrote this log"
            ),
            Problem::UnknownLevel { level } => write!(f, "level {level} is not one the agent writes"),
            Problem::UnknownModule { index } => write!(
                f,
                "module bit {index} is not in the ELF's module table: is the ELF of this build?"
            ),
            Problem::DifferentBuild { elf, device } => write!(
                f,
                "the ELF is version {elf:?} but the device runs {device:?}: give the ELF of the device's build"
            ),
            Problem::Format(p) => p.fmt(f),
            Problem::MalformedMetric => {
                f.write_str("a METRIC record that is not metric_<name>=<number>")
            }
        }
    }
}

/// One decoded log record: what its frame says, checked against its
/// format string, with the message formatted on request.
///
/// It borrows the log buffer and the [`SymbolTable`](super::SymbolTable)
/// (its arguments, strings and format stay where they are): decoding a
/// frame allocates nothing when nothing is wrong with it. Its problems are
/// all known when it is decoded, formatting or not.
#[derive(Clone)]
#[non_exhaustive]
pub struct Record<'a> {
    /// Offset of the record's frame in the log buffer (header included).
    pub offset: usize,
    /// When it was logged.
    pub time: RecordTime,
    /// Its level.
    pub level: Level,
    /// Its module.
    pub module: Module<'a>,
    /// Its format string's address, when the frame held one.
    pub format_address: Option<u32>,
    /// What is wrong with the record; empty for a clean one.
    pub problems: Vec<Problem>,
    pub(crate) format: Option<&'a [u8]>,
    pub(crate) payload: &'a [u8],
    pub(crate) model: DataModel,
    /// The metric's value; `None` for a record without a metric.
    pub(crate) metric_value: Option<MetricValue>,
    /// The metric's name when it is borrowed from the format or the log;
    /// empty (no name is) when it is `metric_owned`.
    pub(crate) metric_name: &'a str,
    /// The metric's name when only formatting told it (stale otherwise:
    /// a record of the fast path writes a borrowed name and leaves this
    /// buffer, its allocation reused).
    pub(crate) metric_owned: String,
}

impl<'a> Record<'a> {
    /// The metric, for a METRIC record of the form `metric_<name>=<value>`
    /// (its problem [`Problem::MalformedMetric`] otherwise); `None` for
    /// any other record.
    pub fn metric(&self) -> Option<MetricReading<'_>> {
        let value = self.metric_value?;
        let name = match self.metric_name.is_empty() {
            true => self.metric_owned.as_str(),
            false => self.metric_name,
        };
        Some(MetricReading { name, value })
    }

    /// The format string the message is printed with: `None` when it is
    /// unknown (its address is in no section, or the frame is cut before
    /// it), and the message is then empty.
    pub fn format(&self) -> Option<&'a [u8]> {
        self.format
    }

    /// The captured arguments, in order (an argument that could not be
    /// read is [`Arg::Unknown`]); strings borrow from the log.
    pub fn args(&self) -> Vec<Arg<'a>> {
        let mut args = Vec::new();
        parse_payload(self.payload, &mut args, &mut Vec::new());
        args
    }

    /// Appends the message to `out`, as the device's `printf` would have
    /// printed it (bytes, not always UTF-8: `%c` and `%s` copy bytes).
    /// Nothing is appended when the format is unknown. With a buffer kept
    /// across records, formatting allocates nothing.
    pub fn write_message(&self, out: &mut Vec<u8>) {
        let Some(format) = self.format else {
            return;
        };
        // The problems were reported when the record was decoded.
        let mut ignored = Vec::new();
        if declared_args(self.payload) <= STACK_ARGS {
            let mut args = StackArgs::new();
            parse_payload(self.payload, &mut args, &mut Vec::new());
            format_into(format, args.as_slice(), self.model, out, &mut ignored);
        } else {
            let args = self.args();
            format_into(format, &args, self.model, out, &mut ignored);
        }
    }

    /// Appends the message to `out`, bytes that are not UTF-8 replaced
    /// with U+FFFD (as [`Record::message`]).
    pub fn write_message_str(&self, out: &mut String) {
        let mut bytes = std::mem::take(out).into_bytes();
        let start = bytes.len();
        self.write_message(&mut bytes);
        *out = String::from_utf8(bytes).unwrap_or_else(|e| {
            let mut bytes = e.into_bytes();
            let tail = bytes.split_off(start);
            // The head was a String: valid.
            let mut text = String::from_utf8_lossy(&bytes).into_owned();
            text.push_str(&String::from_utf8_lossy(&tail));
            text
        });
    }

    /// The formatted message, as the device's `printf` would have printed
    /// it (bytes that are not UTF-8 are replaced with U+FFFD). Empty when
    /// the format is unknown.
    pub fn message(&self) -> String {
        let mut text = String::new();
        self.write_message_str(&mut text);
        text
    }

    /// The message for `{}` (formatted when displayed).
    pub fn display_message(&self) -> Message<'_, 'a> {
        Message(self)
    }
}

impl fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("offset", &self.offset)
            .field("time", &self.time)
            .field("level", &self.level)
            .field("module", &self.module)
            .field("format_address", &self.format_address)
            .field("metric", &self.metric())
            .field("problems", &self.problems)
            .field("format", &self.format)
            .field("payload", &self.payload)
            .field("model", &self.model)
            .finish()
    }
}

/// Records are equal when all they say is: the buffer of a metric's
/// owned name counts only when the name is in it.
impl PartialEq for Record<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
            && self.time == other.time
            && self.level == other.level
            && self.module == other.module
            && self.format_address == other.format_address
            && self.metric() == other.metric()
            && self.problems == other.problems
            && self.format == other.format
            && self.payload == other.payload
            && self.model == other.model
    }
}

/// A record's message, formatted when displayed
/// ([`Record::display_message`]).
#[derive(Debug, Clone, Copy)]
pub struct Message<'r, 'a>(&'r Record<'a>);

impl fmt::Display for Message<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = Vec::new();
        self.0.write_message(&mut bytes);
        // Padding and width apply to the message as a whole.
        f.pad(&String::from_utf8_lossy(&bytes))
    }
}
