//! Log configurations pushed by the cloud (PROTOCOL §7):
//! `ulogger emulator push-config` sends one through a running emulator,
//! `ulogger config watch` prints each one a device receives.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde_json::json;
use ulogger_cloud::wire::{LogConfig, LogLevel, Topics};
use ulogger_cloud::Client;

use crate::connection::{ConfigFile, ConnectionArgs};
use crate::device::DeviceArgs;
use crate::exit::{self, Exit, Failure};
use crate::signal::{Stop, StopSignal};
use crate::stamp;
use crate::Global;

/// Arguments of `ulogger emulator push-config`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The running emulator's data directory: its client.toml says how to
    /// reach it.
    #[arg(long, default_value = "ulogger-emulator-data", value_name = "DIR")]
    data: PathBuf,
    /// The device's application id.
    #[arg(long)]
    app_id: u32,
    /// The device's serial.
    #[arg(long)]
    serial: String,
    /// Minimum level the device logs: debug, info, warning, error,
    /// critical, or a number 0 to 255.
    #[arg(long, value_parser = parse_level)]
    level: LogLevel,
    /// Enable mask, one bit per firmware module (decimal or 0x hex).
    #[arg(long, default_value = "0xffffffff", value_parser = parse_flags, value_name = "N")]
    module_flags: u32,
    /// How long the device keeps this configuration before reverting to
    /// its own, in seconds. (Was --timeout, which elsewhere is how long
    /// to wait on the network; that spelling still works.)
    #[arg(long, alias = "timeout", default_value_t = 3600, value_name = "SECS",
          value_parser = crate::duration::secs_u32)]
    lifetime: u32,
    /// Names of the modules, in bit order (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    modules: Option<Vec<String>>,
}

/// Arguments of `ulogger config watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// The device: its config topic needs only --app-id and --serial.
    #[command(flatten)]
    device: DeviceArgs,
    /// Wait for one configuration, print it and exit (like the Python
    /// SDK's `wait_for_log_config`); exit 3 if none came within --wait.
    #[arg(long)]
    once: bool,
    /// With --once: how long to wait, in seconds.
    #[arg(
        long = "wait",
        default_value_t = 30,
        value_name = "SECS", value_parser = crate::duration::secs,
        requires = "once"
    )]
    wait_secs: u64,
}

/// How long `push-config` waits to connect, and then for the PUBACK.
const PUSH_PATIENCE: Duration = Duration::from_secs(10);

fn parse_level(text: &str) -> Result<LogLevel, String> {
    match text.to_ascii_lowercase().as_str() {
        "debug" => Ok(LogLevel::Debug),
        "info" => Ok(LogLevel::Info),
        "warning" | "warn" => Ok(LogLevel::Warning),
        "error" => Ok(LogLevel::Error),
        "critical" => Ok(LogLevel::Critical),
        number => number
            .parse::<u8>()
            .map(LogLevel::from)
            .map_err(|_| "expected debug, info, warning, error, critical or 0 to 255".to_owned()),
    }
}

