//! `ulogger make-log`: write valid binary logs (any header version, any
//! data size, deterministic data from a seed) and, optionally, the BLE
//! config-characteristic dump of a matching device: something to upload
//! before a real device is at hand.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::exit::{Exit, Failure};
use crate::samples::{sample_log, SampleDevice};
use crate::Global;

/// Arguments of `ulogger make-log`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Header version of the logs (0-4).
    #[arg(long, default_value_t = 4, value_name = "VERSION",
          value_parser = clap::value_parser!(u8).range(0..=4))]
    header_version: u8,
    /// Log data bytes after the header (0-65535).
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    size: u16,
    /// Seed of the pseudo-random data: the same seed gives the same logs.
    #[arg(long, default_value_t = 0, value_name = "N")]
    seed: u64,
    /// How many logs to write (each with different data), at most a
    /// million.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    count: u32,
    /// Where to write: a file for one log, or a directory (created if
    /// needed) that gets `log-00000.bin`, `log-00001.bin`, ... An existing
    /// directory, or a path ending in `/`, is always a directory.
    /// [default: log.bin for one log, the current directory for more]
    #[arg(short, long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Also write a matching dump of the device's BLE config characteristic
    /// (for `ulogger upload --device-info FILE`).
    #[arg(long, value_name = "FILE")]
    device_info: Option<PathBuf>,
    #[command(flatten)]
    device: SampleDevice,
}

/// What was written (also the JSON shape, one per file).
#[derive(Debug, Serialize)]
struct Written {
    file: PathBuf,
    kind: &'static str,
    size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    header_version: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    used_bytes: Option<u16>,
}

pub fn run(global: Global, args: Args) -> Result<(), Exit> {
    let files = log_paths(args.out.as_deref(), args.count)?;
    let mut written = Vec::new();
    for (index, path) in (0u32..).zip(&files) {
        let log = sample_log(args.header_version, args.size, args.seed, index)?;
        std::fs::write(path, &log).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(Written {
            file: path.clone(),
            kind: "log",
            size: log.len(),
            header_version: Some(args.header_version),
            used_bytes: Some(args.size),
        });
    }
    if let Some(path) = &args.device_info {
        let bytes = args.device.info().encode();
        std::fs::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(Written {
            file: path.clone(),
            kind: "device-info",
            size: bytes.len(),
            header_version: None,
            used_bytes: None,
        });
    }
    for w in &written {
        if global.json {
            outln!("{}", serde_json::to_string(w).map_err(anyhow::Error::from)?);
        } else if let (Some(version), Some(used)) = (w.header_version, w.used_bytes) {
            outln!(
                "{}: log, header version {version}, {used} data bytes, {} bytes",
                w.file.display(),
                w.size
            );
        } else {
            outln!("{}: device info, {} bytes", w.file.display(), w.size);
        }
    }
    Ok(())
}

/// The files to write: `out` itself for one log unless it is a directory,
/// else numbered names in the directory `out` (created).
fn log_paths(out: Option<&Path>, count: u32) -> Result<Vec<PathBuf>, Exit> {
    let is_dir = |p: &Path| p.is_dir() || p.as_os_str().to_string_lossy().ends_with('/');
    let dir = match out {
        Some(path) if count == 1 && !is_dir(path) => return Ok(vec![path.to_path_buf()]),
        None if count == 1 => return Ok(vec![PathBuf::from("log.bin")]),
        Some(path) => path.to_path_buf(),
        None => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))
        .map_err(|e| Exit::new(Failure::BadInput, e))?;
    Ok((0..count)
        .map(|i| dir.join(format!("log-{i:05}.bin")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ulogger_cloud::wire::validate_checksum;

    #[test]
    fn every_version_and_extreme_sizes_validate() {
        for version in 0..=4 {
            for size in [0, 1, 7, 65_535] {
                let log = sample_log(version, size, 3, 1).unwrap();
                let header = validate_checksum(&log).unwrap();
                assert_eq!(header.version, version);
                assert_eq!(header.used_bytes, size);
            }
        }
    }

    #[test]
    fn the_seed_and_index_decide_the_data() {
        assert_eq!(
            sample_log(4, 100, 1, 0).unwrap(),
            sample_log(4, 100, 1, 0).unwrap()
        );
        assert_ne!(
            sample_log(4, 100, 1, 0).unwrap(),
            sample_log(4, 100, 2, 0).unwrap()
        );
        assert_ne!(
            sample_log(4, 100, 1, 0).unwrap(),
            sample_log(4, 100, 1, 1).unwrap()
        );
    }
}
