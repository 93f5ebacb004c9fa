//! Log header parsing, checksum validation and in-place patching.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ulogger_wire::{
    build_log, patch_epoch_time_us, patch_session_token, validate_checksum, LogHeader,
};

fuzz_target!(|data: &[u8]| {
    let parsed = LogHeader::parse(data);
    let validated = validate_checksum(data);
    if let Ok(header) = &validated {
        assert_eq!(parsed.as_ref(), Ok(header));
        assert!(header.log_len() <= data.len());

        let mut buf = data.to_vec();
        patch_session_token(&mut buf, 0xa5a5_5a5a).unwrap();
        let patched = validate_checksum(&buf).unwrap();
        assert_eq!(patched.session_token, 0xa5a5_5a5a);
        assert!(buf.iter().zip(data).enumerate().all(|(i, (a, b))| a == b || (1..5).contains(&i)));

        if patch_epoch_time_us(&mut buf, 42).is_ok() {
            assert_eq!(header.version, 4);
            assert_eq!(validate_checksum(&buf).unwrap().epoch_time_us, Some(42));
        }

        let body = &data[header.header_len()..header.log_len()];
        let rebuilt = build_log(*header, body).unwrap();
        assert_eq!(rebuilt, data[..header.log_len()]);
    } else {
        let mut buf = data.to_vec();
        if patch_session_token(&mut buf, 1).is_err() {
            assert_eq!(buf, data);
        }
        let _ = patch_epoch_time_us(&mut buf, 1);
    }
});
