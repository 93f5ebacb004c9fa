//! Binary log buffers: the versioned header, the XOR checksum and the
//! in-place patches a gateway applies before uploading (PROTOCOL §5).
//!
//! A buffer is `[header | used_bytes of log data | unused space]`. Byte 0 is
//! the header version, which fixes the header's length and layout; all
//! integers are little-endian. The checksum is the XOR of the `used_bytes`
//! data bytes that follow the header.

/// Length of the shortest header (versions 0, 1 and 2), in bytes.
///
/// Named after the Python SDK's constant of the same value.
pub const HEADER_SIZE: usize = 13;

/// Largest number of data bytes a header can describe (`used_bytes` is a u16).
pub const MAX_USED_BYTES: usize = 65_535;

/// Largest MQTT message the platform's broker (AWS IoT Core) accepts, in bytes.
pub const MAX_MESSAGE_SIZE: usize = 131_072;

/// Header versions this crate reads and writes.
pub const SUPPORTED_HEADER_VERSIONS: &[u8] = &[0, 1, 2, 3, 4];

const TOKEN_OFFSET: usize = 1;
const EPOCH_OFFSET: usize = 13;
const LAST_VERSION: u8 = 4;

/// Length in bytes of the header of the given version, or `None` if the
/// version is not one of [`SUPPORTED_HEADER_VERSIONS`].
///
/// ```
/// use ulogger_wire::header_len;
/// assert_eq!(header_len(1), Some(13));
/// assert_eq!(header_len(4), Some(25));
/// assert_eq!(header_len(5), None);
/// ```
pub const fn header_len(version: u8) -> Option<usize> {
    match version {
        0..=2 => Some(13),
        3 => Some(17),
        4 => Some(25),
        _ => None,
    }
}

/// Where each field of a header version lives.
struct Layout {
    len: usize,
    used_bytes: usize,
    checksum: usize,
}

const fn layout(version: u8) -> Option<Layout> {
    match version {
        0..=2 => Some(Layout {
            len: 13,
            used_bytes: 9,
            checksum: 11,
        }),
        3 => Some(Layout {
            len: 17,
            used_bytes: 13,
            checksum: 15,
        }),
        4 => Some(Layout {
            len: 25,
            used_bytes: 21,
            checksum: 23,
        }),
        _ => None,
    }
}

/// Why a log buffer or header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The buffer holds no bytes at all.
    #[error("log buffer is empty (a header needs at least {HEADER_SIZE} bytes)")]
    Empty,
    /// The buffer is shorter than the shortest header.
    #[error("log buffer is {len} bytes, shorter than the smallest header ({min} bytes)")]
    TooShort {
        /// Length of the buffer.
        len: usize,
        /// Length of the smallest header.
        min: usize,
    },
    /// The buffer is shorter than the header its version byte announces.
    #[error("log header version {version} needs {header_len} bytes but the buffer has only {len}")]
    HeaderTruncated {
        /// Version byte of the buffer.
        version: u8,
        /// Length of the buffer.
        len: usize,
        /// Length of a header of that version.
        header_len: usize,
    },
    /// Byte 0 is not a known header version.
    #[error("unsupported log header version {version} (known versions: 0, 1, 2, 3, 4)")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
    /// The header claims more data bytes than the buffer holds.
    #[error("log header says {used_bytes} data bytes follow it but only {present} are present")]
    DataTruncated {
        /// Data length claimed by the header.
        used_bytes: usize,
        /// Data bytes actually present after the header.
        present: usize,
    },
    /// The XOR of the data bytes differs from the header's checksum.
    #[error("log checksum mismatch: header says {expected:#06x}, data XORs to {computed:#06x}")]
    ChecksumMismatch {
        /// Checksum stored in the header.
        expected: u16,
        /// Checksum computed over the data bytes.
        computed: u16,
    },
    /// Only version 4 headers have an `epoch_time_us` field.
    #[error("log header version {version} has no epoch_time_us field (only version 4 has)")]
    NoEpochField {
        /// Version byte of the buffer.
        version: u8,
    },
    /// The data does not fit the u16 `used_bytes` field.
    #[error("log data is {len} bytes, more than the {MAX_USED_BYTES} a header can describe")]
    DataTooLarge {
        /// Length of the data given.
        len: usize,
    },
}

