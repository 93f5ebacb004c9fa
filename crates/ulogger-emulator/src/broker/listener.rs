//! The accept loop: one task per connection, TLS handshake included, all
//! owned by the loop's `JoinSet` so that ending the loop ends them all.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_rustls::TlsAcceptor;

use super::session::serve;
use super::Broker;
use crate::certs::CertPaths;
use crate::supervise::Failures;
use crate::EmulatorError;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first pause after `accept()` failed for want of descriptors or
/// memory; it doubles with each further failure, up to
/// `ACCEPT_BACKOFF_MAX`. The refused connection stays in the listen
/// backlog, so without a pause the loop would spin on it.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest pause between `accept()` attempts while out of resources.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line per this interval about failed accepts; the
/// others are counted and the count goes with the next line.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Whether the listener speaks TLS.
#[derive(Clone)]
pub(crate) enum Tls {
    /// Plain TCP.
    Off,
    /// Mutual TLS with this acceptor.
    On(TlsAcceptor),
}

impl Tls {
    /// Mutual TLS with the server certificate of `certs`; plain TCP
    /// without certificates.
    pub(crate) fn from_certs(certs: Option<&CertPaths>) -> Result<Tls, EmulatorError> {
        Ok(match certs {
            Some(certs) => Tls::On(TlsAcceptor::from(certs.server_config()?)),
            None => Tls::Off,
        })
    }
}

/// Accepts connections until cancelled; connection tasks end with it.
pub(crate) async fn run_listener(
    listener: TcpListener,
    tls: Tls,
    broker: Arc<Broker>,
    failures: Arc<Failures>,
) {
    let mut connections = JoinSet::new();
    let mut errors = AcceptErrors::default();
    // Set while backing off: no accept() before then. Existing connections
    // are served meanwhile (they are tasks of their own), and finished
    // ones are still joined, which frees their descriptors.
    let mut paused_until: Option<Instant> = None;
    loop {
        let resume = async {
            match paused_until {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = listener.accept(), if paused_until.is_none() => {
                let (socket, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        let now = Instant::now();
                        let failure = errors.failed(&e, now.into_std());
                        if let Some(suppressed) = failure.log {
                            tracing::warn!(error = %e, suppressed, "accept failed");
                        }
                        paused_until = failure.pause.map(|pause| now + pause);
                        continue;
                    }
                };
                errors.succeeded();
                let _ = socket.set_nodelay(true);
                let broker = broker.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    match tls {
                        Tls::Off => serve(socket, peer, broker).await,
                        Tls::On(acceptor) => {
                            match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                                Ok(Ok(stream)) => serve(stream, peer, broker).await,
                                Ok(Err(e)) => {
                                    tracing::info!(%peer, error = %e, "TLS handshake refused");
                                }
                                Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            () = resume => paused_until = None,
            Some(done) = connections.join_next() => failures.note("connection", done),
        }
    }
}

/// Whether an `accept()` error means the process (or system) is out of
/// descriptors, buffers or memory: retrying at once would fail again.
/// Other errors concern one connection (reset before it was accepted)
/// and the next accept may well succeed.
fn out_of_resources(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::OutOfMemory
        || e.raw_os_error().is_some_and(|code| {
            [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM].contains(&code)
        })
}

/// What to do about one failed `accept()`.
#[derive(Debug, PartialEq, Eq)]
struct AcceptFailure {
    /// Log it, with this many failures left unlogged since the last line;
    /// `None`: count it silently.
    log: Option<u64>,
    /// Wait this long before the next `accept()`.
    pause: Option<Duration>,
}

/// The accept loop's memory of its recent failures: the back-off and the
/// log rate limit. Pure bookkeeping on the instants it is given.
#[derive(Debug, Default)]
struct AcceptErrors {
    /// The pause after the latest resource failure (`None`: none since the
    /// last successful accept).
    backoff: Option<Duration>,
    last_logged: Option<std::time::Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    fn failed(&mut self, e: &io::Error, now: std::time::Instant) -> AcceptFailure {
        let pause = out_of_resources(e).then(|| {
            let pause = match self.backoff {
                Some(previous) => (previous * 2).min(ACCEPT_BACKOFF_MAX),
                None => ACCEPT_BACKOFF_FIRST,
            };
            self.backoff = Some(pause);
            pause
        });
        let due = self
            .last_logged
            .is_none_or(|at| now.saturating_duration_since(at) >= ACCEPT_LOG_INTERVAL);
        let log = if due {
            self.last_logged = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        };
        AcceptFailure { log, pause }
    }

    /// A connection was accepted: the next resource failure starts the
    /// back-off afresh.
    fn succeeded(&mut self) {
        self.backoff = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(libc::EMFILE)
    }

    #[test]
    fn resource_errors_back_off_doubling_to_a_second_and_reset_on_success() {
        let mut errors = AcceptErrors::default();
        let now = std::time::Instant::now();
        let pauses: Vec<_> = (0..6)
            .map(|_| errors.failed(&emfile(), now).pause.unwrap())
            .collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            pauses,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        errors.succeeded();
        assert_eq!(errors.failed(&emfile(), now).pause, Some(ms(100)));
        for code in [libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(out_of_resources(&io::Error::from_raw_os_error(code)));
        }
    }

    #[test]
    fn other_errors_do_not_pause() {
        let mut errors = AcceptErrors::default();
        let reset = io::Error::from_raw_os_error(libc::ECONNABORTED);
        let failure = errors.failed(&reset, std::time::Instant::now());
        assert_eq!(failure.pause, None);
    }

    #[test]
    fn at_most_one_line_a_second_with_the_count_of_the_others() {
        let mut errors = AcceptErrors::default();
        let start = std::time::Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(errors.failed(&emfile(), at(0)).log, Some(0));
        assert_eq!(errors.failed(&emfile(), at(10)).log, None);
        assert_eq!(errors.failed(&emfile(), at(999)).log, None);
        assert_eq!(errors.failed(&emfile(), at(1000)).log, Some(2));
        assert_eq!(errors.failed(&emfile(), at(1500)).log, None);
        assert_eq!(errors.failed(&emfile(), at(2100)).log, Some(1));
    }
}
