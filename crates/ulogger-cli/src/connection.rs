//! Settings from flags, `ULOGGER_*` environment variables and a config
//! file, in that order of precedence; the one place every command reads
//! them from.
//!
//! clap resolves flag-over-environment; values neither gives are taken from
//! the config file (`--config`, `ULOGGER_CONFIG`, or
//! `$ULOGGER_HOME/config.toml`, default `~/.ulogger/config.toml` when it
//! exists), then from the library's defaults. The file's keys are the
//! flags' names with `_` for `-`; an unknown key is an error naming it,
//! its line and the nearest valid key ([`UnknownKey`]), reported before
//! anything else is checked.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, Context};
use ulogger_cloud::{MqttConfig, Pacing, Security, SessionStore, StoreError};

use crate::exit::{self, Exit, Failure};

pub use crate::settings::{ConfigFile, DEFAULT_TIMEOUT_SECS, DEFAULT_TOKEN_TIMEOUT_SECS};

/// The config file: what every command that reads settings takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArg {
    /// Config file (TOML) with defaults for every setting
    /// [default: ~/.ulogger/config.toml, read if it exists; $ULOGGER_HOME
    /// stands for ~/.ulogger].
    #[arg(long, env = "ULOGGER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The config file, once read.
    #[arg(skip)]
    loaded: OnceLock<ConfigFile>,
}

impl ConfigArg {
    /// The config file (read once; empty when there is none).
    pub fn file(&self) -> Result<&ConfigFile, Exit> {
        if let Some(file) = self.loaded.get() {
            return Ok(file);
        }
        let file = load_file(self.config.as_deref())?;
        Ok(self.loaded.get_or_init(|| file))
    }
}

/// The config file and the session-token store: what every command that
/// touches the token store takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FileArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Session-token cache file [default: ~/.ulogger/session_tokens.json;
    /// $ULOGGER_HOME stands for ~/.ulogger].
    #[arg(long, env = "ULOGGER_STORE", value_name = "FILE")]
    pub store: Option<PathBuf>,
}

/// How to reach the broker.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectionArgs {
    #[command(flatten)]
    pub files: FileArgs,
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
    /// Group id, the topics' group level; 0 means no groups [default: 0].
    #[arg(long, env = "ULOGGER_GROUP_ID")]
    pub group_id: Option<u32>,
    /// Use the original topic layout without the group level, for an old
    /// broker or bridge of your own. The uLogger cloud does NOT route it:
    /// what is sent that way is acknowledged and then dropped
    /// [default: false].
    #[arg(long, env = "ULOGGER_LEGACY_TOPICS", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = boolish)]
    pub legacy_topics: Option<bool>,
    /// Prefix put before every topic, as-is.
    #[arg(long, env = "ULOGGER_PREFIX")]
    pub prefix: Option<String>,
    /// Connect WITHOUT TLS (local brokers only) [default: false].
    #[arg(long, env = "ULOGGER_PLAINTEXT", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = boolish)]
    pub plaintext: Option<bool>,
    /// Publish as fast as the broker takes it, instead of pacing to the
    /// platform's per-connection limits (100 publishes/s, 512 KiB/s), and
    /// register devices without the cap of 10/s that keeps a customer
    /// clear of the platform's quarantine. For local brokers
    /// [default: false].
    #[arg(long, env = "ULOGGER_NO_PACING", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = boolish)]
    pub no_pacing: Option<bool>,
    /// Connections sharing the load, each with its own client id and the
    /// platform's per-connection limits [default: 1].
    #[arg(long, env = "ULOGGER_CONNECTIONS", value_name = "N")]
    pub connections: Option<usize>,
    /// Seconds to wait for a boot reply [default: 15s].
    #[arg(long, env = "ULOGGER_TOKEN_TIMEOUT", value_name = "SECS", value_parser = crate::duration::secs)]
    pub token_timeout: Option<u64>,
    /// Seconds to wait for the connection, and for each acknowledgement
    /// [default: 10s].
    #[arg(long, env = "ULOGGER_TIMEOUT", value_name = "SECS", value_parser = crate::duration::secs)]
    pub timeout: Option<u64>,
    /// Keep session tokens in memory only (register on every run); not
    /// with --store.
    #[arg(long)]
    pub no_store: bool,
}

/// `$ULOGGER_HOME/config.toml`, `ULOGGER_HOME` defaulting to `~/.ulogger`.
pub fn default_config_path() -> Option<PathBuf> {
    let home = std::env::var_os("ULOGGER_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ulogger")))?;
    Some(home.join("config.toml"))
}

