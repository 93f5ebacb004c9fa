//! Every setting, declared once: its config-file key (the flag's name with
//! `_` for `-`), its type, how the file writes it, its default and whether
//! it is a secret. From this one table come the config file's struct
//! ([`ConfigFile`], so the keys it takes), the list of keys the
//! unknown-key error suggests from, and the merged value `config show`
//! prints ([`Settings`]): flag over environment (clap tells which) over the
//! config file (with the key's line) over the default.
//!
//! The flags themselves stay clap's (`connection.rs`, `device.rs`,
//! `agent_args.rs`, and the command that owns the rest), with the key as
//! the argument's id; a test checks that `config show` takes a flag for
//! every key, so a setting added here and not there fails the build's
//! tests rather than going unshown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Seconds to wait for a boot reply, unless set.
pub const DEFAULT_TOKEN_TIMEOUT_SECS: u64 = 15;
/// Seconds to wait for the connection and each acknowledgement, unless set.
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;
/// `agent --scan-interval`'s default, in milliseconds.
pub const DEFAULT_SCAN_INTERVAL_MS: u64 = 500;
/// `agent --rescan-interval`'s default, in seconds.
pub const DEFAULT_RESCAN_INTERVAL_SECS: u64 = 600;
/// `agent --summary-interval`'s default, in seconds.
pub const DEFAULT_SUMMARY_INTERVAL_SECS: u64 = 60;
/// `agent --ack-sync-interval`'s default, in milliseconds.
pub const DEFAULT_ACK_SYNC_INTERVAL_MS: u64 = 1000;
/// `agent --ble-max-connections`'s default.
pub const DEFAULT_BLE_MAX_CONNECTIONS: usize = 4;
/// `agent --ble-min-interval`'s default, in seconds.
pub const DEFAULT_BLE_MIN_INTERVAL_SECS: u64 = 30;
/// `agent --adapter`'s default.
pub const DEFAULT_ADAPTER: &str = "hci0";

/// What a setting is when nothing sets it.
#[derive(Debug, Clone)]
pub enum Fallback {
    /// A value, typed as the setting is.
    Value(Value),
    /// A default said in words (`ca`: the public roots), no value.
    Said(&'static str),
    /// Nothing: the setting is unset (and required where it is used).
    Unset,
}

impl Fallback {
    fn value(value: impl Serialize) -> Self {
        Fallback::Value(json!(value))
    }
}

/// One row of the table: a setting's key and how it is shown.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The config file's key, also the flag's argument id.
    pub key: &'static str,
    /// What it is when nothing sets it.
    pub fallback: Fallback,
    /// The unit a bare number is in (`s`, `ms`), for the text output.
    pub unit: &'static str,
    /// Shown only as set or not.
    pub secret: bool,
}

impl Spec {
    fn new(key: &'static str, fallback: Fallback) -> Self {
        Spec {
            key,
            fallback,
            unit: "",
            secret: false,
        }
    }

    /// A duration the file writes with a unit, kept in seconds.
    fn secs(self) -> Self {
        Spec { unit: "s", ..self }
    }

    /// A duration the file writes with a unit, kept in milliseconds.
    fn millis(self) -> Self {
        Spec { unit: "ms", ..self }
    }

    /// A value never printed.
    fn secret(self) -> Self {
        Spec {
            secret: true,
            ..self
        }
    }
}

/// A value of a setting's type, as clap keeps it for the setting's flag.
trait Given: Sized {
    fn given(matches: &ArgMatches, id: &str) -> Option<Self>;
}

macro_rules! given_one {
    ($($ty:ty),*) => {$(
        impl Given for $ty {
            fn given(matches: &ArgMatches, id: &str) -> Option<Self> {
                matches.try_get_one::<$ty>(id).ok().flatten().cloned()
            }
        }
    )*};
}
given_one!(String, PathBuf, bool, u16, u32, u64, usize, SocketAddr);

impl Given for Vec<String> {
    fn given(matches: &ArgMatches, id: &str) -> Option<Self> {
        let values = matches.try_get_many::<String>(id).ok().flatten()?;
        Some(values.cloned().collect())
    }
}

