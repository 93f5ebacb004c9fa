//! `ulogger metrics`, `ulogger events` and `ulogger heartbeat`: telemetry
//! (PROTOCOL §8) for one device from flags, or for many from a batch file.
//!
//! Each command first turns its arguments into a [`Request`] and checks
//! it completely (ids, samples, the size of the message that would be
//! sent), so bad input never opens a connection; then [`send`] delivers
//! the request and hands back the broker's receipt. `send` is the one
//! place that knows how requests travel, so another way of sending (the
//! HTTPS API) is a branch there.

mod batch;
mod samples;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde_json::json;
use ulogger_cloud::wire::{
    validate_serial, Compression, DeviceMetrics, Metric, Telemetry, TelemetryError,
};
use ulogger_cloud::{Client, HttpReceipt, HttpTelemetry, TelemetryReceipt, DEFAULT_API_URL};

use crate::connection::{ConfigFile, ConnectionArgs};
use crate::exit::{self, Exit, Failure};
use crate::Global;

/// Examples shown under `ulogger metrics --help`.
pub const METRICS_EXAMPLES: &str = "\
Examples:
  ulogger metrics --serial SN1 --app-id 7 temp=21.5 rssi=-60@1700000000
  ulogger metrics --serial SN1 --app-id 7 --timestamp 1700000000 temp=21.5 rssi=-60
  ulogger metrics --app-id 7 --batch fleet.json
  some-exporter | ulogger metrics --app-id 7 --batch -

A batch file holds many devices' metrics (PROTOCOL §8):
  {\"devices\": [{\"device_serial\": \"SN1\", \"metrics\": [{\"name\": \"temp\", \"value\": 21.5, \"timestamp\": 1700000000}]},
               {\"device_serial\": \"SN2\", \"metrics\": [{\"name\": \"temp\", \"value\": 19}], \"app_id\": 8}]}";

/// Examples shown under `ulogger events --help`.
pub const EVENTS_EXAMPLES: &str = "\
Examples:
  ulogger events --serial SN1 --app-id 7 boot reset@1700000000
  ulogger events --app-id 7 --batch events.json

A batch file holds many devices' events (PROTOCOL §8):
  {\"devices\": [{\"device_serial\": \"SN1\", \"events\": [{\"type\": \"boot\", \"timestamp\": 1700000000}]}]}";

/// Examples shown under `ulogger heartbeat --help`.
pub const HEARTBEAT_EXAMPLES: &str = "\
Examples:
  ulogger heartbeat --serial SN1 --app-id 7
  ulogger heartbeat --serial SN1 --serial SN2 --serial SN3 --app-id 7 --timestamp 1700000000";

/// `--compression`: when the message is gzip-compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    /// When its JSON is over 1,024 bytes (the platform's default).
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

impl From<CompressionArg> for Compression {
    fn from(arg: CompressionArg) -> Compression {
        match arg {
            CompressionArg::Auto => Compression::Auto,
            CompressionArg::Always => Compression::Always,
            CompressionArg::Never => Compression::Never,
        }
    }
}

/// What every telemetry command takes besides its samples.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Application id: the topic's (a batch entry's own `app_id` overrides
    /// it for that device).
    #[arg(long, visible_alias = "app", env = "ULOGGER_APP_ID")]
    app_id: Option<u32>,
    /// When to gzip the message: auto (over 1,024 bytes of JSON), always
    /// or never. The 128 KiB limit applies to what is sent.
    #[arg(long, value_enum, default_value_t = CompressionArg::Auto, value_name = "WHEN")]
    compression: CompressionArg,
    /// Send over the HTTPS API with this token (`ulg_...`) instead of MQTT:
    /// for gateways without a client certificate. Needs the customer's
    /// group id (--group-id); trusts --ca when given [also `api_token` in
    /// the config file]. Prefer the variable or the file: a flag's value is
    /// visible to other users in the process list.
    #[arg(
        long,
        env = "ULOGGER_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    api_token: Option<String>,
    /// The HTTPS API's base URL [default: `https://api.ulogger.ai`; also
    /// `api_url` in the config file].
    #[arg(long, env = "ULOGGER_API_URL", value_name = "URL")]
    api_url: Option<String>,
}

/// What the cloud acknowledged, over either way of sending.
#[derive(Debug)]
pub enum Receipt {
    /// The broker's PUBACK.
    Mqtt(TelemetryReceipt),
    /// The HTTPS API's `success` answer.
    Http(HttpReceipt),
}

impl Receipt {
    fn size(&self) -> usize {
        match self {
            Receipt::Mqtt(r) => r.size,
            Receipt::Http(r) => r.size,
        }
    }

    fn compressed(&self) -> bool {
        match self {
            Receipt::Mqtt(r) => r.compressed,
            Receipt::Http(r) => r.compressed,
        }
    }

    /// Where it went: the topic, or the URL.
    fn destination(&self) -> String {
        match self {
            Receipt::Mqtt(r) => r.topic.clone(),
            Receipt::Http(r) => r.url.clone(),
        }
    }
}

/// Arguments of `ulogger metrics`.
#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    #[command(flatten)]
    send: SendArgs,
    /// Device serial [default: $ULOGGER_SERIAL, else `serial` in the
    /// config file].
    #[arg(long)]
    serial: Option<String>,
    /// Timestamp (seconds since the Unix epoch) of the samples that have
    /// no `@TIMESTAMP` of their own [default: none: the cloud's time of
    /// arrival].
    #[arg(long, value_name = "SECS", conflicts_with = "batch")]
    timestamp: Option<u64>,
    /// Send the batch in FILE (`-` for standard input) instead of one
    /// device's samples; each entry names its device (ULOGGER_SERIAL and
    /// the config file's serial are not used).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["serial", "samples"])]
    batch: Option<PathBuf>,
    /// Samples, each NAME=VALUE or NAME=VALUE@TIMESTAMP; VALUE is a finite
    /// number.
    #[arg(
        value_name = "NAME=VALUE[@TIMESTAMP]",
        required_unless_present = "batch"
    )]
    samples: Vec<String>,
}

