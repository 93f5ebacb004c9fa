//! Device identification decoding; whatever decodes must re-encode to the
//! same identification.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ulogger_wire::DeviceInfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = DeviceInfo::decode(data) {
        assert_eq!(DeviceInfo::decode(&info.encode()).unwrap(), info);
    }
});
