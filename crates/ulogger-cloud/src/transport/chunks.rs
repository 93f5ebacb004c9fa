//! Bytes for the broker, in order, as a list of chunks: whole packets, or
//! a PUBLISH's header followed by its payload itself. The payload is the
//! session's own `Bytes` (a reference count, not a copy), and the writer
//! hands the chunks to the stream in one vectored write, which TLS
//! encrypts straight from them: a log is copied once on its way out (into
//! the TLS record), not once more into a packet buffer first.
//!
//! Control packets keep the codec's encoder (`mqttbytes`). A QoS 1 PUBLISH
//! header is encoded here, because the codec only encodes a whole packet,
//! payload included; the tests check it byte for byte against the codec.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes::v4::Packet;

/// The most chunks handed to one vectored write (a burst of publishes is
/// two chunks each; the rest goes in the next write).
pub(crate) const MAX_SLICES: usize = 64;

/// The most bytes of a QoS 1 PUBLISH header besides the topic: type and
/// flags, up to 4 of remaining length, topic length, packet id.
const PUBLISH_HEAD_MAX: usize = 1 + 4 + 2 + 2;

/// See the module documentation.
#[derive(Default)]
pub(crate) struct Chunks {
    chunks: VecDeque<Bytes>,
    /// Packets and headers are encoded here and split off when done, so
    /// that one allocation serves many of them.
    scratch: BytesMut,
    /// How much `scratch` takes at a time (0: what one packet needs).
    block: usize,
}

impl Chunks {
    /// A list whose headers share allocations of `block` bytes: for the
    /// driver, which encodes many (a caller encodes one, and uses
    /// `Chunks::default()`).
    pub fn with_blocks(block: usize) -> Chunks {
        Chunks {
            block,
            ..Chunks::default()
        }
    }

    /// Room for `need` more bytes in `scratch`.
    fn reserve(&mut self, need: usize) {
        if self.scratch.capacity() - self.scratch.len() < need {
            self.scratch.reserve(need.max(self.block));
        }
    }

    /// Nothing is left to write.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Appends a control packet, encoded.
    pub fn packet(&mut self, packet: &Packet) {
        // Control packets are small (a SUBSCRIBE holds one filter).
        self.reserve(packet.size());
        // Sizes were checked before the command was queued; encoding into
        // a growable buffer with no size limit cannot fail.
        if let Err(e) = packet.write(&mut self.scratch, usize::MAX) {
            tracing::error!(error = %e, "could not encode an MQTT packet");
            self.scratch.clear();
            return;
        }
        self.chunks.push_back(self.scratch.split().freeze());
    }

    /// Appends a QoS 1 PUBLISH of `payload` to `topic`: its header, then
    /// the payload itself.
    pub fn publish(&mut self, topic: &str, pkid: u16, dup: bool, payload: Bytes) {
        self.reserve(PUBLISH_HEAD_MAX + topic.len());
        encode_publish_head(topic, pkid, dup, payload.len(), &mut self.scratch);
        self.chunks.push_back(self.scratch.split().freeze());
        if !payload.is_empty() {
            self.chunks.push_back(payload);
        }
    }

    /// Moves every chunk of `other` to the end of this list.
    pub fn append(&mut self, other: &mut Chunks) {
        if self.chunks.is_empty() {
            std::mem::swap(&mut self.chunks, &mut other.chunks);
        } else {
            self.chunks.append(&mut other.chunks);
        }
    }

    /// Every chunk in one buffer (a copy), for tests that decode them.
    #[cfg(test)]
    pub fn concatenated(&self) -> BytesMut {
        let mut out = BytesMut::new();
        for chunk in &self.chunks {
            out.extend_from_slice(chunk);
        }
        out
    }

    /// Drops every chunk.
    pub fn clear(&mut self) {
        self.chunks.clear();
    }

    /// Points `slices` at the first chunks (at most [`MAX_SLICES`]) and
    /// returns how many it filled.
    pub fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>; MAX_SLICES]) -> usize {
        let mut n = 0;
        for (slot, chunk) in slices.iter_mut().zip(&self.chunks) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }

    /// Drops the first `n` bytes (written).
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
    }
}

