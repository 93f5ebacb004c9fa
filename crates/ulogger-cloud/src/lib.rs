//! Upload embedded devices' binary logs, core dumps and telemetry to the
//! [uLogger](https://ulogger.ai) cloud.
//!
//! A *gateway* (a Linux box, a phone, a CI job) pulls binary logs from
//! devices running the uLogger agent and forwards them to the cloud over
//! MQTT with mutual TLS. This crate is that gateway's side:
//!
//! - [`wire`]: the platform's formats as pure functions on byte slices
//!   (log headers and checksums, device identification, topics, boot
//!   registration, log configuration, BLE chunked transfer).
//! - [`SessionStore`]: the session-token cache, in memory or in a file
//!   shared with the Python SDK (`~/.ulogger/session_tokens.json`).

pub mod wire;

mod store;

pub use store::{SessionStore, StoreError, StoreOp, TokenEntry};
