//! The firmware ELF upload (PROTOCOL §11): the request a build publishes,
//! the cloud's answer with an upload URL, and the checks on the ELF
//! before anything is sent.
//!
//! The request is a JSON object published to
//! [`Topics::firmware_upload`](crate::Topics::firmware_upload); the
//! answer arrives on [`Topics::upload_reply`](crate::Topics::upload_reply)
//! and echoes the request's `upload_id` beside a `presigned_url`, to which
//! the file is then `PUT` over HTTP. Messages on the reply topic that are
//! not the answer to this request are skipped, not errors.

use object::{Object as _, ObjectKind};
use serde_json::{json, Map, Value};

use crate::topic::{validate_device_type, TopicError};

/// The ELF section that holds the firmware's module-name table
/// (PROTOCOL §5.1); without it, decoded logs name no modules.
const DEBUG_MODULES_SECTION: &str = ".ulogger.debug_modules";

/// Longest excerpt of an offending value quoted in an error message.
const MAX_QUOTE: usize = 120;

/// The JSON object a build publishes to ask for an upload URL.
///
/// ```
/// use ulogger_wire::ElfUploadRequest;
/// let request = ElfUploadRequest {
///     upload_id: 1_733_390_000_000_123,
///     customer_id: 42,
///     application_id: 7,
///     device_type: "sensor-board".into(),
///     version: "v1.2.0".into(),
///     git_hash: "abcdef0".into(),
///     branch: "main".into(),
/// };
/// let payload = request.payload();
/// assert_eq!(ElfUploadRequest::parse(&payload)?, request);
/// # Ok::<(), ulogger_wire::ElfUploadRequestError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ElfUploadRequest {
    /// The request's id; the answer comes on the reply topic named after
    /// it and echoes it.
    pub upload_id: u64,
    /// The customer id (also the topic's customer level).
    pub customer_id: u32,
    /// The application the firmware belongs to.
    pub application_id: u32,
    /// The board the firmware runs on (also the topic's last level).
    pub device_type: String,
    /// The firmware's version string, `version_number` on the wire: what
    /// the device reports (its boot registration's `version`), and what
    /// the cloud matches logs to this ELF by.
    pub version: String,
    /// The firmware's short git hash (the boot registration's `git`).
    pub git_hash: String,
    /// The branch the firmware was built from.
    pub branch: String,
}

/// Why an upload request could not be read (the cloud's side).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ElfUploadRequestError {
    /// Not a JSON object.
    #[error("upload request is not a JSON object: {reason}")]
    NotAnObject {
        /// What the JSON parser found, or what the payload is instead.
        reason: String,
    },
    /// A field is missing or of the wrong type.
    #[error("upload request field {field:?}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The device type cannot go into a topic.
    #[error("upload request has an unusable device type")]
    InvalidDeviceType {
        /// Why it was refused.
        #[source]
        source: TopicError,
    },
}

impl ElfUploadRequest {
    /// The request as JSON bytes, fields in the order the reference tool
    /// sends them; ids are JSON numbers.
    pub fn payload(&self) -> Vec<u8> {
        json!({
            "upload_id": self.upload_id,
            "device_type": self.device_type,
            "git_hash": self.git_hash,
            "version_number": self.version,
            "customer_id": self.customer_id,
            "application_id": self.application_id,
            "branch": self.branch,
        })
        .to_string()
        .into_bytes()
    }

    /// Reads a request as the cloud receives it. Lenient where the
    /// reference tool is loose: ids may be JSON numbers or decimal strings
    /// (it reads them from the environment), and a `branch` that is
    /// missing or `null` reads as empty.
    ///
    /// # Errors
    ///
    /// [`ElfUploadRequestError::NotAnObject`], [`ElfUploadRequestError::Field`]
    /// naming the field, or [`ElfUploadRequestError::InvalidDeviceType`].
    pub fn parse(payload: &[u8]) -> Result<ElfUploadRequest, ElfUploadRequestError> {
        let value: Value =
            serde_json::from_slice(payload).map_err(|e| ElfUploadRequestError::NotAnObject {
                reason: e.to_string(),
            })?;
        let Value::Object(object) = value else {
            return Err(ElfUploadRequestError::NotAnObject {
                reason: format!("found {}", quote(&value.to_string())),
            });
        };
        let text = |field: &'static str| -> Result<String, ElfUploadRequestError> {
            match object.get(field) {
                Some(Value::String(s)) => Ok(s.clone()),
                other => Err(field_error(field, "a string", other)),
            }
        };
        let request = ElfUploadRequest {
            upload_id: id(&object, "upload_id")?,
            customer_id: narrow(&object, "customer_id")?,
            application_id: narrow(&object, "application_id")?,
            device_type: text("device_type")?,
            version: text("version_number")?,
            git_hash: text("git_hash")?,
            branch: match object.get("branch") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                other => return Err(field_error("branch", "a string", other)),
            },
        };
        validate_device_type(&request.device_type)
            .map_err(|source| ElfUploadRequestError::InvalidDeviceType { source })?;
        Ok(request)
    }
}

