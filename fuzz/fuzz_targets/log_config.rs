//! Log configuration decoding; whatever decodes must survive a re-encode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ulogger_wire::LogConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = LogConfig::decode(data) {
        assert_eq!(LogConfig::decode(&config.encode()).unwrap(), config);
    }
});