/// Appends to `out` the fixed and variable header of a QoS 1 PUBLISH
/// (MQTT 3.1.1 §3.3) of a `payload_len`-byte payload: type and flags,
/// remaining length, topic, packet id. The payload follows it on the wire.
fn encode_publish_head(topic: &str, pkid: u16, dup: bool, payload_len: usize, out: &mut BytesMut) {
    // Topic length, topic, packet id, payload. Sizes were checked before
    // the publish was handed over (the topic is at most 256 bytes, the
    // payload at most the broker's message size), so neither the topic
    // length nor the remaining length can overflow their fields.
    let remaining = 2 + topic.len() + 2 + payload_len;
    // PUBLISH, QoS 1 (bits 1-2), DUP (bit 3), no retain.
    out.put_u8(0x32 | if dup { 0x08 } else { 0 });
    let mut left = remaining;
    loop {
        let byte = (left % 128) as u8;
        left /= 128;
        if left == 0 {
            out.put_u8(byte);
            break;
        }
        out.put_u8(byte | 0x80);
    }
    out.put_u16(topic.len() as u16);
    out.put_slice(topic.as_bytes());
    out.put_u16(pkid);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rumqttc::mqttbytes::v4::Publish;
    use rumqttc::mqttbytes::QoS;

    fn by_codec(topic: &str, pkid: u16, dup: bool, payload: &[u8]) -> Vec<u8> {
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
        publish.pkid = pkid;
        publish.dup = dup;
        let mut out = BytesMut::new();
        Packet::Publish(publish)
            .write(&mut out, usize::MAX)
            .unwrap();
        out.to_vec()
    }

    fn by_chunks(chunks: &mut Chunks) -> Vec<u8> {
        let mut out = Vec::new();
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n = chunks.slices(&mut slices);
        for slice in &slices[..n] {
            out.extend_from_slice(slice);
        }
        let len = out.len();
        chunks.advance(len);
        out
    }

    #[test]
    fn publish_headers_match_the_codec_at_every_remaining_length_width() {
        // Remaining lengths around each width of the variable-length field.
        let topic = "binlog/v0/42/7";
        let overhead = 2 + topic.len() + 2;
        for remaining in [127usize, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            let payload = vec![0xA5; remaining - overhead];
            for (pkid, dup) in [(1, false), (49_151, true), (u16::MAX, false)] {
                let mut chunks = Chunks::default();
                chunks.publish(topic, pkid, dup, Bytes::from(payload.clone()));
                assert_eq!(
                    by_chunks(&mut chunks),
                    by_codec(topic, pkid, dup, &payload),
                    "remaining {remaining}, pkid {pkid}, dup {dup}"
                );
                assert!(chunks.is_empty());
            }
        }
    }

    #[test]
    fn chunks_keep_their_order_and_advance_across_boundaries() {
        let mut chunks = Chunks::default();
        chunks.packet(&Packet::PingReq);
        chunks.publish("a/b", 9, false, Bytes::from_static(b"payload"));
        chunks.publish("c", 10, true, Bytes::new());
        let mut more = Chunks::default();
        more.packet(&Packet::Disconnect);
        chunks.append(&mut more);
        assert!(more.is_empty());
        let mut expected = vec![0xC0, 0x00];
        expected.extend(by_codec("a/b", 9, false, b"payload"));
        expected.extend(by_codec("c", 10, true, b""));
        expected.extend([0xE0, 0x00]);

        // Written a few bytes at a time, as a slow socket takes them.
        let mut written = Vec::new();
        while !chunks.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = chunks.slices(&mut slices);
            let flat: Vec<u8> = slices[..n].iter().flat_map(|s| s.to_vec()).collect();
            let take = flat.len().min(3);
            written.extend_from_slice(&flat[..take]);
            chunks.advance(take);
        }
        assert_eq!(written, expected);
    }

    #[test]
    fn at_most_max_slices_chunks_go_in_one_write() {
        let mut chunks = Chunks::default();
        for pkid in 1..=100 {
            chunks.publish("t", pkid, false, Bytes::from_static(b"x"));
        }
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        assert_eq!(chunks.slices(&mut slices), MAX_SLICES);
    }

    #[test]
    fn the_drivers_headers_share_one_allocation() {
        let mut chunks = Chunks::with_blocks(4096);
        for pkid in 1..=50 {
            chunks.publish("binlog/v0/42/7", pkid, false, Bytes::from_static(b"log"));
        }
        let heads: Vec<usize> = chunks
            .chunks
            .iter()
            .step_by(2)
            .map(|c| c.as_ptr() as usize)
            .collect();
        let (first, last) = (heads[0], heads[heads.len() - 1]);
        assert!(
            // Type, remaining length, topic length, topic, packet id.
            heads.windows(2).all(|w| w[1] == w[0] + 1 + 1 + 2 + 14 + 2) && last - first < 4096,
            "each header follows the last in the same block"
        );
    }

    proptest! {
        #[test]
        fn any_publish_is_encoded_as_the_codec_does(
            topic in "[a-z0-9/_-]{1,256}",
            pkid in 1u16..,
            dup: bool,
            payload in proptest::collection::vec(any::<u8>(), 0..20_000),
        ) {
            let mut chunks = Chunks::default();
            chunks.publish(&topic, pkid, dup, Bytes::from(payload.clone()));
            prop_assert_eq!(by_chunks(&mut chunks), by_codec(&topic, pkid, dup, &payload));
        }
    }
}
