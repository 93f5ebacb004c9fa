//! The session tokens the cloud has issued. With a kept data directory
//! they are also appended to `<data>/tokens.jsonl` (synced before the boot
//! reply goes out) and loaded on the next start, so a gateway's cached
//! tokens stay valid across restarts, as they do with the real cloud.
//! Without one they live and die with the emulator.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use ulogger_wire::BootRequest;

use crate::durable::repair_jsonl;
use crate::EmulatorError;

/// The file name of the issued tokens under the data directory.
const TOKENS_FILE: &str = "tokens.jsonl";

/// One issued token, as one line of the tokens file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Issued {
    app_id: u32,
    serial: String,
    token: u32,
    git_hash: String,
    /// The device type and version string the registration named: which
    /// firmware ELF decodes the logs sent under this token. Absent from
    /// the lines of emulators before the decoding (read as `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
}

/// What a device said of itself when it registered for a session token
/// (PROTOCOL §3): the firmware its logs under that token come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceIdentity {
    pub(crate) serial: String,
    pub(crate) git_hash: String,
    /// `None` for a token issued by an emulator that did not keep them.
    pub(crate) device_type: Option<String>,
    pub(crate) version: Option<String>,
}

/// Issued tokens in issue order, indexed by (application id, token): a
/// registration and a log check cost the same at any fleet size.
#[derive(Debug, Default)]
struct Issues {
    list: Vec<Issued>,
    /// The latest entry of each (app_id, token).
    by_token: HashMap<(u32, u32), usize>,
}

impl Issues {
    fn push(&mut self, entry: Issued) {
        self.by_token
            .insert((entry.app_id, entry.token), self.list.len());
        self.list.push(entry);
    }
}

/// The tokens the cloud has issued.
#[derive(Debug)]
pub(crate) struct TokenBook {
    issued: Mutex<Issues>,
    /// Appended to on every issue, when tokens outlive the emulator.
    file: Option<Mutex<(PathBuf, File)>>,
}

impl TokenBook {
    /// A book that forgets everything when the emulator stops.
    pub(crate) fn in_memory() -> TokenBook {
        TokenBook {
            issued: Mutex::new(Issues::default()),
            file: None,
        }
    }