/// A decoded log header of any supported version.
///
/// Fields a version does not carry are `None` (for example
/// `sequence_number` in versions 3 and 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct LogHeader {
    /// Header version (byte 0); decides the layout.
    pub version: u8,
    /// Session token issued by the cloud at boot registration.
    pub session_token: u32,
    /// Sequence number of the log (versions 0 to 2).
    pub sequence_number: Option<u32>,
    /// Device tick count the log's timestamps are relative to (versions 3, 4).
    pub anchor_tick: Option<u32>,
    /// Frequency of the device's tick counter in Hz (versions 3, 4).
    pub tick_rate_hz: Option<u32>,
    /// Unix time in microseconds when the log was generated, 0 if unknown
    /// (version 4).
    pub epoch_time_us: Option<u64>,
    /// Number of log data bytes that follow the header.
    pub used_bytes: u16,
    /// XOR of the `used_bytes` data bytes.
    pub checksum: u16,
}

impl LogHeader {
    /// A header of `version` with every field that version carries set to 0
    /// (and the others `None`); fill in fields, then [`build_log`].
    ///
    /// # Errors
    ///
    /// [`HeaderError::UnsupportedVersion`] for a version outside 0 to 4.
    pub fn new(version: u8) -> Result<LogHeader, HeaderError> {
        if header_len(version).is_none() {
            return Err(HeaderError::UnsupportedVersion { version });
        }
        let ticks = (version >= 3).then_some(0);
        Ok(LogHeader {
            version,
            session_token: 0,
            sequence_number: (version <= 2).then_some(0),
            anchor_tick: ticks,
            tick_rate_hz: ticks,
            epoch_time_us: (version == 4).then_some(0),
            used_bytes: 0,
            checksum: 0,
        })
    }

    /// Decodes the header at the start of `buf`.
    ///
    /// Only the header is read: the data length and checksum are not
    /// checked (see [`validate_checksum`]).
    ///
    /// # Errors
    ///
    /// [`HeaderError::Empty`] or [`HeaderError::TooShort`] if `buf` is
    /// shorter than any header, [`HeaderError::UnsupportedVersion`] for an
    /// unknown version byte, [`HeaderError::HeaderTruncated`] if `buf` ends
    /// inside the header of its version.
    pub fn parse(buf: &[u8]) -> Result<LogHeader, HeaderError> {
        let (version, layout) = check_header(buf)?;
        let used_bytes = read_u16(buf, layout.used_bytes);
        let checksum = read_u16(buf, layout.checksum);
        let session_token = read_u32(buf, TOKEN_OFFSET);
        let header = match version {
            0..=2 => LogHeader {
                version,
                session_token,
                sequence_number: Some(read_u32(buf, 5)),
                anchor_tick: None,
                tick_rate_hz: None,
                epoch_time_us: None,
                used_bytes,
                checksum,
            },
            _ => LogHeader {
                version,
                session_token,
                sequence_number: None,
                anchor_tick: Some(read_u32(buf, 5)),
                tick_rate_hz: Some(read_u32(buf, 9)),
                epoch_time_us: (version == LAST_VERSION).then(|| read_u64(buf, EPOCH_OFFSET)),
                used_bytes,
                checksum,
            },
        };
        Ok(header)
    }

    /// Length of this header in bytes (13, 17 or 25).
    ///
    /// For a hand-built header with an unsupported version this is
    /// [`HEADER_SIZE`]; [`LogHeader::write_to`] refuses such a header.
    pub fn header_len(&self) -> usize {
        header_len(self.version).unwrap_or(HEADER_SIZE)
    }

