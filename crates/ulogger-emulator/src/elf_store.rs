//! Firmware ELFs uploaded to the emulator (PROTOCOL §11): the one-time
//! upload URLs handed out, and the ELFs stored under
//! `<data>/elf/{customer}/{app}/{device type}/{version}.elf`, each with a
//! `.json` beside it saying exactly which firmware it is.
//!
//! The latest upload of a firmware (customer, application, device type,
//! version) replaces the earlier one, as the cloud keeps one ELF per
//! version. A kept data directory keeps its ELFs across restarts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use ulogger_wire::ElfUploadRequest;

use crate::durable::{create_dir_all, file_safe, write_atomic_with, Access};
use crate::EmulatorError;

/// The directory of the ELFs under the data directory.
pub(crate) const ELF_DIR: &str = "elf";
/// The path of upload URLs on the HTTP port: `/elf-upload/{secret}`.
pub(crate) const UPLOAD_PATH: &str = "/elf-upload/";
/// How long an upload URL stays valid (the platform's presigned URLs
/// expire too).
const URL_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// The most upload URLs outstanding; beyond it the oldest is dropped.
const MAX_PENDING: usize = 10_000;
/// How many used URLs are remembered, to answer them 410 rather than 404.
const MAX_USED: usize = 10_000;

/// A firmware ELF the emulator stores ([`crate::Emulator::stored_elfs`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoredElf {
    /// The customer it was uploaded for.
    pub customer_id: u32,
    /// The application.
    pub app_id: u32,
    /// The device type.
    pub device_type: String,
    /// The version string (the request's `version_number`): what a
    /// device of this firmware reports, and what logs are matched by.
    pub version: String,
    /// The git hash the request named.
    pub git_hash: String,
    /// The branch the request named ("" when none).
    pub branch: String,
    /// The request's upload id.
    pub upload_id: u64,
    /// The ELF's size in bytes.
    pub size: u64,
    /// When it was stored.
    #[serde(with = "epoch_ms")]
    pub uploaded_at: SystemTime,
    /// The ELF file, relative to the data directory.
    pub file: PathBuf,
}

mod epoch_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        s.serialize_u64(ms)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let ms = u64::deserialize(d)?;
        Ok(UNIX_EPOCH + Duration::from_millis(ms))
    }
}

/// Which firmware an ELF is for: its place in the store.
type Key = (u32, u32, String, String);

/// An upload URL handed out and not used yet.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) customer_id: u32,
    pub(crate) request: ElfUploadRequest,
    expires: Instant,
}

/// Why an upload URL cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UrlRefusal {
    /// Never issued (or forgotten after a restart).
    Unknown,
    /// Used already: a URL takes one upload.
    Used,
    /// Issued too long ago.
    Expired,
}

/// The upload URLs and the stored ELFs.
pub(crate) struct ElfStore {
    data_dir: PathBuf,
    durable: bool,
    /// `scheme://host:port` of the HTTP port the URLs point at.
    base_url: String,
    urls: Mutex<Urls>,
    stored: Mutex<BTreeMap<Key, StoredElf>>,
}

#[derive(Default)]
struct Urls {
    pending: HashMap<String, Pending>,
    /// Secrets in the order they were issued, to drop the oldest.
    order: VecDeque<String>,
    /// URLs that can no longer be used, and why (used, or expired).
    used: HashMap<String, UrlRefusal>,
    used_order: VecDeque<String>,
}

impl Urls {
    /// Remembers that `secret` can no longer be used, and why; the oldest
    /// such memory goes first.
    fn retire(&mut self, secret: &str, why: UrlRefusal) {
        if self.used.len() >= MAX_USED {
            if let Some(oldest) = self.used_order.pop_front() {
                self.used.remove(&oldest);
            }
        }
        self.used.insert(secret.to_owned(), why);
        self.used_order.push_back(secret.to_owned());
    }
}

