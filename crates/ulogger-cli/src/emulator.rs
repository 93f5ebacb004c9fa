//! `ulogger emulator`: run a local uLogger cloud (broker + cloud side)
//! until Ctrl-C or SIGTERM, printing how to connect and a line per record.
//! A stop stores everything the broker acknowledged before exiting.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ulogger_emulator::{
    AttachTo, ClientEvent, Emulator, EmulatorConfig, EmulatorError, PlatformLimits, Record,
    RecordKind, Verdict,
};

use crate::exit::{Exit, Failure};
use crate::signal::StopSignal;
use crate::stamp;
use crate::Global;

/// Arguments of `ulogger emulator`: run one, or a subcommand about one.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List what an emulator (running or stopped) received, from its data directory.
    Records(crate::emulator_records::Args),
    /// Push a log configuration to a device through a running emulator.
    PushConfig(crate::log_config::PushArgs),
}

/// Arguments of `ulogger emulator` when it runs an emulator.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Address the broker listens on (port 0: any free port, reported at start).
    #[arg(long, default_value = "127.0.0.1:8883", value_name = "ADDR")]
    listen: SocketAddr,
    /// Address the HTTP API (telemetry endpoints and data API) listens on
    /// (port 0: any free port, reported at start); fix it to give scripts
    /// a stable `--api-url`.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    http_listen: SocketAddr,
    /// Data directory: the record index (index.jsonl), the record
    /// database the data API reads (records.db), stored payloads,
    /// the generated certificates (certs/, reused on the next run), the
    /// HTTP API token (api_token, likewise) and,
    /// rewritten at each start, what the printed upload commands use:
    /// sample-log.bin, device-info.bin and client.toml.
    #[arg(long, default_value = "ulogger-emulator-data", value_name = "DIR")]
    data: PathBuf,
    /// Plain MQTT instead of mutual TLS.
    #[arg(long)]
    plaintext: bool,
    /// The customer id served; client ids must start with `cust-{ID}-`.
    #[arg(long, default_value_t = 1, value_name = "ID")]
    customer_id: u32,
    /// Group id used in the printed commands and for pushed log
    /// configurations; publishes of every group are routed, as the
    /// platform does (0 means no groups).
    #[arg(long, default_value_t = 0, value_name = "ID")]
    group_id: u32,
    /// Also route the original topic layout without the group level, for
    /// tests of old deployments. The uLogger cloud does not: by default
    /// such publishes are acknowledged and shown as unrouted.
    #[arg(long)]
    legacy_topics: bool,
    /// Simulate the platform's alarm on registration storms: past RATE
    /// boot messages in one second the customer is quarantined, and every
    /// connection is refused until the emulator restarts.
    #[arg(long, value_name = "RATE", conflicts_with = "attach")]
    boot_guard: Option<u32>,
    /// Topic prefix, prepended as-is (include the trailing `/`).
    #[arg(long, default_value = "", value_name = "PREFIX")]
    prefix: String,
    /// Lift AWS IoT Core's per-connection limits (e.g. for benchmarks).
    ///
    /// By default the broker enforces them as the platform does: 100
    /// publishes/s (beyond: discarded, no PUBACK), 512 KiB/s (beyond:
    /// delayed), 50 subscriptions (beyond: SUBACK failure), 8 filters per
    /// SUBSCRIBE (beyond: the connection closes). A client that works here
    /// with the limits on keeps to the platform's.
    #[arg(long, conflicts_with = "attach")]
    no_limits: bool,
    /// Attach the cloud side to an external broker at HOST:PORT instead of
    /// running one.
    #[arg(long, value_name = "HOST:PORT")]
    attach: Option<String>,
    /// CA certificate for TLS to the attached broker.
    #[arg(long, value_name = "FILE", requires = "attach")]
    attach_ca: Option<PathBuf>,
    /// Client certificate for mutual TLS to the attached broker.
    #[arg(long, value_name = "FILE", requires_all = ["attach_ca", "attach_key"])]
    attach_cert: Option<PathBuf>,
    /// Client key for mutual TLS to the attached broker.
    #[arg(long, value_name = "FILE", requires = "attach_cert")]
    attach_key: Option<PathBuf>,
    /// MQTT username on the attached broker.
    #[arg(long, value_name = "NAME", requires = "attach")]
    attach_username: Option<String>,
    /// MQTT password on the attached broker.
    #[arg(
        long,
        env = "ULOGGER_ATTACH_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD",
        requires = "attach_username"
    )]
    attach_password: Option<String>,
}

