//! The frames inside a log's data and the payload of each (PROTOCOL §5.1).

use super::printf::{Arg, ArgType};
use super::record::{PayloadPart, Problem};

/// How a log's frames are laid out; the header version says which agent
/// wrote it (PROTOCOL §5): version 1 (agent 1.0.x) has sequence-numbered
/// frames, versions 3 and 4 (agent 1.1 and later) tick-stamped ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameFormat {
    /// Agent 1.0.x: `[payload_len u16][frame_seq u16][payload]`.
    Sequenced,
    /// Agent 1.1 and later: `[payload_len u16][tick_delta u32][payload]`.
    TickDelta,
}

impl FrameFormat {
    /// The frame format of a log whose header has `version`: versions 0
    /// to 2 are agent 1.0.x's [`FrameFormat::Sequenced`], 3 and 4
    /// [`FrameFormat::TickDelta`].
    pub fn for_header_version(version: u8) -> FrameFormat {
        if version <= 2 {
            FrameFormat::Sequenced
        } else {
            FrameFormat::TickDelta
        }
    }

    /// Bytes before a frame's payload.
    pub fn frame_header_len(self) -> usize {
        match self {
            FrameFormat::Sequenced => 4,
            FrameFormat::TickDelta => 6,
        }
    }
}

/// Why the frames of a log ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FramesEnd {
    /// The data was used up exactly.
    Exhausted,
    /// A length of 0 or 0xFFFF (erased flash) at `offset`.
    EndMarker {
        /// Offset of the marker in the log buffer.
        offset: usize,
    },
    /// A frame claims more bytes than the data holds (see
    /// [`Problem::FrameTruncated`] on its record).
    Truncated {
        /// Offset of the frame in the log buffer.
        offset: usize,
    },
    /// Fewer bytes than a frame header are left.
    StrayBytes {
        /// Offset of the first of them in the log buffer.
        offset: usize,
        /// How many.
        count: usize,
    },
}

/// One step of walking the frames.
pub(crate) enum Step<'a> {
    Frame {
        offset: usize,
        stamp: u32,
        payload: &'a [u8],
    },
    Truncated {
        offset: usize,
        stamp: Option<u32>,
        length: u16,
        available: usize,
    },
    End(FramesEnd),
}

/// The frame at `pos` of `data` (the bytes after the header); `base` is
/// the header's length, so offsets name positions in the whole buffer.
#[inline]
pub(crate) fn next_frame(data: &[u8], pos: usize, format: FrameFormat, base: usize) -> Step<'_> {
    let rest = data.get(pos..).unwrap_or_default();
    let offset = base + pos;
    if rest.is_empty() {
        return Step::End(FramesEnd::Exhausted);
    }
    let Some(len) = rest.first_chunk::<2>().map(|b| u16::from_le_bytes(*b)) else {
        return Step::End(FramesEnd::StrayBytes {
            offset,
            count: rest.len(),
        });
    };
    if len == 0 || len == 0xFFFF {
        return Step::End(FramesEnd::EndMarker { offset });
    }
    let head = format.frame_header_len();
    let stamp = match format {
        FrameFormat::Sequenced => rest
            .get(2..4)
            .and_then(|b| <[u8; 2]>::try_from(b).ok())
            .map(|b| u32::from(u16::from_le_bytes(b))),
        FrameFormat::TickDelta => rest
            .get(2..6)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes),
    };
    let end = head + usize::from(len);
    match (stamp, rest.get(head..end)) {
        (Some(stamp), Some(payload)) => Step::Frame {
            offset,
            stamp,
            payload,
        },
        _ => Step::Truncated {
            offset,
            stamp,
            length: len,
            available: rest.len().saturating_sub(head),
        },
    }
}

/// A frame's payload, parsed; arguments borrow from the payload.
pub(crate) struct Payload {
    pub(crate) level: u8,
    pub(crate) module: u8,
    pub(crate) fmt_addr: Option<u32>,
}

/// Bytes before the argument tags: level/module, fmt_addr, nargs.
const PAYLOAD_HEAD: usize = 6;