/// Declares the settings: each row is `key: Type = default` with the
/// serde attributes the file needs and the row's options (`secs`,
/// `millis`, `secret`).
macro_rules! settings {
    ($(
        $(#[$attr:meta])*
        $key:ident : $ty:ty = $fallback:expr $(, $option:ident)* ;
    )*) => {
        /// The config file's contents: every setting optional.
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct ConfigFile {
            $( $(#[$attr])* pub $key: Option<$ty>, )*
            /// Which file this came from, if any.
            #[serde(skip)]
            pub path: Option<PathBuf>,
            /// The line of each key the file has.
            #[serde(skip)]
            pub lines: HashMap<String, usize>,
        }

        /// The table, in the order `config show` prints it.
        pub fn specs() -> Vec<Spec> {
            vec![$( Spec::new(stringify!($key), $fallback)$(.$option())*, )*]
        }

        /// The config file's keys, in the table's order.
        pub const KEYS: &[&str] = &[$( stringify!($key), )*];

        /// Each setting's value from its flag (or the flag's variable),
        /// then from the file, typed as JSON.
        fn layers(matches: Option<&ArgMatches>, file: &ConfigFile) -> Vec<(Option<Value>, Option<Value>)> {
            vec![$(
                (
                    matches
                        .and_then(|m| <$ty as Given>::given(m, stringify!($key)))
                        .map(|v| json!(v)),
                    file.$key.as_ref().map(|v| json!(v)),
                ),
            )*]
        }
    };
}

settings! {
    broker: String = Fallback::value(ulogger_cloud::DEFAULT_BROKER);
    port: u16 = Fallback::value(ulogger_cloud::DEFAULT_PORT);
    cert: PathBuf = Fallback::Unset;
    key: PathBuf = Fallback::Unset;
    ca: PathBuf = Fallback::Said("the public roots");
    customer_id: u32 = Fallback::Unset;
    group_id: u32 = Fallback::value(ulogger_cloud::DEFAULT_GROUP_ID);
    legacy_topics: bool = Fallback::value(false);
    prefix: String = Fallback::value("");
    plaintext: bool = Fallback::value(false);
    no_pacing: bool = Fallback::value(false);
    connections: usize = Fallback::value(1);
    #[serde(default, deserialize_with = "crate::duration::secs_in_file")]
    token_timeout: u64 = Fallback::value(DEFAULT_TOKEN_TIMEOUT_SECS), secs;
    #[serde(default, deserialize_with = "crate::duration::secs_in_file")]
    timeout: u64 = Fallback::value(DEFAULT_TIMEOUT_SECS), secs;
    store: PathBuf = ulogger_cloud::SessionStore::default_path()
        .map_or(Fallback::Unset, Fallback::value);
    device_info: PathBuf = Fallback::Unset;
    app_id: u32 = Fallback::Unset;
    serial: String = Fallback::Unset;
    device_type: String = Fallback::Unset;
    git_version: String = Fallback::Unset;
    git_hash: String = Fallback::Unset;
    stamp_time: bool = Fallback::value(false);
    outbox: PathBuf = Fallback::Unset;
    /// `upload --jobs`.
    jobs: u64 = Fallback::Said("100 per connection");
    /// The HTTPS API's token: telemetry commands go over HTTPS with it.
    api_token: String = Fallback::Said("none: telemetry goes over MQTT"), secret;
    /// The HTTPS API's base URL.
    api_url: String = Fallback::value(ulogger_cloud::DEFAULT_API_URL);
    inbox: PathBuf = Fallback::Unset;
    rejected: PathBuf = Fallback::Said("a rejected folder beside the inbox");
    #[serde(default, deserialize_with = "crate::duration::millis_in_file")]
    scan_interval: u64 = Fallback::value(DEFAULT_SCAN_INTERVAL_MS), millis;
    #[serde(default, deserialize_with = "crate::duration::secs_in_file")]
    rescan_interval: u64 = Fallback::value(DEFAULT_RESCAN_INTERVAL_SECS), secs;
    /// `agent --poll`.
    poll: bool = Fallback::value(false);
    #[serde(default, deserialize_with = "crate::duration::secs_in_file")]
    summary_interval: u64 = Fallback::value(DEFAULT_SUMMARY_INTERVAL_SECS), secs;
    #[serde(default, deserialize_with = "crate::duration::millis_in_file")]
    ack_sync_interval: u64 = Fallback::value(DEFAULT_ACK_SYNC_INTERVAL_MS), millis;
    /// `agent --metrics-listen`.
    metrics_listen: SocketAddr = Fallback::Said("none: no metrics endpoint");
    // The agent's BLE settings: keys on every build (a file is shared
    // between hosts), read only where BLE is built in.
    /// `agent --ble`.
    ble: bool = Fallback::value(false);
    /// `agent --ble-name`, repeated.
    ble_names: Vec<String> = Fallback::value(Vec::<String>::new());
    /// `agent --ble-address`, repeated.
    ble_addresses: Vec<String> = Fallback::value(Vec::<String>::new());
    ble_max_connections: usize = Fallback::value(DEFAULT_BLE_MAX_CONNECTIONS);
    #[serde(default, deserialize_with = "crate::duration::secs_in_file")]
    ble_min_interval: u64 = Fallback::value(DEFAULT_BLE_MIN_INTERVAL_SECS), secs;
    /// `agent --adapter`.
    adapter: String = Fallback::value(DEFAULT_ADAPTER);
}

/// The line of each top-level key of a config file's text (empty when the
/// text does not parse: its error is reported elsewhere).
pub fn key_lines(text: &str) -> HashMap<String, usize> {
    let Ok(table) = toml::de::DeTable::parse(text) else {
        return HashMap::new();
    };
    table
        .get_ref()
        .keys()
        .map(|key| {
            let before = text.get(..key.span().start).unwrap_or(text);
            (key.get_ref().to_string(), before.matches('\n').count() + 1)
        })
        .collect()
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A flag on the command line.
    Flag(String),
    /// An environment variable (the flag's).
    Env(String),
    /// The config file, at this line when known.
    File(Option<usize>),
    /// Nothing set it.
    Default,
}

impl Source {
    /// The word `config show` says (`flag`, `environment`, `file`, `default`).
    pub fn word(&self) -> &'static str {
        match self {
            Source::Flag(_) => "flag",
            Source::Env(_) => "environment",
            Source::File(_) => "file",
            Source::Default => "default",
        }
    }
}

/// One setting's effective value.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The row it is for.
    pub spec: Spec,
    /// The value (typed), `None` when unset or a default said in words.
    pub value: Option<Value>,
    /// Where it came from.
    pub source: Source,
}

/// Every setting's effective value, merged from the command's flags and
/// their variables, the config file and the defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// In the table's order.
    pub entries: Vec<Entry>,
}

