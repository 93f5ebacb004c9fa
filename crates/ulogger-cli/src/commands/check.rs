//! `ulogger check` (alias `doctor`): walks the path from this gateway to
//! the cloud a link at a time and says where it breaks.
//!
//! The links of the network chain (name resolution, TCP, TLS, MQTT
//! CONNECT, a registration) each need the one before: after the first
//! broken link the rest are skipped, naming what they need. The local
//! steps (settings, certificate files, outbox) and the HTTP API have
//! paths of their own and always run. The TLS handshake and the MQTT
//! CONNECT are this command's own, made with the library's TLS
//! configuration, so each failure lands on its link and says which side
//! refused; the registration goes through the library's client, as an
//! upload would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};
use serde_json::{json, Value};
use ulogger_cloud::wire::DeviceInfo;
use ulogger_cloud::{Client, ErrorKind, MqttConfig, OutboxStatus, DEFAULT_API_URL};

use crate::connection::{
    ConfigFile, ConnectionArgs, DEFAULT_TIMEOUT_SECS, DEFAULT_TOKEN_TIMEOUT_SECS,
};
use crate::exit::{self, Exit, Failure};
use crate::Global;

/// Arguments of `ulogger check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// A test device's serial: register it (a boot round trip) to prove
    /// the cloud answers. Without it that step is skipped; never taken
    /// from ULOGGER_SERIAL, so a real device is not registered by accident.
    #[arg(long, value_name = "SERIAL")]
    serial: Option<String>,
    /// Application id of the test device [also `app_id` in the config file].
    #[arg(long, env = "ULOGGER_APP_ID", value_name = "ID")]
    app_id: Option<u32>,
    /// The outbox directory to check (writable, in use by whom, free space)
    /// [also `outbox` in the config file].
    #[arg(long, env = "ULOGGER_OUTBOX", value_name = "DIR")]
    outbox: Option<PathBuf>,
    /// The HTTP API's base URL [default: `https://api.ulogger.ai`; also
    /// `api_url` in the config file].
    #[arg(long, env = "ULOGGER_API_URL", value_name = "URL")]
    api_url: Option<String>,
    /// API token to try [also `api_token` in the config file]; without
    /// one the API step is skipped.
    #[arg(
        long,
        env = "ULOGGER_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    api_token: Option<String>,
    /// Also check BlueZ: the system bus (DBUS_SYSTEM_BUS_ADDRESS honoured),
    /// `org.bluez` and the adapter.
    #[cfg(all(feature = "ble", target_os = "linux"))]
    #[arg(long)]
    ble: bool,
    /// The BlueZ adapter to check with --ble.
    #[cfg(all(feature = "ble", target_os = "linux"))]
    #[arg(long, default_value = "hci0", value_name = "NAME")]
    adapter: String,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Fail,
    Skip,
}

/// One step's verdict, as printed.
#[derive(Debug)]
struct Step {
    name: &'static str,
    status: Status,
    detail: String,
    hint: Option<String>,
    /// The exit code a failure means.
    failure: Failure,
    /// More for `--json` (the settings list).
    extra: Option<(&'static str, Value)>,
}

impl Step {
    fn ok(name: &'static str, detail: impl Into<String>) -> Step {
        Step {
            name,
            status: Status::Ok,
            detail: detail.into(),
            hint: None,
            failure: Failure::Internal,
            extra: None,
        }
    }

    fn skip(name: &'static str, detail: impl Into<String>) -> Step {
        Step {
            status: Status::Skip,
            ..Step::ok(name, detail)
        }
    }

    /// Skipped because `needed` did not pass.
    fn needs(name: &'static str, needed: &str) -> Step {
        Step::skip(name, format!("needs {needed}"))
    }

    fn fail(name: &'static str, failure: Failure, detail: impl Into<String>) -> Step {
        Step {
            status: Status::Fail,
            failure,
            ..Step::ok(name, detail)
        }
    }

    /// A failure reported as the command itself would report it.
    fn from_exit(name: &'static str, exit: &Exit) -> Step {
        Step {
            hint: exit.hint.clone(),
            ..Step::fail(name, exit.failure, exit::chain(&exit.error))
        }
    }

