//! BLE reassembly of a sequence of notifications. The input is split into
//! notifications, each preceded by its length byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ulogger_wire::{ChunkReassembler, Feed};

fuzz_target!(|data: &[u8]| {
    let mut rx = ChunkReassembler::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (notification, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        let before = rx.clone();
        match rx.feed(notification) {
            Feed::Ack(ack) => {
                assert_eq!(ack, rx.ack());
                assert!(rx.next_expected() < rx.total_len().unwrap());
            }
            Feed::Complete { ack, data } => {
                assert_eq!(usize::from(u16::from_le_bytes(ack)), data.len());
                assert_eq!(rx, ChunkReassembler::new());
            }
            Feed::Ignored(_) => assert_eq!(rx, before),
        }
    }
});
