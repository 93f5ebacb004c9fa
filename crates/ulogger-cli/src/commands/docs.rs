//! `ulogger completions` and `ulogger man`: shell completions and manual
//! pages generated from the same definitions as `--help`, so they never
//! drift from the binary. The pages add ENVIRONMENT (from the flags' `env`
//! attributes and `environment::READ_DIRECTLY`), FILES and EXIT STATUS
//! (from `exit::statuses`) to what clap_mangen renders.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use roff::{bold, italic, roman, Roff};

use crate::environment;
use crate::exit::{self, Exit};
use crate::Cli;

/// Arguments of `ulogger completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for, e.g. `ulogger completions bash > /etc/bash_completion.d/ulogger`.
    #[arg(value_enum)]
    shell: Shell,
}

/// Arguments of `ulogger man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write one page per command (`ulogger.1`, `ulogger-upload.1`, ...)
    /// into this directory (created) instead of the main page to stdout.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Prints the completion script for `args.shell`.
pub fn completions(args: CompletionsArgs) -> Result<(), Exit> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "ulogger", &mut out);
    write_stdout(&out)
}

/// Prints the manual page, or writes all of them under `--out`.
pub fn man(args: ManArgs) -> Result<(), Exit> {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    match args.out {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            write_pages(&command, "", &dir)
                .with_context(|| format!("cannot write the pages into {}", dir.display()))?;
            Ok(())
        }
        None => {
            let page = page(&command, "").context("cannot render the manual page")?;
            write_stdout(&page)
        }
    }
}

/// Writes the page of `command` and of each visible subcommand into `dir`,
/// one file each (`ulogger-outbox-status.1`), as `clap_mangen::generate_to`
/// would, with this program's own sections added.
fn write_pages(command: &clap::Command, path: &str, dir: &Path) -> std::io::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_path = if path.is_empty() {
            sub.get_name().to_owned()
        } else {
            format!("{path} {}", sub.get_name())
        };
        write_pages(sub, &sub_path, dir)?;
    }
    let name = clap_mangen::Man::new(command.clone()).get_filename();
    std::fs::write(dir.join(name), page(command, path)?)
}

/// The manual page of `command` (at `path` below `ulogger`): clap_mangen's
/// sections, then ENVIRONMENT, FILES and EXIT STATUS, then the version.
fn page(command: &clap::Command, path: &str) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(command.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if command.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if command.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    if command.get_after_long_help().is_some() || command.get_after_help().is_some() {
        man.render_extra_section(&mut out)?;
    }
    let mut roff = Roff::new();
    environment_section(&mut roff, command, path);
    files_section(&mut roff, command);
    exit_status_section(&mut roff);
    roff.to_writer(&mut out)?;
    if command.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    Ok(out)
}

/// Every variable the command (and its subcommands) reads: the flag it
/// stands for, from clap's `env` attributes, and those read directly.
fn environment_section(roff: &mut Roff, command: &clap::Command, path: &str) {
    let variables = environment::variables(command, path);
    if variables.is_empty() {
        return;
    }
    roff.control("SH", ["ENVIRONMENT"]);
    roff.text([roman(
        "A flag given on the command line outranks its variable, which outranks the config file. Yes/no variables take 1, true, yes, on or 0, false, no, off.",
    )]);
    for variable in variables.values() {
        roff.control("TP", []);
        roff.text([bold(&variable.name)]);
        let mut line = Vec::new();
        if !variable.flags.is_empty() {
            let flags: Vec<&str> = variable.flags.iter().map(String::as_str).collect();
            line.push(roman("As "));
            line.push(bold(flags.join(", ")));
            // Which commands read it, when that is not plain from the page.
            let others: Vec<&str> = variable
                .commands
                .iter()
                .map(String::as_str)
                .filter(|c| *c != path)
                .collect();
            if !others.is_empty() && others.len() <= 4 {
                line.push(roman(format!(" ({})", others.join(", "))));
            }
            line.push(roman(". "));
        }
        line.push(roman(&variable.meaning));
        roff.text(line);
    }
}