    /// A library error, with the message and hint a command gives for it.
    fn from_cloud(name: &'static str, error: &ulogger_cloud::Error) -> Step {
        Step {
            hint: exit::hint(error),
            ..Step::fail(name, exit::classify(error), exit::message(error))
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Step {
        self.hint = Some(hint.into());
        self
    }

    fn passed(&self) -> bool {
        self.status == Status::Ok
    }
}

/// The steps printed so far.
struct Report {
    json: bool,
    steps: Vec<Step>,
}

impl Report {
    /// Prints `step` at once (a slow link shows where the walk is).
    fn emit(&mut self, step: Step) -> bool {
        let status = match step.status {
            Status::Ok => "ok",
            Status::Fail => "fail",
            Status::Skip => "skip",
        };
        if self.json {
            let mut line = json!({
                "step": step.name,
                "status": status,
                "detail": step.detail,
                "hint": step.hint,
            });
            if let (Some((key, value)), Some(object)) = (&step.extra, line.as_object_mut()) {
                object.insert((*key).to_owned(), value.clone());
            }
            outln!("{line}");
        } else {
            let status = if step.status == Status::Fail {
                "FAIL"
            } else {
                status
            };
            outln!("{status:<4} {}: {}", step.name, step.detail);
            if let Some(hint) = &step.hint {
                outln!("       hint: {hint}");
            }
        }
        let passed = step.passed();
        self.steps.push(step);
        passed
    }

    fn finish(self) -> Result<(), Exit> {
        let count = |status| self.steps.iter().filter(|s| s.status == status).count();
        let (ok, failed, skipped) = (count(Status::Ok), count(Status::Fail), count(Status::Skip));
        let first = self.steps.iter().find(|s| s.status == Status::Fail);
        if self.json {
            outln!(
                "{}",
                json!({"summary": {
                    "ok": ok,
                    "failed": failed,
                    "skipped": skipped,
                    "first_failure": first.map(|s| s.name),
                }})
            );
        } else {
            outln!("{ok} ok, {failed} failed, {skipped} skipped");
        }
        match first {
            None => Ok(()),
            Some(step) => Err(Exit::new(
                step.failure,
                anyhow!(
                    "{failed} of {} checks failed, the first: {}",
                    self.steps.len(),
                    step.name
                ),
            )),
        }
    }
}

/// Runs `ulogger check`.
pub fn run(global: Global, args: Args) -> Result<(), Exit> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut report = Report {
        json: global.json,
        steps: Vec::new(),
    };
    let file = args.connection.file();
    let (settings, checked) = settings(&args, file.as_ref().ok().copied(), file.as_ref().err());
    let (config, loaded) = checked.unzip();
    report.emit(settings);
    let empty = ConfigFile::default();
    let file = file.unwrap_or(&empty);
    let timeout = Duration::from_secs(
        args.connection
            .timeout
            .or(file.timeout)
            .unwrap_or(DEFAULT_TIMEOUT_SECS)
            .max(1),
    );

    let tls = match loaded {
        Some(loaded) => {
            let (step, tls) = certificate(&args.connection, file, loaded);
            report.emit(step);
            tls
        }
        None => {
            report.emit(Step::needs("certificate", "settings"));
            None
        }
    };

    let chain = config.as_ref().zip(tls);
    let addrs = match &chain {
        Some((config, _)) => {
            let (step, addrs) = runtime.block_on(resolve(config, timeout));
            report.emit(step);
            addrs
        }
        None => {
            let needed = if config.is_some() {
                "certificate"
            } else {
                "settings"
            };
            report.emit(Step::needs("resolve", needed));
            None
        }
    };
    let stream = match addrs {
        Some(addrs) => {
            let (step, stream) = tcp(&addrs, timeout);
            report.emit(step);
            stream
        }
        None => {
            report.emit(Step::needs("tcp", "resolve"));
            None
        }
    };
    let connected = match (stream, chain) {
        (Some(stream), Some((config, tls))) => {
            let (tls_step, mqtt_step) = handshake(stream, config, tls, timeout);
            report.emit(tls_step);
            report.emit(mqtt_step)
        }
        _ => {
            report.emit(Step::needs("tls", "tcp"));
            report.emit(Step::needs("mqtt", "tcp"));
            false
        }
    };
    match config.as_ref().filter(|_| connected) {
        Some(config) => {
            let step = runtime.block_on(register(&args, file, config));
            report.emit(step);
        }
        None => {
            report.emit(Step::needs("register", "mqtt"));
        }
    }

    report.emit(runtime.block_on(api(&args, file, timeout)));
    report.emit(outbox(&args, file));
    #[cfg(all(feature = "ble", target_os = "linux"))]
    if args.ble {
        report.emit(runtime.block_on(bluez(&args.adapter, timeout)));
    }
    let result = report.finish();
    // A name lookup that timed out still holds a blocking thread: do not
    // wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// One row of the settings step: key, value, where it came from.
fn row(key: &'static str, value: Value, source: &'static str) -> Value {
    json!({"key": key, "value": value, "source": source})
}

/// The effective connection settings and their sources; the
/// configuration they make and its TLS files loaded (`None` when they do
/// not make one).
fn settings(
    args: &Args,
    file: Option<&ConfigFile>,
    file_error: Option<&Exit>,
) -> (Step, Option<(MqttConfig, Loaded)>) {
    const NAME: &str = "settings";
    if let Some(error) = file_error {
        return (Step::from_exit(NAME, error), None);
    }
    let empty = ConfigFile::default();
    let file = file.unwrap_or(&empty);
    let matches = check_matches();
    let source = |key: &str, given: bool, in_file: bool| -> &'static str {
        if given {
            match matches.as_ref().and_then(|m| m.value_source(key)) {
                Some(ValueSource::EnvVariable) => "environment",
                _ => "flag",
            }
        } else if in_file {
            "config file"
        } else {
            "default"
        }
    };
    let c = &args.connection;
    let mut rows = Vec::new();
    // (key, flag or variable, config file, default)
    let mut add =
        |key: &'static str, given: Option<Value>, in_file: Option<Value>, default: Value| {
            let from = source(key, given.is_some(), in_file.is_some());
            let value = given.or(in_file).unwrap_or(default);
            rows.push(row(key, value, from));
        };
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| json!(p.display().to_string()));
    let num = |n: Option<u64>| n.map(|n| json!(n));
    add(
        "broker",
        c.broker.clone().map(Value::from),
        file.broker.clone().map(Value::from),
        json!(ulogger_cloud::DEFAULT_BROKER),
    );
    add(
        "port",
        num(c.port.map(u64::from)),
        num(file.port.map(u64::from)),
        json!(ulogger_cloud::DEFAULT_PORT),
    );
    add(
        "customer_id",
        num(c.customer_id.map(u64::from)),
        num(file.customer_id.map(u64::from)),
        Value::Null,
    );
    add(
        "group_id",
        num(c.group_id.map(u64::from)),
        num(file.group_id.map(u64::from)),
        json!(ulogger_cloud::DEFAULT_GROUP_ID),
    );
    add(
        "legacy_topics",
        c.legacy_topics.map(Value::from),
        file.legacy_topics.map(Value::from),
        json!(false),
    );
    add(
        "prefix",
        c.prefix.clone().map(Value::from),
        file.prefix.clone().map(Value::from),
        json!(""),
    );
    add(
        "plaintext",
        c.plaintext.map(Value::from),
        file.plaintext.map(Value::from),
        json!(false),
    );
    add("cert", path(&c.cert), path(&file.cert), Value::Null);
    add("key", path(&c.key), path(&file.key), Value::Null);
    add("ca", path(&c.ca), path(&file.ca), json!("the public roots"));
    add(
        "timeout",
        num(c.timeout),
        num(file.timeout),
        json!(DEFAULT_TIMEOUT_SECS),
    );
    add(
        "token_timeout",
        num(c.token_timeout),
        num(file.token_timeout),
        json!(DEFAULT_TOKEN_TIMEOUT_SECS),
    );
    add(
        "api_url",
        args.api_url.clone().map(Value::from),
        file.api_url.clone().map(Value::from),
        json!(DEFAULT_API_URL),
    );
    let hidden = |t: &Option<String>| t.as_ref().map(|_| json!("(set, not shown)"));
    add(
        "api_token",
        hidden(&args.api_token),
        hidden(&file.api_token),
        Value::Null,
    );
    add(
        "outbox",
        path(&args.outbox),
        path(&file.outbox),
        Value::Null,
    );
    let config_path = c.files.config.config.clone().or_else(|| file.path.clone());
    let config_source = match &c.files.config.config {
        Some(_) => source("config", true, false),
        None => "default",
    };
    rows.insert(
        0,
        row(
            "config",
            config_path.map_or(Value::Null, |p| json!(p.display().to_string())),
            config_source,
        ),
    );
    let shown: Vec<String> = rows
        .iter()
        .filter(|r| !r["value"].is_null())
        .map(|r| {
            let value = match &r["value"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let source = r["source"].as_str().unwrap_or_default();
            format!(
                "{}={value} ({source})",
                r["key"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let extra = Some(("settings", Value::Array(rows)));
    let config = c.mqtt_config(file).and_then(|config| {
        // Values no flag parser bounds (port 0, a zero time-out, plaintext
        // with TLS files) are the settings' fault; the files' own failures
        // are the next step's.
        match config.tls_client_config() {
            Err(error) if matches!(error.kind(), ErrorKind::InvalidConfig { .. }) => {
                Err(exit::from_cloud(error))
            }
            loaded => Ok((config, loaded)),
        }
    });
    match config {
        Ok(config) => (
            Step {
                extra,
                ..Step::ok(NAME, shown.join(", "))
            },
            Some(config),
        ),
        Err(exit) => (
            Step {
                extra,
                ..Step::from_exit(NAME, &exit)
            },
            None,
        ),
    }
}

/// The matches of `check` as clap saw them, to tell a flag from an
/// environment variable.
fn check_matches() -> Option<ArgMatches> {
    let matches = crate::Cli::command().try_get_matches().ok()?;
    let (_, check) = matches.subcommand()?;
    Some(check.clone())
}

/// The TLS configuration of a connection: `None` without TLS.
type Tls = Option<Arc<rustls::ClientConfig>>;

/// The TLS files as the library loaded them (once: it warns of plaintext
/// at each load).
type Loaded = Result<Tls, ulogger_cloud::Error>;

/// The client certificate, its key and the CA, as a connection loads
/// them; the TLS configuration they make, unless they fail.
fn certificate(
    connection: &ConnectionArgs,
    file: &ConfigFile,
    loaded: Loaded,
) -> (Step, Option<Tls>) {
    const NAME: &str = "certificate";
    let tls = match loaded {
        Ok(Some(tls)) => tls,
        Ok(None) => return (Step::skip(NAME, "plaintext: no TLS"), Some(None)),
        Err(error) => return (Step::from_cloud(NAME, &error), None),
    };
    let cert = connection.cert.clone().or_else(|| file.cert.clone());
    let key = connection.key.clone().or_else(|| file.key.clone());
    let ca = connection.ca.clone().or_else(|| file.ca.clone());
    let trust = match &ca {
        Some(ca) => format!("trusting the CA in {}", ca.display()),
        None => "trusting the public roots".to_owned(),
    };
    let step = match cert.zip(key) {
        Some((cert, key)) => match expiry(&cert) {
            Some(Validity::Expired(when)) => Step::fail(
                NAME,
                Failure::BadInput,
                format!("client certificate {} expired {when}", cert.display()),
            )
            .hint("the broker refuses an expired certificate: install a new one (--cert, --key)"),
            validity => {
                let until = match validity {
                    Some(Validity::Until(when)) => format!(", valid until {when}"),
                    _ => String::new(),
                };
                Step::ok(
                    NAME,
                    format!(
                        "client certificate {} and key {} match{until}; {trust}",
                        cert.display(),
                        key.display()
                    ),
                )
            }
        },
        None => Step::ok(
            NAME,
            format!(
                "no client certificate (--cert, --key): the uLogger broker asks for one; {trust}"
            ),
        ),
    };
    let usable = step.passed().then_some(Some(tls));
    (step, usable)
}

/// A certificate's end of validity, against the clock.
enum Validity {
    Until(String),
    Expired(String),
}

/// When the first certificate in the PEM file `path` expires, if it can
/// be read (the file was loaded already: failures here only lose the date).
fn expiry(path: &Path) -> Option<Validity> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).ok()?;
    let cert = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()?
        .ok()?;
    let not_after = not_after(&cert)?;
    let now = time::OffsetDateTime::now_utc();
    let now = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let part = |range: std::ops::Range<usize>| not_after.get(range).unwrap_or_default();
    let shown = format!(
        "{}-{}-{} {}:{}:{} UTC",
        part(0..4),
        part(4..6),
        part(6..8),
        part(8..10),
        part(10..12),
        part(12..14)
    );
    Some(if not_after < now {
        Validity::Expired(shown)
    } else {
        Validity::Until(shown)
    })
}

/// The `notAfter` of an X.509 certificate (DER) as `YYYYMMDDHHMMSS`.
fn not_after(der: &[u8]) -> Option<String> {
    let (_, certificate, _) = tlv(der)?;
    let (_, tbs, _) = tlv(certificate)?;
    let mut rest = tbs;
    // The version ([0], optional), serial number, signature algorithm,
    // issuer, then the validity.
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (_, validity, _) = tlv(rest)?;
    let (_, _, after_not_before) = tlv(validity)?;
    let (tag, time, _) = tlv(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let full = match (tag, text.len()) {
        // UTCTime: two-digit years, 1950-2049.
        (0x17, 12) => {
            let century = if text < "50" { "20" } else { "19" };
            format!("{century}{text}")
        }
        (0x18, 14) => text.to_owned(),
        _ => return None,
    };
    Some(full)
}

/// One DER element: its tag, its contents and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
    };
    let (contents, after) = rest.split_at_checked(len)?;
    Some((tag, contents, after))
}

/// The broker's host name, resolved.
async fn resolve(config: &MqttConfig, timeout: Duration) -> (Step, Option<Vec<SocketAddr>>) {
    const NAME: &str = "resolve";
    let host = config.broker_host();
    let port = config.broker_port();
    let hint = || {
        format!(
            "check --broker (now {host}) and this gateway's name service (/etc/resolv.conf); the uLogger broker is {}",
            ulogger_cloud::DEFAULT_BROKER
        )
    };
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                return (
                    Step::fail(NAME, Failure::Network, format!("{host} has no address"))
                        .hint(hint()),
                    None,
                );
            }
            let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            (
                Step::ok(NAME, format!("{host} is {}", shown.join(", "))),
                Some(addrs),
            )
        }
        Ok(Err(e)) => (
            Step::fail(
                NAME,
                Failure::Network,
                format!("cannot resolve {host}: {e}"),
            )
            .hint(hint()),
            None,
        ),
        Err(_) => (
            Step::fail(
                NAME,
                Failure::Network,
                format!("no answer for {host} within {} s", timeout.as_secs()),
            )
            .hint(hint()),
            None,
        ),
    }
}

