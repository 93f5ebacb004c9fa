//! The accept loop: one task per connection, TLS handshake included, all
//! owned by the loop's `JoinSet` so that ending the loop ends them all.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use super::session::serve;
use super::Broker;
use crate::supervise::Failures;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the listener speaks TLS.
#[derive(Clone)]
pub(crate) enum Tls {
    /// Plain TCP.
    Off,
    /// Mutual TLS with this acceptor.
    On(TlsAcceptor),
}

/// Accepts connections until cancelled; connection tasks end with it.
pub(crate) async fn run_listener(
    listener: TcpListener,
    tls: Tls,
    broker: Arc<Broker>,
    failures: Arc<Failures>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Per-connection errors (e.g. reset before accept)
                        // and fd exhaustion: keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
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
            Some(done) = connections.join_next() => failures.note("connection", done),
        }
    }
}
