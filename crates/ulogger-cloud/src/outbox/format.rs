//! The outbox's on-disk formats, as pure functions on byte slices (no I/O),
//! so they can be fuzzed and property-tested.
//!
//! A segment file is a sequence of framed records:
//!
//! ```text
//! magic "uLOB" | body length u32 | CRC-32 of body u32 | body
//! body: id u64 | enqueued (Unix ms) u64 | kind u8 | app id u32
//!       | serial, device type, git version, git hash (u16 length + UTF-8 each)
//!       | payload (the rest)
//! ```
//!
//! An acks file is a sequence of what became of records:
//!
//! ```text
//! id u64 | state u8 | reason length u16 | reason (UTF-8) | CRC-32 of all before u32
//! ```
//!
//! All integers are little-endian. A scan never panics: whatever does not
//! frame or check out is reported as a bad range and skipped, and the scan
//! goes on at the next magic, so one flipped bit costs one record.

use std::ops::Range;

/// Starts every record, so a scan can find the next one after damage.
pub(crate) const MAGIC: [u8; 4] = *b"uLOB";
/// Magic, length and CRC.
pub(crate) const FRAME_HEADER: usize = 12;
/// No record body is larger (a 128 KiB payload plus four short strings):
/// a larger length field is damage.
pub(crate) const MAX_BODY: usize = 512 * 1024;

/// No record id is larger: ids start from the clock (about 2^51 today)
/// and grow by one per record, so a larger id is damage, and the next id
/// after any valid one cannot overflow.
pub(crate) const MAX_ID: u64 = u64::MAX / 2;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Log = 1,
    CoreDump = 2,
    /// A metrics message, built (and compressed) at enqueue; `app_id` is
    /// its topic's, `serial` the device's (empty for a batch).
    Metrics = 3,
    /// An events message, like [`Kind::Metrics`].
    Events = 4,
    /// A text-log batch (NDJSON, its sequence fixed at enqueue), like
    /// [`Kind::Metrics`]; `serial` is the device's.
    TextLogs = 5,
}

/// One record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredRecord {
    pub id: u64,
    pub enqueued_ms: u64,
    pub kind: Kind,
    pub app_id: u32,
    pub serial: String,
    pub device_type: String,
    pub git_version: String,
    pub git_hash: String,
    pub payload: Vec<u8>,
}

/// Appends `record`, framed, to `out`. Fails only when a string is longer
/// than 65,535 bytes (validated ids never are).
pub(crate) fn encode_record(record: &StoredRecord, out: &mut Vec<u8>) -> Result<(), &'static str> {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 8]); // length and CRC, filled in below
    out.extend_from_slice(&record.id.to_le_bytes());
    out.extend_from_slice(&record.enqueued_ms.to_le_bytes());
    out.push(record.kind as u8);
    out.extend_from_slice(&record.app_id.to_le_bytes());
    for s in [
        &record.serial,
        &record.device_type,
        &record.git_version,
        &record.git_hash,
    ] {
        let Ok(len) = u16::try_from(s.len()) else {
            out.truncate(start);
            return Err("a device identity string is longer than 65,535 bytes");
        };
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&record.payload);
    let body_len = out.len() - start - FRAME_HEADER;
    if body_len > MAX_BODY {
        out.truncate(start);
        return Err("the record is larger than an outbox record may be");
    }
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    // body_len <= MAX_BODY, which fits in u32.
    out[start + 4..start + 8].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// What a scan of a segment found, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scanned {
    /// A whole record whose checksum holds, at `frame` in the file.
    Record {
        frame: Range<usize>,
        record: StoredRecord,
    },
    /// Bytes that are not a valid record (damage), skipped.
    Damaged(Range<usize>),
    /// An incomplete record at the very end: a write cut short by a crash.
    /// It was never reported as enqueued.
    TornTail(Range<usize>),
}

/// Scans a whole segment.
pub(crate) fn scan_segment(buf: &[u8]) -> Vec<Scanned> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        match frame_at(buf, pos) {
            Frame::Record(end, record) => {
                out.push(Scanned::Record {
                    frame: pos..end,
                    record,
                });
                pos = end;
            }
            Frame::Incomplete => match find_magic(buf, pos + 1) {
                // Something valid follows, so this was damage, not a tail.
                Some(next) if has_record_from(buf, next) => {
                    out.push(Scanned::Damaged(pos..next));
                    pos = next;
                }
                _ => {
                    out.push(Scanned::TornTail(pos..buf.len()));
                    break;
                }
            },
            Frame::Bad => {
                let next = find_magic(buf, pos + 1).unwrap_or(buf.len());
                out.push(Scanned::Damaged(pos..next));
                pos = next;
            }
        }
    }
    out
}