/// A TCP connection to the first address that takes one.
fn tcp(addrs: &[SocketAddr], timeout: Duration) -> (Step, Option<TcpStream>) {
    const NAME: &str = "tcp";
    let mut last = None;
    for addr in addrs {
        let started = Instant::now();
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(stream) => {
                let step = Step::ok(
                    NAME,
                    format!(
                        "connected to {addr} in {} ms",
                        started.elapsed().as_millis()
                    ),
                );
                return (step, Some(stream));
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    let Some((addr, error)) = last else {
        return (
            Step::fail(NAME, Failure::Network, "no address to connect to"),
            None,
        );
    };
    let port = addr.port();
    let hint = match error.kind() {
        std::io::ErrorKind::ConnectionRefused => format!(
            "nothing listens on port {port} there: check --port (8883 for the uLogger broker) and that the broker is running"
        ),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => format!(
            "no answer within {} s: a firewall may drop connections to port {port}; check --port and this network's outbound rules",
            timeout.as_secs()
        ),
        _ => "check --broker, --port and this gateway's network".to_owned(),
    };
    (
        Step::fail(
            NAME,
            Failure::Network,
            format!("cannot connect to {addr}: {error}"),
        )
        .hint(hint),
        None,
    )
}

/// The connection after TCP: plain or TLS.
enum Link {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Link::Plain(s) => s.read(buf),
            Link::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Link::Plain(s) => s.write(buf),
            Link::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Link::Plain(s) => s.flush(),
            Link::Tls(s) => s.flush(),
        }
    }
}

