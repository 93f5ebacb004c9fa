//! Local decoding of binary logs with the firmware's ELF (PROTOCOL §5.1).
//!
//! A [`SymbolTable`] is read once from the ELF; a [`LogDecoder`] then walks
//! one log buffer (header, frames, payloads) and yields a [`Record`] per
//! frame: time, level, module, the captured arguments, a typed
//! [`MetricReading`] for metrics, and every problem. The message, as C's
//! `printf` would print it ([`printf`]), is formatted only when asked
//! for ([`Record::message`], [`Record::write_message`]): decoding checks
//! the arguments against the format, parsed once per address, without
//! formatting (docs/decisions.md, "lazy formatting").
//!
//! Decoding never guesses and never stops early for a bad frame: an
//! unknown format address, a truncated payload or arguments that disagree
//! with the format become [`Problem`]s on that record, and the next frame
//! decodes on its own. Memory is bounded by the input: a record's message
//! is at most [`MAX_MESSAGE`] bytes, one record is held at a time.

mod cache;
mod float;
mod frames;
mod printf;
mod record;
mod symbols;

pub use frames::{FrameFormat, FramesEnd};
pub use printf::{printf, Arg, ArgType, DataModel, FormatProblem, Printed, MAX_FIELD, MAX_MESSAGE};
pub use record::{
    Clock, Level, Message, MetricReading, Module, PayloadPart, Problem, Record, RecordTime,
    ALWAYS_LOG_BIT,
};
pub use symbols::{ElfError, ModuleTableError, SymbolTable, DEBUG_MODULES_SECTION, MAX_FORMAT_LEN};

use crate::{validate_checksum, HeaderError, LogHeader, MetricValue};
use std::sync::OnceLock;

use cache::FormatCache;
use frames::{next_frame, parse_payload, Step};

/// Choices for decoding a log; the defaults suit every known agent.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct DecodeOptions {
    frame_format: Option<FrameFormat>,
    device_version: Option<String>,
}

impl DecodeOptions {
    /// The defaults: frame format from the header version, no version check.
    pub fn new() -> DecodeOptions {
        DecodeOptions::default()
    }

    /// Reads the frames as `format` whatever the header version says (a
    /// firmware that pairs a header and a frame format unusually).
    pub fn frame_format(mut self, format: FrameFormat) -> DecodeOptions {
        self.frame_format = Some(format);
        self
    }

    /// The firmware version the device reported (its boot registration or
    /// BLE `config`): when the ELF's version string is known and differs,
    /// every record carries [`Problem::DifferentBuild`].
    pub fn device_version(mut self, version: impl Into<String>) -> DecodeOptions {
        self.device_version = Some(version.into());
        self
    }
}

/// Decodes one log buffer, a record at a time (an [`Iterator`] of
/// [`Record`]).
///
/// ```
/// use ulogger_wire::{build_log, DataModel, DecodeOptions, LogDecoder, LogHeader, SymbolTable};
/// // A format string at 0x1000 and one frame that uses it with an i32 of 1 byte.
/// let symbols = SymbolTable::from_parts([(0x1000, b"t=%d\0".to_vec())], [(0, "MAIN".into())], DataModel::Ilp32);
/// let payload = [0x20, 0x00, 0x10, 0, 0, 1, 0x11, 42]; // INFO, module 0; fmt; 1 arg: i32 size 1
/// let mut data = vec![payload.len() as u8, 0, 5, 0, 0, 0]; // len, tick delta 5
/// data.extend_from_slice(&payload);
/// let mut header = LogHeader::new(3)?;
/// header.tick_rate_hz = Some(1000);
/// let log = build_log(header, &data)?;
/// let records: Vec<_> = LogDecoder::new(&symbols, &log, &DecodeOptions::new())?.collect();
/// assert_eq!(records[0].message(), "t=42");
/// assert_eq!(records[0].module.to_string(), "MAIN");
/// # Ok::<(), ulogger_wire::HeaderError>(())
/// ```
#[derive(Debug)]
pub struct LogDecoder<'a> {
    symbols: &'a SymbolTable,
    header: LogHeader,
    data: &'a [u8],
    base: usize,
    pos: usize,
    format: FrameFormat,
    clock: Clock,
    ticks: u64,
    /// The whole buffer, for its checksum.
    log: &'a [u8],
    /// Whether the buffer is a valid log: its checksum is computed the
    /// first time [`LogDecoder::integrity`] asks.
    integrity: OnceLock<Option<HeaderError>>,
    trailer: usize,
    end: Option<FramesEnd>,
    other_build: Option<Problem>,
    /// Microseconds per tick when the rate divides a second (1 kHz...):
    /// a multiplication per frame instead of a division.
    micros_per_tick: Option<u64>,
    /// (epoch, anchor tick, microseconds per tick) when every record's
    /// wall time is one multiplication and a subtraction in `i64`.
    fast_wall: Option<(i64, u32, u64)>,
    modules: [Option<&'a str>; 32],
    /// Bits of the modules the ELF's module table lacks (never bit 31).
    unknown_modules: u32,
    /// Per value of a payload's first byte (level and module), a bit set
    /// when its record has a problem of its own (`head_problems`).
    flagged: [u64; 4],
    /// Whether frames are tick-stamped ([`FrameFormat::TickDelta`]).
    tick_frames: bool,
    formats: FormatCache<'a>,
    args: Vec<Arg<'a>>,
    message: Vec<u8>,
    /// The record of the last frame, rewritten in place per frame.
    record: Record<'a>,
}

