//! `ulogger completions` and `ulogger man`: shell completions and manual
//! pages generated from the same definitions as `--help`, so they never
//! drift from the binary.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::exit::Exit;
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
    let command = Cli::command();
    match args.out {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("cannot write the pages into {}", dir.display()))?;
            Ok(())
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut out)
                .context("cannot render the manual page")?;
            write_stdout(&out)
        }
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), Exit> {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        crate::stdout::gone(&error);
    }
    Ok(())
}