/// Arguments of `ulogger events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    send: SendArgs,
    /// Device serial [default: $ULOGGER_SERIAL, else `serial` in the
    /// config file].
    #[arg(long)]
    serial: Option<String>,
    /// Timestamp (seconds since the Unix epoch) of the events that have
    /// no `@TIMESTAMP` of their own [default: none: the cloud's time of
    /// arrival].
    #[arg(long, value_name = "SECS", conflicts_with = "batch")]
    timestamp: Option<u64>,
    /// Send the batch in FILE (`-` for standard input) instead of one
    /// device's events; each entry names its device (ULOGGER_SERIAL and
    /// the config file's serial are not used).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["serial", "events"])]
    batch: Option<PathBuf>,
    /// Events, each TYPE or TYPE@TIMESTAMP.
    #[arg(value_name = "TYPE[@TIMESTAMP]", required_unless_present = "batch")]
    events: Vec<String>,
}

/// Arguments of `ulogger heartbeat`.
#[derive(Debug, clap::Args)]
pub struct HeartbeatArgs {
    #[command(flatten)]
    send: SendArgs,
    /// Device serial; repeat it to send several devices' heartbeats in one
    /// batch message [default: $ULOGGER_SERIAL, else `serial` in the
    /// config file].
    #[arg(long)]
    serial: Vec<String>,
    /// When the devices were seen alive, in seconds since the Unix epoch
    /// [default: none: the cloud's time of arrival].
    #[arg(long, value_name = "SECS")]
    timestamp: Option<u64>,
}

/// One telemetry message to send, and the application it is for.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The topic's (or the request body's) application id.
    pub app_id: u32,
    /// The message.
    pub message: Telemetry,
}

impl Request {
    /// `"metrics"` or `"events"`: the topic and the list the samples go in.
    pub fn list(&self) -> &'static str {
        self.message.family().as_str()
    }

    /// Refuses, as bad input, a message the library would refuse (too
    /// large after compression, most likely: everything else was checked
    /// while parsing).
    fn check(&self, compression: Compression) -> Result<(), Exit> {
        self.message.payload(compression).map(drop).map_err(|e| {
            let hint = matches!(e, TelemetryError::TooLarge { .. }).then(|| {
                "split the samples over several messages (several batch files), or let --compression auto or always gzip it".to_owned()
            });
            Exit::new(
                Failure::BadInput,
                anyhow!(e).context(format!("cannot send these {}", self.list())),
            )
            .with_hint(hint)
        })
    }
}

