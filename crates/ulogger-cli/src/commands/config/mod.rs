//! `ulogger config show`: the effective settings and where each came from
//! (flag, environment, config file, default), as `settings.rs` merges
//! them; every setting of its table is a row. `config watch` lives in
//! `log_config`.

use clap::parser::ValueSource;
use clap::{ArgMatches, Command as ClapCommand, CommandFactory};
use serde_json::{json, Value};

use crate::agent_args::ServiceArgs;
use crate::connection::{default_config_path, ConnectionArgs};
use crate::device::DeviceArgs;
use crate::exit::Exit;
use crate::settings::{Entry, Fallback, Settings, Source};
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

/// Arguments of `ulogger config show`: every setting's flag, with the
/// config file's key as its id. They are read through clap's matches
/// (which also say flag or environment), not these fields.
#[derive(Debug, clap::Args)]
#[allow(dead_code)]
pub struct ShowArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    service: ServiceArgs,
    #[cfg(all(feature = "ble", target_os = "linux"))]
    #[command(flatten)]
    ble: crate::agent_args::BleArgs,
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

/// One row of `config show`: a setting's key, value and source.
struct Row {
    key: &'static str,
    /// The value, typed; a secret's is [`HIDDEN`].
    value: Option<Value>,
    /// A default said in words.
    note: Option<&'static str>,
    unit: &'static str,
    source: Source,
}

impl Row {
    fn of(entry: Entry) -> Self {
        let value = match entry.value {
            Some(_) if entry.spec.secret => Some(json!(HIDDEN)),
            value => value,
        };
        let note = match (&entry.source, &entry.spec.fallback) {
            (Source::Default, Fallback::Said(words)) => Some(*words),
            _ => None,
        };
        Row {
            key: entry.spec.key,
            value,
            note,
            unit: entry.spec.unit,
            source: entry.source,
        }
    }

    /// `{"value", "source"}` with the value typed as in the config file
    /// (a number, a boolean, a string, a list) or null; a default said in
    /// words is `"note"` beside a null value; where the value came from
    /// is `"flag"`, `"variable"` or `"file"` and `"line"`.
    fn json(&self, file: Option<&std::path::Path>) -> Value {
        let mut row = json!({
            "value": self.value.clone().unwrap_or(Value::Null),
            "source": self.source.word(),
        });
        let fields = match &self.source {
            Source::Flag(flag) => vec![("flag", json!(flag))],
            Source::Env(var) => vec![("variable", json!(var))],
            Source::File(line) => vec![
                ("file", json!(file.map(|p| p.display().to_string()))),
                ("line", json!(line)),
            ],
            Source::Default => {
                vec![("note", json!(self.note))]
            }
        };
        if let Some(object) = row.as_object_mut() {
            for (name, value) in fields.into_iter().filter(|(_, v)| !v.is_null()) {
                object.insert(name.to_owned(), value);
            }
        }
        row
    }

    /// `key  value  where (source)`.
    fn text(&self, width: usize) -> String {
        let value = match (&self.value, self.note) {
            (Some(Value::String(text)), _) if text.is_empty() => "\"\"".to_owned(),
            (Some(Value::String(text)), _) => text.clone(),
            // A duration with its unit, as the flags take it.
            (Some(Value::Number(n)), _) => format!("{n}{}", self.unit),
            (Some(value), _) => value.to_string(),
            (None, Some(note)) => note.to_owned(),
            (None, None) => "(not set)".to_owned(),
        };
        let at = match &self.source {
            Source::Flag(flag) => format!("{flag} "),
            Source::Env(var) => format!("{var} "),
            Source::File(Some(line)) => format!("line {line} "),
            Source::File(None) | Source::Default => String::new(),
        };
        format!(
            "{:<width$}  {value}  {at}({})",
            self.key,
            self.source.word()
        )
    }
}

pub fn run(global: Global, cmd: Command) -> Result<(), Exit> {
    match cmd {
        Command::Show(args) => show(global, &args),
        Command::Watch(args) => crate::log_config::watch(global, *args),
    }
}