/// Parses `payload` into its head and `args` (cleared first); what does
/// not fit is reported in `problems` and the arguments that could not be
/// read are [`Arg::Unknown`].
pub(crate) fn parse_payload<'a>(
    payload: &'a [u8],
    args: &mut impl ArgBuf<'a>,
    problems: &mut Vec<Problem>,
) -> Payload {
    args.clear();
    let first = payload.first().copied().unwrap_or(0);
    let mut parsed = Payload {
        level: first >> 5,
        module: first & 0x1f,
        fmt_addr: None,
    };
    let Some(head) = payload.first_chunk::<PAYLOAD_HEAD>() else {
        problems.push(Problem::PayloadTruncated {
            part: PayloadPart::Head,
            needed: PAYLOAD_HEAD,
            available: payload.len(),
        });
        if let Some(addr) = payload.get(1..5).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
            parsed.fmt_addr = Some(u32::from_le_bytes(addr));
        }
        return parsed;
    };
    parsed.fmt_addr = Some(u32::from_le_bytes([head[1], head[2], head[3], head[4]]));
    let nargs = usize::from(head[5]);
    let rest = payload.get(PAYLOAD_HEAD..).unwrap_or_default();
    let Some(tags) = rest.get(..nargs) else {
        problems.push(Problem::PayloadTruncated {
            part: PayloadPart::ArgumentTypes,
            needed: nargs,
            available: rest.len(),
        });
        return parsed;
    };
    let mut values = rest.get(nargs..).unwrap_or_default();
    let mut truncated = false;
    for (index, &tag) in tags.iter().enumerate() {
        let ty = ArgType::from_tag(tag >> 4);
        let size = usize::from(tag & 0x0f);
        if truncated {
            args.push(Arg::Unknown(ty));
            continue;
        }
        let Some(bytes) = values.get(..size) else {
            problems.push(Problem::PayloadTruncated {
                part: PayloadPart::ArgumentValue { index },
                needed: size,
                available: values.len(),
            });
            truncated = true;
            args.push(Arg::Unknown(ty));
            continue;
        };
        values = values.get(size..).unwrap_or_default();
        let arg = match value(ty, bytes) {
            Some(arg) => arg,
            None => {
                problems.push(Problem::BadArgumentSize {
                    index,
                    arg_type: ty,
                    size: tag & 0x0f,
                });
                Arg::Unknown(ty)
            }
        };
        args.push(arg);
    }
    if truncated {
        return parsed;
    }
    if !tags.iter().any(|&tag| is_blob_string(tag)) {
        if !values.is_empty() {
            problems.push(Problem::TrailingBytes {
                count: values.len(),
            });
        }
        return parsed;
    }
    strings(values, tags, args, problems);
    parsed
}

/// Whether an argument's tag says its value is in the string blob (type
/// 8, size 0).
#[inline]
pub(crate) fn is_blob_string(tag: u8) -> bool {
    ArgType::from_tag(tag >> 4) == ArgType::Str && tag & 0x0f == 0
}

/// Where a frame's arguments are captured: a reused `Vec`, or a small
/// array on the stack when a message is formatted.
pub(crate) trait ArgBuf<'a> {
    fn clear(&mut self);
    fn push(&mut self, arg: Arg<'a>);
    fn get_mut(&mut self, index: usize) -> Option<&mut Arg<'a>>;
}

impl<'a> ArgBuf<'a> for Vec<Arg<'a>> {
    fn clear(&mut self) {
        Vec::clear(self);
    }
    fn push(&mut self, arg: Arg<'a>) {
        Vec::push(self, arg);
    }
    fn get_mut(&mut self, index: usize) -> Option<&mut Arg<'a>> {
        <[Arg<'a>]>::get_mut(self, index)
    }
}

/// Arguments that fit on the stack (most frames have a few).
pub(crate) const STACK_ARGS: usize = 12;

/// Up to [`STACK_ARGS`] arguments without an allocation.
pub(crate) struct StackArgs<'a> {
    items: [Arg<'a>; STACK_ARGS],
    len: usize,
}

impl<'a> StackArgs<'a> {
    pub(crate) fn new() -> StackArgs<'a> {
        StackArgs {
            items: [Arg::Unknown(ArgType::Unknown(0)); STACK_ARGS],
            len: 0,
        }
    }

    pub(crate) fn as_slice(&self) -> &[Arg<'a>] {
        self.items.get(..self.len).unwrap_or_default()
    }
}

impl<'a> ArgBuf<'a> for StackArgs<'a> {
    fn clear(&mut self) {
        self.len = 0;
    }
    // Callers use it only for frames of at most STACK_ARGS arguments;
    // more are dropped rather than overflow.
    fn push(&mut self, arg: Arg<'a>) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = arg;
            self.len += 1;
        }
    }
    fn get_mut(&mut self, index: usize) -> Option<&mut Arg<'a>> {
        self.items.get_mut(..self.len)?.get_mut(index)
    }
}

