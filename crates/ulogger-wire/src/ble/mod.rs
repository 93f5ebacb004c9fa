//! The BLE chunked transfer a device uses to hand its logs and core dump
//! to a gateway (PROTOCOL §6), and the core-dump header (§10).
//!
//! [`BlePull`] is the gateway's side of one connection: it asks with ack
//! 0, reassembles, acknowledges each chunk, re-sends a stalled
//! acknowledgement, and holds back the final acknowledgement, which makes
//! the device erase the buffer, until its caller says the buffer is
//! durable. The device's identity comes from its `config` characteristic,
//! read by [`decode_ble_config`] into a [`DeviceInfo`](super::DeviceInfo);
//! [`CoreDumpHeader`] checks a core dump and the identity inside it against
//! that.

mod chunk;
mod config;
mod core_dump;
mod pull;
#[cfg(test)]
mod pull_tests;
mod reassembler;

pub use chunk::{DropReason, CHUNK_HEADER_LEN, CHUNK_PAYLOAD_LEN, MAX_NOTIFICATION_LEN};
pub use config::{decode_ble_config, BleConfigError, MAX_BLE_CONFIG_LEN};
pub use core_dump::{
    CoreDumpError, CoreDumpField, CoreDumpHeader, IdentityMismatch, CORE_DUMP_HEADER_LEN,
};
pub use pull::{
    BlePull, BufferKind, Characteristic, Delivery, GiveUpReason, NotAwaitingDurable, PullAction,
    PullConfig, PullSummary, TransferId,
};
pub use reassembler::{ChunkReassembler, Feed, IgnoreReason};
