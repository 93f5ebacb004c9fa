//! One module per subcommand (or family of subcommands sharing their
//! arguments: `upload` also holds `register` and `core-dump`, `telemetry`
//! holds `metrics`, `events` and `heartbeat`). A command uses the shared
//! modules beside `main.rs`, never another command.

pub mod agent;
#[cfg(all(feature = "ble", target_os = "linux"))]
pub mod ble;
pub mod check;
pub mod config;
pub mod decode;
pub mod demo;
pub mod docs;
pub mod emulator;
pub mod inspect;
pub mod logs;
pub mod make_log;
pub mod outbox;
pub mod query;
pub mod telemetry;
pub mod tokens;
pub mod upload;
pub mod upload_elf;
