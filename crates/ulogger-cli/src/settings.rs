//! `ulogger config show`: the effective settings and where each came from
//! (flag, environment, config file, default). `config watch` lives in
//! `log_config`.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};
use serde_json::json;
use ulogger_cloud::{SessionStore, DEFAULT_BROKER, DEFAULT_PORT};

use crate::connection::{
    default_config_path, ConnectionArgs, DEFAULT_TIMEOUT_SECS, DEFAULT_TOKEN_TIMEOUT_SECS,
};
use crate::device::DeviceArgs;
use crate::exit::Exit;
use crate::Global;

/// Subcommands of `ulogger config`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the effective settings and where each came from (flag,
    /// environment, file, default). Takes every setting's flag.
    // Both boxed: each holds many settings, and the enum only one.
    Show(Box<ShowArgs>),
    /// Print each log configuration the cloud pushes to a device, as it
    /// arrives, until Ctrl-C or SIGTERM. Takes the device and connection
    /// flags of `upload`.
    Watch(Box<crate::log_config::WatchArgs>),
}

/// Arguments of `ulogger config show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// As `upload --stamp-time` and `agent --stamp-time`.
    #[arg(long, env = "ULOGGER_STAMP_TIME", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = crate::connection::boolish)]
    stamp_time: Option<bool>,
    /// As `upload --outbox`, `agent --outbox` and `outbox --outbox`.
    #[arg(long, env = "ULOGGER_OUTBOX", value_name = "DIR")]
    outbox: Option<PathBuf>,
    /// As `agent --inbox`.
    #[arg(long, env = "ULOGGER_INBOX", value_name = "DIR")]
    inbox: Option<PathBuf>,
    /// As `agent --rejected`.
    #[arg(long, env = "ULOGGER_REJECTED", value_name = "DIR")]
    rejected: Option<PathBuf>,
    /// As `agent --scan-interval`.
    #[arg(long, env = "ULOGGER_SCAN_INTERVAL", value_name = "MS", value_parser = crate::duration::millis)]
    scan_interval: Option<u64>,
    /// As `agent --summary-interval`.
    #[arg(long, env = "ULOGGER_SUMMARY_INTERVAL", value_name = "SECS", value_parser = crate::duration::secs)]
    summary_interval: Option<u64>,
    /// As `agent --ack-sync-interval`.
    #[arg(long, env = "ULOGGER_ACK_SYNC_INTERVAL", value_name = "MS", value_parser = crate::duration::millis)]
    ack_sync_interval: Option<u64>,
    /// As `agent --metrics-listen`.
    #[arg(long, env = "ULOGGER_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// As `upload --jobs`.
    #[arg(long, env = "ULOGGER_JOBS", value_name = "N")]
    jobs: Option<u64>,
    /// As `metrics --api-token` (shown only as set or not).
    #[arg(
        long,
        env = "ULOGGER_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    api_token: Option<String>,
    /// As `metrics --api-url`.
    #[arg(long, env = "ULOGGER_API_URL", value_name = "URL")]
    api_url: Option<String>,
}

/// What `config show` prints for a secret that is set.
const HIDDEN: &str = "(set, not shown)";

/// One setting: its key (the config file's, the flag's with `-`), its
/// value, and where the value came from.
struct Setting {
    key: &'static str,
    value: Option<String>,
    source: &'static str,
}

/// Settings whose values are numbers (as in the config file).
const NUMBERS: &[&str] = &[
    "port",
    "customer_id",
    "group_id",
    "connections",
    "token_timeout",
    "timeout",
    "app_id",
    "scan_interval",
    "summary_interval",
    "ack_sync_interval",
    "jobs",
];

/// Settings whose values are yes or no.
const BOOLEANS: &[&str] = &["legacy_topics", "plaintext", "no_pacing", "stamp_time"];

/// Settings whose default is said in words, not a value (`ca`: the
/// public roots).
const DESCRIBED: &[&str] = &["ca", "rejected", "metrics_listen", "api_token", "jobs"];