fn load_file(explicit: Option<&Path>) -> Result<ConfigFile, Exit> {
    let bad = |e: anyhow::Error| Exit::new(Failure::BadInput, e);
    let path = match explicit {
        Some(path) => {
            if !path.exists() {
                return Err(bad(anyhow!(
                    "the config file {} does not exist (named by --config or ULOGGER_CONFIG)",
                    path.display()
                )));
            }
            path.to_path_buf()
        }
        None => match default_config_path() {
            Some(path) if path.exists() => path,
            _ => return Ok(ConfigFile::default()),
        },
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the config file {}", path.display()))
        .map_err(bad)?;
    let mut file = parse_config(&text, &path)?;
    file.path = Some(path);
    Ok(file)
}

/// Reads the text of the config file `path` (also the emulator's
/// `client.toml`): a key that is no setting is an [`UnknownKey`] with the
/// nearest valid one, any other mistake is said with its line, in the
/// user's words.
pub fn parse_config(text: &str, path: &Path) -> Result<ConfigFile, Exit> {
    let mut file: ConfigFile = toml::from_str(text).map_err(|error| {
        let line = error.span().map(|span| line_of(text, span.start));
        if let Some(key) = unknown_key(text, &error) {
            let nearest = crate::environment::nearest(&key, config_keys().iter().copied());
            let hint = nearest.is_none().then(|| {
                "a key is a flag's name with _ for - (customer_id, token_timeout); `ulogger config show` lists every setting".to_owned()
            });
            let unknown = UnknownKey {
                key,
                file: path.to_path_buf(),
                line,
                nearest,
            };
            return Exit::new(Failure::BadInput, unknown).with_hint(hint);
        }
        let place = line.map(|n| format!(", line {n}")).unwrap_or_default();
        Exit::new(
            Failure::BadInput,
            anyhow!(
                "invalid config file {}{place}: {}",
                path.display(),
                in_user_words(error.message())
            ),
        )
    })?;
    file.lines = crate::settings::key_lines(text);
    Ok(file)
}

/// A key in a config file that is no setting: named with its file, its
/// line and the valid key it is likely a slip for.
#[derive(Debug)]
pub struct UnknownKey {
    pub key: String,
    pub file: PathBuf,
    pub line: Option<usize>,
    pub nearest: Option<&'static str>,
}

impl std::fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown key `{}` in the config file {}",
            self.key,
            self.file.display()
        )?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        match self.nearest {
            Some(near) => write!(f, ": did you mean `{near}`?"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for UnknownKey {}

/// The key `error` is about when it is one the file has and no setting
/// takes: the key at the error's place (another mistake before it is
/// reported first, as itself), else, for an error without a place that is
/// about an unknown key, the first such key.
fn unknown_key(text: &str, error: &toml::de::Error) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    let valid = config_keys();
    let unknown: Vec<&String> = table
        .keys()
        .filter(|key| !valid.contains(&key.as_str()))
        .collect();
    let at = error
        .span()
        .and_then(|span| text.get(span))
        .map(|key| key.trim().trim_matches(|c| c == '"' || c == '\''));
    match at {
        Some(at) => unknown.iter().find(|key| key.as_str() == at),
        None if error.message().contains("unknown field") => unknown.first(),
        None => None,
    }
    .map(|key| (*key).clone())
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let before = text.get(..offset).unwrap_or(text);
    before.matches('\n').count() + 1
}

/// serde's type names (`expected u16`) said as a person would.
fn in_user_words(message: &str) -> String {
    [
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number"),
        ("expected usize", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
        ("expected path string", "expected a path in quotes"),
    ]
    .iter()
    .fold(message.trim().to_owned(), |text, (from, to)| {
        text.replace(from, to)
    })
}

/// The keys a config file may hold: the settings table's.
pub fn config_keys() -> &'static [&'static str] {
    crate::settings::KEYS
}

impl FileArgs {
    /// The config file (read once; empty when there is none).
    pub fn file(&self) -> Result<&ConfigFile, Exit> {
        self.config.file()
    }

    /// The session-token file: flag or environment, else the config
    /// file's `store`, else the default.
    pub fn store_path(&self) -> Result<PathBuf, Exit> {
        let from_file = self.file()?.store.clone();
        match self.store.clone().or(from_file) {
            Some(path) => Ok(path),
            None => SessionStore::default_path().map_err(store_failure),
        }
    }
}

/// A session-token store error, with the way out of a corrupt file.
pub fn store_failure(error: StoreError) -> Exit {
    let (failure, hint) = match &error {
        StoreError::Corrupt { path, .. } => {
            (Failure::BadInput, Some(exit::corrupt_store_hint(path)))
        }
        StoreError::NoHomeDir => (Failure::BadInput, None),
        _ => (Failure::Internal, None),
    };
    Exit::new(failure, error).with_hint(hint)
}

impl ConnectionArgs {
    /// The config file (read once).
    pub fn file(&self) -> Result<&ConfigFile, Exit> {
        self.files.file()
    }

    /// The broker settings and the session-token store, from flags and
    /// environment over the config file.
    pub fn resolve(&self) -> Result<(MqttConfig, SessionStore), Exit> {
        let file = self.file()?;
        let config = self.mqtt_config(file)?;
        Ok((config, self.session_store()?))
    }

    /// True when the connection is to go without TLS.
    pub fn is_plaintext(&self, file: &ConfigFile) -> bool {
        self.plaintext.or(file.plaintext).unwrap_or(false)
    }

    /// The broker settings alone (no session store), from flags and
    /// environment over the config file.
    pub fn mqtt_config(&self, file: &ConfigFile) -> Result<MqttConfig, Exit> {
        let customer_id = self.customer_id.or(file.customer_id).ok_or_else(|| {
            bad_input("no customer id: pass --customer-id, set ULOGGER_CUSTOMER_ID or customer_id in the config file")
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
        let group = self.topic_group(file)?;
        match group {
            Some(group) => config = config.group_id(group),
            None => config = config.legacy_topics(),
        }
        let prefix = self.prefix.clone().or_else(|| file.prefix.clone());
        if let Some(prefix) = &prefix {
            config = config.topic_prefix(prefix.clone());
        }
        let plaintext = self.is_plaintext(file);
        if plaintext {
            config = config.security(Security::Plaintext);
        }
        config = config.pacing(self.pacing(file));
        if self.no_pacing.or(file.no_pacing).unwrap_or(false) {
            // A local broker: no platform alarm to keep clear of either.
            config = config.registration_limit(ulogger_cloud::RegistrationLimit::off());
        }
        if let Some(connections) = self.connections.or(file.connections) {
            config = config.connections(connections);
        }
        let token_timeout = self.token_timeout.or(file.token_timeout);
        if let Some(secs) = token_timeout {
            config = config.token_timeout(Duration::from_secs(secs));
        }
        if let Some(secs) = self.timeout.or(file.timeout) {
            config = config
                .connect_timeout(Duration::from_secs(secs))
                .ack_timeout(Duration::from_secs(secs));
        }
        exit::remember(exit::HintContext {
            plaintext,
            customer_id,
            group_id: group,
            prefix: prefix.unwrap_or_default(),
            token_timeout_secs: token_timeout.unwrap_or(DEFAULT_TOKEN_TIMEOUT_SECS),
        });
        Ok(config)
    }

    /// The topics' group level: the group id (default 0), or `None` for
    /// the legacy layout without one. A flag (or variable) outranks the
    /// config file, so `--legacy-topics` works with a file that names a
    /// group; both at the same level contradict each other.
    pub fn topic_group(&self, file: &ConfigFile) -> Result<Option<u32>, Exit> {
        let contradiction = |group: u32, place: &str| {
            Err(bad_input(&format!(
                "legacy topics drop the group level, so group id {group} cannot go with them \
                 ({place}): remove one of them (the uLogger cloud routes only topics with a \
                 group level)"
            )))
        };
        match (self.legacy_topics, self.group_id) {
            (Some(true), Some(group)) => {
                return contradiction(group, "--legacy-topics and --group-id")
            }
            (Some(true), None) => return Ok(None),
            (_, Some(group)) => return Ok(Some(group)),
            (Some(false), None) => {
                return Ok(Some(
                    file.group_id.unwrap_or(ulogger_cloud::DEFAULT_GROUP_ID),
                ))
            }
            (None, None) => {}
        }
        match (file.legacy_topics.unwrap_or(false), file.group_id) {
            (true, Some(group)) => {
                contradiction(group, "legacy_topics and group_id in the config file")
            }
            (true, None) => Ok(None),
            (false, group) => Ok(Some(group.unwrap_or(ulogger_cloud::DEFAULT_GROUP_ID))),
        }
    }

    /// The platform's pacing unless the flag, the environment or the
    /// file turns it off.
    fn pacing(&self, file: &ConfigFile) -> Pacing {
        if self.no_pacing.or(file.no_pacing).unwrap_or(false) {
            Pacing::off()
        } else {
            Pacing::platform()
        }
    }

    fn session_store(&self) -> Result<SessionStore, Exit> {
        if self.no_store {
            // Both on the command line contradict each other; a store
            // from ULOGGER_STORE (a profile's default) yields to the flag.
            let from_env = std::env::var_os("ULOGGER_STORE").map(PathBuf::from);
            if let Some(store) = self
                .files
                .store
                .as_ref()
                .filter(|s| Some(*s) != from_env.as_ref())
            {
                return Err(Exit::new(
                    Failure::BadInput,
                    anyhow!(
                        "--no-store keeps tokens in memory only, and --store {} names a file for them: give one of the two",
                        store.display()
                    ),
                ));
            }
            return Ok(SessionStore::in_memory());
        }
        SessionStore::open(self.files.store_path()?).map_err(store_failure)
    }
}

/// A required setting that no flag, variable or file key gave.
pub fn missing(flag: &str) -> Exit {
    let key = flag.replace('-', "_");
    Exit::new(
        Failure::BadInput,
        anyhow!(
            "no {flag}: pass --{flag}, set ULOGGER_{} or {key} in the config file",
            key.to_uppercase()
        ),
    )
}

/// A yes/no value, as flags and `ULOGGER_*` variables take it: `1`,
/// `true`, `yes`, `on` or `0`, `false`, `no`, `off`, in any case.
pub fn boolish(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected 1, true, yes, on (or 0, false, no, off)".to_owned()),
    }
}

fn bad_input(message: &str) -> Exit {
    Exit::new(Failure::BadInput, anyhow!("{message}"))
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
            no_pacing: Some(true),
            ..ConnectionArgs::default()
        };
        assert_eq!(no_pacing.pacing(&file("no_pacing = false")), Pacing::off());
        let paced = ConnectionArgs {
            no_pacing: Some(false),
            ..ConnectionArgs::default()
        };
        assert_eq!(paced.pacing(&file("no_pacing = true")), Pacing::platform());
    }

    #[test]
    fn booleans_take_the_usual_spellings() {
        for yes in ["1", "true", "YES", "On", "y e s"] {
            assert_eq!(boolish(yes).ok(), (yes != "y e s").then_some(true), "{yes}");
        }
        for no in ["0", "False", "no", "OFF"] {
            assert_eq!(boolish(no), Ok(false), "{no}");
        }
        assert!(boolish("maybe").is_err());
    }

    #[test]
    fn the_keys_are_the_structs_fields() {
        let keys = config_keys();
        for key in ["customer_id", "token_timeout", "metrics_listen", "outbox"] {
            assert!(keys.contains(&key), "{key}: {keys:?}");
        }
        assert!(!keys.contains(&"path"), "not a key: {keys:?}");
    }

    #[test]
    fn an_unknown_key_names_its_line_and_nearest_key() {
        let text = "customer_id = 42\n\ntoken_timeot = \"5s\"\n";
        let exit = parse_config(text, Path::new("/etc/u.toml")).unwrap_err();
        let unknown = exit.error.downcast_ref::<UnknownKey>().unwrap();
        assert_eq!(unknown.key, "token_timeot");
        assert_eq!(unknown.line, Some(3));
        assert_eq!(unknown.nearest, Some("token_timeout"));
        assert_eq!(exit.failure, Failure::BadInput);
        assert!(exit.hint.is_none());
    }

    #[test]
    fn a_wrong_value_met_before_an_unknown_key_is_said_at_its_own_line() {
        // toml visits keys in sorted order: `port` before `zzz`.
        let text = "zzz = 1\nport = \"abc\"\n";
        let exit = parse_config(text, Path::new("u.toml")).unwrap_err();
        assert!(exit.error.downcast_ref::<UnknownKey>().is_none());
        assert!(
            exit.error
                .to_string()
                .starts_with("invalid config file u.toml, line 2: "),
            "{}",
            exit.error
        );
    }

    #[test]
    fn device_identity_keys_are_config_file_keys() {
        let file: ConfigFile = toml::from_str(
            "app_id = 7\nserial = \"SN\"\ndevice_type = \"b\"\ngit_version = \"v\"\ngit_hash = \"h\"\ndevice_info = \"d.bin\"",
        )
        .unwrap();
        assert_eq!(file.app_id, Some(7));
        assert_eq!(file.device_info, Some(PathBuf::from("d.bin")));
    }
}
