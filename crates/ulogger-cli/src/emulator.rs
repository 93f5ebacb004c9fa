//! `ulogger emulator` (placeholder until its issue lands).

use crate::exit::Exit;
use crate::Global;

/// Arguments of `ulogger emulator`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_global: Global, _args: Args) -> Result<(), Exit> {
    Err(anyhow::anyhow!("not built yet").into())
}