/// Hides a flag that telemetry does not use (the session-token store's):
/// telemetry needs no token.
pub fn hide(arg: clap::Arg) -> clap::Arg {
    arg.hide(true)
}

fn heartbeat(timestamp: Option<u64>) -> Metric {
    match timestamp {
        Some(t) => Metric::heartbeat().at(t),
        None => Metric::heartbeat(),
    }
}

/// Sends `request` with the settings of `args` (connection flags,
/// environment, config file; `--compression`) and returns the cloud's
/// receipt. The single place that decides how telemetry travels: over the
/// HTTPS API when an API token is given, else over MQTT.
pub fn send(args: &SendArgs, request: &Request) -> Result<Receipt, Exit> {
    let file = args.connection.file()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(Exit::from)?;
    if let Some(token) = args.api_token.clone().or_else(|| file.api_token.clone()) {
        let http = http_sender(args, file, token)?;
        return runtime
            .block_on(send_http(&http, request))
            .map(Receipt::Http)
            .map_err(exit::from_cloud);
    }
    // Telemetry needs no session token: keep the token file untouched.
    let mut connection = args.connection.clone();
    connection.no_store = true;
    let (config, _) = connection.resolve()?;
    runtime.block_on(async {
        let client = Client::builder(config)
            .telemetry_compression(args.compression.into())
            .build()
            .map_err(exit::from_cloud)?;
        let result = match client.connected().await {
            Ok(()) => send_mqtt(&client, request).await,
            Err(e) => Err(e),
        };
        client.shutdown().await;
        result.map(Receipt::Mqtt).map_err(exit::from_cloud)
    })
}

/// The HTTPS sender: base URL, group id, CA and timeout from the same
/// flags, variables and config file as the MQTT connection.
fn http_sender(args: &SendArgs, file: &ConfigFile, token: String) -> Result<HttpTelemetry, Exit> {
    // The HTTPS API has no legacy layout: its bodies always carry a group.
    let group_id = args
        .connection
        .group_id
        .or(file.group_id)
        .unwrap_or(ulogger_cloud::DEFAULT_GROUP_ID);
    let url = args
        .api_url
        .clone()
        .or_else(|| file.api_url.clone())
        .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
    let mut builder = HttpTelemetry::builder(token)
        .base_url(url)
        .group_id(group_id)
        .compression(args.compression.into());
    if let Some(ca) = args.connection.ca.clone().or_else(|| file.ca.clone()) {
        builder = builder.ca_file(ca);
    }
    if let Some(secs) = args.connection.timeout.or(file.timeout) {
        builder = builder.timeout(std::time::Duration::from_secs(secs));
    }
    builder.build().map_err(exit::from_cloud)
}

/// Posts `request` to the HTTPS API; complete on its `success` answer.
pub async fn send_http(
    http: &HttpTelemetry,
    request: &Request,
) -> Result<HttpReceipt, ulogger_cloud::Error> {
    http.post(request.app_id, &request.message).await
}

/// Publishes `request` on `client`'s connection; complete on the PUBACK.
pub async fn send_mqtt(
    client: &Client,
    request: &Request,
) -> Result<TelemetryReceipt, ulogger_cloud::Error> {
    client
        .publish_telemetry(request.app_id, &request.message)
        .await
}

/// `ulogger metrics`.
pub fn metrics(global: Global, args: MetricsArgs) -> Result<(), Exit> {
    let file = args.send.connection.file()?;
    let app_id = app_id(&args.send, file)?;
    let message = match &args.batch {
        Some(path) => Telemetry::metrics_batch(batch_file(path, batch::metrics)?),
        None => Telemetry::metrics(
            one_serial(args.serial.as_deref(), file)?,
            args.samples
                .iter()
                .map(|arg| samples::parse_metric(arg, args.timestamp))
                .collect::<Result<_, _>>()
                .map_err(bad_input)?,
        ),
    };
    let request = Request { app_id, message };
    run(global, &args.send, &request)
}

/// `ulogger events`.
pub fn events(global: Global, args: EventsArgs) -> Result<(), Exit> {
    let file = args.send.connection.file()?;
    let app_id = app_id(&args.send, file)?;
    let message = match &args.batch {
        Some(path) => Telemetry::events_batch(batch_file(path, batch::events)?),
        None => Telemetry::events(
            one_serial(args.serial.as_deref(), file)?,
            args.events
                .iter()
                .map(|arg| samples::parse_event(arg, args.timestamp))
                .collect::<Result<_, _>>()
                .map_err(bad_input)?,
        ),
    };
    let request = Request { app_id, message };
    run(global, &args.send, &request)
}