impl<'a> LogDecoder<'a> {
    /// Starts decoding `log` (a whole buffer: header, data, and possibly a
    /// trailer or unused space after `used_bytes`, which are not decoded).
    ///
    /// A checksum that does not match, or data shorter than `used_bytes`,
    /// does not stop decoding: see [`LogDecoder::integrity`].
    ///
    /// # Errors
    ///
    /// The errors of [`LogHeader::parse`]: no header to start from.
    pub fn new(
        symbols: &'a SymbolTable,
        log: &'a [u8],
        options: &DecodeOptions,
    ) -> Result<LogDecoder<'a>, HeaderError> {
        let header = LogHeader::parse(log)?;
        let base = header.header_len();
        let after = log.get(base..).unwrap_or_default();
        let used = usize::from(header.used_bytes).min(after.len());
        let data = after.get(..used).unwrap_or_default();
        let trailer = after.len() - used;
        let format = options
            .frame_format
            .unwrap_or_else(|| FrameFormat::for_header_version(header.version));
        let clock = match format {
            FrameFormat::Sequenced => Clock::None,
            FrameFormat::TickDelta if wall_clock(&header).is_some() => Clock::Wall,
            FrameFormat::TickDelta => Clock::Uptime,
        };
        let other_build = match (&options.device_version, symbols.firmware_version()) {
            (Some(device), Some(elf)) if device != elf => Some(Problem::DifferentBuild {
                elf: elf.to_string(),
                device: device.clone(),
            }),
            _ => None,
        };
        let mut modules = [None; 32];
        for (bit, name) in (0u8..).zip(modules.iter_mut()) {
            *name = symbols.module_name(bit);
        }
        let unknown_modules = match symbols.has_module_table() {
            true => (0..record::ALWAYS_LOG_BIT)
                .zip(modules)
                .filter(|(_, name)| name.is_none())
                .fold(0u32, |mask, (bit, _)| mask | 1 << bit),
            false => 0,
        };
        let micros_per_tick = header
            .tick_rate_hz
            .filter(|&r| r != 0 && 1_000_000 % r == 0)
            .map(|r| u64::from(1_000_000 / r));
        // At most 2^32 * 10^6 < 2^52 microseconds before an epoch of at
        // most i64::MAX: no overflow.
        let fast_wall = match (
            clock,
            wall_clock(&header).and_then(|us| i64::try_from(us).ok()),
            header.anchor_tick,
            micros_per_tick,
        ) {
            (Clock::Wall, Some(epoch), Some(anchor), Some(per_tick)) => {
                Some((epoch, anchor, per_tick))
            }
            _ => None,
        };
        let model = symbols.data_model();
        // The rule of `head_problems`: a word holds two levels of 32
        // modules each, the last one levels 6 and 7, which the agent never
        // writes; a different build flags every record.
        let by_module = u64::from(unknown_modules) | u64::from(unknown_modules) << 32;
        let flagged = match other_build {
            Some(_) => [u64::MAX; 4],
            None => [by_module, by_module, by_module, u64::MAX],
        };
        Ok(LogDecoder {
            flagged,
            tick_frames: format == FrameFormat::TickDelta,
            micros_per_tick,
            fast_wall,
            unknown_modules,
            symbols,
            header,
            data,
            base,
            pos: 0,
            format,
            clock,
            ticks: 0,
            log,
            integrity: OnceLock::new(),
            trailer,
            end: None,
            other_build,
            modules,
            formats: FormatCache::default(),
            args: Vec::new(),
            message: Vec::new(),
            record: Record {
                offset: 0,
                time: RecordTime::Sequence { frame_seq: 0 },
                level: Level::Debug,
                module: Module {
                    index: 0,
                    name: None,
                },
                format_address: None,
                problems: Vec::new(),
                format: None,
                payload: &[],
                model,
                metric_value: None,
                metric_name: "",
                metric_owned: String::new(),
            },
        })
    }

    /// The log's header.
    pub fn header(&self) -> &LogHeader {
        &self.header
    }

    /// The frame format used (from the header version unless overridden).
    pub fn frame_format(&self) -> FrameFormat {
        self.format
    }

    /// How the records' times are known.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Why the buffer is not a valid log ([`HeaderError::ChecksumMismatch`]
    /// or [`HeaderError::DataTruncated`]), if it is not; its records are
    /// decoded all the same. The checksum is computed on the first call
    /// (decoding the records does not need it).
    pub fn integrity(&self) -> Option<&HeaderError> {
        self.integrity
            .get_or_init(|| validate_checksum(self.log).err())
            .as_ref()
    }

    /// Bytes after the header and `used_bytes` of data (agent 1.2.4's
    /// trailer, or unused ring space): not decoded.
    pub fn trailer_len(&self) -> usize {
        self.trailer
    }

    /// Why the frames ended, once the iterator has returned `None`.
    pub fn end(&self) -> Option<FramesEnd> {
        self.end
    }

    /// Sets the record's time to the next frame's, whose stamp is
    /// `stamp`; written in place, each variant where it is known.
    #[inline(always)]
    fn set_time(&mut self, stamp: u32) {
        match self.fast_wall {
            Some((epoch, anchor, per_tick)) => {
                // Less than 2^32 ticks a frame, fewer than 2^14 frames in
                // a log (`used_bytes` is a u16): never near `u64::MAX`,
                // where the other clocks saturate.
                self.ticks += u64::from(stamp);
                let before = anchor.wrapping_sub(self.ticks as u32);
                self.record.time = RecordTime::Wall {
                    unix_us: epoch - (u64::from(before) * per_tick) as i64,
                };
            }
            None => self.record.time = self.time_of_any_clock(stamp),
        }
    }

    #[inline(never)]
    fn time_of_any_clock(&mut self, stamp: u32) -> RecordTime {
        if self.format == FrameFormat::Sequenced {
            return RecordTime::Sequence {
                frame_seq: u16::try_from(stamp).unwrap_or(u16::MAX),
            };
        }
        self.ticks = self.ticks.saturating_add(u64::from(stamp));
        let rate = self.header.tick_rate_hz.filter(|&r| r != 0);
        if let (Some(epoch), Some(anchor), Some(rate)) =
            (wall_clock(&self.header), self.header.anchor_tick, rate)
        {
            // The anchor tick and the epoch are the same instant (the
            // readout); ticks are u32 on the device and wrap.
            let before = anchor.wrapping_sub(self.ticks as u32);
            // At most 2^32 * 10^6 < 2^52: no 128-bit division per frame.
            let micros = match self.micros_per_tick {
                Some(per_tick) => u64::from(before) * per_tick,
                None => u64::from(before) * 1_000_000 / u64::from(rate),
            };
            let unix_us = i128::from(epoch) - i128::from(micros);
            return RecordTime::Wall {
                unix_us: i64::try_from(unix_us).unwrap_or(i64::MIN),
            };
        }
        let micros = rate.and_then(|rate| {
            // Exact: per_tick * rate is a second.
            if let Some(micros) = self
                .micros_per_tick
                .and_then(|per_tick| self.ticks.checked_mul(per_tick))
            {
                return Some(micros);
            }
            match self.ticks.checked_mul(1_000_000) {
                Some(scaled) => Some(scaled / u64::from(rate)),
                None => u64::try_from(u128::from(self.ticks) * 1_000_000 / u128::from(rate)).ok(),
            }
        });
        RecordTime::Uptime {
            ticks: self.ticks,
            micros,
        }
    }

    /// Decodes the next frame into the decoder's record and lends it:
    /// the same record as [`Iterator::next`] gives, without moving it out
    /// (its problems' buffer is reused from frame to frame). `None` once
    /// the frames have ended ([`LogDecoder::end`] says why).
    ///
    /// ```
    /// # use ulogger_wire::{build_log, DataModel, DecodeOptions, LogDecoder, LogHeader, SymbolTable};
    /// # let symbols = SymbolTable::from_parts([(0x1000, b"t=%d\0".to_vec())], [(0, "MAIN".into())], DataModel::Ilp32);
    /// # let payload = [0x20, 0x00, 0x10, 0, 0, 1, 0x11, 42];
    /// # let mut data = vec![payload.len() as u8, 0, 5, 0, 0, 0];
    /// # data.extend_from_slice(&payload);
    /// # let log = build_log(LogHeader::new(3)?, &data)?;
    /// let mut decoder = LogDecoder::new(&symbols, &log, &DecodeOptions::new())?;
    /// let mut problems = 0;
    /// while let Some(record) = decoder.next_record() {
    ///     problems += record.problems.len();
    /// }
    /// assert_eq!(problems, 0);
    /// # Ok::<(), ulogger_wire::HeaderError>(())
    /// ```
    #[inline(always)]
    pub fn next_record(&mut self) -> Option<&Record<'a>> {
        // A whole tick-stamped frame (the common case) inline; past the
        // end `pos` is the data's length, so this never reads on.
        if let (true, Some((head, after))) = (
            self.tick_frames,
            self.data
                .get(self.pos..)
                .and_then(<[u8]>::split_first_chunk::<6>),
        ) {
            let len = u16::from_le_bytes([head[0], head[1]]);
            // Neither 0 nor 0xFFFF (an end marker), and all there.
            if let (true, Some(payload)) =
                (len.wrapping_sub(1) < 0xFFFE, after.get(..usize::from(len)))
            {
                let len = usize::from(len);
                let offset = self.base + self.pos;
                self.pos += 6 + len;
                let stamp = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
                self.set_time(stamp);
                self.record.offset = offset;
                self.record.payload = payload;
                if !self.decode_known_clean(payload) {
                    self.decode_any(payload, None);
                }
                return Some(&self.record);
            }
        }
        self.next_record_of_any_frame()
    }

    /// [`LogDecoder::next_record`] for what is not a whole tick-stamped
    /// frame: agent 1.0.x's frames, a truncated frame, the end.
    #[inline(never)]
    fn next_record_of_any_frame(&mut self) -> Option<&Record<'a>> {
        if self.end.is_some() {
            return None;
        }
        let (offset, stamp, payload, cut) =
            match next_frame(self.data, self.pos, self.format, self.base) {
                Step::Frame {
                    offset,
                    stamp,
                    payload,
                } => {
                    self.pos += self.format.frame_header_len() + payload.len();
                    (offset, stamp, payload, None)
                }
                Step::Truncated {
                    offset,
                    stamp,
                    length,
                    available,
                } => {
                    self.end = Some(FramesEnd::Truncated { offset });
                    self.pos = self.data.len();
                    let rest = self
                        .data
                        .get(offset - self.base + self.format.frame_header_len()..)
                        .unwrap_or_default();
                    let cut = Problem::FrameTruncated { length, available };
                    (offset, stamp.unwrap_or(0), rest, Some(cut))
                }
                Step::End(end) => {
                    self.end = Some(end);
                    self.pos = self.data.len();
                    return None;
                }
            };
        self.set_time(stamp);
        self.record.offset = offset;
        self.record.payload = payload;
        if cut.is_some() || !self.decode_known_clean(payload) {
            self.decode_any(payload, cut);
        }
        Some(&self.record)
    }

    /// The fast path: a frame whose tags are its format's last clean
    /// frame's ([`cache::Known::known_clean`]) and whose metric, if
    /// any, its format's shape tells. Its only problems can be of the
    /// level, the module and the build. `false` for any other frame, the
    /// record then to be written whole by [`LogDecoder::decode_any`].
    #[inline(always)]
    fn decode_known_clean(&mut self, payload: &'a [u8]) -> bool {
        let Some((head, rest)) = payload.split_first_chunk::<6>() else {
            return false;
        };
        let address = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        let Some(known) = self.formats.known(self.symbols, address) else {
            return false;
        };
        if !known.known_clean(usize::from(head[5]), rest) {
            return false;
        }
        let first = head[0];
        let record = &mut self.record;
        // The fields every record of the fast path has first, the metric
        // last: fewer values live across its reading. A frame only
        // formatting tells the metric of is then written whole by
        // `decode_any`, these fields and problems included.
        record.level = LEVELS[usize::from(first >> 5)];
        record.module = Module {
            index: first & 0x1f,
            name: self
                .modules
                .get(usize::from(first & 0x1f))
                .copied()
                .flatten(),
        };
        record.format_address = Some(address);
        record.format = Some(known.text);
        if !record.problems.is_empty() {
            record.problems.clear();
        }
        if self.flagged[usize::from(first >> 6)] >> (first & 63) & 1 != 0 {
            head_problems(
                first,
                self.unknown_modules,
                &self.other_build,
                &mut record.problems,
            );
        }
        if first >> 5 != METRIC_BITS {
            record.metric_value = None;
            return true;
        }
        match known.metric_known_clean(rest, &mut record.metric_name, &mut record.metric_value) {
            Some(true) => {}
            Some(false) => record.problems.push(Problem::MalformedMetric),
            // Only formatting tells.
            None => return false,
        }
        true
    }

    /// Any frame: its arguments captured and checked against its format,
    /// the message formatted when they do not fit (to report exactly what
    /// formatting finds); a frame found clean teaches its format its tags.
    #[inline(never)]
    fn decode_any(&mut self, payload: &'a [u8], cut: Option<Problem>) {
        let mut problems = std::mem::take(&mut self.record.problems);
        problems.clear();
        let head = parse_payload(payload, &mut self.args, &mut problems);
        let payload_clean = problems.is_empty() && cut.is_none();
        let level = Level::from_bits(head.level);
        head_problems(
            head.level << 5 | head.module,
            self.unknown_modules,
            &self.other_build,
            &mut problems,
        );
        let module = Module {
            index: head.module,
            name: self
                .modules
                .get(usize::from(head.module))
                .copied()
                .flatten(),
        };
        let truncated_head = matches!(
            problems.first(),
            Some(Problem::PayloadTruncated {
                part: PayloadPart::Head | PayloadPart::ArgumentTypes,
                ..
            })
        );
        let model = self.symbols.data_model();
        let mut format = None;
        let mut metric = None;
        let mut learn = false;
        if let (Some(address), false) = (head.fmt_addr, truncated_head) {
            let compiled = self.formats.get(self.symbols, address);
            match compiled.text {
                Ok(text) => {
                    format = Some(text);
                    let is_metric = level == Level::Metric;
                    let clean = compiled.is_clean(&self.args);
                    learn = clean && payload_clean;
                    // Formatting runs now only when the arguments do not
                    // fit the format (to report exactly what it finds),
                    // or for a metric whose format's shape does not tell.
                    let known = match clean {
                        true if is_metric => compiled.metric(&self.args, model),
                        true => Some(None),
                        false => None,
                    };
                    let found = match known {
                        Some(found) => found,
                        None => {
                            self.message.clear();
                            let mut format_problems = Vec::new();
                            printf::format_into(
                                text,
                                &self.args,
                                model,
                                &mut self.message,
                                &mut format_problems,
                            );
                            problems.extend(format_problems.into_iter().map(Problem::Format));
                            is_metric
                                .then(|| metric_of(&self.message, &self.args))
                                .flatten()
                                .map(|(name, value)| {
                                    // Kept in the record: "" says so.
                                    self.record.metric_owned.clear();
                                    self.record.metric_owned.push_str(name);
                                    ("", value)
                                })
                        }
                    };
                    if is_metric {
                        metric = found;
                        if metric.is_none() {
                            problems.push(Problem::MalformedMetric);
                        }
                    }
                }
                Err(symbols::Lookup::NotFound) => {
                    problems.push(Problem::UnknownFormatAddress { address })
                }
                Err(symbols::Lookup::Unterminated) => {
                    problems.push(Problem::UnterminatedFormat { address })
                }
            }
            if learn {
                self.formats.learn(self.symbols, address, payload);
            }
        }
        if let Some(cut) = cut {
            problems.insert(0, cut);
        }
        let record = &mut self.record;
        record.level = level;
        record.module = module;
        record.format_address = head.fmt_addr;
        record.metric_value = metric.map(|(_, value)| value);
        if let Some((name, _)) = metric {
            record.metric_name = name;
        }
        record.problems = problems;
        record.format = format;
    }
}