/// The TLS error inside an I/O error, if it is one.
fn tls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The TLS handshake (when TLS is on) and an MQTT CONNECT on it. Both
/// verdicts wait for the CONNACK: with TLS 1.3 a broker that rejects the
/// client certificate says so only after the handshake has ended on this
/// side, in answer to the first read.
fn handshake(
    stream: TcpStream,
    config: &MqttConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> (Step, Step) {
    const TLS: &str = "tls";
    const MQTT: &str = "mqtt";
    let host = config.broker_host();
    let secs = timeout.as_secs();
    if let Err(e) = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
    {
        let step = Step::fail(
            TLS,
            Failure::Internal,
            format!("cannot set a time-out: {e}"),
        );
        return (step, Step::needs(MQTT, TLS));
    }
    let (tls_step, mut link) = match tls {
        None => (Step::skip(TLS, "plaintext: no TLS"), Link::Plain(stream)),
        Some(tls) => {
            let name = match rustls::pki_types::ServerName::try_from(host.to_owned()) {
                Ok(name) => name,
                Err(e) => {
                    let step = Step::fail(
                        TLS,
                        Failure::BadInput,
                        format!("{host} cannot be a TLS server name: {e}"),
                    )
                    .hint("check --broker");
                    return (step, Step::needs(MQTT, TLS));
                }
            };
            let mut connection = match rustls::ClientConnection::new(tls, name) {
                Ok(connection) => connection,
                Err(e) => {
                    let step = Step::fail(TLS, Failure::Internal, format!("TLS set-up: {e}"));
                    return (step, Step::needs(MQTT, TLS));
                }
            };
            let mut stream = stream;
            let mut done = Ok(());
            while connection.is_handshaking() {
                if let Err(e) = connection.complete_io(&mut stream) {
                    done = Err(e);
                    break;
                }
            }
            if let Err(error) = done {
                return (tls_failure(&error, host, secs), Step::needs(MQTT, TLS));
            }
            let version = match connection.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2",
                _ => "TLS",
            };
            let step = Step::ok(
                TLS,
                format!("{version} with {host}: its certificate is trusted and names it"),
            );
            let link = Link::Tls(Box::new(rustls::StreamOwned::new(connection, stream)));
            (step, link)
        }
    };
    // A TLS broker spoken to in plaintext hangs up or answers in TLS:
    // the library's hint for it, as `upload` gives it.
    let plaintext_hint: Option<String> = matches!(link, Link::Plain(_))
        .then(|| exit::hint(&ErrorKind::Protocol(String::new()).into()))
        .flatten();
    let client_id = format!(
        "cust-{}-check-{:x}{:x}",
        config.customer_id(),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    let exchanged = link
        .write_all(&connect_packet(&client_id))
        .and_then(|()| link.flush())
        .and_then(|()| {
            let mut connack = [0u8; 4];
            link.read_exact(&mut connack).map(|()| connack)
        });
    let connack = match exchanged {
        Ok(connack) => connack,
        Err(error) => {
            if tls_error(&error).is_some() {
                return (tls_failure(&error, host, secs), Step::needs(MQTT, TLS));
            }
            let step = match error.kind() {
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe => hung_up(&client_id, config, plaintext_hint),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Step::fail(
                    MQTT,
                    Failure::Network,
                    format!("no CONNACK within {secs} s"),
                )
                .hint("the far end may not be an MQTT broker: check --port"),
                _ => Step::fail(MQTT, Failure::Network, format!("CONNECT failed: {error}")),
            };
            return (tls_step, step);
        }
    };
    if connack[0] != 0x20 || connack[1] != 0x02 {
        let step = Step::fail(
            MQTT,
            Failure::Network,
            format!(
                "the far end answered CONNECT with something that is not a CONNACK ({:02x?})",
                connack
            ),
        )
        .hint(plaintext_hint.unwrap_or_else(|| {
            "it is probably not an MQTT broker: check --broker and --port".to_owned()
        }));
        return (tls_step, step);
    }
    let reason = match connack[3] {
        0 => None,
        1 => Some("unacceptable protocol version"),
        2 => Some("client id rejected"),
        3 => Some("service unavailable"),
        4 => Some("bad user name or password"),
        5 => Some("not authorized"),
        _ => Some("an unknown return code"),
    };
    // A polite goodbye; the verdict is in already.
    let _ = link.write_all(&[0xe0, 0x00]).and_then(|()| link.flush());
    if let Link::Tls(tls) = &mut link {
        tls.conn.send_close_notify();
        let _ = tls.flush();
    }
    let step = match reason {
        None => Step::ok(
            MQTT,
            format!(
                "CONNECT accepted as client id {client_id} (customer id {})",
                config.customer_id()
            ),
        ),
        Some(reason) => {
            let error = ulogger_cloud::Error::from(ErrorKind::ConnectionRefused {
                reason: reason.to_owned(),
            });
            let mut step = Step::from_cloud(MQTT, &error);
            step.detail = format!(
                "{} (client id {client_id}, customer id {})",
                step.detail,
                config.customer_id()
            );
            step
        }
    };
    (tls_step, step)
}

/// The broker hung up instead of answering CONNECT: in plaintext, a TLS
/// broker; with TLS, a refused client id, or (TLS 1.3 says so only after
/// the handshake, and a reset can swallow the alert) a refused client
/// certificate.
fn hung_up(client_id: &str, config: &MqttConfig, plaintext_hint: Option<String>) -> Step {
    let detail = format!(
        "the broker closed the connection without answering CONNECT (client id {client_id})"
    );
    if let Some(hint) = plaintext_hint {
        return Step::fail("mqtt", Failure::Network, detail).hint(hint);
    }
    Step::fail("mqtt", Failure::Refused, detail).hint(format!(
        "the broker accepts only client ids that start with cust-{{customer id}}-: check --customer-id (now {}) against the customer the certificate belongs to; if that is right, it may have rejected this client certificate (--cert, --key)",
        config.customer_id()
    ))
}

/// A failed handshake, saying which side refused.
fn tls_failure(error: &std::io::Error, host: &str, secs: u64) -> Step {
    const NAME: &str = "tls";
    match tls_error(error) {
        Some(tls @ rustls::Error::InvalidCertificate(_)) => Step::fail(
            NAME,
            Failure::Network,
            format!("this gateway refused the certificate of {host}: {tls}"),
        )
        .hint(exit::tls_hint(tls)),
        Some(tls @ rustls::Error::AlertReceived(_)) => Step::fail(
            NAME,
            Failure::Refused,
            format!("the broker refused the handshake: {tls}"),
        )
        .hint(exit::tls_hint(tls)),
        Some(tls) => Step::fail(NAME, Failure::Network, format!("handshake failed: {tls}"))
            .hint(exit::tls_hint(tls)),
        None => match error.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Step::fail(
                NAME,
                Failure::Network,
                format!("no TLS answer within {secs} s"),
            )
            .hint(exit::NOT_TLS),
            _ => Step::fail(
                NAME,
                Failure::Network,
                format!("the broker ended the handshake: {error}"),
            )
            .hint(exit::NOT_TLS),
        },
    }
}

