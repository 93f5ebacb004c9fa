//! The one error type of the emulator.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the emulator could not start, or could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmulatorError {
    /// A configuration value is unusable; `field` names it.
    #[error("invalid emulator configuration: {field}: {reason}")]
    InvalidConfig {
        /// The setting at fault, e.g. `topic_prefix`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The broker could not listen on the requested address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's answer.
        #[source]
        source: io::Error,
    },
    /// A file or directory under the data or certificate directory could
    /// not be created, read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`create directory`, `write`, ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's answer.
        #[source]
        source: io::Error,
    },
    /// Certificates could not be generated or signed.
    #[error("cannot generate certificates: {0}")]
    CertGeneration(#[source] rcgen::Error),
    /// A certificate or key file holds no usable PEM item.
    #[error("certificate file {path}: {reason}")]
    CertFile {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The TLS configuration was refused by rustls.
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("TLS client verifier: {0}")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    /// The emulator's runtime thread could not be started.
    #[error("cannot start the emulator runtime: {0}")]
    Runtime(#[source] io::Error),
    /// Attach mode could not reach or subscribe on the external broker.
    #[error("attach to {broker}: {reason}")]
    Attach {
        /// `host:port` of the external broker.
        broker: String,
        /// What failed.
        reason: String,
    },
    /// A device id that goes into a topic is not allowed there.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidId {
        /// Which id (`serial`, ...).
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A line of an index file is not a record.
    #[error("{path} line {line}: {reason}")]
    BadIndexLine {
        /// The index file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// Why it does not parse.
        reason: String,
    },
    /// The record database could not be opened or set up.
    #[error("record database {path}: {reason}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        reason: String,
    },
    /// The emulator has stopped (or its cloud task ended), so the request
    /// could not be carried out.
    #[error("the emulator has stopped")]
    Stopped,
    /// A task of the emulator panicked; the message is the panic's.
    #[error("an emulator task panicked: {0}")]
    Panicked(String),
}

impl EmulatorError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        EmulatorError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
