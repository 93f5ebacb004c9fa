//! `ulogger inspect`: decode binary log files and check them as the cloud
//! would before an upload (header, data length, checksum, message size).
//!
//! Every file gets a report; the command exits 2 when any file is invalid
//! or unreadable.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use serde::Serialize;
use ulogger_cloud::wire::{self, LogHeader};

use crate::dump_report::utc_from_unix_micros;
use crate::exit::{Exit, Failure};
use crate::Global;

/// Arguments of `ulogger inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Binary log files (the whole buffer a device produced).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

pub fn run(global: Global, args: Args) -> Result<(), Exit> {
    crate::files::refuse_folders("inspect", &args.files)?;
    let reports: Vec<Report> = args.files.iter().map(|f| inspect(f)).collect();
    if global.json {
        let text = serde_json::to_string_pretty(&reports).map_err(anyhow::Error::from)?;
        outln!("{text}");
    } else {
        for (i, report) in reports.iter().enumerate() {
            if i > 0 {
                outln!();
            }
            out!("{}", report.human());
        }
    }
    let invalid = reports.iter().filter(|r| !r.ok).count();
    match invalid {
        0 => Ok(()),
        n => Err(Exit::new(
            Failure::BadInput,
            anyhow!("{n} of {} files invalid", reports.len()),
        )),
    }
}

/// What `inspect` found in one file (also its JSON shape).
#[derive(Debug, Serialize)]
struct Report {
    file: PathBuf,
    ok: bool,
    /// Present whenever the header decoded, even if the log is invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<HeaderReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// A core dump's header (PROTOCOL §10), when the file is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    core_dump: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct HeaderReport {
    version: u8,
    session_token: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence_number: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anchor_tick: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tick_rate_hz: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch_time_us: Option<u64>,
    /// `epoch_time_us` as an RFC 3339 UTC date-time, when non-zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch_time_utc: Option<String>,
    used_bytes: u16,
    checksum: u16,
    header_len: usize,
    /// Bytes after header + data (unused ring-buffer space, not checked).
    unused_bytes: usize,
}

impl HeaderReport {
    fn new(header: &LogHeader, file_len: usize) -> Self {
        HeaderReport {
            version: header.version,
            session_token: header.session_token,
            sequence_number: header.sequence_number,
            anchor_tick: header.anchor_tick,
            tick_rate_hz: header.tick_rate_hz,
            epoch_time_us: header.epoch_time_us,
            epoch_time_utc: header
                .epoch_time_us
                .filter(|&us| us != 0)
                .map(utc_from_unix_micros),
            used_bytes: header.used_bytes,
            checksum: header.checksum,
            header_len: header.header_len(),
            unused_bytes: file_len.saturating_sub(header.log_len()),
        }
    }
}

fn inspect(path: &Path) -> Report {
    let report = |header: Option<HeaderReport>, error: Option<String>| Report {
        file: path.to_path_buf(),
        ok: error.is_none(),
        header,
        error,
        core_dump: None,
    };
    let buf = match read_limited(path) {
        Ok(buf) => buf,
        Err(e) => return report(None, Some(format!("cannot read the file: {e}"))),
    };
    if wire::CoreDumpHeader::looks_like(&buf) {
        let dump = crate::dump_report::core_dump_report(&buf);
        let error = dump
            .get("error")
            .and_then(|e| e.as_str())
            .map(|e| format!("core dump: {e}"));
        let mut r = report(None, error);
        r.core_dump = Some(dump);
        return r;
    }
    let header = LogHeader::parse(&buf)
        .ok()
        .map(|h| HeaderReport::new(&h, buf.len()));
    if buf.len() > wire::MAX_MESSAGE_SIZE {
        let error = format!(
            "the file is more than {} bytes, the broker's message limit: it cannot be uploaded",
            wire::MAX_MESSAGE_SIZE
        );
        return report(header, Some(error));
    }
    match wire::validate_checksum(&buf) {
        Ok(_) => report(header, None),
        Err(e) => report(header, Some(e.to_string())),
    }
}

/// Reads at most one byte more than the largest uploadable buffer, so a
/// huge file is reported without being read whole.
fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let limit = u64::try_from(wire::MAX_MESSAGE_SIZE).unwrap_or(u64::MAX);
    let mut buf = Vec::new();
    File::open(path)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)?;
    Ok(buf)
}

impl Report {
    fn human(&self) -> String {
        let mut out = String::new();
        let status = match &self.error {
            None => "ok".to_string(),
            Some(error) => format!("INVALID: {error}"),
        };
        out.push_str(&format!("{}: {status}\n", self.file.display()));
        if let Some(dump) = &self.core_dump {
            out.push_str(&crate::dump_report::core_dump_text(dump));
        }
        if let Some(h) = &self.header {
            let mut field = |name: &str, value: String| {
                out.push_str(&format!("  {name:<16}{value}\n"));
            };
            field("version", h.version.to_string());
            field(
                "session token",
                format!("{} (0x{:08X})", h.session_token, h.session_token),
            );
            if let Some(n) = h.sequence_number {
                field("sequence number", n.to_string());
            }
            if let Some(t) = h.anchor_tick {
                field("anchor tick", t.to_string());
            }
            if let Some(hz) = h.tick_rate_hz {
                field("tick rate", format!("{hz} Hz"));
            }
            if let Some(us) = h.epoch_time_us {
                let when = match &h.epoch_time_utc {
                    Some(utc) => format!("{us} us ({utc})"),
                    None => "0 (unknown)".to_string(),
                };
                field("epoch time", when);
            }
            field(
                "used bytes",
                format!("{} (header {} bytes)", h.used_bytes, h.header_len),
            );
            field("checksum", format!("0x{:04x}", h.checksum));
            field("unused bytes", h.unused_bytes.to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc_from_unix_micros(1), "1970-01-01T00:00:00.000001Z");
        assert_eq!(
            utc_from_unix_micros(1_700_000_000_123_456),
            "2023-11-14T22:13:20.123456Z"
        );
        // Leap day and the day after.
        assert_eq!(
            utc_from_unix_micros(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            utc_from_unix_micros(951_868_800_000_000),
            "2000-03-01T00:00:00.000000Z"
        );
        assert_eq!(
            utc_from_unix_micros(4_102_444_799_999_999),
            "2099-12-31T23:59:59.999999Z"
        );
        // The largest value does not overflow.
        assert_eq!(
            utc_from_unix_micros(u64::MAX),
            "586524-01-19T08:01:49.551615Z"
        );
    }
}