/// An MQTT 3.1.1 CONNECT: clean session, no credentials (the client
/// certificate is the credential).
fn connect_packet(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let id_len = u16::try_from(id.len()).unwrap_or(u16::MAX);
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30];
    body.extend_from_slice(&id_len.to_be_bytes());
    body.extend_from_slice(id.get(..usize::from(id_len)).unwrap_or(id));
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// A boot registration of the test serial through the library's client.
async fn register(args: &Args, file: &ConfigFile, config: &MqttConfig) -> Step {
    const NAME: &str = "register";
    let Some(serial) = &args.serial else {
        return Step::skip(
            NAME,
            "no --serial: pass a test device's serial (and --app-id) to try a boot registration",
        );
    };
    let Some(app_id) = args.app_id.or(file.app_id) else {
        return Step::from_exit(NAME, &crate::connection::missing("app-id"));
    };
    exit::remember_device(app_id, serial);
    let device = DeviceInfo::new(app_id, serial.clone(), "ulogger-check", "check", "check");
    let started = Instant::now();
    let client = match Client::builder(config.clone()).build() {
        Ok(client) => client,
        Err(error) => return Step::from_cloud(NAME, &error),
    };
    let result = client.register(&device).await;
    client.shutdown().await;
    match result {
        Ok(token) => Step::ok(
            NAME,
            format!(
                "serial {serial} (app {app_id}) got session token {token} in {} ms",
                started.elapsed().as_millis()
            ),
        ),
        Err(error) => Step::from_cloud(NAME, &error),
    }
}