impl Settings {
    /// Merges `matches` (the matches of `command`, whose arguments' ids
    /// are the keys; `None` when only the file counts) over `file` over
    /// the defaults.
    pub fn merge(command: &Command, matches: Option<&ArgMatches>, file: &ConfigFile) -> Self {
        let entries = specs()
            .into_iter()
            .zip(layers(matches, file))
            .map(|(spec, (given, from_file))| {
                let (value, source) = match (given, from_file) {
                    (Some(value), _) => (Some(value), given_source(command, matches, spec.key)),
                    (None, Some(value)) => {
                        (Some(value), Source::File(file.lines.get(spec.key).copied()))
                    }
                    (None, None) => match &spec.fallback {
                        Fallback::Value(value) => (Some(value.clone()), Source::Default),
                        Fallback::Said(_) | Fallback::Unset => (None, Source::Default),
                    },
                };
                Entry {
                    spec,
                    value,
                    source,
                }
            })
            .collect();
        Settings { entries }
    }
}

/// A value clap gave: from the command line (the flag as written in
/// `command`) or from the flag's variable.
fn given_source(command: &Command, matches: Option<&ArgMatches>, key: &str) -> Source {
    let arg = command.get_arguments().find(|arg| arg.get_id() == key);
    match matches.and_then(|m| m.value_source(key)) {
        Some(ValueSource::EnvVariable) => Source::Env(
            arg.and_then(|arg| arg.get_env())
                .map(|var| var.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        _ => Source::Flag(
            arg.and_then(|arg| arg.get_long())
                .map_or_else(|| key.to_owned(), |long| format!("--{long}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_and_the_file_struct_have_the_same_keys() {
        assert_eq!(specs().len(), KEYS.len());
        assert_eq!(layers(None, &ConfigFile::default()).len(), KEYS.len());
        let mut sorted = KEYS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), KEYS.len(), "a key declared twice");
    }

    /// A flag anywhere in the CLI that reads a setting's variable is
    /// that setting: its id is the key (so the merge finds it) and its
    /// flag the key with `-` for `_`. (Other commands' flags may share a
    /// key's name for something else: `make-log --serial` writes one.)
    #[test]
    fn every_flag_reading_a_setting_s_variable_is_that_setting() {
        use clap::CommandFactory;

        fn walk(command: &Command, path: &str, seen: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
                    continue;
                };
                let Some(key) = KEYS
                    .iter()
                    .find(|key| env == format!("ULOGGER_{}", key.to_uppercase()))
                else {
                    continue;
                };
                seen.push(env.to_owned());
                assert_eq!(arg.get_id().as_str(), *key, "{path}: {env}");
                let long = key.replace('_', "-");
                assert_eq!(arg.get_long(), Some(long.as_str()), "{path}: {env}");
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), seen);
            }
        }
        let mut cli = crate::Cli::command();
        cli.build();
        let mut seen = Vec::new();
        walk(&cli, "ulogger", &mut seen);
        assert!(seen.iter().any(|e| e == "ULOGGER_API_TOKEN"), "{seen:?}");
    }

    #[test]
    fn key_lines_are_one_based_and_skip_comments() {
        let lines = key_lines("# a comment\nport = 1\n\n  serial = \"x\"\n");
        assert_eq!(lines.get("port"), Some(&2));
        assert_eq!(lines.get("serial"), Some(&4));
        assert!(key_lines("port = = 1").is_empty());
    }

    #[test]
    fn a_file_value_says_its_line_and_a_missing_one_its_default() {
        let command = Command::new("t");
        let mut file: ConfigFile = toml::from_str("\nport = 1234\n").unwrap();
        file.lines = key_lines("\nport = 1234\n");
        let settings = Settings::merge(&command, None, &file);
        let entry = |key: &str| {
            settings
                .entries
                .iter()
                .find(|e| e.spec.key == key)
                .unwrap()
                .clone()
        };
        assert_eq!(entry("port").value, Some(json!(1234)));
        assert_eq!(entry("port").source, Source::File(Some(2)));
        assert_eq!(entry("timeout").value, Some(json!(DEFAULT_TIMEOUT_SECS)));
        assert_eq!(entry("timeout").source, Source::Default);
        assert_eq!(entry("ble_names").value, Some(json!([])));
        assert_eq!(entry("customer_id").value, None);
    }
}