/// Runs the emulator until Ctrl-C or SIGTERM, or the subcommand.
pub fn run(global: Global, args: Args) -> Result<(), Exit> {
    match args.command {
        Some(Command::Records(records)) => crate::emulator_records::run(global, records),
        Some(Command::PushConfig(push)) => crate::log_config::push(global, push),
        None => run_emulator(global, args.run),
    }
}

fn run_emulator(global: Global, args: RunArgs) -> Result<(), Exit> {
    let config = config(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Listen before announcing anything: a stop sent right after the
    // banner must find its handler in place.
    let stop = {
        let _runtime = runtime.enter();
        StopSignal::listen()?
    };
    let emulator = Emulator::start(config).map_err(start_failure)?;
    let sample = Sample::write(&emulator)?;
    print_banner(global, &emulator, &sample, args.attach.as_deref())?;

    let mut records = emulator.watch_records();
    let mut clients = emulator.watch_clients();
    let stopped_by = runtime.block_on(async {
        let stop = stop.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                record = records.next() => outln!("{}", live_line(global, &record)),
                Some(client) = clients.next() => if let Some(line) = client_line(global, &client) {
                    outln!("{line}");
                },
                stop = &mut stop => break stop,
            }
        }
    })?;
    if !global.json {
        eprintln!("{} stopping: storing what was acknowledged", stamp::now());
    }
    let stopped = emulator.shutdown();
    // What the cloud stored while stopping.
    for record in records.drain() {
        outln!("{}", live_line(global, &record));
    }
    stopped.context("the emulator failed").map_err(Exit::from)?;
    stopped_by.outcome()
}

fn config(args: &RunArgs) -> Result<EmulatorConfig, Exit> {
    let mut config = EmulatorConfig::new(args.customer_id)
        .listen(args.listen)
        .http_listen(args.http_listen)
        .data_dir(&args.data)
        .plaintext(args.plaintext)
        .group_id(args.group_id)
        .legacy_topics(args.legacy_topics)
        .boot_guard(args.boot_guard)
        .topic_prefix(args.prefix.clone());
    if args.no_limits {
        config = config.limits(PlatformLimits::unlimited());
    }
    if let Some(target) = &args.attach {
        let (host, port) = target
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .ok_or_else(|| {
                Exit::new(
                    Failure::BadInput,
                    anyhow::anyhow!("--attach {target:?}: expected HOST:PORT"),
                )
            })?;
        let mut attach = AttachTo::new(host.trim_matches(['[', ']']), port);
        attach = match (&args.attach_ca, &args.attach_cert, &args.attach_key) {
            (Some(ca), Some(cert), Some(key)) => attach.mutual_tls(ca, cert, key),
            (Some(ca), _, _) => attach.tls(ca),
            _ => attach,
        };
        if let (Some(user), password) = (&args.attach_username, &args.attach_password) {
            attach = attach.credentials(user.clone(), password.clone().unwrap_or_default());
        }
        config = config.attach(attach);
    }
    Ok(config)
}

/// `ulogger query KIND` (metrics, events or logs) of the last hour,
/// against this emulator's data API.
fn query_command(emulator: &Emulator, kind: &str) -> String {
    let mut command = format!(
        "ULOGGER_API_TOKEN={} ulogger query {kind} --api-url {}",
        emulator.api_token(),
        emulator.http_url()
    );
    if let Some(certs) = emulator.certs() {
        let _ = write!(command, " --ca {}", shell_word(&absolute(&certs.ca_cert)));
    }
    command.push_str(" --start 1h");
    command
}