/// The number of arguments a payload declares (0 when it has no head).
#[inline]
pub(crate) fn declared_args(payload: &[u8]) -> usize {
    payload.get(PAYLOAD_HEAD - 1).map_or(0, |&n| usize::from(n))
}

/// A captured value of type `ty` in `bytes` (its `size` bytes,
/// little-endian): signed types sign-extend from their size, unsigned
/// ones zero-extend. `None` for a size the type cannot have.
#[inline(always)]
pub(crate) fn value(ty: ArgType, bytes: &[u8]) -> Option<Arg<'static>> {
    // Fixed-size reads: no copy of a variable length per argument. No
    // type has 3, 5, 6, 7 or more than 8 bytes.
    let raw = match *bytes {
        [] => 0,
        [a] => u64::from(a),
        [a, b] => u64::from(u16::from_le_bytes([a, b])),
        [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d])),
        [a, b, c, d, e, f, g, h] => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
        _ => return None,
    };
    let n = bytes.len();
    let signed = || {
        let shift = 64 - 8 * n as u32;
        ((raw << shift) as i64) >> shift
    };
    Some(match (ty, n) {
        (ArgType::I32, 1 | 2 | 4) => Arg::I32(signed() as i32),
        (ArgType::U32, 1 | 2 | 4) => Arg::U32(raw as u32),
        (ArgType::I64, 1 | 2 | 4 | 8) => Arg::I64(signed()),
        (ArgType::U64, 1 | 2 | 4 | 8) => Arg::U64(raw),
        (ArgType::Pointer, 1 | 2 | 4 | 8) => Arg::Pointer(raw),
        (ArgType::Char, 1) => Arg::Char(raw as u8),
        (ArgType::Double, 4) => Arg::Double(f64::from(f32::from_bits(raw as u32))),
        (ArgType::Double, 8) => Arg::Double(f64::from_bits(raw)),
        // The value is in the string blob after the arguments.
        (ArgType::Str, 0) => Arg::Unknown(ArgType::Str),
        _ => return None,
    })
}

/// The string blob: `u16 count`, `u16 blob_len`, then `count` times
/// `[u16 len][bytes]`; the k-th entry is the k-th string argument.
fn strings<'a>(
    blob: &'a [u8],
    tags: &[u8],
    args: &mut impl ArgBuf<'a>,
    problems: &mut Vec<Problem>,
) {
    let mut string_at = tags
        .iter()
        .enumerate()
        .filter(|(_, &tag)| is_blob_string(tag))
        .map(|(index, _)| index);
    let Some(head) = blob.first_chunk::<4>() else {
        problems.push(Problem::PayloadTruncated {
            part: PayloadPart::Strings,
            needed: 4,
            available: blob.len(),
        });
        return;
    };
    let count = usize::from(u16::from_le_bytes([head[0], head[1]]));
    let declared = usize::from(u16::from_le_bytes([head[2], head[3]]));
    let mut rest = blob.get(4..).unwrap_or_default();
    let string_args = tags.iter().filter(|&&tag| is_blob_string(tag)).count();
    let mut read = 0usize;
    let mut with_prefixes = 0usize;
    let mut without = 0usize;
    for _ in 0..count {
        let Some(len) = rest
            .first_chunk::<2>()
            .map(|b| usize::from(u16::from_le_bytes(*b)))
        else {
            problems.push(Problem::PayloadTruncated {
                part: PayloadPart::Strings,
                needed: 2,
                available: rest.len(),
            });
            break;
        };
        let Some(bytes) = rest.get(2..2 + len) else {
            problems.push(Problem::PayloadTruncated {
                part: PayloadPart::Strings,
                needed: len,
                available: rest.len().saturating_sub(2),
            });
            break;
        };
        // The k-th entry is the k-th string argument.
        if let Some(arg) = string_at.next().and_then(|i| args.get_mut(i)) {
            *arg = Arg::Str(bytes);
        }
        read += 1;
        with_prefixes += 2 + len;
        without += len;
        rest = rest.get(2 + len..).unwrap_or_default();
    }
    if read == count && declared != with_prefixes && declared != without {
        problems.push(Problem::StringBlobLength {
            declared,
            actual: with_prefixes,
        });
    }
    if count != string_args {
        problems.push(Problem::StringCountMismatch {
            string_args,
            strings: count,
        });
    }
    if !rest.is_empty() && read == count {
        problems.push(Problem::TrailingBytes { count: rest.len() });
    }
}