/// A file or folder the manual pages describe, on the pages of the
/// commands that take `arg`.
struct FileEntry {
    /// The id of the argument that names or moves it.
    arg: &'static str,
    /// Only on the pages of these commands (and the main page): `None`
    /// for any command taking `arg`.
    only_under: Option<&'static str>,
    place: &'static str,
    meaning: &'static str,
}

const FILES: &[FileEntry] = &[
    FileEntry {
        arg: "config",
        only_under: None,
        place: "~/.ulogger/config.toml",
        meaning: "The config file, read when it exists and neither --config nor ULOGGER_CONFIG names another ($ULOGGER_HOME/config.toml when ULOGGER_HOME is set). TOML with one key per setting, the flag's name with _ for - (customer_id = 42, token_timeout = \"15s\"). An unknown key is an error naming the file, the line and the nearest valid key.",
    },
    FileEntry {
        arg: "store",
        only_under: None,
        place: "~/.ulogger/session_tokens.json",
        meaning: "The session-token store: each device's token from its last registration, so that it registers once ($ULOGGER_HOME/session_tokens.json; another with --store, ULOGGER_STORE or store in the config file). ulogger tokens lists, reads and clears it.",
    },
    FileEntry {
        arg: "outbox",
        only_under: None,
        place: "OUTBOX/",
        meaning: "A durable outbox (--outbox): LOCK (held by the process that owns it, with its pid), status.json (its counters and last delivery failure, rewritten about once a second), seg-N.log (records, appended and synced in batches), seg-N.acks (what became of each: delivered, dead, evicted), corrupt/ (bytes that failed their checksum, set aside), upload-manifest.jsonl (upload --outbox: which file became which record), and for the BLE gateway ble-seen/, ble-config/ and ble-rejected/. ulogger outbox status reads it while another process owns it.",
    },
    FileEntry {
        arg: "inbox",
        only_under: None,
        place: "INBOX/DEVICE/",
        meaning: "The agent's inbox: one folder per device, with device.toml (app_id, serial, device_type, git_version, git_hash) or device-info.bin, and the logs (*.bin) and core dumps (*.core) to send, written under another name and renamed into place. A file leaves once it is durable in the outbox; an invalid one moves to the rejected folder (--rejected, default rejected/ beside the inbox) with a .reason file.",
    },
    FileEntry {
        arg: "data",
        only_under: Some("emulator"),
        place: "ulogger-emulator-data/",
        meaning: "The emulator's data directory (--data): index.jsonl and records.db (what it stored), the payloads, certs/ and api_token (kept for the next run), and, rewritten at each start, client.toml, sample-log.bin and device-info.bin for the commands it prints.",
    },
];

/// The files the command (and its subcommands) reads or writes.
fn files_section(roff: &mut Roff, command: &clap::Command) {
    let root = command.get_name() == "ulogger";
    let entries: Vec<&FileEntry> = FILES
        .iter()
        .filter(|entry| takes(command, entry, root))
        .collect();
    if entries.is_empty() {
        return;
    }
    roff.control("SH", ["FILES"]);
    for entry in entries {
        roff.control("TP", []);
        roff.text([italic(entry.place)]);
        roff.text([roman(entry.meaning)]);
    }
}

/// True when `command` or one of its visible subcommands takes
/// `entry.arg` (on the main page, or under `entry.only_under`).
fn takes(command: &clap::Command, entry: &FileEntry, within: bool) -> bool {
    let within = within || entry.only_under.is_none_or(|c| command.get_name() == c);
    (within
        && command
            .get_arguments()
            .any(|a| a.get_id() == entry.arg && !a.is_hide_set()))
        || command
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .any(|s| takes(s, entry, within))
}

/// The exit codes `ulogger` ends with, from `exit.rs`.
fn exit_status_section(roff: &mut Roff) {
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in exit::statuses() {
        roff.control("TP", []);
        roff.text([bold(code.to_string())]);
        roff.text([roman(meaning)]);
    }
    roff.control("PP", []);
    roff.text([roman(
        "With --json a failure is also one JSON object on standard error: {\"error\": {\"kind\", \"message\", \"hint\", \"exit_code\"}}.",
    )]);
}

fn write_stdout(bytes: &[u8]) -> Result<(), Exit> {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        crate::stdout::gone(&error);
    }
    Ok(())
}
