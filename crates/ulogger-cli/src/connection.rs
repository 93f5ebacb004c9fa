//! Connection settings from flags, `ULOGGER_*` environment variables and a
//! config file, in that order of precedence.
//!
//! clap resolves flag-over-environment; values neither gives are taken from
//! the config file (`--config`, `ULOGGER_CONFIG`, or
//! `$ULOGGER_HOME/config.toml`, default `~/.ulogger/config.toml` when it
//! exists), then from the library's defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use ulogger_cloud::{MqttConfig, Pacing, Security, SessionStore};

use crate::exit::{Exit, Failure};

/// How to reach the broker.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectionArgs {
    /// Config file (TOML) with defaults for these settings.
    #[arg(long, env = "ULOGGER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Broker host [default: mqtt.ulogger.ai].
    #[arg(long, env = "ULOGGER_BROKER")]
    pub broker: Option<String>,
    /// Broker port [default: 8883].
    #[arg(long, env = "ULOGGER_PORT")]
    pub port: Option<u16>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, env = "ULOGGER_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(long, env = "ULOGGER_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// CA certificate(s) to trust instead of the public roots.
    #[arg(long, env = "ULOGGER_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Customer id.
    #[arg(long, env = "ULOGGER_CUSTOMER_ID")]
    pub customer_id: Option<u32>,
    /// Group id (adds the group level to topics).
    #[arg(long, env = "ULOGGER_GROUP_ID")]
    pub group_id: Option<u32>,
    /// Prefix put before every topic, as-is.
    #[arg(long, env = "ULOGGER_PREFIX")]
    pub prefix: Option<String>,
    /// Connect WITHOUT TLS (local brokers only).
    #[arg(long, env = "ULOGGER_PLAINTEXT")]
    pub plaintext: bool,
    /// Publish as fast as the broker takes it, instead of pacing to the
    /// platform's per-connection limits (100 publishes/s, 512 KiB/s).
    /// For local brokers.
    #[arg(long, env = "ULOGGER_NO_PACING")]
    pub no_pacing: bool,
    /// Connections sharing the load, each with its own client id and the
    /// platform's per-connection limits [default: 1].
    #[arg(long, env = "ULOGGER_CONNECTIONS", value_name = "N")]
    pub connections: Option<usize>,
    /// Seconds to wait for a boot reply [default: 15].
    #[arg(long, env = "ULOGGER_TOKEN_TIMEOUT", value_name = "SECS")]
    pub token_timeout: Option<u64>,
    /// Seconds to wait for the connection, and for each acknowledgement
    /// [default: 10].
    #[arg(long, env = "ULOGGER_TIMEOUT", value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Session-token cache file [default: ~/.ulogger/session_tokens.json].
    #[arg(long, env = "ULOGGER_STORE", value_name = "FILE")]
    pub store: Option<PathBuf>,
    /// Keep session tokens in memory only (register on every run).
    #[arg(long)]
    pub no_store: bool,
}

/// The config file's contents: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    broker: Option<String>,
    port: Option<u16>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    customer_id: Option<u32>,
    group_id: Option<u32>,
    prefix: Option<String>,
    plaintext: Option<bool>,
    no_pacing: Option<bool>,
    connections: Option<usize>,
    token_timeout: Option<u64>,
    timeout: Option<u64>,
    store: Option<PathBuf>,
}

fn default_config_path() -> Option<PathBuf> {
    let home = std::env::var_os("ULOGGER_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ulogger")))?;
    Some(home.join("config.toml"))
}

fn load_file(explicit: Option<&Path>) -> Result<ConfigFile, Exit> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => match default_config_path() {
            Some(path) if path.exists() => path,
            _ => return Ok(ConfigFile::default()),
        },
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))
        .map_err(|e| Exit::new(Failure::BadInput, e))?;
    toml::from_str(&text)
        .with_context(|| format!("invalid config file {}", path.display()))
        .map_err(|e| Exit::new(Failure::BadInput, e))
}

