//! One notification of the chunked transfer, `[offset u16][total_len u16]
//! [payload]`, checked against what a device may send (PROTOCOL §6).

use std::fmt;

/// Length of a notification's `[offset][total_len]` prefix.
pub const CHUNK_HEADER_LEN: usize = 4;

/// Payload bytes a device puts in one notification: it sends 16-byte chunks
/// whatever the MTU, so a notification fits the default ATT MTU of 23.
pub const CHUNK_PAYLOAD_LEN: usize = 16;

/// Longest notification a device sends: the prefix and a full payload.
pub const MAX_NOTIFICATION_LEN: usize = CHUNK_HEADER_LEN + CHUNK_PAYLOAD_LEN;

/// A notification that passed the checks that need no transfer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk<'a> {
    pub(crate) offset: u16,
    pub(crate) total_len: u16,
    /// The payload, cut at `total_len`: nothing is ever kept past it.
    pub(crate) payload: &'a [u8],
}

impl<'a> Chunk<'a> {
    pub(crate) fn parse(notification: &'a [u8]) -> Result<Chunk<'a>, DropReason> {
        let len = notification.len();
        if len > MAX_NOTIFICATION_LEN {
            return Err(DropReason::TooLong { len });
        }
        let (Some(&[o0, o1, t0, t1]), Some(payload)) = (
            notification.first_chunk::<CHUNK_HEADER_LEN>(),
            notification.get(CHUNK_HEADER_LEN..),
        ) else {
            return Err(DropReason::TooShort { len });
        };
        let offset = u16::from_le_bytes([o0, o1]);
        let total_len = u16::from_le_bytes([t0, t1]);
        if total_len == 0 {
            return Err(DropReason::ZeroTotal);
        }
        if offset >= total_len {
            return Err(DropReason::OffsetPastTotal { offset, total_len });
        }
        if payload.is_empty() {
            // Accepting it would ack the same offset again and again: a
            // device could keep a gateway busy for ever without progress.
            return Err(DropReason::EmptyPayload { offset });
        }
        // A last chunk padded past the end is tolerated, its padding is not
        // kept (the total is what the device will erase).
        let room = usize::from(total_len - offset);
        let payload = payload.get(..room).unwrap_or(payload);
        Ok(Chunk {
            offset,
            total_len,
            payload,
        })
    }
}

/// Why a [`BlePull`](super::BlePull) dropped a notification. Nothing
/// dropped is stored or acknowledged.
///
/// [`DropReason::is_hostile`] separates what no firmware sends (a broken
/// or hostile device) from what a lossy link produces (duplicates and
/// stale chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Shorter than the 4-byte `[offset][total_len]` prefix.
    TooShort {
        /// Length of the notification.
        len: usize,
    },
    /// Longer than the 20 bytes a device sends (prefix and 16 bytes).
    TooLong {
        /// Length of the notification.
        len: usize,
    },
    /// A total length of 0: there is no transfer of nothing.
    ZeroTotal,
    /// An offset at or past the total length: no data lives there.
    OffsetPastTotal {
        /// Offset of the notification.
        offset: u16,
        /// Total length of the notification.
        total_len: u16,
    },
    /// A chunk with no payload before the end of the transfer.
    EmptyPayload {
        /// Offset of the notification.
        offset: u16,
    },
    /// The total length differs from the one the transfer started with.
    TotalLenChanged {
        /// Total length announced by the transfer's first chunk.
        first: u16,
        /// Total length in this notification.
        got: u16,
    },
    /// Not the offset expected next: a duplicate, a stale retransmission,
    /// or a chunk after a lost one.
    UnexpectedOffset {
        /// Offset the pull is waiting for.
        expected: u16,
        /// Offset of the notification.
        got: u16,
    },
    /// Data on the other transfer's characteristic (a core-dump chunk
    /// during a log transfer, or a log chunk once the logs are done).
    WrongCharacteristic {
        /// Where the data was expected.
        expected: super::Characteristic,
        /// Where it came from.
        got: super::Characteristic,
    },
    /// Data while the pull expects none: the buffer is complete and waits
    /// to be made durable, or the pull is over.
    NotExpected,
}

impl DropReason {
    /// Whether no firmware following PROTOCOL §6 sends this: a broken or
    /// hostile device, not a lossy link.
    pub fn is_hostile(&self) -> bool {
        !matches!(
            self,
            DropReason::UnexpectedOffset { .. }
                | DropReason::WrongCharacteristic { .. }
                | DropReason::NotExpected
        )
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::TooShort { len } => write!(
                f,
                "notification of {len} bytes is shorter than its {CHUNK_HEADER_LEN}-byte prefix"
            ),
            DropReason::TooLong { len } => write!(
                f,
                "notification of {len} bytes is longer than {MAX_NOTIFICATION_LEN}"
            ),
            DropReason::ZeroTotal => f.write_str("total length 0"),
            DropReason::OffsetPastTotal { offset, total_len } => {
                write!(
                    f,
                    "offset {offset} is not below the total length {total_len}"
                )
            }
            DropReason::EmptyPayload { offset } => write!(f, "empty chunk at offset {offset}"),
            DropReason::TotalLenChanged { first, got } => write!(
                f,
                "total length changed from {first} to {got} during the transfer"
            ),
            DropReason::UnexpectedOffset { expected, got } => {
                write!(f, "chunk at offset {got}, expected {expected}")
            }
            DropReason::WrongCharacteristic { expected, got } => {
                write!(f, "data on {got}, expected on {expected}")
            }
            DropReason::NotExpected => f.write_str("data while none is expected"),
        }
    }
}