    /// Length of the meaningful part of the buffer: header plus `used_bytes`.
    pub fn log_len(&self) -> usize {
        self.header_len() + usize::from(self.used_bytes)
    }

    /// Encodes this header into the first [`LogHeader::header_len`] bytes of
    /// `buf`, leaving the rest untouched.
    ///
    /// Fields the version carries but that are `None` are written as 0;
    /// fields the version does not carry are ignored.
    ///
    /// # Errors
    ///
    /// [`HeaderError::UnsupportedVersion`] for an unknown version,
    /// [`HeaderError::HeaderTruncated`] if `buf` is too short for the header.
    pub fn write_to(&self, buf: &mut [u8]) -> Result<(), HeaderError> {
        let version = self.version;
        let layout = layout(version).ok_or(HeaderError::UnsupportedVersion { version })?;
        let len = buf.len();
        let header = buf
            .get_mut(..layout.len)
            .ok_or(HeaderError::HeaderTruncated {
                version,
                len,
                header_len: layout.len,
            })?;
        header.fill(0);
        put(header, 0, &[version]);
        put(header, TOKEN_OFFSET, &self.session_token.to_le_bytes());
        if version <= 2 {
            put(header, 5, &self.sequence_number.unwrap_or(0).to_le_bytes());
        } else {
            put(header, 5, &self.anchor_tick.unwrap_or(0).to_le_bytes());
            put(header, 9, &self.tick_rate_hz.unwrap_or(0).to_le_bytes());
        }
        if version == LAST_VERSION {
            put(
                header,
                EPOCH_OFFSET,
                &self.epoch_time_us.unwrap_or(0).to_le_bytes(),
            );
        }
        put(header, layout.used_bytes, &self.used_bytes.to_le_bytes());
        put(header, layout.checksum, &self.checksum.to_le_bytes());
        Ok(())
    }
}

/// XOR of all bytes of `data`, as the u16 the header stores (high byte 0).
///
/// Runs at memory speed: a maximal log is checked in a few microseconds.
///
/// ```
/// use ulogger_wire::compute_checksum;
/// assert_eq!(compute_checksum(&[0x0f, 0xf0, 0x01]), 0x00fe);
/// assert_eq!(compute_checksum(&[]), 0);
/// ```
pub fn compute_checksum(data: &[u8]) -> u16 {
    // XOR is bytewise, so XOR-ing whole words and folding the word at the end
    // gives the same byte; independent lanes let the compiler vectorise it.
    const LANES: usize = 4;
    let mut blocks = data.chunks_exact(8 * LANES);
    let mut acc = [0u64; LANES];
    for block in &mut blocks {
        for (lane, word) in acc.iter_mut().zip(block.chunks_exact(8)) {
            *lane ^= word_of(word);
        }
    }
    let rest = blocks.remainder();
    let mut words = rest.chunks_exact(8);
    let mut word = acc.iter().fold(0, |x, lane| x ^ lane);
    for w in &mut words {
        word ^= word_of(w);
    }
    let mut byte = fold_word(word);
    for b in words.remainder() {
        byte ^= b;
    }
    u16::from(byte)
}

fn word_of(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes).map_or(0, u64::from_ne_bytes)
}

fn fold_word(mut word: u64) -> u8 {
    word ^= word >> 32;
    word ^= word >> 16;
    word ^= word >> 8;
    word.to_le_bytes()[0]
}

/// Checks that `buf` holds a whole log whose data matches its checksum, and
/// returns its header.
///
/// Bytes after `header + used_bytes` (unused ring-buffer space) are allowed
/// and not checked.
///
/// # Errors
///
/// The errors of [`LogHeader::parse`], then [`HeaderError::DataTruncated`]
/// if fewer than `used_bytes` data bytes follow the header and
/// [`HeaderError::ChecksumMismatch`] if the data's XOR differs.
pub fn validate_checksum(buf: &[u8]) -> Result<LogHeader, HeaderError> {
    let header = LogHeader::parse(buf)?;
    let data = buf.get(header.header_len()..).unwrap_or_default();
    let used_bytes = usize::from(header.used_bytes);
    let data = data.get(..used_bytes).ok_or(HeaderError::DataTruncated {
        used_bytes,
        present: data.len(),
    })?;
    let computed = compute_checksum(data);
    if computed != header.checksum {
        return Err(HeaderError::ChecksumMismatch {
            expected: header.checksum,
            computed,
        });
    }
    Ok(header)
}