impl ElfStore {
    /// Opens the store of `data_dir`, reading the ELFs an earlier run
    /// stored (their `.json` descriptions; an ELF without one was never
    /// acknowledged and is ignored).
    pub(crate) fn open(
        data_dir: &Path,
        durable: bool,
        base_url: String,
    ) -> Result<ElfStore, EmulatorError> {
        let mut stored = BTreeMap::new();
        let root = data_dir.join(ELF_DIR);
        if root.is_dir() {
            load(&root, data_dir, &mut stored)?;
        }
        Ok(ElfStore {
            data_dir: data_dir.to_path_buf(),
            durable,
            base_url,
            urls: Mutex::default(),
            stored: Mutex::new(stored),
        })
    }

    fn lock_urls(&self) -> MutexGuard<'_, Urls> {
        // Every update below leaves the maps whole between statements.
        self.urls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_stored(&self) -> MutexGuard<'_, BTreeMap<Key, StoredElf>> {
        self.stored.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Issues a one-time upload URL for `request` of `customer_id`.
    pub(crate) fn issue(&self, customer_id: u32, request: ElfUploadRequest) -> String {
        let secret: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        let mut urls = self.lock_urls();
        let now = Instant::now();
        while urls.pending.len() >= MAX_PENDING {
            let Some(oldest) = urls.order.pop_front() else {
                break;
            };
            urls.pending.remove(&oldest);
        }
        urls.pending.insert(
            secret.clone(),
            Pending {
                customer_id,
                request,
                expires: now + URL_LIFETIME,
            },
        );
        urls.order.push_back(secret.clone());
        format!("{}{UPLOAD_PATH}{secret}", self.base_url)
    }

    /// Takes the upload URL `secret` for a PUT: it is unusable until
    /// [`ElfStore::give_back`] or [`ElfStore::stored`] settles it.
    pub(crate) fn take(&self, secret: &str) -> Result<Pending, UrlRefusal> {
        let mut urls = self.lock_urls();
        if let Some(&refusal) = urls.used.get(secret) {
            return Err(refusal);
        }
        let pending = urls.pending.remove(secret).ok_or(UrlRefusal::Unknown)?;
        if pending.expires <= Instant::now() {
            urls.retire(secret, UrlRefusal::Expired);
            return Err(UrlRefusal::Expired);
        }
        Ok(pending)
    }

    /// Puts back a URL whose PUT failed without using it up.
    pub(crate) fn give_back(&self, secret: &str, pending: Pending) {
        self.lock_urls().pending.insert(secret.to_owned(), pending);
    }

    /// Stores `elf` for the URL's request and uses the URL up. A failure
    /// leaves the URL as it was taken (the caller gives it back).
    pub(crate) fn store(
        &self,
        secret: &str,
        pending: &Pending,
        elf: &[u8],
    ) -> Result<StoredElf, EmulatorError> {
        let request = &pending.request;
        let dir = PathBuf::from(ELF_DIR)
            .join(pending.customer_id.to_string())
            .join(request.application_id.to_string())
            .join(name_for(&request.device_type));
        let stem = name_for(&request.version);
        let file = dir.join(format!("{stem}.elf"));
        let full_dir = self.data_dir.join(&dir);
        create_dir_all(&full_dir, self.durable)
            .map_err(|e| EmulatorError::io("create directory", &full_dir, e))?;
        let full = self.data_dir.join(&file);
        write_atomic_with(&full, elf, Access::Shared, self.durable)
            .map_err(|e| EmulatorError::io("write", &full, e))?;
        let stored = StoredElf {
            customer_id: pending.customer_id,
            app_id: request.application_id,
            device_type: request.device_type.clone(),
            version: request.version.clone(),
            git_hash: request.git_hash.clone(),
            branch: request.branch.clone(),
            upload_id: request.upload_id,
            size: elf.len() as u64,
            // Whole milliseconds, as the description keeps it.
            uploaded_at: whole_ms(SystemTime::now()),
            file,
        };
        // The description last: an ELF without one is not in the store.
        let description = full_dir.join(format!("{stem}.json"));
        let json = serde_json::to_vec_pretty(&stored)
            .map_err(|e| EmulatorError::io("describe", &description, std::io::Error::other(e)))?;
        write_atomic_with(&description, &json, Access::Shared, self.durable)
            .map_err(|e| EmulatorError::io("write", &description, e))?;
        self.lock_stored().insert(key(&stored), stored.clone());
        self.lock_urls().retire(secret, UrlRefusal::Used);
        Ok(stored)
    }

