//! The uLogger platform's formats, sans I/O.
//!
//! Everything here is a pure function or a small state machine over byte
//! slices: no sockets, files or async runtime, so each piece can be fuzzed
//! and property-tested on its own. Section numbers (§) refer to the
//! platform's wire protocol reference.
//!
//! - Topics and ids (§1, §2): [`Topics`], [`validate_serial`],
//!   [`validate_publish_topic`].
//! - Boot registration (§3): [`boot_payload`], [`parse_boot_reply`],
//!   [`BootRequest`], [`boot_reply_payload`].
//! - Device identification (§4): [`DeviceInfo`], and as read over BLE,
//!   [`decode_ble_config`].
//! - Binary logs (§5): [`LogHeader`], [`validate_checksum`],
//!   [`patch_session_token`], [`patch_epoch_time_us`], [`build_log`].
//! - BLE chunked transfer (§6): [`BlePull`] (and the older
//!   [`ChunkReassembler`]); core-dump header (§10): [`CoreDumpHeader`].
//! - Log configuration (§7): [`LogConfig`].
//! - Metrics, events and heartbeats (§8): one message as a value,
//!   [`Telemetry`]; its parts [`Metric`], [`Event`], and the builders
//!   [`metrics_payload`], [`metrics_batch_payload`], [`Compression`].
//! - Text logs (§12): [`TextEntry`], [`TextLevel`], [`text_log_batches`].
//! - Firmware ELF upload (§11): [`ElfUploadRequest`],
//!   [`parse_elf_upload_reply`], the checks before sending
//!   ([`inspect_elf`], [`validate_device_type`]) and the topics
//!   ([`Topics::firmware_upload`], [`Topics::upload_reply`]).
//! - Local decoding of binary logs with the firmware ELF (§5.1):
//!   [`SymbolTable`], [`LogDecoder`] yielding [`Record`]s, and the C
//!   formatter [`printf`].

mod ble;
mod boot;
mod decode;
mod device_info;
mod elf_upload;
mod header;
mod log_config;
mod telemetry;
mod telemetry_message;
mod text_log;
mod topic;

pub use ble::{
    decode_ble_config, BleConfigError, BlePull, BufferKind, Characteristic, ChunkReassembler,
    CoreDumpError, CoreDumpField, CoreDumpHeader, Delivery, DropReason, Feed, GiveUpReason,
    IdentityMismatch, IgnoreReason, NotAwaitingDurable, PullAction, PullConfig, PullSummary,
    TransferId, CHUNK_HEADER_LEN, CHUNK_PAYLOAD_LEN, CORE_DUMP_HEADER_LEN, MAX_BLE_CONFIG_LEN,
    MAX_NOTIFICATION_LEN,
};
pub use boot::{
    boot_payload, boot_reply_payload, parse_boot_reply, BootReplyError, BootRequest,
    BootRequestError,
};
pub use decode::{
    printf, Arg, ArgType, Clock, DataModel, DecodeOptions, ElfError, FormatProblem, FrameFormat,
    FramesEnd, Level, LogDecoder, Message, MetricReading, Module, ModuleTableError, PayloadPart,
    Printed, Problem, Record, RecordTime, SymbolTable, ALWAYS_LOG_BIT, DEBUG_MODULES_SECTION,
    MAX_FIELD, MAX_FORMAT_LEN, MAX_MESSAGE,
};
pub use device_info::{DeviceInfo, DeviceInfoError, DeviceInfoField};
pub use elf_upload::{
    elf_contains, elf_upload_reply_payload, inspect_elf, parse_elf_upload_reply, ElfCheckError,
    ElfClass, ElfKind, ElfSummary, ElfUploadReplyError, ElfUploadRequest, ElfUploadRequestError,
};
pub use header::{
    build_log, compute_checksum, header_len, patch_epoch_time_us, patch_session_token,
    validate_checksum, HeaderError, LogHeader, HEADER_SIZE, MAX_MESSAGE_SIZE, MAX_USED_BYTES,
    SUPPORTED_HEADER_VERSIONS,
};
pub use log_config::{LogConfig, LogConfigError, LogLevel};
pub use telemetry::{
    events_batch_payload, events_payload, metrics_batch_payload, metrics_payload, Compression,
    DeviceEvents, DeviceMetrics, Event, Metric, MetricValue, TelemetryError, TelemetryPayload,
    COMPRESSION_THRESHOLD,
};
pub use telemetry_message::{Telemetry, TelemetryFamily};
pub use text_log::{
    text_log_batches, text_log_batches_numbered, TextEntry, TextLevel, TextLogBatch, TextLogError,
};
pub use topic::{
    validate_device_type, validate_publish_topic, validate_serial, TopicError, TopicKind, Topics,
    MAX_DEVICE_TYPE_LEN, MAX_SERIAL_LEN, MAX_TOPIC_LEN, MAX_TOPIC_SLASHES,
};