impl<'a> Iterator for LogDecoder<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        self.next_record()?;
        let record = &mut self.record;
        Some(Record {
            offset: record.offset,
            time: record.time,
            level: record.level,
            module: record.module,
            format_address: record.format_address,
            problems: std::mem::take(&mut record.problems),
            format: record.format,
            payload: record.payload,
            model: record.model,
            metric_value: record.metric_value,
            metric_name: record.metric_name,
            metric_owned: match record.metric_name.is_empty() && record.metric_value.is_some() {
                true => std::mem::take(&mut record.metric_owned),
                false => String::new(),
            },
        })
    }
}

/// Each level by its bits: a load, not a match.
const LEVELS: [Level; 8] = [
    Level::Debug,
    Level::Info,
    Level::Warning,
    Level::Error,
    Level::Critical,
    Level::Metric,
    Level::Unknown(6),
    Level::Unknown(7),
];

/// The level bits of a METRIC record.
const METRIC_BITS: u8 = 5;

/// The problems of a record's level and module bits (`first`, its
/// payload's first byte) and of the build, in the order decoding
/// reports them.
#[cold]
fn head_problems(
    first: u8,
    unknown_modules: u32,
    other_build: &Option<Problem>,
    problems: &mut Vec<Problem>,
) {
    if let Level::Unknown(level) = Level::from_bits(first >> 5) {
        problems.push(Problem::UnknownLevel { level });
    }
    let index = first & 0x1f;
    if unknown_modules & (1 << index) != 0 {
        problems.push(Problem::UnknownModule { index });
    }
    if let Some(other) = other_build {
        problems.push(other.clone());
    }
}

