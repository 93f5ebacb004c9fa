//! Stopping long-running commands (`emulator`, `agent`) cleanly.

use anyhow::Context;

use crate::exit::Exit;

/// Ctrl-C (SIGINT) or, on Unix, SIGTERM (what service managers and
/// `kill` send), listened for from creation on.
pub struct StopSignal {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignal {
    /// Starts listening; must run inside a Tokio runtime.
    pub fn listen() -> Result<StopSignal, Exit> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(StopSignal {
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?,
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignal {})
    }

    pub async fn wait(mut self) -> Result<(), Exit> {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")?;
        Ok(())
    }
}
