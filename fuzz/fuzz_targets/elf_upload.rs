//! The firmware ELF upload (PROTOCOL §11): the checks on a file before it
//! is sent, and the request and reply as the cloud and the client read
//! them. Any bytes: an answer or a typed error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ulogger_wire::{inspect_elf, parse_elf_upload_reply, ElfUploadRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(summary) = inspect_elf(data) {
        assert_eq!(summary.size, data.len());
        assert!(data.starts_with(b"\x7fELF"));
    }
    // The same bytes behind a valid ELF identification, so the header and
    // section table parsers see them too.
    let mut elf = b"\x7fELF\x01\x01\x01\0".to_vec();
    elf.extend_from_slice(data);
    let _ = inspect_elf(&elf);
    elf[4] = 2;
    let _ = inspect_elf(&elf);

    if let Ok(request) = ElfUploadRequest::parse(data) {
        assert_eq!(ElfUploadRequest::parse(&request.payload()), Ok(request));
    }
    if let Ok(Some(url)) = parse_elf_upload_reply(data, 7) {
        assert!(url.starts_with("http://") || url.starts_with("https://"));
    }
});