    /// Every stored ELF, by customer, application, device type, version.
    pub(crate) fn list(&self) -> Vec<StoredElf> {
        self.lock_stored().values().cloned().collect()
    }

    /// The ELF stored for one firmware.
    pub(crate) fn find(
        &self,
        customer_id: u32,
        app_id: u32,
        device_type: &str,
        version: &str,
    ) -> Option<StoredElf> {
        self.lock_stored()
            .get(&(
                customer_id,
                app_id,
                device_type.to_owned(),
                version.to_owned(),
            ))
            .cloned()
    }
}

fn whole_ms(time: SystemTime) -> SystemTime {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(since.as_millis()).unwrap_or(0))
}

fn key(elf: &StoredElf) -> Key {
    (
        elf.customer_id,
        elf.app_id,
        elf.device_type.clone(),
        elf.version.clone(),
    )
}

/// A file name for `value`: its safe characters, and a hash of the exact
/// text, so that two values that differ only in unsafe characters never
/// share a file.
fn name_for(value: &str) -> String {
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let safe: String = file_safe(value).chars().take(80).collect();
    format!("{safe}-{:08x}", hash & 0xffff_ffff)
}

/// Reads every `.json` description under `dir`, removing temporary files
/// a crash left.
fn load(
    dir: &Path,
    data_dir: &Path,
    stored: &mut BTreeMap<Key, StoredElf>,
) -> Result<(), EmulatorError> {
    let entries = fs::read_dir(dir).map_err(|e| EmulatorError::io("read directory", dir, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            load(&path, data_dir, stored)?;
        } else if name.starts_with('.') && name.contains(".tmp-") {
            let _ = fs::remove_file(&path);
        } else if name.ends_with(".json") {
            let described = fs::read(&path)
                .ok()
                .and_then(|text| serde_json::from_slice::<StoredElf>(&text).ok())
                .filter(|elf| data_dir.join(&elf.file).is_file());
            match described {
                Some(elf) => {
                    stored.insert(key(&elf), elf);
                }
                None => tracing::warn!(
                    path = %path.display(),
                    "ignoring an ELF description that does not read or whose ELF is gone"
                ),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: &str) -> ElfUploadRequest {
        ElfUploadRequest {
            upload_id: 5,
            customer_id: 42,
            application_id: 7,
            device_type: "nRF52 DK".into(),
            version: version.into(),
            git_hash: "abcdef0".into(),
            branch: "main".into(),
        }
    }

    #[test]
    fn a_url_takes_one_upload_and_the_elf_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = ElfStore::open(dir.path(), true, "http://127.0.0.1:1".into()).unwrap();
        let url = store.issue(42, request("v1.0/rc 1"));
        let secret = url.rsplit('/').next().unwrap().to_owned();
        assert!(url.starts_with("http://127.0.0.1:1/elf-upload/"));
        assert_eq!(store.take("nope").err(), Some(UrlRefusal::Unknown));
        let pending = store.take(&secret).unwrap();
        // Taken: a second PUT at the same time finds nothing.
        assert_eq!(store.take(&secret).err(), Some(UrlRefusal::Unknown));
        store.give_back(&secret, pending);
        let pending = store.take(&secret).unwrap();
        let stored = store.store(&secret, &pending, b"\x7fELF...").unwrap();
        assert_eq!(store.take(&secret).err(), Some(UrlRefusal::Used));
        assert_eq!(
            fs::read(dir.path().join(&stored.file)).unwrap(),
            b"\x7fELF..."
        );

        let again = ElfStore::open(dir.path(), true, "http://x".into()).unwrap();
        assert_eq!(again.list(), vec![stored.clone()]);
        assert_eq!(
            again.find(42, 7, "nRF52 DK", "v1.0/rc 1"),
            Some(stored.clone())
        );
        assert_eq!(again.find(42, 7, "nRF52 DK", "v1.0_rc_1"), None);
    }

    #[test]
    fn versions_that_differ_only_in_unsafe_characters_keep_their_own_files() {
        assert_ne!(name_for("v1/0"), name_for("v1_0"));
        assert_eq!(name_for("v1/0"), name_for("v1/0"));
        let long = "x".repeat(500);
        assert!(name_for(&long).len() < 100);
    }
}