fn show(global: Global, args: &ShowArgs) -> Result<(), Exit> {
    let c = &args.connection;
    let file = c.file()?;
    let command = show_command();
    let matches = show_matches();
    let settings = Settings::merge(&command, matches.as_ref(), file);
    let mut rows: Vec<Row> = settings.entries.into_iter().map(Row::of).collect();
    let config_source = match (&c.files.config.config, matches.as_ref()) {
        (Some(_), Some(m)) if m.value_source("config") == Some(ValueSource::EnvVariable) => {
            Source::Env("ULOGGER_CONFIG".to_owned())
        }
        (Some(_), _) => Source::Flag("--config".to_owned()),
        (None, _) => Source::Default,
    };
    let config_path = c
        .files
        .config
        .config
        .clone()
        .or_else(|| file.path.clone())
        .or_else(default_config_path)
        .map(|p| json!(p.display().to_string()));
    rows.insert(
        0,
        Row {
            key: "config",
            value: config_path,
            note: None,
            unit: "",
            source: config_source,
        },
    );

    if global.json {
        let rows: serde_json::Map<String, Value> = rows
            .iter()
            .map(|row| (row.key.to_owned(), row.json(file.path.as_deref())))
            .collect();
        outln!("{}", Value::Object(rows));
        return Ok(());
    }
    let width = rows.iter().map(|row| row.key.len()).max().unwrap_or(0);
    for row in &rows {
        outln!("{}", row.text(width));
    }
    Ok(())
}

/// `config show` as clap declares it: its arguments' flags and variables.
fn show_command() -> ClapCommand {
    let mut cli = crate::Cli::command();
    cli.build();
    cli.find_subcommand("config")
        .and_then(|config| config.find_subcommand("show"))
        .cloned()
        .unwrap_or_else(|| ClapCommand::new("show"))
}

/// The matches of `config show` as clap saw them, to tell a flag from an
/// environment variable.
fn show_matches() -> Option<ArgMatches> {
    let matches = crate::Cli::command().try_get_matches().ok()?;
    let (_, config) = matches.subcommand()?;
    let (_, show) = config.subcommand()?;
    Some(show.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `config show` takes a flag for every setting, its id the key, so
    /// the merge finds a flag's value for each.
    #[test]
    fn every_setting_has_a_flag_of_config_show() {
        let command = show_command();
        let ids: Vec<&str> = command
            .get_arguments()
            .map(|arg| arg.get_id().as_str())
            .collect();
        for key in crate::settings::KEYS {
            let ble_only = key.starts_with("ble_") || matches!(*key, "ble" | "adapter");
            if ble_only && !cfg!(all(feature = "ble", target_os = "linux")) {
                continue;
            }
            assert!(ids.contains(key), "no flag with id {key}: {ids:?}");
        }
    }

    /// Each flag's value is read with the type the table declares (a
    /// mismatch would read as unset, silently).
    #[test]
    fn every_flag_is_read_with_its_type() {
        let command = show_command();
        let mut argv = vec!["show".to_owned()];
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if !crate::settings::KEYS.contains(&id) {
                continue;
            }
            let Some(long) = arg.get_long() else { continue };
            let value = match id {
                "port"
                | "customer_id"
                | "group_id"
                | "connections"
                | "app_id"
                | "jobs"
                | "ble_max_connections" => "7",
                "token_timeout" | "timeout" | "summary_interval" | "ble_min_interval"
                | "scan_interval" | "rescan_interval" | "ack_sync_interval" => "7",
                "legacy_topics" | "plaintext" | "no_pacing" | "stamp_time" | "ble" | "poll" => {
                    "true"
                }
                "metrics_listen" => "127.0.0.1:7",
                _ => "x",
            };
            if matches!(
                id,
                "legacy_topics" | "plaintext" | "no_pacing" | "stamp_time" | "ble" | "poll"
            ) {
                argv.push(format!("--{long}={value}"));
            } else {
                argv.push(format!("--{long}"));
                argv.push(value.to_owned());
            }
        }
        // --legacy-topics with --group-id is refused later, not by clap.
        let matches = command.clone().try_get_matches_from(&argv).unwrap();
        let settings = Settings::merge(
            &command,
            Some(&matches),
            &crate::connection::ConfigFile::default(),
        );
        for entry in settings.entries {
            let ble_only = entry.spec.key.starts_with("ble") || entry.spec.key == "adapter";
            if ble_only && !cfg!(all(feature = "ble", target_os = "linux")) {
                continue;
            }
            assert!(
                matches!(entry.source, Source::Flag(_)),
                "{} read as {:?}",
                entry.spec.key,
                entry.source
            );
        }
    }
}
