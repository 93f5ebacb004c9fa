//! The uLogger platform's formats, sans I/O.
//!
//! Everything here is a pure function or a small state machine over byte
//! slices: no sockets, files or async runtime, so each piece can be fuzzed
//! and property-tested on its own. Section numbers (§) refer to the
//! platform's wire protocol reference.
//!
//! - Topics and ids (§1, §2): [`Topics`], [`validate_serial`],
//!   [`validate_publish_topic`].
//! - Device identification (§4): [`DeviceInfo`].
//! - Binary logs (§5): [`LogHeader`], [`validate_checksum`],
//!   [`patch_session_token`], [`patch_epoch_time_us`], [`build_log`].

mod device_info;
mod header;
mod topic;

pub use device_info::{DeviceInfo, DeviceInfoError, DeviceInfoField};
pub use header::{
    build_log, compute_checksum, header_len, patch_epoch_time_us, patch_session_token,
    validate_checksum, HeaderError, LogHeader, HEADER_SIZE, MAX_MESSAGE_SIZE, MAX_USED_BYTES,
    SUPPORTED_HEADER_VERSIONS,
};
pub use topic::{
    validate_publish_topic, validate_serial, TopicError, TopicKind, Topics, MAX_SERIAL_LEN,
    MAX_TOPIC_LEN, MAX_TOPIC_SLASHES,
};
