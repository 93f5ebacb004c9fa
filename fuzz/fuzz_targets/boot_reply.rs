//! Boot reply and boot request parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ulogger_wire::{boot_reply_payload, parse_boot_reply, BootRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(token)) = parse_boot_reply(data) {
        assert_eq!(parse_boot_reply(&boot_reply_payload(token)), Ok(Some(token)));
    }
    if let Ok(request) = BootRequest::parse(data) {
        assert_eq!(BootRequest::parse(&request.to_payload()).unwrap(), request);
    }
});