fn field_error(field: &'static str, wanted: &str, found: Option<&Value>) -> ElfUploadRequestError {
    ElfUploadRequestError::Field {
        field,
        reason: match found {
            None => format!("missing (expected {wanted})"),
            Some(value) => format!("expected {wanted}, found {}", quote(&value.to_string())),
        },
    }
}

/// An unsigned id: a JSON number, or a string of decimal digits.
fn id(object: &Map<String, Value>, field: &'static str) -> Result<u64, ElfUploadRequestError> {
    let found = object.get(field);
    let parsed = match found {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    };
    parsed.ok_or_else(|| field_error(field, "an unsigned integer", found))
}

fn narrow(object: &Map<String, Value>, field: &'static str) -> Result<u32, ElfUploadRequestError> {
    let wide = id(object, field)?;
    u32::try_from(wide).map_err(|_| ElfUploadRequestError::Field {
        field,
        reason: format!("{wide} is over 4294967295"),
    })
}

/// The cloud's answer to upload request `upload_id`, as JSON bytes:
/// `{"upload_id": N, "presigned_url": URL}`.
pub fn elf_upload_reply_payload(upload_id: u64, presigned_url: &str) -> Vec<u8> {
    json!({ "upload_id": upload_id, "presigned_url": presigned_url })
        .to_string()
        .into_bytes()
}

/// Why the answer to an upload request cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ElfUploadReplyError {
    /// The answer echoes the request but says why there is no URL.
    #[error("the cloud refused the upload request: {message}")]
    Refused {
        /// What the cloud said (its `error` or `message`).
        message: String,
    },
    /// The answer echoes the request but holds no usable URL.
    #[error("the cloud's answer holds no usable presigned_url (an http or https URL): {found}")]
    NoUrl {
        /// The answer, shortened if long.
        found: String,
    },
}

/// Reads a message from the upload reply topic: `Ok(Some(url))` when it
/// is the answer to request `upload_id` (a JSON object whose `upload_id`
/// is that number, or that number as a string) with a `presigned_url`;
/// `Ok(None)` when it is not this request's answer (not JSON, another
/// request's, no `upload_id`): keep waiting.
///
/// ```
/// use ulogger_wire::{elf_upload_reply_payload, parse_elf_upload_reply};
/// let reply = elf_upload_reply_payload(5, "https://bucket.example/elf?sig=1");
/// assert_eq!(parse_elf_upload_reply(&reply, 5)?.as_deref(), Some("https://bucket.example/elf?sig=1"));
/// assert_eq!(parse_elf_upload_reply(&reply, 6)?, None);
/// # Ok::<(), ulogger_wire::ElfUploadReplyError>(())
/// ```
///
/// # Errors
///
/// [`ElfUploadReplyError::Refused`] when the answer carries an `error` or
/// `message` instead of a URL, [`ElfUploadReplyError::NoUrl`] when its
/// `presigned_url` is missing, empty or not an http(s) URL.
pub fn parse_elf_upload_reply(
    payload: &[u8],
    upload_id: u64,
) -> Result<Option<String>, ElfUploadReplyError> {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(payload) else {
        return Ok(None);
    };
    let echoed = match object.get("upload_id") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    if echoed != Some(upload_id) {
        return Ok(None);
    }
    match object.get("presigned_url") {
        Some(Value::String(url)) if is_http_url(url) => Ok(Some(url.clone())),
        None | Some(Value::Null) => {
            let said = ["error", "message", "detail"]
                .iter()
                .find_map(|key| object.get(*key).and_then(Value::as_str));
            match said {
                Some(message) => Err(ElfUploadReplyError::Refused {
                    message: quote(message),
                }),
                None => Err(ElfUploadReplyError::NoUrl {
                    found: quote(&Value::Object(object).to_string()),
                }),
            }
        }
        Some(other) => Err(ElfUploadReplyError::NoUrl {
            found: quote(&other.to_string()),
        }),
    }
}

fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|rest| {
        !rest.is_empty()
            && !rest.starts_with('/')
            && !url.chars().any(|c| c.is_whitespace() || c.is_control())
    })
}