/// One authenticated read of the HTTP API, when a token is configured.
async fn api(args: &Args, file: &ConfigFile, timeout: Duration) -> Step {
    const NAME: &str = "api";
    let Some(token) = args.api_token.clone().or_else(|| file.api_token.clone()) else {
        return Step::skip(
            NAME,
            "no API token (--api-token, ULOGGER_API_TOKEN or api_token in the config file)",
        );
    };
    let base = args
        .api_url
        .clone()
        .or_else(|| file.api_url.clone())
        .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
    let url = reqwest::Url::parse(base.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http"))
        .map(|mut url| {
            let path = format!("{}/events", url.path().trim_end_matches('/'));
            url.set_path(&path);
            url.set_query(Some("limit=1"));
            url
        });
    let Some(url) = url else {
        return Step::fail(
            NAME,
            Failure::BadInput,
            format!("--api-url {base:?} is not an http(s) URL"),
        )
        .hint(format!("expected e.g. {DEFAULT_API_URL}"));
    };
    let ca = args.connection.ca.clone().or_else(|| file.ca.clone());
    let client = match crate::https::client(ca.as_deref(), timeout) {
        Ok(client) => client,
        Err(exit) => return Step::from_exit(NAME, &exit),
    };
    let mut shown = url.clone();
    shown.set_query(None);
    match client.get(url).bearer_auth(&token).send().await {
        Ok(response) if response.status().is_success() => Step::ok(
            NAME,
            format!("{shown}: the token is accepted ({})", response.status()),
        ),
        Ok(response) => {
            let status = response.status();
            let step = Step::fail(NAME, Failure::Refused, format!("{shown} answered {status}"));
            if status == reqwest::StatusCode::UNAUTHORIZED
                || status == reqwest::StatusCode::FORBIDDEN
            {
                step.hint(crate::https::API_TOKEN_HINT)
            } else {
                step.hint("check --api-url")
            }
        }
        Err(error) => Step::fail(
            NAME,
            Failure::Network,
            format!("no answer from {shown}: {}", exit::chain(&anyhow!(error))),
        )
        .hint("check --api-url, and --ca for an emulator's HTTPS"),
    }
}

/// The outbox directory: there or creatable, writable, who uses it, free
/// space.
fn outbox(args: &Args, file: &ConfigFile) -> Step {
    const NAME: &str = "outbox";
    let Some(dir) = args.outbox.clone().or_else(|| file.outbox.clone()) else {
        return Step::skip(
            NAME,
            "no outbox (--outbox, ULOGGER_OUTBOX or outbox in the config file)",
        );
    };
    let shown = dir.display();
    if !dir.exists() {
        let parent = dir
            .ancestors()
            .skip(1)
            .find(|a| a.as_os_str().is_empty() || a.exists())
            .map(|a| {
                if a.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    a
                }
            });
        return match parent {
            Some(parent) if parent.is_dir() => match writable(parent) {
                Ok(()) => Step::ok(
                    NAME,
                    format!(
                        "{shown} does not exist yet; it can be made in {}{}",
                        parent.display(),
                        free_space(parent)
                    ),
                ),
                Err(e) => unwritable(&dir, parent, &e),
            },
            Some(parent) => Step::fail(
                NAME,
                Failure::BadInput,
                format!(
                    "{shown} cannot be made: {} is not a directory",
                    parent.display()
                ),
            )
            .hint("choose another --outbox"),
            None => Step::fail(NAME, Failure::BadInput, format!("{shown} cannot be made"))
                .hint("choose another --outbox"),
        };
    }
    if !dir.is_dir() {
        return Step::fail(
            NAME,
            Failure::BadInput,
            format!("{shown} is not a directory"),
        )
        .hint("--outbox names a directory of its own (made when missing)");
    }
    if let Err(e) = writable(&dir) {
        return unwritable(&dir, &dir, &e);
    }
    let status = match OutboxStatus::read(&dir) {
        Ok(status) => status,
        Err(error) => return Step::from_cloud(NAME, &error),
    };
    let owner = match status.owner_pid {
        Some(pid) => format!("in use by process {pid} (an agent or upload delivering from it)"),
        None => "not in use".to_owned(),
    };
    let detail = format!(
        "{shown} is writable, {owner}; {} queued, {} dead{}",
        status.queued,
        status.dead,
        free_space(&dir)
    );
    match &status.last_error {
        Some(error) => Step::fail(
            NAME,
            Failure::Network,
            format!(
                "{detail}; delivery is failing{}: {error}",
                status
                    .failing_since
                    .map(|since| {
                        let since = time::OffsetDateTime::from(since);
                        format!(
                            " since {} {:02}:{:02}:{:02} UTC",
                            since.date(),
                            since.hour(),
                            since.minute(),
                            since.second()
                        )
                    })
                    .unwrap_or_default()
            ),
        )
        .hint("the steps above show the broken link; once it is mended the queued records go out"),
        None => Step::ok(NAME, detail),
    }
}