    /// A book kept in `<data_dir>/tokens.jsonl`, with the tokens of
    /// earlier runs.
    pub(crate) fn open(data_dir: &Path) -> Result<TokenBook, EmulatorError> {
        let path = data_dir.join(TOKENS_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| EmulatorError::io("open", &path, e))?;
        let text = repair_jsonl(&mut file).map_err(|e| EmulatorError::io("read", &path, e))?;
        let issued = text
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.is_empty())
            .map(|(n, line)| {
                serde_json::from_slice(line).map_err(|e| EmulatorError::BadIndexLine {
                    path: path.clone(),
                    line: n + 1,
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<Issued>, _>>()?;
        let mut book = Issues::default();
        for entry in issued {
            book.push(entry);
        }
        Ok(TokenBook {
            issued: Mutex::new(book),
            file: Some(Mutex::new((path, file))),
        })
    }

    /// Every token issued so far: (application id, serial, token).
    pub(crate) fn snapshot(&self) -> Vec<(u32, String, u32)> {
        self.lock()
            .list
            .iter()
            .map(|i| (i.app_id, i.serial.clone(), i.token))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Issues> {
        self.issued.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Issues a fresh random token for the device `request` describes
    /// (its serial, device type, version and git hash) in `app_id`,
    /// distinct from every token already issued for that application,
    /// and keeps it (durably, when kept in a file) before returning it.
    pub(crate) fn issue(&self, app_id: u32, request: &BootRequest) -> u32 {
        let mut issued = self.lock();
        let token = loop {
            let candidate: u32 = rand::random();
            if !issued.by_token.contains_key(&(app_id, candidate)) {
                break candidate;
            }
        };
        let entry = Issued {
            app_id,
            serial: request.serial.clone(),
            token,
            git_hash: request.git.clone(),
            device_type: Some(request.device_type.clone()),
            version: Some(request.version.clone()),
        };
        if let Some(file) = &self.file {
            let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
            let (path, file) = &mut *file;
            if let Err(e) = append_line(file, &entry) {
                tracing::error!(path = %path.display(), error = %e, "cannot keep an issued token; it will be forgotten on restart");
            }
        }
        issued.push(entry);
        token
    }

    /// The device `token` was issued to for `app_id`, as it registered.
    pub(crate) fn identity_for(&self, app_id: u32, token: u32) -> Option<DeviceIdentity> {
        let issued = self.lock();
        let at = *issued.by_token.get(&(app_id, token))?;
        issued.list.get(at).map(|i| DeviceIdentity {
            serial: i.serial.clone(),
            git_hash: i.git_hash.clone(),
            device_type: i.device_type.clone(),
            version: i.version.clone(),
        })
    }
}

impl TokenBook {
    /// Whether some token's registration is missing its device type or
    /// version (issued by an emulator that did not keep them).
    pub(crate) fn lacks_identities(&self) -> bool {
        self.lock()
            .list
            .iter()
            .any(|i| i.device_type.is_none() || i.version.is_none())
    }

    /// Fills in the firmware of a token issued without it, from the boot
    /// request it answered; in memory only (the file keeps what was
    /// issued). True if that token was missing it.
    pub(crate) fn complete(&self, app_id: u32, token: u32, request: &BootRequest) -> bool {
        let mut issued = self.lock();
        let Some(&at) = issued.by_token.get(&(app_id, token)) else {
            return false;
        };
        let Some(entry) = issued.list.get_mut(at) else {
            return false;
        };
        if entry.device_type.is_some() && entry.version.is_some() || entry.serial != request.serial
        {
            return false;
        }
        entry.device_type = Some(request.device_type.clone());
        entry.version = Some(request.version.clone());
        true
    }
}

fn append_line(file: &mut File, entry: &Issued) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(entry)?;
    line.push(b'\n');
    file.write_all(&line)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(serial: &str, git: &str) -> BootRequest {
        BootRequest {
            device_type: "board".into(),
            git: git.into(),
            serial: serial.into(),
            version: "v1".into(),
        }
    }

    impl TokenBook {
        fn serial_for(&self, app_id: u32, token: u32) -> Option<String> {
            self.identity_for(app_id, token).map(|d| d.serial)
        }
    }

    #[test]
    fn tokens_kept_in_a_file_are_known_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let book = TokenBook::open(dir.path()).unwrap();
        let a = book.issue(7, &boot("SN-1", "abc"));
        let b = book.issue(7, &boot("SN-2", "def"));
        drop(book);
        // A crash while appending a third leaves a cut line: it is dropped.
        let path = dir.path().join(TOKENS_FILE);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"app_id":7,"ser"#).unwrap();
        drop(file);

        let book = TokenBook::open(dir.path()).unwrap();
        assert_eq!(book.serial_for(7, a).as_deref(), Some("SN-1"));
        assert_eq!(book.serial_for(7, b).as_deref(), Some("SN-2"));
        assert_eq!(book.serial_for(8, a), None);
        let c = book.issue(7, &boot("SN-3", "abc"));
        assert!(c != a && c != b);
        let again = TokenBook::open(dir.path()).unwrap();
        assert_eq!(again.snapshot().len(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""git_hash":"def""#), "{text}");
        let device = again.identity_for(7, b).unwrap();
        assert_eq!(device.device_type.as_deref(), Some("board"));
        assert_eq!(device.version.as_deref(), Some("v1"));
    }

    #[test]
    fn a_line_of_an_earlier_emulator_names_no_firmware() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(TOKENS_FILE),
            "{\"app_id\":1,\"serial\":\"A\",\"token\":5,\"git_hash\":\"g\"}\n",
        )
        .unwrap();
        let book = TokenBook::open(dir.path()).unwrap();
        let device = book.identity_for(1, 5).unwrap();
        assert_eq!(
            (device.serial.as_str(), device.git_hash.as_str()),
            ("A", "g")
        );
        assert_eq!((device.device_type, device.version), (None, None));
    }

    #[test]
    fn a_corrupt_tokens_file_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKENS_FILE), "{\"app_id\":1}\nnot json\n").unwrap();
        let err = TokenBook::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, EmulatorError::BadIndexLine { line: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn an_in_memory_book_starts_empty_and_issues_distinct_tokens() {
        let book = TokenBook::in_memory();
        let a = book.issue(1, &boot("A", "g"));
        let b = book.issue(1, &boot("B", "g"));
        assert_ne!(a, b);
        assert_eq!(book.snapshot().len(), 2);
    }
}
