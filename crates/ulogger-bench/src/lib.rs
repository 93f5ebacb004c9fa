//! What the workspace's benchmarks share, so that each bench file holds
//! only what it measures (decision "One bench harness"):
//!
//! - [`stats`]: medians and nearest-rank percentiles, one definition each;
//! - [`usage`]: CPU time, memory and context switches from the kernel
//!   (`getrusage`, Linux `/proc`);
//! - [`report`]: the `SUITE` lines `scripts/bench-suite` collects, and
//!   criterion's own medians read back for them;
//! - `broker` (feature `broker`): mosquitto and the emulator over mutual
//!   TLS, raw rumqttc clients and valid logs for the client's benches.
//!
//! A dev-dependency only (`publish = false`). It depends on the emulator
//! and the formats, never on `ulogger-cloud`, whose benches use it; the
//! emulator's own benches use it without `broker`.
//!
//! Benchmarks are programs that stop at the first surprise, so the
//! fixtures panic with a message rather than return errors.
#![deny(missing_docs)]

#[cfg(feature = "broker")]
pub mod broker;
pub mod report;
pub mod stats;
pub mod usage;
