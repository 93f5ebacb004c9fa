//! The client's connections: usually one, or several with distinct client
//! ids sharing the load ([`MqttConfig::connections`](crate::MqttConfig::connections)).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Settings;
use crate::error::Error;
use crate::transport::Transport;

pub(crate) struct Pool {
    transports: Vec<Transport>,
    next: AtomicUsize,
}

impl Pool {
    /// Starts every connection (at least one setting is given).
    pub fn start(settings: Vec<Settings>) -> Result<Pool, Error> {
        let transports = settings
            .into_iter()
            .map(Transport::start)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pool {
            transports,
            next: AtomicUsize::new(0),
        })
    }

    pub fn all(&self) -> &[Transport] {
        &self.transports
    }

    /// The first connection (its settings are every connection's but the
    /// client id).
    pub fn first(&self) -> &Transport {
        &self.transports[0]
    }

    /// The next connection in turn, preferring connected ones.
    pub fn pick(&self) -> &Transport {
        let n = self.transports.len();
        if n == 1 {
            return &self.transports[0];
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.transports[(start + i) % n])
            .find(|t| t.is_connected())
            .unwrap_or(&self.transports[start % n])
    }

    pub fn any_connected(&self) -> bool {
        self.transports.iter().any(Transport::is_connected)
    }

    /// Waits until every connection is up (see [`Transport::connected`]).
    pub async fn connected(&self) -> Result<(), Error> {
        for transport in &self.transports {
            transport.connected().await?;
        }
        Ok(())
    }

    pub async fn shutdown(&self) {
        for transport in &self.transports {
            transport.begin_shutdown();
        }
        for transport in &self.transports {
            transport.shutdown().await;
        }
    }
}
