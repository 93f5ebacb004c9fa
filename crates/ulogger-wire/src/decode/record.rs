//! A decoded log record and what can be wrong with it.

use std::fmt;
use std::sync::Arc;

use super::printf::{ArgType, FormatProblem};
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Module {
    /// The module's bit index (0 to 31).
    pub index: u8,
    /// Its name from the ELF's module table, if there.
    pub name: Option<Arc<str>>,
}

/// The module bit that means "always log" and names no module.
pub const ALWAYS_LOG_BIT: u8 = 31;

impl Module {
    /// The module's mask, `1 << index`.
    pub fn mask(&self) -> u32 {
        1u32 << (self.index & 31)
    }

    /// Whether this is bit 31, "always log", which is no module.
    pub fn is_always(&self) -> bool {
        self.index == ALWAYS_LOG_BIT
    }
}

impl fmt::Display for Module {
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
/// `metric_heartbeat=1`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricReading {
    /// The metric's name.
    pub name: String,
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

/// One decoded log record.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Record {
    /// Offset of the record's frame in the log buffer (header included).
    pub offset: usize,
    /// When it was logged.
    pub time: RecordTime,
    /// Its level.
    pub level: Level,
    /// Its module.
    pub module: Module,
    /// Its format string's address, when the frame held one.
    pub format_address: Option<u32>,
    /// The formatted message, as the device's `printf` would have printed
    /// it (bytes that are not UTF-8 are replaced with U+FFFD). Empty when
    /// the format is unknown.
    pub message: String,
    /// The metric, for a METRIC record of the form `metric_<name>=<value>`.
    pub metric: Option<MetricReading>,
    /// What is wrong with the record; empty for a clean one.
    pub problems: Vec<Problem>,
}
