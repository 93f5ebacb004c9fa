//! `ulogger tokens` (placeholder until its issue lands).

use crate::exit::Exit;
use crate::Global;

/// Subcommands of `ulogger tokens`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List cached tokens.
    List,
}

pub fn run(_global: Global, _cmd: Command) -> Result<(), Exit> {
    Err(anyhow::anyhow!("not built yet").into())
}