/// `ulogger heartbeat`: one device's heartbeat, or several devices' in
/// one batch message.
pub fn heartbeat_command(global: Global, args: HeartbeatArgs) -> Result<(), Exit> {
    let file = args.send.connection.file()?;
    let app_id = app_id(&args.send, file)?;
    let message = match args.serial.as_slice() {
        [] | [_] => Telemetry::heartbeat(
            one_serial(args.serial.first().map(String::as_str), file)?,
            args.timestamp,
        ),
        serials => {
            for serial in serials {
                check_serial(serial)?;
            }
            Telemetry::metrics_batch(
                serials
                    .iter()
                    .map(|s| DeviceMetrics::new(s.clone(), vec![heartbeat(args.timestamp)]))
                    .collect(),
            )
        }
    };
    let request = Request { app_id, message };
    run(global, &args.send, &request)
}

/// Checks `request`, sends it and reports the receipt.
fn run(global: Global, args: &SendArgs, request: &Request) -> Result<(), Exit> {
    request.check(args.compression.into())?;
    let receipt = send(args, request)?;
    let (list, devices, samples) = (
        request.list(),
        request.message.devices(),
        request.message.samples(),
    );
    if global.json {
        let mut report = json!({
            "kind": list,
            "size": receipt.size(),
            "compressed": receipt.compressed(),
            "devices": devices,
            "samples": samples,
        });
        match &receipt {
            Receipt::Mqtt(r) => report["topic"] = json!(r.topic),
            Receipt::Http(r) => {
                report["url"] = json!(r.url);
                report["status"] = json!(r.status);
                report["attempts"] = json!(r.attempts);
            }
        }
        if let Some(serial) = request.message.serial() {
            report["serial"] = json!(serial);
        }
        outln!("{report}");
    } else {
        let whose = match request.message.serial() {
            Some(serial) => serial.to_owned(),
            None => format!("{devices} devices"),
        };
        let noun = match (list, samples) {
            ("events", 1) => "event",
            ("events", _) => "events",
            (_, 1) => "metric",
            _ => "metrics",
        };
        let verb = match receipt {
            Receipt::Mqtt(_) => "published to",
            Receipt::Http(_) => "posted to",
        };
        outln!(
            "{whose}: {samples} {noun} {verb} {} ({} bytes{})",
            receipt.destination(),
            receipt.size(),
            if receipt.compressed() { ", gzip" } else { "" }
        );
    }
    Ok(())
}

/// The topic's application id: flag or environment, else the config file.
fn app_id(args: &SendArgs, file: &ConfigFile) -> Result<u32, Exit> {
    args.app_id
        .or(file.app_id)
        .ok_or_else(|| crate::connection::missing("app-id"))
}

/// The one device's serial: flag, else `ULOGGER_SERIAL`, else the config
/// file; checked to be usable in a topic.
fn one_serial(flag: Option<&str>, file: &ConfigFile) -> Result<String, Exit> {
    let from_env = std::env::var("ULOGGER_SERIAL").ok();
    let serial = flag
        .map(str::to_owned)
        .or(from_env)
        .or_else(|| file.serial.clone())
        .ok_or_else(|| crate::connection::missing("serial"))?;
    check_serial(&serial)?;
    Ok(serial)
}

fn check_serial(serial: &str) -> Result<(), Exit> {
    validate_serial(serial).map_err(|e| bad_input(format!("--serial {serial:?}: {e}")))
}

/// The devices of the batch file at `path`, read by `parse`; every
/// mistake names the file and the entry.
fn batch_file<T>(
    path: &Path,
    parse: impl FnOnce(&[u8]) -> Result<Vec<T>, String>,
) -> Result<Vec<T>, Exit> {
    let bytes = batch::read(path).map_err(bad_input)?;
    let name = if path == Path::new("-") {
        "standard input".to_owned()
    } else {
        path.display().to_string()
    };
    parse(&bytes).map_err(|e| bad_input(format!("batch file {name}: {e}")))
}

fn bad_input(message: String) -> Exit {
    Exit::new(Failure::BadInput, anyhow!(message))
}