/// Whether a file can be made in `dir` (made and removed at once; the
/// outbox reads only its own segment names, so an owner never sees it).
fn writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".ulogger-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

fn unwritable(dir: &Path, at: &Path, error: &std::io::Error) -> Step {
    let hint = if error.kind() == std::io::ErrorKind::PermissionDenied {
        format!(
            "run as the user the agent runs as, or give it {} (chown/chmod)",
            at.display()
        )
    } else {
        "choose another --outbox".to_owned()
    };
    Step::fail(
        "outbox",
        Failure::BadInput,
        format!(
            "{}: cannot write in {}: {error}",
            dir.display(),
            at.display()
        ),
    )
    .hint(hint)
}

/// `, N MiB free` for the file system holding `dir`, when the system says.
#[cfg(unix)]
fn free_space(dir: &Path) -> String {
    match rustix::fs::statvfs(dir) {
        Ok(stat) => {
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            format!(", {} MiB free", free / (1024 * 1024))
        }
        Err(_) => String::new(),
    }
}

#[cfg(not(unix))]
fn free_space(_dir: &Path) -> String {
    String::new()
}

/// BlueZ as `ulogger ble` reaches it: the system bus, `org.bluez` on it,
/// and the adapter, powered.
#[cfg(all(feature = "ble", target_os = "linux"))]
async fn bluez(adapter: &str, timeout: Duration) -> Step {
    const NAME: &str = "bluez";
    let bus = std::env::var("DBUS_SYSTEM_BUS_ADDRESS").map_or_else(
        |_| "the system bus".to_owned(),
        |a| format!("the bus at {a}"),
    );
    let late = || {
        Step::fail(
            NAME,
            Failure::Network,
            format!("no answer from {bus} within {} s", timeout.as_secs()),
        )
        .hint("check that dbus and bluetoothd are running")
    };
    let session = match tokio::time::timeout(timeout, bluer::Session::new()).await {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            return Step::fail(NAME, Failure::Internal, format!("cannot reach {bus}: {e}"))
                .hint("is dbus running? DBUS_SYSTEM_BUS_ADDRESS names another bus if set")
        }
        Err(_) => return late(),
    };
    let names = match tokio::time::timeout(timeout, session.adapter_names()).await {
        Ok(Ok(names)) => names,
        Ok(Err(e)) => {
            return Step::fail(
                NAME,
                Failure::Internal,
                format!("BlueZ (org.bluez) does not answer on {bus}: {e}"),
            )
            .hint("start bluetoothd (systemctl start bluetooth)")
        }
        Err(_) => return late(),
    };
    if !names.iter().any(|n| n == adapter) {
        let known = if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        };
        return Step::fail(
            NAME,
            Failure::BadInput,
            format!("BlueZ has no adapter {adapter} (it has: {known})"),
        )
        .hint("pass --adapter NAME (`bluetoothctl list` shows them)");
    }
    let powered = match session.adapter(adapter) {
        Ok(handle) => tokio::time::timeout(timeout, handle.is_powered()).await,
        Err(e) => return Step::fail(NAME, Failure::Internal, format!("adapter {adapter}: {e}")),
    };
    match powered {
        Ok(Ok(true)) => Step::ok(
            NAME,
            format!("adapter {adapter} is present and powered ({bus})"),
        ),
        Ok(Ok(false)) => Step::fail(
            NAME,
            Failure::BadInput,
            format!("adapter {adapter} is powered off"),
        )
        .hint(format!(
            "bluetoothctl power on (or: rfkill unblock bluetooth) for {adapter}"
        )),
        Ok(Err(e)) => Step::fail(NAME, Failure::Internal, format!("adapter {adapter}: {e}")),
        Err(_) => late(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_validity_is_read_from_a_certificate() {
        let dir = std::env::temp_dir().join(format!("ulogger-check-{}", std::process::id()));
        let certs = ulogger_emulator::CertPaths::generate(&dir, 7).unwrap();
        match expiry(&certs.client_cert) {
            Some(Validity::Until(when)) => assert_eq!(when, "4096-01-01 00:00:00 UTC"),
            _ => panic!("a validity"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_certificate_gives_no_date_and_no_panic() {
        let dir = std::env::temp_dir().join(format!("ulogger-check-d-{}", std::process::id()));
        let certs = ulogger_emulator::CertPaths::generate(&dir, 7).unwrap();
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(&certs.client_cert).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        let der = der.as_ref();
        assert!(not_after(der).is_some());
        for cut in 0..der.len() {
            let _ = not_after(&der[..cut]);
        }
        for at in 0..der.len().min(300) {
            for byte in [0x00, 0x7f, 0x80, 0x84, 0xff] {
                let mut bent = der.to_vec();
                bent[at] = byte;
                let _ = not_after(&bent);
            }
        }
        assert_eq!(not_after(&[]), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn connect_packets_carry_the_client_id() {
        let packet = connect_packet("cust-1-check-x");
        assert_eq!(packet[0], 0x10);
        assert_eq!(usize::from(packet[1]), packet.len() - 2);
        assert!(packet.ends_with(b"cust-1-check-x"));
        let long = "x".repeat(200);
        let packet = connect_packet(&long);
        // Two bytes of remaining length past 127.
        assert_eq!(packet[1] & 0x80, 0x80);
        assert_eq!(
            usize::from(packet[1] & 0x7f) + 128 * usize::from(packet[2]),
            packet.len() - 3
        );
    }
}