fn parse_flags(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("expected a 32-bit number (decimal or 0x hex): {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(Exit::from)
}

fn bad_input(error: anyhow::Error) -> Exit {
    Exit::new(Failure::BadInput, error)
}

/// Publishes the configuration (QoS 1, not retained, as the emulator's
/// cloud does) to the device's config topic as an ordinary MQTT client of
/// the emulator, with the settings it wrote into its data directory.
pub fn push(global: Global, args: PushArgs) -> Result<(), Exit> {
    let settings_path = args.data.join("client.toml");
    let text = std::fs::read_to_string(&settings_path)
        .with_context(|| {
            format!(
                "cannot read {} (is an emulator running with --data {}?)",
                settings_path.display(),
                args.data.display()
            )
        })
        .map_err(bad_input)?;
    let settings: ConfigFile = crate::connection::parse_config(&text, &settings_path)?;
    let customer_id = settings
        .customer_id
        .ok_or_else(|| bad_input(anyhow!("{} has no customer_id", settings_path.display())))?;
    let topic = Topics::new(
        settings.prefix.clone().unwrap_or_default(),
        customer_id,
        if settings.legacy_topics.unwrap_or(false) {
            None
        } else {
            Some(settings.group_id.unwrap_or(ulogger_cloud::DEFAULT_GROUP_ID))
        },
    )
    .and_then(|topics| topics.config(args.app_id, &args.serial))
    .context("cannot make the device's config topic")
    .map_err(bad_input)?;
    let mut config = LogConfig::new(args.level, args.module_flags, args.lifetime);
    if let Some(names) = args.modules {
        config = config.with_module_names(names);
    }

    let mut options = rumqttc::MqttOptions::new(
        format!("cust-{customer_id}-push-config-{}", std::process::id()),
        settings
            .broker
            .clone()
            .unwrap_or_else(|| "127.0.0.1".to_owned()),
        settings.port.unwrap_or(ulogger_cloud::DEFAULT_PORT),
    );
    options.set_keep_alive(Duration::from_secs(30));
    if !settings.plaintext.unwrap_or(false) {
        let (Some(ca), Some(cert), Some(key)) = (&settings.ca, &settings.cert, &settings.key)
        else {
            return Err(bad_input(anyhow!(
                "{} names no ca, cert and key, and is not plaintext",
                settings_path.display()
            )));
        };
        let tls = ulogger_emulator::client_tls_config(ca, Some((cert, key)))
            .context("cannot load the emulator's certificates")
            .map_err(bad_input)?;
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    let payload = config.encode();
    let target = Target {
        address: format!(
            "{}:{}",
            options.broker_address().0,
            options.broker_address().1
        ),
        settings: settings_path.clone(),
        plaintext: settings.plaintext.unwrap_or(false),
    };
    runtime()?.block_on(publish(options, topic.clone(), payload, target))?;

    if global.json {
        outln!(
            "{}",
            json!({"event": "pushed", "topic": topic, "config": config_json(&config)})
        );
    } else {
        outln!("pushed {} to {topic}", config_line(&config));
    }
    Ok(())
}

/// Where `push-config` went, for its failures: the address and the
/// client.toml that named it, and whether it spoke plaintext.
struct Target {
    address: String,
    settings: PathBuf,
    plaintext: bool,
}

/// A failure to reach the emulator, said in the user's words: rumqttc's
/// own (`Promised boundary crossed: 768` for TLS bytes read as MQTT) means
/// nothing to someone pushing a configuration.
fn unreachable_emulator(error: rumqttc::ConnectionError, to: &Target) -> Exit {
    use rumqttc::{ConnectionError, StateError};
    let (what, hint) = match &error {
        ConnectionError::MqttState(StateError::Deserialization(_)) | ConnectionError::NotConnAck(_)
            if to.plaintext =>
        {
            (
                format!("{} did not answer in MQTT", to.address),
                format!(
                    "{} says plaintext, but the emulator there speaks TLS: it may be from an emulator started with --plaintext before; point --data at the running emulator's directory",
                    to.settings.display()
                ),
            )
        }
        ConnectionError::MqttState(_) | ConnectionError::NotConnAck(_) | ConnectionError::Tls(_) => (
            format!("the TLS connection to {} failed", to.address),
            format!(
                "{} may be from another emulator (certificates differ at each new --data) or one started with --plaintext: point --data at the running emulator's directory",
                to.settings.display()
            ),
        ),
        ConnectionError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => (
            format!("nothing listens at {}", to.address),
            format!(
                "is the emulator running? {} names the address of the last one started with this --data",
                to.settings.display()
            ),
        ),
        ConnectionError::ConnectionRefused(code) => (
            format!("the emulator at {} refused the connection ({code:?})", to.address),
            format!(
                "{}'s customer_id must be the emulator's --customer-id",
                to.settings.display()
            ),
        ),
        _ => (
            format!("cannot reach the emulator at {}: {error}", to.address),
            "is the emulator running with this --data?".to_owned(),
        ),
    };
    tracing::info!(%error, "push-config failed");
    Exit::new(Failure::Network, anyhow!("{what}")).with_hint(Some(hint))
}

/// Publishes once at QoS 1 and waits for the PUBACK.
async fn publish(
    options: rumqttc::MqttOptions,
    topic: String,
    payload: Vec<u8>,
    context: Target,
) -> Result<(), Exit> {
    let (client, mut events) = rumqttc::AsyncClient::new(options, 4);
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
        .await
        .context("cannot queue the publish")?;
    let acknowledged = tokio::time::timeout(PUSH_PATIENCE, async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match acknowledged {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(unreachable_emulator(e, &context)),
        Err(_) => {
            return Err(Exit::new(
                Failure::Network,
                anyhow!(
                    "the emulator did not acknowledge the configuration within {}s",
                    PUSH_PATIENCE.as_secs()
                ),
            ))
        }
    }
    // Best effort: the configuration is delivered whether or not the
    // DISCONNECT goes out.
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
    Ok(())
}

/// Subscribes to the device's config topic and prints each configuration
/// as it arrives until Ctrl-C or SIGTERM. A payload that does not decode
/// is reported and the watch goes on.
pub fn watch(global: Global, args: WatchArgs) -> Result<(), Exit> {
    let file = args.connection.file()?;
    let device = args.device.addressed(file)?;
    // A watch registers nothing: keep the token file untouched.
    let mut connection = args.connection.clone();
    connection.no_store = true;
    let (config, store) = connection.resolve()?;
    let runtime = runtime()?;
    let stop = {
        let _runtime = runtime.enter();
        StopSignal::listen()?
    };
    runtime.block_on(async {
        let stop = stop.wait();
        tokio::pin!(stop);
        let client = Client::builder(config)
            .session_store(store)
            .build()
            .map_err(exit::from_cloud)?;
        let mut connection = client.connection_changes();
        if args.once {
            let wait = Duration::from_secs(args.wait_secs);
            // A connection that fails is the answer, not the end of the
            // wait (which would say only that no configuration came).
            let got = async {
                let waiting = client.wait_for_log_config(&device, wait);
                tokio::pin!(waiting);
                tokio::select! {
                    got = &mut waiting => got,
                    Err(failed) = client.connected() => Err(failed),
                }
            };
            let outcome = tokio::select! {
                got = got => match got {
                    Ok(config) => {
                        print_config(global, &config);
                        Ok(())
                    }
                    Err(e) => Err(exit::from_cloud(e)),
                },
                stopped = &mut stop => stopped.and_then(Stop::outcome),
            };
            client.shutdown().await;
            return outcome;
        }
        // The subscription waits for the connection through outages; a
        // connection that fails meanwhile is said once, with its hint,
        // instead of a silent wait.
        let mut configs = {
            let subscribing = client.log_configs(&device);
            tokio::pin!(subscribing);
            let mut said = false;
            loop {
                tokio::select! {
                    configs = &mut subscribing => break configs.map_err(exit::from_cloud)?,
                    Err(failed) = client.connected(), if !said => {
                        said = true;
                        print_unreachable(global, failed);
                    }
                    stopped = &mut stop => {
                        client.shutdown().await;
                        return stopped.and_then(Stop::outcome);
                    }
                }
            }
        };
        if global.json {
            outln!(
                "{}",
                json!({"time": stamp::now(), "event": "watching", "topic": configs.topic()})
            );
        } else {
            eprintln!(
                "{} watching {} for log configurations (Ctrl-C stops)",
                stamp::now(),
                configs.topic()
            );
        }
        let outcome = loop {
            tokio::select! {
                item = configs.next() => match item {
                    Some(Ok(config)) => print_watched(global, &config),
                    Some(Err(error)) => print_invalid(global, &error),
                    None => break Err(exit::from_cloud(ulogger_cloud::ErrorKind::Shutdown.into())),
                },
                Some(change) = connection.next() => print_connection(global, &change),
                stopped = &mut stop => break stopped.and_then(Stop::outcome),
            }
        };
        drop(configs);
        client.shutdown().await;
        outcome
    })
}

/// The connection failed before the watch could subscribe: why, and what
/// to do, once; the watch keeps trying.
fn print_unreachable(global: Global, failed: ulogger_cloud::Error) {
    let exit = exit::from_cloud(failed);
    let error = exit::chain(&exit.error);
    if global.json {
        outln!(
            "{}",
            json!({"time": stamp::now(), "event": "connect_failed", "error": error, "hint": exit.hint})
        );
    } else {
        eprintln!("{} cannot connect: {error}; trying on", stamp::now());
        if let Some(hint) = exit.hint {
            eprintln!("{} hint: {hint}", stamp::now());
        }
    }
}

fn print_config(global: Global, config: &LogConfig) {
    if global.json {
        outln!(
            "{}",
            json!({"event": "log_config", "config": config_json(config)})
        );
    } else {
        outln!("{}", config_line(config));
    }
}

/// A configuration as the watch prints it: with the time it arrived.
fn print_watched(global: Global, config: &LogConfig) {
    if global.json {
        outln!(
            "{}",
            json!({"time": stamp::now(), "event": "log_config", "config": config_json(config)})
        );
    } else {
        outln!("{} {}", stamp::now(), config_line(config));
    }
}

fn print_invalid(global: Global, error: &ulogger_cloud::Error) {
    if global.json {
        outln!(
            "{}",
            json!({"time": stamp::now(), "event": "invalid_log_config", "error": error.to_string()})
        );
    } else {
        eprintln!("{} warning: {error}; watching on", stamp::now());
    }
}

/// The connection came up or went down: an event on stdout with
/// `--json`, a note on stderr otherwise (stdout holds configurations).
fn print_connection(global: Global, change: &ulogger_cloud::ConnectionEvent) {
    let Some((kind, fields, text)) = crate::stamp::connection_line(change) else {
        return;
    };
    if global.json {
        let mut line = json!({"time": stamp::now(), "event": kind});
        if let (Some(line), serde_json::Value::Object(fields)) = (line.as_object_mut(), fields) {
            line.extend(fields);
        }
        outln!("{line}");
    } else {
        eprintln!("{} {text}", stamp::now());
    }
}

fn config_json(config: &LogConfig) -> serde_json::Value {
    json!({
        "level": config.level.to_string(),
        "level_value": u8::from(config.level),
        "module_flags": config.module_flags,
        "timeout_secs": config.timeout_secs,
        "module_names": config.module_names,
    })
}

fn config_line(config: &LogConfig) -> String {
    let mut line = format!(
        "level={} module_flags=0x{:08x} timeout={}s",
        config.level, config.module_flags, config.timeout_secs
    );
    if let Some(names) = &config.module_names {
        line.push_str(" modules=");
        line.push_str(&names.join(","));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_take_names_and_numbers() {
        assert_eq!(parse_level("WARNING"), Ok(LogLevel::Warning));
        assert_eq!(parse_level("3"), Ok(LogLevel::Error));
        assert_eq!(parse_level("9"), Ok(LogLevel::Unknown(9)));
        assert!(parse_level("loud").is_err());
    }

    #[test]
    fn module_flags_take_decimal_and_hex() {
        assert_eq!(parse_flags("11"), Ok(11));
        assert_eq!(parse_flags("0xB"), Ok(11));
        assert!(parse_flags("0x1_0000_0000").is_err());
    }
}