/// The header's wall clock: version 4's `epoch_time_us` when not 0.
fn wall_clock(header: &LogHeader) -> Option<u64> {
    header.epoch_time_us.filter(|&us| us != 0)
}

/// `metric_<name>=<value>`: the value typed from the last captured
/// argument when the message ends with it, else read from the text.
fn metric_of<'m>(message: &'m [u8], args: &[Arg<'_>]) -> Option<(&'m str, MetricValue)> {
    let text = std::str::from_utf8(message).ok()?;
    let rest = text.strip_prefix("metric_")?;
    let (name, value_text) = rest.split_once('=')?;
    if name.is_empty() || value_text.is_empty() {
        return None;
    }
    let parsed = |t: &str| -> Option<MetricValue> {
        if let Ok(n) = t.parse::<i64>() {
            return Some(MetricValue::Int(n));
        }
        t.parse::<f64>().ok().map(MetricValue::Float)
    };
    let from_text = parsed(value_text)?;
    let value = match (args.last(), from_text) {
        (Some(Arg::Double(x)), MetricValue::Float(_) | MetricValue::Int(_)) => {
            MetricValue::Float(*x)
        }
        (Some(Arg::U64(n)), _) if i64::try_from(*n).is_err() => MetricValue::Float(*n as f64),
        _ => from_text,
    };
    Some((name, value))
}

#[cfg(test)]
mod tests;
