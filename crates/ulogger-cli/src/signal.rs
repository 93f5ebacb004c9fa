//! Stopping long-running commands (`emulator`, `agent`, `config watch`,
//! `logs`, `emulator records --follow`) cleanly.
//!
//! Either signal stops the work the same way; the exit status tells them
//! apart, as shells and service managers expect: Ctrl-C (SIGINT) is an
//! interruption, 130 (128 + 2) once the command has stopped cleanly;
//! SIGTERM (what `kill` and service managers send to stop a service) is
//! the ordinary end of a service, 0.

use anyhow::Context;

use crate::exit::{Exit, Failure};

/// Ctrl-C (SIGINT) or, on Unix, SIGTERM (what service managers and
/// `kill` send), listened for from creation on.
pub struct StopSignal {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

/// Which signal stopped a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Ctrl-C (SIGINT).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Stop {
    /// How the command ends once it has stopped cleanly: exit 130 after
    /// Ctrl-C, success after SIGTERM.
    pub fn outcome(self) -> Result<(), Exit> {
        match self {
            Stop::Interrupt => Err(interrupted()),
            Stop::Terminate => Ok(()),
        }
    }
}

/// The failure of a command stopped by Ctrl-C (exit 130).
pub fn interrupted() -> Exit {
    Exit::new(
        Failure::Interrupted,
        anyhow::anyhow!("interrupted (Ctrl-C)"),
    )
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

    /// Waits for a signal; says which.
    pub async fn wait(mut self) -> Result<Stop, Exit> {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => Ok(Stop::Interrupt),
            _ = self.terminate.recv() => Ok(Stop::Terminate),
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c()
                .await
                .context("cannot listen for Ctrl-C")?;
            Ok(Stop::Interrupt)
        }
    }
}