impl ConnectionArgs {
    /// The broker settings and the session-token store, from flags and
    /// environment over the config file (read once).
    pub fn resolve(&self) -> Result<(MqttConfig, SessionStore), Exit> {
        let file = load_file(self.config.as_deref())?;
        let config = self.mqtt_config(&file)?;
        Ok((config, self.session_store(&file)?))
    }

    fn mqtt_config(&self, file: &ConfigFile) -> Result<MqttConfig, Exit> {
        let customer_id = self.customer_id.or(file.customer_id).ok_or_else(|| {
            Exit::new(
                Failure::BadInput,
                anyhow::anyhow!("no customer id: pass --customer-id, set ULOGGER_CUSTOMER_ID or customer_id in the config file"),
            )
        })?;
        let mut config = MqttConfig::new(customer_id);
        if let Some(broker) = self.broker.clone().or_else(|| file.broker.clone()) {
            config = config.broker(broker);
        }
        if let Some(port) = self.port.or(file.port) {
            config = config.port(port);
        }
        match (
            self.cert.clone().or_else(|| file.cert.clone()),
            self.key.clone().or_else(|| file.key.clone()),
        ) {
            (Some(cert), Some(key)) => config = config.client_cert(cert, key),
            (None, None) => {}
            (Some(_), None) => return Err(bad_input("--cert was given without --key")),
            (None, Some(_)) => return Err(bad_input("--key was given without --cert")),
        }
        if let Some(ca) = self.ca.clone().or_else(|| file.ca.clone()) {
            config = config.ca_file(ca);
        }
        if let Some(group) = self.group_id.or(file.group_id) {
            config = config.group_id(group);
        }
        if let Some(prefix) = self.prefix.clone().or_else(|| file.prefix.clone()) {
            config = config.topic_prefix(prefix);
        }
        if self.plaintext || file.plaintext.unwrap_or(false) {
            config = config.security(Security::Plaintext);
        }
        config = config.pacing(self.pacing(file));
        if let Some(connections) = self.connections.or(file.connections) {
            config = config.connections(connections);
        }
        if let Some(secs) = self.token_timeout.or(file.token_timeout) {
            config = config.token_timeout(Duration::from_secs(secs));
        }
        if let Some(secs) = self.timeout.or(file.timeout) {
            config = config
                .connect_timeout(Duration::from_secs(secs))
                .ack_timeout(Duration::from_secs(secs));
        }
        Ok(config)
    }

    /// The platform's pacing unless the flag, the environment or the
    /// file turns it off.
    fn pacing(&self, file: &ConfigFile) -> Pacing {
        if self.no_pacing || file.no_pacing.unwrap_or(false) {
            Pacing::off()
        } else {
            Pacing::platform()
        }
    }

    fn session_store(&self, file: &ConfigFile) -> Result<SessionStore, Exit> {
        if self.no_store {
            return Ok(SessionStore::in_memory());
        }
        let result = match self.store.clone().or_else(|| file.store.clone()) {
            Some(path) => SessionStore::open(&path),
            None => SessionStore::open_default(),
        };
        result
            .context("cannot open the session-token store")
            .map_err(|e| Exit::new(Failure::BadInput, e))
    }
}

fn bad_input(message: &str) -> Exit {
    Exit::new(Failure::BadInput, anyhow::anyhow!("{message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_is_on_unless_the_flag_or_the_file_turns_it_off() {
        let args = ConnectionArgs::default();
        let file = |text: &str| toml::from_str::<ConfigFile>(text).unwrap();
        assert_eq!(args.pacing(&file("")), Pacing::platform());
        assert_eq!(args.pacing(&file("no_pacing = false")), Pacing::platform());
        assert_eq!(args.pacing(&file("no_pacing = true")), Pacing::off());
        let no_pacing = ConnectionArgs {
            no_pacing: true,
            ..ConnectionArgs::default()
        };
        assert_eq!(no_pacing.pacing(&file("no_pacing = false")), Pacing::off());
    }
}