impl Setting {
    /// `{"value", "source"}` with the value typed as in the config file
    /// (a number, a boolean, a string) or null; a default said in words
    /// is `"note"` beside a null value.
    fn json(&self) -> serde_json::Value {
        let Some(text) = self.value.as_deref() else {
            return json!({"value": null, "source": self.source});
        };
        if self.source == "default" && DESCRIBED.contains(&self.key) {
            return json!({"value": null, "source": self.source, "note": text});
        }
        let value = if NUMBERS.contains(&self.key) {
            text.parse::<u64>()
                .map_or_else(|_| json!(text), |n| json!(n))
        } else if BOOLEANS.contains(&self.key) {
            text.parse::<bool>()
                .map_or_else(|_| json!(text), |b| json!(b))
        } else {
            json!(text)
        };
        json!({"value": value, "source": self.source})
    }
}

/// A setting's key, its value from a flag or the environment, from the
/// config file, and its default.
type Row = (&'static str, Option<String>, Option<String>, Option<String>);

pub fn run(global: Global, cmd: Command) -> Result<(), Exit> {
    match cmd {
        Command::Show(args) => show(global, &args),
        Command::Watch(args) => crate::log_config::watch(global, *args),
    }
}

fn show(global: Global, args: &ShowArgs) -> Result<(), Exit> {
    let file = args.connection.file()?;
    let matches = show_matches();
    let c = &args.connection;
    let d = &args.device;
    let s = |v: &dyn ToString| v.to_string();
    let path = |p: &std::path::PathBuf| p.display().to_string();
    let rows: Vec<Row> = vec![
        (
            "broker",
            c.broker.clone(),
            file.broker.clone(),
            Some(DEFAULT_BROKER.to_owned()),
        ),
        (
            "port",
            c.port.map(|v| s(&v)),
            file.port.map(|v| s(&v)),
            Some(DEFAULT_PORT.to_string()),
        ),
        (
            "cert",
            c.cert.as_ref().map(path),
            file.cert.as_ref().map(path),
            None,
        ),
        (
            "key",
            c.key.as_ref().map(path),
            file.key.as_ref().map(path),
            None,
        ),
        (
            "ca",
            c.ca.as_ref().map(path),
            file.ca.as_ref().map(path),
            Some("the public roots".to_owned()),
        ),
        (
            "customer_id",
            c.customer_id.map(|v| s(&v)),
            file.customer_id.map(|v| s(&v)),
            None,
        ),
        (
            "group_id",
            c.group_id.map(|v| s(&v)),
            file.group_id.map(|v| s(&v)),
            Some(ulogger_cloud::DEFAULT_GROUP_ID.to_string()),
        ),
        (
            "legacy_topics",
            c.legacy_topics.map(|v| s(&v)),
            file.legacy_topics.map(|v| s(&v)),
            Some("false".to_owned()),
        ),
        (
            "prefix",
            c.prefix.clone(),
            file.prefix.clone(),
            Some(String::new()),
        ),
        (
            "plaintext",
            c.plaintext.map(|v| s(&v)),
            file.plaintext.map(|v| s(&v)),
            Some("false".to_owned()),
        ),
        (
            "no_pacing",
            c.no_pacing.map(|v| s(&v)),
            file.no_pacing.map(|v| s(&v)),
            Some("false".to_owned()),
        ),
        (
            "connections",
            c.connections.map(|v| s(&v)),
            file.connections.map(|v| s(&v)),
            Some("1".to_owned()),
        ),
        (
            "token_timeout",
            c.token_timeout.map(|v| s(&v)),
            file.token_timeout.map(|v| s(&v)),
            Some(DEFAULT_TOKEN_TIMEOUT_SECS.to_string()),
        ),
        (
            "timeout",
            c.timeout.map(|v| s(&v)),
            file.timeout.map(|v| s(&v)),
            Some(DEFAULT_TIMEOUT_SECS.to_string()),
        ),
        (
            "store",
            c.files.store.as_ref().map(path),
            file.store.as_ref().map(path),
            SessionStore::default_path().ok().as_ref().map(path),
        ),
        (
            "device_info",
            d.device_info.as_ref().map(path),
            file.device_info.as_ref().map(path),
            None,
        ),
        (
            "app_id",
            d.app_id.map(|v| s(&v)),
            file.app_id.map(|v| s(&v)),
            None,
        ),
        ("serial", d.serial.clone(), file.serial.clone(), None),
        (
            "device_type",
            d.device_type.clone(),
            file.device_type.clone(),
            None,
        ),
        (
            "git_version",
            d.git_version.clone(),
            file.git_version.clone(),
            None,
        ),
        ("git_hash", d.git_hash.clone(), file.git_hash.clone(), None),
        (
            "stamp_time",
            args.stamp_time.map(|v| s(&v)),
            file.stamp_time.map(|v| s(&v)),
            Some("false".to_owned()),
        ),
        (
            "outbox",
            args.outbox.as_ref().map(path),
            file.outbox.as_ref().map(path),
            None,
        ),
        (
            "inbox",
            args.inbox.as_ref().map(path),
            file.inbox.as_ref().map(path),
            None,
        ),
        (
            "rejected",
            args.rejected.as_ref().map(path),
            file.rejected.as_ref().map(path),
            Some("a rejected folder beside the inbox".to_owned()),
        ),
        (
            "scan_interval",
            args.scan_interval.map(|v| s(&v)),
            file.scan_interval.map(|v| s(&v)),
            Some("500".to_owned()),
        ),
        (
            "summary_interval",
            args.summary_interval.map(|v| s(&v)),
            file.summary_interval.map(|v| s(&v)),
            Some("60".to_owned()),
        ),
        (
            "ack_sync_interval",
            args.ack_sync_interval.map(|v| s(&v)),
            file.ack_sync_interval.map(|v| s(&v)),
            Some("1000".to_owned()),
        ),
        (
            "metrics_listen",
            args.metrics_listen.map(|v| s(&v)),
            file.metrics_listen.map(|v| s(&v)),
            Some("none: no metrics endpoint".to_owned()),
        ),
        (
            "jobs",
            args.jobs.map(|v| s(&v)),
            file.jobs.map(|v| s(&v)),
            Some("100 per connection".to_owned()),
        ),
        (
            "api_token",
            args.api_token.as_ref().map(|_| HIDDEN.to_owned()),
            file.api_token.as_ref().map(|_| HIDDEN.to_owned()),
            Some("none: telemetry goes over MQTT".to_owned()),
        ),
        (
            "api_url",
            args.api_url.clone(),
            file.api_url.clone(),
            Some(ulogger_cloud::DEFAULT_API_URL.to_owned()),
        ),
    ];
    let mut settings: Vec<Setting> = rows
        .into_iter()
        .map(
            |(key, given, from_file, default)| match (given, from_file) {
                (Some(value), _) => Setting {
                    key,
                    value: Some(value),
                    source: given_source(matches.as_ref(), key),
                },
                (None, Some(value)) => Setting {
                    key,
                    value: Some(value),
                    source: "file",
                },
                (None, None) => Setting {
                    key,
                    value: default,
                    source: "default",
                },
            },
        )
        .collect();
    let config_source = match (&c.files.config.config, matches.as_ref()) {
        (Some(_), m) => given_source(m, "config"),
        (None, _) => "default",
    };
    let config_path = c
        .files
        .config
        .config
        .clone()
        .or_else(|| file.path.clone())
        .or_else(default_config_path)
        .map(|p| p.display().to_string());
    settings.insert(
        0,
        Setting {
            key: "config",
            value: config_path,
            source: config_source,
        },
    );

    if global.json {
        let rows: serde_json::Map<String, serde_json::Value> = settings
            .iter()
            .map(|s| (s.key.to_owned(), s.json()))
            .collect();
        outln!("{}", serde_json::Value::Object(rows));
        return Ok(());
    }
    let width = settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
    for setting in &settings {
        let value = setting.value.as_deref().unwrap_or("(not set)");
        let value = if value.is_empty() { "\"\"" } else { value };
        // A duration with its unit, as the flags take it.
        let unit = match setting.key {
            _ if value.parse::<u64>().is_err() => "",
            "scan_interval" | "ack_sync_interval" => "ms",
            "summary_interval" | "token_timeout" | "timeout" => "s",
            _ => "",
        };
        outln!(
            "{:<width$}  {value}{unit}  ({})",
            setting.key,
            setting.source
        );
    }
    Ok(())
}

/// The matches of `config show` as clap saw them, to tell a flag from an
/// environment variable.
fn show_matches() -> Option<ArgMatches> {
    let matches = crate::Cli::command().try_get_matches().ok()?;
    let (_, config) = matches.subcommand()?;
    let (_, show) = config.subcommand()?;
    Some(show.clone())
}

fn given_source(matches: Option<&ArgMatches>, key: &str) -> &'static str {
    match matches.and_then(|m| m.value_source(key)) {
        Some(ValueSource::EnvVariable) => "environment",
        _ => "flag",
    }
}