/// One line, at most [`MAX_QUOTE`] characters, no control characters.
fn quote(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_QUOTE)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(MAX_QUOTE).is_some() {
        out.push_str("...");
    }
    out
}

/// 32- or 64-bit ELF (the `EI_CLASS` byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ElfClass {
    /// `ELFCLASS32`: Cortex-M, RISC-V 32 and most microcontrollers.
    Elf32,
    /// `ELFCLASS64`.
    Elf64,
}

impl ElfClass {
    /// `"ELF32"` or `"ELF64"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ElfClass::Elf32 => "ELF32",
            ElfClass::Elf64 => "ELF64",
        }
    }
}

/// What kind of ELF file it is (`e_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ElfKind {
    /// A linked image (`ET_EXEC`): what the cloud needs.
    Executable,
    /// A shared object or position-independent executable (`ET_DYN`).
    Dynamic,
    /// An object file before linking (`ET_REL`): its addresses are not
    /// the device's, so logs would not decode.
    Relocatable,
    /// A core file, or a type this crate does not know.
    Other,
}

/// What [`inspect_elf`] found in a firmware ELF.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ElfSummary {
    /// 32- or 64-bit.
    pub class: ElfClass,
    /// Little-endian (else big-endian).
    pub little_endian: bool,
    /// The machine (`e_machine`), as `object` names it (`"Arm"`,
    /// `"Riscv32"`, `"X86_64"`, ...).
    pub machine: String,
    /// Executable, relocatable, ...
    pub kind: ElfKind,
    /// Whether the `.ulogger.debug_modules` section (the module-name
    /// table, PROTOCOL §5.1) is there.
    pub has_debug_modules: bool,
    /// The file's size in bytes.
    pub size: usize,
}

/// Why a file is not a usable firmware ELF.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ElfCheckError {
    /// The file is empty.
    #[error("the file is empty, not an ELF")]
    Empty,
    /// The file does not start with the ELF magic `7f 45 4c 46`.
    #[error("not an ELF file: it starts with {found} instead of 7f 45 4c 46 (\"\\x7fELF\"); give the linked image (.elf, .axf, .out), not a .bin or .hex")]
    BadMagic {
        /// The first bytes, in hex.
        found: String,
    },
    /// The class byte is neither 1 (32-bit) nor 2 (64-bit).
    #[error("ELF class byte is {0}, neither 1 (ELF32) nor 2 (ELF64): the file is damaged")]
    BadClass(u8),
    /// The header or section table does not parse.
    #[error("the ELF header or section table is damaged: {0}")]
    Malformed(String),
}

/// Checks that `data` is an ELF file whose headers parse, and says what
/// it is. Sans I/O: the caller reads the file.
///
/// # Errors
///
/// [`ElfCheckError::Empty`], [`ElfCheckError::BadMagic`], [`ElfCheckError::BadClass`] or
/// [`ElfCheckError::Malformed`].
pub fn inspect_elf(data: &[u8]) -> Result<ElfSummary, ElfCheckError> {
    if data.is_empty() {
        return Err(ElfCheckError::Empty);
    }
    if !data.starts_with(b"\x7fELF") {
        let found = data
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        return Err(ElfCheckError::BadMagic { found });
    }
    let class = match data.get(4) {
        Some(1) => ElfClass::Elf32,
        Some(2) => ElfClass::Elf64,
        Some(&other) => return Err(ElfCheckError::BadClass(other)),
        None => {
            return Err(ElfCheckError::Malformed(
                "the file ends inside the ELF identification".into(),
            ))
        }
    };
    let file = object::File::parse(data).map_err(|e| ElfCheckError::Malformed(e.to_string()))?;
    let kind = match file.kind() {
        ObjectKind::Executable => ElfKind::Executable,
        ObjectKind::Dynamic => ElfKind::Dynamic,
        ObjectKind::Relocatable => ElfKind::Relocatable,
        _ => ElfKind::Other,
    };
    Ok(ElfSummary {
        class,
        little_endian: file.is_little_endian(),
        machine: format!("{:?}", file.architecture()),
        kind,
        has_debug_modules: file.section_by_name(DEBUG_MODULES_SECTION).is_some(),
        size: data.len(),
    })
}

