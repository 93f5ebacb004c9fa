//! `ulogger tokens`: the session-token cache shared with the Python SDK.
//!
//! A missing serial on `get`/`rm`, or a corrupt store file, is bad input
//! (exit 2); `clear` is also the way out of a corrupt file: it moves the
//! file aside and starts empty.

use std::path::PathBuf;

use anyhow::anyhow;
use ulogger_cloud::{SessionStore, TokenEntry};

use crate::connection::{store_failure, FileArgs};
use crate::exit::{Exit, Failure};
use crate::Global;

/// Subcommands of `ulogger tokens`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List cached tokens, least recently used first.
    List(StoreArg),
    /// Print the cached token of one device.
    Get {
        /// The device serial.
        serial: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Remove the cached token of one device (it registers again next time).
    Rm {
        /// The device serial.
        serial: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Remove every cached token (a corrupt store file is moved aside).
    Clear(StoreArg),
}

/// Where the store is: `--store`, `ULOGGER_STORE`, the config file's
/// `store`, or the default, as for every other command.
#[derive(Debug, clap::Args)]
pub struct StoreArg {
    #[command(flatten)]
    files: FileArgs,
}

impl StoreArg {
    fn path(&self) -> Result<PathBuf, Exit> {
        self.files.store_path()
    }

    fn open(&self) -> Result<SessionStore, Exit> {
        SessionStore::open(self.path()?).map_err(store_failure)
    }
}

pub fn run(global: Global, cmd: Command) -> Result<(), Exit> {
    match cmd {
        Command::List(store) => list(global, &store),
        Command::Get { serial, store } => get(global, &serial, &store),
        Command::Rm { serial, store } => rm(global, &serial, &store),
        Command::Clear(store) => clear(global, &store),
    }
}

fn list(global: Global, arg: &StoreArg) -> Result<(), Exit> {
    let store = arg.open()?;
    let entries = store.entries().map_err(store_failure)?;
    if global.json {
        return print_json(&entries);
    }
    if entries.is_empty() {
        outln!("no cached tokens in {}", arg.path()?.display());
        return Ok(());
    }
    out!("{}", table(&entries));
    Ok(())
}

fn get(global: Global, serial: &str, arg: &StoreArg) -> Result<(), Exit> {
    let store = arg.open()?;
    let entry = store
        .get_entry(serial)
        .map_err(store_failure)?
        .ok_or_else(|| not_cached(serial, arg))?;
    if global.json {
        return print_json(&entry);
    }
    out!("{}", table(std::slice::from_ref(&entry)));
    Ok(())
}

fn rm(global: Global, serial: &str, arg: &StoreArg) -> Result<(), Exit> {
    let store = arg.open()?;
    if !store.remove(serial).map_err(store_failure)? {
        return Err(not_cached(serial, arg));
    }
    if global.json {
        return print_json(&serde_json::json!({ "removed": serial }));
    }
    outln!("removed the token of {serial}");
    Ok(())
}

fn clear(global: Global, arg: &StoreArg) -> Result<(), Exit> {
    let path = arg.path()?;
    let (store, moved) = SessionStore::open_or_reset(&path).map_err(store_failure)?;
    let removed = store.len().map_err(store_failure)?;
    // Nothing to write when there is nothing: do not create a store file.
    if removed > 0 {
        store.clear().map_err(store_failure)?;
    }
    if global.json {
        return print_json(&serde_json::json!({
            "removed": removed,
            "moved_aside": moved,
        }));
    }
    if let Some(moved) = &moved {
        outln!(
            "{} was corrupt: moved it to {}",
            path.display(),
            moved.display()
        );
    }
    match removed {
        1 => outln!("removed 1 token from {}", path.display()),
        n => outln!("removed {n} tokens from {}", path.display()),
    }
    Ok(())
}

fn not_cached(serial: &str, arg: &StoreArg) -> Exit {
    let path = arg
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    Exit::new(
        Failure::BadInput,
        anyhow!("no token cached for serial {serial:?} in {path}"),
    )
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Exit> {
    let text = serde_json::to_string_pretty(value).map_err(anyhow::Error::from)?;
    outln!("{text}");
    Ok(())
}

/// Serial, token (decimal as in the file, and hex as the Python SDK logs
/// it) and git hash, in aligned columns.
fn table(entries: &[TokenEntry]) -> String {
    let rows: Vec<[String; 4]> = entries
        .iter()
        .map(|e| {
            [
                e.serial.clone(),
                e.token.to_string(),
                format!("0x{:08X}", e.token),
                e.git_hash.clone(),
            ]
        })
        .collect();
    let header = ["SERIAL", "TOKEN", "HEX", "GIT HASH"].map(String::from);
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