fn start_failure(error: EmulatorError) -> Exit {
    let failure = match &error {
        EmulatorError::InvalidConfig { .. } | EmulatorError::InvalidId { .. } => Failure::BadInput,
        EmulatorError::Listen { .. } | EmulatorError::Attach { .. } => Failure::Network,
        _ => Failure::Internal,
    };
    Exit::new(
        failure,
        anyhow::Error::new(error).context("cannot start the emulator"),
    )
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The `ulogger upload` connection flags that reach this emulator.
fn client_flags(emulator: &Emulator) -> String {
    let addr = emulator.addr();
    let mut flags = format!(
        "--broker {} --port {} --customer-id {}",
        addr.ip(),
        addr.port(),
        emulator.customer_id()
    );
    match emulator.certs() {
        Some(certs) => {
            let _ = write!(
                flags,
                " --ca {} --cert {} --key {}",
                shell_word(&absolute(&certs.ca_cert)),
                shell_word(&absolute(&certs.client_cert)),
                shell_word(&absolute(&certs.client_key))
            );
        }
        None => flags.push_str(" --plaintext"),
    }
    if emulator.group_id() != ulogger_cloud::DEFAULT_GROUP_ID {
        let _ = write!(flags, " --group-id {}", emulator.group_id());
    }
    if !emulator.topic_prefix().is_empty() {
        let _ = write!(flags, " --prefix {}", shell_quote(emulator.topic_prefix()));
    }
    flags
}

/// A path as one shell word.
fn shell_word(path: &Path) -> String {
    shell_quote(&path.display().to_string())
}

/// `text` as one shell word: as-is when it has only characters no shell
/// treats specially, else single-quoted.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,=@%".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// `text` as a TOML basic string (a JSON string is one).
fn toml_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// What a new user needs to try an upload at once, written into the data
/// directory at every start: a log, the device it comes from, the settings
/// as a config file, and the session-token cache of this cloud's tokens
/// (a cache shared with another cloud would hold tokens this one never
/// issued).
struct Sample {
    log: PathBuf,
    device_info: PathBuf,
    config_file: PathBuf,
    config_text: String,
    store: PathBuf,
}

impl Sample {
    fn write(emulator: &Emulator) -> Result<Sample, Exit> {
        let dir = absolute(emulator.data_dir());
        let sample = Sample {
            log: dir.join("sample-log.bin"),
            device_info: dir.join("device-info.bin"),
            config_file: dir.join("client.toml"),
            config_text: config_text(emulator, &dir.join("session_tokens.json")),
            store: dir.join("session_tokens.json"),
        };
        let log = crate::make_log::sample_log(4, 1024, 0, 0)?;
        let device = crate::make_log::SampleDevice::default().info().encode();
        for (path, bytes) in [
            (&sample.log, log.as_slice()),
            (&sample.device_info, device.as_slice()),
            (&sample.config_file, sample.config_text.as_bytes()),
        ] {
            std::fs::write(path, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(sample)
    }

    /// The upload of the sample log with every flag on the command line.
    fn upload_command(&self, emulator: &Emulator) -> String {
        format!(
            "ulogger upload {} --store {} --device-info {} {}",
            client_flags(emulator),
            shell_word(&self.store),
            shell_word(&self.device_info),
            shell_word(&self.log)
        )
    }

    /// A heartbeat of the sample device over MQTT, with the config file.
    fn heartbeat_command(&self) -> String {
        let device = crate::make_log::SampleDevice::default();
        format!(
            "ulogger heartbeat --config {} --app-id {} --serial {}",
            shell_word(&self.config_file),
            device.app_id(),
            shell_quote(device.serial())
        )
    }

    /// The same heartbeat over the HTTPS API, with the emulator's token.
    fn http_heartbeat_command(&self, emulator: &Emulator) -> String {
        let device = crate::make_log::SampleDevice::default();
        let mut command = format!(
            "ULOGGER_API_TOKEN={} ulogger heartbeat --api-url {}",
            emulator.api_token(),
            emulator.http_url()
        );
        if let Some(certs) = emulator.certs() {
            let _ = write!(command, " --ca {}", shell_word(&absolute(&certs.ca_cert)));
        }
        let _ = write!(
            command,
            " --app-id {} --serial {}",
            device.app_id(),
            shell_quote(device.serial())
        );
        command
    }

    /// The same upload with the connection settings from the config file.
    /// The ELF upload of a build of the sample device's firmware.
    fn elf_upload_command(&self) -> String {
        let device = crate::make_log::SampleDevice::default().info();
        format!(
            "ulogger upload-elf --config {} --app-id {} --device-type {} --git-version {} --git-hash {} FIRMWARE.elf",
            shell_word(&self.config_file),
            device.app_id,
            shell_quote(&device.device_type),
            shell_quote(&device.git_version),
            shell_quote(&device.git_hash)
        )
    }

    fn config_upload_command(&self) -> String {
        format!(
            "ulogger upload --config {} --device-info {} {}",
            shell_word(&self.config_file),
            shell_word(&self.device_info),
            shell_word(&self.log)
        )
    }
}

/// The settings of `client_flags` as a `ulogger --config` file.
fn config_text(emulator: &Emulator, store: &Path) -> String {
    let addr = emulator.addr();
    let mut text =
        String::from("# Written by `ulogger emulator` at each start: how to reach it.\n");
    let _ = writeln!(text, "customer_id = {}", emulator.customer_id());
    let _ = writeln!(text, "broker = {}", toml_string(&addr.ip().to_string()));
    let _ = writeln!(text, "port = {}", addr.port());
    match emulator.certs() {
        Some(certs) => {
            for (key, path) in [
                ("ca", &certs.ca_cert),
                ("cert", &certs.client_cert),
                ("key", &certs.client_key),
            ] {
                let path = absolute(path).display().to_string();
                let _ = writeln!(text, "{key} = {}", toml_string(&path));
            }
        }
        None => text.push_str("plaintext = true\n"),
    }
    let _ = writeln!(text, "group_id = {}", emulator.group_id());
    if !emulator.topic_prefix().is_empty() {
        let _ = writeln!(text, "prefix = {}", toml_string(emulator.topic_prefix()));
    }
    let store = store.display().to_string();
    let _ = writeln!(text, "store = {}", toml_string(&store));
    // Commented out: with `api_token` set, `ulogger metrics`, `events`
    // and `heartbeat` would go over HTTPS rather than MQTT.
    text.push_str(
        "# Uncomment to send telemetry over the HTTPS API instead (no client certificate needed), trusting `ca`:\n",
    );
    let _ = writeln!(text, "# api_url = {}", toml_string(&emulator.http_url()));
    let _ = writeln!(text, "# api_token = {}", toml_string(emulator.api_token()));
    text
}

fn print_banner(
    global: Global,
    emulator: &Emulator,
    sample: &Sample,
    attached: Option<&str>,
) -> Result<(), Exit> {
    let certs = emulator.certs();
    let path = |p: Option<&PathBuf>| p.map(|p| absolute(p).display().to_string());
    if global.json {
        let banner = serde_json::json!({
            "time": stamp::now(),
            "event": "ready",
            "address": emulator.addr().to_string(),
            "attached": attached,
            "tls": certs.is_some(),
            // Whether this emulator's broker enforces AWS IoT's
            // per-connection limits (never in attach mode: no broker).
            "limits": !emulator.limits().is_unlimited(),
            "customer_id": emulator.customer_id(),
            "group_id": emulator.group_id(),
            "legacy_topics": emulator.legacy_topics(),
            "prefix": emulator.topic_prefix(),
            "ca": path(certs.map(|c| &c.ca_cert)),
            "cert": path(certs.map(|c| &c.client_cert)),
            "key": path(certs.map(|c| &c.client_key)),
            "data_dir": absolute(emulator.data_dir()).display().to_string(),
            "index": absolute(&emulator.index_path()).display().to_string(),
            "http_url": emulator.http_url(),
            "api_token": emulator.api_token(),
            "upload_flags": client_flags(emulator),
            "upload_command": sample.upload_command(emulator),
            "config_file": sample.config_file.display().to_string(),
            "config_upload_command": sample.config_upload_command(),
            "heartbeat_command": sample.heartbeat_command(),
            "http_heartbeat_command": sample.http_heartbeat_command(emulator),
            "database": absolute(&emulator.database_path()).display().to_string(),
            "query_command": query_command(emulator, "metrics"),
            "sample_log": sample.log.display().to_string(),
            "device_info": sample.device_info.display().to_string(),
        });
        outln!("{banner}");
        return Ok(());
    }
    let mut out = format!("{} uLogger emulator: a local uLogger cloud\n", stamp::now());
    let transport = match (attached, certs) {
        (Some(_), _) => "attached to an external broker",
        (None, Some(_)) => "MQTT, mutual TLS",
        (None, None) => "MQTT, plaintext",
    };
    let _ = writeln!(out, "  address:     {} ({transport})", emulator.addr());
    let _ = writeln!(out, "  customer id: {}", emulator.customer_id());
    let routed = if emulator.legacy_topics() {
        "every group, and the legacy layout without one (--legacy-topics)"
    } else {
        "every group; the legacy layout without one is shown as unrouted"
    };
    let _ = writeln!(
        out,
        "  group id:    {} (routes {routed})",
        emulator.group_id()
    );
    if !emulator.topic_prefix().is_empty() {
        let _ = writeln!(out, "  prefix:      {}", emulator.topic_prefix());
    }
    if let Some(certs) = certs {
        let _ = writeln!(out, "  CA:          {}", absolute(&certs.ca_cert).display());
        let _ = writeln!(
            out,
            "  client cert: {}",
            absolute(&certs.client_cert).display()
        );
        let _ = writeln!(
            out,
            "  client key:  {}",
            absolute(&certs.client_key).display()
        );
    }
    let http = if certs.is_some() {
        "HTTPS, trusting the CA above"
    } else {
        "plain HTTP"
    };
    let _ = writeln!(
        out,
        "  HTTP API:    {} ({http}; POST /publish/metrics, /publish/events; \
         GET /metrics, /events, /logs)",
        emulator.http_url()
    );
    let _ = writeln!(out, "  API token:   {}", emulator.api_token());
    let _ = writeln!(
        out,
        "  records:     {}",
        absolute(&emulator.index_path()).display()
    );
    if attached.is_none() {
        let limits = emulator.limits();
        if limits.is_unlimited() {
            let _ = writeln!(out, "  limits:      none (--no-limits)");
        } else {
            let _ = writeln!(
                out,
                "  limits:      AWS IoT's per connection: {limits} (--no-limits lifts them)"
            );
        }
    }
    let _ = writeln!(
        out,
        "Upload a sample log (written into the data directory):"
    );
    let _ = writeln!(out, "  {}", sample.upload_command(emulator));
    let _ = writeln!(
        out,
        "Or with the settings from a config file ({}):",
        sample.config_file.display()
    );
    for line in sample.config_text.lines().filter(|l| !l.starts_with('#')) {
        let _ = writeln!(out, "    {line}");
    }
    let _ = writeln!(out, "  {}", sample.config_upload_command());
    let _ = writeln!(
        out,
        "Send a heartbeat of the same device over MQTT, or over the HTTPS API:"
    );
    let _ = writeln!(out, "  {}", sample.heartbeat_command());
    let _ = writeln!(out, "  {}", sample.http_heartbeat_command(emulator));
    let _ = writeln!(
        out,
        "Upload a build's firmware ELF (kept under {}):",
        emulator.data_dir().join("elf").display()
    );
    let _ = writeln!(out, "  {}", sample.elf_upload_command());
    // Logs here: the record lines that follow name metrics, and scripts
    // reading this banner look for the first of them.
    let _ = writeln!(
        out,
        "Read back the last hour's logs through the data API (events alike):"
    );
    let _ = writeln!(out, "  {}", query_command(emulator, "logs"));
    let _ = writeln!(
        out,
        "Ctrl-C or SIGTERM stops (after storing what was acknowledged). Records as they arrive:"
    );
    out!("{out}");
    Ok(())
}

/// A client connection accepted or ended, as the running emulator
/// prints it: `client-connected` and `client-disconnected` events with
/// `--json`.
fn client_line(global: Global, event: &ClientEvent) -> Option<String> {
    let (kind, client_id, peer) = match event {
        ClientEvent::Connected { client_id, peer } => ("connected", client_id, peer),
        ClientEvent::Disconnected { client_id, peer } => ("disconnected", client_id, peer),
        // A kind this version does not know: nothing to say.
        _ => return None,
    };
    Some(if global.json {
        serde_json::json!({
            "time": stamp::now(),
            "event": format!("client-{kind}"),
            "client_id": client_id,
            "peer": peer.to_string(),
        })
        .to_string()
    } else {
        format!("{} client {kind}: {client_id} ({peer})", stamp::now())
    })
}

/// A record as the running emulator prints it: with `--json` the record
/// (which has its `time`), else its line after its time.
fn live_line(global: Global, record: &Record) -> String {
    let line = record_line(global, record);
    if global.json {
        line
    } else {
        format!("{} {line}", stamp::at(record.time))
    }
}

fn record_line(global: Global, record: &Record) -> String {
    if global.json {
        return serde_json::to_string(record).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    }
    let kind = serde_json::to_value(record.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let verdict = match (record.kind, record.verdict) {
        (RecordKind::Unrouted, _) => "DROPPED",
        (_, Verdict::Ok) => "ok",
        (_, Verdict::Rejected) => "REJECTED",
    };
    let mut line = format!("{kind:<11} {verdict:<8} {}", record.topic);
    if let Some(app) = record.app_id {
        let _ = write!(line, " app={app}");
    }
    if let Some(serial) = &record.serial {
        let _ = write!(line, " serial={serial}");
    }
    if let Some(token) = record.token {
        let _ = write!(line, " token={token}");
    }
    let _ = write!(line, " size={}", record.size);
    if let Some(client) = &record.client_id {
        let _ = write!(line, " client={client}");
    }
    if let Some(reason) = &record.reason {
        let _ = write!(line, " ({reason})");
    }
    if let Some(file) = &record.file {
        let _ = write!(line, " -> {}", file.display());
    }
    line
}