/// Whether `needle` occurs in `data` (e.g. the version string in the
/// firmware image, which most firmware embeds). An empty needle is not
/// looked for: `false`.
pub fn elf_contains(data: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    let Some(&first) = needle.first() else {
        return false;
    };
    data.iter()
        .enumerate()
        .any(|(i, &b)| b == first && data.get(i..i + needle.len()).is_some_and(|w| w == needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ElfUploadRequest {
        ElfUploadRequest {
            upload_id: 17,
            customer_id: 42,
            application_id: 7,
            device_type: "my_board".into(),
            version: "v1.0.0".into(),
            git_hash: "abcdef0".into(),
            branch: "main".into(),
        }
    }

    #[test]
    fn the_request_has_the_reference_tools_fields_in_its_order() {
        let payload = request().payload();
        assert_eq!(
            String::from_utf8(payload).unwrap(),
            r#"{"upload_id":17,"device_type":"my_board","git_hash":"abcdef0","version_number":"v1.0.0","customer_id":42,"application_id":7,"branch":"main"}"#
        );
    }

    #[test]
    fn the_reference_tools_loose_requests_are_read() {
        let loose = br#"{"upload_id":1733390000000,"device_type":"b","git_hash":"g","version_number":"v","customer_id":"42","application_id":7,"branch":null}"#;
        let parsed = ElfUploadRequest::parse(loose).unwrap();
        assert_eq!(parsed.customer_id, 42);
        assert_eq!(parsed.upload_id, 1_733_390_000_000);
        assert_eq!(parsed.branch, "");
    }

    #[test]
    fn bad_requests_name_their_field() {
        for (payload, field) in [
            (&br#"{"device_type":"b","git_hash":"g","version_number":"v","customer_id":1,"application_id":7}"#[..], "upload_id"),
            (br#"{"upload_id":1,"device_type":"b","git_hash":"g","version_number":"v","customer_id":1,"application_id":null}"#, "application_id"),
            (br#"{"upload_id":1,"device_type":"b","git_hash":"g","version_number":"v","customer_id":4294967296,"application_id":7}"#, "customer_id"),
            (br#"{"upload_id":-1,"device_type":"b","git_hash":"g","version_number":"v","customer_id":1,"application_id":7}"#, "upload_id"),
            (br#"{"upload_id":1,"device_type":"b","git_hash":1,"version_number":"v","customer_id":1,"application_id":7}"#, "git_hash"),
        ] {
            match ElfUploadRequest::parse(payload) {
                Err(ElfUploadRequestError::Field { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(matches!(
            ElfUploadRequest::parse(b"[1]"),
            Err(ElfUploadRequestError::NotAnObject { .. })
        ));
        let mut bad = request();
        bad.device_type = "a/b".into();
        assert!(matches!(
            ElfUploadRequest::parse(&bad.payload()),
            Err(ElfUploadRequestError::InvalidDeviceType { .. })
        ));
    }

    #[test]
    fn only_this_requests_answer_is_an_answer() {
        let url = "https://s3.example/bucket/key?X-Amz-Signature=ab";
        assert_eq!(
            parse_elf_upload_reply(&elf_upload_reply_payload(9, url), 9).unwrap(),
            Some(url.to_owned())
        );
        for other in [
            &elf_upload_reply_payload(8, url)[..],
            b"not json",
            br#"{"presigned_url":"https://x"}"#,
            b"[9]",
            b"",
        ] {
            assert_eq!(parse_elf_upload_reply(other, 9), Ok(None));
        }
        assert_eq!(
            parse_elf_upload_reply(
                br#"{"upload_id":"9","presigned_url":"http://127.0.0.1:1/x"}"#,
                9
            )
            .unwrap()
            .as_deref(),
            Some("http://127.0.0.1:1/x")
        );
        assert!(matches!(
            parse_elf_upload_reply(br#"{"upload_id":9,"error":"unknown application"}"#, 9),
            Err(ElfUploadReplyError::Refused { message }) if message == "unknown application"
        ));
        for bad in [
            &br#"{"upload_id":9}"#[..],
            br#"{"upload_id":9,"presigned_url":""}"#,
            br#"{"upload_id":9,"presigned_url":"ftp://x"}"#,
            br#"{"upload_id":9,"presigned_url":"https://"}"#,
            br#"{"upload_id":9,"presigned_url":"https://a b"}"#,
            br#"{"upload_id":9,"presigned_url":5}"#,
        ] {
            assert!(
                matches!(
                    parse_elf_upload_reply(bad, 9),
                    Err(ElfUploadReplyError::NoUrl { .. })
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// The smallest ELF `object` reads: a header and nothing else.
    fn bare_elf(class: u8) -> Vec<u8> {
        let mut elf = vec![0x7f, b'E', b'L', b'F', class, 1, 1, 0];
        elf.resize(16, 0);
        if class == 1 {
            elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: EXEC
            elf.extend_from_slice(&40u16.to_le_bytes()); // e_machine: ARM
            elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
            elf.extend_from_slice(&[0; 12]); // entry, phoff, shoff
            elf.extend_from_slice(&0u32.to_le_bytes()); // flags
            elf.extend_from_slice(&52u16.to_le_bytes()); // ehsize
            elf.extend_from_slice(&[32, 0, 0, 0, 40, 0, 0, 0, 0, 0]); // ph/sh sizes and counts
        } else {
            elf.extend_from_slice(&2u16.to_le_bytes());
            elf.extend_from_slice(&62u16.to_le_bytes()); // x86-64
            elf.extend_from_slice(&1u32.to_le_bytes());
            elf.extend_from_slice(&[0; 24]);
            elf.extend_from_slice(&0u32.to_le_bytes());
            elf.extend_from_slice(&64u16.to_le_bytes());
            elf.extend_from_slice(&[56, 0, 0, 0, 64, 0, 0, 0, 0, 0]);
        }
        elf
    }

    #[test]
    fn magic_and_class_are_checked_before_parsing() {
        assert_eq!(inspect_elf(b""), Err(ElfCheckError::Empty));
        assert_eq!(
            inspect_elf(b":020000040800F2\n"),
            Err(ElfCheckError::BadMagic {
                found: "3a 30 32 30".into()
            })
        );
        assert_eq!(
            inspect_elf(b"\x7fELF"),
            Err(ElfCheckError::Malformed(
                "the file ends inside the ELF identification".into()
            ))
        );
        assert_eq!(inspect_elf(b"\x7fELF\x03"), Err(ElfCheckError::BadClass(3)));
        assert!(matches!(
            inspect_elf(b"\x7fELF\x01\x01\x01"),
            Err(ElfCheckError::Malformed(_))
        ));
        let elf32 = inspect_elf(&bare_elf(1)).unwrap();
        assert_eq!(elf32.class, ElfClass::Elf32);
        assert_eq!(elf32.machine, "Arm");
        assert_eq!(elf32.kind, ElfKind::Executable);
        assert!(elf32.little_endian && !elf32.has_debug_modules);
        assert_eq!(inspect_elf(&bare_elf(2)).unwrap().class, ElfClass::Elf64);
    }

    #[test]
    fn contains_finds_the_version_string() {
        assert!(elf_contains(b"\0\0v1.2.3\0", "v1.2.3"));
        assert!(!elf_contains(b"\0\0v1.2.\0", "v1.2.3"));
        assert!(!elf_contains(b"abc", ""));
        assert!(elf_contains(b"v", "v"));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn requests_round_trip(
                upload_id in any::<u64>(),
                customer_id in any::<u32>(),
                application_id in any::<u32>(),
                device_type in "[A-Za-z0-9]([A-Za-z0-9_ .:-]{0,20}[A-Za-z0-9])?",
                version in any::<String>(),
                git_hash in any::<String>(),
                branch in any::<String>(),
            ) {
                let request = ElfUploadRequest { upload_id, customer_id, application_id, device_type, version, git_hash, branch };
                prop_assert_eq!(ElfUploadRequest::parse(&request.payload()), Ok(request));
            }

            #[test]
            fn replies_round_trip(upload_id in any::<u64>(), other in any::<u64>(), path in "[a-z0-9/?=&.-]{0,40}") {
                let url = format!("https://127.0.0.1:8443/{path}");
                let reply = elf_upload_reply_payload(upload_id, &url);
                prop_assert_eq!(parse_elf_upload_reply(&reply, upload_id), Ok(Some(url)));
                if other != upload_id {
                    prop_assert_eq!(parse_elf_upload_reply(&reply, other), Ok(None));
                }
            }

            #[test]
            fn any_bytes_are_an_answer_or_not_never_a_panic(payload in proptest::collection::vec(any::<u8>(), 0..200), id in any::<u64>()) {
                let _ = parse_elf_upload_reply(&payload, id);
                let _ = ElfUploadRequest::parse(&payload);
            }

            #[test]
            fn any_bytes_after_the_magic_are_inspected_without_a_panic(
                class in 0u8..4,
                rest in proptest::collection::vec(any::<u8>(), 0..400),
            ) {
                let mut data = b"\x7fELF".to_vec();
                data.push(class);
                data.extend(rest);
                let _ = inspect_elf(&data);
            }

            #[test]
            fn a_damaged_header_is_an_error_never_a_panic(
                class in 1u8..3,
                at in 5usize..64,
                byte in any::<u8>(),
            ) {
                let mut elf = bare_elf(class);
                if let Some(b) = elf.get_mut(at) {
                    *b = byte;
                }
                let _ = inspect_elf(&elf);
            }
        }
    }
}