/// Writes `token` as the session token (offset 1, u32) of the log in `buf`.
///
/// The token is not covered by the checksum, so a valid log stays valid.
///
/// # Errors
///
/// The errors of [`LogHeader::parse`]; `buf` is left unchanged on error.
pub fn patch_session_token(buf: &mut [u8], token: u32) -> Result<(), HeaderError> {
    check_header(buf)?;
    put(buf, TOKEN_OFFSET, &token.to_le_bytes());
    Ok(())
}

/// Writes `epoch_time_us` (Unix microseconds) into a version 4 header.
///
/// # Errors
///
/// The errors of [`LogHeader::parse`], and [`HeaderError::NoEpochField`]
/// for versions 0 to 3; `buf` is left unchanged on error.
pub fn patch_epoch_time_us(buf: &mut [u8], epoch_time_us: u64) -> Result<(), HeaderError> {
    let (version, _) = check_header(buf)?;
    if version != LAST_VERSION {
        return Err(HeaderError::NoEpochField { version });
    }
    put(buf, EPOCH_OFFSET, &epoch_time_us.to_le_bytes());
    Ok(())
}

/// Builds a complete log buffer: `header` followed by `data`, with
/// `used_bytes` and `checksum` set from `data` (the header's own values for
/// those two fields are ignored).
///
/// ```
/// use ulogger_wire::{build_log, validate_checksum, LogHeader};
/// let mut header = LogHeader::new(4)?;
/// header.tick_rate_hz = Some(1000);
/// let log = build_log(header, b"hello")?;
/// assert_eq!(log.len(), 25 + 5);
/// assert_eq!(validate_checksum(&log)?.used_bytes, 5);
/// # Ok::<(), ulogger_wire::HeaderError>(())
/// ```
///
/// # Errors
///
/// [`HeaderError::DataTooLarge`] if `data` is longer than
/// [`MAX_USED_BYTES`], [`HeaderError::UnsupportedVersion`] for an unknown
/// version.
pub fn build_log(mut header: LogHeader, data: &[u8]) -> Result<Vec<u8>, HeaderError> {
    let used_bytes =
        u16::try_from(data.len()).map_err(|_| HeaderError::DataTooLarge { len: data.len() })?;
    let version = header.version;
    let header_len = header_len(version).ok_or(HeaderError::UnsupportedVersion { version })?;
    header.used_bytes = used_bytes;
    header.checksum = compute_checksum(data);
    let mut buf = vec![0; header_len + data.len()];
    header.write_to(&mut buf)?;
    put(&mut buf, header_len, data);
    Ok(buf)
}

/// Checks the version byte and that the whole header is present.
fn check_header(buf: &[u8]) -> Result<(u8, Layout), HeaderError> {
    let Some(&version) = buf.first() else {
        return Err(HeaderError::Empty);
    };
    if buf.len() < HEADER_SIZE {
        return Err(HeaderError::TooShort {
            len: buf.len(),
            min: HEADER_SIZE,
        });
    }
    let layout = layout(version).ok_or(HeaderError::UnsupportedVersion { version })?;
    if buf.len() < layout.len {
        return Err(HeaderError::HeaderTruncated {
            version,
            len: buf.len(),
            header_len: layout.len,
        });
    }
    Ok((version, layout))
}

// The readers and `put` are only called with offsets inside a header whose
// length `check_header` or `write_to` has already established; out of range
// they yield zeros / write nothing rather than panic.

