//! The first, minimal reassembler of the BLE chunked transfer (PROTOCOL §6),
//! kept for compatibility.
//!
//! It hands out the final acknowledgement together with the data, and a
//! final acknowledgement is the device's delete command: a gateway that
//! writes it before the data is stored can lose a log. A gateway should use
//! [`BlePull`](super::BlePull), which withholds the final acknowledgement
//! until its caller says the buffer is durable.
//!
//! Each notification is `[offset u16][total_len u16][payload...]`
//! (little-endian); the gateway answers with the next offset it expects,
//! `[next_expected u16]`, starting the transfer with an acknowledgement of 0.
//! Packets that do not continue the stream exactly are dropped.

/// Length of a notification's `[offset][total_len]` prefix.
const PACKET_HEADER_LEN: usize = 4;

/// What the gateway should do after a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// The packet was accepted: write this acknowledgement to the device.
    Ack([u8; 2]),
    /// The packet completed the transfer: write `ack`, take `data`. The
    /// reassembler is ready for the next transfer.
    Complete {
        /// The final acknowledgement (the total length).
        ack: [u8; 2],
        /// The transferred bytes, exactly `total_len` of them.
        data: Vec<u8>,
    },
    /// The packet was dropped; the transfer's state is unchanged.
    Ignored(IgnoreReason),
}

/// Why a notification was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IgnoreReason {
    /// Shorter than the 4-byte `[offset][total_len]` prefix.
    TooShort {
        /// Length of the notification.
        len: usize,
    },
    /// Not the next expected offset: a duplicate or out-of-order packet.
    UnexpectedOffset {
        /// Offset the reassembler is waiting for.
        expected: u16,
        /// Offset of the packet.
        got: u16,
    },
    /// The packet's total length disagrees with the transfer's first packet.
    TotalLenChanged {
        /// Total length announced by the first packet.
        first: u16,
        /// Total length in this packet.
        got: u16,
    },
}

/// Rebuilds a transfer from BLE notifications, one transfer at a time.
///
/// Prefer [`BlePull`](super::BlePull) in a gateway: this type's
/// [`Feed::Complete`] pairs the data with the final acknowledgement, which
/// makes the device erase it, before anything could be stored.
///
/// Memory is bounded by the transfer's announced total length (at most
/// 65,535 bytes); payload bytes past it are discarded.
///
/// ```
/// use ulogger_wire::{ChunkReassembler, Feed};
/// let mut rx = ChunkReassembler::new();
/// assert_eq!(rx.start_ack(), [0, 0]);
/// // offset 0, total 5, "hel"
/// assert_eq!(rx.feed(b"\x00\x00\x05\x00hel"), Feed::Ack([3, 0]));
/// // offset 3, total 5, "lo"
/// assert_eq!(
///     rx.feed(b"\x03\x00\x05\x00lo"),
///     Feed::Complete { ack: [5, 0], data: b"hello".to_vec() }
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkReassembler {
    total_len: Option<u16>,
    data: Vec<u8>,
}

impl ChunkReassembler {
    /// A reassembler waiting for offset 0 of a new transfer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The acknowledgement (0) that asks the device to start a transfer.
    pub fn start_ack(&self) -> [u8; 2] {
        0u16.to_le_bytes()
    }

    /// The acknowledgement for the current state: the next offset expected.
    /// Useful to re-send after a timeout.
    pub fn ack(&self) -> [u8; 2] {
        self.next_expected().to_le_bytes()
    }

    /// Next offset the reassembler accepts.
    pub fn next_expected(&self) -> u16 {
        // `data` never grows past `total_len`, a u16.
        u16::try_from(self.data.len()).unwrap_or(u16::MAX)
    }

    /// Total length announced by the current transfer's first packet, if a
    /// transfer is under way.
    pub fn total_len(&self) -> Option<u16> {
        self.total_len
    }

    /// Processes one notification.
    pub fn feed(&mut self, notification: &[u8]) -> Feed {
        let (Some(&[o0, o1, t0, t1]), Some(payload)) = (
            notification.first_chunk::<PACKET_HEADER_LEN>(),
            notification.get(PACKET_HEADER_LEN..),
        ) else {
            return Feed::Ignored(IgnoreReason::TooShort {
                len: notification.len(),
            });
        };
        let offset = u16::from_le_bytes([o0, o1]);
        let total = u16::from_le_bytes([t0, t1]);
        if let Some(first) = self.total_len.filter(|&first| first != total) {
            return Feed::Ignored(IgnoreReason::TotalLenChanged { first, got: total });
        }
        let expected = self.next_expected();
        if offset != expected {
            return Feed::Ignored(IgnoreReason::UnexpectedOffset {
                expected,
                got: offset,
            });
        }
        if self.total_len.is_none() {
            self.total_len = Some(total);
            self.data.reserve_exact(usize::from(total));
        }
        let room = usize::from(total).saturating_sub(self.data.len());
        self.data
            .extend_from_slice(payload.get(..room).unwrap_or(payload));
        let ack = self.ack();
        if self.next_expected() >= total {
            let data = std::mem::take(&mut self.data);
            self.reset();
            Feed::Complete { ack, data }
        } else {
            Feed::Ack(ack)
        }
    }

