//! The HTTPS client of the commands that talk to the platform's HTTP API
//! (`query`, `check`), and what to do when it refuses the token.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::exit::{Exit, Failure};

/// What to do about an API answering 401.
pub const API_TOKEN_HINT: &str =
    "check --api-token (or ULOGGER_API_TOKEN): an emulator prints its own at start";

/// An HTTPS client trusting `ca` (PEM) or else the public roots, with
/// the ring provider as the rest of the CLI uses.
pub fn client(ca: Option<&std::path::Path>, timeout: Duration) -> Result<reqwest::Client, Exit> {
    let mut tls = match ca {
        Some(ca) => {
            let config = ulogger_emulator::client_tls_config(ca, None).map_err(|e| {
                Exit::new(
                    Failure::BadInput,
                    anyhow!(e).context(format!("--ca {}", ca.display())),
                )
            })?;
            Arc::unwrap_or_clone(config)
        }
        None => {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .context("TLS set-up")?
            .with_root_certificates(roots)
            .with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("ulogger/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot set up the HTTP client")
        .map_err(Exit::from)
}
