//! At start, the binary logs an earlier emulator left undecoded, decoded
//! with the ELFs stored now (decision "The emulator's rooms"):
//!
//! - logs without a decoding state: stored by an emulator that did not
//!   decode yet (before decision 41), or whose state was lost. Each gets
//!   its state, and its records when its firmware's ELF is here.
//! - logs waiting for an ELF that is here: its upload was stored, but the
//!   emulator stopped before the logs that waited for it were decoded.
//!
//! A token issued by an emulator that did not keep device types and
//! versions names its firmware through the boot registration it
//! answered, whose request is stored (`boot/`): the token book learns it,
//! so such a device's logs are decoded too, old and new.
//!
//! This runs once per start, before the broker accepts, so that when
//! `Emulator::start` returns the data API and `ulogger emulator records`
//! see every log with its state. Once a log has a state it is not looked
//! at again: a start finds nothing left to do with one indexed query.

use std::time::{Duration, UNIX_EPOCH};

use ulogger_wire::{validate_checksum, MAX_MESSAGE_SIZE};

use super::boot::parse_request;
use super::decoding::{read_limited, received_seconds};
use super::tokens::DeviceIdentity;
use super::{rows, Cloud};
use crate::store::{BinaryLogRow, UnregisteredLog, WAITING_STATES};

/// What the start's pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backlog {
    /// Logs that had no decoding state and have one now.
    pub(crate) registered: usize,
    /// Logs decoded (of those, and of those that waited for an ELF).
    pub(crate) decoded: usize,
}

impl Cloud {
    /// Gives every log left without a decoding state its state, and
    /// decodes what can be decoded with the ELFs stored now.
    pub(crate) fn decode_backlog(&self) -> Result<Backlog, String> {
        let database = self.records.database();
        self.complete_identities()?;
        let mut backlog = Backlog::default();
        for log in database.unregistered_logs().map_err(|e| e.to_string())? {
            match self.register(&log)? {
                Registered::Decoded => {
                    backlog.registered += 1;
                    backlog.decoded += 1;
                }
                Registered::Waiting => backlog.registered += 1,
                Registered::Skipped => {}
            }
        }
        let waiting = database.waiting_firmwares().map_err(|e| e.to_string())?;
        for (app_id, device_type, version) in waiting {
            let customer = self.topics.customer_id();
            if let Some(elf) = self.elfs.find(customer, app_id, &device_type, &version) {
                backlog.decoded += self.decode_firmware_logs(&elf, &WAITING_STATES)?;
            }
        }
        if backlog != Backlog::default() {
            tracing::info!(
                registered = backlog.registered,
                decoded = backlog.decoded,
                "decoded the logs an earlier run left undecoded"
            );
        }
        Ok(backlog)
    }

    /// Teaches the token book the firmware of tokens issued without it,
    /// from the boot requests they answered.
    fn complete_identities(&self) -> Result<(), String> {
        if !self.tokens.lacks_identities() {
            return Ok(());
        }
        let boots = self
            .records
            .database()
            .boot_registrations()
            .map_err(|e| e.to_string())?;
        for (app_id, token, file) in boots {
            let path = self.decoding.data_dir().join(&file);
            let request = read_limited(&path, MAX_MESSAGE_SIZE as u64)
                .ok()
                .and_then(|payload| parse_request(&payload).ok());
            match request {
                Some((request, _)) => {
                    self.tokens.complete(app_id, token, &request);
                }
                None => {
                    tracing::debug!(path = %path.display(), "a boot request that does not read");
                }
            }
        }
        Ok(())
    }

    /// Gives one log without a state its state, decoding it if its ELF is
    /// here.
    fn register(&self, log: &UnregisteredLog) -> Result<Registered, String> {
        let path = self.decoding.data_dir().join(&log.file);
        let payload = match read_limited(&path, MAX_MESSAGE_SIZE as u64) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read a stored log to decode it");
                return Ok(Registered::Skipped);
            }
        };
        let header = match validate_checksum(&payload) {
            Ok(header) => header,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "a stored log no longer verifies");
                return Ok(Registered::Skipped);
            }
        };
        let identity = self
            .tokens
            .identity_for(log.app_id, header.session_token)
            .unwrap_or_else(|| DeviceIdentity {
                serial: log.serial.clone().unwrap_or_default(),
                git_hash: String::new(),
                device_type: None,
                version: None,
            });
        let time = UNIX_EPOCH + Duration::from_micros(u64::try_from(log.time_us).unwrap_or(0));
        let received = received_seconds(time);
        let outcome = self
            .decoding
            .decode(&payload, &identity, log.app_id, &log.file, received);
        let rows = rows::binary_log(
            &header,
            log.app_id,
            &identity,
            payload.len(),
            time,
            outcome.decoding,
        );
        let Some(header_entry) = rows.logs.first() else {
            return Ok(Registered::Skipped);
        };
        let state = BinaryLogRow {
            app_id: log.app_id,
            serial: identity.serial,
            device_type: identity.device_type,
            version: identity.version,
            git_hash: identity.git_hash,
            file: log.file.clone(),
            received,
            state: outcome.state,
        };
        let registered = self
            .records
            .database()
            .register(log, header_entry, &state, &outcome.records)
            .map_err(|e| e.to_string())?;
        Ok(match (registered, outcome.state) {
            (false, _) => Registered::Skipped,
            (true, "decoded") => Registered::Decoded,
            (true, _) => Registered::Waiting,
        })
    }
}

/// What became of one log without a state.
enum Registered {
    Decoded,
    /// It has a state now, not decoded (no ELF, no identity, ...).
    Waiting,
    /// Left as it was (its payload does not read; logged).
    Skipped,
}