    /// Abandons the current transfer; the next one starts at offset 0.
    pub fn reset(&mut self) {
        self.total_len = None;
        self.data.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(offset: u16, total: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = offset.to_le_bytes().to_vec();
        p.extend(total.to_le_bytes());
        p.extend(payload);
        p
    }

    #[test]
    fn in_order_transfer_completes() {
        let mut rx = ChunkReassembler::new();
        assert_eq!(rx.start_ack(), [0, 0]);
        assert_eq!(rx.feed(&packet(0, 6, b"ab")), Feed::Ack(2u16.to_le_bytes()));
        assert_eq!(rx.total_len(), Some(6));
        assert_eq!(rx.feed(&packet(2, 6, b"cd")), Feed::Ack(4u16.to_le_bytes()));
        assert_eq!(
            rx.feed(&packet(4, 6, b"ef")),
            Feed::Complete {
                ack: 6u16.to_le_bytes(),
                data: b"abcdef".to_vec()
            }
        );
        // Ready for the next transfer.
        assert_eq!(rx.total_len(), None);
        assert_eq!(rx.next_expected(), 0);
        assert_eq!(
            rx.feed(&packet(0, 1, b"z")),
            Feed::Complete {
                ack: [1, 0],
                data: b"z".to_vec()
            }
        );
    }

    #[test]
    fn duplicates_and_out_of_order_packets_are_dropped() {
        let mut rx = ChunkReassembler::new();
        assert_eq!(rx.feed(&packet(0, 6, b"ab")), Feed::Ack([2, 0]));
        assert_eq!(
            rx.feed(&packet(0, 6, b"ab")),
            Feed::Ignored(IgnoreReason::UnexpectedOffset {
                expected: 2,
                got: 0
            })
        );
        assert_eq!(
            rx.feed(&packet(4, 6, b"ef")),
            Feed::Ignored(IgnoreReason::UnexpectedOffset {
                expected: 2,
                got: 4
            })
        );
        assert_eq!(rx.ack(), [2, 0]);
        assert_eq!(rx.feed(&packet(2, 6, b"cd")), Feed::Ack([4, 0]));
        assert_eq!(
            rx.feed(&packet(4, 6, b"ef")),
            Feed::Complete {
                ack: [6, 0],
                data: b"abcdef".to_vec()
            }
        );
    }

    #[test]
    fn first_packet_must_start_at_zero() {
        let mut rx = ChunkReassembler::new();
        assert_eq!(
            rx.feed(&packet(2, 6, b"cd")),
            Feed::Ignored(IgnoreReason::UnexpectedOffset {
                expected: 0,
                got: 2
            })
        );
        assert_eq!(rx.total_len(), None);
    }

    #[test]
    fn total_len_change_is_dropped() {
        let mut rx = ChunkReassembler::new();
        rx.feed(&packet(0, 6, b"ab"));
        assert_eq!(
            rx.feed(&packet(2, 8, b"cd")),
            Feed::Ignored(IgnoreReason::TotalLenChanged { first: 6, got: 8 })
        );
        assert_eq!(rx.next_expected(), 2);
    }

    #[test]
    fn packets_shorter_than_four_bytes_are_dropped() {
        let mut rx = ChunkReassembler::new();
        for len in 0..4 {
            assert_eq!(
                rx.feed(&[0u8; 3][..len]),
                Feed::Ignored(IgnoreReason::TooShort { len })
            );
        }
        // Four bytes is a valid (empty) packet.
        assert_eq!(rx.feed(&packet(0, 2, b"")), Feed::Ack([0, 0]));
    }

    #[test]
    fn payload_past_total_len_is_discarded() {
        let mut rx = ChunkReassembler::new();
        assert_eq!(
            rx.feed(&packet(0, 3, b"abcdef")),
            Feed::Complete {
                ack: [3, 0],
                data: b"abc".to_vec()
            }
        );
    }

    #[test]
    fn empty_transfer_completes_at_once() {
        let mut rx = ChunkReassembler::new();
        assert_eq!(
            rx.feed(&packet(0, 0, b"")),
            Feed::Complete {
                ack: [0, 0],
                data: vec![]
            }
        );
    }

    #[test]
    fn maximal_transfer() {
        let data: Vec<u8> = (0..u16::MAX).map(|i| i as u8).collect();
        let mut rx = ChunkReassembler::new();
        let mut result = None;
        for (i, chunk) in data.chunks(244).enumerate() {
            let offset = u16::try_from(i * 244).unwrap();
            match rx.feed(&packet(offset, u16::MAX, chunk)) {
                Feed::Ack(ack) => assert_eq!(u16::from_le_bytes(ack), offset + chunk.len() as u16),
                Feed::Complete { data, .. } => result = Some(data),
                Feed::Ignored(r) => panic!("{r:?}"),
            }
        }
        assert_eq!(result.unwrap(), data);
    }

    #[test]
    fn reset_abandons_the_transfer() {
        let mut rx = ChunkReassembler::new();
        rx.feed(&packet(0, 6, b"ab"));
        rx.reset();
        assert_eq!(rx, ChunkReassembler::new());
        assert_eq!(
            rx.feed(&packet(0, 2, b"xy")),
            Feed::Complete {
                ack: [2, 0],
                data: b"xy".to_vec()
            }
        );
    }
}