fn read_array<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    buf.get(at..)
        .and_then(|rest| rest.get(..N))
        .and_then(|bytes| <[u8; N]>::try_from(bytes).ok())
        .unwrap_or([0; N])
}

fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(read_array(buf, at))
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(read_array(buf, at))
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(read_array(buf, at))
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = at
        .checked_add(bytes.len())
        .and_then(|end| buf.get_mut(at..end))
    {
        dst.copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(version: u8) -> LogHeader {
        let mut h = LogHeader::new(version).unwrap();
        h.session_token = 0xdead_beef;
        if version <= 2 {
            h.sequence_number = Some(0x0102_0304);
        } else {
            h.anchor_tick = Some(0x1122_3344);
            h.tick_rate_hz = Some(32_768);
        }
        if version == 4 {
            h.epoch_time_us = Some(1_700_000_000_000_000);
        }
        h
    }

    #[test]
    fn header_len_per_version() {
        let lens: Vec<_> = (0..=5).map(header_len).collect();
        assert_eq!(
            lens,
            [Some(13), Some(13), Some(13), Some(17), Some(25), None]
        );
        assert_eq!(header_len(255), None);
        for &v in SUPPORTED_HEADER_VERSIONS {
            assert!(header_len(v).is_some());
        }
    }

    #[test]
    fn v1_layout_matches_protocol_table() {
        let mut buf = vec![1u8];
        buf.extend(7u32.to_le_bytes()); // token
        buf.extend(42u32.to_le_bytes()); // sequence
        buf.extend(3u16.to_le_bytes()); // used_bytes
        buf.extend(u16::from(1u8 ^ 2 ^ 4).to_le_bytes());
        buf.extend([1, 2, 4, 0xff, 0xff]); // data + unused tail
        let h = validate_checksum(&buf).unwrap();
        assert_eq!(
            h,
            LogHeader {
                version: 1,
                session_token: 7,
                sequence_number: Some(42),
                anchor_tick: None,
                tick_rate_hz: None,
                epoch_time_us: None,
                used_bytes: 3,
                checksum: 7,
            }
        );
        assert_eq!(h.header_len(), 13);
        assert_eq!(h.log_len(), 16);
    }

    #[test]
    fn v4_layout_matches_protocol_table() {
        let mut buf = vec![4u8];
        buf.extend(9u32.to_le_bytes()); // token @1
        buf.extend(100u32.to_le_bytes()); // anchor @5
        buf.extend(1000u32.to_le_bytes()); // tick rate @9
        buf.extend(123_456u64.to_le_bytes()); // epoch @13
        buf.extend(1u16.to_le_bytes()); // used_bytes @21
        buf.extend(0x5au16.to_le_bytes()); // checksum @23
        buf.push(0x5a);
        let h = validate_checksum(&buf).unwrap();
        assert_eq!(h.anchor_tick, Some(100));
        assert_eq!(h.tick_rate_hz, Some(1000));
        assert_eq!(h.epoch_time_us, Some(123_456));
        assert_eq!(h.sequence_number, None);
        assert_eq!(h.header_len(), 25);
    }

    #[test]
    fn every_version_round_trips_through_build_and_parse() {
        for &version in SUPPORTED_HEADER_VERSIONS {
            let data = [version, 0x55, 0xaa, 0x10];
            let log = build_log(sample(version), &data).unwrap();
            assert_eq!(log.len(), header_len(version).unwrap() + data.len());
            let h = validate_checksum(&log).unwrap();
            let mut expected = sample(version);
            expected.used_bytes = 4;
            expected.checksum = compute_checksum(&data);
            assert_eq!(h, expected, "version {version}");
            assert_eq!(LogHeader::parse(&log).unwrap(), expected);
            assert_eq!(log.get(h.header_len()..).unwrap(), data);
        }
    }

    #[test]
    fn v3_fields_at_protocol_offsets() {
        let log = build_log(sample(3), &[]).unwrap();
        assert_eq!(log.len(), 17);
        assert_eq!(log[5..9], 0x1122_3344u32.to_le_bytes());
        assert_eq!(log[9..13], 32_768u32.to_le_bytes());
        assert_eq!(log[13..15], [0, 0]);
        let h = validate_checksum(&log).unwrap();
        assert_eq!(h.epoch_time_us, None);
        assert_eq!(h.tick_rate_hz, Some(32_768));
    }

    #[test]
    fn version_zero_is_read_like_version_one() {
        let mut log = build_log(sample(1), b"abc").unwrap();
        log[0] = 0;
        let h = validate_checksum(&log).unwrap();
        assert_eq!(h.version, 0);
        assert_eq!(h.sequence_number, Some(0x0102_0304));
    }

    #[test]
    fn short_buffers_are_rejected() {
        assert_eq!(LogHeader::parse(&[]), Err(HeaderError::Empty));
        assert_eq!(
            LogHeader::parse(&[1; 12]),
            Err(HeaderError::TooShort { len: 12, min: 13 })
        );
        let mut v4 = vec![0u8; 24];
        v4[0] = 4;
        assert_eq!(
            LogHeader::parse(&v4),
            Err(HeaderError::HeaderTruncated {
                version: 4,
                len: 24,
                header_len: 25
            })
        );
        let mut v3 = vec![0u8; 16];
        v3[0] = 3;
        assert_eq!(
            validate_checksum(&v3),
            Err(HeaderError::HeaderTruncated {
                version: 3,
                len: 16,
                header_len: 17
            })
        );
    }

    #[test]
    fn unknown_version_is_named() {
        let mut buf = [0u8; 32];
        buf[0] = 5;
        let err = LogHeader::parse(&buf).unwrap_err();
        assert_eq!(err, HeaderError::UnsupportedVersion { version: 5 });
        let msg = err.to_string();
        assert!(
            msg.contains("version 5") && msg.contains("0, 1, 2, 3, 4"),
            "{msg}"
        );
        assert_eq!(
            LogHeader::new(200),
            Err(HeaderError::UnsupportedVersion { version: 200 })
        );
    }

    #[test]
    fn missing_data_is_reported_with_counts() {
        let log = build_log(sample(2), &[1; 10]).unwrap();
        assert_eq!(
            validate_checksum(&log[..log.len() - 3]),
            Err(HeaderError::DataTruncated {
                used_bytes: 10,
                present: 7
            })
        );
        // LogHeader::parse only reads the header.
        assert!(LogHeader::parse(&log[..13]).is_ok());
    }

    #[test]
    fn corrupted_data_is_a_checksum_mismatch() {
        let mut log = build_log(sample(4), b"\x01\x02\x03").unwrap();
        *log.last_mut().unwrap() ^= 0x40;
        let err = validate_checksum(&log).unwrap_err();
        assert_eq!(
            err,
            HeaderError::ChecksumMismatch {
                expected: 0x00,
                computed: 0x40
            }
        );
        assert!(err.to_string().contains("0x0040"), "{err}");
    }

    #[test]
    fn bytes_after_used_bytes_are_not_checked() {
        let mut log = build_log(sample(3), b"data").unwrap();
        log.extend([0xff; 100]);
        assert!(validate_checksum(&log).is_ok());
    }

    #[test]
    fn patch_token_writes_offset_one_only() {
        for &version in SUPPORTED_HEADER_VERSIONS {
            let log = build_log(sample(version), b"xyz").unwrap();
            let mut patched = log.clone();
            patch_session_token(&mut patched, 0x0a0b_0c0d).unwrap();
            assert_eq!(patched[1..5], [0x0d, 0x0c, 0x0b, 0x0a]);
            assert_eq!(patched[..1], log[..1]);
            assert_eq!(patched[5..], log[5..]);
            assert_eq!(
                validate_checksum(&patched).unwrap().session_token,
                0x0a0b_0c0d
            );
        }
    }

    #[test]
    fn patch_epoch_only_in_v4() {
        let log = build_log(sample(4), b"xyz").unwrap();
        let mut patched = log.clone();
        patch_epoch_time_us(&mut patched, 42).unwrap();
        assert_eq!(patched[13..21], 42u64.to_le_bytes());
        assert_eq!(patched[..13], log[..13]);
        assert_eq!(patched[21..], log[21..]);
        assert_eq!(validate_checksum(&patched).unwrap().epoch_time_us, Some(42));

        for version in 0..=3 {
            let mut log = build_log(sample(version), b"xyz").unwrap();
            let before = log.clone();
            assert_eq!(
                patch_epoch_time_us(&mut log, 42),
                Err(HeaderError::NoEpochField { version })
            );
            assert_eq!(log, before);
        }
    }

    #[test]
    fn patches_refuse_bad_buffers_without_writing() {
        let mut short = [4u8; 20];
        assert_eq!(
            patch_session_token(&mut short, 1),
            Err(HeaderError::HeaderTruncated {
                version: 4,
                len: 20,
                header_len: 25
            })
        );
        assert_eq!(short, [4u8; 20]);
        assert_eq!(patch_epoch_time_us(&mut [], 1), Err(HeaderError::Empty));
        let mut unknown = [9u8; 30];
        assert_eq!(
            patch_session_token(&mut unknown, 1),
            Err(HeaderError::UnsupportedVersion { version: 9 })
        );
        assert_eq!(unknown, [9u8; 30]);
    }

    #[test]
    fn build_log_limits_data_to_u16() {
        let max = vec![0x11u8; MAX_USED_BYTES];
        let log = build_log(sample(4), &max).unwrap();
        assert_eq!(log.len(), 25 + MAX_USED_BYTES);
        assert!(log.len() <= MAX_MESSAGE_SIZE);
        assert_eq!(validate_checksum(&log).unwrap().used_bytes, u16::MAX);

        let too_big = vec![0u8; MAX_USED_BYTES + 1];
        assert_eq!(
            build_log(sample(1), &too_big),
            Err(HeaderError::DataTooLarge { len: 65_536 })
        );
        let mut bad = sample(1);
        bad.version = 7;
        assert_eq!(
            build_log(bad, b""),
            Err(HeaderError::UnsupportedVersion { version: 7 })
        );
    }

    #[test]
    fn write_to_needs_room_and_a_known_version() {
        let mut buf = [0u8; 16];
        assert_eq!(
            sample(3).write_to(&mut buf),
            Err(HeaderError::HeaderTruncated {
                version: 3,
                len: 16,
                header_len: 17
            })
        );
        let mut bad = sample(0);
        bad.version = 5;
        assert_eq!(
            bad.write_to(&mut [0u8; 32]),
            Err(HeaderError::UnsupportedVersion { version: 5 })
        );
        // Missing fields of the version are written as zero; others ignored.
        let h = LogHeader {
            version: 4,
            session_token: 1,
            sequence_number: Some(99),
            anchor_tick: None,
            tick_rate_hz: None,
            epoch_time_us: None,
            used_bytes: 0,
            checksum: 0,
        };
        let mut buf = [0xffu8; 25];
        h.write_to(&mut buf).unwrap();
        assert_eq!(
            LogHeader::parse(&buf).unwrap(),
            LogHeader {
                sequence_number: None,
                anchor_tick: Some(0),
                tick_rate_hz: Some(0),
                epoch_time_us: Some(0),
                ..h
            }
        );
    }

    #[test]
    fn checksum_matches_bytewise_fold_at_every_length() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 37 + i / 7) as u8).collect();
        for len in 0..data.len() {
            let slice = &data[..len];
            let slow = slice.iter().fold(0u8, |a, b| a ^ b);
            assert_eq!(compute_checksum(slice), u16::from(slow), "len {len}");
        }
        for offset in 1..8 {
            let slice = &data[offset..];
            let slow = slice.iter().fold(0u8, |a, b| a ^ b);
            assert_eq!(compute_checksum(slice), u16::from(slow));
        }
    }
}