enum Frame {
    Record(usize, StoredRecord),
    /// Framing that runs past the end of the buffer.
    Incomplete,
    Bad,
}

fn frame_at(buf: &[u8], pos: usize) -> Frame {
    let rest = &buf[pos..];
    if rest.len() < FRAME_HEADER {
        return if MAGIC.starts_with(&rest[..rest.len().min(4)]) {
            Frame::Incomplete
        } else {
            Frame::Bad
        };
    }
    if rest[..4] != MAGIC {
        return Frame::Bad;
    }
    let len = u32_at(rest, 4) as usize;
    if len > MAX_BODY {
        return Frame::Bad;
    }
    let Some(body) = rest.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Frame::Incomplete;
    };
    if crc32fast::hash(body) != u32_at(rest, 8) {
        return Frame::Bad;
    }
    match decode_body(body) {
        Some(record) => Frame::Record(pos + FRAME_HEADER + len, record),
        None => Frame::Bad,
    }
}

fn has_record_from(buf: &[u8], pos: usize) -> bool {
    matches!(frame_at(buf, pos), Frame::Record(..))
}

fn find_magic(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(MAGIC.len())
        .position(|w| w == MAGIC)
        .map(|i| from + i)
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Decodes the body of one record (after its frame header).
pub(crate) fn decode_body(body: &[u8]) -> Option<StoredRecord> {
    let mut r = Reader(body);
    let id = u64::from_le_bytes(r.take()?);
    if id > MAX_ID {
        return None;
    }
    let enqueued_ms = u64::from_le_bytes(r.take()?);
    let kind = match r.take::<1>()?[0] {
        1 => Kind::Log,
        2 => Kind::CoreDump,
        3 => Kind::Metrics,
        4 => Kind::Events,
        5 => Kind::TextLogs,
        _ => return None,
    };
    let app_id = u32::from_le_bytes(r.take()?);
    let serial = r.string()?;
    let device_type = r.string()?;
    let git_version = r.string()?;
    let git_hash = r.string()?;
    Some(StoredRecord {
        id,
        enqueued_ms,
        kind,
        app_id,
        serial,
        device_type,
        git_version,
        git_hash,
        payload: r.0.to_vec(),
    })
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn string(&mut self) -> Option<String> {
        let len = u16::from_le_bytes(self.take()?);
        let bytes = self.bytes(usize::from(len))?;
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// What became of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AckState {
    /// The broker acknowledged it.
    Delivered,
    /// It failed for good; it stays on disk until retried or purged.
    Dead(String),
    /// Removed at a bound (bytes, count or age).
    Evicted,
    /// A dead record handed back to delivery.
    Retry,
    /// A dead record removed on request.
    Purged,
}

impl AckState {
    fn code(&self) -> u8 {
        match self {
            AckState::Delivered => 1,
            AckState::Dead(_) => 2,
            AckState::Evicted => 3,
            AckState::Retry => 4,
            AckState::Purged => 5,
        }
    }
}

/// Appends one acks-file entry to `out`.
pub(crate) fn encode_ack(id: u64, state: &AckState, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&id.to_le_bytes());
    out.push(state.code());
    let reason = match state {
        AckState::Dead(reason) => truncate_utf8(reason, usize::from(u16::MAX)),
        _ => "",
    };
    // truncate_utf8 keeps it within u16.
    out.extend_from_slice(&(reason.len() as u16).to_le_bytes());
    out.extend_from_slice(reason.as_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decodes an acks file up to its first entry that does not check out (a
/// write cut short); returns the entries and the length of the valid part.
pub(crate) fn scan_acks(buf: &[u8]) -> (Vec<(u64, AckState)>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((entry, len)) = ack_at(&buf[pos..]) {
        out.push(entry);
        pos += len;
    }
    (out, pos)
}

fn ack_at(buf: &[u8]) -> Option<((u64, AckState), usize)> {
    let mut r = Reader(buf);
    let id = u64::from_le_bytes(r.take()?);
    let code = r.take::<1>()?[0];
    let reason_len = usize::from(u16::from_le_bytes(r.take()?));
    let reason = std::str::from_utf8(r.bytes(reason_len)?).ok()?.to_owned();
    let len = 11 + reason_len;
    let crc = u32::from_le_bytes(r.take()?);
    if crc32fast::hash(&buf[..len]) != crc {
        return None;
    }
    let state = match code {
        1 => AckState::Delivered,
        2 => AckState::Dead(reason),
        3 => AckState::Evicted,
        4 => AckState::Retry,
        5 => AckState::Purged,
        _ => return None,
    };
    Some(((id, state), len + 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, payload: &[u8]) -> StoredRecord {
        StoredRecord {
            id,
            enqueued_ms: 1_700_000_000_000 + id,
            kind: [
                Kind::Log,
                Kind::CoreDump,
                Kind::Metrics,
                Kind::Events,
                Kind::TextLogs,
            ][(id % 5) as usize],
            app_id: 7,
            serial: format!("SN-{id}"),
            device_type: "board".into(),
            git_version: "v1".into(),
            git_hash: "abc".into(),
            payload: payload.to_vec(),
        }
    }

    fn segment(records: &[StoredRecord]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            encode_record(r, &mut out).unwrap();
        }
        out
    }

    fn records(scanned: &[Scanned]) -> Vec<u64> {
        scanned
            .iter()
            .filter_map(|s| match s {
                Scanned::Record { record, .. } => Some(record.id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn records_round_trip() {
        let rs = [record(1, b"one"), record(2, b""), record(3, &[0xAB; 5000])];
        let scanned = scan_segment(&segment(&rs));
        assert_eq!(scanned.len(), 3);
        for (s, r) in scanned.iter().zip(&rs) {
            assert!(matches!(s, Scanned::Record { record, .. } if record == r));
        }
    }

    #[test]
    fn a_flipped_bit_costs_one_record_and_a_torn_tail_is_told_apart() {
        let rs = [record(1, b"aaaa"), record(2, b"bbbb"), record(3, b"cccc")];
        let whole = segment(&rs);
        let second = whole.len() / 3 + 20;
        let mut flipped = whole.clone();
        flipped[second] ^= 0x10;
        let scanned = scan_segment(&flipped);
        assert_eq!(records(&scanned), [1, 3]);
        assert!(scanned.iter().any(|s| matches!(s, Scanned::Damaged(_))));

        let torn = &whole[..whole.len() - 3];
        let scanned = scan_segment(torn);
        assert_eq!(records(&scanned), [1, 2]);
        assert!(matches!(scanned.last(), Some(Scanned::TornTail(_))));
    }

    #[test]
    fn a_damaged_length_does_not_hide_the_records_after_it() {
        let rs = [record(1, b"x"), record(2, b"y"), record(3, b"z")];
        let mut buf = segment(&rs);
        let first_len = buf.len() / 3;
        // The second record's length now points past the end of the file.
        buf[first_len + 4..first_len + 8].copy_from_slice(&400_000u32.to_le_bytes());
        let scanned = scan_segment(&buf);
        assert_eq!(records(&scanned), [1, 3]);
    }

    #[test]
    fn an_id_beyond_the_largest_is_damage() {
        let buf = segment(&[record(MAX_ID, b"ok"), record(MAX_ID + 1, b"no")]);
        let scanned = scan_segment(&buf);
        assert_eq!(records(&scanned), [MAX_ID]);
        assert!(matches!(scanned[1], Scanned::Damaged(_)));
    }

    #[test]
    fn acks_round_trip_and_stop_at_a_cut() {
        let mut buf = Vec::new();
        encode_ack(1, &AckState::Delivered, &mut buf);
        encode_ack(2, &AckState::Dead("refused: bad token".into()), &mut buf);
        encode_ack(2, &AckState::Retry, &mut buf);
        let whole = buf.len();
        encode_ack(3, &AckState::Evicted, &mut buf);
        let (acks, valid) = scan_acks(&buf[..buf.len() - 1]);
        assert_eq!(valid, whole);
        assert_eq!(
            acks,
            [
                (1, AckState::Delivered),
                (2, AckState::Dead("refused: bad token".into())),
                (2, AckState::Retry)
            ]
        );
    }

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        let mut buf = Vec::new();
        encode_ack(9, &AckState::Dead("é".repeat(40_000)), &mut buf);
        let (acks, valid) = scan_acks(&buf);
        assert_eq!(valid, buf.len());
        assert!(matches!(&acks[0].1, AckState::Dead(r) if r.len() <= 65_535));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn scanning_any_bytes_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..4096)) {
                let _ = scan_segment(&buf);
                let _ = scan_acks(&buf);
            }

            #[test]
            fn damage_anywhere_keeps_every_record_it_does_not_touch(
                n in 1usize..8,
                at in any::<proptest::sample::Index>(),
                flip in 1u8..=255,
            ) {
                let rs: Vec<_> = (0..n as u64).map(|i| record(i, &[i as u8; 40])).collect();
                let mut buf = segment(&rs);
                let at = at.index(buf.len());
                buf[at] ^= flip;
                let scanned = scan_segment(&buf);
                let frame = buf.len() / n;
                let hit = (at / frame) as u64;
                let kept = records(&scanned);
                let expected: Vec<u64> = (0..n as u64).filter(|&i| i != hit).collect();
                prop_assert!(kept == expected || kept == (0..n as u64).collect::<Vec<_>>(), "{kept:?}");
            }
        }
    }
}
