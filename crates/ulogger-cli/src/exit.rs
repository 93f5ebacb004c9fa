//! Exit codes that let scripts tell failures apart.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | unexpected failure (a bug, or an I/O error on the gateway itself) |
//! | 2 | bad input: arguments, files, ids, a log that fails validation |
//! | 3 | network failure: could not connect, timed out (also waiting for a boot reply), connection lost |
//! | 4 | the cloud refused: broker refused the connection or a subscription, unusable boot reply |

use std::process::ExitCode;

/// Why a command failed, as far as the exit code is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// Unexpected failure.
    Internal = 1,
    /// Bad input from the user.
    BadInput = 2,
    /// The network failed.
    Network = 3,
    /// The cloud refused.
    Refused = 4,
}

/// An error that carries its exit code.
#[derive(Debug)]
pub struct Exit {
    pub failure: Failure,
    pub error: anyhow::Error,
}

impl Exit {
    pub fn new(failure: Failure, error: impl Into<anyhow::Error>) -> Self {
        Exit {
            failure,
            error: error.into(),
        }
    }

    /// A failure whose message was already printed (per-item reports).
    pub fn silent(failure: Failure) -> Self {
        Exit {
            failure,
            error: anyhow::Error::msg(""),
        }
    }
}

impl From<anyhow::Error> for Exit {
    fn from(error: anyhow::Error) -> Self {
        Exit {
            failure: Failure::Internal,
            error,
        }
    }
}

/// Prints the error, if any, and maps it to the process exit code.
pub fn report(result: Result<(), Exit>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(exit) => {
            let message = format!("{:#}", exit.error);
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            ExitCode::from(exit.failure as u8)
        }
    }
}

/// Maps a library error to the exit code that tells what kind it is.
pub fn from_cloud(error: ulogger_cloud::Error) -> Exit {
    let failure = classify(&error);
    Exit::new(failure, error)
}

/// Which exit code a library error deserves.
pub fn classify(error: &ulogger_cloud::Error) -> Failure {
    if error.is_invalid_input() {
        Failure::BadInput
    } else if error.is_refusal() {
        Failure::Refused
    } else if error.is_retryable() {
        Failure::Network
    } else {
        match error.kind() {
            ulogger_cloud::ErrorKind::Store(_) => Failure::BadInput,
            // The far end spoke something that is not MQTT (e.g. a TLS
            // broker answering a plaintext CONNECT): the link is unusable,
            // the gateway is not at fault.
            ulogger_cloud::ErrorKind::Protocol(_) => Failure::Network,
            _ => Failure::Internal,
        }
    }
}

/// A library error and its causes on one line.
pub fn message(error: &ulogger_cloud::Error) -> String {
    format!("{:#}", anyhow::Error::new(error.clone()))
}
